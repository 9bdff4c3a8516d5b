//! Configuration of nexus-agent: one TOML schema for the three modes, plus `NEXUS_`
//! environment overrides, validated into [`Config`].
//!
//! This crate owns parsing, defaults and validation, and the error messages an operator
//! reads when a config is wrong. It knows nothing of NATS, tokio or what the agent does
//! with the values: it checks that a URL looks like a NATS URL, never connects to it. The
//! files it opens besides the config are `node.key`, to refuse an agent that could not
//! sign, `node.token`, to refuse a token that is not this node's or does not lead to a
//! trusted root (expiry aside: that needs a clock the agent can trust), and the TLS
//! files, to refuse unreadable ones. Only their paths are ever kept or printed.
//!
//! # Sources, lowest priority first
//!
//! 1. Built-in defaults (listed on each field of [`Config`]).
//! 2. The TOML file given to [`load`].
//! 3. Environment variables: `NEXUS_` + the key path in upper case with `__` between
//!    levels, e.g. `NEXUS_NODE__ID=edge-01`, `NEXUS_UPLINK__URL=nats://hub:4222`. Every key
//!    lives in a section, so only variables that start with `NEXUS_` **and** contain `__`
//!    are overrides; others such as `NEXUS_HOME` are ignored. Values are taken as the raw
//!    string (`NEXUS_NODE__ID=007` stays `"007"`); integer keys parse it.
//!
//! An environment variable can create a section (`NEXUS_UPLINK__URL` alone gives an
//! `[uplink]`), with the same consequences as writing it in the file.
//!
//! # Paths
//!
//! A relative path (`node.key`, `node.token`, `node.data_dir`, `trust.revocations_file`,
//! TLS files) written in the file is resolved against the directory of that file (so
//! `/etc/nexus-agent/agent.toml` with `key = "node.key"` means
//! `/etc/nexus-agent/node.key`); one set by an environment variable is resolved against
//! the current directory. [`Config`] holds them absolute.
//!
//! # Validation
//!
//! Every problem is reported at once, never only the first: unknown keys at any level
//! (with a "did you mean" when a known key is close), wrong types, bad ids, durations and
//! URLs, sections a mode requires or forbids, an unreadable or invalid key or token
//! file, bad trust anchors, `[[acl]]` entries (by index: `acl[2].allow_publish[0]`) and
//! TLS files. Each
//! [`ConfigError`] names where the value came from (file or environment variable), its key
//! path, and what was expected; tests compare its [`ErrorKind`].
//!
//! # Layout
//! - `model`: the validated types the agent consumes.
//! - `error`: [`ConfigErrors`], [`ConfigError`], [`ErrorKind`] and [`Origin`].
//! - `source`: the figment providers (TOML file, `NEXUS_` environment) and tracing a value
//!   back to the file or variable it came from.
//! - `validate`: the schema and its defaults; walks the merged value into a [`Config`].
//! - `redact`: [`Config::redacted`] and [`redact_url`], printing without secrets.
//! - `topic`: [`TopicTemplate`], the grammar of `[[iot.sensors]]` topic templates (used by
//!   the validation and by the IoT bridge alike).
//! - `warn`: [`Config::warnings`], what is valid but probably not meant (printed by
//!   `check`, logged by `run`).

pub mod desired;
mod error;
mod model;
mod redact;
mod source;
mod topic;
mod validate;
mod warn;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors, ErrorKind, Origin};
pub use figment::Figment;
pub use model::*;
pub use redact::redact_url;
pub use topic::{TopicSegment, TopicTemplate, TopicTemplateError, MAX_TOPIC_SEGMENTS};
pub use validate::read_capped;
pub use warn::ConfigWarning;

/// Loads the config file at `path`, applies `NEXUS_` environment overrides, and validates
/// the result. Relative paths inside it are resolved against its directory.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    if let Err(error) = std::fs::File::open(path) {
        let kind = if error.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::FileNotFound
        } else {
            ErrorKind::FileUnreadable
        };
        return Err(ConfigErrors::new(vec![ConfigError {
            kind,
            origin: Origin::File(path.to_path_buf()),
            key: None,
            message: format!("cannot read the config file: {error}"),
        }]));
    }
    load_figment(figment(path))
}

/// The figment [`load`] validates: the TOML file at `path` (which need not exist yet),
/// merged with the `NEXUS_` environment overrides. Merge more providers onto it to
/// override further, then pass it to [`load_figment`].
pub fn figment(path: &Path) -> Figment {
    source::figment(path)
}

/// Validates whatever `figment` holds into a [`Config`], reporting every problem.
///
/// Defaults are applied here, not by a provider. Values from a TOML file provider have
/// their relative paths resolved against that file's directory, and errors name it; the
/// first file provider becomes [`Config::source`].
pub fn load_figment(figment: Figment) -> Result<Config, ConfigErrors> {
    validate::validate(&figment)
}
