//! What a node keeps about updates, in its data dir: `update.json` (the state),
//! `bin/nexus-agent-{version}` (installed releases: the slots), `downloads/` (a download in
//! progress, resumable).
//!
//! # Which binary runs
//! The supervisor (systemd) always starts the packaged binary, the *base*. At start, before
//! anything else, [`boot`] decides: the release on trial, else the active release, else
//! the base; when that is not this process it `exec`s it (same pid, same arguments) with
//! `NEXUS_AGENT_SLOT` naming the release. A start of the base during a trial counts as a
//! start of the trial; after [`MAX_TRIAL_STARTS`] (the release exits at once, crashes,
//! or is killed before its health gate passes) the trial is rolled back before anything
//! runs. A power cut at any step leaves a state that names a complete, verified binary or
//! none (the base).

use std::path::{Path, PathBuf};

use nexus_federation::fsutil::write_atomically;
use nexus_policies::AgentVersion;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The environment variable naming the release this process runs as.
pub const SLOT_ENV: &str = "NEXUS_AGENT_SLOT";
/// How many starts a trial gets before the previous binary comes back.
pub const MAX_TRIAL_STARTS: u32 = 3;

/// An installed release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Its version.
    pub version: String,
    /// Its binary.
    pub path: PathBuf,
}

/// A release on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// What is tried.
    pub slot: Slot,
    /// The rollout it came from.
    pub rollout: u64,
    /// Starts of the supervisor's binary since the switch.
    pub starts: u32,
    /// When it was switched to (unix seconds).
    pub since: i64,
}

/// What became of a release on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The rollout.
    pub rollout: u64,
    /// The release's version.
    pub version: String,
    /// `applied`, `refused` or `rolled_back`.
    pub result: String,
    /// Why (refused, rolled back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// When (unix seconds).
    pub at: i64,
}

/// The state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateState {
    /// The binary the supervisor starts (recorded at the first install).
    #[serde(default)]
    pub base: Option<PathBuf>,
    /// The release that runs; none: the base.
    #[serde(default)]
    pub active: Option<Slot>,
    /// A release on trial.
    #[serde(default)]
    pub pending: Option<Pending>,
    /// The last outcome.
    #[serde(default)]
    pub last: Option<Outcome>,
}

/// The update files of a data dir.
pub fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("update.json")
}

impl UpdateState {
    /// The state in `data_dir`; missing or unreadable: none (the base runs).
    pub fn load(data_dir: &Path) -> Self {
        std::fs::read(state_path(data_dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes it atomically (fsynced).
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomically(&state_path(data_dir), &bytes, 0o600)
    }

    /// Records an outcome.
    pub fn record(&mut self, rollout: u64, version: &str, result: &str, cause: Option<String>) {
        self.last = Some(Outcome {
            rollout,
            version: version.to_owned(),
            result: result.to_owned(),
            cause,
            at: OffsetDateTime::now_utc().unix_timestamp(),
        });
    }

    /// Ends the trial: the previous binary runs again.
    pub fn roll_back(&mut self, cause: String) {
        if let Some(pending) = self.pending.take() {
            self.record(
                pending.rollout,
                &pending.slot.version,
                "rolled_back",
                Some(cause),
            );
        }
    }

    /// The binary that should run: the trial's, the active release's, or the base (`None`).
    pub fn wanted(&self) -> Option<&Slot> {
        self.pending
            .as_ref()
            .map(|p| &p.slot)
            .or(self.active.as_ref())
    }
}

/// What [`boot`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Boot {
    /// This process is the binary that should run.
    Run,
    /// Run `path` instead, with `SLOT_ENV` = `slot` (`None`: unset, the base).
    Exec { path: PathBuf, slot: Option<String> },
}

/// Decides which binary runs, counting a trial's starts (see the module docs). `me`: this
/// process' `NEXUS_AGENT_SLOT`; `own`: this binary's version.
pub fn boot(data_dir: &Path, me: Option<&str>, own: AgentVersion) -> Boot {
    let mut state = UpdateState::load(data_dir);
    let before = state.clone();
    if me.is_none() {
        // A package upgrade of the base to this release or later makes the slot moot.
        if state
            .active
            .as_ref()
            .is_some_and(|a| AgentVersion::parse(&a.version).is_ok_and(|v| v <= own))
        {
            state.active = None;
        }
    }
    if let Some(pending) = &mut state.pending {
        if me != Some(pending.slot.version.as_str()) {
            pending.starts += 1;
            if pending.starts > MAX_TRIAL_STARTS {
                let n = pending.starts - 1;
                state.roll_back(format!(
                    "the new version stopped {n} times before it was healthy"
                ));
            }
        }
    }
    if state != before {
        if let Err(error) = state.save(data_dir) {
            eprintln!(
                "warning: cannot record the update state in {}: {error}",
                data_dir.display()
            );
        }
    }
    match (state.wanted(), me) {
        (Some(slot), me) if me != Some(slot.version.as_str()) => {
            if slot.path.is_file() {
                Boot::Exec {
                    path: slot.path.clone(),
                    slot: Some(slot.version.clone()),
                }
            } else {
                // The slot is gone: nothing to switch to; the base runs.
                state.roll_back(format!("{} is missing", slot.path.display()));
                state.active = None;
                let _ = state.save(data_dir);
                Boot::Run
            }
        }
        (None, Some(_)) => match &state.base {
            Some(base) => Boot::Exec {
                path: base.clone(),
                slot: None,
            },
            None => Boot::Run,
        },
        _ => Boot::Run,
    }
}

/// Replaces this process with `path` (same arguments), `SLOT_ENV` set to `slot` or unset.
/// Returns only when that fails.
///
/// `execve(2)` itself, not `execvp(3)`: on a binary the kernel cannot run (`ENOEXEC`),
/// `execvp` would hand it to `/bin/sh` as a script, replacing the agent with a shell that
/// fails; `execve` returns the error and the caller goes on with the binary it has.
pub fn exec(path: &Path, slot: Option<&str>) -> std::io::Error {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt as _;
    let cstring = |bytes: &[u8]| CString::new(bytes).map_err(std::io::Error::other);
    let prepared = (|| -> std::io::Result<(CString, Vec<CString>, Vec<CString>)> {
        let program = cstring(path.as_os_str().as_bytes())?;
        let mut args = vec![program.clone()];
        for arg in std::env::args_os().skip(1) {
            args.push(cstring(arg.as_bytes())?);
        }
        let mut env = Vec::new();
        for (key, value) in std::env::vars_os() {
            if key.as_bytes() == SLOT_ENV.as_bytes() {
                continue;
            }
            let mut pair = key.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            env.push(cstring(&pair)?);
        }
        if let Some(slot) = slot {
            env.push(cstring(format!("{SLOT_ENV}={slot}").as_bytes())?);
        }
        Ok((program, args, env))
    })();
    match prepared {
        Ok((program, args, env)) => match nix::unistd::execve(&program, &args, &env) {
            Ok(never) => match never {},
            Err(errno) => std::io::Error::from(errno),
        },
        Err(error) => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(dir: &Path) -> PathBuf {
        let bin = dir.join("nexus-agent-0.2.0");
        std::fs::write(&bin, b"#!").expect("write");
        let state = UpdateState {
            base: Some(dir.join("base")),
            active: None,
            pending: Some(Pending {
                slot: Slot {
                    version: "0.2.0".into(),
                    path: bin.clone(),
                },
                rollout: 7,
                starts: 0,
                since: 0,
            }),
            last: None,
        };
        state.save(dir).expect("save");
        bin
    }

    #[test]
    fn the_base_switches_to_the_trial_until_its_starts_are_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = trial(dir.path());
        let own = AgentVersion(0, 1, 0);
        for _ in 0..MAX_TRIAL_STARTS {
            assert_eq!(
                boot(dir.path(), None, own),
                Boot::Exec {
                    path: bin.clone(),
                    slot: Some("0.2.0".into())
                }
            );
            // The release itself starting does not count.
            assert_eq!(
                boot(dir.path(), Some("0.2.0"), AgentVersion(0, 2, 0)),
                Boot::Run
            );
        }
        assert_eq!(boot(dir.path(), None, own), Boot::Run, "rolled back");
        let state = UpdateState::load(dir.path());
        let last = state.last.expect("outcome");
        assert_eq!((last.result.as_str(), last.rollout), ("rolled_back", 7));
        assert!(last.cause.expect("cause").contains("stopped 3 times"));
    }

    #[test]
    fn a_release_that_should_not_run_hands_back_to_the_base() {
        let dir = tempfile::tempdir().expect("tempdir");
        trial(dir.path());
        let mut state = UpdateState::load(dir.path());
        state.roll_back("unhealthy".into());
        state.save(dir.path()).expect("save");
        assert_eq!(
            boot(dir.path(), Some("0.2.0"), AgentVersion(0, 2, 0)),
            Boot::Exec {
                path: dir.path().join("base"),
                slot: None
            }
        );
    }

    #[test]
    fn a_newer_base_drops_an_older_active_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = trial(dir.path());
        let mut state = UpdateState::load(dir.path());
        state.active = state.pending.take().map(|p| p.slot);
        state.save(dir.path()).expect("save");
        assert_eq!(
            boot(dir.path(), None, AgentVersion(0, 1, 0)),
            Boot::Exec {
                path: bin,
                slot: Some("0.2.0".into())
            }
        );
        assert_eq!(boot(dir.path(), None, AgentVersion(0, 3, 0)), Boot::Run);
        assert!(UpdateState::load(dir.path()).active.is_none());
    }
}
