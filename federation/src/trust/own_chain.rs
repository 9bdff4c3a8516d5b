//! This node's own token chain ([`OwnChain`]): what it grants, who is above this node, the
//! ids the revocation watch looks for; swapped when the token is rotated.

use std::sync::{Arc, RwLock};

use nexus_policies::token::Chain;
use nexus_policies::PublicKey;

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

    /// The node this node's token was issued by (its parent in the tree), when a token
    /// above its own names it; `None` when a trust anchor issued its token.
    pub fn parent_id(&self) -> Option<String> {
        match &*self.0.read().unwrap_or_else(|p| p.into_inner()) {
            Own::Chain(chain) => chain.tokens().get(1).map(|t| t.claims().node_id.clone()),
            _ => None,
        }
    }

    /// The earliest expiry of the chain's tokens (when the node's grants end unless a
    /// rotated token replaces them); `None` for a trust anchor or an unreadable token.
    pub fn expires(&self) -> Option<nexus_policies::UnixTime> {
        match &*self.0.read().unwrap_or_else(|p| p.into_inner()) {
            Own::Chain(chain) => chain.tokens().iter().map(|t| t.claims().expires).min(),
            _ => None,
        }
    }

    /// The subjects the token lets this node publish and receive (none without a
    /// readable chain).
    pub fn grants(
        &self,
    ) -> (
        Vec<nexus_policies::SubjectPattern>,
        Vec<nexus_policies::SubjectPattern>,
    ) {
        match &*self.0.read().unwrap_or_else(|p| p.into_inner()) {
            Own::Chain(chain) => {
                let claims = chain.leaf().claims();
                (claims.publish.clone(), claims.receive.clone())
            }
            _ => (Vec::new(), Vec::new()),
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
