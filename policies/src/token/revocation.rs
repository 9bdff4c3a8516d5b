//! Revocation: a set of revoked token ids, and the signed list that carries it.
//!
//! Wire form of a list: CBOR map `{ "list": bstr, "sig": bstr(64) }`, where `list` is the
//! CBOR map `{ "v": 1, "issuer_key": bstr(32), "issued_at": int, "ids": [bstr(16), …] }`
//! and `sig` is the issuer's Ed25519 signature over the exact `list` bytes. A list is
//! trusted only if its issuer is a trust anchor. A newer list (larger `issued_at`)
//! replaces an older one; that bookkeeping is the caller's.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::cbor::{self, ByteArray, ByteBuf, BytesRef};
use super::claims::{key, TokenId, CLAIMS_VERSION};
use super::MAX_REVOCATION_BYTES;
use crate::clock::UnixTime;
use crate::error::TokenError;
use crate::keys::{PublicKey, SecretKey, Signature};

/// Revoked token ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationSet {
    ids: HashSet<TokenId>,
}

impl RevocationSet {
    /// Whether `id` is revoked.
    pub fn contains(&self, id: &TokenId) -> bool {
        self.ids.contains(id)
    }

    /// Revokes `id`.
    pub fn insert(&mut self, id: TokenId) -> bool {
        self.ids.insert(id)
    }

    /// How many ids are revoked.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The revoked ids, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &TokenId> {
        self.ids.iter()
    }
}

impl FromIterator<TokenId> for RevocationSet {
    fn from_iter<I: IntoIterator<Item = TokenId>>(iter: I) -> Self {
        Self {
            ids: iter.into_iter().collect(),
        }
    }
}

impl Extend<TokenId> for RevocationSet {
    fn extend<I: IntoIterator<Item = TokenId>>(&mut self, iter: I) {
        self.ids.extend(iter);
    }
}

/// A signed list of revoked token ids, as published by a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationList {
    ids: Vec<TokenId>,
    issued_at: UnixTime,
    issuer_key: PublicKey,
    /// The list body exactly as signed (as received, when decoded).
    body: Vec<u8>,
    sig: Signature,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyWire {
    v: u64,
    issuer_key: ByteArray<32>,
    issued_at: i64,
    ids: Vec<ByteArray<16>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListWire {
    list: ByteBuf,
    sig: ByteArray<64>,
}

#[derive(Serialize)]
struct ListWireRef<'a> {
    list: BytesRef<'a>,
    sig: ByteArray<64>,
}

impl RevocationList {
    /// Signs a list of revoked ids with `issuer` (a trust anchor's secret key).
    pub fn issue(
        ids: Vec<TokenId>,
        issued_at: UnixTime,
        issuer: &SecretKey,
    ) -> Result<Self, TokenError> {
        let body = cbor::encode(&BodyWire {
            v: CLAIMS_VERSION,
            issuer_key: ByteArray(issuer.public().to_bytes()),
            issued_at: issued_at.0,
            ids: ids.iter().map(|id| ByteArray(id.0)).collect(),
        });
        // Leave room for the outer map and the signature.
        let max = MAX_REVOCATION_BYTES - 128;
        if body.len() > max {
            return Err(TokenError::TooLarge {
                what: "revocation list",
                len: body.len(),
                max,
            });
        }
        let sig = issuer.sign(&body);
        Ok(Self {
            ids,
            issued_at,
            issuer_key: issuer.public(),
            body,
            sig,
        })
    }

    /// The revoked ids.
    pub fn ids(&self) -> &[TokenId] {
        &self.ids
    }

    /// When the list was issued.
    pub fn issued_at(&self) -> UnixTime {
        self.issued_at
    }

    /// Who signed it.
    pub fn issuer_key(&self) -> &PublicKey {
        &self.issuer_key
    }

    /// The wire form (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        cbor::encode(&ListWireRef {
            list: BytesRef(&self.body),
            sig: ByteArray(self.sig.to_bytes()),
        })
    }

    /// Decodes a list from exactly `bytes` (untrusted: at most [`MAX_REVOCATION_BYTES`]).
    /// The signature is checked by [`RevocationList::verify`].
    pub fn decode(bytes: &[u8]) -> Result<Self, TokenError> {
        let wire: ListWire = cbor::decode(bytes, "revocation list", MAX_REVOCATION_BYTES)?;
        let body: BodyWire =
            cbor::decode(&wire.list.0, "revocation list body", MAX_REVOCATION_BYTES)?;
        if body.v != CLAIMS_VERSION {
            return Err(TokenError::UnsupportedVersion(body.v));
        }
        Ok(Self {
            ids: body.ids.iter().map(|b| TokenId(b.0)).collect(),
            issued_at: UnixTime(body.issued_at),
            issuer_key: key("issuer_key", &body.issuer_key.0)?,
            body: wire.list.0,
            sig: Signature::from_bytes(&wire.sig.0),
        })
    }

    /// Checks that a trust anchor signed the exact list bytes, and returns the revoked set.
    pub fn verify(&self, trust_anchors: &[PublicKey]) -> Result<RevocationSet, TokenError> {
        if !trust_anchors.contains(&self.issuer_key) {
            return Err(TokenError::UntrustedRevocationList {
                issuer: Box::new(self.issuer_key),
            });
        }
        self.issuer_key
            .verify(&self.body, &self.sig)
            .map_err(|_| TokenError::RevocationListBadSignature)?;
        Ok(self.ids.iter().copied().collect())
    }
}
