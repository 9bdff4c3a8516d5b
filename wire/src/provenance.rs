//! Provenance: who signed an envelope's exact bytes, carried in NATS headers beside the body.
//!
//! Headers of every federated message:
//! - `Nats-Msg-Id`: the envelope's `event_id` (JetStream dedup at every durable hop);
//! - `Content-Type`: `application/json` or `application/cbor`;
//! - `Nexus-Signer`: the origin node's public key (`ed25519:…`);
//! - `Nexus-Sig`: Ed25519 signature over the exact body bytes (unpadded base64url).
//!
//! The body is forwarded unchanged by every tier, so the root, or any consumer, can check
//! the origin's signature end to end. The subject is not signed; it is derived from the
//! signed body and checked against it instead.
//!
//! This crate knows no NATS client: headers are read through [`HeaderLookup`] and written
//! as [`SignedEvent::provenance_headers`]. `nexus_federation::headers` adapts both to
//! async-nats' `HeaderMap` (`SignedEvent::open`, `SignedEvent::headers`); [`Headers`] is a
//! plain list for everyone else (tests, fuzzing).

use bytes::Bytes;
use nexus_policies::{PublicKey, SecretKey, Signature};

use crate::envelope::{Encoding, Envelope, EnvelopeError};
use crate::refusal::Reason;

/// JetStream's dedup header.
pub const HDR_MSG_ID: &str = "Nats-Msg-Id";
/// The body's encoding.
pub const HDR_CONTENT_TYPE: &str = "Content-Type";
/// The origin node's public key.
pub const HDR_SIGNER: &str = "Nexus-Signer";
/// The origin's signature over the body.
pub const HDR_SIGNATURE: &str = "Nexus-Sig";

/// Where the provenance headers of a received message are read from, by exact name.
pub trait HeaderLookup {
    /// The value of header `name`, if present (the first one, if it is repeated).
    fn header(&self, name: &str) -> Option<&str>;
}

/// Message headers as a plain list of names and values, in insertion order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pairs: Vec<(String, String)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets header `name` to `value`, replacing any value it had (like NATS' `insert`).
    pub fn insert(&mut self, name: &str, value: &str) {
        self.pairs.retain(|(n, _)| n != name);
        self.pairs.push((name.to_owned(), value.to_owned()));
    }

    /// The value of header `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every header, name and value, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

impl HeaderLookup for Headers {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

/// An encoded, signed envelope: what the outbox keeps and every tier forwards.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedEvent {
    /// The event subject at the root (`nexus.…`), derived from the body.
    pub subject: String,
    /// The envelope's `event_id`.
    pub event_id: String,
    /// How `body` is encoded.
    pub encoding: Encoding,
    /// The exact signed bytes.
    pub body: Bytes,
    /// The origin's key.
    pub signer: PublicKey,
    /// The origin's signature over `body`.
    pub signature: Signature,
}

/// Why a message was not accepted as a signed event. Each variant maps to a stable
/// [`Reason`] (`reason()`) used in counters, logs and the dead-letter store.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VerifyError {
    /// A required header is absent.
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    /// A header is present but unusable.
    #[error("bad header `{header}`: {reason}")]
    BadHeader {
        /// The header's name.
        header: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The signature does not verify over the body with the presented key.
    #[error("signature does not verify over the body")]
    BadSignature,
    /// The body is not a valid envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The subject it arrived on is not the one its body names.
    #[error("arrived on `{got}` but the body belongs on `{expected}`")]
    SubjectMismatch {
        /// The subject derived from the body.
        expected: String,
        /// The subject it arrived on.
        got: String,
    },
    /// `Nats-Msg-Id` is not the body's `event_id`.
    #[error("Nats-Msg-Id does not match the body's event_id")]
    MsgIdMismatch,
}

impl VerifyError {
    /// The stable reason of this failure.
    pub fn reason(&self) -> Reason {
        match self {
            VerifyError::MissingHeader(_) | VerifyError::BadHeader { .. } => Reason::BadHeaders,
            VerifyError::BadSignature => Reason::BadSignature,
            VerifyError::Envelope(EnvelopeError::TooLarge { .. }) => Reason::Oversized,
            VerifyError::Envelope(_) => Reason::Malformed,
            VerifyError::SubjectMismatch { .. } => Reason::SubjectMismatch,
            VerifyError::MsgIdMismatch => Reason::MsgIdMismatch,
        }
    }
}

impl SignedEvent {
    /// Encodes and signs an envelope with this node's key.
    pub fn seal(
        envelope: &Envelope,
        encoding: Encoding,
        key: &SecretKey,
    ) -> Result<Self, EnvelopeError> {
        envelope.validate()?;
        let body = Bytes::from(envelope.encode(encoding)?);
        let signature = key.sign(&body);
        Ok(Self {
            subject: envelope.subject(),
            event_id: envelope.event_id.clone(),
            encoding,
            body,
            signer: key.public(),
            signature,
        })
    }

    /// The headers that carry this event's provenance, name and value: `Nats-Msg-Id`,
    /// `Content-Type`, `Nexus-Signer`, `Nexus-Sig`.
    pub fn provenance_headers(&self) -> Headers {
        let mut headers = Headers::new();
        headers.insert(HDR_MSG_ID, self.event_id.as_str());
        headers.insert(HDR_CONTENT_TYPE, self.encoding.content_type());
        headers.insert(HDR_SIGNER, self.signer.to_string().as_str());
        headers.insert(HDR_SIGNATURE, self.signature.to_string().as_str());
        headers
    }

    /// The bytes this event adds beside its body on the wire (header names and values).
    pub fn overhead_bytes(&self) -> usize {
        self.provenance_headers()
            .iter()
            .map(|(name, value)| name.len() + 4 + value.len())
            .sum()
    }

    /// Verifies a received message: signature over the exact body first (no parsing of
    /// unsigned bytes), then the envelope, then that `subject` is the one the body names.
    /// Returns the event (to forward unchanged) and the decoded envelope.
    pub fn verify<H: HeaderLookup + ?Sized>(
        subject: &str,
        headers: Option<&H>,
        body: Bytes,
        max_body: usize,
    ) -> Result<(Self, Envelope), VerifyError> {
        let (event, envelope) = Self::verify_detached(headers, body, max_body)?;
        if event.subject != subject {
            return Err(VerifyError::SubjectMismatch {
                expected: event.subject,
                got: subject.to_owned(),
            });
        }
        Ok((event, envelope))
    }

    /// [`Self::verify`] for a message whose subject is not the event's own (a command, a
    /// command's reply): signature, envelope and `Nats-Msg-Id` are checked; the caller
    /// checks what the subject means.
    pub fn verify_detached<H: HeaderLookup + ?Sized>(
        headers: Option<&H>,
        body: Bytes,
        max_body: usize,
    ) -> Result<(Self, Envelope), VerifyError> {
        let (signer, signature) = Self::provenance(headers, &body, max_body)?;
        signer
            .verify(&body, &signature)
            .map_err(|_| VerifyError::BadSignature)?;
        Self::decode_signed(headers, body, signer, signature, max_body)
    }

    /// [`Self::verify`] for many received messages at once, one result per message in
    /// order, each what [`Self::verify`] returns for it. The signatures are checked with one
    /// batch verification ([`nexus_policies::keys::verify_batch`], about twice as fast per
    /// signature); only when the batch fails is each checked alone, to find the culprits.
    ///
    /// Batch verification accepts every signature strict verification accepts. It differs
    /// only on signatures whose `R` carries a small-order component, which only the key's
    /// owner can make, over a body it signed: nothing unsigned gets through either way.
    pub fn verify_all<H: HeaderLookup + ?Sized>(
        received: &[Received<'_, H>],
        max_body: usize,
    ) -> Vec<Result<(Self, Envelope), VerifyError>> {
        let provenance: Vec<_> = received
            .iter()
            .map(|r| Self::provenance(r.headers, &r.body, max_body))
            .collect();
        let signed: Vec<(&[u8], &Signature, &PublicKey)> = received
            .iter()
            .zip(&provenance)
            .filter_map(|(r, p)| p.as_ref().ok().map(|(k, s)| (&r.body[..], s, k)))
            .collect();
        let batch_ok = signed.is_empty() || nexus_policies::keys::verify_batch(&signed).is_ok();
        received
            .iter()
            .zip(provenance)
            .map(|(r, provenance)| {
                let (signer, signature) = provenance?;
                if !batch_ok {
                    signer
                        .verify(&r.body, &signature)
                        .map_err(|_| VerifyError::BadSignature)?;
                }
                let (event, envelope) =
                    Self::decode_signed(r.headers, r.body.clone(), signer, signature, max_body)?;
                if event.subject != r.subject {
                    return Err(VerifyError::SubjectMismatch {
                        expected: event.subject,
                        got: r.subject.to_owned(),
                    });
                }
                Ok((event, envelope))
            })
            .collect()
    }

    /// The checks before the signature: the size cap, then the signer and signature
    /// headers.
    fn provenance<H: HeaderLookup + ?Sized>(
        headers: Option<&H>,
        body: &Bytes,
        max_body: usize,
    ) -> Result<(PublicKey, Signature), VerifyError> {
        if body.len() > max_body {
            return Err(EnvelopeError::TooLarge {
                size: body.len(),
                max: max_body,
            }
            .into());
        }
        let bad = |header: &'static str, reason: String| VerifyError::BadHeader { header, reason };
        let signer = PublicKey::parse(required(headers, HDR_SIGNER)?)
            .map_err(|e| bad(HDR_SIGNER, e.to_string()))?;
        let signature = Signature::parse(required(headers, HDR_SIGNATURE)?)
            .map_err(|e| bad(HDR_SIGNATURE, e.to_string()))?;
        Ok((signer, signature))
    }

    /// The checks after the signature verified: the encoding, the envelope and that
    /// `Nats-Msg-Id` is its event_id.
    fn decode_signed<H: HeaderLookup + ?Sized>(
        headers: Option<&H>,
        body: Bytes,
        signer: PublicKey,
        signature: Signature,
        max_body: usize,
    ) -> Result<(Self, Envelope), VerifyError> {
        let encoding =
            Encoding::from_content_type(headers.and_then(|h| h.header(HDR_CONTENT_TYPE)))?;
        let envelope = Envelope::decode(&body, encoding, max_body)?;
        if required(headers, HDR_MSG_ID)? != envelope.event_id {
            return Err(VerifyError::MsgIdMismatch);
        }
        let event = Self {
            subject: envelope.subject(),
            event_id: envelope.event_id.clone(),
            encoding,
            body,
            signer,
            signature,
        };
        Ok((event, envelope))
    }
}

/// Header `name`, or [`VerifyError::MissingHeader`].
fn required<'h, H: HeaderLookup + ?Sized>(
    headers: Option<&'h H>,
    name: &'static str,
) -> Result<&'h str, VerifyError> {
    headers
        .and_then(|h| h.header(name))
        .ok_or(VerifyError::MissingHeader(name))
}

/// One received message for [`SignedEvent::verify_all`].
#[derive(Debug)]
pub struct Received<'a, H: ?Sized> {
    /// The event subject it arrived for (the ingress prefix already stripped).
    pub subject: &'a str,
    /// Its headers.
    pub headers: Option<&'a H>,
    /// Its body, as received.
    pub body: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::MAX_ENVELOPE_BYTES;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed(&[n; 32]).expect("strong key")
    }

    fn health(source: &str) -> Envelope {
        Envelope::new(
            "edge.health",
            source,
            None,
            serde_json::Map::new(),
            time::OffsetDateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn a_sealed_event_opens_with_its_headers_in_both_encodings() {
        for encoding in [Encoding::Json, Encoding::Cbor] {
            let envelope = health("edge-01");
            let event = SignedEvent::seal(&envelope, encoding, &key(1)).expect("seals");
            let headers = event.provenance_headers();
            let (opened, decoded) = SignedEvent::verify(
                &event.subject,
                Some(&headers),
                event.body.clone(),
                MAX_ENVELOPE_BYTES,
            )
            .expect("opens");
            assert_eq!(opened, event);
            assert_eq!(decoded, envelope);
        }
    }

    #[test]
    fn a_changed_byte_breaks_the_signature() {
        let event = SignedEvent::seal(&health("edge-01"), Encoding::Json, &key(1)).expect("seals");
        let mut body = event.body.to_vec();
        let at = body.len() / 2;
        body[at] ^= 1;
        let result = SignedEvent::verify(
            &event.subject,
            Some(&event.provenance_headers()),
            body.into(),
            MAX_ENVELOPE_BYTES,
        );
        assert_eq!(result.map(|_| ()), Err(VerifyError::BadSignature));
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let event = SignedEvent::seal(&health("edge-01"), Encoding::Json, &key(1)).expect("seals");
        let mut headers = event.provenance_headers();
        headers.insert(HDR_SIGNER, key(2).public().to_string().as_str());
        let result = SignedEvent::verify(
            &event.subject,
            Some(&headers),
            event.body,
            MAX_ENVELOPE_BYTES,
        );
        assert_eq!(result.map(|_| ()), Err(VerifyError::BadSignature));
    }

    #[test]
    fn a_body_moved_to_another_subject_is_refused() {
        let event = SignedEvent::seal(&health("edge-01"), Encoding::Json, &key(1)).expect("seals");
        let result = SignedEvent::verify(
            "nexus._core.edge.health.edge-02",
            Some(&event.provenance_headers()),
            event.body,
            MAX_ENVELOPE_BYTES,
        );
        assert!(matches!(result, Err(VerifyError::SubjectMismatch { .. })));
    }

    #[test]
    fn missing_or_garbled_headers_are_named() {
        let event = SignedEvent::seal(&health("edge-01"), Encoding::Json, &key(1)).expect("seals");
        let result = SignedEvent::verify::<Headers>(
            &event.subject,
            None,
            event.body.clone(),
            MAX_ENVELOPE_BYTES,
        );
        assert_eq!(
            result.map(|_| ()),
            Err(VerifyError::MissingHeader(HDR_SIGNER))
        );
        let mut headers = event.provenance_headers();
        headers.insert(HDR_SIGNATURE, "garbage");
        let result = SignedEvent::verify(
            &event.subject,
            Some(&headers),
            event.body.clone(),
            MAX_ENVELOPE_BYTES,
        );
        assert!(matches!(
            result,
            Err(VerifyError::BadHeader {
                header: HDR_SIGNATURE,
                ..
            })
        ));
        let mut headers = event.provenance_headers();
        headers.insert(HDR_MSG_ID, "other");
        let result = SignedEvent::verify(
            &event.subject,
            Some(&headers),
            event.body,
            MAX_ENVELOPE_BYTES,
        );
        assert_eq!(result.map(|_| ()), Err(VerifyError::MsgIdMismatch));
    }

    #[test]
    fn signed_garbage_is_malformed_not_a_panic() {
        let body = Bytes::from_static(b"\x00\x01garbage");
        let signer = key(3);
        let mut headers = Headers::new();
        headers.insert(HDR_MSG_ID, "x");
        headers.insert(HDR_SIGNER, signer.public().to_string().as_str());
        headers.insert(HDR_SIGNATURE, signer.sign(&body).to_string().as_str());
        let result = SignedEvent::verify("nexus._core.x", Some(&headers), body, MAX_ENVELOPE_BYTES);
        assert_eq!(
            result.map(|_| ()).map_err(|e| e.reason().as_str()),
            Err("malformed")
        );
    }

    #[test]
    fn the_per_message_overhead_is_small_and_known() {
        let event = SignedEvent::seal(&health("edge-01"), Encoding::Json, &key(1)).expect("seals");
        // Msg-Id (36) + content type (16) + signer key (51) + signature (86) + names.
        let overhead = event.overhead_bytes();
        assert!(overhead > 36 + 16 + 51 + 86, "{overhead}");
        assert!(overhead < 300, "{overhead}");
    }

    /// A batch of good messages with, at given places, a forged signature, a missing
    /// header, an oversized body and a wrong subject: each result is what `verify` says of
    /// that message alone.
    #[test]
    fn verify_all_answers_each_message_as_verify_does() {
        let signer = key(4);
        let mut received = Vec::new();
        for n in 0..40u8 {
            let event =
                SignedEvent::seal(&health(&format!("edge-{n:02}")), Encoding::Json, &signer)
                    .expect("seals");
            let mut headers = event.provenance_headers();
            let mut subject = event.subject.clone();
            let mut body = event.body.clone();
            match n {
                7 => headers.insert(HDR_SIGNATURE, key(9).sign(&body).to_string().as_str()),
                13 => headers = Headers::new(),
                21 => body = Bytes::from(vec![b' '; 300]),
                30 => subject = "nexus._core.edge.health.someone-else".to_owned(),
                _ => {}
            }
            received.push((subject, headers, body));
        }
        let batch: Vec<Received<'_, Headers>> = received
            .iter()
            .map(|(subject, headers, body)| Received {
                subject,
                headers: Some(headers),
                body: body.clone(),
            })
            .collect();
        let all = SignedEvent::verify_all(&batch, 256);
        assert_eq!(all.len(), received.len());
        for ((subject, headers, body), result) in received.iter().zip(all) {
            let alone = SignedEvent::verify(subject, Some(headers), body.clone(), 256);
            assert_eq!(result, alone);
        }
        let good = SignedEvent::verify_all(&batch[..7], 256);
        assert!(good.iter().all(Result::is_ok));
        let none: Vec<Received<'_, Headers>> = Vec::new();
        assert!(SignedEvent::verify_all(&none, 256).is_empty());
    }
}
