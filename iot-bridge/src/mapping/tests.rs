//! Rules against real payloads of zigbee2mqtt, Tasmota, Shelly, ESPHome and plain-number
//! firmware, and every way a payload can be bad.

use nexus_config::{MetricRule, PayloadFormat, SensorRule};
use time::OffsetDateTime;

use super::*;

fn metric(name: &str, pointer: Option<&str>, unit: &str) -> MetricRule {
    MetricRule {
        name: name.to_owned(),
        pointer: pointer.map_or_else(|| format!("/{name}"), str::to_owned),
        unit: unit.to_owned(),
    }
}

fn rule(
    topic: &str,
    payload: PayloadFormat,
    metrics: Vec<MetricRule>,
    time: Option<&str>,
) -> SensorRule {
    SensorRule {
        topic: topic.to_owned(),
        payload,
        metrics,
        time: time.map(str::to_owned),
    }
}

/// The rules of the member example: one per firmware family.
fn rules() -> Rules {
    Rules::new(
        &[
            rule(
                "zigbee2mqtt/{sensor_id}",
                PayloadFormat::Json,
                vec![
                    metric("temperature", None, "°C"),
                    metric("humidity", None, "%"),
                    metric("battery", None, "%"),
                    metric("linkquality", None, "lqi"),
                ],
                Some("/last_seen"),
            ),
            rule(
                "tele/{sensor_id}/SENSOR",
                PayloadFormat::Json,
                vec![
                    metric("power", Some("/ENERGY/Power"), "W"),
                    metric("voltage", Some("/ENERGY/Voltage"), "V"),
                    metric("energy_total", Some("/ENERGY/Total"), "kWh"),
                    metric("temperature", Some("/AM2301/Temperature"), "°C"),
                ],
                Some("/Time"),
            ),
            rule(
                "shellies/{sensor_id}/sensor/{metric}",
                PayloadFormat::Number,
                vec![
                    metric("temperature", None, "°C"),
                    metric("humidity", None, "%"),
                    metric("battery", None, "%"),
                ],
                None,
            ),
            rule(
                "{sensor_id}/sensor/{metric}/state",
                PayloadFormat::Number,
                vec![],
                None,
            ),
            rule(
                "sensors/{sensor_id}/{metric}",
                PayloadFormat::Number,
                vec![],
                None,
            ),
        ],
        64 * 1024,
    )
    .expect("valid rules")
}

fn received() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_750_000_000).expect("valid")
}

/// (metric, value, unit, unix seconds) of each reading.
fn mapped(topic: &str, payload: &[u8]) -> Vec<(String, f64, String, i64)> {
    let rules = rules();
    let readings = rules
        .map(topic, payload, received())
        .unwrap_or_else(|e| panic!("{topic}: {e:?}"));
    readings
        .iter()
        .map(|r| {
            (
                r.metric.to_owned(),
                r.value,
                r.unit.to_owned(),
                r.at.unix_timestamp(),
            )
        })
        .collect()
}

fn refused(topic: &str, payload: &[u8]) -> Reason {
    match rules().map(topic, payload, received()) {
        Ok(readings) => panic!("{topic} {payload:?} mapped to {readings:?}"),
        Err(reject) => {
            assert!(!reject.detail.is_empty());
            reject.reason
        }
    }
}

fn r(metric: &str, value: f64, unit: &str, at: i64) -> (String, f64, String, i64) {
    (metric.to_owned(), value, unit.to_owned(), at)
}

#[test]
fn zigbee2mqtt_objects_give_one_reading_per_configured_metric_present() {
    // An Aqara WSDCGQ11LM as zigbee2mqtt publishes it (last_seen as ISO 8601).
    let payload = br#"{"battery":98,"humidity":45.12,"linkquality":134,"power_outage_count":3,"pressure":1012.3,"temperature":21.3,"voltage":3005,"last_seen":"2025-06-15T14:13:20.123Z"}"#;
    let got = mapped("zigbee2mqtt/0x00158d0001a2b3c4", payload);
    let at = 1_749_996_800;
    assert_eq!(
        got,
        vec![
            r("temperature", 21.3, "°C", at),
            r("humidity", 45.12, "%", at),
            r("battery", 98.0, "%", at),
            r("linkquality", 134.0, "lqi", at),
        ]
    );
    // A partial update (only what changed) maps what is there; last_seen as epoch ms.
    let got = mapped(
        "zigbee2mqtt/kitchen",
        br#"{"temperature":20.9,"last_seen":1750000123456}"#,
    );
    assert_eq!(got, vec![r("temperature", 20.9, "°C", 1_750_000_123)]);
}

#[test]
fn tasmota_tele_sensor_reads_nested_pointers_and_its_local_time() {
    let payload = br#"{"Time":"2025-06-15T16:13:20","ENERGY":{"TotalStartTime":"2024-01-01T00:00:00","Total":123.456,"Yesterday":1.2,"Today":0.5,"Period":3,"Power":42,"ApparentPower":50,"ReactivePower":27,"Factor":0.84,"Voltage":231,"Current":0.217}}"#;
    let got = mapped("tele/tasmota_ABC123/SENSOR", payload);
    // No offset in Tasmota's Time: taken as UTC (documented).
    let at = 1_750_004_000;
    assert_eq!(
        got,
        vec![
            r("power", 42.0, "W", at),
            r("voltage", 231.0, "V", at),
            r("energy_total", 123.456, "kWh", at),
        ]
    );
    let got = mapped(
        "tele/th16/SENSOR",
        br#"{"Time":"2025-06-15T16:13:20+02:00","AM2301":{"Temperature":22.4,"Humidity":51.0},"TempUnit":"C"}"#,
    );
    assert_eq!(got, vec![r("temperature", 22.4, "°C", 1_749_996_800)]);
}

#[test]
fn shelly_and_esphome_plain_numbers_take_the_metric_from_the_topic() {
    assert_eq!(
        mapped("shellies/shellyht-AB12CD/sensor/temperature", b"22.75"),
        vec![r("temperature", 22.75, "°C", 1_750_000_000)]
    );
    assert_eq!(
        mapped("shellies/shellyht-AB12CD/sensor/humidity", b"48.5\n"),
        vec![r("humidity", 48.5, "%", 1_750_000_000)]
    );
    // ESPHome state topics: `<node>/sensor/<name>/state`, any metric, no unit in the rule.
    assert_eq!(
        mapped("livingroom-esp/sensor/co2/state", b"612"),
        vec![r("co2", 612.0, "", 1_750_000_000)]
    );
    // Home-made firmware.
    assert_eq!(
        mapped("sensors/esp32-01/temperature", b"23.5"),
        vec![r("temperature", 23.5, "", 1_750_000_000)]
    );
    assert_eq!(
        mapped("sensors/esp32-01/pressure", b"-1.5e2"),
        vec![r("pressure", -150.0, "", 1_750_000_000)]
    );
}

#[test]
fn numeric_strings_in_json_are_numbers_but_other_types_are_refused() {
    assert_eq!(
        mapped("zigbee2mqtt/a", br#"{"temperature":"21.5"}"#),
        vec![r("temperature", 21.5, "°C", 1_750_000_000)]
    );
    for payload in [
        &br#"{"temperature":true}"#[..],
        br#"{"temperature":null}"#,
        br#"{"temperature":[21]}"#,
        br#"{"temperature":{"v":21}}"#,
    ] {
        assert_eq!(refused("zigbee2mqtt/a", payload), Reason::WrongType);
    }
}

#[test]
fn every_bad_payload_has_its_own_reason() {
    let cases: &[(&str, &[u8], Reason)] = &[
        ("sensors/s1/temperature", b"warm", Reason::NotANumber),
        ("sensors/s1/temperature", b"", Reason::NotANumber),
        ("sensors/s1/temperature", b"21,5", Reason::NotANumber),
        ("sensors/s1/temperature", b"NaN", Reason::NonFinite),
        ("sensors/s1/temperature", b"inf", Reason::NonFinite),
        ("sensors/s1/temperature", b"-Infinity", Reason::NonFinite),
        ("sensors/s1/temperature", b"1e999", Reason::NonFinite),
        (
            "zigbee2mqtt/a",
            br#"{"temperature":"NaN"}"#,
            Reason::NonFinite,
        ),
        (
            "zigbee2mqtt/a",
            br#"{"temperature":"hot"}"#,
            Reason::NotANumber,
        ),
        (
            "zigbee2mqtt/a",
            br#"{"pressure":1012}"#,
            Reason::MissingField,
        ),
        ("zigbee2mqtt/a", br#"{}"#, Reason::MissingField),
        ("zigbee2mqtt/a", br#"[1,2]"#, Reason::MissingField),
        (
            "zigbee2mqtt/a",
            br#"{"temperature":21.3"#,
            Reason::MalformedJson,
        ),
        ("zigbee2mqtt/a", b"online", Reason::MalformedJson),
        (
            "zigbee2mqtt/a",
            b"{\"temperature\":21,\"x\":\"\xff\xfe\"}",
            Reason::InvalidUtf8,
        ),
        ("sensors/s1/temperature", b"\xff", Reason::InvalidUtf8),
        (
            "zigbee2mqtt/a",
            br#"{"temperature":21,"last_seen":"yesterday"}"#,
            Reason::BadTimestamp,
        ),
        (
            "zigbee2mqtt/a",
            br#"{"temperature":21,"last_seen":-5}"#,
            Reason::BadTimestamp,
        ),
        (
            "zigbee2mqtt/a",
            br#"{"temperature":21,"last_seen":true}"#,
            Reason::BadTimestamp,
        ),
        ("shellies/s/sensor/lux", b"300", Reason::UnknownMetric),
        ("unknown/topic", b"1", Reason::NoRule),
        ("sensors/s1", b"1", Reason::NoRule),
        ("sensors/s1/temperature/extra", b"1", Reason::NoRule),
    ];
    for (topic, payload, reason) in cases {
        assert_eq!(
            refused(topic, payload),
            *reason,
            "{topic} {:?}",
            String::from_utf8_lossy(payload)
        );
    }
}

/// The time of the one reading of a zigbee2mqtt message with this `last_seen`.
fn seen_at(last_seen: &str) -> Result<OffsetDateTime, Reason> {
    let payload = format!(r#"{{"temperature":21,"last_seen":{last_seen}}}"#);
    let rules = rules();
    let readings = rules
        .map("zigbee2mqtt/a", payload.as_bytes(), received())
        .map_err(|reject| reject.reason)?;
    Ok(readings[0].at)
}

fn unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).expect("in range")
}

/// A numeric time is exact to the millisecond: integers by integer arithmetic (seconds, or
/// milliseconds from 10^11), decimals rounded to the nearest millisecond, never truncated
/// through a float (1749996800365 once landed as `…20.364Z`).
#[test]
fn numeric_times_are_exact_to_the_millisecond() {
    for (last_seen, ms) in [
        ("1749996800365", 1_749_996_800_365),
        ("1749996800.365", 1_749_996_800_365),
        ("1.749996800365e12", 1_749_996_800_365),
        ("1749996800365.0", 1_749_996_800_365),
        ("1749996800", 1_749_996_800_000),
        ("1749996800.3645", 1_749_996_800_365),
        ("1749996800.36449999", 1_749_996_800_364),
        ("1749996800.9996", 1_749_996_801_000),
        ("1749996800365.5", 1_749_996_800_366),
        ("1749996800365.49", 1_749_996_800_365),
        ("17499968.00365E2", 1_749_996_800_365),
        ("99999999999", 99_999_999_999_000),
        ("1e11", 100_000_000_000),
        ("0.0005", 1),
        ("0.00049", 0),
        ("0", 0),
        ("-0.0", 0),
    ] {
        assert_eq!(seen_at(last_seen), Ok(unix_ms(ms)), "{last_seen}");
    }
    // Every millisecond of a second, as epoch milliseconds and as decimal seconds.
    for ms in 1_749_996_800_000..1_749_996_801_000_i64 {
        assert_eq!(seen_at(&ms.to_string()), Ok(unix_ms(ms)), "{ms}");
        let seconds = format!("{}.{:03}", ms / 1000, ms % 1000);
        assert_eq!(seen_at(&seconds), Ok(unix_ms(ms)), "{seconds}");
    }
    // The envelope carries it to the millisecond.
    let rules = rules();
    let readings = rules
        .map(
            "zigbee2mqtt/a",
            br#"{"temperature":21,"last_seen":1749996800365}"#,
            received(),
        )
        .expect("mapped");
    let envelope =
        crate::sensor_data::envelope(&readings[0], "edge-01", "salon-001").expect("valid");
    assert_eq!(envelope.ts, "2025-06-15T14:13:20.365Z");
    for bad in [
        "-5",
        "-0.5",
        "1e999",
        "1e20",
        "-1e999",
        "1e99999999999999999999",
    ] {
        assert_eq!(seen_at(bad), Err(Reason::BadTimestamp), "{bad}");
    }
}

/// A number beyond an f64's range is valid JSON: as a metric it is `non_finite` (and, one
/// metric bad, the whole message is refused); elsewhere it costs nothing.
#[test]
fn numbers_out_of_range_are_non_finite_not_malformed() {
    for payload in [
        &br#"{"temperature":1e999}"#[..],
        br#"{"temperature":-1e999}"#,
        br#"{"temperature":1E+400,"humidity":45}"#,
        br#"{"humidity":45,"temperature":-123456789e999}"#,
    ] {
        let reject = rules()
            .map("zigbee2mqtt/a", payload, received())
            .expect_err("refused");
        assert_eq!(
            reject.reason,
            Reason::NonFinite,
            "{}",
            String::from_utf8_lossy(payload)
        );
        assert!(
            reject.detail.starts_with("temperature at /temperature: "),
            "{reject:?}"
        );
    }
    assert_eq!(
        mapped(
            "zigbee2mqtt/a",
            br#"{"humidity":45,"pressure":1e999,"x":[-1e999]}"#
        ),
        vec![r("humidity", 45.0, "%", 1_750_000_000)]
    );
    assert_eq!(
        refused(
            "tele/plug/SENSOR",
            br#"{"ENERGY":{"Power":42,"Voltage":1e999}}"#
        ),
        Reason::NonFinite
    );
    // The smallest numbers underflow to zero, as JSON parsers do.
    assert_eq!(
        mapped("zigbee2mqtt/a", br#"{"humidity":1e-999}"#),
        vec![r("humidity", 0.0, "%", 1_750_000_000)]
    );
}

#[test]
fn deep_nesting_is_refused_before_parsing_but_brackets_in_strings_do_not_count() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(refused("zigbee2mqtt/a", deep.as_bytes()), Reason::TooDeep);
    let nested = format!(
        "{{\"temperature\":1,\"x\":{}1{}}}",
        "[".repeat(MAX_JSON_DEPTH),
        "]".repeat(MAX_JSON_DEPTH)
    );
    assert_eq!(refused("zigbee2mqtt/a", nested.as_bytes()), Reason::TooDeep);
    let in_string = format!("{{\"temperature\":1,\"note\":\"{}\\\"\"}}", "[".repeat(100));
    assert_eq!(mapped("zigbee2mqtt/a", in_string.as_bytes()).len(), 1);
}

#[test]
fn payloads_over_the_limit_are_refused_and_at_the_limit_accepted() {
    let rules = Rules::new(
        &[rule(
            "sensors/{sensor_id}/{metric}",
            PayloadFormat::Number,
            vec![],
            None,
        )],
        8,
    )
    .expect("valid");
    assert!(rules.map("sensors/a/t", b"    21.5", received()).is_ok());
    let reject = rules
        .map("sensors/a/t", b"     21.5", received())
        .expect_err("over");
    assert_eq!(reject.reason, Reason::Oversized);
}

#[test]
fn sensor_ids_with_control_characters_or_too_long_are_refused() {
    assert_eq!(refused("sensors/a\u{7}b/t", b"1"), Reason::BadSensorId);
    let long = format!("sensors/{}/t", "x".repeat(MAX_SENSOR_ID_LEN + 1));
    assert_eq!(refused(&long, b"1"), Reason::BadSensorId);
}

#[test]
fn the_first_matching_rule_wins_and_filters_are_deduplicated() {
    let rules = rules();
    assert_eq!(
        rules.filters(),
        vec![
            "zigbee2mqtt/+",
            "tele/+/SENSOR",
            "shellies/+/sensor/+",
            "+/sensor/+/state",
            "sensors/+/+"
        ]
    );
    // `shellies/x/sensor/temperature` is not an ESPHome state topic (no `/state`).
    assert_eq!(
        mapped("shellies/x/sensor/temperature", b"1")[0].2,
        "°C".to_owned()
    );
}

#[test]
fn reason_codes_are_distinct_and_indexed() {
    for (i, reason) in Reason::ALL.iter().enumerate() {
        assert_eq!(reason.index(), i);
    }
    let mut codes: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), Reason::ALL.len());
}
