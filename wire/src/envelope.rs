//! The event envelope (DESIGN §3) and its two encodings.
//!
//! An envelope's encoded bytes are what gets signed and what every tier forwards unchanged;
//! nothing downstream re-encodes it. Decoding treats the bytes as untrusted: the size is
//! capped before parsing, CBOR nesting is limited, the whole input must be consumed, and
//! every field is validated after parsing.

use std::collections::BTreeMap;

use nexus_policies::ids;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

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
    /// `idempotency_key`, trace ids, …
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The event's data, validated against the event's schema.
    pub payload: serde_json::Map<String, serde_json::Value>,
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
            headers: BTreeMap::new(),
            payload,
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
