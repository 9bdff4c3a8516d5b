//! The subsystem that installs releases on this node (member, hub): it judges a trial
//! first, then follows `go.{node}` on the tier above and installs what the rollout there
//! names.
//!
//! Before anything is written the rollout must be signed by a trust anchor and select this
//! node, and the release's manifest must be signed by a release key
//! (`trust.release_keys`), be built for this node's target, not be a downgrade (unless the
//! rollout allows it) and allow replacing this version (`min_version`). The binary is
//! downloaded chunk by chunk into `{data_dir}/downloads/` (fsynced, resumed after a link
//! cut or a restart from the last chunk kept), its size and SHA-256 checked against the
//! manifest, then moved to `{data_dir}/bin/` and put on trial; the agent restarts into it
//! (`crate::update::state::boot`). Each refusal is reported with its reason and the
//! release is not tried again for that rollout.

use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::kv;
use futures::StreamExt as _;
use nexus_federation::follow::{follow, Follower, Next};
use nexus_federation::fsutil::write_atomically;
use nexus_federation::subsystem::SubsystemError;
use nexus_federation::Link;
use nexus_policies::{PublicKey, ReleaseManifest, ReleaseSpec, Rollout, RolloutState};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::state::{Pending, Slot, UpdateState, SLOT_ENV};
use super::{
    bucket, go_key, hex_digest, manifest_key, object_name, objects, selected, version, OBJECTS,
    TARGET, VERSION,
};
use crate::remote_config::{request_restart, Report};
use crate::supervisor::Faults;

/// How often a trial looks at the node's health.
const TRIAL_TICK: Duration = Duration::from_millis(200);
/// The longest wait for the next chunk before the download is resumed later.
const CHUNK_WAIT: Duration = Duration::from_secs(10);
/// How much is written between two recorded resume points.
const RESUME_EVERY: u64 = 1024 * 1024;

/// The update subsystem of one node.
pub struct Installer {
    /// This node.
    pub node_id: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// The tier above.
    pub source: Link,
    /// The trust anchors (rollouts).
    pub anchors: Vec<PublicKey>,
    /// The release keys (manifests); none: updates are off.
    pub release_keys: Vec<PublicKey>,
    /// The health gate.
    pub gate: Duration,
    /// Links that must be up for a trial to pass.
    pub links: Vec<Link>,
    /// Subsystems that stopped on their own.
    pub faults: Faults,
    /// The agent's shutdown (cancelled to restart).
    pub restart: CancellationToken,
    /// What heartbeats say (`update`).
    pub report: Report,
    /// When the agent started (the gate counts from it).
    pub started: Instant,
}

/// Why an install did not happen.
enum Stop {
    /// Refused for good (for this rollout), with the reason.
    Refuse(String),
    /// Not now (a link, the tier above not ready); tried again.
    Later(String),
}

/// Where a download is, to resume it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Resume {
    nuid: String,
    written: u64,
    last_seq: u64,
}

impl Installer {
    /// Judges a trial, then installs until `shutdown` or a restart.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SubsystemError> {
        let mut state = UpdateState::load(&self.data_dir);
        let me = std::env::var(SLOT_ENV).ok();
        if let Some(pending) = state.pending.clone() {
            if me.as_deref() == Some(pending.slot.version.as_str()) {
                self.set_report(&state, "pending", None);
                if !self.trial(&mut state, pending, &shutdown).await {
                    return Ok(());
                }
            }
        }
        self.set_report(&state, "idle", None);
        if self.release_keys.is_empty() {
            shutdown.cancelled().await;
            return Ok(());
        }
        let mut following = Following {
            installer: &self,
            state,
        };
        follow(
            &self.source,
            "this node's rollout",
            &shutdown,
            &mut following,
        )
        .await
    }

    fn set_report(&self, state: &UpdateState, doing: &str, release: Option<&str>) {
        let mut report = json!({ "state": doing, "target": TARGET });
        if let Some(release) = release {
            report["release"] = release.into();
        }
        if let Some(last) = &state.last {
            if doing == "idle" && last.result != "applied" {
                report["state"] = last.result.clone().into();
                report["release"] = last.version.clone().into();
            }
            report["rollout"] = last.rollout.into();
            if let Some(cause) = &last.cause {
                report["cause"] = cause.clone().into();
            }
        }
        if let Some(pending) = &state.pending {
            report["release"] = pending.slot.version.clone().into();
            report["rollout"] = pending.rollout.into();
        }
        self.report.set(report);
    }

    /// The health gate of a trial; `false` when it rolled back and restarts.
    async fn trial(
        &self,
        state: &mut UpdateState,
        pending: Pending,
        shutdown: &CancellationToken,
    ) -> bool {
        let deadline = self.started + self.gate;
        info!(
            version = VERSION,
            gate_secs = self.gate.as_secs(),
            "Trying a new agent version: it must be healthy within the gate."
        );
        loop {
            let problem = crate::remote_config::apply::unhealthy(&self.links, &self.faults);
            if problem.is_none() {
                break;
            }
            if Instant::now() >= deadline {
                let cause = format!(
                    "not healthy within the {}s gate: {}",
                    self.gate.as_secs(),
                    problem.unwrap_or_default()
                );
                error!(version = VERSION, %cause, "New agent version rolled back; restarting with the previous one.");
                state.roll_back(cause);
                if let Err(e) = state.save(&self.data_dir) {
                    error!(error = %e, "Cannot record the rollback; the next start rolls back by its count.");
                }
                request_restart(&self.restart);
                return false;
            }
            // Cancel safety: a timer only.
            tokio::select! {
                _ = shutdown.cancelled() => return true,
                _ = tokio::time::sleep(TRIAL_TICK) => {}
            }
        }
        commit(state, &pending);
        if let Err(e) = state.save(&self.data_dir) {
            warn!(error = %e, "Cannot record the applied update; it is judged again at the next start.");
        }
        let took = OffsetDateTime::now_utc().unix_timestamp() - pending.since;
        info!(
            version = VERSION,
            took_secs = took,
            "New agent version applied and healthy."
        );
        remove_other_slots(&self.data_dir.join("bin"), &pending.slot.path);
        true
    }

    /// One `go.{node}` value. `Some(next)`: what the follower does.
    async fn take(&self, bytes: &[u8], state: &mut UpdateState) -> Next {
        if bytes.is_empty() {
            return Next::More;
        }
        let rollout = match Rollout::decode(bytes).and_then(|r| r.verify(&self.anchors).map(|()| r))
        {
            Ok(rollout) => rollout,
            Err(e) => {
                warn!(error = %e, "A rollout that does not verify was ignored.");
                return Next::More;
            }
        };
        let spec = rollout.spec();
        let release = spec.version.to_string();
        if spec.state != RolloutState::Active
            || !selected(&self.node_id, spec)
            || spec.version == version()
        {
            return Next::More;
        }
        if state
            .last
            .as_ref()
            .is_some_and(|l| l.rollout == spec.id && l.version == release)
        {
            return Next::More; // done, refused or rolled back: not again for this rollout
        }
        self.set_report(state, "downloading", Some(&release));
        match self
            .fetch(spec.id, spec.version, spec.allow_downgrade)
            .await
        {
            Ok(path) => self.switch(state, spec.id, &release, path).await,
            Err(Stop::Refuse(reason)) => {
                warn!(release = %release, %reason, "Update refused.");
                state.record(spec.id, &release, "refused", Some(reason));
                if let Err(e) = state.save(&self.data_dir) {
                    warn!(error = %e, "Cannot record the refusal.");
                }
                self.set_report(state, "idle", None);
                Next::More
            }
            Err(Stop::Later(reason)) => {
                info!(release = %release, %reason, "Update postponed; trying again.");
                self.set_report(state, "idle", None);
                Next::Rewatch
            }
        }
    }

    /// Checks the manifest and downloads the binary; the verified file.
    async fn fetch(
        &self,
        rollout: u64,
        release: nexus_policies::AgentVersion,
        downgrade: bool,
    ) -> Result<PathBuf, Stop> {
        let own = version();
        if release < own && !downgrade {
            return Err(Stop::Refuse(format!(
                "{release} would downgrade {own}: the rollout does not allow downgrades"
            )));
        }
        let store = bucket(&self.source, false)
            .await
            .map_err(|e| Stop::Later(format!("no update bucket on the tier above: {e}")))?;
        let bytes = store
            .get(manifest_key(release, TARGET))
            .await
            .map_err(|e| Stop::Later(format!("cannot read the manifest: {e}")))?
            .ok_or_else(|| {
                Stop::Refuse(format!(
                    "no release {release} for target {TARGET} at the tier above"
                ))
            })?;
        let manifest = ReleaseManifest::decode(&bytes)
            .map_err(|e| Stop::Refuse(format!("the manifest does not decode: {e}")))?;
        manifest.verify(&self.release_keys).map_err(|e| {
            Stop::Refuse(format!(
                "the manifest is not signed by a release key of trust.release_keys: {e}"
            ))
        })?;
        let spec = manifest.spec();
        if spec.target != TARGET {
            return Err(Stop::Refuse(format!(
                "the release is built for {}, this node is {TARGET}",
                spec.target
            )));
        }
        if spec.version != release {
            return Err(Stop::Refuse(format!(
                "the manifest is for {}, the rollout for {release}",
                spec.version
            )));
        }
        if own < spec.min_version {
            return Err(Stop::Refuse(format!(
                "{own} is older than {}, the oldest version {release} may replace",
                spec.min_version
            )));
        }
        let _ = rollout;
        self.download(&object_name(release, TARGET), spec).await
    }

    /// Downloads `name` into `downloads/`, resuming a download kept there; checks size and
    /// SHA-256 against `spec`.
    async fn download(&self, name: &str, spec: &ReleaseSpec) -> Result<PathBuf, Stop> {
        let dir = self.data_dir.join("downloads");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Stop::Later(format!("cannot create {}: {e}", dir.display())))?;
        let part = dir.join(format!("{name}.part"));
        let resume_file = dir.join(format!("{name}.resume"));
        let objects = objects(&self.source, false)
            .await
            .map_err(|e| Stop::Later(format!("no release store at the tier above: {e}")))?;
        let info = objects
            .info(name)
            .await
            .map_err(|e| Stop::Later(format!("the tier above does not hold {name} yet: {e}")))?;
        if info.size as u64 != spec.size {
            return Err(Stop::Refuse(format!(
                "the binary at the tier above is {} bytes, the manifest says {}: it was altered",
                info.size, spec.size
            )));
        }
        let mut resume: Resume = std::fs::read(&resume_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|r: &Resume| r.nuid == info.nuid)
            .unwrap_or_default();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&part)
            .map_err(|e| Stop::Later(format!("cannot open {}: {e}", part.display())))?;
        let mut hasher = Sha256::new();
        if resume.written > 0 {
            // Keep exactly what was recorded, and hash it again.
            let io =
                |e: std::io::Error| Stop::Later(format!("cannot resume {}: {e}", part.display()));
            file.set_len(resume.written).map_err(io)?;
            file.rewind().map_err(io)?;
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let n = file.read(&mut buffer).map_err(io)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buffer[..n]);
            }
            info!(
                name,
                at = resume.written,
                of = spec.size,
                "Resuming the download."
            );
        } else {
            file.set_len(0).map_err(|e| Stop::Later(e.to_string()))?;
            resume = Resume {
                nuid: info.nuid.clone(),
                ..Resume::default()
            };
        }
        let stream = self
            .source
            .jetstream()
            .get_stream(format!("OBJ_{OBJECTS}"))
            .await
            .map_err(|e| Stop::Later(format!("cannot open the release store: {e}")))?;
        let deliver = if resume.last_seq > 0 {
            DeliverPolicy::ByStartSequence {
                start_sequence: resume.last_seq + 1,
            }
        } else {
            DeliverPolicy::All
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: format!("$O.{OBJECTS}.C.{}", info.nuid),
                deliver_policy: deliver,
                ..Default::default()
            })
            .await
            .map_err(|e| Stop::Later(format!("cannot read the release: {e}")))?;
        let mut chunks = consumer
            .messages()
            .await
            .map_err(|e| Stop::Later(format!("cannot read the release: {e}")))?;
        let mut since_mark = 0u64;
        let save = |file: &std::fs::File, resume: &Resume| -> Result<(), Stop> {
            file.sync_data().map_err(|e| Stop::Later(e.to_string()))?;
            let bytes = serde_json::to_vec(resume).map_err(|e| Stop::Later(e.to_string()))?;
            write_atomically(&resume_file, &bytes, 0o600).map_err(|e| Stop::Later(e.to_string()))
        };
        while resume.written < spec.size {
            let chunk = match tokio::time::timeout(CHUNK_WAIT, chunks.next()).await {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(Some(Err(e))) => {
                    save(&file, &resume)?;
                    return Err(Stop::Later(format!(
                        "the download broke off at byte {}: {e}",
                        resume.written
                    )));
                }
                Ok(None) | Err(_) => {
                    save(&file, &resume)?;
                    return Err(Stop::Later(format!(
                        "the download stalled at byte {}",
                        resume.written
                    )));
                }
            };
            let seq = chunk.info().map(|i| i.stream_sequence).unwrap_or(0);
            file.write_all(&chunk.payload)
                .map_err(|e| Stop::Later(format!("cannot write {}: {e}", part.display())))?;
            hasher.update(&chunk.payload);
            resume.written += chunk.payload.len() as u64;
            resume.last_seq = seq;
            since_mark += chunk.payload.len() as u64;
            if since_mark >= RESUME_EVERY {
                since_mark = 0;
                save(&file, &resume)?;
            }
        }
        file.sync_all().map_err(|e| Stop::Later(e.to_string()))?;
        let digest: [u8; 32] = hasher.finalize().into();
        let _ = std::fs::remove_file(&resume_file);
        if resume.written != spec.size || digest != spec.sha256 {
            let _ = std::fs::remove_file(&part);
            return Err(Stop::Refuse(format!(
                "the binary's SHA-256 is {}, the manifest says {}: it was altered",
                hex_digest(&digest),
                hex_digest(&spec.sha256)
            )));
        }
        Ok(part)
    }

    /// Installs the verified download as a slot, puts it on trial and restarts.
    async fn switch(
        &self,
        state: &mut UpdateState,
        rollout: u64,
        release: &str,
        part: PathBuf,
    ) -> Next {
        let bin = self.data_dir.join("bin");
        let path = bin.join(format!("nexus-agent-{release}"));
        let installed = install_file(&part, &bin, &path);
        if let Err(e) = installed {
            warn!(error = %e, "Cannot install the update; trying again later.");
            return Next::Rewatch;
        }
        if state.base.is_none() && std::env::var(SLOT_ENV).is_err() {
            state.base = std::env::current_exe().ok();
        }
        put_on_trial(state, rollout, release, path);
        if let Err(e) = state.save(&self.data_dir) {
            error!(error = %e, "Cannot record the update; not switching.");
            state.pending = None;
            return Next::Rewatch;
        }
        info!(release, "New agent version installed; restarting into it.");
        request_restart(&self.restart);
        Next::Stop
    }
}

/// Names the installed `path` as the release on trial (saved by the caller).
fn put_on_trial(state: &mut UpdateState, rollout: u64, release: &str, path: PathBuf) {
    state.pending = Some(Pending {
        slot: Slot {
            version: release.to_owned(),
            path,
        },
        rollout,
        starts: 0,
        since: OffsetDateTime::now_utc().unix_timestamp(),
    });
}

/// The trial passed its gate: its release is the active one (saved by the caller).
fn commit(state: &mut UpdateState, pending: &Pending) {
    state.pending = None;
    state.active = Some(pending.slot.clone());
    state.record(pending.rollout, &pending.slot.version, "applied", None);
}

/// Removes the releases in `bin` other than `keep` (the active one): a box keeps one
/// installed release besides the packaged binary, whatever the number of updates.
fn remove_other_slots(bin: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(bin) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != keep
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with("nexus-agent-")
        {
            if let Err(e) = std::fs::remove_file(&path) {
                warn!(path = %path.display(), error = %e, "Cannot remove an old release.");
            }
        }
    }
}

/// Moves the verified download to its slot: executable, fsynced, the directory too.
fn install_file(part: &Path, bin: &Path, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(bin)?;
    std::fs::set_permissions(part, std::fs::Permissions::from_mode(0o755))?;
    std::fs::File::open(part)?.sync_all()?;
    std::fs::rename(part, path)?;
    std::fs::File::open(bin)?.sync_all()
}

/// `go.{node}` on the tier above, and the state it updates.
struct Following<'a> {
    installer: &'a Installer,
    state: UpdateState,
}

impl Follower for Following<'_> {
    type With = ();

    async fn open(&mut self) -> Result<(kv::Watch, ()), String> {
        let store = bucket(&self.installer.source, false)
            .await
            .map_err(|e| format!("no update bucket on the tier above: {e}"))?;
        let watch = store
            .watch_with_history(go_key(&self.installer.node_id))
            .await
            .map_err(|e| e.to_string())?;
        Ok((watch, ()))
    }

    async fn handle(&mut self, _: &(), entry: kv::Entry) -> Next {
        // Rewatch (the tier above not ready, a link broken): `follow` backs off first.
        self.installer.take(&entry.value, &mut self.state).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::{boot, Boot, MAX_TRIAL_STARTS};
    use super::*;
    use nexus_policies::AgentVersion;

    /// What a box would run if the power were cut now and the supervisor started the base:
    /// the content of that binary, after checking it is there.
    fn boots(data_dir: &Path, base: &Path) -> Vec<u8> {
        let path = match boot(data_dir, None, AgentVersion(0, 1, 0)) {
            Boot::Run => base.to_path_buf(),
            Boot::Exec { path, slot } => {
                assert!(slot.is_some(), "the base execs a release, not itself");
                path
            }
        };
        std::fs::read(&path).unwrap_or_else(|e| panic!("{} does not boot: {e}", path.display()))
    }

    /// One install as the agent does it, with a power cut after each durable write: the
    /// download in progress, the verified binary moved to its slot, the trial recorded, the
    /// trial killed before its gate (every start it gets), the commit, the old slot removed.
    /// After each, the box boots a complete binary: the one before the update until the
    /// commit (or the trial, while it has starts left), the new one after.
    fn install_with_power_cuts(
        dir: &Path,
        base: &Path,
        rollout: u64,
        release: &str,
        before: &[u8],
    ) {
        let new = format!("agent {release}").into_bytes();
        let downloads = dir.join("downloads");
        std::fs::create_dir_all(&downloads).expect("downloads");
        let part = downloads.join(format!("nexus-agent-{release}.part"));
        // A download cut half-way.
        std::fs::write(&part, &new[..new.len() / 2]).expect("part");
        assert_eq!(boots(dir, base), before, "{release}: mid-download");
        std::fs::write(&part, &new).expect("part");
        let bin = dir.join("bin");
        let path = bin.join(format!("nexus-agent-{release}"));
        install_file(&part, &bin, &path).expect("install");
        assert_eq!(
            boots(dir, base),
            before,
            "{release}: installed, not on trial"
        );
        let mut state = UpdateState::load(dir);
        put_on_trial(&mut state, rollout, release, path.clone());
        state.save(dir).expect("save");
        // Each start of the base during the trial (the trial killed before its gate) runs
        // the trial, until its starts are used up.
        for start in 1..=MAX_TRIAL_STARTS {
            assert_eq!(boots(dir, base), new, "{release}: trial start {start}");
        }
        assert_eq!(boots(dir, base), before, "{release}: rolled back");
        let state = UpdateState::load(dir);
        let last = state.last.clone().expect("an outcome");
        assert_eq!(
            (last.result.as_str(), last.version.as_str()),
            ("rolled_back", release)
        );
        // The same release again (another rollout), this time healthy.
        let mut state = UpdateState::load(dir);
        put_on_trial(&mut state, rollout + 1, release, path.clone());
        state.save(dir).expect("save");
        assert_eq!(boots(dir, base), new, "{release}: second trial");
        let mut state = UpdateState::load(dir);
        let pending = state.pending.clone().expect("on trial");
        commit(&mut state, &pending);
        state.save(dir).expect("save");
        assert_eq!(boots(dir, base), new, "{release}: committed");
        remove_other_slots(&bin, &path);
        assert_eq!(boots(dir, base), new, "{release}: old slot removed");
        // A state file torn by the file system falls back to the base, which always boots.
        let saved = std::fs::read(dir.join("update.json")).expect("state");
        std::fs::write(dir.join("update.json"), &saved[..saved.len() / 2]).expect("tear");
        assert_eq!(boots(dir, base), b"base", "{release}: torn state");
        std::fs::write(dir.join("update.json"), &saved).expect("restore");
    }

    #[test]
    fn a_power_cut_after_any_durable_write_of_an_install_leaves_a_box_that_boots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("nexus-agent");
        std::fs::write(&base, b"base").expect("base");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data");
        let mut state = UpdateState::load(&data);
        state.base = Some(base.clone());
        state.save(&data).expect("save");
        install_with_power_cuts(&data, &base, 10, "0.2.0", b"base");
        // The next update starts from the installed release, and a failed trial of it
        // returns to that release, not to the base.
        install_with_power_cuts(&data, &base, 20, "0.3.0", b"agent 0.2.0");
        let kept: Vec<_> = std::fs::read_dir(data.join("bin"))
            .expect("bin")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(kept, ["nexus-agent-0.3.0"], "one installed release is kept");
    }
}
