//! The validated configuration: what the rest of the agent consumes.
//!
//! Every value here has passed validation; durations are parsed, ids are valid subject
//! tokens, modes and their required sections are consistent, keys are parsed, the token
//! file decodes and belongs to this node, ACL patterns are valid.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use nexus_policies::{Acl, Action, PublicKey, Role, SubjectPattern, SubjectRewrite};

/// The names a config enum's values are written as, given once per enum: they give its
/// `as_str` (what `check` prints, heartbeats carry), its `from_name` (what the validation
/// reads; a name may have aliases it also accepts) and its `ALL` (the choices error
/// messages list, in this order), and its `Display`.
macro_rules! config_names {
    ($ty:ident { $($variant:ident => $name:literal $(| $alias:literal)*),+ $(,)? }) => {
        impl $ty {
            /// Every value, in the order error messages list them.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The name used in config files.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }

            /// The value written as `name` in a config file, if any.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name $(| $alias)* => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }

        impl ConfigName for $ty {
            const ALL: &'static [Self] = $ty::ALL;
            fn as_str(self) -> &'static str {
                $ty::as_str(self)
            }
            fn from_name(name: &str) -> Option<Self> {
                $ty::from_name(name)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A config enum, for code generic over them (the validation's reader); its methods are
/// those of [`config_names!`].
pub(crate) trait ConfigName: Copy + 'static {
    /// Every value, in the order error messages list them.
    const ALL: &'static [Self];
    /// The name used in config files.
    fn as_str(self) -> &'static str;
    /// The value written as `name`, if any.
    fn from_name(name: &str) -> Option<Self>;
}

/// A validated nexus-agent configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The TOML file it was read from (made absolute), if any.
    pub source: Option<PathBuf>,
    /// `[node]`: who this agent is.
    pub node: NodeConfig,
    /// `[trust]`: the trust anchors and how tokens are checked. Required in every mode.
    pub trust: TrustConfig,
    /// `[[acl]]`: the operator's local policy, intersected with the token's grants.
    pub acl: AclPolicy,
    /// `[uplink]`: the parent's NATS. Required for member and hub, forbidden for root.
    pub uplink: Option<LinkConfig>,
    /// `[local]`: this node's own NATS. Required for hub and root, optional for member.
    pub local: Option<LinkConfig>,
    /// `[heartbeat]`: `edge.health` emission and watching.
    pub heartbeat: HeartbeatConfig,
    /// `[health]`: what makes a heartbeat say `degraded`, beyond a link down or a
    /// subsystem stopped.
    pub health: HealthConfig,
    /// `[metrics]`: the optional Prometheus listener.
    pub metrics: MetricsConfig,
    /// `[page]`.
    pub page: PageConfig,
    /// `[events]`: the operator's event registry.
    pub events: EventsConfig,
    /// `[remote_config]`: desired-config documents from the tier above.
    pub remote_config: RemoteConfigConfig,
    /// `[updates]`: agent releases installed from the tier above.
    pub updates: UpdatesConfig,
    /// `[log]`: tracing output.
    pub log: LogConfig,
    /// `[outbox]`: the bounded queue of events waiting for the next tier's ack.
    pub outbox: OutboxConfig,
    /// `[ingress]`: the JetStream stream a hub or root takes its children's traffic from.
    pub ingress: IngressConfig,
    /// `[dead_letter]`: the bounded store of rejected and poison events.
    pub dead_letter: DeadLetterConfig,
    /// `[iot]` with its `[[iot.sensors]]`: the MQTT bridge. Member only; requires
    /// `node.tenant` (sensor data are tenant events).
    pub iot: Option<IotConfig>,
    /// `[bridge]` with its `[[bridge.up]]` and `[[bridge.down]]` rules: local apps'
    /// subjects up as events, commands down as local requests. Empty rules by default.
    pub bridge: BridgeConfig,
    /// `[landing]` with its `[[landing.domains]]` (root): where events land.
    pub landing: LandingConfig,
}

/// Which tier this agent serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Edge box: signs its own events and sends them up.
    Member,
    /// Site or region server: verifies its members' traffic and forwards it up.
    Hub,
    /// Cloud: trust anchor and landing of every event.
    Root,
}

// The lower-case names used in config files and heartbeats.
config_names!(Mode {
    Member => "member",
    Hub => "hub",
    Root => "root",
});

impl Mode {
    /// The role of a node of this mode: what its capability token must say (checked by
    /// `check` and by the agent at run time alike).
    pub fn role(self) -> Role {
        match self {
            Mode::Member => Role::Member,
            Mode::Hub => Role::Hub,
            Mode::Root => Role::Root,
        }
    }
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// `node.id`: a subject token (`[a-z0-9_-]`, 1..=64 chars), unique in the fleet.
    pub id: String,
    /// `node.mode`.
    pub mode: Mode,
    /// `node.tenant`: a subject token; the tenant this node's tenant events belong to.
    pub tenant: Option<String>,
    /// `node.key`: path of this node's Ed25519 secret key file (from `nexus-agent keygen`).
    pub key: PathBuf,
    /// `node.token`: path of this node's capability token chain (CBOR, leaf first, as
    /// written by `nexus-agent token issue`). Required for member and hub; optional for a
    /// root, which is the anchor: without a token its own events are accepted when signed
    /// by a key in `trust.root_keys`. Validation checked that it decodes, that its leaf
    /// is for `node.id`, for the public key of `node.key`, for the role of `node.mode` and
    /// (when both name one) for `node.tenant`, and that it is signed up to a key of
    /// `trust.root_keys`; expiry and revocation are the agent's business at run time.
    pub token: Option<PathBuf>,
    /// `node.data_dir`: where the agent keeps its state (outbox, dead letters, caches).
    pub data_dir: PathBuf,
}

/// A NATS connection (`[uplink]` or `[local]`).
///
/// `Debug` masks credentials in `url` (see [`crate::redact_url`]).
#[derive(Clone, PartialEq)]
pub struct LinkConfig {
    /// `url`: one or more comma-separated `nats://`, `tls://`, `ws://` or `wss://` URLs.
    /// Credentials may be embedded (`nats://user:password@host:4222`); they are masked
    /// whenever the config is printed.
    pub url: String,
    /// `ping_interval`: how often the client pings; a dead link is noticed after ~3 of these.
    /// Default 5 s (the NATS default of 60 s notices a half-open link only after minutes).
    pub ping_interval: Duration,
    /// `connect_timeout`: for one TCP/TLS connect attempt. Default 5 s.
    pub connect_timeout: Duration,
    /// `request_timeout`: how long to wait for a JetStream publish ack. Default 5 s.
    pub request_timeout: Duration,
    /// `reconnect_max_delay`: the cap of the reconnect backoff. Default 10 s.
    pub reconnect_max_delay: Duration,
    /// `jetstream_domain` (`[uplink]` only): the JetStream domain of the parent tier, when
    /// `url` is this box's own nats-server, a leaf node of the parent's: every JetStream
    /// request of the link (ingress publishes are plain subjects; stream info, key-value
    /// buckets, consumers) goes to `$JS.{domain}.API` instead of the local server's own
    /// JetStream. `None`: the server at `url` is the parent's (the direct topology).
    pub jetstream_domain: Option<String>,
    /// The prefix of the link's reply subjects (`_INBOX.{node.id}` with `jetstream_domain`,
    /// so that the parent's leaf permissions can let this node's replies through and no
    /// other inbox of the parent's account); `None`: the client's default `_INBOX`. Derived,
    /// not a key.
    pub inbox_prefix: Option<String>,
    /// `[uplink.tls]` / `[local.tls]`: `Some` exactly when TLS is required on this link:
    /// the section is present, or a URL of the list is `tls://` (then with the defaults:
    /// system roots, no client certificate). `None`: plain TCP unless the server demands
    /// TLS.
    pub tls: Option<TlsConfig>,
}

/// `[uplink.tls]` / `[local.tls]`: TLS settings of one link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// `ca_file`: a PEM bundle of the CAs that may sign the server's certificate, instead of
    /// the system roots. Readable, PEM.
    pub ca_file: Option<PathBuf>,
    /// `cert_file` + `key_file`: the client certificate for mutual TLS (both or neither).
    pub client_cert: Option<ClientCert>,
    /// `server_name`: the name checked in the server's certificate, when it is not the
    /// URL's host (e.g. connecting by IP address).
    pub server_name: Option<String>,
}

/// A client certificate and its key, for mutual TLS. Only the paths are kept or printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// `cert_file`: the PEM certificate (chain) presented to the server.
    pub cert_file: PathBuf,
    /// `key_file`: its PEM private key. A secret: readable by the agent's user only.
    pub key_file: PathBuf,
}

impl LinkConfig {
    /// The reply-subject prefix of a link to the parent through a leaf node of it: node
    /// `node_id`'s own inboxes, `_INBOX.{node_id}`.
    pub fn leaf_inbox_prefix(node_id: &str) -> String {
        format!("_INBOX.{node_id}")
    }

    /// Every URL of `url`, trimmed, in order: the servers the client may connect to (a
    /// client given one string would take the whole list for one URL). Validation refused
    /// empty entries.
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }
}

impl std::fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConfig")
            .field("url", &crate::redact_url(&self.url))
            .field("ping_interval", &self.ping_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("jetstream_domain", &self.jetstream_domain)
            .field("inbox_prefix", &self.inbox_prefix)
            .field("tls", &self.tls)
            .finish()
    }
}

/// `[heartbeat]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatConfig {
    /// `heartbeat.interval`: how often `edge.health` is emitted. Default 10 s.
    pub interval: Duration,
    /// `heartbeat.offline_after`: a child silent this long is reported offline.
    /// Default 3 × interval.
    pub offline_after: Duration,
}

/// `[health]`: the thresholds past which a node reports itself `degraded`, each with a
/// cause named in its heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// `health.outbox_full_pct`: the outbox holds more than this share of `outbox.max_bytes`.
    /// Default 80.
    pub outbox_full_pct: u8,
    /// `health.outbox_max_age`: the oldest queued event waits longer than this. Default 10 min.
    pub outbox_max_age: Duration,
    /// `health.disk_full_pct`: the file system of `node.data_dir` is fuller than this.
    /// Default 90.
    pub disk_full_pct: u8,
    /// `health.mem_full_pct`: the host's memory in use is more than this. Default 90.
    pub mem_full_pct: u8,
    /// `health.token_expiry`: a token of the node's chain expires within this. Default 1 day.
    pub token_expiry: Duration,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// `metrics.listen`: the address of the `/metrics`, `/healthz` and `/readyz` listener;
    /// none (the default) serves nothing.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[events]`: the operator's registry of events, and what the root's landing does with
/// events it does not know or whose payload breaks their schema (docs/events.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    /// `events.registry`: a directory of `NAME/VERSION/{schema.json, event.toml,
    /// examples/}` beside the agent's own events; none: the built-in events only.
    pub registry: Option<PathBuf>,
    /// `events.unknown` (the root's landing): an event whose `event@version` is not
    /// registered. Default `land`.
    pub unknown: LandingPolicy,
    /// `events.invalid` (the root's landing): a registered event whose payload does not
    /// satisfy its schema. Default `audit`.
    pub invalid: LandingPolicy,
}

/// What the root's landing does with an event that fails a registry check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandingPolicy {
    /// `land`: it lands, counted only.
    Land,
    /// `audit`: it lands, and the root audits it (`audit.rejected`, counted and logged;
    /// not dead-lettered, since it landed).
    Audit,
    /// `refuse`: it does not land: dead-lettered at the root with its reason (replayable
    /// once the registry or the producer is fixed) and audited.
    Refuse,
}

config_names!(LandingPolicy {
    Land => "land",
    Audit => "audit",
    Refuse => "refuse",
});

/// `[remote_config]`: whether and how this node takes desired-config documents from the
/// tier above (docs/remote-config.md).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfigConfig {
    /// `remote_config.accept`: whose documents are applied. Default `tree`.
    pub accept: RemoteAccept,
    /// `remote_config.gate`: how long an applied document has to bring the node up
    /// healthy (links up, no subsystem stopped) before the previous file is restored.
    /// Default 60 s.
    pub gate: Duration,
}

impl Default for RemoteConfigConfig {
    fn default() -> Self {
        Self {
            accept: RemoteAccept::Tree,
            gate: Duration::from_secs(60),
        }
    }
}

/// `[updates]`: agent releases (docs/updates.md). Updates are off until
/// `trust.release_keys` lists a key.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdatesConfig {
    /// `updates.gate`: how long a new agent version has to come up healthy (links up, no
    /// subsystem stopped) before the previous binary is switched back. Default 60 s.
    pub gate: Duration,
}

impl Default for UpdatesConfig {
    fn default() -> Self {
        Self {
            gate: Duration::from_secs(60),
        }
    }
}

/// Whose desired-config documents a node applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteAccept {
    /// `tree`: the root's, and its parent hub's within the hub's limits.
    Tree,
    /// `root`: the root's only.
    Root,
    /// `off`: none; the file on the box is the only config.
    Off,
}

config_names!(RemoteAccept {
    Tree => "tree",
    Root => "root",
    Off => "off",
});

impl Default for EventsConfig {
    /// No operator registry; unknown events land, invalid ones land and are audited.
    fn default() -> Self {
        Self {
            registry: None,
            unknown: LandingPolicy::Land,
            invalid: LandingPolicy::Audit,
        }
    }
}

/// `[page]`: the live fleet page of a hub or the root (off unless `listen` is set).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageConfig {
    /// `page.listen`: the address the page is served on; none (the default) serves
    /// nothing.
    pub listen: Option<std::net::SocketAddr>,
    /// `page.token_file`: a file holding the bearer token every request must carry
    /// (`Authorization: Bearer …`, or the cookie set by opening `/?token=…` once); none:
    /// no token asked.
    pub token_file: Option<PathBuf>,
    /// `page.cert_file` and `page.key_file`: PEM certificate chain and key to serve HTTPS;
    /// none: plain HTTP.
    pub tls: Option<ServerTls>,
}

/// A server certificate and its key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `log.level`: a tracing filter (`info`, `debug`, `nexus_federation=debug,info`, …).
    pub level: String,
    /// `log.format`: `human` (default) or `json`.
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

config_names!(LogFormat {
    Human => "human",
    Json => "json",
});

/// `[outbox]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxConfig {
    /// `outbox.max_bytes`: the bound on the bytes of events waiting for an ack, at least 1.
    /// Default 64 MiB.
    pub max_bytes: u64,
    /// `outbox.batch`: how many events are sent before their acks are awaited,
    /// 1..=10000. Default 256.
    pub batch: usize,
    /// `outbox.when_full`: what a full outbox does with a new event. Default `reject`.
    pub when_full: WhenFull,
    /// `outbox.max_age`: events older than this are expired from the outbox (and counted).
    /// Default: none, events wait as long as it takes.
    pub max_age: Option<Duration>,
    /// `outbox.drain_rate`: the most events per second sent while draining a backlog (for
    /// metered links). Default: no limit.
    pub drain_rate: Option<NonZeroU32>,
}

/// `outbox.when_full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// `reject`: the new event is refused (its producer is not acknowledged, so it keeps
    /// it or retries), and counted. Nothing accepted is ever lost.
    #[default]
    Reject,
    /// `drop_oldest`: the oldest waiting events are dropped (and counted) to make room:
    /// fresh data over old, for telemetry that is worthless late.
    DropOldest,
}

config_names!(WhenFull {
    Reject => "reject",
    DropOldest => "drop_oldest",
});

/// `[dead_letter]`: the store of rejected and poison events (list / replay / purge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterConfig {
    /// `dead_letter.max_bytes`: the bound on the bytes kept, at least 1; the oldest
    /// entries go first. Default 64 MiB.
    pub max_bytes: u64,
    /// `dead_letter.max_entries`: the bound on the number of entries, at least 1; the
    /// oldest go first. Default 100000.
    pub max_entries: u64,
}

/// `[trust]`: what capability tokens are checked against.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustConfig {
    /// `trust.root_keys`: the trust anchors, `ed25519:…` public keys of the root (more than
    /// one during a rotation). At least one; weak keys are refused. From the environment,
    /// `NEXUS_TRUST__ROOT_KEYS` is a comma-separated list.
    pub root_keys: Vec<PublicKey>,
    /// `trust.release_keys`: the keys that sign agent releases (`nexus-agent release
    /// publish`), never a root key. Empty (the default): this node installs no update.
    pub release_keys: Vec<PublicKey>,
    /// `trust.clock_skew`: the allowed clock difference on both ends of a token's
    /// validity window. Default 60 s.
    pub clock_skew: Duration,
    /// `trust.revocations_file`: where the signed revocation list is kept. Default
    /// `{node.data_dir}/revocations.cbor`; it need not exist (nothing is revoked then).
    pub revocations_file: PathBuf,
}

/// `[[acl]]`: the operator's local policy. What is forwarded is this policy ∩ the token's
/// grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclPolicy {
    /// No `[[acl]]` configured: everything the token grants is allowed (the token's grants
    /// still apply). A default-deny empty ACL would forward nothing, which is never what
    /// an operator who wrote no rules means.
    TokenGrants,
    /// `[[acl]]` rules (or an explicit `acl = []`, which denies everything): deny wins,
    /// default deny, then the token's grants apply as well.
    Rules(Acl),
}

impl AclPolicy {
    /// The configured rules, if any.
    pub fn rules(&self) -> Option<&Acl> {
        match self {
            AclPolicy::TokenGrants => None,
            AclPolicy::Rules(acl) => Some(acl),
        }
    }

    /// Whether the operator's policy lets `principal` (a node id, or `local`) do
    /// `action` on `subject`; the token's grants must be checked as well.
    pub fn allows(&self, principal: &str, action: Action, subject: &str) -> bool {
        match self {
            AclPolicy::TokenGrants => true,
            AclPolicy::Rules(acl) => acl.check(principal, action, subject).is_allowed(),
        }
    }
}

/// `[ingress]` (hub and root).
#[derive(Debug, Clone, PartialEq)]
pub struct IngressConfig {
    /// `ingress.stream`: the JetStream stream name. Default `NEXUS_INGRESS`.
    pub stream: String,
    /// `ingress.consumer`: the durable consumer name, shared by every instance of this
    /// hub or root. Default `nexus-agent`.
    pub consumer: String,
    /// `ingress.max_bytes`: the stream's byte limit, at least 1. Default 1 GiB.
    pub max_bytes: i64,
    /// `ingress.max_age`: how long unforwarded traffic is kept. Default 7 days.
    pub max_age: Duration,
    /// `ingress.duplicate_window`: JetStream's `Nats-Msg-Id` dedup window. Default 2 min.
    pub duplicate_window: Duration,
    /// `ingress.batch`: messages fetched and forwarded per round, 1..=10000. Default 256.
    pub batch: usize,
    /// `ingress.max_deliver`: deliveries of one message (JetStream's delivery count) after
    /// which a message that still cannot be forwarded goes to the dead-letter store,
    /// 2..=1000000. Default 20.
    pub max_deliver: u32,
    /// `ingress.landed_ttl` (root): how long the root remembers the event_ids it landed
    /// (KV bucket `NEXUS_LANDED`), so that a copy arriving after JetStream's
    /// `duplicate_window` is still dropped. Default 7 days (as `max_age`).
    pub landed_ttl: Duration,
    /// `ingress.replicas`: how many servers of a JetStream cluster keep the ingress stream
    /// and the key-value buckets this node creates on its own NATS (`NEXUS_TRUST`,
    /// `NEXUS_CHAINS`; at the root also `NEXUS_LANDED` and `NEXUS_LANDED_SEQ`), 1..=5.
    /// Default 1 (one server); 3 on a clustered root (docs/deploy-root-cluster.md).
    pub replicas: usize,
}

impl IngressConfig {
    /// The longest ack wait of the ingress consumer (JetStream's redelivery delay for a
    /// message taken but never acknowledged), reached with windows of a minute or more.
    pub const MAX_ACK_WAIT: Duration = Duration::from_secs(30);
    /// `duplicate_window` must be at least this many onward `request_timeout`s.
    pub const WINDOW_PER_REQUEST_TIMEOUT: u32 = 4;

    /// How long the consumer waits for a delivered message's acknowledgement before it
    /// delivers it again: a quarter of `duplicate_window`, at most [`Self::MAX_ACK_WAIT`]. A
    /// message forwarded just before a crash comes back this long after it was taken (to
    /// another instance sharing the consumer, or to this one once restarted), so its copy
    /// is still inside the window that drops it; what is left of the window is the time a
    /// crashed instance has to be consuming again.
    pub fn ack_wait(&self) -> Duration {
        (self.duplicate_window / 4).min(Self::MAX_ACK_WAIT)
    }

    /// The longest delay before a message whose onward publish failed is tried again: a
    /// quarter of `duplicate_window`, at most [`Self::MAX_ACK_WAIT`]. The failed publish
    /// may have been stored all the same (its acknowledgement lost); the retry must reach
    /// the next stream inside the window.
    pub fn max_retry_delay(&self) -> Duration {
        (self.duplicate_window / 4).min(Self::MAX_ACK_WAIT)
    }

    /// The shortest `duplicate_window` that holds every copy a redelivery can make, for an
    /// onward link with this `request_timeout`: the wait for the first copy's
    /// acknowledgement, plus the retry delay or ack wait, plus the copy's own way to the
    /// stream, all inside the window.
    pub fn min_duplicate_window(request_timeout: Duration) -> Duration {
        request_timeout.saturating_mul(Self::WINDOW_PER_REQUEST_TIMEOUT)
    }
}

/// `[iot]`: the MQTT broker the member reads sensors from, and how their messages map to
/// `iot.sensor_data` events.
///
/// `Debug` masks the password.
#[derive(Clone, PartialEq)]
pub struct IotConfig {
    /// `url`: `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (8883, TLS).
    pub url: String,
    /// The broker's host, from `url`.
    pub host: String,
    /// The broker's port, from `url` or the scheme's default.
    pub port: u16,
    /// `[iot.tls]`: `Some` for `mqtts://` (system roots unless `ca_file` is given).
    pub tls: Option<TlsConfig>,
    /// `client_id`: the MQTT client id, which names the broker's persistent session. Must be
    /// unique on the broker. Default `nexus-{node.id}`.
    pub client_id: String,
    /// `username`: for brokers that require a login.
    pub username: Option<String>,
    /// `password`: with `username`. A secret: masked whenever the config is printed.
    pub password: Option<String>,
    /// `protocol`: the MQTT version spoken to the broker, `"3.1.1"` (default) or `"5"`.
    pub protocol: MqttProtocol,
    /// `session_expiry` (MQTT 5 only): how long the broker keeps the persistent session (and
    /// the QoS 1 messages queued in it) after the bridge disconnects. MQTT 5 drops a session
    /// at once when this is 0, so it is always sent with QoS 1. 1 s to ~136 years; default
    /// 7 days (the outbox's default `max_age`). With MQTT 3.1.1 the broker decides
    /// (mosquitto: `persistent_client_expiration`).
    pub session_expiry: Duration,
    /// `qos`: the QoS the bridge subscribes with, 0 or 1. Default 1 (a persistent session;
    /// acknowledged only once stored in the outbox).
    pub qos: u8,
    /// `keep_alive`: the MQTT keep-alive interval. Default 30 s.
    pub keep_alive: Duration,
    /// `reconnect_max_delay`: the cap of the reconnect backoff. Default 10 s.
    pub reconnect_max_delay: Duration,
    /// `max_payload`: the largest payload mapped, in bytes (larger ones are dead-lettered).
    /// 1..=16 MiB; default 65536.
    pub max_payload: usize,
    /// `queue`: messages buffered between the MQTT connection and the outbox, 1..=65536.
    /// Default 1024.
    pub queue: usize,
    /// `[[iot.sensors]]`: the mapping rules, tried in order; the first whose topic matches
    /// wins. At least one.
    pub sensors: Vec<SensorRule>,
}

impl std::fmt::Debug for IotConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IotConfig")
            .field("url", &crate::redact_url(&self.url))
            .field("tls", &self.tls)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("protocol", &self.protocol)
            .field("session_expiry", &self.session_expiry)
            .field("qos", &self.qos)
            .field("keep_alive", &self.keep_alive)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("max_payload", &self.max_payload)
            .field("queue", &self.queue)
            .field("sensors", &self.sensors)
            .finish()
    }
}

/// `iot.protocol`: the MQTT version the bridge speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MqttProtocol {
    /// MQTT 3.1.1 (protocol level 4): what every broker speaks; the default.
    #[default]
    V311,
    /// MQTT 5: for brokers (or policies) that require it.
    V5,
}

// `"5.0"` is read as 5 too (as is the integer 5: see the validation).
config_names!(MqttProtocol {
    V311 => "3.1.1",
    V5 => "5" | "5.0",
});

/// The most metrics one `[[iot.sensors]]` rule may name (a fixed capacity on the
/// per-message path).
pub const MAX_METRICS_PER_RULE: usize = 16;

/// One `[[iot.sensors]]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorRule {
    /// `topic`: an MQTT topic template, `/`-separated; a segment is a literal, `+` (any),
    /// `{sensor_id}` (required, once) or `{metric}` (at most once), and the last may be `#`.
    /// E.g. `zigbee2mqtt/{sensor_id}`, `sensors/{sensor_id}/{metric}`.
    pub topic: String,
    /// `payload`: `number` (the payload is one number, e.g. `23.5`) or `json`. Default
    /// `number` when the topic names `{metric}`, else `json`.
    pub payload: PayloadFormat,
    /// `metrics`: the metrics read, in order. A `json` rule reads each one at its pointer;
    /// a `number` rule with `{metric}` accepts only the metrics listed (any, if none are);
    /// a `number` rule without `{metric}` names exactly one.
    pub metrics: Vec<MetricRule>,
    /// `time`: a JSON pointer to the reading's time in the payload (unix seconds, unix
    /// milliseconds, or an RFC 3339 string). Absent (or a `number` payload): receive time.
    pub time: Option<String>,
}

/// `payload` of a sensor rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    /// A plain number, as text: `23.5`.
    Number,
    /// A JSON object; metrics are read at JSON pointers.
    Json,
}

config_names!(PayloadFormat {
    Number => "number",
    Json => "json",
});

/// One metric of a sensor rule: `metrics.temperature = "°C"` or
/// `metrics.power = { pointer = "/ENERGY/Power", unit = "W" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricRule {
    /// The metric's name in the event (`temperature`): 1-64 chars of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// `pointer`: where a `json` payload holds it (RFC 6901). Default `/{name}`.
    pub pointer: String,
    /// `unit`: the unit reported with it (`°C`, `%`, `W`), at most 32 chars; may be empty.
    pub unit: String,
}

/// `[bridge]`: the door between local apps (on `[local]`'s NATS) and the federation.
/// Rules need `[local]`; `[[bridge.up]]` rules need `node.tenant` (app events are tenant
/// events).
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConfig {
    /// `[[bridge.up]]`: local subjects published as federated events, in order; the first
    /// rule whose `local` pattern matches a subject decides.
    pub up: Vec<UpRule>,
    /// `[[bridge.down]]`: commands delivered to local apps as NATS requests, in order; the
    /// first rule whose `command` pattern matches decides.
    pub down: Vec<DownRule>,
    /// `bridge.max_payload`: the largest local message accepted (bytes, 1..=1048576);
    /// larger ones are refused with a reply. Default 256 KiB.
    pub max_payload: usize,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            up: Vec::new(),
            down: Vec::new(),
            max_payload: 256 * 1024,
        }
    }
}

/// How a bridged event's envelope is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BridgeEncoding {
    /// `json` (default): any NATS consumer reads it.
    #[default]
    Json,
    /// `cbor`: smaller, for metered uplinks.
    Cbor,
}

config_names!(BridgeEncoding {
    Json => "json",
    Cbor => "cbor",
});

/// One `[[bridge.up]]` rule: `local = "app.booking.*"`, `event = "booking.*"`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpRule {
    /// `local` → `event`: a local subject pattern (not under `_nexus.`) and the event name
    /// it becomes, with the same wildcards in the same order (`app.booking.*` →
    /// `booking.*`); the event name has at least two tokens and is not in a reserved
    /// domain (`agent`, `edge`, `audit`).
    pub rewrite: SubjectRewrite,
    /// `encoding`: `json` (default) or `cbor`.
    pub encoding: BridgeEncoding,
}

/// One `[[bridge.down]]` rule: `command = "booking.*"`, `local = "app.cmd.booking.*"`.
#[derive(Debug, Clone, PartialEq)]
pub struct DownRule {
    /// `command` → `local`: a command name pattern (two or more tokens, not under the
    /// built-in `agent.` commands) and the local subject the request goes to, with the same
    /// wildcards in the same order.
    pub rewrite: SubjectRewrite,
    /// `timeout`: the longest a local app may take to answer (the caller's own deadline
    /// may be shorter). Default 5 s.
    pub timeout: Duration,
}

/// `[landing]` (root): every event lands first in the journal stream (the dedup point),
/// and from there in the domain streams that select it (JetStream sources: domain streams
/// may overlap, and each has its own retention).
#[derive(Debug, Clone, PartialEq)]
pub struct LandingConfig {
    /// `landing.stream`: the journal, capturing `nexus.>`. Default `NEXUS_EVENTS`.
    pub stream: String,
    /// `landing.max_age`: how long the journal keeps events. Default 30 days.
    pub max_age: Duration,
    /// `landing.max_bytes`: the journal's byte limit (oldest dropped first). Default
    /// unlimited.
    pub max_bytes: Option<i64>,
    /// `[[landing.domains]]`. Default: `NEXUS_CORE` (`nexus._core.>`, 90 days) and
    /// `NEXUS_IOT` (`nexus.*.iot.>`, 30 days). An explicit empty list (`domains = []`)
    /// keeps the journal only.
    pub domains: Vec<LandingDomain>,
    /// `landing.replicas`: how many servers of a JetStream cluster keep the journal and
    /// every domain stream, 1..=5. Default 1; 3 on a clustered root.
    pub replicas: usize,
}

/// One `[[landing.domains]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LandingDomain {
    /// `name`: the stream's name (a JetStream name, not the journal's).
    pub name: String,
    /// `subjects`: event subject patterns under `nexus.` it selects from the journal.
    pub subjects: Vec<SubjectPattern>,
    /// `max_age`: how long it keeps events. Required.
    pub max_age: Duration,
    /// `max_bytes`: its byte limit (oldest dropped first). Default unlimited.
    pub max_bytes: Option<i64>,
}

impl LandingConfig {
    /// The defaults: the journal 30 days, core events 90 days, IoT data 30 days.
    pub fn defaults() -> Self {
        let days = |d: u64| Duration::from_secs(d * 24 * 60 * 60);
        let domain = |name: &str, subject: &str, max_age| LandingDomain {
            name: name.to_owned(),
            subjects: vec![SubjectPattern::parse(subject).expect("a valid built-in pattern")],
            max_age,
            max_bytes: None,
        };
        Self {
            stream: "NEXUS_EVENTS".to_owned(),
            max_age: days(30),
            max_bytes: None,
            domains: vec![
                domain("NEXUS_CORE", "nexus._core.>", days(90)),
                domain("NEXUS_IOT", "nexus.*.iot.>", days(30)),
            ],
            replicas: 1,
        }
    }
}

impl Default for LandingConfig {
    fn default() -> Self {
        Self::defaults()
    }
}
