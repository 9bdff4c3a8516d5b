//! What the fleet page shows: every node this hub or root hears (its last heartbeat, its
//! latest sensor readings) and its status from the watch over children, as JSON rows the
//! page's script draws.
//!
//! Fed by the ingress observer with verified events only. Bounded: at most [`MAX_NODES`]
//! nodes (a new node beyond that is not shown; the census still counts it), of each
//! heartbeat only the fields the page shows, at most [`MAX_SERIES`] sensor series per
//! node and [`POINTS`] readings per series.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nexus_federation::Envelope;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::children::{Children, NodeStatus};
use crate::heartbeat::Heartbeat;

/// Nodes shown at most.
pub const MAX_NODES: usize = 100_000;
/// Sensor series kept per node (a new series beyond it replaces the one updated longest
/// ago).
pub const MAX_SERIES: usize = 16;
/// Readings kept per series: the sparkline's points.
pub const POINTS: usize = 30;
/// Causes of degraded kept per node.
const MAX_CAUSES: usize = 8;
/// The heartbeat fields the page shows.
const HEALTH_FIELDS: &[&str] = &[
    "status",
    "cpu_pct",
    "mem_pct",
    "disk_pct",
    "agent_version",
    "events_registry",
    "config",
    "update",
    "uplink",
    "local",
    "outbox",
    "token_expires",
    "iot",
    "children",
    "uptime_secs",
];
/// How long this node's own row is reused before it is read again.
const OWN_ROW_FOR: Duration = Duration::from_secs(2);

/// A sensor series: its unit and latest readings, oldest first.
#[derive(Debug, Default)]
struct Series {
    unit: String,
    points: VecDeque<(i64, f64)>,
    updated: i64,
}

#[derive(Debug, Default)]
struct NodeEntry {
    mode: String,
    parent: Option<String>,
    /// The last heartbeat's fields ([`HEALTH_FIELDS`]) and causes.
    health: Map<String, Value>,
    /// When the last heartbeat was stored by the ingress (Unix ms).
    heard_ms: Option<i64>,
    series: HashMap<String, Series>,
}

/// The fleet as the page shows it. Cloning shares it.
#[derive(Clone)]
pub struct Board {
    own_id: String,
    own_mode: &'static str,
    nodes: Arc<Mutex<HashMap<String, NodeEntry>>>,
    children: Option<Children>,
    heartbeat: Option<Heartbeat>,
    own_row: Arc<Mutex<Option<(Instant, Value)>>>,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board")
            .field("own_id", &self.own_id)
            .finish_non_exhaustive()
    }
}

impl Board {
    /// An empty board of node `own_id` (a `hub` or `root`), with the watch over its
    /// children (statuses) and its own heartbeat (its own row), when given.
    pub fn new(
        own_id: &str,
        own_mode: &'static str,
        children: Option<Children>,
        heartbeat: Option<Heartbeat>,
    ) -> Self {
        Self {
            own_id: own_id.to_owned(),
            own_mode,
            nodes: Arc::default(),
            children,
            heartbeat,
            own_row: Arc::default(),
        }
    }

    /// This board, showing `heartbeat` as its own row (the nodes are shared).
    pub fn with_heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = Some(heartbeat);
        self
    }

    /// The node this board is served by.
    pub fn own_id(&self) -> &str {
        &self.own_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeEntry>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes in one verified event stored at `stored`, whose signer's token `parent`
    /// issued: a heartbeat (`edge.health`) or a sensor reading (`iot.sensor_data`);
    /// anything else is ignored.
    pub fn observe(&self, envelope: &Envelope, parent: Option<&str>, stored: OffsetDateTime) {
        if envelope.source == self.own_id {
            return;
        }
        let is_health = envelope.event_name == crate::heartbeat::EVENT_NAME;
        let is_reading = envelope.event_name == nexus_iot_bridge::sensor_data::EVENT_NAME;
        if !is_health && !is_reading {
            return;
        }
        let stored_ms = unix_ms(stored);
        let mut nodes = self.lock();
        if !nodes.contains_key(&envelope.source) && nodes.len() >= MAX_NODES {
            return;
        }
        let entry = nodes.entry(envelope.source.clone()).or_default();
        if let Some(parent) = parent {
            entry.parent = Some(parent.to_owned());
        }
        if is_health {
            if entry.heard_ms.is_some_and(|heard| heard > stored_ms) {
                return; // an older heartbeat arriving late
            }
            entry.heard_ms = Some(stored_ms);
            let payload = &envelope.payload;
            if let Some(mode) = payload.get("mode").and_then(Value::as_str) {
                entry.mode = truncated(mode, 16);
            }
            if entry.parent.is_none() {
                if let Some(parent) = payload.get("parent").and_then(Value::as_str) {
                    entry.parent = Some(truncated(parent, 128));
                }
            }
            entry.health = health_fields(payload);
        } else {
            record_reading(entry, &envelope.payload, stored_ms);
        }
    }

    /// Every node's row (this node's first), with `now` (Unix ms) for the ages.
    pub fn rows(&self) -> Vec<(String, Value)> {
        let mut rows = vec![(self.own_id.clone(), self.own_row())];
        let nodes = self.lock();
        rows.reserve(nodes.len());
        for (id, entry) in nodes.iter() {
            let status = self
                .children
                .as_ref()
                .and_then(|children| children.status(id));
            rows.push((id.clone(), row(id, entry, status)));
        }
        rows
    }

    fn own_row(&self) -> Value {
        let mut cached = self.own_row.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, row)) = cached.as_ref() {
            if at.elapsed() < OWN_ROW_FOR {
                return row.clone();
            }
        }
        let health = self
            .heartbeat
            .as_ref()
            .map(|heartbeat| health_fields(&heartbeat.snapshot()))
            .unwrap_or_default();
        let entry = NodeEntry {
            mode: self.own_mode.to_owned(),
            parent: None,
            health,
            heard_ms: Some(unix_ms(OffsetDateTime::now_utc())),
            series: HashMap::new(),
        };
        let row = row(&self.own_id, &entry, Some(NodeStatus::Online));
        *cached = Some((Instant::now(), row.clone()));
        row
    }
}

/// A row: what the page draws of one node.
fn row(id: &str, entry: &NodeEntry, status: Option<NodeStatus>) -> Value {
    let health_status = entry
        .health
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let status = match status {
        Some(NodeStatus::Online) | None if entry.heard_ms.is_some() => health_status,
        Some(NodeStatus::Offline) => "offline",
        _ => "unknown",
    };
    let mut readings: Vec<(&String, &Series)> = entry.series.iter().collect();
    readings.sort_by(|a, b| a.0.cmp(b.0));
    let readings: Vec<Value> = readings
        .into_iter()
        .map(|(name, series)| {
            json!({
                "name": name,
                "unit": series.unit,
                "points": series.points.iter().map(|(t, v)| json!([t, v])).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "id": id,
        "mode": entry.mode,
        "parent": entry.parent,
        "status": status,
        "heard_ms": entry.heard_ms,
        "health": entry.health,
        "readings": readings,
    })
}

/// The fields the page shows of a heartbeat payload, each bounded.
fn health_fields(payload: &Map<String, Value>) -> Map<String, Value> {
    let mut health = Map::new();
    for field in HEALTH_FIELDS {
        if let Some(value) = payload.get(*field) {
            health.insert((*field).to_owned(), bounded(value, 2));
        }
    }
    if let Some(causes) = payload.get("causes").and_then(Value::as_array) {
        let causes: Vec<Value> = causes
            .iter()
            .take(MAX_CAUSES)
            .map(|cause| {
                let text = |key: &str| {
                    cause
                        .get(key)
                        .and_then(Value::as_str)
                        .map(|s| truncated(s, 200))
                };
                json!({"kind": text("kind"), "subsystem": text("subsystem"), "cause": text("cause")})
            })
            .collect();
        health.insert("causes".into(), Value::Array(causes));
    }
    health
}

/// `value` with strings cut to 200 characters, objects to 16 keys and arrays to 16
/// items, `depth` levels deep (deeper is dropped).
fn bounded(value: &Value, depth: usize) -> Value {
    match value {
        Value::String(s) => Value::String(truncated(s, 200)),
        Value::Object(map) if depth > 0 => Value::Object(
            map.iter()
                .take(16)
                .map(|(k, v)| (truncated(k, 64), bounded(v, depth - 1)))
                .collect(),
        ),
        Value::Array(items) if depth > 0 => Value::Array(
            items
                .iter()
                .take(16)
                .map(|v| bounded(v, depth - 1))
                .collect(),
        ),
        Value::Object(_) | Value::Array(_) => Value::Null,
        other => other.clone(),
    }
}

fn truncated(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Adds a reading (`sensor_id`, `metric`, `value`, `unit`) to its series.
fn record_reading(entry: &mut NodeEntry, payload: &Map<String, Value>, stored_ms: i64) {
    let text = |key: &str| payload.get(key).and_then(Value::as_str);
    let (Some(sensor), Some(metric), Some(value)) = (
        text("sensor_id"),
        text("metric"),
        payload.get("value").and_then(Value::as_f64),
    ) else {
        return;
    };
    if !value.is_finite() {
        return;
    }
    let name = format!("{} {}", truncated(sensor, 64), truncated(metric, 32));
    if !entry.series.contains_key(&name) && entry.series.len() >= MAX_SERIES {
        let oldest = entry
            .series
            .iter()
            .min_by_key(|(_, s)| s.updated)
            .map(|(name, _)| name.clone());
        if let Some(oldest) = oldest {
            entry.series.remove(&oldest);
        }
    }
    let series = entry.series.entry(name).or_default();
    series.unit = truncated(text("unit").unwrap_or(""), 32);
    series.updated = stored_ms;
    if series.points.len() >= POINTS {
        series.points.pop_front();
    }
    series.points.push_back((stored_ms, value));
}

/// Unix milliseconds of `at`.
pub fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A row's fingerprint, to send a page only the rows that changed.
pub fn fingerprint(row: &Value) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    row.to_string().hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(source: &str, name: &str, payload: Value) -> Envelope {
        let payload = payload.as_object().cloned().unwrap_or_default();
        Envelope::new(name, source, None, payload, OffsetDateTime::now_utc())
    }

    fn at(ms: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).expect("a time")
    }

    #[test]
    fn a_heartbeat_makes_a_row_with_the_shown_fields_only() {
        let board = Board::new("hub-1", "hub", None, None);
        let payload = json!({
            "mode": "member", "status": "degraded", "cpu_pct": 12.5, "secret": "x",
            "outbox": {"depth": 3, "oldest_age_secs": 9},
            "causes": [{"kind": "uplink", "subsystem": "uplink", "cause": "down"}],
        });
        board.observe(
            &envelope("m-1", "edge.health", payload),
            Some("hub-1"),
            at(5_000),
        );
        let rows = board.rows();
        assert_eq!(rows[0].0, "hub-1", "the serving node comes first");
        let (_, row) = rows.iter().find(|(id, _)| id == "m-1").expect("the member");
        assert_eq!(row["status"], "degraded");
        assert_eq!(row["parent"], "hub-1");
        assert_eq!(row["heard_ms"], 5_000);
        assert_eq!(row["health"]["outbox"]["depth"], 3);
        assert_eq!(row["health"]["causes"][0]["cause"], "down");
        assert!(row["health"].get("secret").is_none());
    }

    #[test]
    fn an_older_heartbeat_arriving_late_does_not_replace_a_newer_one() {
        let board = Board::new("hub-1", "hub", None, None);
        let beat = |status: &str| json!({"mode": "member", "status": status});
        board.observe(
            &envelope("m-1", "edge.health", beat("healthy")),
            None,
            at(9_000),
        );
        board.observe(
            &envelope("m-1", "edge.health", beat("degraded")),
            None,
            at(8_000),
        );
        let rows = board.rows();
        let (_, row) = rows.iter().find(|(id, _)| id == "m-1").expect("the member");
        assert_eq!(row["status"], "healthy");
        assert_eq!(row["heard_ms"], 9_000);
    }

    #[test]
    fn readings_keep_the_latest_points_and_a_bounded_number_of_series() {
        let board = Board::new("hub-1", "hub", None, None);
        let reading = |sensor: String, value: f64| json!({"sensor_id": sensor, "metric": "temperature", "value": value, "unit": "°C"});
        for n in 0..(POINTS as i64 + 5) {
            let event = envelope("m-1", "iot.sensor_data", reading("s-0".into(), n as f64));
            board.observe(&event, None, at(n));
        }
        for s in 1..(MAX_SERIES + 3) {
            let event = envelope("m-1", "iot.sensor_data", reading(format!("s-{s}"), 1.0));
            board.observe(&event, None, at(1_000 + s as i64));
        }
        let rows = board.rows();
        let (_, row) = rows.iter().find(|(id, _)| id == "m-1").expect("the member");
        let readings = row["readings"].as_array().expect("readings");
        assert_eq!(readings.len(), MAX_SERIES);
        assert!(
            readings.iter().all(|r| r["name"] != "s-0 temperature"),
            "the series updated longest ago made room"
        );
        let board_points = Board::new("hub-1", "hub", None, None);
        for n in 0..(POINTS as i64 + 5) {
            let event = envelope("m-2", "iot.sensor_data", reading("s".into(), n as f64));
            board_points.observe(&event, None, at(n));
        }
        let rows = board_points.rows();
        let (_, row) = rows.iter().find(|(id, _)| id == "m-2").expect("the member");
        let points = row["readings"][0]["points"].as_array().expect("points");
        assert_eq!(points.len(), POINTS);
        assert_eq!(points[0], json!([5, 5.0]), "the oldest were dropped");
    }

    #[test]
    fn other_events_and_bad_readings_are_ignored() {
        let board = Board::new("hub-1", "hub", None, None);
        board.observe(&envelope("m-1", "app.order", json!({})), None, at(1));
        board.observe(
            &envelope(
                "m-1",
                "iot.sensor_data",
                json!({"sensor_id": "s", "metric": "t"}),
            ),
            None,
            at(1),
        );
        board.observe(&envelope("hub-1", "edge.health", json!({})), None, at(1));
        let rows = board.rows();
        let member = rows.iter().find(|(id, _)| id == "m-1").expect("a row");
        assert_eq!(member.1["readings"], json!([]));
        assert_eq!(member.1["status"], "unknown", "never heard a heartbeat");
        assert_eq!(
            rows.len(),
            2,
            "itself and the member; its own heartbeat is not a child"
        );
    }

    #[test]
    fn long_strings_and_deep_values_are_cut() {
        let long = "x".repeat(10_000);
        let payload = json!({"agent_version": long, "iot": {"a": {"b": {"c": 1}}}});
        let health = health_fields(payload.as_object().expect("an object"));
        assert_eq!(health["agent_version"].as_str().map(str::len), Some(200));
        assert_eq!(health["iot"]["a"]["b"], Value::Null);
    }
}
