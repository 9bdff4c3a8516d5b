//! Remote config: signed desired-config documents from the tier above, validated on the
//! box with the rules of `check`, applied by replacing the config file and restarting,
//! kept only when the node comes up healthy, reported in every heartbeat
//! (docs/remote-config.md).
//!
//! Where documents live: the `NEXUS_CONFIG` key-value bucket of each tier's own NATS,
//! key `desired.{node}`. `config push` at the root or a hub puts them in its own bucket;
//! a hub copies the root's documents into its bucket ([`relay::Relay`]), so its members
//! get them from the hub, also while the hub is cut off from the root; every node watches
//! its own key on the tier above ([`apply::Applier`]). The root and hubs announce the
//! documents they issue as `audit.config_issued` events through their outbox, so the root
//! learns of a hub's changes (later, when the hub was cut off) and keeps their history;
//! nodes announce what became of each document as `audit.config_outcome`.
//!
//! # Layout
//! - [`state`]: the state file beside the config file, rollback at start.
//! - [`apply`]: the subsystem that takes documents and judges a trial.
//! - [`relay`]: a hub's copy of the root's documents; the `audit.config_issued` events.
//! - [`cmd`]: `config push | status | diff | history`.

pub mod apply;
pub mod cmd;
pub mod relay;
pub mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::kv;
use nexus_federation::Link;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The bucket of desired-config documents on each tier's NATS.
pub const BUCKET: &str = "NEXUS_CONFIG";
/// How many versions of a node's document the bucket keeps (`config history` at a hub).
pub const HISTORY: i64 = 16;
/// The event announcing a document its issuer put in its bucket.
pub const ISSUED_EVENT: &str = "audit.config_issued";
/// The event announcing what became of a document on its node.
pub const OUTCOME_EVENT: &str = "audit.config_outcome";

/// The bucket key of `node`'s document.
pub fn key(node: &str) -> String {
    format!("desired.{node}")
}

/// The node a bucket key is for.
pub fn node_of(key: &str) -> Option<&str> {
    key.strip_prefix("desired.")
}

/// Opens the bucket on `link`, creating it when `create` (a tier's own NATS).
pub async fn bucket(link: &Link, create: bool) -> Result<kv::Store, async_nats::Error> {
    let config = kv::Config {
        bucket: BUCKET.to_owned(),
        description: "nexus-agent desired-config documents (docs/remote-config.md)".to_owned(),
        history: HISTORY,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    };
    nexus_federation::trust::open_or_create(link, config, create).await
}

/// Signs a system event of this node (`nexus._core.{name}`) and queues it in the outbox
/// with the control events (audit.config_issued, audit.config_outcome).
pub async fn queue_event(
    outbox: &nexus_federation::Outbox,
    key: &nexus_policies::SecretKey,
    node_id: &str,
    name: &str,
    payload: serde_json::Map<String, Value>,
) -> Result<(), nexus_federation::OutboxError> {
    let envelope = nexus_federation::Envelope::new(
        name,
        node_id,
        None,
        payload,
        time::OffsetDateTime::now_utc(),
    );
    let seal = envelope.into_sealer(nexus_federation::Encoding::Json, key.clone());
    outbox
        .push_numbered(seal, nexus_federation::outbox::Priority::Control)
        .await
        .map(drop)
}

static RESTART: AtomicBool = AtomicBool::new(false);

/// Asks the agent to stop as on SIGTERM and then start again with the same command line
/// (see [`reexec`]): how a new config file takes effect.
pub fn request_restart(shutdown: &CancellationToken) {
    RESTART.store(true, Ordering::SeqCst);
    shutdown.cancel();
}

/// Whether [`request_restart`] was called.
pub fn restart_requested() -> bool {
    RESTART.load(Ordering::SeqCst)
}

/// Replaces this process with a new start of the same binary and arguments (same pid, so
/// systemd keeps supervising it): the running executable, or (when it was replaced on
/// disk, e.g. by a package upgrade) the path it was started as. Returns only when both
/// fail; the caller exits, and systemd's `Restart=` starts it. The release it runs as
/// (`crate::update::state::SLOT_ENV`) stays.
pub fn reexec() -> std::io::Error {
    let slot = std::env::var(crate::update::state::SLOT_ENV).ok();
    let first = match std::env::current_exe() {
        Ok(exe) => crate::update::state::exec(&exe, slot.as_deref()),
        Err(error) => error,
    };
    match std::env::args_os().next() {
        Some(argv0) => crate::update::state::exec(std::path::Path::new(&argv0), slot.as_deref()),
        None => first,
    }
}

/// The `config` object of heartbeats, kept current by the [`apply::Applier`].
#[derive(Debug, Clone, Default)]
pub struct Report(Arc<Mutex<Option<Value>>>);

impl Report {
    /// The current report, if remote config is on.
    pub fn get(&self) -> Option<Value> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces it.
    pub fn set(&self, value: Value) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
    }
}
