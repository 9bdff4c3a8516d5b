//! The typed-value reader: where every problem is collected, with its origin and key path.
//!
//! [`Reader`] holds the figment (to trace a value back to its file or environment
//! variable) and the problems found so far; the section modules add their own `impl
//! Reader` blocks on top of what is here: finding sections and nested tables and reporting
//! their unknown keys (with a "did you mean" when a known key is close, or belongs in
//! another section), and reading typed values (strings, durations, integers, paths, ids,
//! subject pattern lists, JetStream names). A read that fails reports the problem and
//! returns `None` (or the default), so the walk carries on and reports the next one.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use figment::value::{Dict, Value};
use figment::Figment;
use nexus_policies::ids::{self, MAX_ID_LEN};
use nexus_policies::SubjectPattern;

use super::schema::{ACL, LINK_KEYS, SCHEMA, TLS_KEYS};
use crate::error::{ConfigError, ErrorKind, Origin};
use crate::model::ConfigName;
use crate::source;

/// A problem was recorded; the caller carries on with the next key.
pub(super) struct Reported;

/// A value read from the config, with where it came from.
pub(super) struct Got<T> {
    /// The value, as read (and for paths, resolved).
    pub(super) value: T,
    /// The file or environment variable that set it.
    pub(super) origin: Origin,
    /// Its key path, e.g. `node.id`.
    pub(super) path: String,
}

/// A section (or nested table) of the config as found.
pub(super) struct Section<'d> {
    /// The section's key path, e.g. `uplink`, `uplink.tls`, `acl[2]`.
    pub(super) name: String,
    /// Whether the key exists at all (even with the wrong type).
    pub(super) present: bool,
    /// The table, when it exists and is one.
    pub(super) dict: Option<&'d Dict>,
    /// Where the section came from (the config file when it is absent).
    pub(super) origin: Origin,
}

/// The walk's state: what the value came from and every problem found so far.
pub(super) struct Reader<'f> {
    /// Where the merged value came from: metadata of every provider.
    pub(super) figment: &'f Figment,
    /// Where a missing key or section should be added: the config file, if there is one.
    pub(super) fallback: Origin,
    /// Every problem found so far, in order.
    pub(super) errors: Vec<ConfigError>,
}

impl Reader<'_> {
    /// Records a problem on `key`; the walk carries on.
    pub(super) fn push(&mut self, kind: ErrorKind, origin: Origin, key: &str, message: String) {
        self.errors.push(ConfigError {
            kind,
            origin,
            key: Some(key.to_owned()),
            message,
        });
    }

    /// Reports top-level keys that are not sections of the schema.
    pub(super) fn unknown_sections(&mut self, root: &Dict) {
        for (name, value) in root {
            if name == ACL || SCHEMA.iter().any(|(section, _)| section == name) {
                continue;
            }
            let origin = source::origin_of(self.figment, value, &[name]);
            let (suggestion, message) = if matches!(value, Value::Dict(..) | Value::Array(..)) {
                let names = SCHEMA.iter().map(|(s, _)| *s).chain([ACL]);
                let suggestion = closest(name, names);
                let message = match suggestion {
                    Some(ACL) => format!("unknown section [{name}]; did you mean [[acl]]?"),
                    Some(s) => format!("unknown section [{name}]; did you mean [{s}]?"),
                    None => format!(
                        "unknown section [{name}]; known sections: {}",
                        section_list()
                    ),
                };
                (suggestion.map(str::to_owned), message)
            } else {
                // A key above every section: most likely a `[section]` header was forgotten.
                let home = SCHEMA
                    .iter()
                    .find(|(_, keys)| keys.contains(&name.as_str()))
                    .map(|(section, _)| format!("{section}.{name}"));
                let message = match &home {
                    Some(path) => format!(
                        "unknown top-level key `{name}`; did you mean `{path}` (under [{}])?",
                        path.split('.').next().unwrap_or_default()
                    ),
                    None => format!(
                        "unknown top-level key `{name}`; every key belongs in a section: {}",
                        section_list()
                    ),
                };
                (home, message)
            };
            self.push(ErrorKind::UnknownKey { suggestion }, origin, name, message);
        }
    }

    /// Finds section `name`, checks that it is a table and reports its unknown keys.
    pub(super) fn section<'d>(&mut self, root: &'d Dict, name: &'static str) -> Section<'d> {
        let known = SCHEMA
            .iter()
            .find(|(section, _)| *section == name)
            .map(|(_, keys)| *keys)
            .unwrap_or_default();
        self.table(root.get(name), name.to_owned(), known)
    }

    /// The table at `parent.key` (`[uplink.tls]`), checked like a section.
    pub(super) fn subtable<'d>(
        &mut self,
        parent: &Section<'d>,
        key: &str,
        known: &[&str],
    ) -> Section<'d> {
        let value = parent.dict.and_then(|d| d.get(key));
        self.table(value, format!("{}.{key}", parent.name), known)
    }

    /// Checks that `value`, found at key path `name`, is a table and reports its unknown
    /// keys (with a suggestion when one is close, or belongs elsewhere).
    pub(super) fn table<'d>(
        &mut self,
        value: Option<&'d Value>,
        name: String,
        known: &[&str],
    ) -> Section<'d> {
        // An entry of an array of tables (`acl[2]`, `bridge.up[0]`) is named by its array.
        let header = match name.strip_suffix(']').and_then(|n| n.rsplit_once('[')) {
            Some((array, _)) => format!("the [[{array}]] entry {name}"),
            None => format!("[{name}]"),
        };
        let segments: Vec<&str> = name.split('.').collect();
        let mut section = Section {
            name: name.clone(),
            present: false,
            dict: None,
            origin: self.fallback.clone(),
        };
        let Some(value) = value.filter(|v| !matches!(v, Value::Empty(..))) else {
            return section;
        };
        section.present = true;
        section.origin = source::origin_of(self.figment, value, &segments);
        let Value::Dict(_, dict) = value else {
            self.push(
                ErrorKind::InvalidType,
                section.origin.clone(),
                &name,
                format!("expected a table {header}, found {}", value.to_actual()),
            );
            return section;
        };
        for (key, value) in dict {
            if known.contains(&key.as_str()) {
                continue;
            }
            let path = format!("{name}.{key}");
            let mut key_path = segments.clone();
            key_path.push(key);
            let origin = source::origin_of(self.figment, value, &key_path);
            let suggestion = closest(key, known.iter().copied())
                .map(str::to_owned)
                .or_else(|| {
                    // `ca_file` written straight under [uplink] belongs in [uplink.tls].
                    (known == LINK_KEYS && TLS_KEYS.contains(&key.as_str()))
                        .then(|| format!("{name}.tls.{key}"))
                })
                .or_else(|| {
                    SCHEMA
                        .iter()
                        .find(|(_, keys)| keys.contains(&key.as_str()))
                        .map(|(other, _)| format!("{other}.{key}"))
                });
            let message = match &suggestion {
                Some(s) if s.contains('.') => {
                    format!("unknown key `{key}` in {header}; did you mean `{s}`?")
                }
                Some(s) => format!("unknown key `{key}`; did you mean `{s}`?"),
                None => format!("unknown key `{key}`; {header} knows: {}", known.join(", ")),
            };
            self.push(ErrorKind::UnknownKey { suggestion }, origin, &path, message);
        }
        section.dict = Some(dict);
        section
    }

    /// Whether a problem was reported on `key` already.
    pub(super) fn reported(&self, key: &str) -> bool {
        self.errors.iter().any(|e| e.key.as_deref() == Some(key))
    }

    /// Where `s.key` came from, or the config file when it is absent.
    pub(super) fn origin_or_fallback(&self, s: &Section<'_>, key: &str) -> Origin {
        self.raw(s, key)
            .map(|(_, origin, _)| origin)
            .unwrap_or_else(|| self.fallback.clone())
    }

    /// The value at `s.key`, if present; `Empty` counts as absent.
    pub(super) fn raw<'d>(
        &self,
        s: &Section<'d>,
        key: &str,
    ) -> Option<(&'d Value, Origin, String)> {
        let value = s.dict?.get(key)?;
        if matches!(value, Value::Empty(..)) {
            return None;
        }
        let mut segments: Vec<&str> = s.name.split('.').collect();
        segments.push(key);
        let origin = source::origin_of(self.figment, value, &segments);
        Some((value, origin, format!("{}.{key}", s.name)))
    }

    /// A string value; a value of another type is reported with what was `expected`.
    pub(super) fn text(
        &mut self,
        s: &Section<'_>,
        key: &str,
        expected: &str,
    ) -> Result<Option<Got<String>>, Reported> {
        let Some((value, origin, path)) = self.raw(s, key) else {
            return Ok(None);
        };
        match value {
            Value::String(_, text) => Ok(Some(Got {
                value: text.clone(),
                origin,
                path,
            })),
            other => {
                self.push(
                    ErrorKind::InvalidType,
                    origin,
                    &path,
                    format!("expected {expected}, found {}", other.to_actual()),
                );
                Err(Reported)
            }
        }
    }

    /// A required string; its absence is reported with an `example` of the line to add.
    pub(super) fn required_text(
        &mut self,
        s: &Section<'_>,
        key: &str,
        example: &str,
    ) -> Option<Got<String>> {
        match self.text(s, key, "a string") {
            Ok(Some(got)) => Some(got),
            Ok(None) => {
                self.push(
                    ErrorKind::MissingKey,
                    self.fallback.clone(),
                    &format!("{}.{key}", s.name),
                    format!("missing required key: add {example}"),
                );
                None
            }
            Err(Reported) => None,
        }
    }

    pub(super) fn optional_text(&mut self, s: &Section<'_>, key: &str) -> Option<Got<String>> {
        self.text(s, key, "a string").ok().flatten()
    }

    /// A humantime duration string, positive; `default` when absent or bad (bad is reported).
    pub(super) fn duration(&mut self, s: &Section<'_>, key: &str, default: Duration) -> Duration {
        self.optional_duration(s, key).unwrap_or(default)
    }

    /// A humantime duration string, positive; `None` when absent or bad (bad is reported).
    pub(super) fn optional_duration(&mut self, s: &Section<'_>, key: &str) -> Option<Duration> {
        let expected = "a duration string like \"10s\"";
        let Ok(Some(got)) = self.text(s, key, expected) else {
            return None;
        };
        match humantime::parse_duration(got.value.trim()) {
            Ok(duration) if !duration.is_zero() => Some(duration),
            Ok(_) => {
                self.push(
                    ErrorKind::BadDuration,
                    got.origin,
                    &got.path,
                    format!(
                        "{:?} is zero: use a positive duration like \"10s\"",
                        got.value
                    ),
                );
                None
            }
            Err(error) => {
                self.push(
                    ErrorKind::BadDuration,
                    got.origin,
                    &got.path,
                    format!(
                        "{:?} is not a duration ({error}): use e.g. \"500ms\", \"10s\", \"2m\", \
                         \"7d\"",
                        got.value
                    ),
                );
                None
            }
        }
    }

    /// An integer within `range`; `None` when absent or bad (bad is reported). A string is
    /// accepted only from the environment, where every value is one.
    pub(super) fn integer(
        &mut self,
        s: &Section<'_>,
        key: &str,
        range: RangeInclusive<i128>,
    ) -> Option<i128> {
        let (value, origin, path) = self.raw(s, key)?;
        let number = match value {
            Value::Num(_, n) => n
                .to_i128()
                .or_else(|| n.to_u128().and_then(|u| i128::try_from(u).ok())),
            Value::String(_, text) if matches!(origin, Origin::Env(_)) => {
                text.trim().replace('_', "").parse::<i128>().ok()
            }
            _ => None,
        };
        let Some(number) = number else {
            self.push(
                ErrorKind::InvalidType,
                origin,
                &path,
                format!("expected an integer, found {}", value.to_actual()),
            );
            return None;
        };
        if !range.contains(&number) {
            self.push(
                ErrorKind::InvalidValue,
                origin,
                &path,
                format!(
                    "{number} is out of range: use {} to {}",
                    range.start(),
                    range.end()
                ),
            );
            return None;
        }
        Some(number)
    }

    /// A subject token: a tenant, or a node id ([`Self::node_id`]); the rule is
    /// [`ids::check_id`], the one tokens and ACLs are checked with.
    pub(super) fn id(&mut self, got: Got<String>) -> Option<String> {
        if ids::check_id(&got.value).is_ok() {
            return Some(got.value);
        }
        self.push(
            ErrorKind::BadId,
            got.origin,
            &got.path,
            format!(
                "{:?} is not a valid id: use 1-{MAX_ID_LEN} chars of [a-z0-9_-]",
                got.value
            ),
        );
        None
    }

    /// The value of a config enum written as `got` ([`ConfigName::from_name`]); when it
    /// names none, reported as not `what` (e.g. "a mode") with the accepted names, in the
    /// enum's order, and the closest one.
    pub(super) fn choice<T: ConfigName>(&mut self, got: Got<String>, what: &str) -> Option<T> {
        if let Some(value) = T::from_name(&got.value) {
            return Some(value);
        }
        let names: Vec<&str> = T::ALL.iter().map(|value| value.as_str()).collect();
        let hint = did_you_mean(&got.value, names.iter().copied());
        self.push(
            ErrorKind::InvalidValue,
            got.origin,
            &got.path,
            format!(
                "{:?} is not {what}: use {}{hint}",
                got.value,
                or_list(&names)
            ),
        );
        None
    }

    /// A path, resolved against the directory of the file that set it; a path set by an
    /// environment variable (or another provider) is resolved against the current
    /// directory. The result is absolute, so a later `chdir` changes nothing.
    pub(super) fn path(&mut self, got: Got<String>) -> Option<Got<PathBuf>> {
        if got.value.trim().is_empty() {
            self.push(
                ErrorKind::InvalidValue,
                got.origin,
                &got.path,
                "must not be empty: give a path".to_owned(),
            );
            return None;
        }
        let raw = PathBuf::from(&got.value);
        let joined = match &got.origin {
            Origin::File(file) if raw.is_relative() => {
                let file = std::path::absolute(file).unwrap_or_else(|_| file.clone());
                match file.parent() {
                    Some(dir) => dir.join(&raw),
                    None => raw,
                }
            }
            _ => raw,
        };
        let value = std::path::absolute(&joined).unwrap_or(joined);
        Some(Got {
            value,
            origin: got.origin,
            path: got.path,
        })
    }

    /// A list of subject patterns (empty when absent); `None` when anything was reported.
    pub(super) fn patterns(&mut self, s: &Section<'_>, key: &str) -> Option<Vec<SubjectPattern>> {
        let Some((value, origin, path)) = self.raw(s, key) else {
            return Some(Vec::new());
        };
        let Value::Array(_, items) = value else {
            self.push(
                ErrorKind::InvalidType,
                origin,
                &path,
                format!(
                    "expected a list of subject patterns like [\"nexus.salon-001.>\"], found {}",
                    value.to_actual()
                ),
            );
            return None;
        };
        let mut patterns = Vec::with_capacity(items.len());
        let mut bad = false;
        for (index, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            let Value::String(_, text) = item else {
                self.push(
                    ErrorKind::InvalidType,
                    origin.clone(),
                    &item_path,
                    format!(
                        "expected a subject pattern string, found {}",
                        item.to_actual()
                    ),
                );
                bad = true;
                continue;
            };
            match SubjectPattern::parse(text) {
                Ok(pattern) => patterns.push(pattern),
                Err(error) => {
                    self.push(
                        ErrorKind::BadPattern,
                        origin.clone(),
                        &item_path,
                        format!(
                            "{:?} is not a subject pattern: {error} (tokens are separated by \
                             `.`; `*` stands for one token, `>` for the rest)",
                            truncate(text)
                        ),
                    );
                    bad = true;
                }
            }
        }
        (!bad).then_some(patterns)
    }

    /// A JetStream stream or consumer name, `default` when absent.
    pub(super) fn jetstream_name(&mut self, s: &Section<'_>, key: &str, default: &str) -> String {
        match self.optional_text(s, key) {
            None => default.to_owned(),
            Some(g) if self.is_jetstream_name(&g) => g.value,
            Some(_) => default.to_owned(),
        }
    }

    /// Whether `got` is a valid JetStream stream or consumer name; reports it if not.
    pub(super) fn is_jetstream_name(&mut self, got: &Got<String>) -> bool {
        if valid_jetstream_name(&got.value) {
            return true;
        }
        self.push(
            ErrorKind::InvalidValue,
            got.origin.clone(),
            &got.path,
            format!(
                "{:?} is not a JetStream name: use a non-empty name without spaces, `.`, `*`, \
                 `>`, `/` or `\\`",
                truncate(&got.value)
            ),
        );
        false
    }
}

fn section_list() -> String {
    SCHEMA
        .iter()
        .map(|(s, _)| format!("[{s}]"))
        .chain([format!("[[{ACL}]]")])
        .collect::<Vec<_>>()
        .join(", ")
}

/// The candidate closest to `name`, if it is close enough to be a likely typo.
fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `"; did you mean `x`?"` or nothing.
fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(name, candidates)
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

/// `a, b or c`.
fn or_list(names: &[&str]) -> String {
    match names.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// `text` cut to 80 chars for an error message.
pub(super) fn truncate(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// JetStream stream and consumer names: no whitespace, `.`, `*`, `>` or path separators.
pub(super) fn valid_jetstream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_a_suggestion_and_unrelated_names_do_not() {
        assert_eq!(closest("idd", ["id", "mode", "tenant"]), Some("id"));
        assert_eq!(
            closest("uplinks", SCHEMA.iter().map(|(s, _)| *s)),
            Some("uplink")
        );
        assert_eq!(closest("colour", ["id", "mode", "tenant"]), None);
    }

    #[test]
    fn choices_are_listed_with_commas_and_a_last_or() {
        assert_eq!(or_list(&["member", "hub", "root"]), "member, hub or root");
        assert_eq!(or_list(&["json", "cbor"]), "json or cbor");
        assert_eq!(or_list(&["json"]), "json");
    }
}
