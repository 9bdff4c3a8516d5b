//! Agent releases for the update tests and benches (docs/updates.md): the fixtures built by
//! `./dev update-fixtures`, and the `release publish` / `rollout start` CLI at the root.

use std::path::{Path, PathBuf};

use crate::agent::agent_cli;
use crate::bins::agent_bin;
use crate::examples::text;

/// The release fixture `nexus-agent-VERSION` that `./dev update-fixtures` builds beside the
/// debug agent (in `target/update-fixtures/`).
pub fn update_fixture(version: &str) -> PathBuf {
    let bin = agent_bin()
        .parent()
        .and_then(Path::parent)
        .map(|t| {
            t.join("update-fixtures")
                .join(format!("nexus-agent-{version}"))
        })
        .expect("the agent binary lies in a target directory");
    assert!(
        bin.is_file(),
        "{} is missing: build the update fixtures first (./dev update-fixtures; ./dev test does it)",
        bin.display()
    );
    bin
}

/// The target triple of the debug agent, as `nexus-agent --version` names it.
pub fn agent_target() -> String {
    let version = cli_ok(&["--version"]);
    version
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(triple, _)| triple.to_owned())
        .unwrap_or_else(|| panic!("no target in {version}"))
}

/// `nexus-agent release publish` of `bin` as `version` for `target`, signed with the release
/// key at `release_key`, at the root whose config is `root_config`.
pub fn publish_release(
    root_config: &str,
    release_key: &Path,
    bin: &Path,
    target: &str,
    version: &str,
) -> String {
    cli_ok(&[
        "release",
        "publish",
        "-c",
        root_config,
        "--key",
        release_key.to_str().expect("a UTF-8 key path"),
        bin.to_str().expect("a UTF-8 binary path"),
        "--target",
        target,
        "--version",
        version,
    ])
}

/// `nexus-agent rollout start --version VERSION --to PATTERN` at the root.
pub fn start_rollout(root_config: &str, version: &str, to: &str) -> String {
    cli_ok(&[
        "rollout",
        "start",
        "-c",
        root_config,
        "--version",
        version,
        "--to",
        to,
    ])
}

/// A node's `update.json` in its data dir (agent/src/update/state.rs), `Null` while it has
/// none or while it is being replaced.
pub fn update_state(data_dir: &Path) -> serde_json::Value {
    std::fs::read(data_dir.join("update.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Runs the CLI and returns its stdout; panics with its output when it fails.
pub fn cli_ok(args: &[&str]) -> String {
    let out = agent_cli(args);
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
