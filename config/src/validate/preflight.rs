//! Preflight: the only part of the validation that opens or inspects files.
//!
//! `node.key` must be a readable secret key; `node.token` must decode, be this node's
//! (its id, its key, its role, its tenant) and verify up to `trust.root_keys` (time
//! aside); TLS files must be readable PEM; `node.data_dir` must not be a file and
//! `trust.revocations_file` not a directory. Only paths are ever printed, never contents.
//!
//! The token check reads the file and judges it in one pass; it is kept whole here rather
//! than cut between reading and judging, so that the section modules never open a file.
//! The token and TLS files are read through [`read_capped`], so a mistaken path to a huge
//! file costs little.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nexus_policies::keys::SECRET_KEY_PREFIX;
use nexus_policies::token::MAX_CHAIN_BYTES;
use nexus_policies::{Chain, PublicKey, SecretKey, TokenError, Verifier};
use zeroize::Zeroizing;

use super::node::PartialNode;
use super::reader::{Got, Reader, Reported, Section};
use crate::error::ErrorKind;
use crate::model::{Mode, TrustConfig};

/// The largest TLS file (CA bundle, certificate, key) read; system bundles are ~250 KiB.
const TLS_FILE_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// The first line of a PEM block.
const PEM_BEGIN: &str = "-----BEGIN ";

impl Reader<'_> {
    /// `node.key` must be a readable secret key file; its public key, when it is one. Its
    /// contents never leave here.
    pub(super) fn check_key_file(&mut self, key: &Got<PathBuf>) -> Option<PublicKey> {
        let path = key.value.display();
        match std::fs::read_to_string(&key.value).map(Zeroizing::new) {
            Err(error) => {
                let fix = if error.kind() == std::io::ErrorKind::NotFound {
                    format!("create it with `nexus-agent keygen --out {path}`")
                } else {
                    format!(
                        "make it readable by the agent's user (and no one else), or create a \
                         new one with `nexus-agent keygen --out {path}`"
                    )
                };
                self.push(
                    ErrorKind::UnreadableKeyFile,
                    key.origin.clone(),
                    &key.path,
                    format!("cannot read the key file {path}: {error}; {fix}"),
                );
                None
            }
            Ok(text) => match SecretKey::parse(&text) {
                Ok(secret) => Some(secret.public()),
                Err(error) => {
                    self.push(
                        ErrorKind::BadKeyFile,
                        key.origin.clone(),
                        &key.path,
                        format!(
                            "{path} is not a nexus-agent secret key file ({error}); create one \
                             with `nexus-agent keygen --out {path}`"
                        ),
                    );
                    None
                }
            },
        }
    }

    /// `node.data_dir` need not exist (the agent creates it), but must not be a file.
    pub(super) fn check_data_dir(&mut self, dir: &Got<PathBuf>) {
        if dir.value.exists() && !dir.value.is_dir() {
            self.push(
                ErrorKind::InvalidValue,
                dir.origin.clone(),
                &dir.path,
                format!("{} exists and is not a directory", dir.value.display()),
            );
        }
    }

    /// `trust.revocations_file` need not exist (nothing is revoked then), but must not be a
    /// directory: its path, or `None` when reported.
    pub(super) fn check_revocations_file(&mut self, got: Got<PathBuf>) -> Option<PathBuf> {
        if got.value.is_dir() {
            self.push(
                ErrorKind::InvalidValue,
                got.origin,
                &got.path,
                format!(
                    "{} is a directory: give the path of the revocation list file",
                    got.value.display()
                ),
            );
            return None;
        }
        Some(got.value)
    }

    /// `node.token`: required for member and hub; when given, it must be this node's chain,
    /// for this node's role, signed up to a trust anchor. Expiry is not checked: the agent
    /// checks it at run time, against a clock it can trust.
    pub(super) fn check_token(&mut self, node: &PartialNode, trust: Option<&TrustConfig>) {
        let Some(token) = &node.token else {
            if let Some(mode @ (Mode::Member | Mode::Hub)) = node.mode {
                self.push(
                    ErrorKind::MissingKey,
                    self.fallback.clone(),
                    "node.token",
                    format!(
                        "a {mode} needs its capability token: add token = \
                         \"/var/lib/nexus-agent/node.token\" (issued by its parent with \
                         `nexus-agent token issue`)"
                    ),
                );
            }
            return;
        };
        let path = token.value.display();
        let bytes = match read_capped(&token.value, MAX_CHAIN_BYTES as u64) {
            Ok(bytes) => bytes,
            Err(error) => {
                self.push(
                    ErrorKind::UnreadableTokenFile,
                    token.origin.clone(),
                    &token.path,
                    format!(
                        "cannot read the token file {path}: {error}; the node's parent issues \
                         it with `nexus-agent token issue … --out {path}`"
                    ),
                );
                return;
            }
        };
        let mismatch = |reader: &mut Self, kind: ErrorKind, message: String| {
            reader.push(kind, token.origin.clone(), &token.path, message);
        };
        if bytes.starts_with(SECRET_KEY_PREFIX.as_bytes()) {
            mismatch(
                self,
                ErrorKind::BadTokenFile,
                format!(
                    "{path} is a secret key file, not a token: node.token names the token \
                     chain written by `nexus-agent token issue`"
                ),
            );
            return;
        }
        let chain = match Chain::decode(&bytes) {
            Ok(chain) => chain,
            Err(error) => {
                mismatch(
                    self,
                    ErrorKind::BadTokenFile,
                    format!(
                        "{path} is not a capability token chain ({error}); issue one with \
                         `nexus-agent token issue`"
                    ),
                );
                return;
            }
        };
        let leaf = chain.leaf().claims();
        if let Some(id) = node.id.as_deref().filter(|id| *id != leaf.node_id) {
            mismatch(
                self,
                ErrorKind::TokenMismatch,
                format!(
                    "{path} is the token of node `{}`, but node.id is `{id}`",
                    leaf.node_id
                ),
            );
        }
        if let (Some(public), Some(key)) = (node.key_public, &node.key) {
            if public != leaf.node_key {
                mismatch(
                    self,
                    ErrorKind::TokenMismatch,
                    format!(
                        "{path} is for the key {}, but node.key ({}) is the key {public}: \
                         issue a token for this node's key",
                        leaf.node_key,
                        key.display()
                    ),
                );
            }
        }
        if let (Some(bound), Some(tenant)) = (&leaf.tenant, &node.tenant) {
            if bound != tenant {
                mismatch(
                    self,
                    ErrorKind::TokenMismatch,
                    format!(
                        "{path} binds the node to tenant `{bound}`, but node.tenant is \
                         `{tenant}`"
                    ),
                );
            }
        }
        if let Some(mode) = node.mode.filter(|mode| mode.role() != leaf.role) {
            mismatch(
                self,
                ErrorKind::TokenMismatch,
                format!("{path} is a {} token, but node.mode is {mode}", leaf.role),
            );
        }
        let Some(trust) = trust else { return };
        // Everything but time: at the latest not_before of the chain, every window of a
        // well-formed (attenuated) chain is open, so only signatures, links, attenuation
        // and the anchor are judged.
        let probe = chain
            .tokens()
            .iter()
            .map(|t| t.claims().not_before)
            .max()
            .unwrap_or(leaf.not_before);
        let verifier = Verifier {
            skew: Duration::ZERO,
            ..Verifier::new(trust.root_keys.clone())
        };
        if let Err(error) = verifier.verify_chain(chain.tokens(), probe) {
            let message = match error {
                TokenError::UntrustedRoot { issuer, .. } => format!(
                    "{path} is signed by {issuer}, which is not in trust.root_keys: add the \
                     root key that issued it, or issue a token under a trusted root"
                ),
                TokenError::Expired { .. } | TokenError::NotYetValid { .. } => format!(
                    "{path} does not verify: the validity windows of its tokens do not overlap"
                ),
                other => format!("{path} does not verify up to trust.root_keys: {other}"),
            };
            mismatch(self, ErrorKind::UntrustedToken, message);
        }
    }

    /// An optional PEM file: `Ok(None)` when absent, `Err` when reported. Only the path is
    /// printed, never the contents (a key file is a secret).
    pub(super) fn pem_file(
        &mut self,
        s: &Section<'_>,
        key: &str,
        what: &str,
    ) -> Result<Option<PathBuf>, Reported> {
        let Some(got) = self.text(s, key, "a path")? else {
            return Ok(None);
        };
        let got = self.path(got).ok_or(Reported)?;
        let path = got.value.display();
        let problem = match read_capped(&got.value, TLS_FILE_MAX_BYTES).map(Zeroizing::new) {
            Err(error) => Some((
                ErrorKind::UnreadableTlsFile,
                format!("cannot read the {what} {path}: {error}"),
            )),
            Ok(bytes) if !contains(&bytes, PEM_BEGIN.as_bytes()) => Some((
                ErrorKind::BadTlsFile,
                format!("{path} is not a PEM {what} (no `{PEM_BEGIN}…` line)"),
            )),
            Ok(_) => None,
        };
        match problem {
            Some((kind, message)) => {
                self.push(kind, got.origin, &got.path, message);
                Err(Reported)
            }
            None => Ok(Some(got.value)),
        }
    }
}

/// Reads at most `max` bytes of `path`; a larger file is an error (`InvalidData`), so a
/// mistaken path to a huge file costs nothing.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.is_dir() {
        return Err(std::io::Error::other("it is a directory"));
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
