//! The `iot.sensor_data@1` event: its payload, the schema check, the envelope.
//!
//! The schema is the event registry's (`events/registry/iot.sensor_data/1/schema.json`,
//! docs/events.md), embedded below. On the per-reading path it is checked by hand: five
//! required fields, no others, each with its type and bounds; a test checks that the hand
//! check and the registry's schema agree, payload by payload.

use nexus_wire::envelope::Envelope;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::mapping::Reading;

/// The event name.
pub const EVENT_NAME: &str = "iot.sensor_data";
/// The JSON Schema (draft 2020-12) of the payload, version 1.
pub const SCHEMA: &str = include_str!("../../events/registry/iot.sensor_data/1/schema.json");

/// Why a payload does not satisfy the schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("iot.sensor_data@1 payload: `{field}` {problem}")]
pub struct SchemaError {
    /// The offending field.
    pub field: String,
    /// What is wrong.
    pub problem: &'static str,
}

/// The payload of one reading: `{sensor_id, metric, value, unit, timestamp_unix}`.
pub fn payload(reading: &Reading<'_>) -> Map<String, Value> {
    let mut map = Map::with_capacity(5);
    map.insert("sensor_id".into(), reading.sensor_id.into());
    map.insert("metric".into(), reading.metric.into());
    map.insert("value".into(), reading.value.into());
    map.insert("unit".into(), reading.unit.into());
    map.insert("timestamp_unix".into(), reading.at.unix_timestamp().into());
    map
}

/// Checks a payload against `iot.sensor_data@1`.
pub fn validate(payload: &Map<String, Value>) -> Result<(), SchemaError> {
    let err = |field: &str, problem| {
        Err(SchemaError {
            field: field.to_owned(),
            problem,
        })
    };
    for key in payload.keys() {
        if !matches!(
            key.as_str(),
            "sensor_id" | "metric" | "value" | "unit" | "timestamp_unix"
        ) {
            return err(key, "is not a field of the schema");
        }
    }
    match payload.get("sensor_id") {
        Some(Value::String(s)) if (1..=128).contains(&s.chars().count()) => {}
        Some(_) => return err("sensor_id", "must be a string of 1-128 chars"),
        None => return err("sensor_id", "is required"),
    }
    match payload.get("metric") {
        Some(Value::String(s)) if (1..=64).contains(&s.chars().count()) => {}
        Some(_) => return err("metric", "must be a string of 1-64 chars"),
        None => return err("metric", "is required"),
    }
    match payload.get("value") {
        Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => {}
        Some(_) => return err("value", "must be a finite number"),
        None => return err("value", "is required"),
    }
    match payload.get("unit") {
        Some(Value::String(s)) if s.chars().count() <= 32 => {}
        Some(_) => return err("unit", "must be a string of at most 32 chars"),
        None => return err("unit", "is required"),
    }
    match payload.get("timestamp_unix") {
        Some(Value::Number(n)) if n.as_i64().is_some_and(|t| t >= 0) => {}
        Some(_) => return err("timestamp_unix", "must be a non-negative integer"),
        None => return err("timestamp_unix", "is required"),
    }
    Ok(())
}

/// The envelope of one reading: `ts` is the reading's time, `source` this node.
pub fn envelope(
    reading: &Reading<'_>,
    source: &str,
    tenant: &str,
) -> Result<Envelope, SchemaError> {
    let payload = payload(reading);
    validate(&payload)?;
    let at: OffsetDateTime = reading.at;
    Ok(Envelope::new(EVENT_NAME, source, Some(tenant), payload, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reading() -> Reading<'static> {
        Reading {
            sensor_id: "0x00158d0001a2b3c4",
            metric: "temperature",
            value: 21.3,
            unit: "°C",
            at: OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid"),
        }
    }

    #[test]
    fn a_reading_becomes_a_valid_tenant_envelope_on_the_iot_subject() {
        let envelope = envelope(&reading(), "edge-01", "salon-001").expect("valid");
        assert_eq!(envelope.subject(), "nexus.salon-001.iot.sensor_data");
        assert_eq!(envelope.ts, "2023-11-14T22:13:20.000Z");
        assert_eq!(
            Value::Object(envelope.payload.clone()),
            serde_json::json!({
                "sensor_id": "0x00158d0001a2b3c4", "metric": "temperature", "value": 21.3,
                "unit": "°C", "timestamp_unix": 1_700_000_000
            })
        );
        envelope.validate().expect("envelope fields valid");
    }

    #[test]
    fn the_schema_refuses_missing_extra_and_mistyped_fields() {
        let good = payload(&reading());
        validate(&good).expect("good");
        for (field, value) in [
            ("value", Value::Null),
            ("value", Value::String("1".into())),
            ("sensor_id", Value::String(String::new())),
            ("timestamp_unix", Value::from(-1)),
            ("unit", Value::String("x".repeat(33))),
            ("extra", Value::Bool(true)),
        ] {
            let mut bad = good.clone();
            bad.insert(field.into(), value);
            assert_eq!(validate(&bad).map_err(|e| e.field), Err(field.to_owned()));
        }
        let mut missing = good.clone();
        missing.remove("metric");
        assert!(validate(&missing).is_err());
    }

    /// The hand check and the registry's JSON Schema give the same verdict on the same
    /// payloads: bounds, types, extra and missing fields.
    #[test]
    fn the_hand_check_agrees_with_the_registered_schema() {
        let registry = nexus_events::Registry::builtin().expect("the built-in registry");
        let entry = registry.get(EVENT_NAME, 1).expect("iot.sensor_data@1");
        let good = payload(&reading());
        let mut cases = vec![good.clone()];
        for (field, values) in [
            (
                "sensor_id",
                vec![
                    json!(""),
                    json!("s"),
                    json!("x".repeat(128)),
                    json!("x".repeat(129)),
                    json!(7),
                ],
            ),
            (
                "metric",
                vec![
                    json!(""),
                    json!("m"),
                    json!("x".repeat(64)),
                    json!("x".repeat(65)),
                    json!(null),
                ],
            ),
            (
                "value",
                vec![
                    json!(0),
                    json!(-1.5),
                    json!(1e300),
                    json!("1"),
                    json!(null),
                    json!(true),
                ],
            ),
            (
                "unit",
                vec![
                    json!(""),
                    json!("°C"),
                    json!("x".repeat(32)),
                    json!("x".repeat(33)),
                    json!(1),
                ],
            ),
            (
                "timestamp_unix",
                vec![
                    json!(0),
                    json!(1_750_000_000),
                    json!(-1),
                    json!(1.5),
                    json!("1"),
                ],
            ),
            ("extra", vec![json!(true)]),
        ] {
            for value in values {
                let mut case = good.clone();
                case.insert(field.into(), value);
                cases.push(case);
            }
            let mut missing = good.clone();
            missing.remove(field);
            cases.push(missing);
        }
        for case in cases {
            let by_hand = validate(&case).is_ok();
            let by_schema = entry.check(&Value::Object(case.clone())).is_ok();
            assert_eq!(by_hand, by_schema, "{case:?}");
        }
    }

    #[test]
    fn the_embedded_schema_is_json_naming_the_five_fields() {
        let schema: Value = serde_json::from_str(SCHEMA).expect("json");
        let required = schema["required"].as_array().expect("required");
        assert_eq!(required.len(), 5);
    }
}
