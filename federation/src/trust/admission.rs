//! Admission: whether a verified event (or command) may be taken, by the signer's token
//! chain, its grants, the origin its payload names and the local ACL ([`Gatekeeper`]).
//! The chains themselves are found and kept by the registry (`super::registry`).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use nexus_policies::token::{Chain, ChainCache, RevocationSet, VerifiedGrant, Verifier};
use nexus_policies::{Acl, Action, PublicKey, UnixTime};

use super::registry::{KnownChains, CHAIN_IDLE, MAX_KNOWN_CHAINS};
use crate::clock::TrustClock;
use crate::envelope::Envelope;
use crate::provenance::SignedEvent;
use crate::refusal::{Reason, Rejection};

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
/// `audit.outbox_loss`'s `epoch` and `ranges` name numbers of its source's own order (the
/// verified `source`); the `epoch` need not be the audit's own (an older epoch's salvaged
/// events), so it is not checked against it: a node can only speak of its own order.
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
    pub(super) cache: Mutex<ChainCache>,
    /// Chains by signer key, as fetched from the registry (raw bytes kept for forwarding).
    pub(super) chains: Mutex<KnownChains>,
    /// How many registry changes the watcher has seen (chains installed, entries passed
    /// over, watches begun): a fetch that began before one of them may hold a chain the
    /// registry no longer has, and is used for its message but not relied on after.
    pub(super) changes: AtomicU64,
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
            // Room for every chain remembered, so that a large fleet's chains are verified
            // once each, not again whenever the cache would have pushed them out.
            cache: Mutex::new(ChainCache::new(MAX_KNOWN_CHAINS)),
            chains: Mutex::new(KnownChains::new(
                MAX_KNOWN_CHAINS,
                CHAIN_IDLE,
                std::time::Instant::now(),
            )),
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

    /// Drops the verifications of chains no longer remembered (forgotten or replaced).
    pub(super) fn forget_verified(&self, chains: &[Arc<Chain>]) {
        if chains.is_empty() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        for chain in chains {
            cache.forget(chain);
        }
    }

    fn is_anchor(&self, key: &PublicKey) -> bool {
        self.verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .trust_anchors
            .contains(key)
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
