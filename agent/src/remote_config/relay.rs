//! Documents between tiers, besides the node's own: a hub copies the root's documents
//! into its own bucket ([`Relay`]), and the root and hubs announce every document they
//! issue as an `audit.config_issued` event ([`Journal`]).

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use nexus_federation::backoff::{Backoff, Retry};
use nexus_federation::fsutil::write_atomically;
use nexus_federation::outbox::Priority;
use nexus_federation::subsystem::SubsystemError;
use nexus_federation::{Encoding, Envelope, Link, Outbox};
use nexus_policies::{DesiredConfig, PublicKey, SecretKey};
use serde_json::{json, Map};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::state::file_hash;
use super::{bucket, node_of, ISSUED_EVENT};

/// A hub's copy of the root's documents for its members: every document in the root's
/// bucket that a trust anchor signed, unless the hub's own bucket holds a version as new
/// (one the hub issued itself). A member verifies what it gets again.
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
    /// Copies until `shutdown`, watching again after every error.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SubsystemError> {
        let mut retry = Retry::new(Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(15),
        ));
        loop {
            if !self.source.wait_connected(&shutdown).await {
                return Ok(());
            }
            if let Ok(from) = bucket(&self.source, false).await {
                match (
                    from.watch_with_history("desired.>").await,
                    bucket(&self.local, true).await,
                ) {
                    (Ok(mut watch), Ok(to)) => {
                        retry.reset();
                        loop {
                            // Cancel safety: an entry not yet yielded stays in the stream.
                            let entry = tokio::select! {
                                _ = shutdown.cancelled() => return Ok(()),
                                entry = watch.next() => entry,
                            };
                            match entry {
                                Some(Ok(entry)) => self.copy(&to, &entry.key, &entry.value).await,
                                Some(Err(error)) => {
                                    warn!(%error, "Watch of the root's desired config failed; watching again.");
                                    break;
                                }
                                None => break,
                            }
                        }
                    }
                    (Err(error), _) => warn!(%error, "Cannot watch the root's desired config yet."),
                    (_, Err(error)) => {
                        warn!(%error, "Cannot open this hub's desired-config bucket yet.")
                    }
                }
            }
            if !retry.wait(&shutdown).await {
                return Ok(());
            }
        }
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
    /// Announces until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SubsystemError> {
        let mut retry = Retry::new(Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(15),
        ));
        let own = self.key.public();
        loop {
            if !self.local.wait_connected(&shutdown).await {
                return Ok(());
            }
            let after = std::fs::read_to_string(&self.mark)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .unwrap_or(0);
            match bucket(&self.local, true).await {
                Ok(store) => match store.watch_all_from_revision(after + 1).await {
                    Ok(mut watch) => {
                        retry.reset();
                        loop {
                            // Cancel safety: an entry not yet yielded stays in the stream.
                            let entry = tokio::select! {
                                _ = shutdown.cancelled() => return Ok(()),
                                entry = watch.next() => entry,
                            };
                            match entry {
                                Some(Ok(entry)) => {
                                    if entry.revision <= after {
                                        continue;
                                    }
                                    if let Ok(doc) = DesiredConfig::decode(&entry.value) {
                                        if doc.issuer_key() == &own
                                            && !self.announce(&doc, &entry.value).await
                                        {
                                            break;
                                        }
                                    }
                                    if let Err(e) = write_atomically(
                                        &self.mark,
                                        entry.revision.to_string().as_bytes(),
                                        0o640,
                                    ) {
                                        warn!(error = %e, "Cannot record the announced desired-config revision.");
                                    }
                                }
                                Some(Err(error)) => {
                                    warn!(%error, "Watch of this node's desired config failed; watching again.");
                                    break;
                                }
                                None => break,
                            }
                        }
                    }
                    Err(error) => warn!(%error, "Cannot watch this node's desired config yet."),
                },
                Err(error) => warn!(%error, "Cannot open this node's desired-config bucket yet."),
            }
            if !retry.wait(&shutdown).await {
                return Ok(());
            }
        }
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
        let envelope = Envelope::new(
            ISSUED_EVENT,
            &self.node_id,
            None,
            payload,
            OffsetDateTime::now_utc(),
        );
        let seal = envelope.into_sealer(Encoding::Json, self.key.clone());
        match self.outbox.push_numbered(seal, Priority::Control).await {
            Ok(_) => true,
            Err(e) => {
                warn!(error = %e, "Cannot queue the desired-config announcement; trying again.");
                false
            }
        }
    }
}
