//! The mapping rules: an MQTT topic and payload → sensor readings, or a reason to refuse.
//!
//! Pure: no I/O, no clock (the receive time is an argument). Every way a payload can be
//! wrong ends in a [`Reject`] with a stable [`Reason`]; nothing here panics on input.
//!
//! A message maps all-or-nothing: if one configured metric that is present is bad (not a
//! number, NaN, wrong type), the whole message is refused, so a misconfigured or broken
//! sensor shows up in the dead-letter store instead of as half its data. A metric that is
//! absent from a JSON object is skipped (zigbee2mqtt and Tasmota send partial objects);
//! a message in which none of the rule's metrics is present is refused as `missing_field`.

use heapless::Vec as HVec;
use nexus_config::{PayloadFormat, SensorRule, MAX_METRICS_PER_RULE};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::template::{Template, TemplateError};

/// The deepest JSON nesting accepted (objects and arrays), checked before parsing.
pub const MAX_JSON_DEPTH: usize = 16;
/// The longest sensor id accepted (the topic segment).
pub const MAX_SENSOR_ID_LEN: usize = 128;
/// Unix timestamps at or above this are milliseconds (1e11 s is the year 5138).
const MILLIS_THRESHOLD: f64 = 1e11;

/// Why a message was refused: a stable code for counters, logs and the dead-letter store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No rule's topic template matches the topic.
    NoRule,
    /// The payload is larger than `iot.max_payload`.
    Oversized,
    /// The payload is not UTF-8.
    InvalidUtf8,
    /// The payload is not JSON (json rules).
    MalformedJson,
    /// The JSON nests deeper than [`MAX_JSON_DEPTH`].
    TooDeep,
    /// A value is text that is not a number.
    NotANumber,
    /// A value is NaN or infinite.
    NonFinite,
    /// A value has a JSON type other than number or numeric string.
    WrongType,
    /// None of the rule's metrics is in the payload.
    MissingField,
    /// A `{metric}` from the topic that the rule does not list.
    UnknownMetric,
    /// The payload's time field is present but unusable.
    BadTimestamp,
    /// The `{sensor_id}` segment is too long or has control characters.
    BadSensorId,
    /// The event could not be built or stored (an internal failure, not the sensor's).
    Internal,
}

impl Reason {
    /// Every reason, in counter order.
    pub const ALL: [Reason; 13] = [
        Reason::NoRule,
        Reason::Oversized,
        Reason::InvalidUtf8,
        Reason::MalformedJson,
        Reason::TooDeep,
        Reason::NotANumber,
        Reason::NonFinite,
        Reason::WrongType,
        Reason::MissingField,
        Reason::UnknownMetric,
        Reason::BadTimestamp,
        Reason::BadSensorId,
        Reason::Internal,
    ];

    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoRule => "no_rule",
            Reason::Oversized => "oversized",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::MalformedJson => "malformed_json",
            Reason::TooDeep => "too_deep",
            Reason::NotANumber => "not_a_number",
            Reason::NonFinite => "non_finite",
            Reason::WrongType => "wrong_type",
            Reason::MissingField => "missing_field",
            Reason::UnknownMetric => "unknown_metric",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::BadSensorId => "bad_sensor_id",
            Reason::Internal => "internal",
        }
    }

    /// The index of this reason in [`Reason::ALL`].
    pub fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused message: the reason and what exactly was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The stable code.
    pub reason: Reason,
    /// For people.
    pub detail: String,
}

impl Reject {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// One reading, borrowing from the topic and the rule (no allocation until the event is
/// built).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading<'a> {
    /// The `{sensor_id}` segment.
    pub sensor_id: &'a str,
    /// The metric's name.
    pub metric: &'a str,
    /// A finite number.
    pub value: f64,
    /// The unit (may be empty).
    pub unit: &'a str,
    /// When it was measured: the payload's time, else the receive time.
    pub at: OffsetDateTime,
}

/// The readings of one message: at most [`MAX_METRICS_PER_RULE`], on the stack.
pub type Readings<'a> = HVec<Reading<'a>, MAX_METRICS_PER_RULE>;

/// A compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    template: Template,
    config: SensorRule,
}

/// The compiled `[[iot.sensors]]` rules, tried in order.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
    max_payload: usize,
}

impl Rules {
    /// Compiles the rules; `max_payload` is the policy limit on payload bytes.
    pub fn new(sensors: &[SensorRule], max_payload: usize) -> Result<Self, TemplateError> {
        let rules = sensors
            .iter()
            .map(|config| {
                Ok(Rule {
                    template: Template::parse(&config.topic)?,
                    config: config.clone(),
                })
            })
            .collect::<Result<_, TemplateError>>()?;
        Ok(Self { rules, max_payload })
    }

    /// The topic filters to subscribe to (each once, in rule order).
    pub fn filters(&self) -> Vec<String> {
        let mut filters: Vec<String> = Vec::new();
        for rule in &self.rules {
            let filter = rule.template.filter();
            if !filters.iter().any(|f| f == filter) {
                filters.push(filter.to_owned());
            }
        }
        filters
    }

    /// Maps one message; `received` is used when the payload carries no time.
    pub fn map<'a>(
        &'a self,
        topic: &'a str,
        payload: &[u8],
        received: OffsetDateTime,
    ) -> Result<Readings<'a>, Reject> {
        if payload.len() > self.max_payload {
            return Err(Reject::new(
                Reason::Oversized,
                format!(
                    "payload of {} bytes is over the {}-byte limit (iot.max_payload)",
                    payload.len(),
                    self.max_payload
                ),
            ));
        }
        let (rule, captures) = self
            .rules
            .iter()
            .find_map(|rule| rule.template.matches(topic).map(|c| (rule, c)))
            .ok_or_else(|| Reject::new(Reason::NoRule, "no [[iot.sensors]] topic matches"))?;
        let sensor_id = captures.sensor_id;
        if sensor_id.len() > MAX_SENSOR_ID_LEN || sensor_id.chars().any(char::is_control) {
            return Err(Reject::new(
                Reason::BadSensorId,
                format!("the sensor id is longer than {MAX_SENSOR_ID_LEN} bytes or has control characters"),
            ));
        }
        let text = std::str::from_utf8(payload)
            .map_err(|e| Reject::new(Reason::InvalidUtf8, format!("payload is not UTF-8 ({e})")))?;
        let config = &rule.config;
        let mut readings = Readings::new();
        match config.payload {
            PayloadFormat::Number => {
                let (metric, unit) = match captures.metric {
                    Some(metric) => {
                        let unit = if config.metrics.is_empty() {
                            ""
                        } else {
                            config
                                .metrics
                                .iter()
                                .find(|m| m.name == metric)
                                .map(|m| m.unit.as_str())
                                .ok_or_else(|| {
                                    Reject::new(
                                        Reason::UnknownMetric,
                                        format!(
                                            "metric {:?} is not listed in the rule for {}",
                                            truncate(metric, 64),
                                            config.topic
                                        ),
                                    )
                                })?
                        };
                        (metric, unit)
                    }
                    None => match config.metrics.first() {
                        Some(m) => (m.name.as_str(), m.unit.as_str()),
                        None => return Err(Reject::new(Reason::Internal, "rule has no metric")),
                    },
                };
                if metric.len() > 64 || metric.chars().any(char::is_control) {
                    return Err(Reject::new(
                        Reason::UnknownMetric,
                        "metric name is too long",
                    ));
                }
                let value = parse_number(text.trim())?;
                push(
                    &mut readings,
                    Reading {
                        sensor_id,
                        metric,
                        value,
                        unit,
                        at: received,
                    },
                )?;
            }
            PayloadFormat::Json => {
                check_depth(text.as_bytes())?;
                let doc: Value = serde_json::from_str(text).map_err(|e| {
                    Reject::new(
                        Reason::MalformedJson,
                        format!("payload is not JSON: {}", truncate(&e.to_string(), 200)),
                    )
                })?;
                let at = match &config.time {
                    Some(pointer) => match doc.pointer(pointer) {
                        Some(value) => parse_time(value)?,
                        None => received,
                    },
                    None => received,
                };
                for metric in &config.metrics {
                    if captures.metric.is_some_and(|m| m != metric.name) {
                        continue;
                    }
                    let Some(value) = doc.pointer(&metric.pointer) else {
                        continue;
                    };
                    let value = json_number(value).map_err(|mut reject| {
                        reject.detail =
                            format!("{} at {}: {}", metric.name, metric.pointer, reject.detail);
                        reject
                    })?;
                    push(
                        &mut readings,
                        Reading {
                            sensor_id,
                            metric: &metric.name,
                            value,
                            unit: &metric.unit,
                            at,
                        },
                    )?;
                }
                if readings.is_empty() {
                    let wanted: Vec<&str> =
                        config.metrics.iter().map(|m| m.pointer.as_str()).collect();
                    return Err(Reject::new(
                        Reason::MissingField,
                        format!("none of {} is in the payload", wanted.join(", ")),
                    ));
                }
            }
        }
        Ok(readings)
    }
}

fn push<'a>(readings: &mut Readings<'a>, reading: Reading<'a>) -> Result<(), Reject> {
    readings
        .push(reading)
        .map_err(|_| Reject::new(Reason::Internal, "more metrics than a rule may have"))
}

/// A plain-number payload: decimal text, finite.
fn parse_number(text: &str) -> Result<f64, Reject> {
    // `f64::from_str` also takes "NaN", "inf" and "infinity": refused as non-finite below.
    let value: f64 = text.parse().map_err(|_| {
        Reject::new(
            Reason::NotANumber,
            format!("{:?} is not a number", truncate(text, 64)),
        )
    })?;
    if !value.is_finite() {
        return Err(Reject::new(
            Reason::NonFinite,
            format!("{:?} is not a finite number", truncate(text, 64)),
        ));
    }
    Ok(value)
}

/// A JSON value as a number: a number, or a string holding one (some firmwares quote them).
fn json_number(value: &Value) -> Result<f64, Reject> {
    match value {
        // serde_json never yields NaN/Inf from JSON text, but an f64 can overflow to none.
        Value::Number(n) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .ok_or_else(|| Reject::new(Reason::NonFinite, "not a finite number")),
        Value::String(text) => parse_number(text.trim()),
        other => Err(Reject::new(
            Reason::WrongType,
            format!("expected a number, found {}", json_type(other)),
        )),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The reading's time: unix seconds or milliseconds (a number), or an RFC 3339 string (a
/// string without offset, as Tasmota sends, is taken as UTC).
fn parse_time(value: &Value) -> Result<OffsetDateTime, Reject> {
    let bad = |what: String| Reject::new(Reason::BadTimestamp, what);
    match value {
        Value::Number(n) => {
            let v = n
                .as_f64()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| bad(format!("{n} is not a unix time")))?;
            let nanos = if v >= MILLIS_THRESHOLD {
                v * 1e6
            } else {
                v * 1e9
            };
            // `as` saturates; the range check below refuses what saturated.
            OffsetDateTime::from_unix_timestamp_nanos(nanos as i128)
                .map_err(|_| bad(format!("{n} is out of range")))
        }
        Value::String(text) => OffsetDateTime::parse(text, &Rfc3339)
            .or_else(|_| {
                PrimitiveDateTime::parse(
                    text,
                    time::macros::format_description!(
                        "[year]-[month]-[day]T[hour]:[minute]:[second]"
                    ),
                )
                .map(PrimitiveDateTime::assume_utc)
            })
            .map_err(|_| bad(format!("{:?} is not an RFC 3339 time", truncate(text, 64)))),
        other => Err(bad(format!("expected a time, found {}", json_type(other)))),
    }
}

/// Refuses JSON nested deeper than [`MAX_JSON_DEPTH`] without parsing it (serde_json's own
/// limit is 128, and a deep document costs memory before it fails).
fn check_depth(bytes: &[u8]) -> Result<(), Reject> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(Reject::new(
                        Reason::TooDeep,
                        format!("JSON nests deeper than {MAX_JSON_DEPTH} levels"),
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

#[cfg(test)]
mod tests;
