//! Verifying a chain up to a trust anchor, and what a verified chain grants.

use std::time::Duration;

use super::chain::{check_attenuation, check_link, Chain, Token};
use super::claims::{Role, TokenId};
use super::revocation::RevocationSet;
use super::MAX_CHAIN_DEPTH;
use crate::acl::Action;
use crate::clock::{duration_secs, UnixTime};
use crate::error::{BrokenLink, TokenError};
use crate::keys::PublicKey;
use crate::pattern::SubjectPattern;

/// Default allowance for clock differences between issuer and verifier.
pub const DEFAULT_SKEW: Duration = Duration::from_secs(60);

/// Checks chains against trust anchors, a clock skew and a revocation set.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// The root public keys (more than one during rotation).
    pub trust_anchors: Vec<PublicKey>,
    /// Allowed clock difference on both ends of every validity window.
    pub skew: Duration,
    /// Token ids that are refused wherever they appear in a chain.
    pub revoked: RevocationSet,
}

/// One token's id and validity window, kept so that cached grants are re-checked cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    id: TokenId,
    not_before: UnixTime,
    expires: UnixTime,
}

/// What a verified chain grants: the leaf's claims, bounded by the whole chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedGrant {
    node_id: String,
    node_key: PublicKey,
    tenant: Option<String>,
    role: Role,
    publish: Vec<SubjectPattern>,
    receive: Vec<SubjectPattern>,
    anchor: PublicKey,
    /// The node the leaf's issuer token is for: the node's parent in the tree, when it is
    /// not a trust anchor.
    parent_id: Option<String>,
    /// Leaf first, like the chain.
    windows: Vec<Window>,
}

impl Verifier {
    /// A verifier with the default skew (60 s) and nothing revoked.
    pub fn new(trust_anchors: Vec<PublicKey>) -> Self {
        Self {
            trust_anchors,
            skew: DEFAULT_SKEW,
            revoked: RevocationSet::default(),
        }
    }

    /// Decodes and verifies a chain from untrusted bytes.
    pub fn verify_bytes(&self, bytes: &[u8], now: UnixTime) -> Result<VerifiedGrant, TokenError> {
        self.verify_chain(Chain::decode(bytes)?.tokens(), now)
    }

    /// Verifies a chain (leaf first) at `now`, from the top down:
    /// 1. the top token is issued by a trust anchor, names no parent, and its signature
    ///    verifies;
    /// 2. each child is issued by its parent's `node_key`, names its parent's id, has a
    ///    valid signature, and is attenuated (role, tenant, window, patterns);
    /// 3. no token is revoked, and `now` is inside every window, give or take `skew`
    ///    (valid while `not_before - skew <= now < expires + skew`).
    ///
    /// The first failure is returned, so the error names the highest broken token.
    pub fn verify_chain(
        &self,
        chain: &[Token],
        now: UnixTime,
    ) -> Result<VerifiedGrant, TokenError> {
        let (leaf, top) = match (chain.first(), chain.last()) {
            (Some(leaf), Some(top)) => (leaf, top),
            _ => return Err(TokenError::EmptyChain),
        };
        if chain.len() > MAX_CHAIN_DEPTH {
            return Err(TokenError::TooDeep {
                depth: chain.len(),
                max: MAX_CHAIN_DEPTH,
            });
        }
        let top_claims = top.claims();
        if !self.trust_anchors.contains(&top_claims.issuer_key) {
            return Err(TokenError::UntrustedRoot {
                id: top_claims.id,
                issuer: Box::new(top_claims.issuer_key),
            });
        }
        if top_claims.parent.is_some() {
            return Err(TokenError::BrokenChain {
                id: top_claims.id,
                reason: BrokenLink::MissingParent,
            });
        }
        top.verify_signature()?;
        self.check_live(top, now)?;
        for pair in chain.windows(2).rev() {
            let (child, parent) = (&pair[0], &pair[1]);
            check_link(parent.claims(), child.claims())?;
            child.verify_signature()?;
            check_attenuation(parent.claims(), child.claims())?;
            self.check_live(child, now)?;
        }
        let c = leaf.claims();
        Ok(VerifiedGrant {
            node_id: c.node_id.clone(),
            node_key: c.node_key,
            tenant: c.tenant.clone(),
            role: c.role,
            publish: c.publish.clone(),
            receive: c.receive.clone(),
            anchor: top_claims.issuer_key,
            parent_id: chain.get(1).map(|t| t.claims().node_id.clone()),
            windows: chain
                .iter()
                .map(|t| Window {
                    id: t.id(),
                    not_before: t.claims().not_before,
                    expires: t.claims().expires,
                })
                .collect(),
        })
    }

    fn check_live(&self, token: &Token, now: UnixTime) -> Result<(), TokenError> {
        let c = token.claims();
        self.check_window(
            &Window {
                id: c.id,
                not_before: c.not_before,
                expires: c.expires,
            },
            now,
        )
    }

    fn check_window(&self, w: &Window, now: UnixTime) -> Result<(), TokenError> {
        if self.revoked.contains(&w.id) {
            return Err(TokenError::Revoked { id: w.id });
        }
        let skew = duration_secs(self.skew);
        if now.0.saturating_add(skew) < w.not_before.0 {
            return Err(TokenError::NotYetValid {
                id: w.id,
                not_before: w.not_before.0,
                now: now.0,
            });
        }
        if now.0.saturating_sub(skew) >= w.expires.0 {
            return Err(TokenError::Expired {
                id: w.id,
                expires: w.expires.0,
                now: now.0,
            });
        }
        Ok(())
    }

    /// Re-checks what can change after a chain was verified (anchors, revocations, time),
    /// for a grant from the cache. Signatures and attenuation are facts of the bytes.
    pub(crate) fn recheck(&self, grant: &VerifiedGrant, now: UnixTime) -> Result<(), TokenError> {
        if !self.trust_anchors.contains(&grant.anchor) {
            let top = grant
                .windows
                .last()
                .map(|w| w.id)
                .unwrap_or(TokenId([0; 16]));
            return Err(TokenError::UntrustedRoot {
                id: top,
                issuer: Box::new(grant.anchor),
            });
        }
        grant
            .windows
            .iter()
            .rev()
            .try_for_each(|w| self.check_window(w, now))
    }
}

impl VerifiedGrant {
    /// The node the grant is for.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node that issued the leaf token (the node's parent in the tree); `None` when a
    /// trust anchor issued it.
    pub fn parent_id(&self) -> Option<&str> {
        self.parent_id.as_deref()
    }

    /// The node's key: its envelopes must verify with it.
    pub fn node_key(&self) -> &PublicKey {
        &self.node_key
    }

    /// The tenant the node is bound to, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The node's tier.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Patterns the node may publish.
    pub fn publish(&self) -> &[SubjectPattern] {
        &self.publish
    }

    /// Patterns the node may receive.
    pub fn receive(&self) -> &[SubjectPattern] {
        &self.receive
    }

    /// The trust anchor the chain leads to.
    pub fn anchor(&self) -> &PublicKey {
        &self.anchor
    }

    /// The leaf token's id.
    pub fn leaf_id(&self) -> TokenId {
        self.windows
            .first()
            .map(|w| w.id)
            .unwrap_or(TokenId([0; 16]))
    }

    /// Every token id of the chain, leaf first.
    pub fn token_ids(&self) -> impl Iterator<Item = TokenId> + '_ {
        self.windows.iter().map(|w| w.id)
    }

    /// The earliest expiry in the chain: the grant ends then (plus the verifier's skew).
    pub fn expires(&self) -> UnixTime {
        self.windows
            .iter()
            .map(|w| w.expires)
            .min()
            .unwrap_or(UnixTime(i64::MIN))
    }

    /// The latest `not_before` in the chain.
    pub fn not_before(&self) -> UnixTime {
        self.windows
            .iter()
            .map(|w| w.not_before)
            .max()
            .unwrap_or(UnixTime(i64::MAX))
    }

    /// Whether the grant lets the node publish on `subject`.
    pub fn allows_publish(&self, subject: &str) -> bool {
        self.publish.iter().any(|p| p.matches(subject))
    }

    /// Whether the grant lets the node receive on `subject`.
    pub fn allows_receive(&self, subject: &str) -> bool {
        self.receive.iter().any(|p| p.matches(subject))
    }

    /// Whether the grant allows `action` on `subject`.
    pub fn allows(&self, action: Action, subject: &str) -> bool {
        match action {
            Action::Publish => self.allows_publish(subject),
            Action::Receive => self.allows_receive(subject),
        }
    }
}
