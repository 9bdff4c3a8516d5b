//! The schema walk: the merged figment value → a validated [`Config`], with every problem.
//!
//! Why a walk and not `#[derive(Deserialize)]` + `deny_unknown_fields`: serde stops at
//! the first error, and an operator fixing a config one line per restart is what linkerd
//! and vector spare theirs. Walking the merged value against the schema below reports
//! every unknown key, wrong type and bad value at once, each with the file or environment
//! variable it came from. Unknown keys are refused at every level, exactly as
//! `deny_unknown_fields` would.
//!
//! Defaults live here (not in a figment provider) because the presence of `[uplink]` and
//! `[local]` means something: a defaults provider would make every config have both.

use std::io::Read as _;
use std::num::NonZeroU32;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::value::{Dict, Value};
use figment::Figment;
use nexus_policies::ids::{self, MAX_ID_LEN};
use nexus_policies::token::MAX_CHAIN_BYTES;
use nexus_policies::{
    Acl, AclRule, Chain, Principal, PublicKey, RewriteError, Role, SecretKey, SubjectPattern,
    SubjectRewrite, TokenError, Verifier,
};
use zeroize::Zeroizing;

use crate::error::{ConfigError, ConfigErrors, ErrorKind, Origin};
use crate::model::{
    AclPolicy, BridgeConfig, BridgeEncoding, ClientCert, Config, DeadLetterConfig, DownRule,
    HeartbeatConfig, IngressConfig, IotConfig, LandingConfig, LandingDomain, LinkConfig, LogConfig,
    LogFormat, MetricRule, Mode, MqttProtocol, NodeConfig, OutboxConfig, PayloadFormat, SensorRule,
    TlsConfig, TrustConfig, UpRule, WhenFull, MAX_METRICS_PER_RULE,
};
use crate::redact::redact_url;
use crate::source;
use crate::topic::{TopicTemplate, MAX_TOPIC_SEGMENTS};

const LINK_KEYS: &[&str] = &[
    "url",
    "ping_interval",
    "connect_timeout",
    "request_timeout",
    "reconnect_max_delay",
    "tls",
];

/// The keys of `[uplink.tls]` and `[local.tls]`.
const TLS_KEYS: &[&str] = &["ca_file", "cert_file", "key_file", "server_name"];

/// The top-level array of tables `[[acl]]`: not a section, so not in [`SCHEMA`].
const ACL: &str = "acl";
/// The keys of one `[[acl]]` entry.
const ACL_KEYS: &[&str] = &[
    "principal",
    "allow_publish",
    "deny_publish",
    "allow_receive",
    "deny_receive",
];

/// Every section and its keys, in the order they are checked and printed.
const SCHEMA: &[(&str, &[&str])] = &[
    (
        "node",
        &["id", "mode", "tenant", "key", "token", "data_dir"],
    ),
    ("trust", &["root_keys", "clock_skew", "revocations_file"]),
    ("uplink", LINK_KEYS),
    ("local", LINK_KEYS),
    ("heartbeat", &["interval", "offline_after"]),
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
        ],
    ),
    ("dead_letter", &["max_bytes", "max_entries"]),
    ("iot", IOT_KEYS),
    ("bridge", BRIDGE_KEYS),
    ("landing", LANDING_KEYS),
];

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
const SENSOR_KEYS: &[&str] = &["topic", "payload", "metrics", "time"];
/// The keys of a metric given as a table.
const METRIC_KEYS: &[&str] = &["pointer", "unit"];
const IOT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// `iot.keep_alive` bounds, in seconds (MQTT's field is 16 bits).
const IOT_KEEP_ALIVE_RANGE: RangeInclusive<u64> = 5..=65_535;
/// `iot.session_expiry` default: the outbox's default `max_age`.
const IOT_SESSION_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
const IOT_MAX_PAYLOAD: usize = 64 * 1024;
const IOT_MAX_PAYLOAD_RANGE: RangeInclusive<i128> = 1..=16 * 1024 * 1024;
const IOT_QUEUE: usize = 1024;
const IOT_QUEUE_RANGE: RangeInclusive<i128> = 1..=65_536;
/// The longest unit string.
const UNIT_MAX_LEN: usize = 32;

/// The keys of `[bridge]`.
const BRIDGE_KEYS: &[&str] = &["up", "down", "max_payload"];
/// The keys of one `[[bridge.up]]` rule.
const UP_RULE_KEYS: &[&str] = &["local", "event", "encoding"];
/// The keys of one `[[bridge.down]]` rule.
const DOWN_RULE_KEYS: &[&str] = &["command", "local", "timeout"];
const BRIDGE_MAX_PAYLOAD_RANGE: RangeInclusive<i128> = 1..=1024 * 1024;
/// The most rules in `[[bridge.up]]`, and in `[[bridge.down]]` (each is tried in order).
const BRIDGE_MAX_RULES: usize = 256;
/// `[[bridge.down]]` `timeout` default.
const BRIDGE_DOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The event domains of the agent's own events: never an app's.
const RESERVED_EVENT_DOMAINS: &[&str] = &["agent", "edge", "audit"];
/// The domain of the agent's built-in commands.
const AGENT_COMMAND_DOMAIN: &str = "agent";
/// The first token of the federation's own subjects.
const FEDERATION_PREFIX: &str = "_nexus";
/// The first token of NATS request reply subjects.
const INBOX_PREFIX: &str = "_INBOX";

/// The keys of `[landing]`.
const LANDING_KEYS: &[&str] = &["stream", "max_age", "max_bytes", "domains"];
/// The keys of one `[[landing.domains]]` entry.
const LANDING_DOMAIN_KEYS: &[&str] = &["name", "subjects", "max_age", "max_bytes"];
/// The first token of every event subject: the journal captures `nexus.>`.
const EVENT_PREFIX: &str = "nexus";

/// `ping_interval`, `connect_timeout`, `request_timeout` default.
const LINK_TIMEOUT: Duration = Duration::from_secs(5);
/// `reconnect_max_delay` default.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(10);
/// `heartbeat.interval` default; `offline_after` defaults to this many intervals.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
const OFFLINE_AFTER_INTERVALS: u32 = 3;
const LOG_LEVEL: &str = "info";
const OUTBOX_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// `outbox.batch` and `ingress.batch` default and bounds.
const BATCH: usize = 256;
const BATCH_RANGE: RangeInclusive<i128> = 1..=10_000;
const INGRESS_STREAM: &str = "NEXUS_INGRESS";
const INGRESS_CONSUMER: &str = "nexus-agent";
const INGRESS_MAX_BYTES: i64 = 1024 * 1024 * 1024;
const INGRESS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);
const INGRESS_DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 60);
/// `ingress.max_deliver` default and bounds (at least one retry).
const INGRESS_MAX_DELIVER: u32 = 20;
const INGRESS_MAX_DELIVER_RANGE: RangeInclusive<i128> = 2..=1_000_000;
/// `ingress.landed_ttl` default: as long as an ingress keeps unforwarded traffic.
const INGRESS_LANDED_TTL: Duration = INGRESS_MAX_AGE;
/// `trust.clock_skew` default (the token verifier's default).
const CLOCK_SKEW: Duration = nexus_policies::token::DEFAULT_SKEW;
/// `trust.revocations_file` default, inside `node.data_dir`.
const REVOCATIONS_FILE: &str = "revocations.cbor";
const DEAD_LETTER_MAX_BYTES: u64 = 64 * 1024 * 1024;
const DEAD_LETTER_MAX_ENTRIES: u64 = 100_000;
/// The largest TLS file (CA bundle, certificate, key) read; system bundles are ~250 KiB.
const TLS_FILE_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// The first line of a PEM block.
const PEM_BEGIN: &str = "-----BEGIN ";
/// How a secret key file starts (see `nexus_policies::keys`): never a token or a PEM file.
const SECRET_KEY_PREFIX: &str = "ed25519-secret:";
const URL_SCHEMES: &[&str] = &["nats", "tls", "ws", "wss"];
const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// Validates the merged value of `figment` into a [`Config`].
pub(crate) fn validate(figment: &Figment) -> Result<Config, ConfigErrors> {
    let root = match figment.find_value("") {
        Ok(Value::Dict(_, dict)) => dict,
        Ok(_) => Dict::new(),
        Err(error) => return Err(ConfigErrors::new(source::provider_errors(error))),
    };
    let file = source::config_file(figment);
    let fallback = match &file {
        Some(path) => Origin::File(path.clone()),
        None => Origin::Other("configuration".to_owned()),
    };
    let mut reader = Reader {
        figment,
        fallback,
        errors: Vec::new(),
    };
    let config = reader.config(&root, file);
    match config {
        Some(config) if reader.errors.is_empty() => Ok(config),
        _ => Err(ConfigErrors::new(reader.errors)),
    }
}

/// A problem was recorded; the caller carries on with the next key.
struct Reported;

/// A value read from the config, with where it came from.
struct Got<T> {
    /// The value, as read (and for paths, resolved).
    value: T,
    /// The file or environment variable that set it.
    origin: Origin,
    /// Its key path, e.g. `node.id`.
    path: String,
}

/// A section (or nested table) of the config as found.
struct Section<'d> {
    /// The section's key path, e.g. `uplink`, `uplink.tls`, `acl[2]`.
    name: String,
    /// Whether the key exists at all (even with the wrong type).
    present: bool,
    /// The table, when it exists and is one.
    dict: Option<&'d Dict>,
    /// Where the section came from (the config file when it is absent).
    origin: Origin,
}

struct Reader<'f> {
    /// Where the merged value came from: metadata of every provider.
    figment: &'f Figment,
    /// Where a missing key or section should be added: the config file, if there is one.
    fallback: Origin,
    /// Every problem found so far, in order.
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    fn push(&mut self, kind: ErrorKind, origin: Origin, key: &str, message: String) {
        self.errors.push(ConfigError {
            kind,
            origin,
            key: Some(key.to_owned()),
            message,
        });
    }

    fn config(&mut self, root: &Dict, file: Option<PathBuf>) -> Option<Config> {
        self.unknown_sections(root);

        let node_section = self.section(root, "node");
        let node = self.node(&node_section);
        let mode = node.as_ref().and_then(|n| n.mode);

        let trust_section = self.section(root, "trust");
        let data_dir = node.as_ref().and_then(|n| n.data_dir.as_deref());
        let trust = self.trust(&trust_section, mode, data_dir);
        if let Some(node) = &node {
            self.check_token(node, trust.as_ref());
        }

        let uplink_section = self.section(root, "uplink");
        let uplink = match mode {
            Some(Mode::Root) if uplink_section.present => {
                self.push(
                    ErrorKind::ForbiddenSection,
                    uplink_section.origin.clone(),
                    "uplink",
                    "a root is the top tier and has no uplink: remove the [uplink] section \
                     (its own NATS goes in [local])"
                        .to_owned(),
                );
                None
            }
            Some(mode @ (Mode::Member | Mode::Hub)) if !uplink_section.present => {
                let parent = if mode == Mode::Member {
                    "its hub"
                } else {
                    "the root"
                };
                self.push(
                    ErrorKind::MissingSection,
                    self.fallback.clone(),
                    "uplink",
                    format!(
                        "a {mode} needs an [uplink] section with the url of {parent}'s NATS \
                         (e.g. url = \"nats://hub.example:4222\")"
                    ),
                );
                None
            }
            _ => self.link(&uplink_section),
        };

        let local_section = self.section(root, "local");
        if let Some(mode @ (Mode::Hub | Mode::Root)) = mode {
            if !local_section.present {
                self.push(
                    ErrorKind::MissingSection,
                    self.fallback.clone(),
                    "local",
                    format!(
                        "a {mode} needs a [local] section with the url of its own NATS \
                         (e.g. url = \"nats://127.0.0.1:4222\")"
                    ),
                );
            }
        }
        let local = self.link(&local_section);

        let section = self.section(root, "heartbeat");
        let heartbeat = self.heartbeat(&section);
        let section = self.section(root, "log");
        let log = self.log(&section);
        let section = self.section(root, "outbox");
        let outbox = self.outbox(&section);
        let ingress_section = self.section(root, "ingress");
        let ingress = self.ingress(&ingress_section);
        if let Some(mode @ (Mode::Hub | Mode::Root)) = mode {
            let (onward, link) = match mode {
                Mode::Root => ("local", local.as_ref()),
                _ => ("uplink", uplink.as_ref()),
            };
            if let Some(link) = link {
                self.redelivery_window(&ingress_section, &ingress, onward, link);
            }
        }
        let section = self.section(root, "dead_letter");
        let dead_letter = self.dead_letter(&section);
        let acl = self.acl(root);
        let section = self.section(root, "iot");
        let iot = self.iot(&section, node.as_ref());
        let section = self.section(root, "bridge");
        let bridge = self.bridge(&section, node.as_ref(), local_section.present);
        let section = self.section(root, "landing");
        let landing = self.landing(&section, mode, &ingress);

        let node = node?;
        Some(Config {
            source: file.map(|f| std::path::absolute(&f).unwrap_or(f)),
            node: NodeConfig {
                id: node.id?,
                mode: node.mode?,
                tenant: node.tenant,
                key: node.key?,
                token: node.token.map(|g| g.value),
                data_dir: node.data_dir?,
            },
            trust: trust?,
            acl,
            uplink,
            local,
            heartbeat,
            log,
            outbox,
            ingress,
            dead_letter,
            iot,
            bridge,
            landing,
        })
    }

    // ---- sections ------------------------------------------------------------------

    /// Reports top-level keys that are not sections of the schema.
    fn unknown_sections(&mut self, root: &Dict) {
        for (name, value) in root {
            if name == ACL || SCHEMA.iter().any(|(section, _)| section == name) {
                continue;
            }
            let origin = source::origin_of(self.figment, value, &[name]);
            let (suggestion, message) = if matches!(value, Value::Dict(..) | Value::Array(..)) {
                let names = SCHEMA.iter().map(|(s, _)| *s).chain([ACL]);
                let suggestion = closest(name, names);
                let message = match suggestion {
                    Some(ACL) => format!("unknown section [{name}]; did you mean [[acl]]?"),
                    Some(s) => format!("unknown section [{name}]; did you mean [{s}]?"),
                    None => format!(
                        "unknown section [{name}]; known sections: {}",
                        section_list()
                    ),
                };
                (suggestion.map(str::to_owned), message)
            } else {
                // A key above every section: most likely a `[section]` header was forgotten.
                let home = SCHEMA
                    .iter()
                    .find(|(_, keys)| keys.contains(&name.as_str()))
                    .map(|(section, _)| format!("{section}.{name}"));
                let message = match &home {
                    Some(path) => format!(
                        "unknown top-level key `{name}`; did you mean `{path}` (under [{}])?",
                        path.split('.').next().unwrap_or_default()
                    ),
                    None => format!(
                        "unknown top-level key `{name}`; every key belongs in a section: {}",
                        section_list()
                    ),
                };
                (home, message)
            };
            self.push(ErrorKind::UnknownKey { suggestion }, origin, name, message);
        }
    }

    /// Finds section `name`, checks that it is a table and reports its unknown keys.
    fn section<'d>(&mut self, root: &'d Dict, name: &'static str) -> Section<'d> {
        let known = SCHEMA
            .iter()
            .find(|(section, _)| *section == name)
            .map(|(_, keys)| *keys)
            .unwrap_or_default();
        self.table(root.get(name), name.to_owned(), known)
    }

    /// The table at `parent.key` (`[uplink.tls]`), checked like a section.
    fn subtable<'d>(&mut self, parent: &Section<'d>, key: &str, known: &[&str]) -> Section<'d> {
        let value = parent.dict.and_then(|d| d.get(key));
        self.table(value, format!("{}.{key}", parent.name), known)
    }

    /// Checks that `value`, found at key path `name`, is a table and reports its unknown
    /// keys (with a suggestion when one is close, or belongs elsewhere).
    fn table<'d>(&mut self, value: Option<&'d Value>, name: String, known: &[&str]) -> Section<'d> {
        // An entry of an array of tables (`acl[2]`, `bridge.up[0]`) is named by its array.
        let header = match name.strip_suffix(']').and_then(|n| n.rsplit_once('[')) {
            Some((array, _)) => format!("the [[{array}]] entry {name}"),
            None => format!("[{name}]"),
        };
        let segments: Vec<&str> = name.split('.').collect();
        let mut section = Section {
            name: name.clone(),
            present: false,
            dict: None,
            origin: self.fallback.clone(),
        };
        let Some(value) = value.filter(|v| !matches!(v, Value::Empty(..))) else {
            return section;
        };
        section.present = true;
        section.origin = source::origin_of(self.figment, value, &segments);
        let Value::Dict(_, dict) = value else {
            self.push(
                ErrorKind::InvalidType,
                section.origin.clone(),
                &name,
                format!("expected a table {header}, found {}", value.to_actual()),
            );
            return section;
        };
        for (key, value) in dict {
            if known.contains(&key.as_str()) {
                continue;
            }
            let path = format!("{name}.{key}");
            let mut key_path = segments.clone();
            key_path.push(key);
            let origin = source::origin_of(self.figment, value, &key_path);
            let suggestion = closest(key, known.iter().copied())
                .map(str::to_owned)
                .or_else(|| {
                    // `ca_file` written straight under [uplink] belongs in [uplink.tls].
                    (known == LINK_KEYS && TLS_KEYS.contains(&key.as_str()))
                        .then(|| format!("{name}.tls.{key}"))
                })
                .or_else(|| {
                    SCHEMA
                        .iter()
                        .find(|(_, keys)| keys.contains(&key.as_str()))
                        .map(|(other, _)| format!("{other}.{key}"))
                });
            let message = match &suggestion {
                Some(s) if s.contains('.') => {
                    format!("unknown key `{key}` in {header}; did you mean `{s}`?")
                }
                Some(s) => format!("unknown key `{key}`; did you mean `{s}`?"),
                None => format!("unknown key `{key}`; {header} knows: {}", known.join(", ")),
            };
            self.push(ErrorKind::UnknownKey { suggestion }, origin, &path, message);
        }
        section.dict = Some(dict);
        section
    }

    fn node(&mut self, s: &Section<'_>) -> Option<PartialNode> {
        if !s.present {
            self.push(
                ErrorKind::MissingSection,
                self.fallback.clone(),
                "node",
                "every config needs a [node] section with id, mode, key and data_dir".to_owned(),
            );
            return None;
        }
        s.dict?;
        let id = self
            .required_text(s, "id", "id = \"edge-msk-01\"")
            .and_then(|g| self.node_id(g));
        let mode = self
            .required_text(s, "mode", "mode = \"member\" (or hub, root)")
            .and_then(|g| self.mode(g));
        let tenant = self.optional_text(s, "tenant").and_then(|g| self.id(g));
        let key = self
            .required_text(s, "key", "key = \"/var/lib/nexus-agent/node.key\"")
            .and_then(|g| self.path(g));
        let key_public = key.as_ref().and_then(|key| self.check_key_file(key));
        let token = self.optional_text(s, "token").and_then(|g| self.path(g));
        let data_dir = self
            .required_text(s, "data_dir", "data_dir = \"/var/lib/nexus-agent\"")
            .and_then(|g| self.path(g));
        if let Some(dir) = &data_dir {
            if dir.value.exists() && !dir.value.is_dir() {
                self.push(
                    ErrorKind::InvalidValue,
                    dir.origin.clone(),
                    &dir.path,
                    format!("{} exists and is not a directory", dir.value.display()),
                );
            }
        }
        Some(PartialNode {
            id,
            mode,
            tenant,
            key: key.map(|g| g.value),
            key_public,
            token,
            data_dir: data_dir.map(|g| g.value),
        })
    }

    fn trust(
        &mut self,
        s: &Section<'_>,
        mode: Option<Mode>,
        data_dir: Option<&Path>,
    ) -> Option<TrustConfig> {
        if !s.present {
            // Every mode needs one; with the mode unknown, that error says enough.
            if let Some(mode) = mode {
                self.push(
                    ErrorKind::MissingSection,
                    self.fallback.clone(),
                    "trust",
                    format!(
                        "a {mode} needs a [trust] section with the root's public key(s): \
                         root_keys = [\"ed25519:…\"] (the .pub file `nexus-agent keygen` wrote \
                         for the root)"
                    ),
                );
            }
            return None;
        }
        s.dict?;
        let root_keys = self.root_keys(s);
        let clock_skew = self.duration(s, "clock_skew", CLOCK_SKEW);
        let revocations_file = match self.optional_text(s, "revocations_file") {
            Some(got) => self.path(got).and_then(|got| {
                if got.value.is_dir() {
                    self.push(
                        ErrorKind::InvalidValue,
                        got.origin,
                        &got.path,
                        format!(
                            "{} is a directory: give the path of the revocation list file",
                            got.value.display()
                        ),
                    );
                    return None;
                }
                Some(got.value)
            }),
            None => data_dir.map(|dir| dir.join(REVOCATIONS_FILE)),
        };
        Some(TrustConfig {
            root_keys: root_keys?,
            clock_skew,
            revocations_file: revocations_file?,
        })
    }

    /// `trust.root_keys`: a non-empty list of public keys. From the environment, where
    /// every value is a string, a comma-separated list.
    fn root_keys(&mut self, s: &Section<'_>) -> Option<Vec<PublicKey>> {
        let Some((value, origin, path)) = self.raw(s, "root_keys") else {
            self.push(
                ErrorKind::MissingKey,
                self.fallback.clone(),
                "trust.root_keys",
                "missing required key: add root_keys = [\"ed25519:…\"] with the root's public \
                 key(s)"
                    .to_owned(),
            );
            return None;
        };
        let texts: Vec<Option<&str>> = match value {
            Value::Array(_, items) => items
                .iter()
                .map(|item| match item {
                    Value::String(_, text) => Some(text.as_str()),
                    _ => None,
                })
                .collect(),
            Value::String(_, text) if matches!(origin, Origin::Env(_)) => text
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(Some)
                .collect(),
            other => {
                self.push(
                    ErrorKind::InvalidType,
                    origin,
                    &path,
                    format!(
                        "expected a list of public keys like [\"ed25519:…\"], found {}",
                        other.to_actual()
                    ),
                );
                return None;
            }
        };
        if texts.is_empty() {
            self.push(
                ErrorKind::InvalidValue,
                origin,
                &path,
                "no trust anchor: list at least one root public key (\"ed25519:…\")".to_owned(),
            );
            return None;
        }
        let mut keys = Vec::with_capacity(texts.len());
        let mut bad = false;
        for (i, text) in texts.into_iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let Some(text) = text else {
                self.push(
                    ErrorKind::InvalidType,
                    origin.clone(),
                    &item_path,
                    "expected a string \"ed25519:…\"".to_owned(),
                );
                bad = true;
                continue;
            };
            match PublicKey::parse(text) {
                Ok(key) => keys.push(key),
                Err(error) => {
                    // A secret key pasted here must not be echoed into logs.
                    let shown = if text.trim_start().starts_with(SECRET_KEY_PREFIX) {
                        "this is a SECRET key (keep it off configs): use the root's .pub file"
                            .to_owned()
                    } else {
                        format!(
                            "{:?} is not an Ed25519 public key ({error})",
                            truncate(text)
                        )
                    };
                    self.push(
                        ErrorKind::BadPublicKey,
                        origin.clone(),
                        &item_path,
                        format!("{shown}; use the \"ed25519:…\" line of the root's key .pub file"),
                    );
                    bad = true;
                }
            }
        }
        (!bad).then_some(keys)
    }

    /// `node.token`: required for member and hub; when given, it must be this node's chain,
    /// for this node's role, signed up to a trust anchor. Expiry is not checked: the agent
    /// checks it at run time, against a clock it can trust.
    fn check_token(&mut self, node: &PartialNode, trust: Option<&TrustConfig>) {
        let Some(token) = &node.token else {
            if let Some(mode @ (Mode::Member | Mode::Hub)) = node.mode {
                self.push(
                    ErrorKind::MissingKey,
                    self.fallback.clone(),
                    "node.token",
                    format!(
                        "a {mode} needs its capability token: add token = \
                         \"/var/lib/nexus-agent/node.token\" (issued by its parent with \
                         `nexus-agent token issue`)"
                    ),
                );
            }
            return;
        };
        let path = token.value.display();
        let bytes = match read_capped(&token.value, MAX_CHAIN_BYTES as u64) {
            Ok(bytes) => bytes,
            Err(error) => {
                self.push(
                    ErrorKind::UnreadableTokenFile,
                    token.origin.clone(),
                    &token.path,
                    format!(
                        "cannot read the token file {path}: {error}; the node's parent issues \
                         it with `nexus-agent token issue … --out {path}`"
                    ),
                );
                return;
            }
        };
        let mismatch = |reader: &mut Self, kind: ErrorKind, message: String| {
            reader.push(kind, token.origin.clone(), &token.path, message);
        };
        if bytes.starts_with(SECRET_KEY_PREFIX.as_bytes()) {
            mismatch(
                self,
                ErrorKind::BadTokenFile,
                format!(
                    "{path} is a secret key file, not a token: node.token names the token \
                     chain written by `nexus-agent token issue`"
                ),
            );
            return;
        }
        let chain = match Chain::decode(&bytes) {
            Ok(chain) => chain,
            Err(error) => {
                mismatch(
                    self,
                    ErrorKind::BadTokenFile,
                    format!(
                        "{path} is not a capability token chain ({error}); issue one with \
                         `nexus-agent token issue`"
                    ),
                );
                return;
            }
        };
        let leaf = chain.leaf().claims();
        if let Some(id) = node.id.as_deref().filter(|id| *id != leaf.node_id) {
            mismatch(
                self,
                ErrorKind::TokenMismatch,
                format!(
                    "{path} is the token of node `{}`, but node.id is `{id}`",
                    leaf.node_id
                ),
            );
        }
        if let (Some(public), Some(key)) = (node.key_public, &node.key) {
            if public != leaf.node_key {
                mismatch(
                    self,
                    ErrorKind::TokenMismatch,
                    format!(
                        "{path} is for the key {}, but node.key ({}) is the key {public}: \
                         issue a token for this node's key",
                        leaf.node_key,
                        key.display()
                    ),
                );
            }
        }
        if let (Some(bound), Some(tenant)) = (&leaf.tenant, &node.tenant) {
            if bound != tenant {
                mismatch(
                    self,
                    ErrorKind::TokenMismatch,
                    format!(
                        "{path} binds the node to tenant `{bound}`, but node.tenant is \
                         `{tenant}`"
                    ),
                );
            }
        }
        if let Some(mode) = node.mode.filter(|mode| role_of(*mode) != leaf.role) {
            mismatch(
                self,
                ErrorKind::TokenMismatch,
                format!("{path} is a {} token, but node.mode is {mode}", leaf.role),
            );
        }
        let Some(trust) = trust else { return };
        // Everything but time: at the latest not_before of the chain, every window of a
        // well-formed (attenuated) chain is open, so only signatures, links, attenuation
        // and the anchor are judged.
        let probe = chain
            .tokens()
            .iter()
            .map(|t| t.claims().not_before)
            .max()
            .unwrap_or(leaf.not_before);
        let verifier = Verifier {
            skew: Duration::ZERO,
            ..Verifier::new(trust.root_keys.clone())
        };
        if let Err(error) = verifier.verify_chain(chain.tokens(), probe) {
            let message = match error {
                TokenError::UntrustedRoot { issuer, .. } => format!(
                    "{path} is signed by {issuer}, which is not in trust.root_keys: add the \
                     root key that issued it, or issue a token under a trusted root"
                ),
                TokenError::Expired { .. } | TokenError::NotYetValid { .. } => format!(
                    "{path} does not verify: the validity windows of its tokens do not overlap"
                ),
                other => format!("{path} does not verify up to trust.root_keys: {other}"),
            };
            mismatch(self, ErrorKind::UntrustedToken, message);
        }
    }

    fn link(&mut self, s: &Section<'_>) -> Option<LinkConfig> {
        s.dict?;
        let example = format!("url = \"nats://host:4222\" under [{}]", s.name);
        let url = self
            .required_text(s, "url", &example)
            .and_then(|g| self.url(g));
        let ping_interval = self.duration(s, "ping_interval", LINK_TIMEOUT);
        let connect_timeout = self.duration(s, "connect_timeout", LINK_TIMEOUT);
        let request_timeout = self.duration(s, "request_timeout", LINK_TIMEOUT);
        let reconnect_max_delay = self.duration(s, "reconnect_max_delay", RECONNECT_MAX_DELAY);
        let tls_section = self.subtable(s, "tls", TLS_KEYS);
        let tls = self.tls(&tls_section);
        let url = url?;
        // A `tls://` URL requires TLS as surely as a [tls] section does.
        let tls = match tls {
            None if url.split(',').any(|u| u.trim().starts_with("tls://")) => {
                Some(TlsConfig::default())
            }
            tls => tls,
        };
        Some(LinkConfig {
            url,
            ping_interval,
            connect_timeout,
            request_timeout,
            reconnect_max_delay,
            tls,
        })
    }

    /// `[uplink.tls]` / `[local.tls]`, when present: every file readable PEM, the client
    /// certificate and its key together.
    fn tls(&mut self, s: &Section<'_>) -> Option<TlsConfig> {
        s.dict?;
        let ca_file = self.pem_file(s, "ca_file", "CA bundle").ok().flatten();
        let cert_file = self.pem_file(s, "cert_file", "certificate");
        let key_file = self.pem_file(s, "key_file", "private key");
        let client_cert = match (cert_file, key_file) {
            (Ok(Some(cert_file)), Ok(Some(key_file))) => Some(ClientCert {
                cert_file,
                key_file,
            }),
            (Ok(Some(_)), Ok(None)) | (Ok(None), Ok(Some(_))) => {
                let (given, missing) = if self.raw(s, "cert_file").is_some() {
                    ("cert_file", "key_file")
                } else {
                    ("key_file", "cert_file")
                };
                self.push(
                    ErrorKind::MissingKey,
                    self.fallback.clone(),
                    &format!("{}.{missing}", s.name),
                    format!(
                        "{given} is set without {missing}: a client certificate needs both \
                         (or neither, for TLS without a client certificate)"
                    ),
                );
                None
            }
            _ => None,
        };
        let server_name = self.optional_text(s, "server_name").and_then(|got| {
            if valid_server_name(&got.value) {
                return Some(got.value);
            }
            self.push(
                ErrorKind::InvalidValue,
                got.origin,
                &got.path,
                format!(
                    "{:?} is not a server name: give the DNS name (or IP address) the server's \
                     certificate is issued for, without scheme or port",
                    truncate(&got.value)
                ),
            );
            None
        });
        Some(TlsConfig {
            ca_file,
            client_cert,
            server_name,
        })
    }

    /// An optional PEM file: `Ok(None)` when absent, `Err` when reported. Only the path is
    /// printed, never the contents (a key file is a secret).
    fn pem_file(
        &mut self,
        s: &Section<'_>,
        key: &str,
        what: &str,
    ) -> Result<Option<PathBuf>, Reported> {
        let Some(got) = self.text(s, key, "a path")? else {
            return Ok(None);
        };
        let got = self.path(got).ok_or(Reported)?;
        let path = got.value.display();
        let problem = match read_capped(&got.value, TLS_FILE_MAX_BYTES).map(Zeroizing::new) {
            Err(error) => Some((
                ErrorKind::UnreadableTlsFile,
                format!("cannot read the {what} {path}: {error}"),
            )),
            Ok(bytes) if !contains(&bytes, PEM_BEGIN.as_bytes()) => Some((
                ErrorKind::BadTlsFile,
                format!("{path} is not a PEM {what} (no `{PEM_BEGIN}…` line)"),
            )),
            Ok(_) => None,
        };
        match problem {
            Some((kind, message)) => {
                self.push(kind, got.origin, &got.path, message);
                Err(Reported)
            }
            None => Ok(Some(got.value)),
        }
    }

    fn heartbeat(&mut self, s: &Section<'_>) -> HeartbeatConfig {
        let interval = self.duration(s, "interval", HEARTBEAT_INTERVAL);
        let offline_after = self.duration(
            s,
            "offline_after",
            interval.saturating_mul(OFFLINE_AFTER_INTERVALS),
        );
        HeartbeatConfig {
            interval,
            offline_after,
        }
    }

    fn log(&mut self, s: &Section<'_>) -> LogConfig {
        let level = match self.optional_text(s, "level") {
            Some(g) if valid_filter(&g.value) => g.value,
            Some(g) => {
                self.push(
                    ErrorKind::InvalidValue,
                    g.origin,
                    &g.path,
                    format!(
                        "{:?} is not a log filter: use one of {} or a comma list of \
                         target=level (e.g. \"nexus_federation=debug,info\")",
                        g.value,
                        LEVELS.join(", ")
                    ),
                );
                LOG_LEVEL.to_owned()
            }
            None => LOG_LEVEL.to_owned(),
        };
        let format = match self.optional_text(s, "format") {
            None => LogFormat::Human,
            Some(g) => match g.value.as_str() {
                "human" => LogFormat::Human,
                "json" => LogFormat::Json,
                other => {
                    let hint = did_you_mean(other, ["human", "json"]);
                    self.push(
                        ErrorKind::InvalidValue,
                        g.origin,
                        &g.path,
                        format!("{other:?} is not a log format: use human or json{hint}"),
                    );
                    LogFormat::Human
                }
            },
        };
        LogConfig { level, format }
    }

    fn outbox(&mut self, s: &Section<'_>) -> OutboxConfig {
        let max_bytes = self.integer(s, "max_bytes", 1..=i128::from(u64::MAX));
        let batch = self.integer(s, "batch", BATCH_RANGE);
        let when_full = match self.optional_text(s, "when_full") {
            None => WhenFull::default(),
            Some(g) => match g.value.as_str() {
                "reject" => WhenFull::Reject,
                "drop_oldest" => WhenFull::DropOldest,
                other => {
                    let hint = did_you_mean(other, ["reject", "drop_oldest"]);
                    self.push(
                        ErrorKind::InvalidValue,
                        g.origin,
                        &g.path,
                        format!("{other:?} is not a policy: use reject or drop_oldest{hint}"),
                    );
                    WhenFull::default()
                }
            },
        };
        let max_age = self.optional_duration(s, "max_age");
        let drain_rate = self
            .integer(s, "drain_rate", 1..=i128::from(u32::MAX))
            .and_then(|v| u32::try_from(v).ok())
            .and_then(NonZeroU32::new);
        OutboxConfig {
            max_bytes: max_bytes
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(OUTBOX_MAX_BYTES),
            batch: batch.and_then(|v| usize::try_from(v).ok()).unwrap_or(BATCH),
            when_full,
            max_age,
            drain_rate,
        }
    }

    fn dead_letter(&mut self, s: &Section<'_>) -> DeadLetterConfig {
        let max_bytes = self.integer(s, "max_bytes", 1..=i128::from(u64::MAX));
        let max_entries = self.integer(s, "max_entries", 1..=i128::from(u64::MAX));
        DeadLetterConfig {
            max_bytes: max_bytes
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(DEAD_LETTER_MAX_BYTES),
            max_entries: max_entries
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(DEAD_LETTER_MAX_ENTRIES),
        }
    }

    /// `[[acl]]`: absent means "whatever the token grants"; present, every entry is checked
    /// and every problem reported with its index (`acl[2].allow_publish[0]`).
    fn acl(&mut self, root: &Dict) -> AclPolicy {
        let Some(value) = root.get(ACL).filter(|v| !matches!(v, Value::Empty(..))) else {
            return AclPolicy::TokenGrants;
        };
        let Value::Array(_, entries) = value else {
            let origin = source::origin_of(self.figment, value, &[ACL]);
            self.push(
                ErrorKind::InvalidType,
                origin,
                ACL,
                format!(
                    "expected an array of tables, found {}: write each rule as an [[acl]] \
                     entry (two brackets)",
                    value.to_actual()
                ),
            );
            return AclPolicy::Rules(Acl::default());
        };
        let mut rules = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let s = self.table(Some(entry), format!("{ACL}[{index}]"), ACL_KEYS);
            if let Some(rule) = self.acl_rule(&s) {
                rules.push(rule);
            }
        }
        AclPolicy::Rules(Acl::new(rules))
    }

    fn acl_rule(&mut self, s: &Section<'_>) -> Option<AclRule> {
        s.dict?;
        let principal = match self.text(s, "principal", "a string") {
            Ok(Some(got)) => match Principal::parse(&got.value) {
                Ok(principal) => Some(principal),
                Err(error) => {
                    self.push(
                        ErrorKind::BadPrincipal,
                        got.origin,
                        &got.path,
                        format!(
                            "{error}: use `local` (apps on this node), a node id, or a glob of \
                             node ids such as `edge-*`"
                        ),
                    );
                    None
                }
            },
            Ok(None) => {
                self.push(
                    ErrorKind::MissingKey,
                    s.origin.clone(),
                    &format!("{}.principal", s.name),
                    "missing required key: add principal = \"edge-*\" (or `local`, a node id)"
                        .to_owned(),
                );
                None
            }
            Err(Reported) => None,
        };
        let allow_publish = self.patterns(s, "allow_publish");
        let deny_publish = self.patterns(s, "deny_publish");
        let allow_receive = self.patterns(s, "allow_receive");
        let deny_receive = self.patterns(s, "deny_receive");
        Some(AclRule {
            principal: principal?,
            allow_publish: allow_publish?,
            deny_publish: deny_publish?,
            allow_receive: allow_receive?,
            deny_receive: deny_receive?,
        })
    }

    /// A list of subject patterns (empty when absent); `None` when anything was reported.
    fn patterns(&mut self, s: &Section<'_>, key: &str) -> Option<Vec<SubjectPattern>> {
        let Some((value, origin, path)) = self.raw(s, key) else {
            return Some(Vec::new());
        };
        let Value::Array(_, items) = value else {
            self.push(
                ErrorKind::InvalidType,
                origin,
                &path,
                format!(
                    "expected a list of subject patterns like [\"nexus.salon-001.>\"], found {}",
                    value.to_actual()
                ),
            );
            return None;
        };
        let mut patterns = Vec::with_capacity(items.len());
        let mut bad = false;
        for (index, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            let Value::String(_, text) = item else {
                self.push(
                    ErrorKind::InvalidType,
                    origin.clone(),
                    &item_path,
                    format!(
                        "expected a subject pattern string, found {}",
                        item.to_actual()
                    ),
                );
                bad = true;
                continue;
            };
            match SubjectPattern::parse(text) {
                Ok(pattern) => patterns.push(pattern),
                Err(error) => {
                    self.push(
                        ErrorKind::BadPattern,
                        origin.clone(),
                        &item_path,
                        format!(
                            "{:?} is not a subject pattern: {error} (tokens are separated by \
                             `.`; `*` stands for one token, `>` for the rest)",
                            truncate(text)
                        ),
                    );
                    bad = true;
                }
            }
        }
        (!bad).then_some(patterns)
    }

    fn ingress(&mut self, s: &Section<'_>) -> IngressConfig {
        let stream = self.jetstream_name(s, "stream", INGRESS_STREAM);
        let consumer = self.jetstream_name(s, "consumer", INGRESS_CONSUMER);
        let max_bytes = self.integer(s, "max_bytes", 1..=i128::from(i64::MAX));
        let max_age = self.duration(s, "max_age", INGRESS_MAX_AGE);
        let duplicate_window = self.duration(s, "duplicate_window", INGRESS_DUPLICATE_WINDOW);
        if duplicate_window > max_age {
            // nats-server refuses such a stream; say so now rather than at startup, on the
            // key the operator wrote.
            let set = |key: &str| s.dict.and_then(|d| d.get(key)).is_some();
            let (key, message) = if set("duplicate_window") || !set("max_age") {
                (
                    "duplicate_window",
                    format!(
                        "{} is longer than ingress.max_age ({}); JetStream requires \
                         duplicate_window <= max_age",
                        humantime::format_duration(duplicate_window),
                        humantime::format_duration(max_age)
                    ),
                )
            } else {
                (
                    "max_age",
                    format!(
                        "{} is shorter than ingress.duplicate_window ({}, the default); \
                         JetStream requires duplicate_window <= max_age: raise max_age or \
                         set duplicate_window",
                        humantime::format_duration(max_age),
                        humantime::format_duration(duplicate_window)
                    ),
                )
            };
            let origin = s
                .dict
                .and_then(|d| d.get(key))
                .map(|v| source::origin_of(self.figment, v, &[s.name.as_str(), key]))
                .unwrap_or_else(|| self.fallback.clone());
            self.push(
                ErrorKind::InvalidValue,
                origin,
                &format!("{}.{key}", s.name),
                message,
            );
        }
        let batch = self.integer(s, "batch", BATCH_RANGE);
        let max_deliver = self.integer(s, "max_deliver", INGRESS_MAX_DELIVER_RANGE);
        let landed_ttl = self.duration(s, "landed_ttl", INGRESS_LANDED_TTL);
        IngressConfig {
            stream,
            consumer,
            max_bytes: max_bytes
                .and_then(|v| i64::try_from(v).ok())
                .unwrap_or(INGRESS_MAX_BYTES),
            max_age,
            duplicate_window,
            batch: batch.and_then(|v| usize::try_from(v).ok()).unwrap_or(BATCH),
            max_deliver: max_deliver
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(INGRESS_MAX_DELIVER),
            landed_ttl,
        }
    }

    /// A copy of an event this node forwarded but could not record as done (a crash, a lost
    /// acknowledgement) is delivered again and must reach the next stream while it still
    /// drops the repeated event_id: `ingress.duplicate_window` must cover what
    /// [`IngressConfig::ack_wait`] and the onward link's `request_timeout` add up to.
    fn redelivery_window(
        &mut self,
        s: &Section<'_>,
        ingress: &IngressConfig,
        onward: &str,
        link: &LinkConfig,
    ) {
        let needed = IngressConfig::min_duplicate_window(link.request_timeout);
        if ingress.duplicate_window >= needed
            || self.reported(&format!("{}.duplicate_window", s.name))
        {
            return;
        }
        let origin = self.origin_or_fallback(s, "duplicate_window");
        self.push(
            ErrorKind::InvalidValue,
            origin,
            &format!("{}.duplicate_window", s.name),
            format!(
                "{} is shorter than a redelivery needs: a message forwarded but not yet \
                 acknowledged when the agent crashed (or whose acknowledgement was lost) comes \
                 back after the consumer's ack wait (a quarter of the window, at most 30s) plus up to \
                 {onward}.request_timeout ({}), and must still be inside the window to be \
                 dropped as a copy. Set duplicate_window to at least {} ({} x \
                 {onward}.request_timeout), or lower {onward}.request_timeout",
                humantime::format_duration(ingress.duplicate_window),
                humantime::format_duration(link.request_timeout),
                humantime::format_duration(needed),
                IngressConfig::WINDOW_PER_REQUEST_TIMEOUT,
            ),
        );
    }

    /// `[iot]` and its `[[iot.sensors]]` (member only, with a tenant).
    fn iot(&mut self, s: &Section<'_>, node: Option<&PartialNode>) -> Option<IotConfig> {
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
        match text.as_str() {
            "3.1.1" => Some(MqttProtocol::V311),
            "5" | "5.0" => Some(MqttProtocol::V5),
            other => {
                let hint = match other {
                    "3" | "3.1" | "4" => ": use \"3.1.1\" (MQTT 3.1 is not supported)",
                    _ => "",
                };
                self.push(
                    ErrorKind::InvalidValue,
                    origin,
                    &path,
                    format!(
                        "{other:?} is not a supported MQTT version: use protocol = \"3.1.1\" \
                         (default) or protocol = \"5\"{hint}"
                    ),
                );
                None
            }
        }
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
            Some(g) => match g.value.as_str() {
                "number" => Some(PayloadFormat::Number),
                "json" => Some(PayloadFormat::Json),
                other => {
                    let hint = did_you_mean(other, ["number", "json"]);
                    self.push(
                        ErrorKind::InvalidValue,
                        g.origin,
                        &g.path,
                        format!("{other:?} is not a payload format: use number or json{hint}"),
                    );
                    None
                }
            },
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

    // ---- [bridge] and [landing] ----------------------------------------------------

    /// `[bridge]` with its `[[bridge.up]]` and `[[bridge.down]]` rules. Rules need
    /// `[local]` (where the apps are); up rules need `node.tenant` (app events are tenant
    /// events).
    fn bridge(
        &mut self,
        s: &Section<'_>,
        node: Option<&PartialNode>,
        local_present: bool,
    ) -> BridgeConfig {
        let defaults = BridgeConfig::default();
        if s.dict.is_none() {
            return defaults;
        }
        let max_payload = self
            .integer(s, "max_payload", BRIDGE_MAX_PAYLOAD_RANGE)
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(defaults.max_payload);
        let (up, up_written) = self.rule_list(s, "up", UP_RULE_KEYS, Self::up_rule);
        let (down, down_written) = self.rule_list(s, "down", DOWN_RULE_KEYS, Self::down_rule);
        let mode = node.and_then(|n| n.mode);
        // A hub or root without [local] has been told already.
        if up_written + down_written > 0
            && !local_present
            && !matches!(mode, Some(Mode::Hub | Mode::Root))
        {
            self.push(
                ErrorKind::MissingSection,
                self.fallback.clone(),
                "local",
                "[bridge] rules connect local apps to the federation: add [local] with the url \
                 of the box's own NATS, where the apps are (e.g. url = \"nats://127.0.0.1:4222\")"
                    .to_owned(),
            );
        }
        if up_written > 0
            && node.is_some_and(|n| n.tenant.is_none())
            && !self.reported("node.tenant")
        {
            self.push(
                ErrorKind::MissingKey,
                self.fallback.clone(),
                "node.tenant",
                "[[bridge.up]] rules publish tenant events (nexus.{tenant}.{event}): add \
                 tenant = \"salon-001\" under [node]"
                    .to_owned(),
            );
        }
        BridgeConfig {
            up,
            down,
            max_payload,
        }
    }

    /// The array of tables `[[{section}.{key}]]`, at most [`BRIDGE_MAX_RULES`] entries, each
    /// read by `read` with every problem reported by index: the valid rules, and how many
    /// were written (valid or not).
    fn rule_list<T>(
        &mut self,
        s: &Section<'_>,
        key: &str,
        known: &[&str],
        read: impl Fn(&mut Self, &Section<'_>) -> Option<T>,
    ) -> (Vec<T>, usize) {
        let Some((value, origin, path)) = self.raw(s, key) else {
            return (Vec::new(), 0);
        };
        let Value::Array(_, entries) = value else {
            self.push(
                ErrorKind::InvalidType,
                origin,
                &path,
                format!(
                    "expected an array of tables, found {}: write each rule as a [[{path}]] \
                     entry (two brackets)",
                    value.to_actual()
                ),
            );
            return (Vec::new(), 1);
        };
        if entries.len() > BRIDGE_MAX_RULES {
            self.push(
                ErrorKind::InvalidValue,
                origin,
                &path,
                format!(
                    "{} rules: at most {BRIDGE_MAX_RULES} are allowed (every message is tried \
                     against them in order); merge rules with wildcards (`*`, `>`)",
                    entries.len()
                ),
            );
            return (Vec::new(), entries.len());
        }
        let mut rules = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let section = self.table(Some(entry), format!("{path}[{index}]"), known);
            if let Some(rule) = read(self, &section) {
                rules.push(rule);
            }
        }
        (rules, entries.len())
    }

    /// One `[[bridge.up]]` rule: `local` → `event`, and the encoding.
    fn up_rule(&mut self, s: &Section<'_>) -> Option<UpRule> {
        s.dict?;
        let local = self
            .required_text(
                s,
                "local",
                "local = \"app.booking.*\" (the local subjects this rule bridges up)",
            )
            .and_then(|g| self.local_subject(g, Flow::Up));
        let event = self
            .required_text(
                s,
                "event",
                "event = \"booking.*\" (the event name they become)",
            )
            .and_then(|g| self.name_pattern(g, Flow::Up));
        let encoding = match self.optional_text(s, "encoding") {
            None => Some(BridgeEncoding::default()),
            Some(g) => match g.value.as_str() {
                "json" => Some(BridgeEncoding::Json),
                "cbor" => Some(BridgeEncoding::Cbor),
                other => {
                    let hint = did_you_mean(other, ["json", "cbor"]);
                    self.push(
                        ErrorKind::InvalidValue,
                        g.origin,
                        &g.path,
                        format!("{other:?} is not an encoding: use json or cbor{hint}"),
                    );
                    None
                }
            },
        };
        let rewrite = self.rewrite(&local?, &event?, Flow::Up)?;
        Some(UpRule {
            rewrite,
            encoding: encoding?,
        })
    }

    /// One `[[bridge.down]]` rule: `command` → `local`, and the timeout.
    fn down_rule(&mut self, s: &Section<'_>) -> Option<DownRule> {
        s.dict?;
        let command = self
            .required_text(
                s,
                "command",
                "command = \"booking.cancel\" (the command name this rule delivers)",
            )
            .and_then(|g| self.name_pattern(g, Flow::Down));
        let local = self
            .required_text(
                s,
                "local",
                "local = \"app.booking.cancel\" (the local subject the request goes to)",
            )
            .and_then(|g| self.local_subject(g, Flow::Down));
        let timeout = self.duration(s, "timeout", BRIDGE_DOWN_TIMEOUT);
        let rewrite = self.rewrite(&command?, &local?, Flow::Down)?;
        Some(DownRule { rewrite, timeout })
    }

    /// The `local` side of a bridge rule: a subject pattern on the box's own NATS, whose
    /// first token is written out and is none of the reserved ones.
    fn local_subject(&mut self, got: Got<String>, flow: Flow) -> Option<Got<String>> {
        if let Err(error) = SubjectPattern::parse(&got.value) {
            self.bad_pattern(&got, &error.to_string());
            return None;
        }
        let first = got.value.split('.').next().unwrap_or_default();
        let problem = match first {
            "*" | ">" => match flow {
                Flow::Up => {
                    "it starts with a wildcard, so it would also capture subjects that are no \
                     app's: the federation's own (_nexus.…), NATS's ($SYS.…, $JS.…) and request \
                     replies (_INBOX.…); start it with the apps' own prefix, e.g. \
                     \"app.booking.*\""
                }
                Flow::Down => {
                    "it starts with a wildcard, so a command's name would choose where on the \
                     local NATS its request goes; start it with the apps' own prefix, e.g. \
                     \"app.booking.cancel\""
                }
            },
            FEDERATION_PREFIX => {
                "_nexus is reserved for the federation's own subjects: local apps can never \
                 publish there nor take requests there; use the apps' own subjects, e.g. \
                 \"app.booking.*\""
            }
            INBOX_PREFIX => {
                "_INBOX subjects are request replies, not app subjects; use the apps' own \
                 subjects, e.g. \"app.booking.*\""
            }
            system if system.starts_with('$') => {
                "subjects starting with `$` are NATS's own (system events, the JetStream API); \
                 use the apps' own subjects, e.g. \"app.booking.*\""
            }
            _ => return Some(got),
        };
        self.push(
            ErrorKind::InvalidValue,
            got.origin,
            &got.path,
            format!("{:?} is refused: {problem}", truncate(&got.value)),
        );
        None
    }

    /// The event side of an up rule, or the command side of a down rule: a pattern of at
    /// least two tokens of `[a-z0-9_-]` or wildcards, whose first token (the domain) is
    /// written out and is not one of the agent's own.
    fn name_pattern(&mut self, got: Got<String>, flow: Flow) -> Option<Got<String>> {
        if let Err(error) = SubjectPattern::parse(&got.value) {
            self.bad_pattern(&got, &error.to_string());
            return None;
        }
        let (what, example) = match flow {
            Flow::Up => ("an event name", "booking.*"),
            Flow::Down => ("a command name", "booking.cancel"),
        };
        let tokens: Vec<&str> = got.value.split('.').collect();
        let first = tokens.first().copied().unwrap_or_default();
        let bad_token = tokens
            .iter()
            .find(|t| !matches!(**t, "*" | ">") && ids::check_id(t).is_err());
        let problem = if let Some(token) = bad_token {
            format!(
                "token {:?} is not 1-{MAX_ID_LEN} chars of [a-z0-9_-] (or a wildcard `*`, `>`)",
                truncate(token)
            )
        } else if tokens.len() < 2 {
            format!("it needs at least two tokens, its domain first: e.g. \"{example}\"")
        } else if matches!(first, "*" | ">") {
            match flow {
                Flow::Up => format!(
                    "its first token is the event's domain and must be written out: a wildcard \
                     would let a local app publish in any domain, the agent's own ({}) \
                     included; e.g. \"{example}\"",
                    RESERVED_EVENT_DOMAINS.join(", ")
                ),
                Flow::Down => format!(
                    "its first token is the command's domain and must be written out: a \
                     wildcard would also take the agent's built-in commands \
                     ({AGENT_COMMAND_DOMAIN}.…); e.g. \"{example}\""
                ),
            }
        } else if flow == Flow::Up && RESERVED_EVENT_DOMAINS.contains(&first) {
            format!(
                "`{first}` is a domain of the agent's own events ({} are reserved): use the \
                 app's domain, e.g. \"{example}\"",
                RESERVED_EVENT_DOMAINS.join(", ")
            )
        } else if flow == Flow::Down && first == AGENT_COMMAND_DOMAIN {
            format!(
                "`{AGENT_COMMAND_DOMAIN}` is the domain of the agent's built-in commands: use \
                 the app's domain, e.g. \"{example}\""
            )
        } else {
            return Some(got);
        };
        self.push(
            ErrorKind::InvalidValue,
            got.origin,
            &got.path,
            format!("{:?} is not {what}: {problem}", truncate(&got.value)),
        );
        None
    }

    /// The rewrite `from` → `to` of a bridge rule; a wildcard mismatch is reported on `to`,
    /// the side that must follow.
    fn rewrite(
        &mut self,
        from: &Got<String>,
        to: &Got<String>,
        flow: Flow,
    ) -> Option<SubjectRewrite> {
        match SubjectRewrite::new(&from.value, &to.value) {
            Ok(rewrite) => Some(rewrite),
            Err(RewriteError::BadPattern { text, reason }) => {
                // Both sides were parsed already; kept for completeness.
                let got = if text == from.value { from } else { to };
                self.bad_pattern(got, &reason);
                None
            }
            Err(error) => {
                let fix = match flow {
                    Flow::Up => {
                        "give event the wildcards of local, in the same order: local = \
                         \"app.booking.*\" with event = \"booking.*\""
                    }
                    Flow::Down => {
                        "give local the wildcards of command, in the same order: command = \
                         \"booking.*\" with local = \"app.booking.*\""
                    }
                };
                self.push(
                    ErrorKind::InvalidValue,
                    to.origin.clone(),
                    &to.path,
                    format!("{error}; {fix}"),
                );
                None
            }
        }
    }

    /// Reports `got` as a subject pattern that does not parse.
    fn bad_pattern(&mut self, got: &Got<String>, error: &str) {
        self.push(
            ErrorKind::BadPattern,
            got.origin.clone(),
            &got.path,
            format!(
                "{:?} is not a subject pattern: {error} (tokens are separated by `.`; `*` \
                 stands for one token, `>` for the rest)",
                truncate(&got.value)
            ),
        );
    }

    /// `[landing]` (root only) and its `[[landing.domains]]`. The journal dedups within
    /// `ingress.duplicate_window`, so it may not keep events for less; every stream has a
    /// name of its own.
    fn landing(
        &mut self,
        s: &Section<'_>,
        mode: Option<Mode>,
        ingress: &IngressConfig,
    ) -> LandingConfig {
        let defaults = LandingConfig::defaults();
        if let Some(mode @ (Mode::Member | Mode::Hub)) = mode {
            if s.present {
                self.push(
                    ErrorKind::ForbiddenSection,
                    s.origin.clone(),
                    "landing",
                    format!(
                        "a {mode} does not land events: remove the [landing] section (only the \
                         root lands events in JetStream; a {mode} forwards them up)"
                    ),
                );
            }
            return defaults;
        }
        if s.present && s.dict.is_none() {
            return defaults;
        }
        let stream = self.jetstream_name(s, "stream", &defaults.stream);
        if stream == ingress.stream {
            let origin = self.origin_or_fallback(s, "stream");
            self.push(
                ErrorKind::InvalidValue,
                origin,
                "landing.stream",
                format!(
                    "{stream:?} is also ingress.stream: the journal and the ingress are two \
                     streams, give them different names"
                ),
            );
        }
        let max_age = self.duration(s, "max_age", defaults.max_age);
        if max_age < ingress.duplicate_window {
            let origin = self.origin_or_fallback(s, "max_age");
            let default = if self.raw(s, "max_age").is_none() {
                " (the default)"
            } else {
                ""
            };
            self.push(
                ErrorKind::InvalidValue,
                origin,
                "landing.max_age",
                format!(
                    "{}{default} is shorter than ingress.duplicate_window ({}), the journal's \
                     dedup window; JetStream requires duplicate_window <= max_age: raise \
                     landing.max_age or lower ingress.duplicate_window",
                    humantime::format_duration(max_age),
                    humantime::format_duration(ingress.duplicate_window)
                ),
            );
        }
        let max_bytes = self
            .integer(s, "max_bytes", 1..=i128::from(i64::MAX))
            .and_then(|v| i64::try_from(v).ok());
        // The names already taken, and by whom.
        let mut taken = vec![
            (stream.clone(), "the journal (landing.stream)".to_owned()),
            (
                ingress.stream.clone(),
                "the ingress (ingress.stream)".to_owned(),
            ),
        ];
        let domains = match self.raw(s, "domains") {
            None => {
                for domain in &defaults.domains {
                    if let Some((_, owner)) = taken.iter().find(|(n, _)| *n == domain.name) {
                        let message = format!(
                            "the default domain stream {:?} has the name of {owner}: rename \
                             that stream, or list your own [[landing.domains]]",
                            domain.name
                        );
                        self.push(
                            ErrorKind::InvalidValue,
                            self.fallback.clone(),
                            "landing.domains",
                            message,
                        );
                    }
                }
                defaults.domains
            }
            Some((Value::Array(_, entries), _, path)) => {
                let mut domains = Vec::with_capacity(entries.len());
                for (index, entry) in entries.iter().enumerate() {
                    let section =
                        self.table(Some(entry), format!("{path}[{index}]"), LANDING_DOMAIN_KEYS);
                    if let Some(domain) = self.landing_domain(&section, &mut taken) {
                        domains.push(domain);
                    }
                }
                domains
            }
            Some((value, origin, path)) => {
                self.push(
                    ErrorKind::InvalidType,
                    origin,
                    &path,
                    format!(
                        "expected an array of tables, found {}: write each domain as a \
                         [[landing.domains]] entry (two brackets)",
                        value.to_actual()
                    ),
                );
                Vec::new()
            }
        };
        LandingConfig {
            stream,
            max_age,
            max_bytes,
            domains,
        }
    }

    /// One `[[landing.domains]]` entry; its name is added to `taken` (name, whose).
    fn landing_domain(
        &mut self,
        s: &Section<'_>,
        taken: &mut Vec<(String, String)>,
    ) -> Option<LandingDomain> {
        s.dict?;
        let name = self
            .required_text(
                s,
                "name",
                "name = \"NEXUS_BOOKING\" (the domain stream's name)",
            )
            .and_then(|g| {
                if !valid_jetstream_name(&g.value) {
                    self.push(
                        ErrorKind::InvalidValue,
                        g.origin,
                        &g.path,
                        format!(
                            "{:?} is not a JetStream name: use a non-empty name without spaces, \
                             `.`, `*`, `>`, `/` or `\\`",
                            truncate(&g.value)
                        ),
                    );
                    return None;
                }
                // Key-value buckets are streams named KV_<bucket> (the agent's own among
                // them): a domain of that name would replace a bucket.
                if g.value.starts_with("KV_") || g.value.starts_with("OBJ_") {
                    self.push(
                        ErrorKind::InvalidValue,
                        g.origin,
                        &g.path,
                        format!(
                            "{:?} is reserved: streams named KV_… and OBJ_… are NATS key-value \
                             and object stores (e.g. the agent's KV_NEXUS_CHAINS): pick \
                             another name, e.g. \"NEXUS_BOOKING\"",
                            truncate(&g.value)
                        ),
                    );
                    return None;
                }
                if let Some((_, owner)) = taken.iter().find(|(n, _)| *n == g.value) {
                    self.push(
                        ErrorKind::InvalidValue,
                        g.origin,
                        &g.path,
                        format!(
                            "{:?} is already the name of {owner}: every stream needs a name of \
                             its own",
                            g.value
                        ),
                    );
                    return None;
                }
                taken.push((g.value.clone(), s.name.clone()));
                Some(g.value)
            });
        let subjects = if self.raw(s, "subjects").is_none() {
            self.push(
                ErrorKind::MissingKey,
                s.origin.clone(),
                &format!("{}.subjects", s.name),
                "missing required key: add subjects = [\"nexus.*.booking.>\"] (the event \
                 subjects this domain keeps)"
                    .to_owned(),
            );
            None
        } else {
            self.patterns(s, "subjects")
                .and_then(|subjects| self.event_subjects(s, subjects))
        };
        let max_age = if self.raw(s, "max_age").is_none() {
            self.push(
                ErrorKind::MissingKey,
                s.origin.clone(),
                &format!("{}.max_age", s.name),
                "missing required key: add max_age = \"365d\" (how long this domain keeps its \
                 events)"
                    .to_owned(),
            );
            None
        } else {
            self.optional_duration(s, "max_age")
        };
        let max_bytes = self
            .integer(s, "max_bytes", 1..=i128::from(i64::MAX))
            .and_then(|v| i64::try_from(v).ok());
        Some(LandingDomain {
            name: name?,
            subjects: subjects?,
            max_age: max_age?,
            max_bytes,
        })
    }

    /// `subjects` of a domain: not empty, each an event subject (`nexus.…`), since a domain
    /// selects from the journal.
    fn event_subjects(
        &mut self,
        s: &Section<'_>,
        subjects: Vec<SubjectPattern>,
    ) -> Option<Vec<SubjectPattern>> {
        let path = format!("{}.subjects", s.name);
        if subjects.is_empty() {
            let origin = self.origin_or_fallback(s, "subjects");
            self.push(
                ErrorKind::InvalidValue,
                origin,
                &path,
                "an empty list selects nothing: list the event subjects this domain keeps, e.g. \
                 [\"nexus.*.booking.>\"] (or remove the domain)"
                    .to_owned(),
            );
            return None;
        }
        let mut bad = false;
        for (index, subject) in subjects.iter().enumerate() {
            let mut tokens = subject.as_str().split('.');
            if tokens.next() == Some(EVENT_PREFIX) && tokens.next().is_some() {
                continue;
            }
            let origin = self.origin_or_fallback(s, "subjects");
            self.push(
                ErrorKind::InvalidValue,
                origin,
                &format!("{path}[{index}]"),
                format!(
                    "{:?} is not an event subject: a domain selects from the journal, which \
                     holds {EVENT_PREFIX}.> only; start it with `{EVENT_PREFIX}.`, e.g. \
                     \"nexus.*.booking.>\"",
                    truncate(subject.as_str())
                ),
            );
            bad = true;
        }
        // One source filters by all of them at once: JetStream refuses overlapping filters.
        for (index, subject) in subjects.iter().enumerate() {
            if let Some(earlier) = subjects[..index].iter().find(|e| e.overlaps(subject)) {
                let origin = self.origin_or_fallback(s, "subjects");
                self.push(
                    ErrorKind::InvalidValue,
                    origin,
                    &format!("{path}[{index}]"),
                    format!(
                        "{:?} overlaps {:?} in the same domain (some subject matches both): \
                         keep the wider one, or split them into two domains",
                        truncate(subject.as_str()),
                        truncate(earlier.as_str())
                    ),
                );
                bad = true;
            }
        }
        (!bad).then_some(subjects)
    }

    /// Whether a problem was reported on `key` already.
    fn reported(&self, key: &str) -> bool {
        self.errors.iter().any(|e| e.key.as_deref() == Some(key))
    }

    /// Where `s.key` came from, or the config file when it is absent.
    fn origin_or_fallback(&self, s: &Section<'_>, key: &str) -> Origin {
        self.raw(s, key)
            .map(|(_, origin, _)| origin)
            .unwrap_or_else(|| self.fallback.clone())
    }

    // ---- typed reads ---------------------------------------------------------------

    /// The value at `s.key`, if present; `Empty` counts as absent.
    fn raw<'d>(&self, s: &Section<'d>, key: &str) -> Option<(&'d Value, Origin, String)> {
        let value = s.dict?.get(key)?;
        if matches!(value, Value::Empty(..)) {
            return None;
        }
        let mut segments: Vec<&str> = s.name.split('.').collect();
        segments.push(key);
        let origin = source::origin_of(self.figment, value, &segments);
        Some((value, origin, format!("{}.{key}", s.name)))
    }

    /// A string value; a value of another type is reported with what was `expected`.
    fn text(
        &mut self,
        s: &Section<'_>,
        key: &str,
        expected: &str,
    ) -> Result<Option<Got<String>>, Reported> {
        let Some((value, origin, path)) = self.raw(s, key) else {
            return Ok(None);
        };
        match value {
            Value::String(_, text) => Ok(Some(Got {
                value: text.clone(),
                origin,
                path,
            })),
            other => {
                self.push(
                    ErrorKind::InvalidType,
                    origin,
                    &path,
                    format!("expected {expected}, found {}", other.to_actual()),
                );
                Err(Reported)
            }
        }
    }

    /// A required string; its absence is reported with an `example` of the line to add.
    fn required_text(&mut self, s: &Section<'_>, key: &str, example: &str) -> Option<Got<String>> {
        match self.text(s, key, "a string") {
            Ok(Some(got)) => Some(got),
            Ok(None) => {
                self.push(
                    ErrorKind::MissingKey,
                    self.fallback.clone(),
                    &format!("{}.{key}", s.name),
                    format!("missing required key: add {example}"),
                );
                None
            }
            Err(Reported) => None,
        }
    }

    fn optional_text(&mut self, s: &Section<'_>, key: &str) -> Option<Got<String>> {
        self.text(s, key, "a string").ok().flatten()
    }

    /// A humantime duration string, positive; `default` when absent or bad (bad is reported).
    fn duration(&mut self, s: &Section<'_>, key: &str, default: Duration) -> Duration {
        self.optional_duration(s, key).unwrap_or(default)
    }

    /// A humantime duration string, positive; `None` when absent or bad (bad is reported).
    fn optional_duration(&mut self, s: &Section<'_>, key: &str) -> Option<Duration> {
        let expected = "a duration string like \"10s\"";
        let Ok(Some(got)) = self.text(s, key, expected) else {
            return None;
        };
        match humantime::parse_duration(got.value.trim()) {
            Ok(duration) if !duration.is_zero() => Some(duration),
            Ok(_) => {
                self.push(
                    ErrorKind::BadDuration,
                    got.origin,
                    &got.path,
                    format!(
                        "{:?} is zero: use a positive duration like \"10s\"",
                        got.value
                    ),
                );
                None
            }
            Err(error) => {
                self.push(
                    ErrorKind::BadDuration,
                    got.origin,
                    &got.path,
                    format!(
                        "{:?} is not a duration ({error}): use e.g. \"500ms\", \"10s\", \"2m\", \
                         \"7d\"",
                        got.value
                    ),
                );
                None
            }
        }
    }

    /// An integer within `range`; `None` when absent or bad (bad is reported). A string is
    /// accepted only from the environment, where every value is one.
    fn integer(&mut self, s: &Section<'_>, key: &str, range: RangeInclusive<i128>) -> Option<i128> {
        let (value, origin, path) = self.raw(s, key)?;
        let number = match value {
            Value::Num(_, n) => n
                .to_i128()
                .or_else(|| n.to_u128().and_then(|u| i128::try_from(u).ok())),
            Value::String(_, text) if matches!(origin, Origin::Env(_)) => {
                text.trim().replace('_', "").parse::<i128>().ok()
            }
            _ => None,
        };
        let Some(number) = number else {
            self.push(
                ErrorKind::InvalidType,
                origin,
                &path,
                format!("expected an integer, found {}", value.to_actual()),
            );
            return None;
        };
        if !range.contains(&number) {
            self.push(
                ErrorKind::InvalidValue,
                origin,
                &path,
                format!(
                    "{number} is out of range: use {} to {}",
                    range.start(),
                    range.end()
                ),
            );
            return None;
        }
        Some(number)
    }

    // ---- value checks --------------------------------------------------------------

    /// A subject token: a tenant, or a node id ([`Self::node_id`]); the rule is
    /// [`ids::check_id`], the one tokens and ACLs are checked with.
    fn id(&mut self, got: Got<String>) -> Option<String> {
        if ids::check_id(&got.value).is_ok() {
            return Some(got.value);
        }
        self.push(
            ErrorKind::BadId,
            got.origin,
            &got.path,
            format!(
                "{:?} is not a valid id: use 1-{MAX_ID_LEN} chars of [a-z0-9_-]",
                got.value
            ),
        );
        None
    }

    /// `node.id`: an id ([`Self::id`]) that is not reserved ([`ids::check_node_id`]: `local`
    /// names the apps on the node in `[[acl]]`, and no token is issued to it).
    fn node_id(&mut self, got: Got<String>) -> Option<String> {
        if ids::check_id(&got.value).is_ok() {
            if let Err(reason) = ids::check_node_id(&got.value) {
                self.push(
                    ErrorKind::BadId,
                    got.origin,
                    &got.path,
                    format!(
                        "{:?} cannot be a node id: {reason}. Choose another id, e.g. \
                         id = \"edge-msk-01\"",
                        got.value
                    ),
                );
                return None;
            }
        }
        self.id(got)
    }

    fn mode(&mut self, got: Got<String>) -> Option<Mode> {
        match got.value.as_str() {
            "member" => Some(Mode::Member),
            "hub" => Some(Mode::Hub),
            "root" => Some(Mode::Root),
            other => {
                let hint = did_you_mean(other, ["member", "hub", "root"]);
                self.push(
                    ErrorKind::InvalidValue,
                    got.origin,
                    &got.path,
                    format!("{other:?} is not a mode: use member, hub or root{hint}"),
                );
                None
            }
        }
    }

    /// A path, resolved against the directory of the file that set it; a path set by an
    /// environment variable (or another provider) is resolved against the current
    /// directory. The result is absolute, so a later `chdir` changes nothing.
    fn path(&mut self, got: Got<String>) -> Option<Got<PathBuf>> {
        if got.value.trim().is_empty() {
            self.push(
                ErrorKind::InvalidValue,
                got.origin,
                &got.path,
                "must not be empty: give a path".to_owned(),
            );
            return None;
        }
        let raw = PathBuf::from(&got.value);
        let joined = match &got.origin {
            Origin::File(file) if raw.is_relative() => {
                let file = std::path::absolute(file).unwrap_or_else(|_| file.clone());
                match file.parent() {
                    Some(dir) => dir.join(&raw),
                    None => raw,
                }
            }
            _ => raw,
        };
        let value = std::path::absolute(&joined).unwrap_or(joined);
        Some(Got {
            value,
            origin: got.origin,
            path: got.path,
        })
    }

    /// `node.key` must be a readable secret key file; its public key, when it is one. Its
    /// contents never leave here.
    fn check_key_file(&mut self, key: &Got<PathBuf>) -> Option<PublicKey> {
        let path = key.value.display();
        match std::fs::read_to_string(&key.value).map(Zeroizing::new) {
            Err(error) => {
                let fix = if error.kind() == std::io::ErrorKind::NotFound {
                    format!("create it with `nexus-agent keygen --out {path}`")
                } else {
                    format!(
                        "make it readable by the agent's user (and no one else), or create a \
                         new one with `nexus-agent keygen --out {path}`"
                    )
                };
                self.push(
                    ErrorKind::UnreadableKeyFile,
                    key.origin.clone(),
                    &key.path,
                    format!("cannot read the key file {path}: {error}; {fix}"),
                );
                None
            }
            Ok(text) => match SecretKey::parse(&text) {
                Ok(secret) => Some(secret.public()),
                Err(error) => {
                    self.push(
                        ErrorKind::BadKeyFile,
                        key.origin.clone(),
                        &key.path,
                        format!(
                            "{path} is not a nexus-agent secret key file ({error}); create one \
                             with `nexus-agent keygen --out {path}`"
                        ),
                    );
                    None
                }
            },
        }
    }

    fn url(&mut self, got: Got<String>) -> Option<String> {
        match url_problem(&got.value) {
            None => Some(got.value.trim().to_owned()),
            Some(problem) => {
                self.push(
                    ErrorKind::InvalidValue,
                    got.origin,
                    &got.path,
                    format!(
                        "{:?} is not a valid NATS URL: {problem}; use nats://, tls://, ws:// or \
                         wss:// URLs, separated by commas",
                        redact_url(&got.value)
                    ),
                );
                None
            }
        }
    }

    /// A JetStream stream or consumer name, `default` when absent.
    fn jetstream_name(&mut self, s: &Section<'_>, key: &str, default: &str) -> String {
        match self.optional_text(s, key) {
            None => default.to_owned(),
            Some(g) if valid_jetstream_name(&g.value) => g.value,
            Some(g) => {
                self.push(
                    ErrorKind::InvalidValue,
                    g.origin,
                    &g.path,
                    format!(
                        "{:?} is not a JetStream name: use a non-empty name without spaces, \
                         `.`, `*`, `>`, `/` or `\\`",
                        g.value
                    ),
                );
                default.to_owned()
            }
        }
    }
}

/// `[node]` as far as it could be read: `None` for what was reported.
struct PartialNode {
    /// `node.id`, valid.
    id: Option<String>,
    /// `node.mode`.
    mode: Option<Mode>,
    /// `node.tenant`, valid (also `None` when absent).
    tenant: Option<String>,
    /// `node.key`, resolved; the file was checked separately.
    key: Option<PathBuf>,
    /// The public key of `node.key`, when the file is a valid secret key.
    key_public: Option<PublicKey>,
    /// `node.token`, resolved; checked once `[trust]` is read.
    token: Option<Got<PathBuf>>,
    /// `node.data_dir`, resolved.
    data_dir: Option<PathBuf>,
}

/// Which way a bridge rule goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// `[[bridge.up]]`: a local subject becomes an event.
    Up,
    /// `[[bridge.down]]`: a command becomes a request on a local subject.
    Down,
}

/// A metric name: 1-64 chars of `[A-Za-z0-9_.-]`.
fn valid_metric_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn section_list() -> String {
    SCHEMA
        .iter()
        .map(|(s, _)| format!("[{s}]"))
        .chain([format!("[[{ACL}]]")])
        .collect::<Vec<_>>()
        .join(", ")
}

/// The candidate closest to `name`, if it is close enough to be a likely typo.
fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `"; did you mean `x`?"` or nothing.
fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(name, candidates)
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

/// The token role a node of `mode` holds.
fn role_of(mode: Mode) -> Role {
    match mode {
        Mode::Member => Role::Member,
        Mode::Hub => Role::Hub,
        Mode::Root => Role::Root,
    }
}

/// Reads at most `max` bytes of `path`; a larger file is an error (`InvalidData`), so a
/// mistaken path to a huge file costs nothing.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.is_dir() {
        return Err(std::io::Error::other("it is a directory"));
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `text` cut to 80 chars for an error message.
fn truncate(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A DNS name or an IP address: what a server certificate is checked against.
fn valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        && !name.starts_with(['.', '-'])
}

/// What is wrong with a comma-separated NATS URL list, if anything.
fn url_problem(list: &str) -> Option<String> {
    for entry in list.split(',').map(str::trim) {
        if entry.is_empty() {
            return Some("an entry is empty".to_owned());
        }
        if entry.chars().any(char::is_whitespace) {
            return Some("an entry contains a space".to_owned());
        }
        let Some((scheme, rest)) = entry.split_once("://") else {
            return Some("an entry has no scheme".to_owned());
        };
        if !URL_SCHEMES.contains(&scheme) {
            return Some(format!("scheme `{scheme}://` is not supported"));
        }
        let authority = rest.split('/').next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        if host.is_empty() || host.starts_with(':') {
            return Some("an entry has no host".to_owned());
        }
    }
    None
}

/// A plausible tracing filter: levels and `target=level` directives, comma-separated.
fn valid_filter(filter: &str) -> bool {
    let is_level = |level: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level.trim()));
    let is_target = |target: &str| {
        let target = target.trim();
        !target.is_empty()
            && target
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'))
    };
    let directives: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    !directives.is_empty()
        && directives.iter().all(|d| match d.split_once('=') {
            None => is_level(d),
            Some((target, level)) => is_target(target) && is_level(level),
        })
}

/// JetStream stream and consumer names: no whitespace, `.`, `*`, `>` or path separators.
fn valid_jetstream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_lists_accept_the_four_nats_schemes_only() {
        assert_eq!(url_problem("nats://a:4222"), None);
        assert_eq!(url_problem("tls://a:4222, wss://b/path,ws://c"), None);
        assert_eq!(url_problem("nats://u:p@a:4222"), None);
        assert!(url_problem("http://a:4222").is_some());
        assert!(url_problem("a:4222").is_some());
        assert!(url_problem("nats://a,").is_some());
        assert!(url_problem("nats://").is_some());
        assert!(url_problem("nats://u:p@").is_some());
    }

    #[test]
    fn log_filters_are_levels_or_target_level_lists() {
        assert!(valid_filter("info"));
        assert!(valid_filter("WARN"));
        assert!(valid_filter("nexus_federation=debug,info"));
        assert!(valid_filter(
            "nexus_federation::uplink=trace, async_nats=warn"
        ));
        assert!(!valid_filter(""));
        assert!(!valid_filter("verbose"));
        assert!(!valid_filter("nexus=loud"));
        assert!(!valid_filter("=info"));
    }

    #[test]
    fn typos_get_a_suggestion_and_unrelated_names_do_not() {
        assert_eq!(closest("idd", ["id", "mode", "tenant"]), Some("id"));
        assert_eq!(
            closest("uplinks", SCHEMA.iter().map(|(s, _)| *s)),
            Some("uplink")
        );
        assert_eq!(closest("colour", ["id", "mode", "tenant"]), None);
    }
}
