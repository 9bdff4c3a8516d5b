//! Admission at a verifying tier: who may say what.
//!
//! Every message a hub or root takes from its ingress passes [`Gatekeeper::admit`] after
//! its signature and envelope were checked
//! ([`SignedEvent::open`](crate::headers::NatsProvenance::open)):
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
//!
//! # Layout
//! - `admission`: [`Gatekeeper`]'s checks of an event or a command against the signer's
//!   chain, its grants, the origin its payload names and the local ACL; [`Admitted`].
//! - `registry`: the chains known by signer key (fetched from `NEXUS_CHAINS`, remembered,
//!   replaced when rotated) and [`watch_registry`], which installs a rotated chain.
//! - `own_chain`: this node's own chain ([`OwnChain`]): its grants, ancestors and ids.
//! - `bucket`: opening (or creating) a key-value bucket of the federation ([`bucket()`]),
//!   with this tier's replicas on its own server ([`ensure_bucket`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use nexus_policies::PublicKey;

mod admission;
mod bucket;
mod own_chain;
mod registry;
#[cfg(test)]
mod tests;

pub use admission::{Admitted, Gatekeeper};
pub use bucket::{bucket, ensure_bucket, open_or_create};
pub use own_chain::OwnChain;
pub use registry::{
    watch_registry, KnownChains, CHAIN_IDLE, MAX_KNOWN_CHAINS, PURGE_EXPIRED_AFTER,
};

/// The key-value bucket where nodes present their token chains to the tier above.
pub const CHAINS_BUCKET: &str = "NEXUS_CHAINS";
/// The key-value bucket that carries the signed revocation list down the tree.
pub const TRUST_BUCKET: &str = "NEXUS_TRUST";
/// The key of the revocation list in [`TRUST_BUCKET`].
pub const REVOCATIONS_KEY: &str = "revocations";

/// The key under which a node's chain is presented: its public key, base64url.
pub fn key_id(key: &PublicKey) -> String {
    URL_SAFE_NO_PAD.encode(key.to_bytes())
}
