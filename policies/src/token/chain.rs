//! Signed tokens, chains of them, issuing with attenuation, and the link checks that
//! issuing and verifying share.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::cbor::{self, ByteArray, ByteBuf, BytesRef};
use super::claims::{Claims, Role, TokenId};
use super::{MAX_CHAIN_BYTES, MAX_CHAIN_DEPTH, MAX_CLAIMS_BYTES, MAX_TOKEN_BYTES};
use crate::acl::Action;
use crate::error::{BrokenLink, TokenError};
use crate::keys::{SecretKey, Signature};
use crate::pattern::SubjectPattern;

/// A signed capability token: claims, their exact bytes, and the issuer's signature over
/// those bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    claims: Claims,
    /// The claims exactly as signed (as received, when decoded): never re-encoded.
    claims_bytes: Vec<u8>,
    sig: Signature,
}

/// The wire map of a token, for decoding.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenWire {
    claims: ByteBuf,
    sig: ByteArray<64>,
}

/// The wire map of a token, for encoding.
#[derive(Serialize)]
struct TokenWireRef<'a> {
    claims: BytesRef<'a>,
    sig: ByteArray<64>,
}

impl Token {
    /// Issues a token: checks the claims, that `issuer` is the claimed `issuer_key`, and,
    /// given a parent, that the child hangs from it and is attenuated (see
    /// [`check_attenuation`]); then signs. Without a parent the token is a top token, to be
    /// signed by a trust anchor (this function cannot know the anchors).
    pub fn issue(
        claims: Claims,
        issuer: &SecretKey,
        parent: Option<&Token>,
    ) -> Result<Token, TokenError> {
        claims.validate()?;
        let broken = |reason| TokenError::BrokenChain {
            id: claims.id,
            reason,
        };
        if claims.issuer_key != issuer.public() {
            return Err(broken(BrokenLink::IssuerKey));
        }
        match parent {
            Some(parent) => {
                check_link(&parent.claims, &claims)?;
                check_attenuation(&parent.claims, &claims)?;
            }
            None if claims.parent.is_some() => return Err(broken(BrokenLink::MissingParent)),
            None => {}
        }
        Self::sign_unchecked(claims, issuer)
    }

    /// Signs `claims` with `issuer` after the shape checks only: no issuer, link or
    /// attenuation checks. For tests and tools that must produce bad tokens; verifiers
    /// refuse whatever does not hold up.
    pub fn sign_unchecked(claims: Claims, issuer: &SecretKey) -> Result<Token, TokenError> {
        claims.validate()?;
        let claims_bytes = claims.encode();
        if claims_bytes.len() > MAX_CLAIMS_BYTES {
            return Err(TokenError::TooLarge {
                what: "claims",
                len: claims_bytes.len(),
                max: MAX_CLAIMS_BYTES,
            });
        }
        let sig = issuer.sign(&claims_bytes);
        Ok(Token {
            claims,
            claims_bytes,
            sig,
        })
    }

    /// The claims.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// The token's id.
    pub fn id(&self) -> TokenId {
        self.claims.id
    }

    /// The exact claims bytes the signature covers.
    pub fn claims_bytes(&self) -> &[u8] {
        &self.claims_bytes
    }

    /// The issuer's signature.
    pub fn signature(&self) -> &Signature {
        &self.sig
    }

    /// Checks the signature over the exact claims bytes with the claimed `issuer_key`
    /// (strict verification). Whether that key is trusted is the chain's business.
    pub fn verify_signature(&self) -> Result<(), TokenError> {
        self.claims
            .issuer_key
            .verify(&self.claims_bytes, &self.sig)
            .map_err(|_| TokenError::BadSignature { id: self.claims.id })
    }

    fn wire(&self) -> TokenWireRef<'_> {
        TokenWireRef {
            claims: BytesRef(&self.claims_bytes),
            sig: ByteArray(self.sig.to_bytes()),
        }
    }

    /// The wire form: CBOR map `{ "claims": bstr, "sig": bstr(64) }`.
    pub fn encode(&self) -> Vec<u8> {
        cbor::encode(&self.wire())
    }

    /// Decodes a token from exactly `bytes` (untrusted: at most [`MAX_TOKEN_BYTES`]).
    /// The signature is not checked here: it needs the chain's context.
    pub fn decode(bytes: &[u8]) -> Result<Token, TokenError> {
        let wire: TokenWire = cbor::decode(bytes, "token", MAX_TOKEN_BYTES)?;
        Self::from_wire(wire)
    }

    fn from_wire(wire: TokenWire) -> Result<Token, TokenError> {
        let claims = Claims::decode(&wire.claims.0)?;
        Ok(Token {
            claims,
            claims_bytes: wire.claims.0,
            sig: Signature::from_bytes(&wire.sig.0),
        })
    }
}

/// A chain of tokens, **leaf first**: `[leaf, its parent, …, top]`, where the top token is
/// signed by a trust anchor. 1 to [`MAX_CHAIN_DEPTH`] tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    tokens: Vec<Token>,
    /// [`Self::key`], computed once: a tier checks it for every event the chain signs.
    key: ChainKey,
}

/// A fingerprint of a chain's exact bytes (SHA-256), the key of the verification cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainKey(pub [u8; 32]);

impl Chain {
    /// A chain from tokens, leaf first. Only the length is checked here.
    pub fn new(tokens: Vec<Token>) -> Result<Self, TokenError> {
        if tokens.is_empty() {
            return Err(TokenError::EmptyChain);
        }
        if tokens.len() > MAX_CHAIN_DEPTH {
            return Err(TokenError::TooDeep {
                depth: tokens.len(),
                max: MAX_CHAIN_DEPTH,
            });
        }
        let key = Self::fingerprint(&tokens);
        Ok(Self { tokens, key })
    }

    /// The tokens, leaf first.
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// The leaf: the token of the node presenting the chain.
    pub fn leaf(&self) -> &Token {
        &self.tokens[0]
    }

    /// The wire form: a CBOR array of token maps, leaf first.
    pub fn encode(&self) -> Vec<u8> {
        let wires: Vec<TokenWireRef<'_>> = self.tokens.iter().map(Token::wire).collect();
        cbor::encode(&wires)
    }

    /// Decodes a chain from exactly `bytes` (untrusted: at most [`MAX_CHAIN_BYTES`], at
    /// most [`MAX_CHAIN_DEPTH`] tokens). Signatures are checked by the verifier.
    pub fn decode(bytes: &[u8]) -> Result<Self, TokenError> {
        let wires: Vec<TokenWire> = cbor::decode(bytes, "chain", MAX_CHAIN_BYTES)?;
        if wires.len() > MAX_CHAIN_DEPTH {
            return Err(TokenError::TooDeep {
                depth: wires.len(),
                max: MAX_CHAIN_DEPTH,
            });
        }
        let tokens = wires
            .into_iter()
            .map(Token::from_wire)
            .collect::<Result<_, _>>()?;
        Self::new(tokens)
    }

    /// SHA-256 over each token's claims length (u32 big-endian), claims bytes and
    /// signature, leaf first: equal keys mean byte-identical chains.
    pub fn key(&self) -> ChainKey {
        self.key
    }

    fn fingerprint(tokens: &[Token]) -> ChainKey {
        let mut h = Sha256::new();
        for t in tokens {
            let len = u32::try_from(t.claims_bytes.len()).unwrap_or(u32::MAX);
            h.update(len.to_be_bytes());
            h.update(&t.claims_bytes);
            h.update(t.sig.to_bytes());
        }
        ChainKey(h.finalize().into())
    }
}

/// The identity part of a link: the child names the parent and is signed by its node key.
pub(crate) fn check_link(parent: &Claims, child: &Claims) -> Result<(), TokenError> {
    let broken = |reason| TokenError::BrokenChain {
        id: child.id,
        reason,
    };
    if child.issuer_key != parent.node_key {
        return Err(broken(BrokenLink::IssuerKey));
    }
    match child.parent {
        None => Err(broken(BrokenLink::UnexpectedParent)),
        Some(p) if p != parent.id => Err(broken(BrokenLink::ParentId)),
        Some(_) => Ok(()),
    }
}

/// Attenuation: a child never holds more than its parent.
/// - a member issues nothing, and a child's role is not above its parent's;
/// - under a parent bound to a tenant, the child is bound to the same tenant;
/// - the child's validity window lies inside the parent's;
/// - every publish (receive) pattern of the child is covered by a publish (receive)
///   pattern of the parent.
pub fn check_attenuation(parent: &Claims, child: &Claims) -> Result<(), TokenError> {
    let id = child.id;
    if parent.role == Role::Member || child.role > parent.role {
        return Err(TokenError::RoleEscalation {
            id,
            parent: parent.role,
            child: child.role,
        });
    }
    if let Some(tenant) = &parent.tenant {
        if child.tenant.as_ref() != Some(tenant) {
            return Err(TokenError::TenantMismatch {
                id,
                parent: tenant.clone(),
                child: child.tenant.clone(),
            });
        }
    }
    if child.not_before < parent.not_before || child.expires > parent.expires {
        return Err(TokenError::WiderWindow { id });
    }
    covered(id, Action::Publish, &parent.publish, &child.publish)?;
    covered(id, Action::Receive, &parent.receive, &child.receive)
}

fn covered(
    id: TokenId,
    action: Action,
    parent: &[SubjectPattern],
    child: &[SubjectPattern],
) -> Result<(), TokenError> {
    match child.iter().find(|c| !parent.iter().any(|p| p.covers(c))) {
        Some(pattern) => Err(TokenError::OverReaching {
            id,
            action,
            pattern: pattern.clone(),
        }),
        None => Ok(()),
    }
}
