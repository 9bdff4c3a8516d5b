//! Desired config: a signed document that tells one node which config to run.
//!
//! Wire form: CBOR map `{ "doc": bstr, "sig": bstr(64) }`, where `doc` is the CBOR map
//! `{ "v": 1, "node": text, "version": uint, "issued_at": int, "issuer_id": text,
//! "issuer_key": bstr(32), "patch": [text, …] | null, "toml": text }` and `sig` is the
//! issuer's Ed25519 signature over the exact `doc` bytes.
//!
//! `patch: null` means `toml` is the whole file; a list names the top-level sections that
//! `toml` replaces in the node's current file. Who may issue a document for a node (a trust
//! anchor, or the hub that issued the node's token) and what a hub may change are the
//! agent's rules; this type only proves who signed which bytes.

use serde::{Deserialize, Serialize};

use super::cbor::{self, ByteArray};
use super::claims::{key, CLAIMS_VERSION};
use crate::clock::UnixTime;
use crate::error::TokenError;
use crate::ids::check_id;
use crate::keys::{PublicKey, SecretKey, Signature};

/// The largest encoded document accepted (a config file is a few KiB).
pub const MAX_DESIRED_BYTES: usize = 256 * 1024;

/// What a document asks for, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredSpec {
    /// The node it is for.
    pub node: String,
    /// Its version for that node: larger replaces smaller.
    pub version: u64,
    /// When it was issued.
    pub issued_at: UnixTime,
    /// The issuing node's id (a root's or a hub's).
    pub issuer_id: String,
    /// `None`: `toml` is the whole file. `Some(sections)`: `toml` replaces these
    /// top-level sections of the node's file.
    pub patch: Option<Vec<String>>,
    /// The TOML text.
    pub toml: String,
}

/// A signed desired-config document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredConfig {
    spec: DesiredSpec,
    issuer_key: PublicKey,
    /// The document body exactly as signed (as received, when decoded).
    body: Vec<u8>,
    sig: Signature,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyWire {
    v: u64,
    node: String,
    version: u64,
    issued_at: i64,
    issuer_id: String,
    issuer_key: ByteArray<32>,
    patch: Option<Vec<String>>,
    toml: String,
}

impl DesiredConfig {
    /// Signs `spec` with `issuer`'s key.
    pub fn issue(spec: DesiredSpec, issuer: &SecretKey) -> Result<Self, TokenError> {
        check_spec(&spec)?;
        let body = cbor::encode(&BodyWire {
            v: CLAIMS_VERSION,
            node: spec.node.clone(),
            version: spec.version,
            issued_at: spec.issued_at.0,
            issuer_id: spec.issuer_id.clone(),
            issuer_key: ByteArray(issuer.public().to_bytes()),
            patch: spec.patch.clone(),
            toml: spec.toml.clone(),
        });
        let max = MAX_DESIRED_BYTES - 128;
        if body.len() > max {
            return Err(TokenError::TooLarge {
                what: "desired config",
                len: body.len(),
                max,
            });
        }
        let sig = issuer.sign(&body);
        Ok(Self {
            spec,
            issuer_key: issuer.public(),
            body,
            sig,
        })
    }

    /// What it asks for.
    pub fn spec(&self) -> &DesiredSpec {
        &self.spec
    }

    /// Who signed it (checked by [`DesiredConfig::verify`]).
    pub fn issuer_key(&self) -> &PublicKey {
        &self.issuer_key
    }

    /// The wire form (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        cbor::seal(&self.body, &self.sig)
    }

    /// Decodes a document from exactly `bytes` (untrusted: at most [`MAX_DESIRED_BYTES`]).
    /// The signature is checked by [`DesiredConfig::verify`].
    pub fn decode(bytes: &[u8]) -> Result<Self, TokenError> {
        let (doc, sig) = cbor::unseal(bytes, "desired config", MAX_DESIRED_BYTES)?;
        let body: BodyWire = cbor::decode(&doc, "desired config body", MAX_DESIRED_BYTES)?;
        if body.v != CLAIMS_VERSION {
            return Err(TokenError::UnsupportedVersion(body.v));
        }
        let spec = DesiredSpec {
            node: body.node,
            version: body.version,
            issued_at: UnixTime(body.issued_at),
            issuer_id: body.issuer_id,
            patch: body.patch,
            toml: body.toml,
        };
        check_spec(&spec)?;
        Ok(Self {
            spec,
            issuer_key: key("issuer_key", &body.issuer_key.0)?,
            body: doc,
            sig,
        })
    }

    /// Checks that the issuer key signed the exact document bytes.
    pub fn verify(&self) -> Result<(), TokenError> {
        self.issuer_key
            .verify(&self.body, &self.sig)
            .map_err(|_| TokenError::DesiredConfigBadSignature)
    }
}

fn check_spec(spec: &DesiredSpec) -> Result<(), TokenError> {
    let invalid = |field, reason: String| TokenError::InvalidClaims { field, reason };
    check_id(&spec.node).map_err(|e| invalid("node", e.to_string()))?;
    check_id(&spec.issuer_id).map_err(|e| invalid("issuer_id", e.to_string()))?;
    if spec.version == 0 {
        return Err(invalid("version", "starts at 1".into()));
    }
    if let Some(sections) = &spec.patch {
        if sections.is_empty() {
            return Err(invalid("patch", "names no section".into()));
        }
        if let Some(bad) = sections
            .iter()
            .find(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        {
            return Err(invalid(
                "patch",
                format!("`{bad}` is not a section name (lower-case letters and `_`)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DesiredSpec {
        DesiredSpec {
            node: "edge-01".into(),
            version: 3,
            issued_at: UnixTime(1_800_000_000),
            issuer_id: "cloud".into(),
            patch: Some(vec!["iot".into()]),
            toml: "[iot]\nbroker = \"mqtt://127.0.0.1:1883\"\n".into(),
        }
    }

    #[test]
    fn round_trips_and_verifies() {
        let key = SecretKey::from_seed(&[7; 32]).expect("seed");
        let doc = DesiredConfig::issue(spec(), &key).expect("issue");
        let decoded = DesiredConfig::decode(&doc.encode()).expect("decode");
        assert_eq!(decoded, doc);
        assert_eq!(decoded.spec(), &spec());
        assert_eq!(decoded.issuer_key(), &key.public());
        decoded.verify().expect("verifies");
    }

    #[test]
    fn a_changed_byte_does_not_verify() {
        let key = SecretKey::from_seed(&[7; 32]).expect("seed");
        let mut bytes = DesiredConfig::issue(spec(), &key).expect("issue").encode();
        let at = bytes
            .windows(6)
            .position(|w| w == b"broker")
            .expect("the toml is in the body");
        bytes[at] = b'c';
        let doc = DesiredConfig::decode(&bytes).expect("still decodes");
        assert!(matches!(
            doc.verify(),
            Err(TokenError::DesiredConfigBadSignature)
        ));
    }

    #[test]
    fn bad_specs_are_refused() {
        let key = SecretKey::from_seed(&[7; 32]).expect("seed");
        let mut zero = spec();
        zero.version = 0;
        assert!(DesiredConfig::issue(zero, &key).is_err());
        let mut empty = spec();
        empty.patch = Some(Vec::new());
        assert!(DesiredConfig::issue(empty, &key).is_err());
        let mut bad = spec();
        bad.patch = Some(vec!["iot.sensors".into()]);
        assert!(DesiredConfig::issue(bad, &key).is_err());
        let mut node = spec();
        node.node = "Edge 01".into();
        assert!(DesiredConfig::issue(node, &key).is_err());
    }

    #[test]
    fn garbage_and_oversize_are_errors() {
        assert!(DesiredConfig::decode(b"").is_err());
        assert!(DesiredConfig::decode(&[0xff; 64]).is_err());
        assert!(DesiredConfig::decode(&vec![0u8; MAX_DESIRED_BYTES + 1]).is_err());
    }
}
