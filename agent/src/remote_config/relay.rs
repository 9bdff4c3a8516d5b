//! Documents between tiers, besides the node's own: a hub copies the root's documents
//! into its own bucket ([`Relay`]), and the root and hubs announce every document they
//! issue as an `audit.config_issued` event ([`Journal`]).

use std::path::PathBuf;

use async_nats::jetstream::kv;
use nexus_federation::follow::{follow, Follower, Next};
use nexus_federation::fsutil::write_atomically;
use nexus_federation::subsystem::SubsystemError;
use nexus_federation::{Link, Outbox};
use nexus_policies::{DesiredConfig, PublicKey, SecretKey};
use serde_json::{json, Map};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::state::file_hash;
use super::{bucket, node_of, queue_event, ISSUED_EVENT};

/// A hub's copy of the root's documents for its members: every document in the root's
/// bucket that a trust anchor signed, unless the hub's own bucket holds a version as new
/// (one the hub issued itself). A member verifies what it gets again.
#[derive(Debug)]
pub struct Relay {
    /// The root's NATS.
    pub source: Link,
    /// The hub's own NATS.
    pub local: Link,
    /// This hub's id (its own document is its applier's).
    pub node_id: String,
    /// The trust anchors.
    pub anchors: Vec<PublicKey>,
}

impl Relay {
    /// Copies until `shutdown` ([`follow`]).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SubsystemError> {
        follow(
            &self.source,
            "the root's desired config",
            &shutdown,
            &mut &self,
        )
        .await
    }

    async fn copy(&self, to: &kv::Store, key: &str, bytes: &[u8]) {
        let Some(node) = node_of(key) else { return };
        if node == self.node_id || bytes.is_empty() {
            return;
        }
        let doc = match DesiredConfig::decode(bytes).and_then(|d| d.verify().map(|()| d)) {
            Ok(doc) if self.anchors.contains(doc.issuer_key()) && doc.spec().node == node => doc,
            Ok(_) => {
                warn!(%key, "A desired-config document in the root's bucket not signed by a trust anchor was not copied.");
                return;
            }
            Err(error) => {
                warn!(%key, %error, "A desired-config document in the root's bucket does not verify; not copied.");
                return;
            }
        };
        let held = match to.get(key).await {
            Ok(held) => held.and_then(|b| DesiredConfig::decode(&b).ok()),
            Err(error) => {
                warn!(%key, %error, "Cannot read this hub's desired config; the root's copy waits.");
                return;
            }
        };
        if held.is_some_and(|h| h.spec().version >= doc.spec().version) {
            return;
        }
        match to.put(key, bytes.to_vec().into()).await {
            Ok(_) => info!(
                node,
                version = doc.spec().version,
                "Root's desired config copied for this site."
            ),
            Err(error) => warn!(%key, %error, "Cannot copy the root's desired config."),
        }
    }
}

/// Announces each document this node issued into its own bucket as an
/// `audit.config_issued` event, through the outbox (so the root gets a hub's documents
/// once the hub reaches it again). The last announced bucket revision is kept in
/// `{data_dir}/config-issued.rev`.
#[derive(Debug)]
pub struct Journal {
    /// This node's own NATS.
    pub local: Link,
    /// This node's id and key.
    pub node_id: String,
    /// Its key: documents it signed are its own.
    pub key: SecretKey,
    /// Where events are queued.
    pub outbox: Outbox,
    /// The revision file.
    pub mark: PathBuf,
}

impl Journal {
    /// Announces until `shutdown` ([`follow`]).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SubsystemError> {
        follow(
            &self.local,
            "this node's desired-config bucket",
            &shutdown,
            &mut &self,
        )
        .await
    }

    /// Queues the event; `false` when the outbox refused it (tried again later).
    async fn announce(&self, doc: &DesiredConfig, bytes: &[u8]) -> bool {
        let spec = doc.spec();
        let mut payload = Map::new();
        payload.insert("node_id".into(), json!(spec.node));
        payload.insert("version".into(), json!(spec.version));
        payload.insert("issuer".into(), json!(spec.issuer_id));
        payload.insert("issued_at".into(), json!(spec.issued_at.0));
        payload.insert(
            "sections".into(),
            match &spec.patch {
                Some(sections) => json!(sections),
                None => json!(null),
            },
        );
        payload.insert("toml".into(), json!(spec.toml));
        payload.insert("document_hash".into(), json!(file_hash(bytes)));
        match queue_event(
            &self.outbox,
            &self.key,
            &self.node_id,
            ISSUED_EVENT,
            payload,
        )
        .await
        {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "Cannot queue the desired-config announcement; trying again.");
                false
            }
        }
    }
}

impl Follower for &Relay {
    /// This hub's bucket.
    type With = kv::Store;

    async fn open(&mut self) -> Result<(kv::Watch, kv::Store), String> {
        let from = bucket(&self.source, false)
            .await
            .map_err(|e| format!("no desired-config bucket at the root: {e}"))?;
        let to = bucket(&self.local, true)
            .await
            .map_err(|e| format!("cannot open this hub's desired-config bucket: {e}"))?;
        let watch = from
            .watch_with_history("desired.>")
            .await
            .map_err(|e| e.to_string())?;
        Ok((watch, to))
    }

    async fn handle(&mut self, to: &kv::Store, entry: kv::Entry) -> Next {
        self.copy(to, &entry.key, &entry.value).await;
        Next::More
    }
}

impl Follower for &Journal {
    /// The last revision announced when the watch opened.
    type With = u64;

    async fn open(&mut self) -> Result<(kv::Watch, u64), String> {
        let after = std::fs::read_to_string(&self.mark)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let store = bucket(&self.local, true).await.map_err(|e| e.to_string())?;
        let watch = store
            .watch_all_from_revision(after + 1)
            .await
            .map_err(|e| e.to_string())?;
        Ok((watch, after))
    }

    async fn handle(&mut self, after: &u64, entry: kv::Entry) -> Next {
        if entry.revision <= *after {
            return Next::More;
        }
        if let Ok(doc) = DesiredConfig::decode(&entry.value) {
            if doc.issuer_key() == &self.key.public() && !self.announce(&doc, &entry.value).await {
                return Next::Rewatch; // from the mark: tried again
            }
        }
        let mark = entry.revision.to_string();
        if let Err(e) = write_atomically(&self.mark, mark.as_bytes(), 0o640) {
            warn!(error = %e, "Cannot record the announced desired-config revision.");
        }
        Next::More
    }
}
