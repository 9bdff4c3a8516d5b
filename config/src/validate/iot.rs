//! `[iot]` and its `[[iot.sensors]]`: the MQTT broker a member reads sensors from, and how
//! their messages map to events (tests: `config/tests/iot.rs`).
//!
//! `[iot.tls]` is read like a link's (`links`); topic templates are parsed by
//! [`TopicTemplate`], which the IoT bridge uses too.

use std::time::Duration;

use figment::value::{Dict, Value};

use super::node::PartialNode;
use super::reader::{truncate, Got, Reader, Reported, Section};
use super::schema::{
    IOT_KEEP_ALIVE, IOT_KEEP_ALIVE_RANGE, IOT_MAX_PAYLOAD, IOT_MAX_PAYLOAD_RANGE, IOT_QUEUE,
    IOT_QUEUE_RANGE, IOT_SESSION_EXPIRY, METRIC_KEYS, RECONNECT_MAX_DELAY, SENSOR_KEYS, TLS_KEYS,
    UNIT_MAX_LEN,
};
use crate::error::ErrorKind;
use crate::model::{
    IotConfig, MetricRule, Mode, MqttProtocol, PayloadFormat, SensorRule, TlsConfig,
    MAX_METRICS_PER_RULE,
};
use crate::redact::redact_url;
use crate::source;
use crate::topic::{TopicTemplate, MAX_TOPIC_SEGMENTS};

impl Reader<'_> {
    /// `[iot]` and its `[[iot.sensors]]` (member only, with a tenant).
    pub(super) fn iot(&mut self, s: &Section<'_>, node: Option<&PartialNode>) -> Option<IotConfig> {
        if !s.present {
            return None;
        }
        let dict = s.dict?;
        if let Some(mode @ (Mode::Hub | Mode::Root)) = node.and_then(|n| n.mode) {
            self.push(
                ErrorKind::ForbiddenSection,
                s.origin.clone(),
                "iot",
                format!(
                    "a {mode} does not read sensors: remove the [iot] section (the MQTT bridge \
                     runs on members, next to the sensors' broker)"
                ),
            );
            return None;
        }
        if node.is_some_and(|n| n.tenant.is_none() && n.id.is_some()) {
            self.push(
                ErrorKind::MissingKey,
                self.fallback.clone(),
                "node.tenant",
                "[iot] publishes tenant events (nexus.{tenant}.iot.sensor_data): add \
                 tenant = \"salon-001\" under [node]"
                    .to_owned(),
            );
        }
        let url = self
            .required_text(s, "url", "url = \"mqtt://127.0.0.1:1883\" under [iot]")
            .and_then(|g| self.mqtt_url(g));
        let client_id = match self.optional_text(s, "client_id") {
            Some(g) if !g.value.is_empty() && g.value.len() <= 128 => Some(g.value),
            Some(g) => {
                self.push(
                    ErrorKind::InvalidValue,
                    g.origin,
                    &g.path,
                    "must be 1-128 chars (it names this agent's session on the broker)".to_owned(),
                );
                None
            }
            None => node
                .and_then(|n| n.id.as_ref())
                .map(|id| format!("nexus-{id}")),
        };
        let username = self.optional_text(s, "username").map(|g| g.value);
        let password = self.optional_text(s, "password").map(|g| g.value);
        if password.is_some() && username.is_none() {
            self.push(
                ErrorKind::MissingKey,
                self.fallback.clone(),
                "iot.username",
                "password is set without username: MQTT sends a password only with a username"
                    .to_owned(),
            );
        }
        let qos = self
            .integer(s, "qos", 0..=1)
            .and_then(|v| u8::try_from(v).ok())
            .unwrap_or(1);
        let protocol = self.mqtt_protocol(s);
        let session_expiry = self.session_expiry(s, protocol);
        let keep_alive = self.duration(s, "keep_alive", IOT_KEEP_ALIVE);
        if !IOT_KEEP_ALIVE_RANGE.contains(&keep_alive.as_secs()) || keep_alive.subsec_nanos() != 0 {
            if let Some((_, origin, path)) = self.raw(s, "keep_alive") {
                self.push(
                    ErrorKind::InvalidValue,
                    origin,
                    &path,
                    format!(
                        "{} is out of range: use whole seconds from \"5s\" to \"18h 12m 15s\" \
                         (MQTT's 65535 s; rumqttc's MQTT 5 client refuses less than 5 s)",
                        humantime::format_duration(keep_alive)
                    ),
                );
            }
        }
        let reconnect_max_delay = self.duration(s, "reconnect_max_delay", RECONNECT_MAX_DELAY);
        let max_payload = self
            .integer(s, "max_payload", IOT_MAX_PAYLOAD_RANGE)
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(IOT_MAX_PAYLOAD);
        let queue = self
            .integer(s, "queue", IOT_QUEUE_RANGE)
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(IOT_QUEUE);
        let tls_section = self.subtable(s, "tls", TLS_KEYS);
        let tls = self.tls(&tls_section);
        let sensors = self.sensors(dict, s);
        let (url, host, port, secure) = url?;
        let tls = match tls {
            None if secure => Some(TlsConfig::default()),
            Some(_) if !secure => {
                self.push(
                    ErrorKind::InvalidValue,
                    tls_section.origin.clone(),
                    "iot.tls",
                    "[iot.tls] is set but iot.url is mqtt:// (clear text): use mqtts://".to_owned(),
                );
                None
            }
            tls => tls,
        };
        Some(IotConfig {
            url,
            host,
            port,
            tls,
            client_id: client_id?,
            username,
            password,
            protocol: protocol?,
            session_expiry,
            qos,
            keep_alive,
            reconnect_max_delay,
            max_payload,
            queue,
            sensors: sensors?,
        })
    }

    /// `iot.protocol`: `"3.1.1"` (default) or `"5"` (the integer 5 too: TOML invites it, and
    /// the environment turns `5` into one). `None` when bad (reported).
    fn mqtt_protocol(&mut self, s: &Section<'_>) -> Option<MqttProtocol> {
        let Some((value, origin, path)) = self.raw(s, "protocol") else {
            return Some(MqttProtocol::default());
        };
        let text = match value {
            Value::String(_, text) => text.trim().to_owned(),
            Value::Num(_, n) => n.to_i128().map(|n| n.to_string()).unwrap_or_default(),
            other => other.to_actual().to_string(),
        };
        if let Some(protocol) = MqttProtocol::from_name(&text) {
            return Some(protocol);
        }
        let hint = match text.as_str() {
            "3" | "3.1" | "4" => ": use \"3.1.1\" (MQTT 3.1 is not supported)",
            _ => "",
        };
        self.push(
            ErrorKind::InvalidValue,
            origin,
            &path,
            format!(
                "{text:?} is not a supported MQTT version: use protocol = {:?} (default) or \
                 protocol = {:?}{hint}",
                MqttProtocol::V311.as_str(),
                MqttProtocol::V5.as_str()
            ),
        );
        None
    }

    /// `iot.session_expiry`: MQTT 5 only, 1 s to u32::MAX - 1 seconds (u32::MAX means
    /// "never" in MQTT 5, which we do not offer: a forgotten session would grow forever).
    fn session_expiry(&mut self, s: &Section<'_>, protocol: Option<MqttProtocol>) -> Duration {
        let Some(expiry) = self.optional_duration(s, "session_expiry") else {
            return IOT_SESSION_EXPIRY;
        };
        let path = format!("{}.session_expiry", s.name);
        let origin = self
            .raw(s, "session_expiry")
            .map(|(_, origin, _)| origin)
            .unwrap_or_else(|| self.fallback.clone());
        if protocol == Some(MqttProtocol::V311) {
            self.push(
                ErrorKind::InvalidValue,
                origin,
                &path,
                "session_expiry is an MQTT 5 setting: with protocol 3.1.1 the broker decides \
                 how long a session lives (mosquitto: persistent_client_expiration); remove \
                 it, or set protocol = \"5\""
                    .to_owned(),
            );
        } else if expiry.as_secs() == 0 || expiry.as_secs() >= u64::from(u32::MAX) {
            self.push(
                ErrorKind::InvalidValue,
                origin,
                &path,
                format!(
                    "{} is out of range: use 1s to {}s (a session that never expires would \
                     keep queueing for an agent that is gone)",
                    humantime::format_duration(expiry),
                    u32::MAX - 1
                ),
            );
        }
        expiry
    }

    /// `iot.url`: `mqtt://host[:port]` or `mqtts://host[:port]`, optionally with
    /// credentials (refused: they belong in username/password). Returns the URL, host, port
    /// and whether TLS is required.
    fn mqtt_url(&mut self, got: Got<String>) -> Option<(String, String, u16, bool)> {
        let text = got.value.trim();
        let parsed = text
            .split_once("://")
            .and_then(|(scheme, rest)| match scheme {
                "mqtt" => Some((rest, 1883u16, false)),
                "mqtts" => Some((rest, 8883u16, true)),
                _ => None,
            })
            .and_then(|(rest, default_port, secure)| {
                let rest = rest.strip_suffix('/').unwrap_or(rest);
                if rest.contains(['@', '/', '?', '#']) || rest.is_empty() {
                    return None;
                }
                let (host, port) = match rest.rsplit_once(':') {
                    Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                        (host, port.parse::<u16>().ok().filter(|p| *p > 0)?)
                    }
                    _ => (rest, default_port),
                };
                let host = host.trim_start_matches('[').trim_end_matches(']');
                (!host.is_empty()).then(|| (host.to_owned(), port, secure))
            });
        match parsed {
            Some((host, port, secure)) => Some((text.to_owned(), host, port, secure)),
            None => {
                self.push(
                    ErrorKind::InvalidValue,
                    got.origin,
                    &got.path,
                    format!(
                        "{:?} is not an MQTT broker URL: use mqtt://host[:port] or \
                         mqtts://host[:port] (credentials go in username and password)",
                        redact_url(&got.value)
                    ),
                );
                None
            }
        }
    }

    /// `[[iot.sensors]]`: at least one rule; each checked, every problem reported by index.
    fn sensors(&mut self, dict: &Dict, s: &Section<'_>) -> Option<Vec<SensorRule>> {
        let value = dict
            .get("sensors")
            .filter(|v| !matches!(v, Value::Empty(..)));
        let Some(value) = value else {
            self.push(
                ErrorKind::MissingKey,
                s.origin.clone(),
                "iot.sensors",
                "no sensor rules: add at least one [[iot.sensors]] with a topic, e.g. \
                 topic = \"zigbee2mqtt/{sensor_id}\" and metrics = { temperature = \"°C\" }"
                    .to_owned(),
            );
            return None;
        };
        let Value::Array(_, entries) = value else {
            let origin = source::origin_of(self.figment, value, &["iot", "sensors"]);
            self.push(
                ErrorKind::InvalidType,
                origin,
                "iot.sensors",
                format!(
                    "expected an array of tables, found {}: write each rule as an \
                     [[iot.sensors]] entry (two brackets)",
                    value.to_actual()
                ),
            );
            return None;
        };
        let mut rules = Vec::with_capacity(entries.len());
        let mut bad = entries.is_empty();
        if entries.is_empty() {
            self.push(
                ErrorKind::InvalidValue,
                s.origin.clone(),
                "iot.sensors",
                "no sensor rules: add at least one [[iot.sensors]]".to_owned(),
            );
        }
        for (index, entry) in entries.iter().enumerate() {
            let section = self.table(Some(entry), format!("iot.sensors[{index}]"), SENSOR_KEYS);
            match self.sensor_rule(&section) {
                Some(rule) => rules.push(rule),
                None => bad = true,
            }
        }
        (!bad).then_some(rules)
    }

    fn sensor_rule(&mut self, s: &Section<'_>) -> Option<SensorRule> {
        s.dict?;
        let topic = self
            .required_text(s, "topic", "topic = \"zigbee2mqtt/{sensor_id}\"")
            .and_then(|g| match TopicTemplate::parse(&g.value) {
                Ok(template) => Some((g.value, template.has_metric())),
                Err(problem) => {
                    self.push(
                        ErrorKind::InvalidValue,
                        g.origin,
                        &g.path,
                        format!(
                            "{:?} is not a topic template: {problem} (at most {} segments: \
                             literals, `+`, `{{sensor_id}}` once, `{{metric}}` at most once, \
                             and a last `#`)",
                            truncate(&g.value),
                            MAX_TOPIC_SEGMENTS,
                        ),
                    );
                    None
                }
            });
        let has_metric = topic.as_ref().is_some_and(|(_, has_metric)| *has_metric);
        let topic = topic.map(|(topic, _)| topic);
        let payload = match self.optional_text(s, "payload") {
            None if has_metric => Some(PayloadFormat::Number),
            None => Some(PayloadFormat::Json),
            Some(g) => self.choice(g, "a payload format"),
        };
        let time = self.optional_text(s, "time").and_then(|g| {
            if g.value.starts_with('/') {
                return Some(g.value);
            }
            self.push(
                ErrorKind::InvalidValue,
                g.origin,
                &g.path,
                format!(
                    "{:?} is not a JSON pointer: start it with `/`, e.g. \"/Time\"",
                    truncate(&g.value)
                ),
            );
            None
        });
        let metrics = self.metrics(s);
        let (topic, payload, metrics) = (topic?, payload?, metrics?);
        let count_problem = match payload {
            PayloadFormat::Json if metrics.is_empty() => Some(
                "a json rule reads the metrics it lists: add metrics = { temperature = \"°C\" }",
            ),
            PayloadFormat::Number if !has_metric && metrics.len() != 1 => Some(
                "a number rule without {metric} in its topic names exactly one metric: \
                 metrics = { temperature = \"°C\" }",
            ),
            _ => None,
        };
        if let Some(problem) = count_problem {
            self.push(
                ErrorKind::InvalidValue,
                s.origin.clone(),
                &format!("{}.metrics", s.name),
                problem.to_owned(),
            );
            return None;
        }
        if payload == PayloadFormat::Number && time.is_some() {
            self.push(
                ErrorKind::InvalidValue,
                s.origin.clone(),
                &format!("{}.time", s.name),
                "a number payload carries no time: remove time (the receive time is used)"
                    .to_owned(),
            );
            return None;
        }
        Some(SensorRule {
            topic,
            payload,
            metrics,
            time,
        })
    }

    /// `metrics`: a table of name → unit string, or name → `{ pointer, unit }`.
    fn metrics(&mut self, s: &Section<'_>) -> Option<Vec<MetricRule>> {
        let Some((value, origin, path)) = self.raw(s, "metrics") else {
            return Some(Vec::new());
        };
        let Value::Dict(_, dict) = value else {
            self.push(
                ErrorKind::InvalidType,
                origin,
                &path,
                format!(
                    "expected a table like {{ temperature = \"°C\" }}, found {}",
                    value.to_actual()
                ),
            );
            return None;
        };
        if dict.len() > MAX_METRICS_PER_RULE {
            self.push(
                ErrorKind::InvalidValue,
                origin,
                &path,
                format!(
                    "{} metrics: a rule reads at most {MAX_METRICS_PER_RULE}; split it into \
                     two rules",
                    dict.len()
                ),
            );
            return None;
        }
        let mut metrics = Vec::with_capacity(dict.len());
        let mut bad = false;
        for (name, value) in dict {
            let item_path = format!("{path}.{name}");
            if !valid_metric_name(name) {
                self.push(
                    ErrorKind::InvalidValue,
                    origin.clone(),
                    &item_path,
                    format!(
                        "{:?} is not a metric name: use 1-64 chars of [A-Za-z0-9_.-]",
                        truncate(name)
                    ),
                );
                bad = true;
                continue;
            }
            let (pointer, unit) = match value {
                Value::String(_, unit) => (format!("/{name}"), unit.clone()),
                Value::Dict(..) => {
                    let sub = self.table(Some(value), item_path.clone(), METRIC_KEYS);
                    let pointer = match self.text(&sub, "pointer", "a JSON pointer string") {
                        Ok(Some(g)) if g.value.starts_with('/') => g.value,
                        Ok(Some(g)) => {
                            self.push(
                                ErrorKind::InvalidValue,
                                g.origin,
                                &g.path,
                                format!(
                                    "{:?} is not a JSON pointer: start it with `/`, e.g. \
                                     \"/ENERGY/Power\"",
                                    truncate(&g.value)
                                ),
                            );
                            bad = true;
                            continue;
                        }
                        Ok(None) => format!("/{name}"),
                        Err(Reported) => {
                            bad = true;
                            continue;
                        }
                    };
                    let unit = match self.text(&sub, "unit", "a unit string like \"°C\"") {
                        Ok(unit) => unit.map(|g| g.value).unwrap_or_default(),
                        Err(Reported) => {
                            bad = true;
                            continue;
                        }
                    };
                    (pointer, unit)
                }
                other => {
                    self.push(
                        ErrorKind::InvalidType,
                        origin.clone(),
                        &item_path,
                        format!(
                            "expected a unit string or {{ pointer = \"/…\", unit = \"…\" }}, \
                             found {}",
                            other.to_actual()
                        ),
                    );
                    bad = true;
                    continue;
                }
            };
            if unit.chars().count() > UNIT_MAX_LEN {
                self.push(
                    ErrorKind::InvalidValue,
                    origin.clone(),
                    &item_path,
                    format!("the unit is longer than {UNIT_MAX_LEN} chars"),
                );
                bad = true;
                continue;
            }
            metrics.push(MetricRule {
                name: name.clone(),
                pointer,
                unit,
            });
        }
        (!bad).then_some(metrics)
    }
}

/// A metric name: 1-64 chars of `[A-Za-z0-9_.-]`.
fn valid_metric_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}
