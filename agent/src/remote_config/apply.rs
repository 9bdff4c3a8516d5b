//! The subsystem that takes this node's desired-config documents from the tier above:
//! first it judges a trial (the running file is a document's, not yet healthy), then it
//! watches `desired.{node}` and applies each newer document.
//!
//! A document is applied when every check passes, in this order: its signature; its
//! issuer (a trust anchor, or — `remote_config.accept = "tree"` — the hub that issued
//! this node's token); no secret in it; the file it yields loads with exactly the rules of
//! `nexus-agent check` (keys, token, TLS files and event registry present on this box);
//! `[node]` id and mode unchanged; a hub's limits (`nexus_config::desired::hub_limits`).
//! Then the previous file is kept as `{config}.previous`, the new one replaces the config
//! file atomically, and the agent restarts; the next start is a trial, kept when the node
//! is healthy (every NATS link up, no subsystem stopped) within `remote_config.gate`,
//! rolled back otherwise. A refused or rolled-back document is reported (heartbeat
//! `config`, an `audit.config_outcome` event) and never tried again; a newer version is.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use nexus_config::{desired, Config, ConfigErrors, RemoteAccept};
use nexus_federation::follow::{follow, Follower, Next};
use nexus_federation::fsutil::write_atomically;
use nexus_federation::subsystem::SubsystemError;
use nexus_federation::trust::OwnChain;
use nexus_federation::{Link, Outbox};
use nexus_policies::{DesiredConfig, PublicKey, SecretKey};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::state::{self, file_hash, Applied, Files, Pending, State, MAX_ERRORS};
use super::{bucket, key, queue_event, request_restart, Report, OUTCOME_EVENT};
use crate::supervisor::Faults;

/// How often a trial looks at the node's health.
const TRIAL_TICK: Duration = Duration::from_millis(200);

/// Why `check` or a document's validation fails.
#[derive(Debug)]
pub enum CheckFailure {
    /// The config file.
    Config(ConfigErrors),
    /// `events.registry`.
    Registry(String),
}

/// The rules of `nexus-agent check`: the file at `path` loads (every key, file and token it
/// names) and its event registry compiles.
pub fn check_rules(path: &Path) -> Result<Config, CheckFailure> {
    let config = nexus_config::load(path).map_err(CheckFailure::Config)?;
    nexus_events::Registry::load(config.events.registry.as_deref())
        .map_err(|e| CheckFailure::Registry(format!("events.registry: {e}")))?;
    Ok(config)
}

/// Who issued a document, as far as this node is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IssuedBy {
    Root,
    Parent,
}

/// The desired-config subsystem of one node.
pub struct Applier {
    /// This node's running config.
    pub config: Config,
    /// Its files.
    pub files: Files,
    /// The hash of the running file.
    pub running_hash: String,
    /// Where documents come from: the tier above (the root: its own NATS).
    pub source: Link,
    /// Whether this agent creates the bucket on `source` (the root).
    pub owns_source: bool,
    /// This node's key (its outcome events).
    pub key: SecretKey,
    /// This node's chain: its parent's key and its grants.
    pub own: OwnChain,
    /// Links that must be up for a trial to pass.
    pub links: Vec<Link>,
    /// Subsystems that stopped on their own.
    pub faults: Faults,
    /// Where outcome events are queued.
    pub outbox: Outbox,
    /// The agent's shutdown (cancelled to restart).
    pub restart: CancellationToken,
    /// What heartbeats say.
    pub report: Report,
    /// When the agent started (the gate counts from it).
    pub started: Instant,
}

impl Applier {
    /// Judges a trial, then takes documents until `shutdown` or a restart.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SubsystemError> {
        let mut state = State::load(&self.files);
        self.report.set(state.report(&self.running_hash));
        if state.pending.is_some() && !self.trial(&mut state, &shutdown).await {
            return Ok(());
        }
        if self.config.remote_config.accept == RemoteAccept::Off {
            shutdown.cancelled().await;
            return Ok(());
        }
        let mut watching = Watching {
            applier: &self,
            state,
        };
        follow(
            &self.source,
            "this node's desired config",
            &shutdown,
            &mut watching,
        )
        .await
    }

    /// The health gate of a trial. Returns whether the agent keeps running (the trial
    /// passed, or shutdown came first); `false` when it rolled back and restarts.
    async fn trial(&self, state: &mut State, shutdown: &CancellationToken) -> bool {
        let Some(pending) = state.pending.clone() else {
            return true;
        };
        let version = pending.doc.version;
        let gate = self.config.remote_config.gate;
        info!(
            version,
            gate_secs = gate.as_secs(),
            "Trying desired config: it must be healthy within the gate."
        );
        let deadline = self.started + gate;
        loop {
            let problem = unhealthy(&self.links, &self.faults);
            if problem.is_none() {
                break;
            }
            if Instant::now() >= deadline {
                let cause = format!(
                    "not healthy within the {}s gate: {}",
                    gate.as_secs(),
                    problem.unwrap_or_default()
                );
                error!(version, %cause, "Desired config rolled back; restarting with the previous file.");
                if let Err(e) = state::roll_back(&self.files, state, &cause) {
                    error!(error = %e, previous = %self.files.previous.display(), "Cannot roll back desired config: restore the previous file by hand.");
                    return true;
                }
                self.announce(state).await;
                request_restart(&self.restart);
                return false;
            }
            // Cancel safety: a timer only.
            tokio::select! {
                _ = shutdown.cancelled() => return true,
                _ = tokio::time::sleep(TRIAL_TICK) => {}
            }
        }
        let took = OffsetDateTime::now_utc().unix_timestamp() - pending.since;
        state.pending = None;
        state.applied = Some(pending.doc.clone());
        state.record(version, &pending.doc.issuer, state::Result::Applied);
        if let Err(e) = state.save(&self.files) {
            warn!(error = %e, "Cannot record the applied desired config; it is judged again at the next start.");
        }
        info!(version, issuer = %pending.doc.issuer, took_secs = took, "Desired config applied and healthy.");
        self.report.set(state.report(&self.running_hash));
        self.announce(state).await;
        true
    }

    /// Handles one bucket value. Returns whether the agent restarts to apply it.
    async fn take(&self, bytes: &[u8], state: &mut State) -> bool {
        if bytes.is_empty() {
            return false; // deleted
        }
        let doc = match DesiredConfig::decode(bytes) {
            Ok(doc) => doc,
            Err(e) => {
                warn!(error = %e, "A desired-config document that does not decode was ignored.");
                return false;
            }
        };
        let spec = doc.spec();
        if spec.node != self.config.node.id || spec.version <= state.seen {
            return false;
        }
        let (version, issuer) = (spec.version, spec.issuer_id.clone());
        let issued_by = match self.issuer(&doc) {
            Ok(by) => by,
            Err(error) => {
                // Not trusted: reported, but `seen` stays (a forged document must not
                // block the genuine one it claims to replace).
                warn!(version, %issuer, %error, "Desired config refused.");
                state
                    .record(version, &issuer, state::Result::Refused)
                    .errors = vec![error];
                self.keep(state).await;
                return false;
            }
        };
        state.seen = version;
        match self.prepare(&doc, issued_by) {
            Err(mut errors) => {
                errors.truncate(MAX_ERRORS);
                warn!(version, %issuer, errors = %errors.join("; "), "Desired config refused.");
                let _ = std::fs::remove_file(&self.files.candidate);
                state
                    .record(version, &issuer, state::Result::Refused)
                    .errors = errors;
                self.keep(state).await;
                false
            }
            Ok(hash) if hash == self.running_hash => {
                let _ = std::fs::remove_file(&self.files.candidate);
                state.applied = Some(Applied {
                    version,
                    issuer: issuer.clone(),
                    hash,
                });
                state.record(version, &issuer, state::Result::Applied);
                info!(version, %issuer, "Desired config is the running file already.");
                self.keep(state).await;
                false
            }
            Ok(hash) => {
                self.switch(
                    state,
                    Applied {
                        version,
                        issuer,
                        hash,
                    },
                )
                .await
            }
        }
    }

    /// Checks the issuer against this node's trust anchors and parent.
    fn issuer(&self, doc: &DesiredConfig) -> Result<IssuedBy, String> {
        doc.verify().map_err(|e| e.to_string())?;
        let key: &PublicKey = doc.issuer_key();
        if self.config.trust.root_keys.contains(key) {
            return Ok(IssuedBy::Root);
        }
        if self.own.parent_key().as_ref() == Some(key) {
            return match self.config.remote_config.accept {
                RemoteAccept::Tree => Ok(IssuedBy::Parent),
                _ => Err(format!(
                    "issued by the hub `{}`, and remote_config.accept = \"root\" on this node",
                    doc.spec().issuer_id
                )),
            };
        }
        Err(format!(
            "issued by `{}` ({key}), which is neither a trust anchor nor this node's parent",
            doc.spec().issuer_id
        ))
    }

    /// Renders and validates a document into the candidate file; its hash, or every error.
    fn prepare(&self, doc: &DesiredConfig, by: IssuedBy) -> Result<String, Vec<String>> {
        let spec = doc.spec();
        let secrets = desired::find_secrets(&spec.toml);
        if !secrets.is_empty() {
            return Err(secrets);
        }
        let current = std::fs::read_to_string(&self.files.config)
            .map_err(|e| vec![format!("cannot read {}: {e}", self.files.config.display())])?;
        let text =
            desired::render(&current, spec.patch.as_deref(), &spec.toml).map_err(|e| vec![e])?;
        let mode = state::file_mode(&self.files.config);
        write_atomically(&self.files.candidate, text.as_bytes(), mode).map_err(|e| {
            vec![format!(
                "cannot write {}: {e}",
                self.files.candidate.display()
            )]
        })?;
        let desired = check_rules(&self.files.candidate).map_err(|failure| match failure {
            CheckFailure::Config(errors) => errors
                .iter()
                .map(|e| {
                    e.to_string()
                        .replace(&*self.files.candidate.to_string_lossy(), "document")
                })
                .collect(),
            CheckFailure::Registry(e) => vec![e],
        })?;
        let mut errors = Vec::new();
        if desired.node.id != self.config.node.id || desired.node.mode != self.config.node.mode {
            errors.push(
                "node.id and node.mode cannot change remotely: they are who this node is"
                    .to_owned(),
            );
        }
        if by == IssuedBy::Parent {
            let (publish, receive) = self.own.grants();
            errors.extend(desired::hub_limits(
                &self.config,
                &desired,
                &publish,
                &receive,
            ));
        }
        if errors.is_empty() {
            Ok(file_hash(text.as_bytes()))
        } else {
            Err(errors)
        }
    }

    /// Makes the candidate the config file (the current one kept as previous) and
    /// restarts. Returns whether it restarts.
    async fn switch(&self, state: &mut State, doc: Applied) -> bool {
        let version = doc.version;
        let result = std::fs::read(&self.files.config)
            .and_then(|bytes| {
                write_atomically(
                    &self.files.previous,
                    &bytes,
                    state::file_mode(&self.files.config),
                )
            })
            .and_then(|()| {
                state.pending = Some(Pending {
                    doc,
                    starts: 0,
                    since: OffsetDateTime::now_utc().unix_timestamp(),
                });
                state.save(&self.files)
            })
            .and_then(|()| std::fs::rename(&self.files.candidate, &self.files.config))
            .and_then(|()| sync_dir(&self.files.config));
        if let Err(e) = result {
            error!(version, error = %e, "Cannot switch to the desired config; the current file stays.");
            state.pending = None;
            state.record(version, "", state::Result::Refused).errors =
                vec![format!("cannot write the config file on the box: {e}")];
            self.keep(state).await;
            return false;
        }
        info!(version, "Desired config written; restarting with it.");
        request_restart(&self.restart);
        true
    }

    /// Saves the state, updates the report and announces the outcome.
    async fn keep(&self, state: &State) {
        if let Err(e) = state.save(&self.files) {
            warn!(error = %e, "Cannot record the desired-config state.");
        }
        self.report.set(state.report(&self.running_hash));
        self.announce(state).await;
    }

    /// Queues an `audit.config_outcome` event for the last outcome.
    async fn announce(&self, state: &State) {
        let Some(last) = &state.last else { return };
        let mut payload = Map::new();
        payload.insert("node_id".into(), json!(self.config.node.id));
        payload.insert("version".into(), json!(last.version));
        payload.insert("issuer".into(), json!(last.issuer));
        payload.insert("result".into(), json!(last.result.as_str()));
        if let Some(cause) = &last.cause {
            payload.insert("cause".into(), json!(cause));
        }
        if !last.errors.is_empty() {
            payload.insert("errors".into(), Value::from(last.errors.clone()));
        }
        let queued = queue_event(
            &self.outbox,
            &self.key,
            &self.config.node.id,
            OUTCOME_EVENT,
            payload,
        );
        if let Err(e) = queued.await {
            warn!(error = %e, "Cannot queue the desired-config outcome event.");
        }
    }
}

/// This node's key on the tier above, and the state it updates.
struct Watching<'a> {
    applier: &'a Applier,
    state: State,
}

impl Follower for Watching<'_> {
    type With = ();

    async fn open(&mut self) -> Result<(kv::Watch, ()), String> {
        let a = self.applier;
        let store = bucket(&a.source, a.owns_source)
            .await
            .map_err(|e| format!("no desired-config bucket on the tier above: {e}"))?;
        let watch = store
            .watch_with_history(key(&a.config.node.id))
            .await
            .map_err(|e| e.to_string())?;
        Ok((watch, ()))
    }

    async fn handle(&mut self, _: &(), entry: kv::Entry) -> Next {
        if self.applier.take(&entry.value, &mut self.state).await {
            Next::Stop // restarting
        } else {
            Next::More
        }
    }
}

/// What keeps a node from being healthy (the health gate of a trial), if anything: a NATS
/// link not connected, or a subsystem stopped.
pub fn unhealthy(links: &[Link], faults: &Faults) -> Option<String> {
    for link in links {
        let s = link.state();
        if !s.connected {
            return Some(match s.last_error {
                Some(e) => format!("{} link not connected ({e})", link.role()),
                None => format!("{} link not connected", link.role()),
            });
        }
    }
    faults
        .list()
        .first()
        .map(|f| format!("subsystem {} stopped: {}", f.subsystem, f.cause))
}

fn sync_dir(file: &Path) -> std::io::Result<()> {
    match file.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}
