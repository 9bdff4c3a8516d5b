//! The rules of a desired-config document that need no I/O: how a patch is applied to the
//! current file ([`render`]), which values are secrets that never travel in a document
//! ([`find_secrets`]), and what a hub may not change in its member's config
//! ([`hub_limits`]). The agent applies them before validating the result with the same
//! [`crate::load`] that `nexus-agent check` runs.

use figment::providers::{Format as _, Toml};
use figment::value::{Dict, Value};
use nexus_policies::SubjectPattern;

use crate::{AclPolicy, Config};

/// Section and key names whose values are secrets whatever they look like.
const SECRET_NAMES: &[&str] = &[
    "password",
    "pass",
    "secret",
    "seed",
    "private_key",
    "credentials",
];

/// The file a document asks for: `toml` itself (whole file), or `current` with the
/// top-level sections named in `patch` replaced by (or, when absent from `toml`, removed
/// as) those of `toml`. The patch works on the text, section by section (a section is a
/// top-level table with its sub-tables and arrays of tables, as headers name them): the
/// rest of the file, comments included, stays as it is; a replaced section takes the place
/// of its first block. Errors name what does not parse.
pub fn render(current: &str, patch: Option<&[String]>, toml: &str) -> Result<String, String> {
    let desired = parse(toml).map_err(|e| format!("the document's TOML does not parse: {e}"))?;
    let Some(sections) = patch else {
        return Ok(toml.to_owned());
    };
    if let Some(extra) = desired.keys().find(|k| !sections.contains(k)) {
        return Err(format!(
            "the patch holds section `{extra}`, which it does not name: name it in --keys or remove it"
        ));
    }
    parse(current).map_err(|e| format!("the current config file does not parse as TOML: {e}"))?;
    let incoming = blocks(toml);
    if incoming
        .iter()
        .any(|(name, text)| name.is_none() && !text.trim().is_empty())
    {
        return Err(
            "the patch has keys outside any section: put them under a [section] header".to_owned(),
        );
    }
    let mut out = String::with_capacity(current.len() + toml.len());
    let mut placed: Vec<&str> = Vec::new();
    for (name, text) in blocks(current) {
        match name.filter(|n| sections.iter().any(|s| s == n)) {
            None => out.push_str(text),
            Some(name) if placed.contains(&name) => {}
            Some(name) => {
                placed.push(name);
                for (_, new) in incoming.iter().filter(|(n, _)| *n == Some(name)) {
                    push_block(&mut out, new);
                }
            }
        }
    }
    for section in sections {
        if !placed.contains(&section.as_str()) {
            for (_, new) in incoming
                .iter()
                .filter(|(n, _)| *n == Some(section.as_str()))
            {
                push_block(&mut out, new);
            }
        }
    }
    parse(&out).map_err(|e| format!("the patched config does not parse as TOML: {e}"))?;
    Ok(out)
}

/// A TOML text as figment reads config files (the same parser: nothing more is linked).
fn parse(text: &str) -> Result<Dict, String> {
    Toml::from_str::<Dict>(text).map_err(|e| e.to_string())
}

/// Appends a block, on a line of its own.
fn push_block(out: &mut String, block: &str) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(block);
    if !block.ends_with('\n') {
        out.push('\n');
    }
}

/// The text split at table headers: (the header's top-level name, the text up to the next
/// header); `None` for what precedes the first header.
fn blocks(text: &str) -> Vec<(Option<&str>, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut name = None;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if let Some(next) = header_name(line) {
            if at > start || name.is_some() {
                out.push((name, &text[start..at]));
            }
            start = at;
            name = Some(next);
        }
        at += line.len();
    }
    if at > start || name.is_some() {
        out.push((name, &text[start..at]));
    }
    out
}

/// The top-level name of a `[a.b]` or `[[a.b]]` header line.
fn header_name(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('[')?;
    let rest = rest.strip_prefix('[').unwrap_or(rest).trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(rest.len());
    let name = &rest[..end];
    let after = rest[end..].trim_start();
    (!name.is_empty() && (after.starts_with('.') || after.starts_with(']'))).then_some(name)
}

/// Every value of `toml` that carries a secret, by key path: PEM blocks, credentials in
/// URLs, and keys named like secrets. Config files name secret files (`node.key`,
/// `*_file`); a document must never carry their content.
pub fn find_secrets(toml: &str) -> Vec<String> {
    let Ok(table) = parse(toml) else {
        return Vec::new(); // render reports the parse error
    };
    let mut found = Vec::new();
    walk(&Value::from(table), String::new(), &mut found);
    found
}

fn walk(value: &Value, path: String, found: &mut Vec<String>) {
    match value {
        Value::Dict(_, table) => {
            for (key, value) in table {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let lower = key.to_ascii_lowercase();
                if SECRET_NAMES
                    .iter()
                    .any(|s| lower == *s || lower.ends_with(&format!("_{s}")))
                {
                    found.push(format!(
                        "`{path}` is a secret: keep it in a file on the box and name the file"
                    ));
                    continue;
                }
                walk(value, path, found);
            }
        }
        Value::Array(_, items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, format!("{path}[{i}]"), found);
            }
        }
        Value::String(_, text) => {
            if text.contains("-----BEGIN") {
                found.push(format!(
                    "`{path}` holds a PEM block (a key or certificate): name its file instead"
                ));
            } else if url_has_password(text) {
                found.push(format!(
                    "`{path}` is a URL with a password: use a credentials file on the box"
                ));
            }
        }
        _ => {}
    }
}

fn url_has_password(text: &str) -> bool {
    let Some((_, rest)) = text.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// What a hub may not do with its member's config, as errors: change `[node]` or
/// `[trust]` (identity and trust are the root's), or allow in `[[acl]]` a subject the
/// member's token does not grant (`publish`, `receive`: the token's patterns).
pub fn hub_limits(
    current: &Config,
    desired: &Config,
    publish: &[SubjectPattern],
    receive: &[SubjectPattern],
) -> Vec<String> {
    let mut errors = Vec::new();
    if current.node != desired.node {
        errors.push("[node] may be changed by the root only, not by a hub".to_owned());
    }
    if current.trust != desired.trust {
        errors.push("[trust] may be changed by the root only, not by a hub".to_owned());
    }
    if let AclPolicy::Rules(acl) = &desired.acl {
        for (i, rule) in acl.rules().iter().enumerate() {
            let lists = [
                ("allow_publish", &rule.allow_publish, publish),
                ("allow_receive", &rule.allow_receive, receive),
            ];
            for (name, patterns, grants) in lists {
                for (j, pattern) in patterns.iter().enumerate() {
                    if !grants.iter().any(|g| g.covers(pattern)) {
                        errors.push(format!(
                            "acl[{i}].{name}[{j}] `{}` is wider than the node's token grants: a hub may not widen its member beyond its token",
                            pattern.as_str()
                        ));
                    }
                }
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURRENT: &str = "[node]\nid = \"edge-01\"\n\n[heartbeat]\ninterval = \"5s\"\n\n[iot]\nbroker = \"mqtt://a:1883\"\n";

    #[test]
    fn a_whole_file_is_taken_as_is() {
        let toml = "[node]\nid = \"edge-02\"\n";
        assert_eq!(render(CURRENT, None, toml).as_deref(), Ok(toml));
    }

    #[test]
    fn a_patch_keeps_the_rest_of_the_file_and_its_comments() {
        let current = "# my box\n[node]\nid = \"edge-01\" # keep\n\n[iot]\nurl = \"a\"\n\n[[iot.sensors]]\ntopic = \"x/{sensor_id}\"\n\n[log]\nlevel = \"info\"\n";
        let patch = ["iot".to_owned()];
        let out = render(current, Some(&patch), "[iot]\nurl = \"b\"\n").expect("renders");
        assert_eq!(out, "# my box\n[node]\nid = \"edge-01\" # keep\n\n[iot]\nurl = \"b\"\n[log]\nlevel = \"info\"\n");
        let out = render(
            current,
            Some(&["heartbeat".to_owned()]),
            "[heartbeat]\ninterval = \"1s\"\n",
        )
        .expect("appends");
        assert!(
            out.starts_with(current) && out.ends_with("[heartbeat]\ninterval = \"1s\"\n"),
            "{out}"
        );
        assert!(
            render(current, Some(&patch), "url = \"c\"\n").is_err(),
            "keys outside a section"
        );
    }

    #[test]
    fn a_patch_replaces_and_removes_named_sections_only() {
        let patch = ["heartbeat".to_owned(), "iot".to_owned()];
        let out =
            render(CURRENT, Some(&patch), "[heartbeat]\ninterval = \"1s\"\n").expect("renders");
        let table = parse(&out).expect("parses");
        let text = |section: &str, key: &str| match table.get(section) {
            Some(Value::Dict(_, d)) => d.get(key).and_then(Value::as_str).map(str::to_owned),
            _ => None,
        };
        assert_eq!(text("heartbeat", "interval").as_deref(), Some("1s"));
        assert!(!table.contains_key("iot"), "named but absent: removed");
        assert_eq!(text("node", "id").as_deref(), Some("edge-01"));
    }

    #[test]
    fn a_patch_with_an_unnamed_section_or_bad_toml_is_an_error() {
        let patch = ["heartbeat".to_owned()];
        let err = render(CURRENT, Some(&patch), "[iot]\nbroker = \"x\"\n").expect_err("unnamed");
        assert!(err.contains("`iot`"), "{err}");
        let err = render(CURRENT, None, "[node\n").expect_err("bad toml");
        assert!(err.contains("does not parse"), "{err}");
    }

    #[test]
    fn secrets_are_found_by_name_and_by_content() {
        let toml = r#"
[uplink]
url = "nats://app:hunter2@hub:4222"
[iot]
broker = "mqtt://127.0.0.1:1883"
mqtt_password = "x"
[[iot.sensors]]
note = "-----BEGIN PRIVATE KEY-----"
"#;
        let found = find_secrets(toml);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("iot.mqtt_password"), "{found:?}");
        assert!(found[1].contains("iot.sensors[0].note"), "{found:?}");
        assert!(found[2].contains("uplink.url"), "{found:?}");
        assert!(
            find_secrets("[uplink]\nurl = \"nats://hub:4222\"\n[node]\nkey = \"node.key\"\n")
                .is_empty()
        );
        assert!(!url_has_password("nats://user@hub:4222"));
    }
}
