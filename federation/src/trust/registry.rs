//! The chain registry: the token chains this tier knows by signer key, as presented in its
//! `NEXUS_CHAINS` bucket (fetched when first needed, remembered, replaced when rotated),
//! and [`watch_registry`], which installs a rotated chain as soon as it is written.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use nexus_policies::token::Chain;
use nexus_policies::PublicKey;

use super::{bucket, key_id, Gatekeeper, CHAINS_BUCKET};
use crate::link::Link;
use crate::provenance::SignedEvent;
use crate::refusal::{Reason, Rejection};

/// Most chains remembered by signer key (a fleet larger than this is served by more hubs).
const MAX_KNOWN_CHAINS: usize = 65_536;

/// A presented chain: decoded, its raw bytes (to present it upward unchanged), and when
/// it was fetched (a refused chain is looked up again at most this often).
#[derive(Debug)]
pub(super) struct KnownChain {
    chain: Arc<Chain>,
    bytes: Bytes,
    fetched: std::time::Instant,
    /// The change number ([`Gatekeeper::install`]) when the registry watcher put it here.
    installed: Option<u64>,
    /// Whether admission may rely on it: `false` for a chain fetched while the registry
    /// changed (it may be an old one), kept only to be presented upward with the message
    /// it admitted; the next message fetches again.
    confirmed: bool,
}

/// How long the registry watcher waits for the parent's registry to take a child's new
/// chain before it goes on (the ingress presents it again with the child's next event).
const PRESENT_UP_WITHIN: Duration = Duration::from_secs(2);

impl Gatekeeper {
    /// The signer's chain from the registry (remembered for the next messages).
    pub(super) async fn fetch(
        &self,
        event: &SignedEvent,
        registry: Option<&kv::Store>,
    ) -> Result<Arc<Chain>, Rejection> {
        let unknown = || {
            Rejection::new(
                Reason::TokenUnknown,
                format!("no token chain presented for signer {}", event.signer),
            )
        };
        let registry = registry.ok_or_else(unknown)?;
        let began = self.changes.load(Ordering::Acquire);
        let bytes = match registry.get(key_id(&event.signer)).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(unknown()),
            Err(error) => {
                return Err(Rejection::new(
                    Reason::RegistryUnavailable,
                    error.to_string(),
                ))
            }
        };
        let chain = Arc::new(Chain::decode(&bytes).map_err(|e| Rejection::from(&e))?);
        Ok(self.remember(event.signer.to_bytes(), chain, bytes, began))
    }

    pub(super) fn known_chain(
        &self,
        signer: &[u8; 32],
    ) -> Option<(Arc<Chain>, std::time::Instant)> {
        self.chains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(signer)
            .filter(|known| known.confirmed)
            .map(|known| (Arc::clone(&known.chain), known.fetched))
    }

    /// Remembers a chain whose fetch `began` at that change number, and returns the
    /// signer's chain to use: the one the watcher installed since, if any (the fetch may
    /// have read the registry just before it changed), else the fetched one — relied on
    /// for the next messages only if the watcher saw no change meanwhile (it may have
    /// passed over the signer's new chain, having nothing cached to replace); otherwise it
    /// is kept only to be presented upward, and the next message fetches again.
    pub(super) fn remember(
        &self,
        signer: [u8; 32],
        chain: Arc<Chain>,
        bytes: Bytes,
        began: u64,
    ) -> Arc<Chain> {
        let mut chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = chains.get(&signer) {
            if known.installed.is_some_and(|n| n > began) {
                return Arc::clone(&known.chain);
            }
        }
        let confirmed = self.changes.load(Ordering::Acquire) == began;
        Self::insert(
            &mut chains,
            signer,
            Arc::clone(&chain),
            bytes,
            None,
            confirmed,
        );
        chain
    }

    /// Installs a chain the registry now holds for `signer` (a rotated token, verified by
    /// the caller), in place of the one remembered.
    pub fn install(&self, signer: &PublicKey, chain: Chain, bytes: Bytes) {
        let mut chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
        let installed = self.changes.fetch_add(1, Ordering::AcqRel) + 1;
        Self::insert(
            &mut chains,
            signer.to_bytes(),
            Arc::new(chain),
            bytes,
            Some(installed),
            true,
        );
    }

    /// Notes a registry change that installs nothing (an entry passed over, a watch begun):
    /// chains of fetches in flight are kept unconfirmed (see [`Self::remember`]).
    pub fn registry_changed(&self) {
        // Under the lock, so that no `remember` sits between its check and its insert.
        let _chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    fn insert(
        chains: &mut HashMap<[u8; 32], KnownChain>,
        signer: [u8; 32],
        chain: Arc<Chain>,
        bytes: Bytes,
        installed: Option<u64>,
        confirmed: bool,
    ) {
        if chains.len() >= MAX_KNOWN_CHAINS {
            chains.clear();
        }
        let fetched = std::time::Instant::now();
        chains.insert(
            signer,
            KnownChain {
                chain,
                bytes,
                fetched,
                installed,
                confirmed,
            },
        );
    }

    /// The raw chain bytes of a signer, to present them to the next tier.
    pub fn chain_bytes(&self, signer: &PublicKey) -> Option<Bytes> {
        self.chains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&signer.to_bytes())
            .map(|known| known.bytes.clone())
    }
}

/// Watches this tier's chain registry and installs a new, valid chain presented for a
/// signer in place of the cached one as soon as it is written (a rotated token); a hub also
/// presents it to its parent's registry (`parent`) right away, so that the whole path knows
/// a rotated chain before the old one is revoked. Every (re)start of the watch replays the
/// registry's current entries first, so a chain rotated before the watch began, or while
/// the server was away, is not missed. Entries that do not verify, or are not the named
/// key's, are ignored (a member can write to the registry, and must not make another
/// node's chain be replaced). Runs until `shutdown`, watching again after the server comes
/// back (so it always ends `Ok`).
pub async fn watch_registry(
    link: Link,
    gatekeeper: Arc<Gatekeeper>,
    parent: Option<Link>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), crate::subsystem::SubsystemError> {
    use futures::StreamExt as _;
    while !shutdown.is_cancelled() {
        if !link.wait_connected(&shutdown).await {
            return Ok(());
        }
        // The ingress creates the registry when it is ready; until then, look again.
        let watch = match bucket(&link, CHAINS_BUCKET, false).await {
            Ok(store) => store.watch_with_history(">").await.ok(),
            Err(_) => None,
        };
        if let Some(mut updates) = watch {
            // Fetches in flight may have read what the replay is about to pass over.
            gatekeeper.registry_changed();
            loop {
                let update = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    update = updates.next() => update,
                };
                let Some(Ok(entry)) = update else { break };
                if entry.operation != kv::Operation::Put {
                    continue;
                }
                let key = URL_SAFE_NO_PAD
                    .decode(entry.key.as_bytes())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .and_then(|b| PublicKey::from_bytes(&b).ok());
                let Some(key) = key else { continue };
                let cached = gatekeeper.chain_bytes(&key);
                if cached.as_ref() == Some(&entry.value) {
                    continue; // what this tier already uses
                }
                if cached.is_none() && !entry.seen_current {
                    // Replayed, never used here: fetched when first needed.
                    gatekeeper.registry_changed();
                    continue;
                }
                let valid = Chain::decode(&entry.value).ok().filter(|chain| {
                    gatekeeper
                        .verify_now(chain)
                        .is_ok_and(|grant| grant.node_key() == &key)
                });
                if let Some(chain) = valid {
                    tracing::debug!(key_id = %entry.key, "A new token chain in the registry; it replaces the one in use.");
                    gatekeeper.install(&key, chain, entry.value.clone());
                    // A parent that is away is not waited for: the ingress presents the
                    // chain with the child's next event.
                    if let Some(parent) = parent.as_ref().filter(|p| p.state().connected) {
                        let put = async {
                            bucket(parent, CHAINS_BUCKET, false)
                                .await?
                                .put(&entry.key, entry.value.clone())
                                .await?;
                            Ok::<_, async_nats::Error>(())
                        };
                        let presented = match tokio::time::timeout(PRESENT_UP_WITHIN, put).await {
                            Ok(result) => result.map_err(|e| e.to_string()),
                            Err(_) => Err(format!("no answer within {PRESENT_UP_WITHIN:?}")),
                        };
                        if let Err(error) = presented {
                            tracing::debug!(%error, key_id = %entry.key, "Cannot present a child's new chain upward yet; it goes with the child's next event.");
                        }
                    }
                } else {
                    tracing::warn!(key_id = %entry.key, "A chain presented in the registry does not verify for its key; ignored.");
                }
            }
        }
        if !crate::backoff::sleep(Duration::from_secs(1), &shutdown).await {
            return Ok(());
        }
    }
    Ok(())
}
