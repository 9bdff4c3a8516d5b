//! The rollout at a tier with children (hub; the root for its hubs): the copy of the
//! root's rollout record, the cache of the releases its children need, and the waves.
//!
//! Every second: a hub copies the root's `rollout` (verified) into its own bucket, so the
//! rollout goes on while the hub is cut off from the root. While the rollout is active,
//! the children it selects that do not run its version are started in waves — 1, then as
//! many as were started before (1, 1, 2, 4, …) — each wave once the previous one has
//! finished (every child of it runs the version, or failed). A child's install starts when
//! the tier puts the rollout record in `go.{child}`. A tier stops starting waves by itself
//! when more than `max_failures` of its children refused or rolled back the release. A
//! paused or aborted record is written over the `go` keys of children that have not
//! finished, so that they do not start.
//!
//! Before the first `go` for a target, a hub copies the release (manifest and binary) from
//! the root into its own stores, checking the manifest's signature and the binary's size
//! and SHA-256 on the way: one download per site. The children check everything again.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use nexus_federation::subsystem::SubsystemError;
use nexus_federation::Link;
use nexus_policies::{AgentVersion, PublicKey, ReleaseManifest, Rollout, RolloutState};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{bucket, go_key, manifest_key, object_name, objects, selected, ROLLOUT_KEY};
use crate::page::Board;

/// How often the waves are looked at.
const TICK: Duration = Duration::from_secs(1);

/// The rollout at one tier.
pub struct Waves {
    /// This node.
    pub node_id: String,
    /// Its data dir (the release cache's temporary files).
    pub data_dir: PathBuf,
    /// The root's NATS (a hub); none at the root.
    pub source: Option<Link>,
    /// This tier's own NATS.
    pub local: Link,
    /// The trust anchors (rollouts).
    pub anchors: Vec<PublicKey>,
    /// The release keys (manifests).
    pub release_keys: Vec<PublicKey>,
    /// The children's last heartbeats.
    pub board: Board,
}

/// What a tier remembers of the rollout between ticks.
#[derive(Default)]
struct Memo {
    /// The rollout the rest is about.
    rollout: u64,
    /// Children started (their `go` key written) in it.
    started: BTreeSet<String>,
    /// Whether the `go` keys were read back after a start of the agent.
    loaded: bool,
    /// Whether the halt was said.
    halted: bool,
    /// The last problem said (said once until it changes).
    said: Option<String>,
}

/// A child as its last heartbeat shows it.
struct Child {
    id: String,
    version: Option<AgentVersion>,
    update: Value,
}

impl Waves {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SubsystemError> {
        let mut memo = Memo::default();
        loop {
            // Cancel safety: a timer only.
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(TICK) => {}
            }
            if !self.local.state().connected {
                continue;
            }
            if let Err(problem) = self.tick(&mut memo).await {
                if memo.said.as_deref() != Some(problem.as_str()) {
                    warn!(%problem, "Rollout: cannot go on yet.");
                    memo.said = Some(problem);
                }
            } else {
                memo.said = None;
            }
        }
    }

    async fn tick(&self, memo: &mut Memo) -> Result<(), String> {
        let store = bucket(&self.local, true).await.map_err(|e| e.to_string())?;
        if let Some(source) = self.source.as_ref().filter(|s| s.state().connected) {
            self.copy_rollout(source, &store).await;
        }
        let Some(bytes) = store.get(ROLLOUT_KEY).await.map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let rollout = Rollout::decode(&bytes)
            .and_then(|r| r.verify(&self.anchors).map(|()| r))
            .map_err(|e| format!("the rollout record does not verify: {e}"))?;
        let spec = rollout.spec();
        if memo.rollout != spec.id {
            *memo = Memo {
                rollout: spec.id,
                ..Memo::default()
            };
        }
        if !memo.loaded {
            memo.started = self.started_in(&store, spec.id).await;
            memo.loaded = true;
        }
        let children = self.children();
        let pending: Vec<&Child> = children
            .iter()
            .filter(|c| selected(&c.id, spec) && c.version != Some(spec.version))
            .collect();
        if spec.state != RolloutState::Active {
            // Children started but not finished must not start now.
            for child in pending.iter().filter(|c| memo.started.contains(&c.id)) {
                let held = store.get(go_key(&child.id)).await.ok().flatten();
                if held.as_deref() != Some(&bytes[..]) {
                    let _ = store.put(go_key(&child.id), bytes.clone()).await;
                }
            }
            return Ok(());
        }
        let release = spec.version.to_string();
        let failed: BTreeSet<&str> = pending
            .iter()
            .filter(|c| {
                c.update["rollout"].as_u64() == Some(spec.id)
                    && c.update["release"].as_str() == Some(release.as_str())
                    && matches!(c.update["state"].as_str(), Some("refused" | "rolled_back"))
            })
            .map(|c| c.id.as_str())
            .collect();
        if failed.len() > spec.max_failures as usize {
            if !memo.halted {
                memo.halted = true;
                warn!(
                    rollout = spec.id,
                    failed = failed.len(),
                    max_failures = spec.max_failures,
                    nodes = ?failed,
                    "Rollout halted at this tier: more children failed than it allows."
                );
            }
            return Ok(());
        }
        let in_flight = pending
            .iter()
            .any(|c| memo.started.contains(&c.id) && !failed.contains(c.id.as_str()));
        if in_flight {
            return Ok(());
        }
        let wave = memo.started.len().max(1);
        let next: Vec<&&Child> = pending
            .iter()
            .filter(|c| !memo.started.contains(&c.id) && !failed.contains(c.id.as_str()))
            .take(wave)
            .collect();
        for child in next {
            let Some(target) = child.update["target"].as_str() else {
                continue; // an agent without updates
            };
            self.ensure_cached(spec.version, target).await?;
            store
                .put(go_key(&child.id), bytes.clone())
                .await
                .map_err(|e| format!("cannot start {}'s install: {e}", child.id))?;
            memo.started.insert(child.id.clone());
            info!(rollout = spec.id, node = %child.id, release = %release, wave, "Rollout: install started.");
        }
        Ok(())
    }

    /// The root's record into this hub's bucket, when it verifies and differs.
    async fn copy_rollout(&self, source: &Link, store: &kv::Store) {
        let Ok(root) = bucket(source, false).await else {
            return;
        };
        let Ok(Some(bytes)) = root.get(ROLLOUT_KEY).await else {
            return;
        };
        if Rollout::decode(&bytes)
            .and_then(|r| r.verify(&self.anchors))
            .is_err()
        {
            return;
        }
        if store.get(ROLLOUT_KEY).await.ok().flatten().as_deref() != Some(&bytes[..]) {
            if let Err(e) = store.put(ROLLOUT_KEY, bytes).await {
                warn!(error = %e, "Cannot copy the root's rollout.");
            }
        }
    }

    /// Children whose `go` key holds rollout `id`.
    async fn started_in(&self, store: &kv::Store, id: u64) -> BTreeSet<String> {
        let mut started = BTreeSet::new();
        let Ok(mut keys) = store.keys().await else {
            return started;
        };
        let mut found = Vec::new();
        while let Some(Ok(key)) = keys.next().await {
            if let Some(node) = key.strip_prefix("go.") {
                found.push(node.to_owned());
            }
        }
        for node in found {
            if let Ok(Some(bytes)) = store.get(go_key(&node)).await {
                if Rollout::decode(&bytes).is_ok_and(|r| r.spec().id == id) {
                    started.insert(node);
                }
            }
        }
        started
    }

    /// This tier's direct children, from their last heartbeats.
    fn children(&self) -> Vec<Child> {
        let mut by_id: BTreeMap<String, Child> = BTreeMap::new();
        for (id, row) in self.board.rows().into_iter().skip(1) {
            let parent = row["parent"].as_str();
            if parent.is_some_and(|p| p != self.node_id) {
                continue;
            }
            let health = &row["health"];
            by_id.insert(
                id.clone(),
                Child {
                    version: health["agent_version"]
                        .as_str()
                        .and_then(|v| AgentVersion::parse(v).ok()),
                    update: health["update"].clone(),
                    id,
                },
            );
        }
        by_id.into_values().collect()
    }

    /// The release for `target` in this tier's stores: at the root, it must be there; a
    /// hub copies it from the root, verified.
    async fn ensure_cached(&self, version: AgentVersion, target: &str) -> Result<(), String> {
        let store = bucket(&self.local, true).await.map_err(|e| e.to_string())?;
        let local_objects = objects(&self.local, true)
            .await
            .map_err(|e| e.to_string())?;
        let key = manifest_key(version, target);
        let name = object_name(version, target);
        if let Ok(Some(bytes)) = store.get(&key).await {
            if let Ok(manifest) = ReleaseManifest::decode(&bytes) {
                if local_objects
                    .info(&name)
                    .await
                    .is_ok_and(|i| i.size as u64 == manifest.spec().size)
                {
                    return Ok(());
                }
            }
        }
        let Some(source) = &self.source else {
            return Err(format!("release {version} for {target} is not published here: `nexus-agent release publish`"));
        };
        if self.release_keys.is_empty() {
            return Err(
                "this hub has no trust.release_keys: it cannot check releases for its members"
                    .to_owned(),
            );
        }
        let root_store = bucket(source, false).await.map_err(|e| e.to_string())?;
        let bytes = root_store
            .get(&key)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no release {version} for {target} at the root"))?;
        let manifest = ReleaseManifest::decode(&bytes).map_err(|e| e.to_string())?;
        manifest.verify(&self.release_keys).map_err(|e| {
            format!("the root's manifest of {name} is not signed by a release key: {e}")
        })?;
        let spec = manifest.spec().clone();
        let root_objects = objects(source, false).await.map_err(|e| e.to_string())?;
        let mut object = root_objects
            .get(&name)
            .await
            .map_err(|e| format!("cannot fetch {name} from the root: {e}"))?;
        let dir = self.data_dir.join("release-cache");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join(&name);
        let mut file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buffer = vec![0u8; 128 * 1024];
        loop {
            let n = object
                .read(&mut buffer)
                .await
                .map_err(|e| format!("fetching {name} broke off: {e}"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            file.write_all(&buffer[..n]).map_err(|e| e.to_string())?;
            size += n as u64;
        }
        let digest: [u8; 32] = hasher.finalize().into();
        if size != spec.size || digest != spec.sha256 {
            let _ = std::fs::remove_file(&path);
            return Err(format!(
                "{name} from the root does not match its manifest: not cached"
            ));
        }
        file.sync_all().map_err(|e| e.to_string())?;
        let mut reader = tokio::fs::File::open(&path)
            .await
            .map_err(|e| e.to_string())?;
        local_objects
            .put(name.as_str(), &mut reader)
            .await
            .map_err(|e| format!("cannot cache {name}: {e}"))?;
        store.put(&key, bytes).await.map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&path);
        info!(release = %name, bytes = size, "Release cached for this site.");
        Ok(())
    }
}
