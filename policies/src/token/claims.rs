//! What a token says: its claims, their wire form, and the checks on their shape.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::cbor::{self, ByteArray};
use super::{MAX_CLAIMS_BYTES, MAX_PATTERNS};
use crate::clock::UnixTime;
use crate::error::{KeyError, TokenError};
use crate::ids::{check_node_id, check_tenant};
use crate::keys::PublicKey;
use crate::pattern::SubjectPattern;

/// The claims format version this build writes and reads.
pub const CLAIMS_VERSION: u64 = 1;

/// A token's unique id: 16 random bytes chosen by the issuer (the caller supplies them).
/// Text form: lowercase hex in UUID layout (`8-4-4-4-12`); parsing also takes 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(pub [u8; 16]);

impl TokenId {
    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

/// A token id text that is not 32 hex digits (optionally hyphenated as a UUID).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a token id (32 hex digits, optionally in UUID layout)")]
pub struct TokenIdError;

impl FromStr for TokenId {
    type Err = TokenIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits: Vec<u8> = if s.len() == 36 {
            for (i, c) in s.bytes().enumerate() {
                if matches!(i, 8 | 13 | 18 | 23) != (c == b'-') {
                    return Err(TokenIdError);
                }
            }
            s.bytes().filter(|&c| c != b'-').collect()
        } else {
            s.bytes().collect()
        };
        if digits.len() != 32 {
            return Err(TokenIdError);
        }
        let mut out = [0u8; 16];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or(TokenIdError)?;
            let lo = hex_val(pair[1]).ok_or(TokenIdError)?;
            out[i] = hi << 4 | lo;
        }
        Ok(Self(out))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The tier a token is for. Ordered: member < hub < root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An edge box: issues nothing.
    Member,
    /// A site or region server: issues member (or hub) tokens within its own grant.
    Hub,
    /// A root (cloud) instance.
    Root,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Member => "member",
            Role::Hub => "hub",
            Role::Root => "root",
        })
    }
}

/// What a token grants, to whom, for how long, and who issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Unique id (for revocation and for children's `parent`).
    pub id: TokenId,
    /// The parent token's id; `None` for a token issued directly by a trust anchor.
    pub parent: Option<TokenId>,
    /// The key that signs this token: a trust anchor, or the parent's `node_key`.
    pub issuer_key: PublicKey,
    /// The node this token is for (`[a-z0-9_-]{1,64}`, not `local`).
    pub node_id: String,
    /// The node's public key: it signs the node's envelopes and its children's tokens.
    pub node_key: PublicKey,
    /// The tenant the node is bound to, if any (`[a-z0-9_-]{1,64}`).
    pub tenant: Option<String>,
    /// The node's tier.
    pub role: Role,
    /// Subjects the node may publish.
    pub publish: Vec<SubjectPattern>,
    /// Subjects the node may receive.
    pub receive: Vec<SubjectPattern>,
    /// Valid from (unix seconds, inclusive).
    pub not_before: UnixTime,
    /// Valid until (unix seconds, exclusive).
    pub expires: UnixTime,
}

/// The CBOR map of the claims, field for field (text keys, in this order).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimsWire {
    v: u64,
    id: ByteArray<16>,
    parent: Option<ByteArray<16>>,
    issuer_key: ByteArray<32>,
    node_id: String,
    node_key: ByteArray<32>,
    tenant: Option<String>,
    role: Role,
    publish: Vec<String>,
    receive: Vec<String>,
    not_before: i64,
    expires: i64,
}

impl Claims {
    /// Checks the shape of the claims (ids, window, pattern counts); the same checks run
    /// when issuing and when decoding.
    pub fn validate(&self) -> Result<(), TokenError> {
        let invalid = |field, reason: &str| TokenError::InvalidClaims {
            field,
            reason: reason.into(),
        };
        check_node_id(&self.node_id).map_err(|r| invalid("node_id", r))?;
        if let Some(tenant) = &self.tenant {
            check_tenant(tenant).map_err(|r| invalid("tenant", r))?;
        }
        if self.expires <= self.not_before {
            return Err(invalid("expires", "must be after not_before"));
        }
        for (field, list) in [("publish", &self.publish), ("receive", &self.receive)] {
            if list.len() > MAX_PATTERNS {
                return Err(invalid(field, "more than 64 patterns"));
            }
        }
        Ok(())
    }

    /// The canonical CBOR encoding (what is signed when issuing).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let pats = |l: &[SubjectPattern]| l.iter().map(|p| p.as_str().to_string()).collect();
        cbor::encode(&ClaimsWire {
            v: CLAIMS_VERSION,
            id: ByteArray(self.id.0),
            parent: self.parent.map(|p| ByteArray(p.0)),
            issuer_key: ByteArray(self.issuer_key.to_bytes()),
            node_id: self.node_id.clone(),
            node_key: ByteArray(self.node_key.to_bytes()),
            tenant: self.tenant.clone(),
            role: self.role,
            publish: pats(&self.publish),
            receive: pats(&self.receive),
            not_before: self.not_before.0,
            expires: self.expires.0,
        })
    }

    /// Decodes and validates claims from exactly `bytes` (untrusted).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, TokenError> {
        let w: ClaimsWire = cbor::decode(bytes, "claims", MAX_CLAIMS_BYTES)?;
        if w.v != CLAIMS_VERSION {
            return Err(TokenError::UnsupportedVersion(w.v));
        }
        let claims = Claims {
            id: TokenId(w.id.0),
            parent: w.parent.map(|p| TokenId(p.0)),
            issuer_key: key("issuer_key", &w.issuer_key.0)?,
            node_id: w.node_id,
            node_key: key("node_key", &w.node_key.0)?,
            tenant: w.tenant,
            role: w.role,
            publish: patterns("publish", &w.publish)?,
            receive: patterns("receive", &w.receive)?,
            not_before: UnixTime(w.not_before),
            expires: UnixTime(w.expires),
        };
        claims.validate()?;
        Ok(claims)
    }
}

/// A key field: weak keys are refused.
pub(crate) fn key(field: &'static str, bytes: &[u8; 32]) -> Result<PublicKey, TokenError> {
    PublicKey::from_bytes(bytes).map_err(|e| match e {
        KeyError::Weak => TokenError::WeakKey { field },
        other => TokenError::InvalidClaims {
            field,
            reason: other.to_string(),
        },
    })
}

fn patterns(field: &'static str, texts: &[String]) -> Result<Vec<SubjectPattern>, TokenError> {
    if texts.len() > MAX_PATTERNS {
        return Err(TokenError::InvalidClaims {
            field,
            reason: "more than 64 patterns".into(),
        });
    }
    texts
        .iter()
        .map(|t| {
            SubjectPattern::parse(t).map_err(|e| TokenError::InvalidClaims {
                field,
                reason: format!("`{t}`: {e}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_print_as_uuids_and_parse_back() {
        let id = TokenId([0xab; 16]);
        let text = id.to_string();
        assert_eq!(text, "abababab-abab-abab-abab-abababababab");
        assert_eq!(text.parse(), Ok(id));
        assert_eq!(text.replace('-', "").parse(), Ok(id));
        assert_eq!(text.to_uppercase().parse(), Ok(id));
        for bad in [
            "",
            "abab",
            "abababab-abab-abab-abab-ababababab-b",
            "zz".repeat(16).as_str(),
        ] {
            assert_eq!(bad.parse::<TokenId>(), Err(TokenIdError), "{bad}");
        }
    }

    #[test]
    fn roles_are_ordered_member_hub_root() {
        assert!(Role::Member < Role::Hub && Role::Hub < Role::Root);
        assert_eq!(Role::Hub.to_string(), "hub");
    }
}
