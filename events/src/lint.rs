//! `events lint`: what a registry must be before it ships.
//!
//! Per entry: the naming rules (`namespace.verb` for commands, `namespace.noun_past` for
//! events: lowercase snake_case tokens; the agent's own namespaces are reserved), complete
//! metadata, at least one example, and every example valid against its schema.
//!
//! Against the previous registry (a directory, or a git ref the CLI extracts): a changed
//! schema within one version must not break anyone — no required field removed or added,
//! no property retyped or removed from a closed object, no enum narrowed, no object
//! closed (`additionalProperties: false`) that was open. A breaking change is a new
//! version.

use std::fmt;

use serde_json::Value;

use crate::registry::{Entry, Kind, Registry};

/// The namespaces of the agent's own events and commands: an operator's event may not use
/// them.
pub const RESERVED_NAMESPACES: &[&str] = &["agent", "audit", "edge", "iot"];

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth a look; `lint` still passes.
    Warning,
    /// `lint` fails.
    Error,
}

/// One thing `lint` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// `name@version`.
    pub event: String,
    /// What and how to fix it.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{level}: {}: {}", self.event, self.message)
    }
}

/// Everything wrong with `registry`'s entries, and, when `previous` is given, every breaking
/// change made to an `event@version` both hold.
pub fn lint(registry: &Registry, previous: Option<&Registry>) -> Vec<Finding> {
    let mut findings = Vec::new();
    for entry in registry.entries() {
        let mut push = |severity, message: String| {
            findings.push(Finding {
                severity,
                event: entry.id(),
                message,
            })
        };
        for (severity, message) in naming(entry) {
            push(severity, message);
        }
        if entry.meta.description.trim().is_empty() {
            push(Severity::Error, "event.toml: `description` is empty".into());
        }
        if entry.meta.owner.trim().is_empty() {
            push(Severity::Error, "event.toml: `owner` is empty".into());
        }
        if !entry.meta.retention.is_empty()
            && humantime::parse_duration(&entry.meta.retention).is_err()
        {
            push(
                Severity::Error,
                format!(
                    "event.toml: `retention` {:?} is not a duration (e.g. 30d)",
                    entry.meta.retention
                ),
            );
        }
        if entry.meta.kind == Kind::Event && entry.meta.ordering_key.trim().is_empty() {
            push(
                Severity::Warning,
                "event.toml: no `ordering_key`: consumers cannot tell what order holds per (usually `source`)".into(),
            );
        }
        if entry.schema.get("type").and_then(Value::as_str) != Some("object") {
            push(
                Severity::Error,
                "schema.json: a payload is an object: set \"type\": \"object\"".into(),
            );
        }
        if entry.examples.is_empty() {
            push(
                Severity::Error,
                "no example: add examples/1.json (a payload that validates)".into(),
            );
        }
        for (file, example) in &entry.examples {
            if let Err(invalid) = entry.check(example) {
                push(
                    Severity::Error,
                    format!("examples/{file} does not validate: {invalid}"),
                );
            }
        }
        if let Some(before) = previous.and_then(|p| p.get(&entry.name, entry.version)) {
            let mut breaks = Vec::new();
            compare(&before.schema, &entry.schema, "", &mut breaks);
            for change in breaks {
                push(
                    Severity::Error,
                    format!(
                        "breaking change within version {}: {change}; publish it as version {} instead",
                        entry.version,
                        entry.version + 1
                    ),
                );
            }
        }
    }
    findings
}

/// The naming rules of one entry.
fn naming(entry: &Entry) -> Vec<(Severity, String)> {
    let mut found = Vec::new();
    let tokens: Vec<&str> = entry.name.split('.').collect();
    let snake = |t: &str| {
        t.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && t.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    if let Some(bad) = tokens.iter().find(|t| !snake(t)) {
        found.push((
            Severity::Error,
            format!(
                "name token `{bad}` is not snake_case (a lowercase letter, then [a-z0-9_]); hyphens are for ids, not names"
            ),
        ));
    }
    if entry.origin != crate::registry::Origin::Builtin && RESERVED_NAMESPACES.contains(&tokens[0])
    {
        found.push((
            Severity::Error,
            format!(
                "namespace `{}` is the agent's own ({}): name your events after your domain, e.g. booking.created",
                tokens[0],
                RESERVED_NAMESPACES.join(", ")
            ),
        ));
    }
    let last = tokens.last().copied().unwrap_or_default();
    match entry.meta.kind {
        // `{command}.result`: a `[[bridge.down]]` command's answer, landed as an event.
        Kind::Event
            if !looks_past(last)
                && last != "result"
                && entry.origin != crate::registry::Origin::Builtin =>
        {
            found.push((
                Severity::Warning,
                format!(
                    "`{last}` does not read as a past participle: events are `namespace.noun_past` (booking.created, payment.refunded)"
                ),
            ));
        }
        Kind::Command if looks_past(last) => found.push((
            Severity::Warning,
            format!("`{last}` reads as a past participle: commands are `namespace.verb` (booking.cancel)"),
        )),
        Kind::Reply if last != "result" => found.push((
            Severity::Error,
            "a reply is named `{command}.result`".into(),
        )),
        _ => {}
    }
    found
}

/// Whether a name's last token reads as a past participle (`created`, `sent`, `paid`).
fn looks_past(token: &str) -> bool {
    const IRREGULAR: &[&str] = &[
        "begun", "bought", "broken", "brought", "built", "chosen", "cut", "done", "drawn", "found",
        "frozen", "given", "grown", "held", "kept", "known", "left", "lost", "made", "met", "paid",
        "put", "read", "run", "seen", "sent", "set", "shown", "sold", "spent", "split", "taken",
        "told", "thrown", "won", "written",
    ];
    let word = token.rsplit('_').next().unwrap_or(token);
    word.ends_with("ed") || IRREGULAR.contains(&word)
}

/// The breaking differences from `old` to `new` at `path` (a JSON pointer into the
/// payload), appended to `out`.
fn compare(old: &Value, new: &Value, path: &str, out: &mut Vec<String>) {
    let at = if path.is_empty() { "/" } else { path };
    let types = |v: &Value| -> Vec<String> {
        match v.get("type") {
            Some(Value::String(t)) => vec![t.clone()],
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        }
    };
    let (old_types, new_types) = (types(old), types(new));
    if !old_types.is_empty() && old_types != new_types {
        out.push(format!(
            "`{at}` retyped from {} to {}",
            old_types.join("|"),
            if new_types.is_empty() {
                "any".to_owned()
            } else {
                new_types.join("|")
            }
        ));
    }
    if let Some(Value::Array(before)) = old.get("enum") {
        if let Some(Value::Array(after)) = new.get("enum") {
            let dropped: Vec<String> = before
                .iter()
                .filter(|v| !after.contains(v))
                .map(Value::to_string)
                .collect();
            if !dropped.is_empty() {
                out.push(format!(
                    "`{at}` enum narrowed: {} removed",
                    dropped.join(", ")
                ));
            }
        }
    } else if old.get("enum").is_none() && new.get("enum").is_some() {
        out.push(format!("`{at}` restricted to an enum"));
    }
    let required = |v: &Value| -> Vec<String> {
        v.get("required")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let (old_required, new_required) = (required(old), required(new));
    for field in old_required.iter().filter(|f| !new_required.contains(f)) {
        out.push(format!(
            "required field `{path}/{field}` removed (consumers rely on it)"
        ));
    }
    for field in new_required.iter().filter(|f| !old_required.contains(f)) {
        out.push(format!(
            "field `{path}/{field}` newly required (events of today's producers fail)"
        ));
    }
    let closed = |v: &Value| v.get("additionalProperties") == Some(&Value::Bool(false));
    if closed(new) && !closed(old) {
        out.push(format!(
            "`{at}` closed (additionalProperties: false) where it was open"
        ));
    }
    let empty = serde_json::Map::new();
    let old_props = old
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let new_props = new
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (name, before) in old_props {
        let field = format!("{path}/{name}");
        match new_props.get(name) {
            Some(after) => compare(before, after, &field, out),
            None if closed(new) => {
                out.push(format!("property `{field}` removed from a closed object"))
            }
            None => {}
        }
    }
    if let (Some(before), Some(after)) = (old.get("items"), new.get("items")) {
        compare(before, after, &format!("{path}/items"), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::DRAFT_2020_12;
    use serde_json::json;
    use std::path::Path;

    fn write(dir: &Path, name: &str, schema: &Value, meta: &str, example: Option<&Value>) {
        let at = dir.join(name).join("1");
        std::fs::create_dir_all(at.join("examples")).expect("mkdir");
        std::fs::write(at.join("schema.json"), schema.to_string()).expect("write");
        std::fs::write(at.join("event.toml"), meta).expect("write");
        if let Some(example) = example {
            std::fs::write(at.join("examples/1.json"), example.to_string()).expect("write");
        }
    }

    const META: &str = "description = \"A booking was made.\"\nowner = \"bookings\"\nordering_key = \"source\"\nretention = \"30d\"\n";

    fn booking() -> Value {
        json!({"$schema": DRAFT_2020_12, "type": "object", "additionalProperties": false,
               "required": ["booking_id", "state"],
               "properties": {"booking_id": {"type": "string"},
                              "state": {"type": "string", "enum": ["new", "confirmed", "cancelled"]},
                              "seats": {"type": "integer"}}})
    }

    /// A registry of one `booking.created@1` with `example`.
    fn one_booking(example: &Value) -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "booking.created",
            &booking(),
            META,
            Some(example),
        );
        let registry = Registry::from_dir(dir.path()).expect("loads");
        (dir, registry)
    }

    fn errors(findings: &[Finding]) -> Vec<String> {
        findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_builtin_registry_is_clean() {
        let registry = Registry::builtin().expect("loads");
        let findings = lint(&registry, Some(&registry));
        assert!(errors(&findings).is_empty(), "{findings:#?}");
    }

    #[test]
    fn a_good_event_passes_and_names_are_checked() {
        let example = json!({"booking_id": "b-1", "state": "new"});
        let (_dir, registry) = one_booking(&example);
        assert_eq!(lint(&registry, None), Vec::new());

        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "booking.create",
            &booking(),
            META,
            Some(&example),
        );
        write(dir.path(), "edge.booked", &booking(), META, Some(&example));
        write(
            dir.path(),
            "booking.seat-count",
            &booking(),
            META,
            Some(&example),
        );
        write(
            dir.path(),
            "booking.noted",
            &booking(),
            "description = \"\"\nowner = \"\"\nretention = \"soon\"\n",
            None,
        );
        let registry = Registry::from_dir(dir.path()).expect("loads");
        let text = lint(&registry, None)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        for expected in [
            "warning: booking.create@1: `create` does not read as a past participle",
            "error: edge.booked@1: namespace `edge` is the agent's own",
            "error: booking.seat-count@1: name token `seat-count` is not snake_case",
            "error: booking.noted@1: event.toml: `description` is empty",
            "error: booking.noted@1: event.toml: `owner` is empty",
            "error: booking.noted@1: event.toml: `retention` \"soon\" is not a duration",
            "error: booking.noted@1: no example",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn an_invalid_example_is_an_error_with_its_pointer() {
        let (_dir, registry) = one_booking(&json!({"booking_id": "b-1", "state": "lost"}));
        let errors = errors(&lint(&registry, None));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("examples/1.json does not validate") && errors[0].contains("/state"),
            "{errors:?}"
        );
    }

    #[test]
    fn breaking_changes_within_a_version_are_caught_and_compatible_ones_pass() {
        let example = json!({"booking_id": "b-1", "state": "new"});
        let (_before_dir, before) = one_booking(&example);
        let changed = |edit: &dyn Fn(&mut Value)| -> Vec<String> {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut schema = booking();
            edit(&mut schema);
            write(dir.path(), "booking.created", &schema, META, Some(&example));
            let after = Registry::from_dir(dir.path()).expect("loads");
            errors(&lint(&after, Some(&before)))
        };
        // Compatible: a new optional field, a widened enum.
        assert_eq!(
            changed(&|s| {
                s["properties"]["note"] = json!({"type": "string"});
            }),
            Vec::<String>::new()
        );
        assert_eq!(
            changed(&|s| {
                s["properties"]["state"]["enum"] =
                    json!(["new", "confirmed", "cancelled", "moved"]);
            }),
            Vec::<String>::new()
        );
        for (edit, expected) in [
            (
                Box::new(|s: &mut Value| {
                    s["required"] = json!(["booking_id"]);
                }) as Box<dyn Fn(&mut Value)>,
                "required field `/state` removed",
            ),
            (
                Box::new(|s: &mut Value| {
                    s["properties"]["booking_id"] = json!({"type": "integer"});
                }),
                "`/booking_id` retyped from string to integer",
            ),
            (
                Box::new(|s: &mut Value| {
                    s["properties"]["state"]["enum"] = json!(["new", "confirmed"]);
                }),
                "`/state` enum narrowed: \"cancelled\" removed",
            ),
            (
                Box::new(|s: &mut Value| {
                    s["required"] = json!(["booking_id", "state", "seats"]);
                }),
                "field `/seats` newly required",
            ),
            (
                Box::new(|s: &mut Value| {
                    s["properties"].as_object_mut().map(|p| p.remove("seats"));
                }),
                "property `/seats` removed from a closed object",
            ),
        ] {
            let errors = changed(&*edit);
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains(expected) && e.contains("publish it as version 2")),
                "{expected}: {errors:?}"
            );
        }
    }
}
