//! `events scaffold NAME --version N`: the three files of a new registry entry, ready to
//! edit — a schema with one required field, an example that validates, and the metadata.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::registry::DRAFT_2020_12;

/// Why a scaffold was not written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name breaks the event name rule.
    #[error("`{0}` is not an event name: two or more dot-separated tokens of [a-z0-9_-], e.g. booking.created")]
    BadName(String),
    /// The version is 0.
    #[error("version 0: versions start at 1")]
    BadVersion,
    /// The entry exists already.
    #[error("{0} exists: edit it, or scaffold the next version")]
    Exists(PathBuf),
    /// A file could not be written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

/// Writes `DIR/NAME/VERSION/{schema.json, event.toml, examples/1.json}`; the entry's
/// directory.
pub fn scaffold(dir: &Path, name: &str, version: u32) -> Result<PathBuf, ScaffoldError> {
    if !nexus_policies::subjects::is_valid_event_name(name) {
        return Err(ScaffoldError::BadName(name.to_owned()));
    }
    if version == 0 {
        return Err(ScaffoldError::BadVersion);
    }
    let at = dir.join(name).join(version.to_string());
    if at.exists() {
        return Err(ScaffoldError::Exists(at));
    }
    let field = format!("{}_id", name.split('.').next().unwrap_or("item"));
    let schema = json!({
        "$schema": DRAFT_2020_12,
        "$id": format!("https://nexus.invalid/events/{name}/{version}/schema.json"),
        "title": format!("{name}@{version} payload"),
        "description": "TODO: what this event says happened.",
        "type": "object",
        "required": [field],
        "properties": {
            field.clone(): {"type": "string", "minLength": 1, "description": "TODO: what identifies it."},
        },
    });
    let example = json!({ field: "example-1" });
    let meta = format!(
        "# {name}@{version}: what `nexus-agent events` and the AsyncAPI document say about it.\n\
         description = \"TODO: what happened, and when it is published.\"\n\
         owner = \"TODO: the team or app that answers for it\"\n\
         kind = \"event\"\n\
         # The subject it is published on; {{tenant}} is the publishing node's tenant.\n\
         subject = \"nexus.{{tenant}}.{name}\"\n\
         # The root's domain stream that keeps it ([[landing.domains]]), and for how long.\n\
         domain = \"\"\n\
         retention = \"\"\n\
         # What its order holds per: `source` (the publishing node) unless it says more.\n\
         ordering_key = \"source\"\n"
    );
    let io = |path: &Path| {
        let path = path.to_owned();
        move |error| ScaffoldError::Io { path, error }
    };
    let examples = at.join("examples");
    std::fs::create_dir_all(&examples).map_err(io(&examples))?;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    for (path, text) in [
        (at.join("schema.json"), pretty(&schema)),
        (examples.join("1.json"), pretty(&example)),
        (at.join("event.toml"), meta),
    ] {
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::{lint, Severity};
    use crate::registry::Registry;

    #[test]
    fn a_scaffold_loads_and_lints_clean_and_is_not_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = scaffold(dir.path(), "booking.created", 1).expect("written");
        assert!(at.ends_with("booking.created/1"));
        let registry = Registry::from_dir(dir.path()).expect("loads");
        let entry = registry.find("booking.created@1").expect("there");
        assert_eq!(entry.subject(), "nexus.{tenant}.booking.created");
        let errors: Vec<_> = lint(&registry, None)
            .into_iter()
            .filter(|f| f.severity == Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(matches!(
            scaffold(dir.path(), "booking.created", 1),
            Err(ScaffoldError::Exists(_))
        ));
        assert!(matches!(
            scaffold(dir.path(), "Booking", 1),
            Err(ScaffoldError::BadName(_))
        ));
        assert!(matches!(
            scaffold(dir.path(), "booking.created", 0),
            Err(ScaffoldError::BadVersion)
        ));
    }
}
