//! Agent updates over NATS (docs/updates.md): releases signed by a release key, stored in
//! the root's object store; rollouts signed by the root; hubs (and the root, for its hubs)
//! cache the releases their children need and start installs in waves; each node
//! downloads, verifies and installs a release beside the running binary and keeps it only
//! when it comes up healthy.
//!
//! Where things are, on each tier's own NATS:
//! - object store `NEXUS_RELEASES`: `nexus-agent-{version}-{target}`;
//! - key-value bucket `NEXUS_UPDATES`: `manifest.{version}.{target}` (the signed manifest),
//!   `rollout` (the signed rollout record), `go.{node}` (the rollout record again, put by
//!   the tier above when the node's wave starts).
//!
//! # Layout
//! - [`state`]: the slots (`{data_dir}/bin/`), the state file, the start-time switch.
//! - [`install`]: the subsystem that installs what `go.{node}` says, and judges the trial.
//! - [`waves`]: (hub, root) the rollout's copy, the release cache, the waves.
//! - [`cmd`]: `release publish | list | show`, `rollout start | status | pause | resume |
//!   abort`.

pub mod cmd;
pub mod install;
pub mod state;
pub mod waves;

use async_nats::jetstream::{kv, object_store};
use nexus_federation::Link;
use nexus_policies::{AgentVersion, Principal, RolloutSpec};
use sha2::{Digest as _, Sha256};

/// The object store of release binaries.
pub const OBJECTS: &str = "NEXUS_RELEASES";
/// The bucket of manifests, the rollout and wave starts.
pub const BUCKET: &str = "NEXUS_UPDATES";
/// The rollout record's key.
pub const ROLLOUT_KEY: &str = "rollout";
/// The version this binary reports.
pub const VERSION: &str = env!("NEXUS_AGENT_VERSION");
/// The target triple this binary is built for.
pub const TARGET: &str = env!("NEXUS_AGENT_TARGET");

/// This binary's version.
pub fn version() -> AgentVersion {
    AgentVersion::parse(VERSION).unwrap_or(AgentVersion(0, 0, 0))
}

/// A manifest's key.
pub fn manifest_key(version: AgentVersion, target: &str) -> String {
    format!("manifest.{version}.{target}")
}

/// A release binary's object name.
pub fn object_name(version: AgentVersion, target: &str) -> String {
    format!("nexus-agent-{version}-{target}")
}

/// The key that starts `node`'s install.
pub fn go_key(node: &str) -> String {
    format!("go.{node}")
}

/// Whether `rollout` is for `node`: its id matches `to`, and the node is in the rollout's
/// share (`percent`, by a stable hash of the id).
pub fn selected(node: &str, rollout: &RolloutSpec) -> bool {
    let matches = Principal::parse(&rollout.to).is_ok_and(|p| p.matches(node));
    let digest = Sha256::digest(node.as_bytes());
    let bucket = u16::from_be_bytes([digest[0], digest[1]]) % 100;
    matches && bucket < u16::from(rollout.percent)
}

/// `sha256:{hex}`.
pub fn hex_digest(bytes: &[u8; 32]) -> String {
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256:");
    for byte in bytes {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Opens the bucket on `link`, creating it when `create` (a tier's own NATS).
pub async fn bucket(link: &Link, create: bool) -> Result<kv::Store, async_nats::Error> {
    let config = kv::Config {
        bucket: BUCKET.to_owned(),
        description: "nexus-agent release manifests, rollouts, wave starts".to_owned(),
        history: 1,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    };
    nexus_federation::trust::open_or_create(link, config, create).await
}

/// Opens the object store on `link`, creating it when `create`.
pub async fn objects(
    link: &Link,
    create: bool,
) -> Result<object_store::ObjectStore, async_nats::Error> {
    let js = link.jetstream();
    match js.get_object_store(OBJECTS).await {
        Ok(store) => Ok(store),
        Err(error) if !create => Err(error.into()),
        Err(_) => Ok(js
            .create_object_store(object_store::Config {
                bucket: OBJECTS.to_owned(),
                description: Some("nexus-agent release binaries (docs/updates.md)".to_owned()),
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_policies::{RolloutState, UnixTime};

    #[test]
    fn a_rollout_selects_by_glob_and_share() {
        let mut rollout = RolloutSpec {
            id: 1,
            version: AgentVersion(0, 2, 0),
            to: "edge-*".into(),
            percent: 100,
            max_failures: 0,
            allow_downgrade: false,
            state: RolloutState::Active,
            issued_at: UnixTime(0),
        };
        assert!(selected("edge-01", &rollout));
        assert!(!selected("hub-01", &rollout));
        rollout.percent = 50;
        let share = (0..1000)
            .filter(|i| selected(&format!("edge-{i}"), &rollout))
            .count();
        assert!((400..600).contains(&share), "about half: {share}");
    }
}
