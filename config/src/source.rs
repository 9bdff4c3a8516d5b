//! Where values come from: the TOML file, the `NEXUS_` environment, and how a value is
//! traced back to one of them for error messages.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::error::{ConfigError, ErrorKind, Origin};

/// The prefix of every environment override.
pub(crate) const ENV_PREFIX: &str = "NEXUS_";
/// The separator of nesting levels in an override's name (`NEXUS_NODE__ID` → `node.id`).
pub(crate) const ENV_SPLIT: &str = "__";
/// The suffix figment gives the metadata name of environment providers.
const ENV_NAME_SUFFIX: &str = "environment variable(s)";

/// Defaults are not a provider: see `validate`. This is file → environment.
pub(crate) fn figment(path: &Path) -> Figment {
    Figment::new().merge(Toml::file_exact(path)).merge(NexusEnv)
}

/// The `NEXUS_` environment overrides, as a figment provider.
///
/// Like `Env::prefixed("NEXUS_").split("__")`, but only variables whose name (after the
/// prefix) contains `__` are taken, so `NEXUS_HOME` and friends are left alone, and every
/// value stays the raw string that was set: figment's `Env` would turn
/// `NEXUS_NODE__ID=007` into the number 7. Numeric keys parse the string themselves.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NexusEnv;

impl Provider for NexusEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("`{ENV_PREFIX}` {ENV_NAME_SUFFIX}"))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let env = Env::prefixed(ENV_PREFIX)
            .filter(|key| key.as_str().contains(ENV_SPLIT))
            .split(ENV_SPLIT);
        let mut dict = Dict::new();
        for (key, value) in env.iter() {
            let path: Vec<&str> = key.as_str().split('.').collect();
            insert(&mut dict, &path, Value::from(value.trim().to_owned()));
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Inserts `value` at `path`, creating (or replacing non-table values with) tables on the
/// way. With `NEXUS_A__B=1` and `NEXUS_A__B__C=2` set, whichever comes last wins.
fn insert(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// Where `value`, found at `path` (`["node", "id"]`), came from.
pub(crate) fn origin_of(figment: &Figment, value: &Value, path: &[&str]) -> Origin {
    // A table's tag is that of whichever provider created it; its first leaf names the
    // variable precisely when the table came from the environment.
    let mut leaf_path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
    let mut leaf = value;
    while let Value::Dict(_, dict) = leaf {
        match dict.iter().next() {
            Some((key, inner)) => {
                leaf_path.push(key.clone());
                leaf = inner;
            }
            None => break,
        }
    }
    match figment.get_metadata(leaf.tag()) {
        Some(metadata) => origin_from_metadata(metadata, &leaf_path),
        None => Origin::Other("configuration".to_owned()),
    }
}

fn origin_from_metadata(metadata: &Metadata, path: &[String]) -> Origin {
    if let Some(file) = metadata.source.as_ref().and_then(|s| s.file_path()) {
        return Origin::File(file.to_path_buf());
    }
    if metadata.name.ends_with(ENV_NAME_SUFFIX) {
        // figment names env providers "`PREFIX_` environment variable(s)".
        let prefix = metadata.name.split('`').nth(1).unwrap_or_default();
        let name: Vec<String> = path.iter().map(|k| k.to_ascii_uppercase()).collect();
        return Origin::Env(format!("{prefix}{}", name.join(ENV_SPLIT)));
    }
    Origin::Other(metadata.name.to_string())
}

/// The first TOML file among the figment's providers, if any: where missing keys belong.
pub(crate) fn config_file(figment: &Figment) -> Option<PathBuf> {
    figment
        .metadata()
        .find_map(|m| m.source.as_ref().and_then(|s| s.file_path()))
        .map(Path::to_path_buf)
}

/// Turns the errors of providers that failed (an unreadable file, a TOML syntax error)
/// into [`ConfigError`]s.
pub(crate) fn provider_errors(error: figment::Error) -> Vec<ConfigError> {
    error
        .into_iter()
        .map(|e| {
            let file = e
                .metadata
                .as_ref()
                .and_then(|m| m.source.as_ref())
                .and_then(|s| s.file_path())
                .map(Path::to_path_buf);
            let origin = match (&file, &e.metadata) {
                (Some(file), _) => Origin::File(file.clone()),
                (None, Some(metadata)) => Origin::Other(metadata.name.to_string()),
                (None, None) => Origin::Other("configuration".to_owned()),
            };
            let text = match &e.kind {
                figment::error::Kind::Message(message) => message.clone(),
                other => other.to_string(),
            };
            let (kind, message) = match parse_toml_error(&text) {
                Some((line, message)) => (ErrorKind::ParseError { line }, message),
                None if file.is_some() => {
                    (ErrorKind::FileUnreadable, format!("cannot read: {text}"))
                }
                None => (ErrorKind::ParseError { line: None }, text),
            };
            ConfigError {
                kind,
                origin,
                key: (!e.path.is_empty()).then(|| e.path.join(".")),
                message,
            }
        })
        .collect()
}

/// Reads toml's multi-line error (`TOML parse error at line 3, column 5`, a snippet with a
/// caret, then the message) into the line and a one-line message.
fn parse_toml_error(text: &str) -> Option<(Option<usize>, String)> {
    let mut lines = text.lines();
    let first = lines.next()?.trim();
    let at = first.strip_prefix("TOML parse error")?;
    let line = at
        .trim()
        .strip_prefix("at line ")
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse::<usize>().ok());
    // The snippet is three lines (`|`, `N | text`, `|  ^`); the message follows.
    let rest: Vec<&str> = text.lines().collect();
    let message_lines: Vec<&str> = match line {
        Some(_) if rest.len() > 4 => rest[4..].to_vec(),
        _ => rest[1..].to_vec(),
    };
    let message: Vec<&str> = message_lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let message = message.join("; ");
    let message = match line {
        Some(n) => format!("line {n}: invalid TOML: {message}"),
        None => format!("invalid TOML: {message}"),
    };
    Some((line, message))
}
