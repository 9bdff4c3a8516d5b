//! Capability tokens: who a node is, what it may publish and receive, for how long, and
//! who vouches for it, signed with Ed25519 and chained up to a trust anchor.
//!
//! # Byte layout
//!
//! All CBOR (RFC 8949); maps have text keys; `bstr(n)` is a byte string of n bytes.
//!
//! ```text
//! token  = { "claims": bstr, "sig": bstr(64) }
//!          sig = Ed25519(issuer secret key, the exact claims bytes)
//! claims = {                         (the CBOR inside the "claims" byte string)
//!            "v":          1,
//!            "id":         bstr(16),            random, chosen by the issuer
//!            "parent":     bstr(16) / null,     the parent token's id; null at the top
//!            "issuer_key": bstr(32),            Ed25519 key that signs this token
//!            "node_id":    tstr,                [a-z0-9_-]{1,64}, not "local"
//!            "node_key":   bstr(32),            the node's Ed25519 key
//!            "tenant":     tstr / null,         [a-z0-9_-]{1,64}
//!            "role":       "member" / "hub" / "root",
//!            "publish":    [* tstr],            NATS subject patterns, at most 64
//!            "receive":    [* tstr],            NATS subject patterns, at most 64
//!            "not_before": int,                 unix seconds, inclusive
//!            "expires":    int,                 unix seconds, exclusive, > not_before
//!          }
//! chain  = [ token, parent token, …, top token ]   leaf first, 1..=4 tokens
//!
//! revocation list = { "list": bstr, "sig": bstr(64) }
//!          sig = Ed25519(trust anchor secret key, the exact list bytes)
//! list   = { "v": 1, "issuer_key": bstr(32), "issued_at": int, "ids": [* bstr(16)] }
//! ```
//!
//! # Invariants
//!
//! - Signatures cover the claims bytes exactly as received; nothing is re-encoded before
//!   verifying, and a decoded token re-encodes to the same bytes.
//! - Untrusted bytes are size-capped before decoding ([`MAX_TOKEN_BYTES`],
//!   [`MAX_CHAIN_BYTES`], [`MAX_REVOCATION_BYTES`]), decoded into typed structs with a
//!   recursion limit, unknown keys refused, and must be consumed whole.
//! - Weak (small-order) keys are refused in every key field; signatures are checked with
//!   `verify_strict`.
//! - Attenuation holds at every link, at issue time and again at verify time: a child's
//!   patterns are each covered by a pattern of the same kind of its parent, its tenant
//!   is the parent's (when the parent has one), its window is inside the parent's, its
//!   role is not above the parent's, and a member issues nothing.
//! - Time is an argument ([`UnixTime`](crate::clock::UnixTime)); see
//!   [`clock`](crate::clock) for what "now" is on a box without an RTC.

mod cache;
mod cbor;
mod chain;
mod claims;
mod desired;
mod release;
mod revocation;
mod verify;

#[cfg(test)]
mod tests;

pub use cache::{ChainCache, DEFAULT_CACHE_CAPACITY};
pub use chain::{check_attenuation, Chain, ChainKey, Token};
pub use claims::{Claims, Role, TokenId, TokenIdError, CLAIMS_VERSION};
pub use desired::{DesiredConfig, DesiredSpec, MAX_DESIRED_BYTES};
pub use release::{
    AgentVersion, ReleaseManifest, ReleaseSpec, Rollout, RolloutSpec, RolloutState,
    MAX_RELEASE_DOC_BYTES,
};
pub use revocation::{RevocationList, RevocationSet};
pub use verify::{VerifiedGrant, Verifier, DEFAULT_SKEW};

/// Largest encoded token accepted or produced.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest claims byte string (leaves room in a token for the map and the signature).
pub const MAX_CLAIMS_BYTES: usize = MAX_TOKEN_BYTES - 128;
/// Largest encoded chain accepted.
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;
/// Most tokens in a chain (anchor → root instance → hub → member is 3).
pub const MAX_CHAIN_DEPTH: usize = 4;
/// Most patterns in one grant list.
pub const MAX_PATTERNS: usize = 64;
/// Largest encoded revocation list accepted (about 7,000 ids).
pub const MAX_REVOCATION_BYTES: usize = 128 * 1024;
