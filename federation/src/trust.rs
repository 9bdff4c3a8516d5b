//! Admission at a verifying tier: who may say what.
//!
//! Every message a hub or root takes from its ingress passes [`Gatekeeper::admit`] after
//! its signature and envelope were checked ([`SignedEvent::open`]):
//! 1. the signer's token chain is found (presented once per connection into the
//!    `NEXUS_CHAINS` key-value bucket of the tier it talks to, keyed by the signer's key,
//!    and cached here) and verified up to a trust anchor (cached until it expires or a
//!    revocation names it);
//! 2. the chain's leaf must be the signer's key (another node's token cannot be replayed);
//! 3. `source` must be the token's node (no spoofing), a tenant event's tenant the token's
//!    tenant (no crossover);
//! 4. the subject must be granted by the token AND allowed by the local ACL, if any.
//!
//! A key in `trust.root_keys` is the authority itself: its events are admitted without a
//! token (a root that runs without one).
//!
//! Nothing here decides what to do with a refusal; the caller dead-letters, counts, logs
//! and audits it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use nexus_policies::token::{Chain, ChainCache, RevocationSet, VerifiedGrant, Verifier};
use nexus_policies::{Acl, Action, PublicKey, UnixTime};

use crate::clock::TrustClock;
use crate::envelope::Envelope;
use crate::link::Link;
use crate::provenance::SignedEvent;
use crate::refusal::{Reason, Rejection};

/// The key-value bucket where nodes present their token chains to the tier above.
pub const CHAINS_BUCKET: &str = "NEXUS_CHAINS";
/// The key-value bucket that carries the signed revocation list down the tree.
pub const TRUST_BUCKET: &str = "NEXUS_TRUST";
/// The key of the revocation list in [`TRUST_BUCKET`].
pub const REVOCATIONS_KEY: &str = "revocations";
/// Most chains remembered by signer key (a fleet larger than this is served by more hubs).
const MAX_KNOWN_CHAINS: usize = 65_536;

/// The key under which a node's chain is presented: its public key, base64url.
pub fn key_id(key: &PublicKey) -> String {
    URL_SAFE_NO_PAD.encode(key.to_bytes())
}

/// A presented chain: decoded, its raw bytes (to present it upward unchanged), and when
/// it was fetched (a refused chain is looked up again at most this often).
#[derive(Debug)]
struct KnownChain {
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

/// What a payload field of one of the agent's own events names about the node that created
/// it, and so must agree with its verified token.
#[derive(Debug, Clone, Copy)]
enum OriginField {
    /// The node's id.
    NodeId,
    /// The node's tier (`member`, `hub`, `root`): the token's role.
    Mode,
    /// The signer's public key (`ed25519:…`).
    SignerKey,
}

/// The agent's own events, and the payload fields in which they name their origin. Other
/// node-naming fields are about someone else on purpose: `audit.rejected`'s `signer` is the
/// refused message's, `audit.cap_token_issued`'s `node_id` the new token's holder.
const ORIGIN_FIELDS: &[(&str, &[(&str, OriginField)])] = &[
    (
        "edge.health",
        &[
            ("node_id", OriginField::NodeId),
            ("mode", OriginField::Mode),
        ],
    ),
    (
        "agent.ping.result",
        &[
            ("node_id", OriginField::NodeId),
            ("mode", OriginField::Mode),
        ],
    ),
    (
        "agent.health.result",
        &[
            ("node_id", OriginField::NodeId),
            ("mode", OriginField::Mode),
        ],
    ),
    ("audit.rejected", &[("node_id", OriginField::NodeId)]),
    ("audit.outbox_loss", &[("node_id", OriginField::NodeId)]),
    (
        "audit.cap_token_issued",
        &[("issuer_key", OriginField::SignerKey)],
    ),
];

/// A node may speak only for itself: every payload field of its own kind of event that
/// names the node that created it must be the verified signer's, as `source` must be (a
/// heartbeat from `edge-01` whose `node_id` says `edge-02` would fool any consumer that
/// reads the payload). A field that is absent names no one and is not required here.
fn payload_names_origin(
    envelope: &Envelope,
    grant: &VerifiedGrant,
    signer: &PublicKey,
) -> Result<(), Rejection> {
    let Some((_, fields)) = ORIGIN_FIELDS
        .iter()
        .find(|(name, _)| *name == envelope.event_name)
    else {
        return Ok(());
    };
    for (field, names) in *fields {
        let Some(value) = envelope.payload.get(*field) else {
            continue;
        };
        let expected = match names {
            OriginField::NodeId => grant.node_id().to_owned(),
            OriginField::Mode => grant.role().to_string(),
            OriginField::SignerKey => signer.to_string(),
        };
        if value.as_str() != Some(expected.as_str()) {
            return Err(Rejection::new(
                Reason::SourceSpoofing,
                format!(
                    "{} payload.{field} is {value} but the signer's token is for {} `{expected}`",
                    envelope.event_name,
                    match names {
                        OriginField::NodeId => "node",
                        OriginField::Mode => "role",
                        OriginField::SignerKey => "key",
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// How long a refused chain is trusted to still be the current one before the registry is
/// asked again (so a rotated token is picked up, without a lookup per refused message).
const REFETCH_AFTER: Duration = Duration::from_secs(5);

/// How long the registry watcher waits for the parent's registry to take a child's new
/// chain before it goes on (the ingress presents it again with the child's next event).
const PRESENT_UP_WITHIN: Duration = Duration::from_secs(2);

/// What admission grants.
#[derive(Debug, Clone)]
pub enum Admitted {
    /// A node with a verified token chain.
    Node(Arc<VerifiedGrant>),
    /// A trust anchor itself.
    Anchor,
}

/// The admission checks of one verifying tier.
#[derive(Debug)]
pub struct Gatekeeper {
    verifier: RwLock<Verifier>,
    cache: Mutex<ChainCache>,
    /// Chains by signer key, as fetched from the registry (raw bytes kept for forwarding).
    chains: Mutex<HashMap<[u8; 32], KnownChain>>,
    /// How many registry changes the watcher has seen (chains installed, entries passed
    /// over, watches begun): a fetch that began before one of them may hold a chain the
    /// registry no longer has, and is used for its message but not relied on after.
    changes: AtomicU64,
    acl: Option<Acl>,
    clock: Arc<TrustClock>,
}

impl Gatekeeper {
    /// A gatekeeper trusting `anchors`, with `skew` tolerance, an optional local ACL
    /// (`None`: the token's grants alone decide) and the revocations known at start.
    pub fn new(
        anchors: Vec<PublicKey>,
        skew: Duration,
        acl: Option<Acl>,
        revoked: RevocationSet,
        clock: Arc<TrustClock>,
    ) -> Self {
        let mut verifier = Verifier::new(anchors);
        verifier.skew = skew;
        verifier.revoked = revoked;
        Self {
            verifier: RwLock::new(verifier),
            cache: Mutex::new(ChainCache::default()),
            chains: Mutex::new(HashMap::new()),
            changes: AtomicU64::new(0),
            acl,
            clock,
        }
    }

    /// Admits a verified event, fetching the signer's chain from `registry` (this tier's
    /// `NEXUS_CHAINS` bucket) when it is not known yet.
    pub async fn admit(
        &self,
        event: &SignedEvent,
        envelope: &Envelope,
        registry: Option<&kv::Store>,
    ) -> Result<Admitted, Rejection> {
        if self.is_anchor(&event.signer) {
            return self.check(event, envelope, None);
        }
        let signer = event.signer.to_bytes();
        if let Some((known, fetched)) = self.known_chain(&signer) {
            match self.check(event, envelope, Some(&known)) {
                // A chain refused for its own sake (expired, revoked, …) may have been
                // replaced since it was fetched (rotation): look again before refusing.
                Err(rejection)
                    if rejection.reason.is_token()
                        && registry.is_some()
                        && fetched.elapsed() >= REFETCH_AFTER => {}
                decided => return decided,
            }
        }
        let chain = self.fetch(event, registry).await?;
        self.check(event, envelope, Some(&chain))
    }

    /// The signer's chain from the registry (remembered for the next messages).
    async fn fetch(
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

    /// The pure part of admission (no lookups).
    pub fn check(
        &self,
        event: &SignedEvent,
        envelope: &Envelope,
        chain: Option<&Chain>,
    ) -> Result<Admitted, Rejection> {
        if self.is_anchor(&event.signer) {
            return Ok(Admitted::Anchor);
        }
        let grant = self.signer_grant(event, envelope, chain)?;
        payload_names_origin(envelope, &grant, &event.signer)?;
        if let (Some(tenant), Some(granted)) = (envelope.tenant.as_deref(), grant.tenant()) {
            if tenant != granted {
                return Err(Rejection::new(
                    Reason::TenantCrossover,
                    format!(
                        "tenant `{tenant}` but node `{}` belongs to tenant `{granted}`",
                        grant.node_id()
                    ),
                ));
            }
        }
        if !grant.allows_publish(&event.subject) {
            return Err(Rejection::new(
                Reason::SubjectNotGranted,
                format!(
                    "node `{}`'s token does not grant publishing on `{}`",
                    grant.node_id(),
                    event.subject
                ),
            ));
        }
        if let Some(acl) = &self.acl {
            let decision = acl.check(grant.node_id(), Action::Publish, &event.subject);
            if !decision.is_allowed() {
                return Err(Rejection::new(
                    Reason::AclDenied,
                    format!("`{}` on `{}`: {decision}", grant.node_id(), event.subject),
                ));
            }
        }
        Ok(Admitted::Node(grant))
    }

    /// Admits a command requested on `command_subject` and signed by `event.signer` with
    /// `chain` (carried beside it): the issuer is a trust anchor, or a hub or root whose
    /// token grants publishing on the command subject and, if bound to a tenant, is bound
    /// to the target's, `target_tenant` (`None`: the target's tenant is not known here, as
    /// at a hub routing the command; the target checks it). Members never command. The
    /// local ACL is not consulted: it governs what this node forwards.
    pub fn admit_command(
        &self,
        event: &SignedEvent,
        envelope: &Envelope,
        chain: Option<&Chain>,
        command_subject: &str,
        target_tenant: Option<Option<&str>>,
    ) -> Result<Admitted, Rejection> {
        if self.is_anchor(&event.signer) {
            return Ok(Admitted::Anchor);
        }
        let grant = self.signer_grant(event, envelope, chain)?;
        if grant.role() == nexus_policies::Role::Member {
            return Err(Rejection::new(
                Reason::CommandNotAllowed,
                format!(
                    "node `{}` is a member: members cannot send commands",
                    grant.node_id()
                ),
            ));
        }
        if let (Some(granted), Some(target_tenant)) = (grant.tenant(), target_tenant) {
            if target_tenant != Some(granted) {
                return Err(Rejection::new(
                    Reason::TenantCrossover,
                    format!(
                        "node `{}` belongs to tenant `{granted}`, this node to {}",
                        grant.node_id(),
                        target_tenant.map_or("none".to_owned(), |t| format!("`{t}`"))
                    ),
                ));
            }
        }
        if !grant.allows_publish(command_subject) {
            return Err(Rejection::new(
                Reason::CommandNotGranted,
                format!(
                    "node `{}`'s token does not grant `{command_subject}`",
                    grant.node_id()
                ),
            ));
        }
        Ok(Admitted::Node(grant))
    }

    /// The verified grant of a signer that is not an anchor: its chain verifies now, is for
    /// the signer's key, and names the envelope's `source`.
    fn signer_grant(
        &self,
        event: &SignedEvent,
        envelope: &Envelope,
        chain: Option<&Chain>,
    ) -> Result<Arc<VerifiedGrant>, Rejection> {
        let chain = chain.ok_or_else(|| {
            Rejection::new(
                Reason::TokenUnknown,
                format!("no token chain for signer {}", event.signer),
            )
        })?;
        let now = self
            .clock
            .now()
            .map_err(|e| Rejection::new(Reason::ClockUnsynced, e.to_string()))?;
        let grant = self.verify_chain(chain, now)?;
        if grant.node_key() != &event.signer {
            return Err(Rejection::new(
                Reason::TokenKeyMismatch,
                format!(
                    "the token presented is node {}'s, for another key than the signer's",
                    grant.node_id()
                ),
            ));
        }
        if envelope.source != grant.node_id() {
            return Err(Rejection::new(
                Reason::SourceSpoofing,
                format!(
                    "source `{}` but the signer's token is for node `{}`",
                    envelope.source,
                    grant.node_id()
                ),
            ));
        }
        Ok(grant)
    }

    /// Now, by the trust clock (last known good time on a box without a real-time clock).
    pub fn now(&self) -> Result<time::OffsetDateTime, Rejection> {
        let now = self
            .clock
            .now()
            .map_err(|e| Rejection::new(Reason::ClockUnsynced, e.to_string()))?;
        time::OffsetDateTime::from_unix_timestamp(now.0)
            .map_err(|e| Rejection::new(Reason::ClockUnsynced, e.to_string()))
    }

    /// Verifies a chain now (this node's own new token, before it replaces the old one).
    pub fn verify_now(&self, chain: &Chain) -> Result<Arc<VerifiedGrant>, Rejection> {
        let now = self
            .clock
            .now()
            .map_err(|e| Rejection::new(Reason::ClockUnsynced, e.to_string()))?;
        self.verify_chain(chain, now)
    }

    fn verify_chain(&self, chain: &Chain, now: UnixTime) -> Result<Arc<VerifiedGrant>, Rejection> {
        let verifier = self.verifier.read().unwrap_or_else(|p| p.into_inner());
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .verify(&verifier, chain, now)
            .map_err(|e| Rejection::from(&e))
    }

    fn is_anchor(&self, key: &PublicKey) -> bool {
        self.verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .trust_anchors
            .contains(key)
    }

    fn known_chain(&self, signer: &[u8; 32]) -> Option<(Arc<Chain>, std::time::Instant)> {
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
    fn remember(
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

    /// Applies a (verified) revocation set: every chain naming one of its ids is refused
    /// from now on.
    pub fn set_revoked(&self, revoked: RevocationSet) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.invalidate_revoked(&revoked);
        self.verifier
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .revoked = revoked;
    }

    /// The trust anchors.
    pub fn anchors(&self) -> Vec<PublicKey> {
        self.verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .trust_anchors
            .clone()
    }
}

/// This node's own token chain, shared by whoever needs its current form: the subject
/// bridge (its grants), the command service (its ancestors, rotation) and the revocation
/// watch (its ids). Swapped when the token is rotated.
#[derive(Debug, Clone)]
pub struct OwnChain(Arc<RwLock<Own>>);

#[derive(Debug)]
enum Own {
    /// No token: the node is a trust anchor; its grants are unlimited.
    Anchor,
    /// The current chain.
    Chain(Chain),
    /// A token that cannot be read: nothing is granted (fail closed).
    Unreadable,
}

impl OwnChain {
    /// A node without a token (a trust anchor).
    pub fn anchor() -> Self {
        Self(Arc::new(RwLock::new(Own::Anchor)))
    }

    /// A node with `chain`; `None` when its token file could not be decoded.
    pub fn new(chain: Option<Chain>) -> Self {
        Self(Arc::new(RwLock::new(match chain {
            Some(chain) => Own::Chain(chain),
            None => Own::Unreadable,
        })))
    }

    /// Takes a new (verified) chain.
    pub fn set(&self, chain: Chain) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Own::Chain(chain);
    }

    /// Whether the token lets this node publish on `subject`.
    pub fn allows(&self, subject: &str) -> bool {
        match &*self.0.read().unwrap_or_else(|p| p.into_inner()) {
            Own::Anchor => true,
            Own::Chain(chain) => chain
                .leaf()
                .claims()
                .publish
                .iter()
                .any(|p| p.matches(subject)),
            Own::Unreadable => false,
        }
    }

    /// The ids of every token of the chain.
    pub fn token_ids(&self) -> Vec<nexus_policies::TokenId> {
        match &*self.0.read().unwrap_or_else(|p| p.into_inner()) {
            Own::Chain(chain) => chain.tokens().iter().map(|t| t.id()).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether `key` signed a token of the chain: a node above this one in the tree.
    pub fn has_ancestor(&self, key: &PublicKey) -> bool {
        match &*self.0.read().unwrap_or_else(|p| p.into_inner()) {
            Own::Chain(chain) => chain.tokens().iter().any(|t| &t.claims().issuer_key == key),
            _ => false,
        }
    }

    /// The key that issued the chain's leaf (this node's parent), if there is a chain.
    pub fn parent_key(&self) -> Option<PublicKey> {
        match &*self.0.read().unwrap_or_else(|p| p.into_inner()) {
            Own::Chain(chain) => Some(chain.leaf().claims().issuer_key),
            _ => None,
        }
    }

    /// The encoded chain (to present it, or send it beside a signed reply).
    pub fn bytes(&self) -> Option<Vec<u8>> {
        match &*self.0.read().unwrap_or_else(|p| p.into_inner()) {
            Own::Chain(chain) => Some(chain.encode()),
            _ => None,
        }
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

/// Opens a key-value bucket of the federation on `link`; with `create`, creates it when it
/// does not exist (only the tier that owns the server does that; the tier below waits).
pub async fn bucket(link: &Link, name: &str, create: bool) -> Result<kv::Store, async_nats::Error> {
    let js = link.jetstream();
    match js.get_key_value(name).await {
        Ok(store) => Ok(store),
        Err(error) if !create => Err(error.into()),
        Err(_) => Ok(js
            .create_key_value(kv::Config {
                bucket: name.to_owned(),
                history: 1,
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{self, Issuer};
    use nexus_policies::{Claims, Role, SecretKey, SubjectPattern, Token, TokenId};
    use time::OffsetDateTime;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed(&[n; 32]).expect("strong key")
    }

    #[allow(clippy::too_many_arguments)]
    fn token(
        id: u8,
        issuer: &SecretKey,
        parent: Option<&Token>,
        node: &str,
        node_key: &SecretKey,
        tenant: Option<&str>,
        role: Role,
        publish: &[&str],
    ) -> Token {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            id: TokenId([id; 16]),
            parent: parent.map(Token::id),
            issuer_key: issuer.public(),
            node_id: node.into(),
            node_key: node_key.public(),
            tenant: tenant.map(Into::into),
            role,
            publish: publish
                .iter()
                .map(|p| SubjectPattern::parse(p).expect("pattern"))
                .collect(),
            receive: Vec::new(),
            not_before: UnixTime(now - 60),
            expires: UnixTime(now + 3600),
        };
        Token::issue(claims, issuer, parent).expect("issue")
    }

    /// A gatekeeper trusting `root`, with no ACL and no revocations.
    fn gatekeeper(root: &SecretKey) -> Gatekeeper {
        Gatekeeper::new(
            vec![root.public()],
            Duration::from_secs(60),
            None,
            RevocationSet::default(),
            Arc::new(TrustClock::new(None)),
        )
    }

    /// `admit_command` for a command to `edge-01` signed by `signer` as `source`.
    fn admit(
        gatekeeper: &Gatekeeper,
        signer: &SecretKey,
        source: &str,
        chain: Option<&Chain>,
        target_tenant: Option<Option<&str>>,
    ) -> Result<Admitted, &'static str> {
        let bytes = chain.map(Chain::encode);
        let issuer = Issuer {
            node_id: source,
            key: signer,
            chain: bytes.as_deref(),
        };
        let sealed = command::seal(
            &issuer,
            "edge-01",
            "agent.ping",
            serde_json::Map::new(),
            Duration::from_secs(5),
            OffsetDateTime::now_utc(),
        )
        .expect("seal");
        let opened =
            command::open(&sealed.subject, Some(&sealed.headers), sealed.body).expect("opens");
        gatekeeper
            .admit_command(
                &opened.event,
                &opened.envelope,
                opened.chain.as_ref(),
                &opened.subject,
                target_tenant,
            )
            .map_err(|r| r.reason.as_str())
    }

    #[test]
    fn who_may_command_whom() {
        let (root, hub, member, plain_hub) = (key(1), key(2), key(3), key(4));
        let gatekeeper = gatekeeper(&root);
        let hub_token = token(
            1,
            &root,
            None,
            "hub-1",
            &hub,
            Some("t1"),
            Role::Hub,
            &["nexus.t1.>", "_nexus.cmd.>"],
        );
        let hub_chain = Chain::new(vec![hub_token.clone()]).expect("chain");
        let member_token = token(
            2,
            &hub,
            Some(&hub_token),
            "edge-01",
            &member,
            Some("t1"),
            Role::Member,
            &["_nexus.cmd.>"],
        );
        let member_chain = Chain::new(vec![member_token, hub_token]).expect("chain");
        let plain = token(
            3,
            &root,
            None,
            "hub-2",
            &plain_hub,
            Some("t1"),
            Role::Hub,
            &["nexus.t1.>"],
        );
        let plain_chain = Chain::new(vec![plain]).expect("chain");
        let t1 = Some(Some("t1"));

        assert!(matches!(
            admit(&gatekeeper, &root, "root", None, t1),
            Ok(Admitted::Anchor)
        ));
        assert!(matches!(
            admit(&gatekeeper, &hub, "hub-1", Some(&hub_chain), t1),
            Ok(Admitted::Node(_))
        ));
        // The routing hub does not know the target's tenant: not checked there.
        assert!(admit(&gatekeeper, &hub, "hub-1", Some(&hub_chain), None).is_ok());
        assert_eq!(
            admit(
                &gatekeeper,
                &hub,
                "hub-1",
                Some(&hub_chain),
                Some(Some("t2"))
            )
            .err(),
            Some("tenant_crossover")
        );
        assert_eq!(
            admit(&gatekeeper, &hub, "hub-1", Some(&hub_chain), Some(None)).err(),
            Some("tenant_crossover")
        );
        assert_eq!(
            admit(&gatekeeper, &plain_hub, "hub-2", Some(&plain_chain), t1).err(),
            Some("command_not_granted")
        );
        assert_eq!(
            admit(&gatekeeper, &member, "edge-01", Some(&member_chain), t1).err(),
            Some("command_not_allowed")
        );
        assert_eq!(
            admit(&gatekeeper, &hub, "root", Some(&hub_chain), t1).err(),
            Some("source_spoofing")
        );
        assert_eq!(
            admit(&gatekeeper, &key(9), "hub-9", None, t1).err(),
            Some("token_unknown")
        );
    }

    #[test]
    fn the_agents_own_events_speak_only_for_their_signer() {
        let (root, hub, member) = (key(1), key(2), key(3));
        let gatekeeper = gatekeeper(&root);
        let hub_token = token(1, &root, None, "hub-1", &hub, None, Role::Hub, &["nexus.>"]);
        let chain = Chain::new(vec![
            token(
                2,
                &hub,
                Some(&hub_token),
                "edge-01",
                &member,
                None,
                Role::Member,
                &["nexus._core.>"],
            ),
            hub_token,
        ])
        .expect("chain");
        let check = |name: &str, payload: serde_json::Value| {
            let serde_json::Value::Object(payload) = payload else {
                panic!("an object")
            };
            let envelope = Envelope::new(name, "edge-01", None, payload, OffsetDateTime::now_utc());
            let event = SignedEvent::seal(&envelope, crate::envelope::Encoding::Json, &member)
                .expect("seal");
            gatekeeper
                .check(&event, &envelope, Some(&chain))
                .map(|_| ())
                .map_err(|r| r.reason.as_str())
        };
        let me = serde_json::json!({"node_id": "edge-01", "mode": "member"});
        assert_eq!(check("edge.health", me.clone()), Ok(()));
        assert_eq!(check("agent.ping.result", me), Ok(()));
        // A field that is absent names no one.
        assert_eq!(
            check("edge.health", serde_json::json!({"status": "healthy"})),
            Ok(())
        );
        for (name, payload) in [
            (
                "edge.health",
                serde_json::json!({"node_id": "edge-02", "mode": "member"}),
            ),
            (
                "edge.health",
                serde_json::json!({"node_id": "edge-01", "mode": "hub"}),
            ),
            ("edge.health", serde_json::json!({"node_id": 7})),
            (
                "agent.health.result",
                serde_json::json!({"node_id": "hub-1"}),
            ),
            ("audit.rejected", serde_json::json!({"node_id": "root"})),
            (
                "audit.outbox_loss",
                serde_json::json!({"node_id": "edge-02"}),
            ),
            (
                "audit.cap_token_issued",
                serde_json::json!({"node_id": "edge-01", "issuer_key": hub.public().to_string()}),
            ),
        ] {
            assert_eq!(
                check(name, payload.clone()),
                Err("source_spoofing"),
                "{name} {payload}"
            );
        }
        // Fields about someone else on purpose: the refused message's signer, the holder of
        // a token this node issued.
        assert_eq!(
            check(
                "audit.rejected",
                serde_json::json!({"node_id": "edge-01", "signer": hub.public().to_string()})
            ),
            Ok(())
        );
        assert_eq!(
            check(
                "audit.cap_token_issued",
                serde_json::json!({"node_id": "edge-09", "issuer_key": member.public().to_string()})
            ),
            Ok(())
        );
    }

    #[test]
    fn own_chain_knows_its_ancestors_and_fails_closed() {
        let (root, hub, member) = (key(1), key(2), key(3));
        let hub_token = token(1, &root, None, "hub-1", &hub, None, Role::Hub, &["nexus.>"]);
        let member_token = token(
            2,
            &hub,
            Some(&hub_token),
            "edge-01",
            &member,
            None,
            Role::Member,
            &["nexus.t1.>"],
        );
        let own = OwnChain::new(Some(
            Chain::new(vec![member_token, hub_token]).expect("chain"),
        ));
        assert!(own.has_ancestor(&hub.public()));
        assert!(own.has_ancestor(&root.public()));
        assert!(!own.has_ancestor(&key(4).public()));
        assert_eq!(own.parent_key(), Some(hub.public()));
        assert!(own.allows("nexus.t1.booking.created"));
        assert!(!own.allows("nexus.t2.booking.created"));
        assert_eq!(own.token_ids().len(), 2);
        let unreadable = OwnChain::new(None);
        assert!(!unreadable.allows("nexus.t1.x"));
        assert!(OwnChain::anchor().allows("nexus.t1.x"));
    }

    #[test]
    fn a_fetch_overlapping_a_registry_change_never_leaves_an_old_chain_cached() {
        let (root, member) = (key(1), key(3));
        let gatekeeper = gatekeeper(&root);
        let chain = |id| {
            let token = token(
                id,
                &root,
                None,
                "edge-01",
                &member,
                None,
                Role::Member,
                &[">"],
            );
            Chain::new(vec![token]).expect("chain")
        };
        let (old, new) = (chain(1), chain(2));
        let signer = member.public();
        let bytes = |c: &Chain| Bytes::from(c.encode());

        // A fetch reads the registry (the old chain), then the watcher installs the new one.
        let began = gatekeeper.changes.load(Ordering::Acquire);
        gatekeeper.install(&signer, new.clone(), bytes(&new));
        let used =
            gatekeeper.remember(signer.to_bytes(), Arc::new(old.clone()), bytes(&old), began);
        assert_eq!(used.leaf().id(), new.leaf().id());
        assert_eq!(gatekeeper.chain_bytes(&signer), Some(bytes(&new)));

        // A fetch that began after the install is the registry's newest word.
        let began = gatekeeper.changes.load(Ordering::Acquire);
        let used =
            gatekeeper.remember(signer.to_bytes(), Arc::new(old.clone()), bytes(&old), began);
        assert_eq!(used.leaf().id(), old.leaf().id());
        assert_eq!(gatekeeper.chain_bytes(&signer), Some(bytes(&old)));

        // A fetch overlapping a change the watcher passed over (a replayed entry of a
        // signer with nothing cached, a watch begun) serves its message and is presented
        // upward with it, but is not relied on for the next one.
        let other = key(4).public();
        let began = gatekeeper.changes.load(Ordering::Acquire);
        gatekeeper.registry_changed();
        let used = gatekeeper.remember(other.to_bytes(), Arc::new(old.clone()), bytes(&old), began);
        assert_eq!(used.leaf().id(), old.leaf().id());
        assert!(
            gatekeeper.known_chain(&other.to_bytes()).is_none(),
            "fetched again next time"
        );
        assert_eq!(
            gatekeeper.chain_bytes(&other),
            Some(bytes(&old)),
            "still presented upward with the message it admitted"
        );
    }
}
