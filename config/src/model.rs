//! The validated configuration: what the rest of the agent consumes.
//!
//! Every value here has passed validation; durations are parsed, ids are valid subject
//! tokens, modes and their required sections are consistent.

use std::path::PathBuf;
use std::time::Duration;

/// A validated nexus-agent configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The TOML file it was read from (made absolute), if any.
    pub source: Option<PathBuf>,
    /// `[node]`: who this agent is.
    pub node: NodeConfig,
    /// `[uplink]`: the parent's NATS. Required for member and hub, forbidden for root.
    pub uplink: Option<LinkConfig>,
    /// `[local]`: this node's own NATS. Required for hub and root, optional for member.
    pub local: Option<LinkConfig>,
    /// `[heartbeat]`: `edge.health` emission and watching.
    pub heartbeat: HeartbeatConfig,
    /// `[log]`: tracing output.
    pub log: LogConfig,
    /// `[outbox]`: the bounded queue of events waiting for the next tier's ack.
    pub outbox: OutboxConfig,
    /// `[ingress]`: the JetStream stream a hub or root takes its children's traffic from.
    pub ingress: IngressConfig,
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

impl Mode {
    /// The lower-case name used in config files and heartbeats.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Member => "member",
            Mode::Hub => "hub",
            Mode::Root => "root",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
}

impl std::fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConfig")
            .field("url", &crate::redact_url(&self.url))
            .field("ping_interval", &self.ping_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
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

impl LogFormat {
    /// The lower-case name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[outbox]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxConfig {
    /// `outbox.max_bytes`: the bound on the bytes of events waiting for an ack, at least 1.
    /// Default 64 MiB.
    pub max_bytes: u64,
    /// `outbox.batch`: how many events are sent before their acks are awaited,
    /// 1..=10000. Default 256.
    pub batch: usize,
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
}
