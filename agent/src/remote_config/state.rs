//! What a node keeps about desired config, beside its config file so that it is found
//! before the file is loaded: `{config}.remote.json` (the state), `{config}.previous` (the
//! file before the last applied document) and `{config}.desired` (a document's file while
//! it is validated).
//!
//! # Rollback at start
//! A document is applied by replacing the config file and restarting: the new start is a
//! trial ([`State::pending`]). [`boot`] counts the starts of a trial and restores the
//! previous file when the agent has started [`MAX_TRIAL_STARTS`] times without becoming
//! healthy (it crashes, or is killed, before the health gate passes) or when the new file
//! does not load. The gate itself (healthy in time) is watched by the running agent.

use std::path::{Path, PathBuf};

use nexus_federation::fsutil::write_atomically;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

/// How many starts a trial gets before the previous file is restored.
pub const MAX_TRIAL_STARTS: u32 = 3;
/// The most errors kept (and reported) for a refused document.
pub const MAX_ERRORS: usize = 32;

/// The files of remote config for one config file.
#[derive(Debug, Clone)]
pub struct Files {
    /// The config file the agent runs.
    pub config: PathBuf,
    /// The file before the last applied document.
    pub previous: PathBuf,
    /// The state.
    pub state: PathBuf,
    /// A document's file while it is validated.
    pub candidate: PathBuf,
}

impl Files {
    /// The files beside `config`.
    pub fn new(config: &Path) -> Self {
        let beside = |suffix: &str| {
            let mut name = config.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        Self {
            config: config.to_path_buf(),
            previous: beside(".previous"),
            state: beside(".remote.json"),
            candidate: beside(".desired"),
        }
    }
}

/// A document version and who issued it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The document's version.
    pub version: u64,
    /// The issuing node.
    pub issuer: String,
    /// The hash of the file it produced ([`file_hash`]).
    pub hash: String,
}

/// A document being tried: the running file is its, not yet judged healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// What is tried.
    pub doc: Applied,
    /// How many times the agent started with it.
    pub starts: u32,
    /// When it was written (unix seconds).
    pub since: i64,
}

/// What became of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Result {
    /// Running and healthy.
    Applied,
    /// Not applied: it fails validation, its signature or its issuer's limits.
    Refused,
    /// Applied, not healthy within the gate: the previous file runs again.
    RolledBack,
}

impl Result {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Result::Applied => "applied",
            Result::Refused => "refused",
            Result::RolledBack => "rolled_back",
        }
    }
}

/// The last outcome of a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The document's version.
    pub version: u64,
    /// Its issuer.
    pub issuer: String,
    /// What became of it.
    pub result: Result,
    /// Why it rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Why it was refused (every error, at most [`MAX_ERRORS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// When (unix seconds).
    pub at: i64,
}

/// The state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The highest document version handled (applied, refused or rolled back): never
    /// handled again.
    #[serde(default)]
    pub seen: u64,
    /// The document the running file came from, if any.
    #[serde(default)]
    pub applied: Option<Applied>,
    /// A document being tried.
    #[serde(default)]
    pub pending: Option<Pending>,
    /// The last outcome.
    #[serde(default)]
    pub last: Option<Outcome>,
}

impl State {
    /// The state kept for `files`; a missing file is the empty state, an unreadable one is
    /// said so and taken as empty (the config file itself is never touched then).
    pub fn load(files: &Files) -> Self {
        match std::fs::read(&files.state) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                eprintln!(
                    "warning: {} is not a remote-config state ({error}); starting from none",
                    files.state.display()
                );
                Self::default()
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(error) => {
                eprintln!(
                    "warning: cannot read {} ({error}); starting from no remote-config state",
                    files.state.display()
                );
                Self::default()
            }
        }
    }

    /// Writes it atomically (fsynced).
    pub fn save(&self, files: &Files) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomically(&files.state, &bytes, 0o640)
    }

    /// Records `outcome` as the last one.
    pub fn record(&mut self, version: u64, issuer: &str, result: Result) -> &mut Outcome {
        self.last.insert(Outcome {
            version,
            issuer: issuer.to_owned(),
            result,
            cause: None,
            errors: Vec::new(),
            at: OffsetDateTime::now_utc().unix_timestamp(),
        })
    }

    /// What a heartbeat says about the running config: its hash (`running_hash`), the
    /// version of the document it came from (0: none), and its state — `desired` (the
    /// applied document's file), `drifted` (edited on the box since), `local` (no document
    /// applied), `pending` (a document on trial), or `refused` / `rolled_back` (the
    /// newest document, with its errors or cause; the previous file runs).
    pub fn report(&self, running_hash: &str) -> serde_json::Value {
        let version = self.applied.as_ref().map_or(0, |a| a.version);
        let mut state = match (&self.pending, &self.applied) {
            (Some(_), _) => "pending",
            (None, Some(applied)) if applied.hash == running_hash => "desired",
            (None, Some(_)) => "drifted",
            (None, None) => "local",
        };
        let mut report = serde_json::json!({ "hash": running_hash, "version": version });
        if let Some(last) = &self.last {
            if last.result != Result::Applied && last.version > version && self.pending.is_none() {
                state = last.result.as_str();
                report["desired_version"] = last.version.into();
                if let Some(cause) = &last.cause {
                    report["cause"] = cause.clone().into();
                }
                if !last.errors.is_empty() {
                    report["errors"] = last.errors.clone().into();
                }
            }
        }
        if let Some(pending) = &self.pending {
            report["desired_version"] = pending.doc.version.into();
        }
        report["state"] = state.into();
        report
    }
}

/// `sha256:{hex}` of a config file's bytes.
pub fn file_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256:");
    for byte in digest {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Puts the previous file back and records the rollback of the pending document with
/// `cause`. Returns whether a file was restored.
pub fn roll_back(files: &Files, state: &mut State, cause: &str) -> std::io::Result<bool> {
    let Some(pending) = state.pending.take() else {
        return Ok(false);
    };
    let previous = std::fs::read(&files.previous)?;
    write_atomically(&files.config, &previous, file_mode(&files.config))?;
    state
        .record(pending.doc.version, &pending.doc.issuer, Result::RolledBack)
        .cause = Some(cause.to_owned());
    state.save(files)?;
    Ok(true)
}

/// The permission bits of `path`, or 0640.
pub fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).map_or(0o640, |m| m.permissions().mode() & 0o777)
}

/// At start, before the config file is loaded: counts a trial's start and restores the
/// previous file when the trial has used its starts. Says what it did on stderr (logging
/// needs the config).
pub fn boot(files: &Files) {
    let mut state = State::load(files);
    let Some(pending) = &mut state.pending else {
        return;
    };
    pending.starts += 1;
    let starts = pending.starts;
    let version = pending.doc.version;
    if starts > MAX_TRIAL_STARTS {
        let cause = format!(
            "the agent started {} times with it and stopped before it was healthy",
            starts - 1
        );
        report_rollback(files, &mut state, version, &cause);
    } else if let Err(error) = state.save(files) {
        eprintln!(
            "warning: cannot record the start of desired config v{version} in {}: {error}",
            files.state.display()
        );
    }
}

/// When the file does not load: restores the previous file if a trial is running.
/// Returns whether the caller should load again.
pub fn roll_back_unloadable(files: &Files, errors: &str) -> bool {
    let mut state = State::load(files);
    let Some(version) = state.pending.as_ref().map(|p| p.doc.version) else {
        return false;
    };
    let first = errors.lines().next().unwrap_or(errors);
    let cause = format!("the config does not load: {first}");
    report_rollback(files, &mut state, version, &cause)
}

fn report_rollback(files: &Files, state: &mut State, version: u64, cause: &str) -> bool {
    match roll_back(files, state, cause) {
        Ok(restored) => {
            eprintln!(
                "error: desired config v{version} rolled back ({cause}); {} restored",
                files.config.display()
            );
            restored
        }
        Err(error) => {
            eprintln!(
                "error: cannot roll desired config v{version} back ({cause}): {error}; restore {} from {} by hand",
                files.config.display(),
                files.previous.display()
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(dir: &Path) -> Files {
        let files = Files::new(&dir.join("agent.toml"));
        std::fs::write(&files.config, "new").expect("write");
        std::fs::write(&files.previous, "old").expect("write");
        let state = State {
            seen: 4,
            applied: None,
            pending: Some(Pending {
                doc: Applied {
                    version: 4,
                    issuer: "root".into(),
                    hash: file_hash(b"new"),
                },
                starts: 0,
                since: 0,
            }),
            last: None,
        };
        state.save(&files).expect("save");
        files
    }

    #[test]
    fn a_trial_gets_its_starts_then_the_previous_file_is_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = trial(dir.path());
        for start in 1..=MAX_TRIAL_STARTS {
            boot(&files);
            assert_eq!(
                std::fs::read(&files.config).expect("read"),
                b"new",
                "start {start}"
            );
        }
        boot(&files);
        assert_eq!(std::fs::read(&files.config).expect("read"), b"old");
        let state = State::load(&files);
        assert!(state.pending.is_none());
        assert_eq!(state.report(&file_hash(b"old"))["state"], "rolled_back");
        let last = state.last.expect("outcome");
        assert_eq!((last.version, last.result), (4, Result::RolledBack));
        assert!(last.cause.expect("cause").contains("started 3 times"));
    }

    #[test]
    fn an_unloadable_file_is_rolled_back_only_during_a_trial() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = trial(dir.path());
        assert!(roll_back_unloadable(
            &files,
            "agent.toml: node.id: missing\nmore"
        ));
        assert_eq!(std::fs::read(&files.config).expect("read"), b"old");
        assert!(!roll_back_unloadable(&files, "again"), "no trial any more");
    }

    #[test]
    fn reports_say_which_config_runs() {
        let mut state = State::default();
        assert_eq!(state.report("sha256:a")["state"], "local");
        state.applied = Some(Applied {
            version: 2,
            issuer: "root".into(),
            hash: "sha256:a".into(),
        });
        assert_eq!(state.report("sha256:a")["state"], "desired");
        assert_eq!(state.report("sha256:b")["state"], "drifted");
        state.record(3, "hub", Result::Refused).errors = vec!["iot.broker: bad".into()];
        let report = state.report("sha256:a");
        assert_eq!(report["state"], "refused");
        assert_eq!(report["version"], 2);
        assert_eq!(report["desired_version"], 3);
        assert_eq!(report["errors"][0], "iot.broker: bad");
    }
}
