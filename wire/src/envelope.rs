//! The event envelope (DESIGN §3) and its two encodings.
//!
//! An envelope's encoded bytes are what gets signed and what every tier forwards unchanged;
//! nothing downstream re-encodes it. Decoding treats the bytes as untrusted: the size is
//! capped before parsing, CBOR nesting is limited, the whole input must be consumed, and
//! every field is validated after parsing.

use std::collections::BTreeMap;

use nexus_policies::{ids, SecretKey};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::provenance::SignedEvent;
use crate::subject;

/// The largest envelope body accepted by default (NATS' default `max_payload` is 1 MiB).
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;
/// The deepest CBOR nesting accepted.
const CBOR_RECURSION_LIMIT: usize = 32;

/// One event, as it travels between processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// UUIDv7; also the dedup key (`Nats-Msg-Id`) at every durable hop.
    pub event_id: String,
    /// e.g. `iot.sensor_data`, `edge.health`.
    pub event_name: String,
    /// The schema's major version, ≥ 1.
    pub version: u32,
    /// When the fact happened at the source: RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// The node id that created the event.
    pub source: String,
    /// The tenant; absent for `_core` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// A request or flow id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The event_id of the cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The epoch of the source's order: the UUIDv7 (lower-case, hyphenated) of the outbox
    /// that numbered this event. Set together with [`Self::seq`], or not at all.
    ///
    /// Every event an agent creates into its outbox carries both (heartbeats, audit events,
    /// command results, bridged app events, sensor readings); events published directly
    /// (the CLI's `request` and token audits) carry neither. A consumer restores a source's
    /// creation order exactly by sorting on `(source, epoch, seq)`: epochs are UUIDv7, so a
    /// newer epoch (a new or replaced outbox database) sorts after an older one, and within
    /// an epoch `seq` counts 1, 2, 3, … with no gap but the numbers the outbox announced
    /// as given up (`nexus._core.audit.outbox_loss`). See docs/delivery.md, "Order per
    /// source".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The n-th event (≥ 1) the source's outbox stored in [`Self::epoch`]; never reused
    /// within it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// `idempotency_key`, trace ids, …
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The event's data, validated against the event's schema.
    pub payload: serde_json::Map<String, serde_json::Value>,
}

/// Where an event stands in its source's order: the epoch of the outbox that numbered it
/// and its number there (the envelope's `epoch` and `seq`). Sorting by
/// `(source, epoch, seq)` restores a source's creation order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sequence {
    /// The outbox's UUIDv7, lower-case and hyphenated.
    pub epoch: String,
    /// The event's number in that epoch, ≥ 1.
    pub seq: u64,
}

/// How an envelope is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// JSON: readable by any NATS consumer in any language (the default).
    #[default]
    Json,
    /// CBOR: smaller, for metered uplinks.
    Cbor,
}

impl Encoding {
    /// The `Content-Type` header value.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Cbor => "application/cbor",
        }
    }

    /// The encoding named by a `Content-Type` header value; a missing header means JSON.
    pub fn from_content_type(value: Option<&str>) -> Result<Self, EnvelopeError> {
        match value.map(str::trim) {
            None | Some("application/json") => Ok(Encoding::Json),
            Some("application/cbor") => Ok(Encoding::Cbor),
            Some(other) => Err(EnvelopeError::UnknownContentType(truncate(other, 64))),
        }
    }
}

/// Why bytes were not accepted as an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The body is larger than the cap; it was not parsed.
    #[error("envelope of {size} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Size of the body.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// The bytes do not parse as an envelope.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// Bytes follow the envelope.
    #[error("{0} trailing bytes after the envelope")]
    TrailingBytes(usize),
    /// A field has a value outside its contract.
    #[error("invalid envelope field `{field}`: {reason}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A `Content-Type` we do not speak.
    #[error("unknown content type `{0}`")]
    UnknownContentType(String),
    /// Encoding failed (only possible for payloads CBOR or JSON cannot represent).
    #[error("cannot encode envelope: {0}")]
    Encode(String),
}

impl Envelope {
    /// A new envelope with a fresh UUIDv7 and `ts` = `now`.
    pub fn new(
        event_name: &str,
        source: &str,
        tenant: Option<&str>,
        payload: serde_json::Map<String, serde_json::Value>,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            event_id: uuid::Uuid::now_v7().to_string(),
            event_name: event_name.to_owned(),
            version: 1,
            ts: format_ts(now),
            source: source.to_owned(),
            tenant: tenant.map(str::to_owned),
            correlation_id: None,
            causation_id: None,
            epoch: None,
            seq: None,
            headers: BTreeMap::new(),
            payload,
        }
    }

    /// The event's place in its source's order, if it has one.
    pub fn sequence(&self) -> Option<Sequence> {
        match (&self.epoch, self.seq) {
            (Some(epoch), Some(seq)) => Some(Sequence {
                epoch: epoch.clone(),
                seq,
            }),
            _ => None,
        }
    }

    /// Sets (or, with `None`, clears) `epoch` and `seq` together.
    pub fn set_sequence(&mut self, sequence: Option<Sequence>) {
        (self.epoch, self.seq) = match sequence {
            Some(Sequence { epoch, seq }) => (Some(epoch), Some(seq)),
            None => (None, None),
        };
    }

    /// What seals this envelope once its outbox has numbered it: sets `epoch` and `seq`
    /// from the [`Sequence`] it is given, then encodes and signs it with `key`. This is the
    /// `seal` of `nexus_store::Outbox::push_numbered`, which calls it at commit time.
    pub fn into_sealer(
        mut self,
        encoding: Encoding,
        key: SecretKey,
    ) -> impl FnOnce(Sequence) -> Result<SignedEvent, EnvelopeError> + Send + 'static {
        move |sequence| {
            self.set_sequence(Some(sequence));
            SignedEvent::seal(&self, encoding, &key)
        }
    }

    /// The subject this event lands on at the root.
    pub fn subject(&self) -> String {
        subject::event_subject(self.tenant.as_deref(), &self.event_name, &self.source)
    }

    /// Encodes the envelope; these bytes are then signed and never re-encoded.
    pub fn encode(&self, encoding: Encoding) -> Result<Vec<u8>, EnvelopeError> {
        match encoding {
            Encoding::Json => {
                serde_json::to_vec(self).map_err(|e| EnvelopeError::Encode(e.to_string()))
            }
            Encoding::Cbor => {
                let mut out = Vec::with_capacity(256);
                ciborium::into_writer(self, &mut out)
                    .map_err(|e| EnvelopeError::Encode(e.to_string()))?;
                Ok(out)
            }
        }
    }

    /// Decodes untrusted bytes (at most `max` of them) and validates every field.
    pub fn decode(bytes: &[u8], encoding: Encoding, max: usize) -> Result<Self, EnvelopeError> {
        if bytes.len() > max {
            return Err(EnvelopeError::TooLarge {
                size: bytes.len(),
                max,
            });
        }
        let envelope: Envelope = match encoding {
            // serde_json rejects trailing non-whitespace and caps nesting at 128.
            Encoding::Json => serde_json::from_slice(bytes)
                .map_err(|e| EnvelopeError::Malformed(truncate(&e.to_string(), 200)))?,
            Encoding::Cbor => {
                let mut rest = bytes;
                let envelope =
                    ciborium::de::from_reader_with_recursion_limit(&mut rest, CBOR_RECURSION_LIMIT)
                        .map_err(|e| EnvelopeError::Malformed(truncate(&e.to_string(), 200)))?;
                if !rest.is_empty() {
                    return Err(EnvelopeError::TrailingBytes(rest.len()));
                }
                envelope
            }
        };
        envelope.validate()?;
        Ok(envelope)
    }

    /// Checks every field against its contract.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        let invalid =
            |field: &'static str, reason: String| Err(EnvelopeError::Invalid { field, reason });
        match uuid::Uuid::try_parse(&self.event_id) {
            Ok(id) if id.hyphenated().to_string() == self.event_id => {}
            _ => return invalid("event_id", "not a lower-case hyphenated UUID".into()),
        }
        if !subject::is_valid_event_name(&self.event_name) {
            return invalid(
                "event_name",
                "expected dot-separated tokens of [a-z0-9_-]".into(),
            );
        }
        if self.version == 0 {
            return invalid("version", "must be at least 1".into());
        }
        if parse_ts(&self.ts).is_none() {
            return invalid("ts", "not an RFC 3339 timestamp".into());
        }
        if let Err(reason) = ids::check_node_id(&self.source) {
            return invalid("source", format!("not a valid node id: {reason}"));
        }
        if let Some(tenant) = &self.tenant {
            if let Err(reason) = ids::check_tenant(tenant) {
                return invalid("tenant", format!("not a valid tenant id: {reason}"));
            }
        }
        for (field, value) in [
            ("correlation_id", &self.correlation_id),
            ("causation_id", &self.causation_id),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.is_empty() || v.len() > 128)
            {
                return invalid(field, "must be 1-128 chars".into());
            }
        }
        match (&self.epoch, self.seq) {
            (None, None) => {}
            (Some(_), None) => return invalid("seq", "`epoch` is set, `seq` is not".into()),
            (None, Some(_)) => return invalid("epoch", "`seq` is set, `epoch` is not".into()),
            (Some(epoch), Some(seq)) => {
                match uuid::Uuid::try_parse(epoch) {
                    Ok(id)
                        if id.hyphenated().to_string() == *epoch && id.get_version_num() == 7 => {}
                    _ => return invalid("epoch", "not a lower-case hyphenated UUIDv7".into()),
                }
                if seq == 0 {
                    return invalid("seq", "must be at least 1".into());
                }
            }
        }
        Ok(())
    }
}

/// Formats a timestamp as the envelope's `ts`: RFC 3339, UTC, milliseconds.
pub fn format_ts(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// Parses an RFC 3339 timestamp.
pub fn parse_ts(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Envelope {
        let payload = json!({"node_id": "edge-01", "cpu_pct": 12.5});
        let serde_json::Value::Object(payload) = payload else {
            unreachable!()
        };
        Envelope::new(
            "edge.health",
            "edge-01",
            None,
            payload,
            time::macros::datetime!(2026-11-23 14:00:01.234 UTC),
        )
    }

    #[test]
    fn a_new_envelope_has_a_v7_id_and_millisecond_utc_time() {
        let envelope = sample();
        let id = uuid::Uuid::parse_str(&envelope.event_id).expect("uuid");
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(envelope.ts, "2026-11-23T14:00:01.234Z");
        assert_eq!(envelope.validate(), Ok(()));
    }

    #[test]
    fn both_encodings_round_trip() {
        let envelope = sample();
        for encoding in [Encoding::Json, Encoding::Cbor] {
            let bytes = envelope.encode(encoding).expect("encodes");
            let back = Envelope::decode(&bytes, encoding, MAX_ENVELOPE_BYTES).expect("decodes");
            assert_eq!(back, envelope, "{encoding:?}");
        }
    }

    #[test]
    fn json_has_exactly_the_design_fields() {
        let bytes = sample().encode(Encoding::Json).expect("encodes");
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        let mut keys: Vec<_> = value.as_object().expect("object").keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "event_id",
                "event_name",
                "headers",
                "payload",
                "source",
                "ts",
                "version"
            ]
        );
    }

    #[test]
    fn oversized_bodies_are_refused_before_parsing() {
        let bytes = vec![b' '; 100];
        assert_eq!(
            Envelope::decode(&bytes, Encoding::Json, 99),
            Err(EnvelopeError::TooLarge { size: 100, max: 99 })
        );
    }

    #[test]
    fn trailing_bytes_are_refused_in_both_encodings() {
        let envelope = sample();
        let mut cbor = envelope.encode(Encoding::Cbor).expect("encodes");
        cbor.extend_from_slice(&[0x01, 0x02]);
        assert_eq!(
            Envelope::decode(&cbor, Encoding::Cbor, MAX_ENVELOPE_BYTES),
            Err(EnvelopeError::TrailingBytes(2))
        );
        let mut json = envelope.encode(Encoding::Json).expect("encodes");
        json.extend_from_slice(b"{}");
        assert!(matches!(
            Envelope::decode(&json, Encoding::Json, MAX_ENVELOPE_BYTES),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_and_deep_nesting_are_errors_not_panics() {
        for garbage in [&b"\xff\xfe\x00"[..], b"", b"[[[[", b"{\"event_id\":1}"] {
            assert!(Envelope::decode(garbage, Encoding::Json, MAX_ENVELOPE_BYTES).is_err());
            assert!(Envelope::decode(garbage, Encoding::Cbor, MAX_ENVELOPE_BYTES).is_err());
        }
        let deep_cbor = vec![0x81u8; 10_000]; // arrays nested 10,000 deep
        assert!(Envelope::decode(&deep_cbor, Encoding::Cbor, MAX_ENVELOPE_BYTES).is_err());
        let deep_json = "[".repeat(10_000);
        assert!(
            Envelope::decode(deep_json.as_bytes(), Encoding::Json, MAX_ENVELOPE_BYTES).is_err()
        );
    }

    #[test]
    fn invalid_fields_are_named() {
        let mut envelope = sample();
        envelope.source = "Edge 01".into();
        assert!(matches!(
            envelope.validate(),
            Err(EnvelopeError::Invalid {
                field: "source",
                ..
            })
        ));
        // `local` is the ACL principal of the apps on a node, never a node.
        let mut envelope = sample();
        envelope.source = "local".into();
        assert!(matches!(
            envelope.validate(),
            Err(EnvelopeError::Invalid {
                field: "source",
                ..
            })
        ));
        let mut envelope = sample();
        envelope.event_id = "not-a-uuid".into();
        assert!(matches!(
            envelope.validate(),
            Err(EnvelopeError::Invalid {
                field: "event_id",
                ..
            })
        ));
        let mut envelope = sample();
        envelope.ts = "yesterday".into();
        assert!(matches!(
            envelope.validate(),
            Err(EnvelopeError::Invalid { field: "ts", .. })
        ));
        let mut envelope = sample();
        envelope.version = 0;
        assert!(matches!(
            envelope.validate(),
            Err(EnvelopeError::Invalid {
                field: "version",
                ..
            })
        ));
        let mut envelope = sample();
        envelope.tenant = Some("A".into());
        assert!(matches!(
            envelope.validate(),
            Err(EnvelopeError::Invalid {
                field: "tenant",
                ..
            })
        ));
    }

    const EPOCH: &str = "01932f6e-8a4c-7b3d-9e21-5f0a6b7c8d9e";

    fn numbered(seq: u64) -> Envelope {
        let mut envelope = sample();
        envelope.set_sequence(Some(Sequence {
            epoch: EPOCH.into(),
            seq,
        }));
        envelope
    }

    #[test]
    fn epoch_and_seq_round_trip_in_both_encodings_and_are_top_level_fields() {
        let envelope = numbered(42);
        assert_eq!(envelope.validate(), Ok(()));
        for encoding in [Encoding::Json, Encoding::Cbor] {
            let bytes = envelope.encode(encoding).expect("encodes");
            let back = Envelope::decode(&bytes, encoding, MAX_ENVELOPE_BYTES).expect("decodes");
            assert_eq!(back, envelope, "{encoding:?}");
            assert_eq!(
                back.sequence(),
                Some(Sequence {
                    epoch: EPOCH.into(),
                    seq: 42
                })
            );
        }
        let json: serde_json::Value =
            serde_json::from_slice(&envelope.encode(Encoding::Json).expect("encodes"))
                .expect("json");
        assert_eq!(json["epoch"], EPOCH);
        assert_eq!(json["seq"], 42);
        let mut cleared = envelope;
        cleared.set_sequence(None);
        assert_eq!((cleared.epoch, cleared.seq), (None, None));
    }

    #[test]
    fn epoch_and_seq_come_both_or_neither() {
        let mut envelope = sample();
        envelope.epoch = Some(EPOCH.into());
        assert!(matches!(
            envelope.validate(),
            Err(EnvelopeError::Invalid { field: "seq", .. })
        ));
        let mut envelope = sample();
        envelope.seq = Some(1);
        assert!(matches!(
            envelope.validate(),
            Err(EnvelopeError::Invalid { field: "epoch", .. })
        ));
        // The same refusal when the bytes say it.
        let mut json: serde_json::Value =
            serde_json::from_slice(&sample().encode(Encoding::Json).expect("encodes"))
                .expect("json");
        json["seq"] = 7.into();
        let bytes = serde_json::to_vec(&json).expect("json");
        assert!(matches!(
            Envelope::decode(&bytes, Encoding::Json, MAX_ENVELOPE_BYTES),
            Err(EnvelopeError::Invalid { field: "epoch", .. })
        ));
    }

    #[test]
    fn a_bad_epoch_or_a_zero_seq_is_refused() {
        for epoch in [
            "not-a-uuid",
            "01932F6E-8A4C-7B3D-9E21-5F0A6B7C8D9E", // upper case
            "01932f6e8a4c7b3d9e215f0a6b7c8d9e",     // not hyphenated
            "f47ac10b-58cc-4372-a567-0e02b2c3d479", // v4: does not sort by time
            "{01932f6e-8a4c-7b3d-9e21-5f0a6b7c8d9e}",
            "",
        ] {
            let mut envelope = numbered(1);
            envelope.epoch = Some(epoch.into());
            assert!(
                matches!(
                    envelope.validate(),
                    Err(EnvelopeError::Invalid { field: "epoch", .. })
                ),
                "{epoch:?}"
            );
        }
        assert!(matches!(
            numbered(0).validate(),
            Err(EnvelopeError::Invalid { field: "seq", .. })
        ));
        assert_eq!(numbered(u64::MAX).validate(), Ok(()));
        // A negative or fractional number is not a seq at all.
        for seq in ["-1", "1.5"] {
            let text = String::from_utf8(sample().encode(Encoding::Json).expect("encodes"))
                .expect("utf-8")
                .replacen('{', &format!("{{\"epoch\":\"{EPOCH}\",\"seq\":{seq},"), 1);
            assert!(
                Envelope::decode(text.as_bytes(), Encoding::Json, MAX_ENVELOPE_BYTES).is_err(),
                "{text}"
            );
        }
    }

    #[test]
    fn a_sealer_numbers_then_signs() {
        let key = SecretKey::from_seed(&[5; 32]).expect("key");
        let envelope = sample();
        let mut expected = envelope.clone();
        expected.set_sequence(Some(Sequence {
            epoch: EPOCH.into(),
            seq: 3,
        }));
        let seal = envelope.into_sealer(Encoding::Cbor, key.clone());
        let event = seal(Sequence {
            epoch: EPOCH.into(),
            seq: 3,
        })
        .expect("seals");
        assert!(key.public().verify(&event.body, &event.signature).is_ok());
        let back =
            Envelope::decode(&event.body, Encoding::Cbor, MAX_ENVELOPE_BYTES).expect("decodes");
        assert_eq!(back, expected);
    }

    #[test]
    fn unknown_content_types_are_refused() {
        assert_eq!(Encoding::from_content_type(None), Ok(Encoding::Json));
        assert_eq!(
            Encoding::from_content_type(Some("application/cbor")),
            Ok(Encoding::Cbor)
        );
        assert!(Encoding::from_content_type(Some("text/plain")).is_err());
    }
}
