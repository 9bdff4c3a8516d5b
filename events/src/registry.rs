//! The registry: every `event@version` the fleet knows, with its payload schema, examples and
//! metadata.
//!
//! Two sources, one shape on disk (`NAME/VERSION/schema.json`, `NAME/VERSION/event.toml`,
//! `NAME/VERSION/examples/*.json`):
//! - the agent's own events (`events/registry/` in the repository, embedded at build time):
//!   [`Registry::builtin`];
//! - the operator's directory (`[events] registry`): [`Registry::load`] adds it to the
//!   built-ins. An operator's entry may not redefine a built-in one.
//!
//! Every schema is compiled when the registry is loaded, so a registry that loads is a
//! registry whose schemas all work; every error names the file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The draft every schema declares.
pub const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";
/// A registry directory's limits: files larger than this are refused before parsing.
pub const MAX_FILE_BYTES: u64 = 256 * 1024;
/// At most this many entries in an operator's directory.
pub const MAX_ENTRIES: usize = 4096;

/// The files of one built-in entry, embedded by `build.rs`.
struct BuiltinFiles {
    name: &'static str,
    version: &'static str,
    schema: &'static str,
    meta: &'static str,
    examples: &'static [(&'static str, &'static str)],
}

static BUILTIN: &[BuiltinFiles] = include!(concat!(env!("OUT_DIR"), "/builtin.rs"));

/// What an entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An event published by a node (`nexus.…`).
    #[default]
    Event,
    /// A command sent to a node (`_nexus.cmd.{node}.{command}`).
    Command,
    /// A command's reply event (`{command}.result`).
    Reply,
}

impl Kind {
    /// The name used in `event.toml` and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Event => "event",
            Kind::Command => "command",
            Kind::Reply => "reply",
        }
    }
}

/// `event.toml`: what the schema does not say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// What the event is and when it is emitted.
    pub description: String,
    /// Who answers for it (a team, an app).
    pub owner: String,
    /// Event, command or reply.
    #[serde(default)]
    pub kind: Kind,
    /// The subject pattern, `{placeholders}` for the variable tokens. Default for an event:
    /// `nexus.{tenant}.NAME`.
    #[serde(default)]
    pub subject: String,
    /// The landing's domain stream that keeps it (e.g. `NEXUS_IOT`); empty when none does.
    #[serde(default)]
    pub domain: String,
    /// How long the domain keeps it (e.g. `30d`); empty when not landed.
    #[serde(default)]
    pub retention: String,
    /// The envelope field(s) its order holds per (e.g. `source`).
    #[serde(default)]
    pub ordering_key: String,
}

/// Where an entry comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Shipped in the binary.
    Builtin,
    /// The operator's registry directory: the entry's own directory.
    Dir(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Builtin => f.write_str("built-in"),
            Origin::Dir(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// One `event@version`.
pub struct Entry {
    /// The event name (`iot.sensor_data`).
    pub name: String,
    /// The envelope's `version` it describes (≥ 1).
    pub version: u32,
    /// The metadata.
    pub meta: Meta,
    /// The payload's JSON Schema, as written.
    pub schema: Value,
    /// The examples: file name and payload.
    pub examples: Vec<(String, Value)>,
    /// Where it comes from.
    pub origin: Origin,
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("meta", &self.meta)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Entry {
    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The subject pattern: the metadata's, or `nexus.{tenant}.NAME` for an event.
    pub fn subject(&self) -> String {
        if self.meta.subject.is_empty() {
            format!("nexus.{{tenant}}.{}", self.name)
        } else {
            self.meta.subject.clone()
        }
    }

    /// The payload against the schema: the first failure, located.
    pub fn check(&self, payload: &Value) -> Result<(), Invalid> {
        match self.schemas.validate(payload, self.index) {
            Ok(()) => Ok(()),
            Err(error) => {
                // The error is a tree (a group per keyword); its first leaf is the first
                // failing field.
                let mut leaf = &error;
                while let Some(cause) = leaf.causes.first() {
                    leaf = cause;
                }
                Err(Invalid {
                    event: self.id(),
                    pointer: leaf.instance_location.to_string(),
                    message: leaf.kind.to_string(),
                })
            }
        }
    }
}

/// Why a payload does not satisfy its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event}: {message} (at `{}`)", if pointer.is_empty() { "/" } else { pointer })]
pub struct Invalid {
    /// `name@version`.
    pub event: String,
    /// The JSON pointer (RFC 6901) of the failing field in the payload; empty for the
    /// payload itself.
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

/// A payload's standing against the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its `event@version` is registered and the payload satisfies the schema.
    Valid,
    /// No entry for this `event@version`.
    Unknown,
    /// Registered, and the payload does not satisfy the schema.
    Invalid(Invalid),
}

/// Why a registry (or one of its files) could not be loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or directory could not be read.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// A file is not what it should be (bad JSON or TOML, a schema that does not compile,
    /// a misplaced file).
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl LoadError {
    fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        LoadError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every known `event@version`.
#[derive(Debug, Default)]
pub struct Registry {
    entries: BTreeMap<(String, u32), Entry>,
}

impl Registry {
    /// The agent's own events. They are checked by this crate's tests; an error here is a
    /// build that should not have shipped, and names the embedded file.
    pub fn builtin() -> Result<Registry, LoadError> {
        let mut registry = Registry::default();
        for files in BUILTIN {
            let at = PathBuf::from(format!("(built-in) {}/{}", files.name, files.version));
            let examples = files
                .examples
                .iter()
                .map(|(file, text)| (file.to_string(), text.to_string()))
                .collect();
            let entry = build_entry(
                &at,
                files.name,
                files.version,
                files.schema,
                files.meta,
                examples,
                Origin::Builtin,
            )?;
            registry.insert(entry, &at)?;
        }
        Ok(registry)
    }

    /// The built-ins and, when given, the operator's directory.
    pub fn load(dir: Option<&Path>) -> Result<Registry, LoadError> {
        let mut registry = Registry::builtin()?;
        if let Some(dir) = dir {
            registry.add_dir(dir)?;
        }
        Ok(registry)
    }

    /// Only the entries of `dir` (no built-ins): what `events lint DIR` checks.
    pub fn from_dir(dir: &Path) -> Result<Registry, LoadError> {
        let mut registry = Registry::default();
        registry.add_dir(dir)?;
        Ok(registry)
    }

    /// Adds every `NAME/VERSION/` of `dir`.
    pub fn add_dir(&mut self, dir: &Path) -> Result<(), LoadError> {
        let mut count = 0usize;
        for name_dir in read_dir_sorted(dir)? {
            if !name_dir.is_dir() {
                if is_hidden(&name_dir) || name_dir.extension().is_some_and(|e| e == "md") {
                    continue;
                }
                return Err(LoadError::invalid(
                    &name_dir,
                    "not a directory: a registry holds NAME/VERSION/ directories (see `nexus-agent events scaffold`)",
                ));
            }
            if is_hidden(&name_dir) {
                continue;
            }
            let name = file_name(&name_dir)?;
            for version_dir in read_dir_sorted(&name_dir)? {
                if is_hidden(&version_dir) {
                    continue;
                }
                if !version_dir.is_dir() {
                    return Err(LoadError::invalid(
                        &version_dir,
                        "not a directory: an event's directory holds one directory per version (1, 2, …)",
                    ));
                }
                count += 1;
                if count > MAX_ENTRIES {
                    return Err(LoadError::invalid(
                        dir,
                        format!("more than {MAX_ENTRIES} event versions"),
                    ));
                }
                let version = file_name(&version_dir)?;
                let schema = read_text(&version_dir.join("schema.json"))?;
                let meta = read_text(&version_dir.join("event.toml"))?;
                let mut examples = Vec::new();
                let examples_dir = version_dir.join("examples");
                if examples_dir.is_dir() {
                    for file in read_dir_sorted(&examples_dir)? {
                        if file.extension().is_some_and(|e| e == "json") {
                            examples.push((file_name(&file)?, read_text(&file)?));
                        }
                    }
                }
                let entry = build_entry(
                    &version_dir,
                    &name,
                    &version,
                    &schema,
                    &meta,
                    examples,
                    Origin::Dir(version_dir.clone()),
                )?;
                self.insert(entry, &version_dir)?;
            }
        }
        Ok(())
    }

    fn insert(&mut self, entry: Entry, at: &Path) -> Result<(), LoadError> {
        let key = (entry.name.clone(), entry.version);
        if let Some(existing) = self.entries.get(&key) {
            return Err(LoadError::invalid(
                at,
                format!(
                    "{} is already defined ({}); a built-in event cannot be redefined, give yours another name",
                    existing.id(),
                    existing.origin
                ),
            ));
        }
        self.entries.insert(key, entry);
        Ok(())
    }

    /// Marks the entries that are exact copies (schema and metadata) of `builtin`'s as
    /// built-in: linting the repository's own `events/registry/` then applies the rules of
    /// the agent's events, not an operator's. Returns how many.
    pub fn adopt_builtin_copies(&mut self, builtin: &Registry) -> usize {
        let mut adopted = 0;
        for (key, entry) in &mut self.entries {
            let same = builtin
                .entries
                .get(key)
                .is_some_and(|b| b.schema == entry.schema && b.meta == entry.meta);
            if same {
                entry.origin = Origin::Builtin;
                adopted += 1;
            }
        }
        adopted
    }

    /// Every entry, by name then version.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `name@version`.
    pub fn get(&self, name: &str, version: u32) -> Option<&Entry> {
        self.entries.get(&(name.to_owned(), version))
    }

    /// `NAME@V`, or the latest version of `NAME`.
    pub fn find(&self, spec: &str) -> Option<&Entry> {
        match spec.rsplit_once('@') {
            Some((name, version)) => self.get(name, version.parse().ok()?),
            None => self
                .entries
                .range((spec.to_owned(), 0)..=(spec.to_owned(), u32::MAX))
                .next_back()
                .map(|(_, entry)| entry),
        }
    }

    /// A payload of `name@version` against its schema.
    pub fn validate(&self, name: &str, version: u32, payload: &Value) -> Verdict {
        match self.get(name, version) {
            None => Verdict::Unknown,
            Some(entry) => match entry.check(payload) {
                Ok(()) => Verdict::Valid,
                Err(invalid) => Verdict::Invalid(invalid),
            },
        }
    }

    /// The catalog table (Markdown) of docs/events.md: one row per entry.
    pub fn catalog(&self) -> String {
        let dash = |text: &str| {
            if text.is_empty() {
                "-".to_owned()
            } else {
                text.to_owned()
            }
        };
        let mut out = String::from(
            "| event | version | kind | subject | domain stream | retention | ordering key |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for entry in self.entries.values() {
            out.push_str(&format!(
                "| `{}` | {} | {} | `{}` | {} | {} | {} |\n",
                entry.name,
                entry.version,
                entry.meta.kind.as_str(),
                entry.subject(),
                dash(&entry.meta.domain),
                dash(&entry.meta.retention),
                dash(&entry.meta.ordering_key),
            ));
        }
        out
    }

    /// A digest of every entry (name, version, schema, metadata): `sha256:` + 16 hex
    /// digits. Two nodes with the same hash validate alike; the heartbeat reports it.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        for entry in self.entries.values() {
            hasher.update(entry.name.as_bytes());
            hasher.update([0]);
            hasher.update(entry.version.to_be_bytes());
            // serde_json's maps are ordered by key: the text is canonical for a value.
            hasher.update(entry.schema.to_string().as_bytes());
            hasher.update([0]);
            hasher.update(
                serde_json::to_string(&entry.meta)
                    .unwrap_or_default()
                    .as_bytes(),
            );
            hasher.update([0]);
        }
        let digest = hasher.finalize();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}

/// Parses and compiles one entry; every error names `at`.
fn build_entry(
    at: &Path,
    name: &str,
    version: &str,
    schema: &str,
    meta: &str,
    examples: Vec<(String, String)>,
    origin: Origin,
) -> Result<Entry, LoadError> {
    if !nexus_policies::subjects::is_valid_event_name(name) {
        return Err(LoadError::invalid(
            at,
            format!("`{name}` is not an event name: two or more dot-separated tokens of [a-z0-9_-], e.g. booking.created"),
        ));
    }
    let version: u32 =
        version.parse().ok().filter(|v| *v >= 1).ok_or_else(|| {
            LoadError::invalid(at, format!("`{version}` is not a version: 1, 2, …"))
        })?;
    let schema_path = at.join("schema.json");
    let schema: Value = serde_json::from_str(schema)
        .map_err(|e| LoadError::invalid(&schema_path, format!("not JSON: {e}")))?;
    match schema.get("$schema").and_then(Value::as_str) {
        Some(DRAFT_2020_12) => {}
        Some(other) => {
            return Err(LoadError::invalid(
                &schema_path,
                format!("`$schema` is {other:?}: write \"{DRAFT_2020_12}\""),
            ))
        }
        None => {
            return Err(LoadError::invalid(
                &schema_path,
                format!("no `$schema`: add \"$schema\": \"{DRAFT_2020_12}\""),
            ))
        }
    }
    let (schemas, index) = compile(name, version, &schema)
        .map_err(|e| LoadError::invalid(&schema_path, format!("not a usable JSON Schema: {e}")))?;
    let meta_path = at.join("event.toml");
    let meta: Meta = toml::from_str(meta)
        .map_err(|e| LoadError::invalid(&meta_path, e.message().to_string()))?;
    let mut parsed = Vec::with_capacity(examples.len());
    for (file, text) in examples {
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            LoadError::invalid(at.join("examples").join(&file), format!("not JSON: {e}"))
        })?;
        parsed.push((file, value));
    }
    Ok(Entry {
        name: name.to_owned(),
        version,
        meta,
        schema,
        examples: parsed,
        origin,
        schemas,
        index,
    })
}

/// Schemas refer only to themselves (`$defs`): nothing is fetched, from the network or
/// from files.
struct NoRemote;

impl boon::UrlLoader for NoRemote {
    fn load(&self, url: &str) -> Result<Value, Box<dyn std::error::Error>> {
        Err(
            format!("{url}: a registry schema refers only to itself (`$defs`); nothing is fetched")
                .into(),
        )
    }
}

/// Compiles one schema (checked against the draft 2020-12 meta-schema on the way).
fn compile(
    name: &str,
    version: u32,
    schema: &Value,
) -> Result<(boon::Schemas, boon::SchemaIndex), String> {
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler.set_default_draft(boon::Draft::V2020_12);
    compiler.use_loader(Box::new(NoRemote));
    let location = format!("urn:nexus-events:{name}:{version}");
    compiler
        .add_resource(&location, schema.clone())
        .map_err(|e| with_causes(&e))?;
    let index = compiler
        .compile(&location, &mut schemas)
        .map_err(|e| with_causes(&e))?;
    Ok((schemas, index))
}

/// An error and its causes, `: `-separated.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |error| LoadError::Io {
        path: dir.to_owned(),
        error,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        paths.push(entry.map_err(io)?.path());
    }
    paths.sort();
    Ok(paths)
}

fn read_text(path: &Path) -> Result<String, LoadError> {
    let io = |error| LoadError::Io {
        path: path.to_owned(),
        error,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_FILE_BYTES {
        return Err(LoadError::invalid(
            path,
            format!("{size} bytes, over the {MAX_FILE_BYTES} a registry file may have"),
        ));
    }
    std::fs::read_to_string(path).map_err(io)
}

fn file_name(path: &Path) -> Result<String, LoadError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| LoadError::invalid(path, "not a UTF-8 name"))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_builtin_entry_loads_and_its_examples_are_valid() {
        let registry = Registry::builtin().expect("the built-in registry loads");
        assert!(registry.len() >= 10, "{} built-in entries", registry.len());
        for entry in registry.entries() {
            assert!(!entry.examples.is_empty(), "{} has no example", entry.id());
            for (file, example) in &entry.examples {
                entry
                    .check(example)
                    .unwrap_or_else(|e| panic!("{} example {file}: {e}", entry.id()));
            }
        }
    }

    #[test]
    fn a_failing_field_is_named_by_its_pointer() {
        let registry = Registry::builtin().expect("loads");
        let good = json!({"sensor_id": "s-1", "metric": "temperature", "value": 21.5,
                          "unit": "°C", "timestamp_unix": 1_750_000_000});
        assert_eq!(
            registry.validate("iot.sensor_data", 1, &good),
            Verdict::Valid
        );
        let mut bad = good.clone();
        bad["value"] = json!("warm");
        match registry.validate("iot.sensor_data", 1, &bad) {
            Verdict::Invalid(invalid) => {
                assert_eq!(invalid.pointer, "/value");
                assert_eq!(invalid.event, "iot.sensor_data@1");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            registry.validate("iot.sensor_data", 9, &good),
            Verdict::Unknown
        );
        assert_eq!(
            registry.validate("booking.created", 1, &good),
            Verdict::Unknown
        );
    }

    #[test]
    fn find_takes_a_version_or_the_latest() {
        let registry = Registry::builtin().expect("loads");
        assert_eq!(
            registry.find("edge.health").map(Entry::id).as_deref(),
            Some("edge.health@1")
        );
        assert_eq!(registry.find("edge.health@1").map(|e| e.version), Some(1));
        assert!(registry.find("edge.health@x").is_none());
        assert!(registry.find("no.such").is_none());
    }

    fn write_entry(dir: &Path, name: &str, version: &str, schema: &str, meta: &str) -> PathBuf {
        let at = dir.join(name).join(version);
        std::fs::create_dir_all(at.join("examples")).expect("mkdir");
        std::fs::write(at.join("schema.json"), schema).expect("write");
        std::fs::write(at.join("event.toml"), meta).expect("write");
        at
    }

    const META: &str = "description = \"A booking was made.\"\nowner = \"bookings\"\n";

    #[test]
    fn an_operator_directory_adds_entries_and_changes_the_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let schema = json!({"$schema": DRAFT_2020_12, "type": "object",
            "required": ["booking_id"], "properties": {"booking_id": {"type": "string"}}});
        write_entry(
            dir.path(),
            "booking.created",
            "1",
            &schema.to_string(),
            META,
        );
        let builtin = Registry::builtin().expect("loads");
        let registry = Registry::load(Some(dir.path())).expect("loads");
        assert_eq!(registry.len(), builtin.len() + 1);
        assert_ne!(registry.hash(), builtin.hash());
        assert_eq!(builtin.hash(), Registry::builtin().expect("loads").hash());
        let entry = registry.find("booking.created").expect("registered");
        assert_eq!(entry.subject(), "nexus.{tenant}.booking.created");
        assert!(matches!(entry.origin, Origin::Dir(_)));
        match registry.validate("booking.created", 1, &json!({"booking_id": 7})) {
            Verdict::Invalid(invalid) => assert_eq!(invalid.pointer, "/booking_id"),
            other => panic!("{other:?}"),
        }
        match registry.validate("booking.created", 1, &json!({})) {
            Verdict::Invalid(invalid) => {
                assert_eq!(invalid.pointer, "");
                assert!(invalid.message.contains("booking_id"), "{invalid}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_files_are_refused_with_their_path() {
        let cases: [(&str, &str, &str, &str); 7] = [
            (
                "booking.created",
                "1",
                "{\"$schema\": \"https://json-schema.org/draft/2020-12/schema\", \"$ref\": \"https://example.invalid/other.json\"}",
                "nothing is fetched",
            ),
            ("Booking.created", "1", "{}", "is not an event name"),
            ("booking.created", "0", "{}", "is not a version"),
            ("booking.created", "1", "{not json", "not JSON"),
            (
                "booking.created",
                "1",
                "{\"type\": \"object\"}",
                "no `$schema`",
            ),
            (
                "booking.created",
                "1",
                "{\"$schema\": \"http://json-schema.org/draft-07/schema#\"}",
                "`$schema` is",
            ),
            (
                "booking.created",
                "1",
                "{\"$schema\": \"https://json-schema.org/draft/2020-12/schema\", \"type\": 5}",
                "not a usable JSON Schema",
            ),
        ];
        for (name, version, schema, expected) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            write_entry(dir.path(), name, version, schema, META);
            let error = Registry::from_dir(dir.path()).expect_err(name).to_string();
            assert!(error.contains(expected), "{name}/{version}: {error}");
            assert!(error.contains(&dir.path().display().to_string()), "{error}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let schema = json!({"$schema": DRAFT_2020_12}).to_string();
        write_entry(
            dir.path(),
            "booking.created",
            "1",
            &schema,
            "description = 1\n",
        );
        let error = Registry::from_dir(dir.path())
            .expect_err("bad toml")
            .to_string();
        assert!(error.contains("event.toml"), "{error}");
        write_entry(dir.path(), "edge.health", "1", &schema, META);
        std::fs::remove_dir_all(dir.path().join("booking.created")).expect("rm");
        let error = Registry::load(Some(dir.path()))
            .expect_err("redefined")
            .to_string();
        assert!(error.contains("already defined"), "{error}");
    }
}
