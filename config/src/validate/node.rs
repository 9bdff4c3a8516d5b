//! `[node]` and `[trust]`: who this agent is and what its token is checked against.
//!
//! The files they name (`node.key`, `node.token`, `node.data_dir`,
//! `trust.revocations_file`) are checked by `preflight`; the token once `[trust]` is read,
//! from [`super::Reader::config`].

use std::path::{Path, PathBuf};

use figment::value::Value;
use nexus_policies::keys::SECRET_KEY_PREFIX;
use nexus_policies::{ids, PublicKey};

use super::reader::{truncate, Got, Reader, Section};
use super::schema::{CLOCK_SKEW, REVOCATIONS_FILE};
use crate::error::{ErrorKind, Origin};
use crate::model::{Mode, TrustConfig};

impl Reader<'_> {
    /// `[node]`, required in every config: `None` when it is absent or not a table.
    pub(super) fn node(&mut self, s: &Section<'_>) -> Option<PartialNode> {
        if !s.present {
            self.push(
                ErrorKind::MissingSection,
                self.fallback.clone(),
                "node",
                "every config needs a [node] section with id, mode, key and data_dir".to_owned(),
            );
            return None;
        }
        s.dict?;
        let id = self
            .required_text(s, "id", "id = \"edge-msk-01\"")
            .and_then(|g| self.node_id(g));
        let mode = self
            .required_text(s, "mode", "mode = \"member\" (or hub, root)")
            .and_then(|g| self.mode(g));
        let tenant = self.optional_text(s, "tenant").and_then(|g| self.tenant(g));
        let key = self
            .required_text(s, "key", "key = \"/var/lib/nexus-agent/node.key\"")
            .and_then(|g| self.path(g));
        let key_public = key.as_ref().and_then(|key| self.check_key_file(key));
        let token = self.optional_text(s, "token").and_then(|g| self.path(g));
        let data_dir = self
            .required_text(s, "data_dir", "data_dir = \"/var/lib/nexus-agent\"")
            .and_then(|g| self.path(g));
        if let Some(dir) = &data_dir {
            self.check_data_dir(dir);
        }
        Some(PartialNode {
            id,
            mode,
            tenant,
            key: key.map(|g| g.value),
            key_public,
            token,
            data_dir: data_dir.map(|g| g.value),
        })
    }

    /// `[trust]`, required in every mode; `revocations_file` defaults to a file in
    /// `data_dir`.
    pub(super) fn trust(
        &mut self,
        s: &Section<'_>,
        mode: Option<Mode>,
        data_dir: Option<&Path>,
    ) -> Option<TrustConfig> {
        if !s.present {
            // Every mode needs one; with the mode unknown, that error says enough.
            if let Some(mode) = mode {
                self.push(
                    ErrorKind::MissingSection,
                    self.fallback.clone(),
                    "trust",
                    format!(
                        "a {mode} needs a [trust] section with the root's public key(s): \
                         root_keys = [\"ed25519:…\"] (the .pub file `nexus-agent keygen` wrote \
                         for the root)"
                    ),
                );
            }
            return None;
        }
        s.dict?;
        let root_keys = self.public_keys(s, "root_keys", "the root's");
        let release_keys = match self.raw(s, "release_keys") {
            None => Some(Vec::new()),
            Some(_) => self.public_keys(s, "release_keys", "a release key's"),
        };
        if let (Some(roots), Some(releases)) = (&root_keys, &release_keys) {
            if releases.iter().any(|k| roots.contains(k)) {
                let origin = self.origin_or_fallback(s, "release_keys");
                self.push(
                    ErrorKind::InvalidValue,
                    origin,
                    "trust.release_keys",
                    "a release key must not be a root key: sign releases with a key of their own \
                     (`nexus-agent keygen --out release.key`), kept offline (docs/updates.md)"
                        .to_owned(),
                );
            }
        }
        let clock_skew = self.duration(s, "clock_skew", CLOCK_SKEW);
        let revocations_file = match self.optional_text(s, "revocations_file") {
            Some(got) => self
                .path(got)
                .and_then(|got| self.check_revocations_file(got)),
            None => data_dir.map(|dir| dir.join(REVOCATIONS_FILE)),
        };
        Some(TrustConfig {
            root_keys: root_keys?,
            release_keys: release_keys?,
            clock_skew,
            revocations_file: revocations_file?,
        })
    }

    /// `trust.root_keys` (required) or `trust.release_keys`: a non-empty list of public
    /// keys (`whose`: "the root's", "a release key's"). From the environment, where every
    /// value is a string, a comma-separated list.
    fn public_keys(&mut self, s: &Section<'_>, key: &str, whose: &str) -> Option<Vec<PublicKey>> {
        let Some((value, origin, path)) = self.raw(s, key) else {
            self.push(
                ErrorKind::MissingKey,
                self.fallback.clone(),
                "trust.root_keys",
                "missing required key: add root_keys = [\"ed25519:…\"] with the root's public \
                 key(s)"
                    .to_owned(),
            );
            return None;
        };
        let texts: Vec<Option<&str>> = match value {
            Value::Array(_, items) => items
                .iter()
                .map(|item| match item {
                    Value::String(_, text) => Some(text.as_str()),
                    _ => None,
                })
                .collect(),
            Value::String(_, text) if matches!(origin, Origin::Env(_)) => text
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(Some)
                .collect(),
            other => {
                self.push(
                    ErrorKind::InvalidType,
                    origin,
                    &path,
                    format!(
                        "expected a list of public keys like [\"ed25519:…\"], found {}",
                        other.to_actual()
                    ),
                );
                return None;
            }
        };
        if texts.is_empty() {
            self.push(
                ErrorKind::InvalidValue,
                origin,
                &path,
                format!("an empty list: give at least one of {whose} public keys (\"ed25519:…\"), or remove the key"),
            );
            return None;
        }
        let mut keys = Vec::with_capacity(texts.len());
        let mut bad = false;
        for (i, text) in texts.into_iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let Some(text) = text else {
                self.push(
                    ErrorKind::InvalidType,
                    origin.clone(),
                    &item_path,
                    "expected a string \"ed25519:…\"".to_owned(),
                );
                bad = true;
                continue;
            };
            match PublicKey::parse(text) {
                Ok(key) => keys.push(key),
                Err(error) => {
                    // A secret key pasted here must not be echoed into logs.
                    let shown = if text.trim_start().starts_with(SECRET_KEY_PREFIX) {
                        format!("this is a SECRET key (keep it off configs): use {whose} .pub file")
                    } else {
                        format!(
                            "{:?} is not an Ed25519 public key ({error})",
                            truncate(text)
                        )
                    };
                    self.push(
                        ErrorKind::BadPublicKey,
                        origin.clone(),
                        &item_path,
                        format!("{shown}; use the \"ed25519:…\" line of {whose} .pub file"),
                    );
                    bad = true;
                }
            }
        }
        (!bad).then_some(keys)
    }

    /// `node.id`: an id ([`Self::id`]) that is not reserved ([`ids::check_node_id`]: `local`
    /// names the apps on the node in `[[acl]]`, and no token is issued to it).
    fn node_id(&mut self, got: Got<String>) -> Option<String> {
        if ids::check_id(&got.value).is_ok() {
            if let Err(reason) = ids::check_node_id(&got.value) {
                self.push(
                    ErrorKind::BadId,
                    got.origin,
                    &got.path,
                    format!(
                        "{:?} cannot be a node id: {reason}. Choose another id, e.g. \
                         id = \"edge-msk-01\"",
                        got.value
                    ),
                );
                return None;
            }
        }
        self.id(got)
    }

    /// `node.tenant`: an id ([`Self::id`]) that is not reserved ([`ids::check_tenant`]:
    /// `_core` is the subject token of the fleet's system events).
    fn tenant(&mut self, got: Got<String>) -> Option<String> {
        if ids::check_id(&got.value).is_ok() {
            if let Err(reason) = ids::check_tenant(&got.value) {
                self.push(
                    ErrorKind::BadId,
                    got.origin,
                    &got.path,
                    format!(
                        "{:?} cannot be a tenant: {reason}. Choose another id, e.g. \
                         tenant = \"salon-001\"",
                        got.value
                    ),
                );
                return None;
            }
        }
        self.id(got)
    }

    fn mode(&mut self, got: Got<String>) -> Option<Mode> {
        self.choice(got, "a mode")
    }
}

/// `[node]` as far as it could be read: `None` for what was reported.
pub(super) struct PartialNode {
    /// `node.id`, valid.
    pub(super) id: Option<String>,
    /// `node.mode`.
    pub(super) mode: Option<Mode>,
    /// `node.tenant`, valid (also `None` when absent).
    pub(super) tenant: Option<String>,
    /// `node.key`, resolved; the file was checked separately.
    pub(super) key: Option<PathBuf>,
    /// The public key of `node.key`, when the file is a valid secret key.
    pub(super) key_public: Option<PublicKey>,
    /// `node.token`, resolved; checked once `[trust]` is read.
    pub(super) token: Option<Got<PathBuf>>,
    /// `node.data_dir`, resolved.
    pub(super) data_dir: Option<PathBuf>,
}
