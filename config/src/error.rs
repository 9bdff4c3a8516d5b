//! What can be wrong with a configuration, and where it came from.
//!
//! Loading never stops at the first problem: [`ConfigErrors`] holds every one, and its
//! `Display` prints one line per problem, each naming the file (or environment variable)
//! the value came from, the key path and what was expected. Tests compare
//! [`ErrorKind`]s, never the wording.

use std::fmt;
use std::path::PathBuf;

/// What kind of problem a [`ConfigError`] is; compare these in tests, not messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The config file does not exist.
    FileNotFound,
    /// The config file exists but could not be read.
    FileUnreadable,
    /// The config file is not valid TOML.
    ParseError {
        /// The 1-based line of the syntax error, when the parser reported one.
        line: Option<usize>,
    },
    /// A key or section that the schema does not know.
    UnknownKey {
        /// A known key close to the unknown one (`id` for `idd`, or `heartbeat.interval`
        /// for an `interval` written in the wrong section).
        suggestion: Option<String>,
    },
    /// A required key is absent.
    MissingKey,
    /// A value has the wrong TOML type (a number where a string is expected, …).
    InvalidType,
    /// A value has the right type but is not acceptable (a URL scheme, a range, …).
    InvalidValue,
    /// A section this mode requires is absent (a member or hub without `[uplink]`, …).
    MissingSection,
    /// A section this mode must not have (a root with `[uplink]`).
    ForbiddenSection,
    /// `node.id` or `node.tenant` is not a subject token of 1..=64 `[a-z0-9_-]`.
    BadId,
    /// A duration that does not parse, or is zero.
    BadDuration,
    /// `node.key` names a file that cannot be read.
    UnreadableKeyFile,
    /// `node.key` names a file that is not a nexus-agent secret key.
    BadKeyFile,
    /// A public key (`trust.root_keys[i]`) that does not parse, or is weak.
    BadPublicKey,
    /// `node.token` names a file that cannot be read.
    UnreadableTokenFile,
    /// `node.token` names a file that is not a token chain (or is a secret key file).
    BadTokenFile,
    /// The token chain is not this node's: its leaf is for another node id, another key,
    /// or another role than `node.mode`.
    TokenMismatch,
    /// The token chain does not verify up to a key of `trust.root_keys` (time aside).
    UntrustedToken,
    /// An `[[acl]]` subject pattern that is not a valid NATS pattern.
    BadPattern,
    /// An `[[acl]]` principal that is not `local`, a node id or a node-id glob.
    BadPrincipal,
    /// A TLS file (`ca_file`, `cert_file`, `key_file`) that cannot be read.
    UnreadableTlsFile,
    /// A TLS file that is not PEM.
    BadTlsFile,
}

/// Where a value (or the lack of one) came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A TOML file, as its path was given.
    File(PathBuf),
    /// An environment variable, by its full name (`NEXUS_NODE__ID`).
    Env(String),
    /// Any other figment provider (by its name), or `configuration` when nothing is known.
    Other(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Other(name) => f.write_str(name),
        }
    }
}

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {}{message}", KeyPrefix(.key.as_deref()))]
pub struct ConfigError {
    /// What kind of problem this is.
    pub kind: ErrorKind,
    /// The file or environment variable the offending value came from; for a missing value,
    /// the config file where it should be added.
    pub origin: Origin,
    /// The key path (`node.id`, `uplink`), or `None` for a problem with the file itself.
    pub key: Option<String>,
    /// What is wrong and what was expected, in words for an operator.
    pub message: String,
}

/// Renders `key: ` or nothing.
struct KeyPrefix<'a>(Option<&'a str>);

impl fmt::Display for KeyPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(key) => write!(f, "{key}: "),
            None => Ok(()),
        }
    }
}

/// Every problem found in a configuration (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(&self.errors))]
pub struct ConfigErrors {
    /// The problems, in the order they were found (sections in schema order).
    errors: Vec<ConfigError>,
}

/// Renders one error per line.
struct Lines<'a>(&'a [ConfigError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    pub(crate) fn new(errors: Vec<ConfigError>) -> Self {
        Self { errors }
    }

    /// The problems, in the order they were found.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }

    /// How many problems there are.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Whether there are none (never true for a returned error).
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The kinds of the problems, in order: what tests compare.
    pub fn kinds(&self) -> Vec<ErrorKind> {
        self.errors.iter().map(|e| e.kind.clone()).collect()
    }

    /// The first problem about `key` (a key path like `node.id`), if any.
    pub fn find(&self, key: &str) -> Option<&ConfigError> {
        self.errors.iter().find(|e| e.key.as_deref() == Some(key))
    }

    /// The problems as a vector.
    pub fn into_vec(self) -> Vec<ConfigError> {
        self.errors
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}
