//! The schema: every section and its keys, and every default and bound that is a constant.
//!
//! One place to look when adding or changing a key: its name goes in its section's key
//! list (unknown keys are refused against these lists, and "did you mean" searches them),
//! its default and bounds next to it. The section readers (`node`, `links`, …) only refer
//! to these.
//!
//! Defaults that are not constants here, and why:
//! - `[bridge]` and `[landing]`: [`BridgeConfig::default`] and [`LandingConfig::defaults`]
//!   in `model`: whole values (rule lists, the default domain streams) on the public types,
//!   where the tests compare against them.
//! - Enum keys (`outbox.when_full`, `iot.protocol`, `[[bridge.up]]` `encoding`): the
//!   `#[default]` variant in `model`; `log.format` is `human`, in `log`.
//! - Values derived from other keys, in their section's reader: `heartbeat.offline_after`
//!   ([`OFFLINE_AFTER_INTERVALS`] intervals), `iot.client_id` (`nexus-{node.id}`), the MQTT
//!   port of the URL's scheme, a `[[iot.sensors]]` `payload` (from its topic); `iot.qos`
//!   defaults to 1 there as well.
//!
//! [`BridgeConfig::default`]: crate::model::BridgeConfig
//! [`LandingConfig::defaults`]: crate::model::LandingConfig::defaults

use std::ops::RangeInclusive;
use std::time::Duration;

/// Every section and its keys, in the order they are checked and printed.
pub(super) const SCHEMA: &[(&str, &[&str])] = &[
    (
        "node",
        &["id", "mode", "tenant", "key", "token", "data_dir"],
    ),
    (
        "trust",
        &[
            "root_keys",
            "release_keys",
            "clock_skew",
            "revocations_file",
        ],
    ),
    ("uplink", LINK_KEYS),
    ("local", LINK_KEYS),
    ("heartbeat", &["interval", "offline_after"]),
    (
        "health",
        &[
            "outbox_full_pct",
            "outbox_max_age",
            "disk_full_pct",
            "mem_full_pct",
            "token_expiry",
        ],
    ),
    ("metrics", &["listen"]),
    ("page", &["listen", "token_file", "cert_file", "key_file"]),
    ("events", &["registry", "unknown", "invalid"]),
    ("remote_config", &["accept", "gate"]),
    ("updates", &["gate"]),
    ("log", &["level", "format"]),
    (
        "outbox",
        &["max_bytes", "batch", "when_full", "max_age", "drain_rate"],
    ),
    (
        "ingress",
        &[
            "stream",
            "consumer",
            "max_bytes",
            "max_age",
            "duplicate_window",
            "batch",
            "max_deliver",
            "landed_ttl",
            "replicas",
        ],
    ),
    ("dead_letter", &["max_bytes", "max_entries"]),
    ("iot", IOT_KEYS),
    ("bridge", BRIDGE_KEYS),
    ("landing", LANDING_KEYS),
];

// ---- [node] and [trust] -------------------------------------------------------------

/// `trust.clock_skew` default (the token verifier's default).
pub(super) const CLOCK_SKEW: Duration = nexus_policies::token::DEFAULT_SKEW;
/// `trust.revocations_file` default, inside `node.data_dir`.
pub(super) const REVOCATIONS_FILE: &str = "revocations.cbor";

// ---- [uplink], [local], [uplink.tls] and [local.tls] --------------------------------

/// The keys of `[uplink]` and `[local]`.
pub(super) const LINK_KEYS: &[&str] = &[
    "url",
    "ping_interval",
    "connect_timeout",
    "request_timeout",
    "reconnect_max_delay",
    "jetstream_domain",
    "tls",
];
/// The keys of `[uplink.tls]` and `[local.tls]`.
pub(super) const TLS_KEYS: &[&str] = &["ca_file", "cert_file", "key_file", "server_name"];
/// `ping_interval`, `connect_timeout`, `request_timeout` default.
pub(super) const LINK_TIMEOUT: Duration = Duration::from_secs(5);
/// `reconnect_max_delay` default.
pub(super) const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(10);

// ---- [heartbeat] and [log] ----------------------------------------------------------

/// `heartbeat.interval` default; `offline_after` defaults to this many intervals.
pub(super) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
pub(super) const OFFLINE_AFTER_INTERVALS: u32 = 3;
pub(super) const LOG_LEVEL: &str = "info";

// ---- [health] and [metrics] ---------------------------------------------------------

/// `health.outbox_full_pct` default.
pub(super) const OUTBOX_FULL_PCT: u8 = 80;
/// `health.outbox_max_age` default.
pub(super) const OUTBOX_MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// `health.disk_full_pct` and `health.mem_full_pct` default.
pub(super) const FULL_PCT: u8 = 90;
/// The bounds of the `health.*_pct` keys.
pub(super) const PCT_RANGE: RangeInclusive<i128> = 1..=100;
/// `health.token_expiry` default.
pub(super) const TOKEN_EXPIRY: Duration = Duration::from_secs(24 * 60 * 60);

// ---- [outbox], [ingress] and [dead_letter] ------------------------------------------

pub(super) const OUTBOX_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// `outbox.batch` and `ingress.batch` default and bounds.
pub(super) const BATCH: usize = 256;
pub(super) const BATCH_RANGE: RangeInclusive<i128> = 1..=10_000;
pub(super) const INGRESS_STREAM: &str = "NEXUS_INGRESS";
pub(super) const INGRESS_CONSUMER: &str = "nexus-agent";
pub(super) const INGRESS_MAX_BYTES: i64 = 1024 * 1024 * 1024;
pub(super) const INGRESS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);
pub(super) const INGRESS_DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 60);
/// `ingress.max_deliver` default and bounds (at least one retry).
pub(super) const INGRESS_MAX_DELIVER: u32 = 20;
pub(super) const INGRESS_MAX_DELIVER_RANGE: RangeInclusive<i128> = 2..=1_000_000;
/// `ingress.landed_ttl` default: as long as an ingress keeps unforwarded traffic.
pub(super) const INGRESS_LANDED_TTL: Duration = INGRESS_MAX_AGE;
/// `ingress.replicas` and `landing.replicas` default (one server) and bounds (JetStream
/// keeps at most 5 copies of a stream).
pub(super) const REPLICAS: usize = 1;
pub(super) const REPLICAS_RANGE: RangeInclusive<i128> = 1..=5;
pub(super) const DEAD_LETTER_MAX_BYTES: u64 = 64 * 1024 * 1024;
pub(super) const DEAD_LETTER_MAX_ENTRIES: u64 = 100_000;

// ---- [[acl]] ------------------------------------------------------------------------

/// The top-level array of tables `[[acl]]`: not a section, so not in [`SCHEMA`].
pub(super) const ACL: &str = "acl";
/// The keys of one `[[acl]]` entry.
pub(super) const ACL_KEYS: &[&str] = &[
    "principal",
    "allow_publish",
    "deny_publish",
    "allow_receive",
    "deny_receive",
];

// ---- [iot] and [[iot.sensors]] ------------------------------------------------------

/// The keys of `[iot]`.
const IOT_KEYS: &[&str] = &[
    "url",
    "client_id",
    "username",
    "password",
    "protocol",
    "session_expiry",
    "qos",
    "keep_alive",
    "reconnect_max_delay",
    "max_payload",
    "queue",
    "tls",
    "sensors",
];
/// The keys of one `[[iot.sensors]]` entry.
pub(super) const SENSOR_KEYS: &[&str] = &["topic", "payload", "metrics", "time"];
/// The keys of a metric given as a table.
pub(super) const METRIC_KEYS: &[&str] = &["pointer", "unit"];
pub(super) const IOT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// `iot.keep_alive` bounds, in seconds (MQTT's field is 16 bits).
pub(super) const IOT_KEEP_ALIVE_RANGE: RangeInclusive<u64> = 5..=65_535;
/// `iot.session_expiry` default: the outbox's default `max_age`.
pub(super) const IOT_SESSION_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
pub(super) const IOT_MAX_PAYLOAD: usize = 64 * 1024;
pub(super) const IOT_MAX_PAYLOAD_RANGE: RangeInclusive<i128> = 1..=16 * 1024 * 1024;
pub(super) const IOT_QUEUE: usize = 1024;
pub(super) const IOT_QUEUE_RANGE: RangeInclusive<i128> = 1..=65_536;
/// The longest unit string.
pub(super) const UNIT_MAX_LEN: usize = 32;

// ---- [bridge] -----------------------------------------------------------------------

/// The keys of `[bridge]`.
const BRIDGE_KEYS: &[&str] = &["up", "down", "max_payload"];
/// The keys of one `[[bridge.up]]` rule.
pub(super) const UP_RULE_KEYS: &[&str] = &["local", "event", "encoding"];
/// The keys of one `[[bridge.down]]` rule.
pub(super) const DOWN_RULE_KEYS: &[&str] = &["command", "local", "timeout"];
pub(super) const BRIDGE_MAX_PAYLOAD_RANGE: RangeInclusive<i128> = 1..=1024 * 1024;
/// The most rules in `[[bridge.up]]`, and in `[[bridge.down]]` (each is tried in order).
pub(super) const BRIDGE_MAX_RULES: usize = 256;
/// `[[bridge.down]]` `timeout` default.
pub(super) const BRIDGE_DOWN_TIMEOUT: Duration = Duration::from_secs(5);

// ---- [landing] ----------------------------------------------------------------------

/// The keys of `[landing]`.
const LANDING_KEYS: &[&str] = &["stream", "max_age", "max_bytes", "domains", "replicas"];
/// The keys of one `[[landing.domains]]` entry.
pub(super) const LANDING_DOMAIN_KEYS: &[&str] = &["name", "subjects", "max_age", "max_bytes"];
