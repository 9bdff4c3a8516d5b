//! Commands to this node, and (hub) to its members.
//!
//! Where each mode listens (see `nexus_federation::command` for the wire contract):
//! - member: `_nexus.cmd.{id}.>` on the uplink (its hub's NATS);
//! - hub: `_nexus.cmd.>` on the uplink (the root's NATS): its own commands, and its known
//!   children's, which it verifies and requests again on its own NATS, where the member
//!   listens; plus `_nexus.cmd.{id}.>` on its own NATS;
//! - root: `_nexus.cmd.{id}.>` on its own NATS.
//!
//! A command for this node is verified (signature, shape, freshness, replay, issuer's
//! grant) and then answered by a built-in (`agent.ping`, `agent.health`,
//! `agent.token.rotate`) or by a local app: the first `[[bridge.down]]` rule whose
//! `command` pattern matches names the local subject it is requested on. The app's answer
//! becomes the signed `{command}.result` reply, which also travels up as an event (through
//! the outbox). A refused command is answered with an error, dead-lettered and audited.
//! A command for a child that went silent fails at once with `node_offline`.
//!
//! # Layout
//! - `service`: listening where the mode says, the bounded queue of commands waiting for
//!   a handler, and dispatch: a command is answered here, routed to a child, or ignored.
//! - `verify`: every check of a command before it is acted on (shape and signature,
//!   freshness, issued since this agent started, the issuer's grant and place, replay).
//! - `builtins`: `agent.ping` and `agent.token.rotate` (`agent.health` is a heartbeat).
//! - `app`: delivery to a local app by the `[[bridge.down]]` rules; its answer becomes
//!   the signed reply and an event up.
//! - `route`: (hub) a command for a child, requested again on this node's NATS.
//! - `reply`: signed replies, error replies, and sending them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_config::{DownRule, Mode};
use nexus_federation::command::ReplayGuard;
use nexus_federation::envelope::Envelope;
use nexus_federation::ratelog::RateLimitedLog;
use nexus_federation::refusal::{RefusalSink, Rejection};
use nexus_federation::trust::{Gatekeeper, OwnChain};
use nexus_federation::uplink::PresentationSlot;
use nexus_federation::{Link, Outbox};
use nexus_policies::SecretKey;
use time::OffsetDateTime;

use crate::children::Children;
use crate::heartbeat::Heartbeat;

mod app;
mod builtins;
mod reply;
mod route;
mod service;
mod trace;
mod verify;

/// Commands remembered against replay.
const REPLAY_CAPACITY: usize = 10_000;

/// The built-in command names.
pub const PING: &str = "agent.ping";
/// Answers with a fresh heartbeat payload.
pub const HEALTH: &str = "agent.health";
/// Replaces this node's token.
pub const ROTATE: &str = "agent.token.rotate";
pub use trace::{TraceSources, TRACE};

/// What token rotation needs.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// `node.token`: where the chain lives (none: a root without a token refuses).
    pub path: Option<PathBuf>,
    /// The chain presented upward.
    pub presentation: PresentationSlot,
    /// This node's chain, as the bridge, the command checks and the revocation watch see it.
    pub own: OwnChain,
    /// The next tier's NATS: the new chain is put in its registry before the answer.
    pub next_hop: Link,
}

/// The command service of one node.
#[derive(Debug, Clone)]
pub struct CommandService {
    /// This node's id.
    pub node_id: String,
    /// This node's mode.
    pub mode: Mode,
    /// This node's tenant.
    pub tenant: Option<String>,
    /// The key that signs replies.
    pub key: SecretKey,
    /// Verifies issuers' chains (and revocations).
    pub gatekeeper: Arc<Gatekeeper>,
    /// `trust.clock_skew`.
    pub skew: Duration,
    /// The parent's NATS.
    pub uplink: Option<Link>,
    /// This node's own NATS.
    pub local: Option<Link>,
    /// `[[bridge.down]]`.
    pub down: Vec<DownRule>,
    /// Where app replies are queued to travel up.
    pub outbox: Outbox,
    /// Where refusals go: logged, dead letters, audit (`Stage::Command`; shared by every
    /// listener).
    pub refusals: RefusalSink,
    /// The watch over children (hub: routing).
    pub children: Option<Children>,
    /// Answers `agent.ping` and `agent.health`.
    pub heartbeat: Heartbeat,
    /// `agent.token.rotate`.
    pub rotation: Rotation,
    /// Commands seen (shared by every listener).
    pub replay: Arc<Mutex<ReplayGuard>>,
    /// Where `agent.trace` looks besides the outbox.
    pub tracing: TraceSources,
    /// How long commands took to answer (for the metrics).
    pub latencies: crate::metrics::CommandMetrics,
    /// Quiet logs (shared): commands dropped unanswered.
    pub log: Arc<Mutex<RateLimitedLog>>,
    /// When this agent started: commands issued earlier are refused (the replay guard is
    /// in memory, so a restart must not reopen the window of older commands).
    pub started_wall: OffsetDateTime,
}

impl CommandService {
    /// Empty replay and log state, shared by the listeners.
    pub fn shared_state() -> (Arc<Mutex<ReplayGuard>>, Arc<Mutex<RateLimitedLog>>) {
        (
            Arc::new(Mutex::new(ReplayGuard::new(REPLAY_CAPACITY))),
            Arc::new(Mutex::new(RateLimitedLog::new(Duration::from_secs(60)))),
        )
    }
}

/// A refused command: why, and its envelope when it could be read (to reply to it).
type Refused = (Rejection, Option<Box<Envelope>>);
