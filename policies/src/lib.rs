//! The trust core of nexus-agent: node keys and signatures, subject patterns, the
//! operator's prefix ACLs, capability tokens and their chains, revocation, and the rule
//! for telling the time on a box without a real-time clock.
//!
//! This crate does no I/O, reads no clock and spawns nothing: bytes, keys and time are
//! arguments. That makes it the easiest crate to test and fuzz, and the one that must
//! never be wrong. It does not know about NATS connections, envelopes or config files:
//! the federation and config crates bring the bytes and wire the results.
//!
//! What a node may forward is the intersection of the operator's [`Acl`] and the
//! [`VerifiedGrant`] of its token chain.
//!
//! # Layout
//! - `keys`: Ed25519 public/secret keys, signatures and their text forms.
//! - `ids`: node and tenant id rules (`[a-z0-9_-]{1,64}`; `local` is reserved).
//! - `subjects`: the federation's subject scheme (`nexus.{tenant}.{event}`, `_nexus.…`,
//!   event names, the subjects no local app may take over).
//! - `pattern`: NATS subject patterns: parse, `matches`, `covers` (the subset test).
//! - `rewrite`: subject rewrites of bridge rules (`app.booking.*` → `booking.*`).
//! - `acl`: the operator's `[[acl]]` rules: deny wins, default deny, decisions name a rule.
//! - `token`: capability tokens: claims, CBOR wire form, issuing with attenuation, chain
//!   verification up to a trust anchor, the verification cache, revocation lists.
//! - `clock`: `UnixTime` and the `ClockGuard` rule for unsynced clocks.
//! - `error`: the error enums, comparable with `==` in tests.

pub mod acl;
pub mod clock;
pub mod error;
pub mod ids;
pub mod keys;
pub mod pattern;
pub mod rewrite;
pub mod subjects;
pub mod token;

pub use acl::{Acl, AclRule, Action, Decision, Principal};
pub use clock::{ClockGuard, EffectiveNow, TimeSource, UnixTime, BUILD_FLOOR};
pub use error::{AclError, BrokenLink, ClockError, KeyError, PatternError, TokenError};
pub use keys::{PublicKey, SecretKey, Signature};
pub use pattern::SubjectPattern;
pub use rewrite::{RewriteError, SubjectRewrite};
pub use token::{
    AgentVersion, Chain, ChainCache, Claims, DesiredConfig, DesiredSpec, ReleaseManifest,
    ReleaseSpec, RevocationList, RevocationSet, Role, Rollout, RolloutSpec, RolloutState, Token,
    TokenId, VerifiedGrant, Verifier,
};
