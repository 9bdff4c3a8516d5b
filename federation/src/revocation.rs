//! Revocations travel down the tree.
//!
//! The root's operator puts a signed revocation list (see `nexus-agent token revoke`) into
//! the `revocations` key of the root's `NEXUS_TRUST` bucket. Every agent watches that key
//! on the tier above it (the root: on its own server), verifies the list against its trust
//! anchors, persists it under `trust.revocations_file` (so it is honoured while offline
//! and after a restart), applies it, and (hub, root) republishes it in its own bucket for
//! the tier below. A list older than the one held is ignored, so a replayed old list cannot
//! un-revoke anything.

use bytes::Bytes;
use nexus_policies::token::{RevocationList, RevocationSet};
use nexus_policies::PublicKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::follow::{follow, Follower, Next};
use crate::link::Link;
use crate::subsystem::SubsystemError;
use crate::trust::{self, Gatekeeper};

/// Loads and verifies a persisted revocation list; `None` when absent or invalid (said so).
pub fn load(path: &Path, anchors: &[PublicKey]) -> Option<(RevocationList, RevocationSet)> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            warn!(path = %path.display(), %error, "Cannot read the revocation list; starting without it.");
            return None;
        }
    };
    match RevocationList::decode(&bytes)
        .and_then(|list| list.verify(anchors).map(|set| (list, set)))
    {
        Ok(loaded) => Some(loaded),
        Err(error) => {
            warn!(path = %path.display(), %error, "The persisted revocation list does not verify; ignoring it.");
            None
        }
    }
}

/// What to do with a new list besides keeping it.
#[derive(Debug, Clone)]
pub struct Sync {
    /// Where lists come from: the tier above (the root: its own server).
    pub source: Link,
    /// Where to republish for the tier below (hub and root: their own server).
    pub republish: Option<Link>,
    /// The trust anchors that must have signed the list.
    pub anchors: Vec<PublicKey>,
    /// Where the list is persisted.
    pub path: PathBuf,
    /// Whether this agent creates the bucket on `source` (the root, which owns it).
    pub owns_source: bool,
    /// The gatekeeper to update (hub, root).
    pub gatekeeper: Option<Arc<Gatekeeper>>,
    /// This node's own chain (current, after rotations), to say loudly when one of its
    /// tokens is revoked.
    pub own: crate::trust::OwnChain,
}

impl Sync {
    /// Watches for new lists until `shutdown` ([`follow`]: it always ends `Ok`).
    pub async fn run(
        self,
        initial: Option<RevocationList>,
        shutdown: CancellationToken,
    ) -> Result<(), SubsystemError> {
        let mut following = Following {
            sync: &self,
            current: initial,
        };
        follow(&self.source, "revocations", &shutdown, &mut following).await
    }

    async fn apply(&self, bytes: &Bytes, current: &mut Option<RevocationList>) {
        if bytes.is_empty() {
            return; // a delete or purge marker
        }
        let (list, set) = match RevocationList::decode(bytes)
            .and_then(|l| l.verify(&self.anchors).map(|s| (l, s)))
        {
            Ok(verified) => verified,
            Err(error) => {
                warn!(%error, "A revocation list that does not verify was ignored.");
                return;
            }
        };
        if current
            .as_ref()
            .is_some_and(|held| held.issued_at() > list.issued_at())
        {
            warn!(
                held = held_at(current),
                offered = list.issued_at().0,
                "An older revocation list was ignored."
            );
            return;
        }
        let changed = current
            .as_ref()
            .is_none_or(|held| held.encode() != list.encode());
        if changed {
            if let Err(error) = crate::fsutil::write_atomically(&self.path, &list.encode(), 0o644) {
                error!(path = %self.path.display(), %error, "Cannot persist the revocation list; it applies until restart only.");
            }
            info!(
                revoked = set.len(),
                issued_at = list.issued_at().0,
                "Revocation list applied."
            );
            for id in &self.own.token_ids() {
                if set.contains(id) {
                    error!(token_id = %id, "This node's token is revoked: the tier above will refuse its events. Issue a new token.");
                }
            }
        }
        if let Some(gatekeeper) = &self.gatekeeper {
            gatekeeper.set_revoked(set);
        }
        if let Some(down) = &self.republish {
            if let Err(error) = republish(down, &list).await {
                warn!(%error, "Cannot republish the revocation list to the tier below yet.");
            }
        }
        *current = Some(list);
    }
}

/// The revocation key on the tier above, and the list held.
struct Following<'a> {
    sync: &'a Sync,
    current: Option<RevocationList>,
}

impl Follower for Following<'_> {
    type With = ();

    async fn open(&mut self) -> Result<(async_nats::jetstream::kv::Watch, ()), String> {
        let store = trust::bucket(
            &self.sync.source,
            trust::TRUST_BUCKET,
            self.sync.owns_source,
        )
        .await
        .map_err(|e| format!("no revocation bucket on the tier above: {e}"))?;
        let watch = store
            .watch_with_history(trust::REVOCATIONS_KEY)
            .await
            .map_err(|e| e.to_string())?;
        Ok((watch, ()))
    }

    async fn handle(&mut self, _: &(), entry: async_nats::jetstream::kv::Entry) -> Next {
        self.sync.apply(&entry.value, &mut self.current).await;
        Next::More
    }
}

fn held_at(current: &Option<RevocationList>) -> i64 {
    current.as_ref().map_or(0, |l| l.issued_at().0)
}

async fn republish(link: &Link, list: &RevocationList) -> Result<(), async_nats::Error> {
    let store = trust::bucket(link, trust::TRUST_BUCKET, true).await?;
    let encoded = Bytes::from(list.encode());
    if store.get(trust::REVOCATIONS_KEY).await?.as_ref() != Some(&encoded) {
        store.put(trust::REVOCATIONS_KEY, encoded).await?;
    }
    Ok(())
}
