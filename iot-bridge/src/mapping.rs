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
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime};

use self::json::{Found, Json};
use crate::template::{Template, TemplateError};

mod json;

/// The deepest JSON nesting accepted (objects and arrays), checked before parsing.
pub const MAX_JSON_DEPTH: usize = 16;
/// The longest sensor id accepted (the topic segment).
pub const MAX_SENSOR_ID_LEN: usize = 128;
/// Unix timestamps with this many digits before the point or more (≥ 10¹¹) are
/// milliseconds (10¹¹ s is the year 5138).
const MILLIS_FROM_DIGITS: i64 = 12;

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

    /// The index of the rule that maps `topic` (the first whose template matches).
    pub fn index_of(&self, topic: &str) -> Option<usize> {
        self.rules
            .iter()
            .position(|rule| rule.template.matches(topic).is_some())
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
                let doc = Json::parse(text).map_err(malformed)?;
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

fn malformed(error: serde_json::Error) -> Reject {
    Reject::new(
        Reason::MalformedJson,
        format!("payload is not JSON: {}", truncate(&error.to_string(), 200)),
    )
}

/// A JSON value as a number: a number (its text converted here, so that one out of an
/// `f64`'s range is `non_finite`), or a string holding one (some firmwares quote them).
fn json_number(value: Json<'_>) -> Result<f64, Reject> {
    match value.value().map_err(malformed)? {
        Found::Number(text) => parse_number(text),
        Found::String(text) => parse_number(text.trim()),
        other => Err(Reject::new(
            Reason::WrongType,
            format!("expected a number, found {}", json_type(&other)),
        )),
    }
}

fn json_type(value: &Found<'_>) -> &'static str {
    match value {
        Found::Null => "null",
        Found::Bool => "a boolean",
        Found::Number(_) => "a number",
        Found::String(_) => "a string",
        Found::Array => "an array",
        Found::Object => "an object",
    }
}

/// The reading's time: unix seconds or milliseconds (a number), or an RFC 3339 string (a
/// string without offset, as Tasmota sends, is taken as UTC).
fn parse_time(value: Json<'_>) -> Result<OffsetDateTime, Reject> {
    let bad = |what: String| Reject::new(Reason::BadTimestamp, what);
    match value.value().map_err(malformed)? {
        Found::Number(text) => unix_millis(text)
            .and_then(|millis| millis.checked_mul(1_000_000))
            .and_then(|nanos| OffsetDateTime::from_unix_timestamp_nanos(nanos).ok())
            .ok_or_else(|| {
                bad(format!(
                    "{} is not a unix time (seconds, or milliseconds from 10^11) in range",
                    truncate(text, 64)
                ))
            }),
        Found::String(text) => OffsetDateTime::parse(&text, &Rfc3339)
            .or_else(|_| {
                PrimitiveDateTime::parse(
                    &text,
                    time::macros::format_description!(
                        "[year]-[month]-[day]T[hour]:[minute]:[second]"
                    ),
                )
                .map(PrimitiveDateTime::assume_utc)
            })
            .map_err(|_| bad(format!("{:?} is not an RFC 3339 time", truncate(&text, 64)))),
        other => Err(bad(format!("expected a time, found {}", json_type(&other)))),
    }
}

/// A JSON number (its text) as unix milliseconds, computed exactly from the decimal digits,
/// never through a float: seconds, or milliseconds when it is 10¹¹ or more, rounded to the
/// millisecond (the envelope's precision; a half rounds up). `None` when negative or far
/// out of range.
fn unix_millis(text: &str) -> Option<i128> {
    // An i128 holds 38 digits; 30 is well past any time the `time` crate accepts.
    const MAX_DIGITS: usize = 30;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, exponent.parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // The value is `digits` × 10^`exponent`, `digits` without leading zeros.
    let digits: String = whole
        .chars()
        .chain(fraction.chars())
        .skip_while(|c| *c == '0')
        .collect();
    if digits.is_empty() {
        return Some(0);
    }
    if negative {
        return None;
    }
    let exponent = exponent.checked_sub(i64::try_from(fraction.len()).ok()?)?;
    let whole_digits = i64::try_from(digits.len()).ok()?.checked_add(exponent)?;
    let scale = if whole_digits >= MILLIS_FROM_DIGITS {
        0
    } else {
        3
    };
    // Milliseconds = `digits` × 10^`shift`.
    let shift = exponent.checked_add(scale)?;
    if let Ok(shift) = u32::try_from(shift) {
        if whole_digits.checked_add(scale)? > MAX_DIGITS as i64 {
            return None;
        }
        let digits: i128 = digits.parse().ok()?;
        return digits.checked_mul(10_i128.checked_pow(shift)?);
    }
    let dropped = usize::try_from(shift.unsigned_abs()).ok()?;
    let kept = digits.len().saturating_sub(dropped);
    if kept > MAX_DIGITS {
        return None;
    }
    let whole_millis: i128 = match kept {
        0 => 0,
        _ => digits.get(..kept)?.parse().ok()?,
    };
    // The first digit dropped decides; it is an implicit zero when all of them are dropped
    // and more.
    let first_dropped = if dropped <= digits.len() {
        digits.as_bytes().get(kept).copied().unwrap_or(b'0')
    } else {
        b'0'
    };
    Some(whole_millis + i128::from(first_dropped >= b'5'))
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
