//! Errors of the trust core. They derive `PartialEq` so that tests assert exact variants.

/// Why a key or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text does not start with the expected prefix.
    #[error("expected text starting with `{expected}`")]
    MissingPrefix {
        /// The prefix that was expected.
        expected: &'static str,
    },
    /// The text is not unpadded base64url.
    #[error("not valid unpadded base64url")]
    BadEncoding,
    /// The decoded bytes have the wrong length.
    #[error("expected {expected} bytes, got {got}")]
    BadLength {
        /// Expected byte count.
        expected: usize,
        /// Decoded byte count.
        got: usize,
    },
    /// The bytes are not a point on the curve.
    #[error("not a valid Ed25519 public key")]
    InvalidPoint,
    /// A small-order (weak) key, a known forgery vector.
    #[error("weak (small-order) Ed25519 key refused")]
    Weak,
    /// The signature does not verify over the given bytes with the given key.
    #[error("signature does not verify")]
    BadSignature,
}

/// Why a subject pattern or subject was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Nothing at all.
    #[error("empty subject")]
    Empty,
    /// Over the length limit.
    #[error("{len} bytes, over the {max}-byte limit")]
    TooLong {
        /// Length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Two dots in a row, or a leading or trailing dot.
    #[error("empty token at position {index}")]
    EmptyToken {
        /// Zero-based token position.
        index: usize,
    },
    /// Whitespace, a control character or non-ASCII.
    #[error("character {ch:?} is not allowed (printable ASCII without whitespace only)")]
    BadChar {
        /// The first offending character.
        ch: char,
    },
    /// `>` somewhere other than the last token.
    #[error("`>` must be the last token")]
    RestNotLast,
    /// `*` or `>` inside a longer token (`ab*`).
    #[error("wildcard inside token `{token}`: `*` and `>` must be whole tokens")]
    PartialWildcard {
        /// The token.
        token: String,
    },
    /// A wildcard in a concrete subject.
    #[error("wildcard in subject token `{token}`")]
    WildcardInSubject {
        /// The token.
        token: String,
    },
}

/// Why an ACL rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// The principal is not `local`, a node id, or a node id glob.
    #[error("principal `{principal}`: {reason}")]
    BadPrincipal {
        /// The text given.
        principal: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The wall clock cannot be trusted and nothing else tells the time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// The wall clock is before the build-time floor and there is no last-known-good time:
    /// new authorisations fail closed until NTP (or an operator) sets the clock.
    #[error("clock unsynced: wall time {wall} is before the floor {floor} and no last-known-good time is recorded")]
    Unsynced {
        /// The wall clock reading (unix seconds).
        wall: i64,
        /// The floor (unix seconds).
        floor: i64,
    },
}

/// Why a capability token, chain or revocation list was refused.
///
/// Variants that concern one token carry its id, so logs and audit events name it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The input is over its size limit (checked before any decoding).
    #[error("{what} is {len} bytes, over the {max}-byte limit")]
    TooLarge {
        /// What was being decoded or encoded.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More tokens in a chain than allowed.
    #[error("chain of {depth} tokens, over the limit of {max}")]
    TooDeep {
        /// Tokens in the chain.
        depth: usize,
        /// The limit.
        max: usize,
    },
    /// A chain with no token.
    #[error("empty chain")]
    EmptyChain,
    /// Not the expected CBOR structure.
    #[error("malformed: {0}")]
    Malformed(String),
    /// Bytes left after the CBOR item.
    #[error("trailing bytes after the CBOR item")]
    TrailingBytes,
    /// A format version this build does not know.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u64),
    /// A small-order (weak) Ed25519 key in a key field.
    #[error("weak (small-order) Ed25519 key in `{field}`")]
    WeakKey {
        /// The field.
        field: &'static str,
    },
    /// A claim is out of its allowed shape (ids, tenant, window, counts, patterns).
    #[error("invalid claim `{field}`: {reason}")]
    InvalidClaims {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify over the exact claims bytes with the issuer key.
    #[error("token {id}: signature does not verify")]
    BadSignature {
        /// The token.
        id: crate::token::TokenId,
    },
    /// The top of the chain is not signed by a trust anchor.
    #[error("token {id} is issued by {issuer}, which is not a trust anchor")]
    UntrustedRoot {
        /// The topmost token.
        id: crate::token::TokenId,
        /// Its issuer key (boxed: the key type is large, errors stay small).
        issuer: Box<crate::keys::PublicKey>,
    },
    /// A link of the chain does not hang together.
    #[error("token {id}: broken chain: {reason}")]
    BrokenChain {
        /// The child token of the broken link.
        id: crate::token::TokenId,
        /// How it is broken.
        reason: BrokenLink,
    },
    /// A child grants a pattern that no pattern of its parent covers.
    #[error("token {id} over-reaches: {action} `{pattern}` is not granted by its parent")]
    OverReaching {
        /// The child token.
        id: crate::token::TokenId,
        /// Which grant list.
        action: crate::acl::Action,
        /// The first offending pattern.
        pattern: crate::pattern::SubjectPattern,
    },
    /// A child names another tenant (or none) under a parent bound to a tenant.
    #[error("token {id}: tenant {child:?} under a parent bound to tenant `{parent}`")]
    TenantMismatch {
        /// The child token.
        id: crate::token::TokenId,
        /// The parent's tenant.
        parent: String,
        /// The child's tenant.
        child: Option<String>,
    },
    /// A child's role is above its parent's, or the parent is a member (members issue nothing).
    #[error("token {id}: a {parent} token cannot issue a {child} token")]
    RoleEscalation {
        /// The child token.
        id: crate::token::TokenId,
        /// The parent's role.
        parent: crate::token::Role,
        /// The child's role.
        child: crate::token::Role,
    },
    /// A child's validity window is not inside its parent's.
    #[error("token {id}: validity window is not inside its parent's")]
    WiderWindow {
        /// The child token.
        id: crate::token::TokenId,
    },
    /// `not_before` is still in the future (beyond the allowed skew).
    #[error("token {id} is not valid before {not_before} (now {now})")]
    NotYetValid {
        /// The token.
        id: crate::token::TokenId,
        /// Its `not_before` (unix seconds).
        not_before: i64,
        /// The time it was checked at (unix seconds).
        now: i64,
    },
    /// `expires` has passed (beyond the allowed skew).
    #[error("token {id} expired at {expires} (now {now})")]
    Expired {
        /// The token.
        id: crate::token::TokenId,
        /// Its `expires` (unix seconds).
        expires: i64,
        /// The time it was checked at (unix seconds).
        now: i64,
    },
    /// The token's id is on the revocation list.
    #[error("token {id} is revoked")]
    Revoked {
        /// The token.
        id: crate::token::TokenId,
    },
    /// A revocation list signed by a key that is not a trust anchor.
    #[error("revocation list issued by {issuer}, which is not a trust anchor")]
    UntrustedRevocationList {
        /// Its issuer key (boxed: the key type is large, errors stay small).
        issuer: Box<crate::keys::PublicKey>,
    },
    /// A revocation list whose signature does not verify over its exact bytes.
    #[error("revocation list signature does not verify")]
    RevocationListBadSignature,
    /// A release manifest or rollout signed by a key not trusted for it.
    #[error("{what} signed by {signer}, which is not trusted for it")]
    UntrustedSigner {
        /// What was signed.
        what: &'static str,
        /// Its signer key (boxed: the key type is large, errors stay small).
        signer: Box<crate::keys::PublicKey>,
    },
    /// A release manifest or rollout whose signature does not verify over its exact bytes.
    #[error("{0} signature does not verify")]
    BadDocumentSignature(&'static str),
    /// A desired-config document whose signature does not verify over its exact bytes.
    #[error("desired config signature does not verify")]
    DesiredConfigBadSignature,
}

/// How a link between a child token and its parent is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BrokenLink {
    /// The child's `issuer_key` is not its parent's `node_key` (or, when issuing, not the
    /// signing key's public key).
    #[error("issuer_key is not the parent's node_key")]
    IssuerKey,
    /// The child's `parent` is not the parent's `id`.
    #[error("parent reference does not name the parent token")]
    ParentId,
    /// The child names a parent, but the chain (or the issue call) has none.
    #[error("names a parent that is not present")]
    MissingParent,
    /// The child names no parent, but one is present.
    #[error("names no parent, but is not the top of the chain")]
    UnexpectedParent,
}
