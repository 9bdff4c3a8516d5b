//! Agent releases and rollouts: the signed manifest of a release binary, and the signed
//! record of a rollout (docs/updates.md).
//!
//! Wire form of both: CBOR map `{ "doc": bstr, "sig": bstr(64) }` around the CBOR body,
//! signed over the exact body bytes like a desired-config document. A manifest is trusted
//! only when a release key (`trust.release_keys`, never the root key) signed it; a rollout
//! only when a trust anchor did. A hub relays both and cannot forge either: it can delay
//! an update, never choose the binary.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::cbor::{self, ByteArray};
use super::claims::{key, CLAIMS_VERSION};
use crate::clock::UnixTime;
use crate::error::TokenError;
use crate::keys::{PublicKey, SecretKey, Signature};

/// The largest manifest or rollout record accepted.
pub const MAX_RELEASE_DOC_BYTES: usize = 16 * 1024;

/// An agent version: `MAJOR.MINOR.PATCH`, compared numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AgentVersion(pub u64, pub u64, pub u64);

impl AgentVersion {
    /// Parses `1.2.3`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a version: MAJOR.MINOR.PATCH, e.g. 0.2.0");
        let mut numbers = text.split('.').map(|p| {
            if !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()) {
                p.parse::<u64>().map_err(|_| bad())
            } else {
                Err(bad())
            }
        });
        let mut next = || numbers.next().unwrap_or_else(|| Err(bad()));
        let version = Self(next()?, next()?, next()?);
        if numbers.next().is_some() {
            return Err(bad());
        }
        Ok(version)
    }
}

impl Ord for AgentVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.0, self.1, self.2).cmp(&(other.0, other.1, other.2))
    }
}

impl PartialOrd for AgentVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for AgentVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// What a release manifest says about one binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseSpec {
    /// The agent version the binary reports.
    pub version: AgentVersion,
    /// The target triple it is built for (`aarch64-unknown-linux-gnu`).
    pub target: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// The oldest version it may replace.
    pub min_version: AgentVersion,
    /// When it was signed.
    pub issued_at: UnixTime,
}

/// A signed release manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseManifest {
    spec: ReleaseSpec,
    signer: PublicKey,
    body: Vec<u8>,
    sig: Signature,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestWire {
    v: u64,
    version: String,
    target: String,
    size: u64,
    sha256: ByteArray<32>,
    min_version: String,
    issued_at: i64,
    signer: ByteArray<32>,
}

/// Which way a rollout goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Hubs start waves.
    Active,
    /// No new wave starts; installs under way finish.
    Paused,
    /// No install starts any more.
    Aborted,
}

impl RolloutState {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Active => "active",
            RolloutState::Paused => "paused",
            RolloutState::Aborted => "aborted",
        }
    }
}

/// What a rollout record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSpec {
    /// The rollout's id (its start time, unix seconds): records of one rollout share it.
    pub id: u64,
    /// The version to install.
    pub version: AgentVersion,
    /// Which nodes: a node id or a glob (`edge-*`).
    pub to: String,
    /// The share of matching nodes (1–100), chosen by a stable hash of the node id.
    pub percent: u8,
    /// How many failed members stop a hub's waves (more than this many).
    pub max_failures: u32,
    /// Whether an older version may replace a newer one.
    pub allow_downgrade: bool,
    /// Active, paused or aborted.
    pub state: RolloutState,
    /// When this record was signed (a later record of the same id replaces it).
    pub issued_at: UnixTime,
}

/// A signed rollout record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    spec: RolloutSpec,
    signer: PublicKey,
    body: Vec<u8>,
    sig: Signature,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutWire {
    v: u64,
    id: u64,
    version: String,
    to: String,
    percent: u8,
    max_failures: u32,
    allow_downgrade: bool,
    state: RolloutState,
    issued_at: i64,
    signer: ByteArray<32>,
}

fn version(field: &'static str, text: &str) -> Result<AgentVersion, TokenError> {
    AgentVersion::parse(text).map_err(|reason| TokenError::InvalidClaims { field, reason })
}

fn signed_by(
    what: &'static str,
    signer: &PublicKey,
    trusted: &[PublicKey],
    body: &[u8],
    sig: &Signature,
) -> Result<(), TokenError> {
    if !trusted.contains(signer) {
        return Err(TokenError::UntrustedSigner {
            what,
            signer: Box::new(*signer),
        });
    }
    signer
        .verify(body, sig)
        .map_err(|_| TokenError::BadDocumentSignature(what))
}

impl ReleaseManifest {
    /// Signs `spec` with a release key.
    pub fn issue(spec: ReleaseSpec, key: &SecretKey) -> Result<Self, TokenError> {
        if spec.target.is_empty()
            || spec.target.len() > 64
            || !spec
                .target
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(TokenError::InvalidClaims {
                field: "target",
                reason: "a target triple, e.g. aarch64-unknown-linux-gnu".into(),
            });
        }
        let body = cbor::encode(&ManifestWire {
            v: CLAIMS_VERSION,
            version: spec.version.to_string(),
            target: spec.target.clone(),
            size: spec.size,
            sha256: ByteArray(spec.sha256),
            min_version: spec.min_version.to_string(),
            issued_at: spec.issued_at.0,
            signer: ByteArray(key.public().to_bytes()),
        });
        let sig = key.sign(&body);
        Ok(Self {
            spec,
            signer: key.public(),
            body,
            sig,
        })
    }

    /// What it says.
    pub fn spec(&self) -> &ReleaseSpec {
        &self.spec
    }

    /// Who signed it.
    pub fn signer(&self) -> &PublicKey {
        &self.signer
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        cbor::seal(&self.body, &self.sig)
    }

    /// Decodes a manifest (untrusted); [`ReleaseManifest::verify`] checks it.
    pub fn decode(bytes: &[u8]) -> Result<Self, TokenError> {
        let (body, sig) = cbor::unseal(bytes, "release manifest", MAX_RELEASE_DOC_BYTES)?;
        let w: ManifestWire = cbor::decode(&body, "release manifest body", MAX_RELEASE_DOC_BYTES)?;
        if w.v != CLAIMS_VERSION {
            return Err(TokenError::UnsupportedVersion(w.v));
        }
        Ok(Self {
            spec: ReleaseSpec {
                version: version("version", &w.version)?,
                target: w.target,
                size: w.size,
                sha256: w.sha256.0,
                min_version: version("min_version", &w.min_version)?,
                issued_at: UnixTime(w.issued_at),
            },
            signer: key("signer", &w.signer.0)?,
            body,
            sig,
        })
    }

    /// Checks that one of `release_keys` signed the exact bytes.
    pub fn verify(&self, release_keys: &[PublicKey]) -> Result<(), TokenError> {
        signed_by(
            "release manifest",
            &self.signer,
            release_keys,
            &self.body,
            &self.sig,
        )
    }
}

impl Rollout {
    /// Signs `spec` with a trust anchor's key.
    pub fn issue(spec: RolloutSpec, key: &SecretKey) -> Result<Self, TokenError> {
        if !(1..=100).contains(&spec.percent) {
            return Err(TokenError::InvalidClaims {
                field: "percent",
                reason: "1 to 100".into(),
            });
        }
        let body = cbor::encode(&RolloutWire {
            v: CLAIMS_VERSION,
            id: spec.id,
            version: spec.version.to_string(),
            to: spec.to.clone(),
            percent: spec.percent,
            max_failures: spec.max_failures,
            allow_downgrade: spec.allow_downgrade,
            state: spec.state,
            issued_at: spec.issued_at.0,
            signer: ByteArray(key.public().to_bytes()),
        });
        let sig = key.sign(&body);
        Ok(Self {
            spec,
            signer: key.public(),
            body,
            sig,
        })
    }

    /// What it says.
    pub fn spec(&self) -> &RolloutSpec {
        &self.spec
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        cbor::seal(&self.body, &self.sig)
    }

    /// Decodes a record (untrusted); [`Rollout::verify`] checks it.
    pub fn decode(bytes: &[u8]) -> Result<Self, TokenError> {
        let (body, sig) = cbor::unseal(bytes, "rollout", MAX_RELEASE_DOC_BYTES)?;
        let w: RolloutWire = cbor::decode(&body, "rollout body", MAX_RELEASE_DOC_BYTES)?;
        if w.v != CLAIMS_VERSION {
            return Err(TokenError::UnsupportedVersion(w.v));
        }
        Ok(Self {
            spec: RolloutSpec {
                id: w.id,
                version: version("version", &w.version)?,
                to: w.to,
                percent: w.percent,
                max_failures: w.max_failures,
                allow_downgrade: w.allow_downgrade,
                state: w.state,
                issued_at: UnixTime(w.issued_at),
            },
            signer: key("signer", &w.signer.0)?,
            body,
            sig,
        })
    }

    /// Checks that a trust anchor signed the exact bytes.
    pub fn verify(&self, anchors: &[PublicKey]) -> Result<(), TokenError> {
        signed_by("rollout", &self.signer, anchors, &self.body, &self.sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed(&[n; 32]).expect("seed")
    }

    #[test]
    fn versions_parse_and_compare_numerically() {
        let v = |t| AgentVersion::parse(t).expect(t);
        assert!(v("0.10.0") > v("0.9.9"));
        assert_eq!(v("1.2.3").to_string(), "1.2.3");
        for bad in ["", "1.2", "1.2.3.4", "1.x.3", "-1.2.3", "1..3"] {
            assert!(AgentVersion::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_manifest_verifies_only_with_a_release_key_and_its_exact_bytes() {
        let spec = ReleaseSpec {
            version: AgentVersion(0, 2, 0),
            target: "aarch64-unknown-linux-gnu".into(),
            size: 7,
            sha256: [9; 32],
            min_version: AgentVersion(0, 1, 0),
            issued_at: UnixTime(1_800_000_000),
        };
        let manifest = ReleaseManifest::issue(spec.clone(), &key(1)).expect("issue");
        let decoded = ReleaseManifest::decode(&manifest.encode()).expect("decode");
        assert_eq!(decoded.spec(), &spec);
        decoded.verify(&[key(1).public()]).expect("the release key");
        assert!(decoded.verify(&[key(2).public()]).is_err(), "another key");
        let mut bytes = manifest.encode();
        let at = bytes
            .windows(7)
            .position(|w| w == b"aarch64")
            .expect("target");
        bytes[at] = b'x';
        let tampered = ReleaseManifest::decode(&bytes).expect("decodes");
        assert!(tampered.verify(&[key(1).public()]).is_err(), "tampered");
    }

    #[test]
    fn a_rollout_round_trips_and_needs_an_anchor() {
        let spec = RolloutSpec {
            id: 1,
            version: AgentVersion(0, 2, 0),
            to: "edge-*".into(),
            percent: 50,
            max_failures: 0,
            allow_downgrade: false,
            state: RolloutState::Paused,
            issued_at: UnixTime(1_800_000_000),
        };
        let rollout = Rollout::issue(spec.clone(), &key(3)).expect("issue");
        let decoded = Rollout::decode(&rollout.encode()).expect("decode");
        assert_eq!(decoded.spec(), &spec);
        decoded.verify(&[key(3).public()]).expect("anchor");
        assert!(decoded.verify(&[key(4).public()]).is_err());
        let mut zero = spec;
        zero.percent = 0;
        assert!(Rollout::issue(zero, &key(3)).is_err());
        assert!(Rollout::decode(b"garbage").is_err());
    }
}
