//! Provenance in NATS headers: the wire crate's signed events (`nexus_wire::provenance`,
//! re-exported as `crate::provenance`) with async-nats' [`HeaderMap`].
//!
//! [`NatsProvenance`] gives [`SignedEvent`] the NATS-facing calls every pump, the agent and
//! the end-to-end tests use: `event.headers()` to publish, `SignedEvent::open(subject,
//! msg.headers.as_ref(), …)` and `SignedEvent::open_detached(…)` to verify what arrived.
//! They are the wire crate's `provenance_headers`, `verify` and `verify_detached`, with
//! the header map read and written here, so that the wire crate needs no NATS client.

use async_nats::HeaderMap;
use bytes::Bytes;
use nexus_wire::provenance::{HeaderLookup, Received, SignedEvent, VerifyError};
use nexus_wire::Envelope;

/// A NATS header map as the wire crate reads headers: by exact name, the first value.
struct Nats<'a>(&'a HeaderMap);

impl HeaderLookup for Nats<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.as_str())
    }
}

/// A signed event's provenance in NATS headers (import the trait to call these).
pub trait NatsProvenance: Sized {
    /// The NATS headers that carry this event's provenance.
    fn headers(&self) -> HeaderMap;

    /// Verifies a received NATS message: [`SignedEvent::verify`] with its header map.
    fn open(
        subject: &str,
        headers: Option<&HeaderMap>,
        body: Bytes,
        max_body: usize,
    ) -> Result<(Self, Envelope), VerifyError>;

    /// [`Self::open`] for a message whose subject is not the event's own (a command, a
    /// command's reply): [`SignedEvent::verify_detached`] with its header map.
    fn open_detached(
        headers: Option<&HeaderMap>,
        body: Bytes,
        max_body: usize,
    ) -> Result<(Self, Envelope), VerifyError>;
}

impl NatsProvenance for SignedEvent {
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in self.provenance_headers().iter() {
            headers.insert(name, value);
        }
        headers
    }

    fn open(
        subject: &str,
        headers: Option<&HeaderMap>,
        body: Bytes,
        max_body: usize,
    ) -> Result<(Self, Envelope), VerifyError> {
        SignedEvent::verify(subject, headers.map(Nats).as_ref(), body, max_body)
    }

    fn open_detached(
        headers: Option<&HeaderMap>,
        body: Bytes,
        max_body: usize,
    ) -> Result<(Self, Envelope), VerifyError> {
        SignedEvent::verify_detached(headers.map(Nats).as_ref(), body, max_body)
    }
}

/// [`SignedEvent::verify_all`] for NATS messages: `(event subject, headers, body)` each,
/// one result per message in order.
pub fn open_all(
    messages: &[(&str, Option<&HeaderMap>, Bytes)],
    max_body: usize,
) -> Vec<Result<(SignedEvent, Envelope), VerifyError>> {
    let maps: Vec<Option<Nats<'_>>> = messages.iter().map(|(_, h, _)| h.map(Nats)).collect();
    let received: Vec<Received<'_, Nats<'_>>> = messages
        .iter()
        .zip(&maps)
        .map(|((subject, _, body), headers)| Received {
            subject,
            headers: headers.as_ref(),
            body: body.clone(),
        })
        .collect();
    SignedEvent::verify_all(&received, max_body)
}

#[cfg(test)]
mod tests {
    use nexus_policies::SecretKey;
    use nexus_wire::envelope::MAX_ENVELOPE_BYTES;
    use nexus_wire::provenance::HDR_SIGNER;
    use nexus_wire::Encoding;

    use super::*;

    fn sealed() -> SignedEvent {
        let key = SecretKey::from_seed(&[1; 32]).expect("strong key");
        let envelope = Envelope::new(
            "edge.health",
            "edge-01",
            None,
            serde_json::Map::new(),
            time::OffsetDateTime::UNIX_EPOCH,
        );
        SignedEvent::seal(&envelope, Encoding::Cbor, &key).expect("seals")
    }

    /// The NATS header map carries exactly the wire crate's headers, and a sealed event
    /// opens from it (and from no other subject).
    #[test]
    fn a_sealed_event_opens_from_its_nats_headers() {
        let event = sealed();
        let headers = event.headers();
        for (name, value) in event.provenance_headers().iter() {
            assert_eq!(headers.get(name).map(|v| v.as_str()), Some(value), "{name}");
        }
        assert_eq!(headers.len(), 4);
        let (opened, _) = SignedEvent::open(
            &event.subject,
            Some(&headers),
            event.body.clone(),
            MAX_ENVELOPE_BYTES,
        )
        .expect("opens");
        assert_eq!(opened, event);
        let (opened, _) =
            SignedEvent::open_detached(Some(&headers), event.body.clone(), MAX_ENVELOPE_BYTES)
                .expect("opens detached");
        assert_eq!(opened, event);
        let moved = SignedEvent::open(
            "nexus._core.edge.health.edge-02",
            Some(&headers),
            event.body.clone(),
            MAX_ENVELOPE_BYTES,
        );
        assert!(matches!(moved, Err(VerifyError::SubjectMismatch { .. })));
        let bare = SignedEvent::open(&event.subject, None, event.body, MAX_ENVELOPE_BYTES);
        assert_eq!(
            bare.map(|_| ()),
            Err(VerifyError::MissingHeader(HDR_SIGNER))
        );
    }
}
