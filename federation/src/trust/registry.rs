//! The chain registry: the token chains this tier knows by signer key, as presented in its
//! `NEXUS_CHAINS` bucket (fetched when first needed, remembered, replaced when rotated),
//! and [`watch_registry`], which installs a rotated chain as soon as it is written.
//!
//! What is remembered is bounded ([`KnownChains`]): at most [`MAX_KNOWN_CHAINS`] signers
//! (the least recently used goes first), and a chain unused for [`CHAIN_IDLE`] is forgotten
//! (a member that is gone, or the old key of one that rotated its key); its signer's next
//! event reads the registry again.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
pub const MAX_KNOWN_CHAINS: usize = 65_536;
/// A chain unused this long is forgotten: a live node uses its chain at every heartbeat.
pub const CHAIN_IDLE: Duration = Duration::from_secs(3600);
/// How often the remembered chains are looked through for idle ones.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A presented chain with a token expired this long is removed from the registry: it can
/// never admit anything again (a node with a new token presents that one).
pub const PURGE_EXPIRED_AFTER: Duration = Duration::from_secs(86_400);
/// How often the registry watch is begun again, its replay reviewing every entry.
const REVIEW_EVERY: Duration = Duration::from_secs(6 * 3600);

/// Whether a token of `chain` expired more than [`PURGE_EXPIRED_AFTER`] before `now`
/// (unix seconds).
pub(super) fn long_expired(chain: &Chain, now: i64) -> bool {
    let margin = i64::try_from(PURGE_EXPIRED_AFTER.as_secs()).unwrap_or(i64::MAX);
    chain
        .tokens()
        .iter()
        .any(|token| token.claims().expires.0.saturating_add(margin) < now)
}

/// How long the registry watcher waits for the parent's registry to take a child's new
/// chain before it goes on (the ingress presents it again with the child's next event).
const PRESENT_UP_WITHIN: Duration = Duration::from_secs(2);

/// A presented chain: decoded, its raw bytes (to present it upward unchanged), and when
/// it was fetched (a refused chain is looked up again at most this often).
#[derive(Debug)]
pub(super) struct KnownChain {
    pub(super) chain: Arc<Chain>,
    pub(super) bytes: Bytes,
    pub(super) fetched: Instant,
    /// When admission last used it (for [`CHAIN_IDLE`] and the eviction at the cap).
    used: Instant,
    /// The change number ([`Gatekeeper::install`]) when the registry watcher put it here.
    pub(super) installed: Option<u64>,
    /// Whether admission may rely on it: `false` for a chain fetched while the registry
    /// changed (it may be an old one), kept only to be presented upward with the message
    /// it admitted; the next message fetches again.
    pub(super) confirmed: bool,
}

/// The chains remembered by signer key: at most `capacity` (the least recently used one
/// goes to make room), each forgotten once unused for `idle`. Pure (the caller passes the
/// time), so that its bounds are tested without waiting.
#[derive(Debug)]
pub struct KnownChains {
    entries: HashMap<[u8; 32], KnownChain>,
    capacity: usize,
    idle: Duration,
    swept: Instant,
}

impl KnownChains {
    /// Room for `capacity` chains (at least one), each kept while used within `idle`.
    pub fn new(capacity: usize, idle: Duration, now: Instant) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            idle,
            swept: now,
        }
    }

    /// The signer's chain, marked used at `now`.
    pub(super) fn used(&mut self, signer: &[u8; 32], now: Instant) -> Option<&KnownChain> {
        let known = self.entries.get_mut(signer)?;
        known.used = now;
        Some(known)
    }

    /// The signer's chain, not marked used.
    pub(super) fn peek(&self, signer: &[u8; 32]) -> Option<&KnownChain> {
        self.entries.get(signer)
    }

    /// Remembers `chain` for `signer` (replacing its previous one); at the cap, the least
    /// recently used other chain is forgotten first. Returns the chains forgotten.
    pub(super) fn insert(
        &mut self,
        signer: [u8; 32],
        chain: Arc<Chain>,
        bytes: Bytes,
        installed: Option<u64>,
        confirmed: bool,
        now: Instant,
    ) -> Vec<Arc<Chain>> {
        let mut forgotten = self.expire(now);
        if !self.entries.contains_key(&signer) && self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, known)| known.used)
                .map(|(key, _)| *key);
            if let Some(known) = oldest.and_then(|key| self.entries.remove(&key)) {
                forgotten.push(known.chain);
            }
        }
        let known = KnownChain {
            chain,
            bytes,
            fetched: now,
            used: now,
            installed,
            confirmed,
        };
        let new_bytes = known.bytes.clone();
        if let Some(old) = self.entries.insert(signer, known) {
            if old.bytes != new_bytes {
                forgotten.push(old.chain);
            }
        }
        forgotten
    }

    /// Forgets the chains unused for `idle` (looking at most once per [`SWEEP_EVERY`]);
    /// returns them.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Arc<Chain>> {
        if now.saturating_duration_since(self.swept) < SWEEP_EVERY.min(self.idle) {
            return Vec::new();
        }
        self.swept = now;
        let idle = self.idle;
        let mut forgotten = Vec::new();
        self.entries.retain(|_, known| {
            let keep = now.saturating_duration_since(known.used) < idle;
            if !keep {
                forgotten.push(Arc::clone(&known.chain));
            }
            keep
        });
        forgotten
    }

    /// How many chains are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The raw bytes of the chains remembered (the decoded chain takes about as much
    /// again; docs/architecture.md, "Per-member state").
    pub fn bytes(&self) -> usize {
        self.entries.values().map(|known| known.bytes.len()).sum()
    }
}

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

    /// The signer's chain, if admission may rely on it, and when it was fetched; marks it
    /// used, and forgets the chains idle for [`CHAIN_IDLE`] once per sweep.
    pub(super) fn known_chain(&self, signer: &[u8; 32]) -> Option<(Arc<Chain>, Instant)> {
        let now = Instant::now();
        let (known, forgotten) = {
            let mut chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
            let forgotten = chains.expire(now);
            let known = chains
                .used(signer, now)
                .filter(|known| known.confirmed)
                .map(|known| (Arc::clone(&known.chain), known.fetched));
            (known, forgotten)
        };
        self.forget_verified(&forgotten);
        known
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
        let forgotten = {
            let mut chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(known) = chains.peek(&signer) {
                if known.installed.is_some_and(|n| n > began) {
                    return Arc::clone(&known.chain);
                }
            }
            let confirmed = self.changes.load(Ordering::Acquire) == began;
            chains.insert(
                signer,
                Arc::clone(&chain),
                bytes,
                None,
                confirmed,
                Instant::now(),
            )
        };
        self.forget_verified(&forgotten);
        chain
    }

    /// Installs a chain the registry now holds for `signer` (a rotated token, verified by
    /// the caller), in place of the one remembered.
    pub fn install(&self, signer: &PublicKey, chain: Chain, bytes: Bytes) {
        let forgotten = {
            let mut chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
            let installed = self.changes.fetch_add(1, Ordering::AcqRel) + 1;
            chains.insert(
                signer.to_bytes(),
                Arc::new(chain),
                bytes,
                Some(installed),
                true,
                Instant::now(),
            )
        };
        self.forget_verified(&forgotten);
    }

    /// Notes a registry change that installs nothing (an entry passed over, a watch begun):
    /// chains of fetches in flight are kept unconfirmed (see [`Self::remember`]).
    pub fn registry_changed(&self) {
        // Under the lock, so that no `remember` sits between its check and its insert.
        let _chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// The raw chain bytes of a signer, to present them to the next tier.
    pub fn chain_bytes(&self, signer: &PublicKey) -> Option<Bytes> {
        self.chains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .peek(&signer.to_bytes())
            .map(|known| known.bytes.clone())
    }

    /// How many chains this tier remembers, and their raw bytes.
    pub fn known_chains(&self) -> (usize, usize) {
        let chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
        (chains.len(), chains.bytes())
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
///
/// The replay also removes the entries whose chain expired more than
/// [`PURGE_EXPIRED_AFTER`] ago (a node gone, or the old key of one that rotated its key:
/// such a chain can never admit anything again), and the watch is begun again every
/// [`REVIEW_EVERY`] so that a long-running tier reviews its registry too.
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
        let store = bucket(&link, CHAINS_BUCKET, false).await.ok();
        let watch = match &store {
            Some(store) => store.watch_with_history(">").await.ok(),
            None => None,
        };
        if let (Some(store), Some(mut updates)) = (store, watch) {
            // Fetches in flight may have read what the replay is about to pass over.
            gatekeeper.registry_changed();
            let review = tokio::time::sleep(REVIEW_EVERY);
            tokio::pin!(review);
            loop {
                let update = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    // Begun again below: its replay reviews every entry.
                    _ = &mut review => break,
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
                    // Replayed, never used here: fetched when first needed, or removed if
                    // it expired long ago (only that revision: a new one stays).
                    let now = gatekeeper.now().map(time::OffsetDateTime::unix_timestamp);
                    let expired = Chain::decode(&entry.value)
                        .is_ok_and(|chain| now.is_ok_and(|now| long_expired(&chain, now)));
                    if expired {
                        match store
                            .purge_expect_revision(&entry.key, Some(entry.revision))
                            .await
                        {
                            Ok(()) => {
                                tracing::debug!(key_id = %entry.key, "A chain expired long ago; removed from the registry.")
                            }
                            Err(error) => {
                                tracing::debug!(%error, key_id = %entry.key, "Cannot remove a chain expired long ago; next review.")
                            }
                        }
                    }
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
