//! The repository agrees with itself: the Justfile offers exactly the commands of `./dev`,
//! each calling its namesake, every citation of a section of `docs/pitfalls.md` names a
//! section that exists, and the docs' tables of refusal reasons list the codes the code
//! has. Plain file reading: no server, no process, no `just`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nexus_federation::refusal::Reason;
use nexus_iot_bridge::mapping::Reason as SensorReason;

/// The workspace root (this package lives in `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The commands `./dev` dispatches: the arms `name) cmd_… ;;` of its `main`.
fn dev_commands(dev: &str) -> Vec<String> {
    let body = dev
        .split_once("\nmain() {")
        .expect("./dev has a main() function")
        .1;
    body.lines()
        .filter_map(|line| {
            let (pattern, action) = line.trim().split_once(')')?;
            action
                .trim_start()
                .starts_with("cmd_")
                .then(|| pattern.trim().to_owned())
        })
        .collect()
}

/// The Justfile's recipes: `(name, body lines)`.
fn just_recipes(justfile: &str) -> Vec<(String, Vec<String>)> {
    let mut recipes: Vec<(String, Vec<String>)> = Vec::new();
    for line in justfile.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some((_, body)) = recipes.last_mut() {
                body.push(line.trim().to_owned());
            }
        } else if !line.starts_with('#') && line.trim_end().ends_with(':') {
            let name = line.split([' ', ':']).next().unwrap_or_default();
            recipes.push((name.to_owned(), Vec::new()));
        }
    }
    recipes
}

#[test]
fn the_justfile_has_one_recipe_per_dev_command_calling_it() {
    let dev = dev_commands(&read(&root().join("dev")));
    let recipes = just_recipes(&read(&root().join("Justfile")));
    assert!(
        dev.len() >= 5 && dev.iter().any(|c| c == "test"),
        "./dev's commands were not found (its main() changed shape?): {dev:?}"
    );
    let missing: Vec<&String> = dev
        .iter()
        .filter(|command| !recipes.iter().any(|(name, _)| name == *command))
        .collect();
    assert!(
        missing.is_empty(),
        "the Justfile lacks a recipe for ./dev {missing:?}; add one that runs `./dev NAME`"
    );
    for (name, body) in &recipes {
        if name == "default" {
            continue;
        }
        assert!(
            dev.contains(name),
            "Justfile recipe `{name}` has no ./dev command of that name (./dev has {dev:?})"
        );
        let call = format!("./dev {name}");
        assert!(
            body.len() == 1 && (body[0] == call || body[0] == format!("{call} {{{{ARGS}}}}")),
            "Justfile recipe `{name}` must be the one line `{call}` (with `{{{{ARGS}}}}` when it \
             takes arguments), not {body:?}"
        );
    }
}

/// Files that may cite the pitfalls page: sources, docs, configs, scripts.
fn candidate_files(dir: &Path, out: &mut Vec<PathBuf>) {
    const SKIP: &[&str] = &["target", ".git", ".demo", "corpus", "artifacts"];
    const EXTENSIONS: &[&str] = &["rs", "md", "toml", "conf", "sh", "service"];
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_dir() {
            if !SKIP.contains(&name) {
                candidate_files(&path, out);
            }
        } else if matches!(name, "dev" | "Justfile")
            || path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e))
        {
            out.push(path);
        }
    }
}

/// Every `pitfalls.md, "Section"` in `text`, also as a Markdown link
/// (`[pitfalls.md](pitfalls.md), "Section"`) and inside a Rust string (`\"Section\"`).
fn citations(text: &str) -> Vec<String> {
    const PAGE: &str = "pitfalls.md";
    let mut found = Vec::new();
    for (at, _) in text.match_indices(PAGE) {
        let rest = &text[at + PAGE.len()..];
        let rest = rest.strip_prefix(')').unwrap_or(rest);
        let Some(rest) = rest.strip_prefix(", ") else {
            continue;
        };
        let rest = rest.strip_prefix('\\').unwrap_or(rest);
        if let Some((section, _)) = rest.strip_prefix('"').and_then(|q| q.split_once('"')) {
            found.push(section.trim_end_matches('\\').to_owned());
        }
    }
    found
}

#[test]
fn every_cited_pitfalls_section_exists() {
    let root = root();
    let page = read(&root.join("docs/pitfalls.md"));
    let sections: Vec<&str> = page
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .collect();
    assert!(!sections.is_empty(), "docs/pitfalls.md has no sections");
    // This file names the old citation on purpose.
    let this_file = Path::new(file!());
    let mut files = Vec::new();
    candidate_files(&root, &mut files);
    let mut cited = 0;
    let mut problems = Vec::new();
    for file in files.iter().filter(|f| !f.ends_with(this_file)) {
        let text = read(file);
        let shown = file.strip_prefix(&root).unwrap_or(file).display();
        if text.contains("PITFALLS") {
            problems.push(format!(
                "{shown}: cites PITFALLS, which is docs/pitfalls.md now"
            ));
        }
        for section in citations(&text) {
            cited += 1;
            if !sections.contains(&section.as_str()) {
                problems.push(format!("{shown}: cites section \"{section}\""));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "citations of docs/pitfalls.md that lead nowhere (its sections: {sections:?}):\n{}",
        problems.join("\n")
    );
    assert!(
        cited > 0,
        "no citation of docs/pitfalls.md found: is the scan looking?"
    );
}

/// The rows of every Markdown table in `page` whose header line is `header`: the codes in
/// backticks of each row's first cell (`a`, `b`), and the whole row.
fn code_rows(page: &str, header: &str) -> Vec<(Vec<String>, String)> {
    let mut rows = Vec::new();
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        if line.trim() != header {
            continue;
        }
        for row in lines.by_ref() {
            let Some(cells) = row.trim().strip_prefix('|') else {
                break;
            };
            if cells.starts_with('-') {
                continue;
            }
            let first = cells.split('|').next().unwrap_or_default();
            let codes = first
                .split(',')
                .filter_map(|code| code.trim().strip_prefix('`')?.strip_suffix('`'))
                .map(str::to_owned)
                .collect();
            rows.push((codes, row.to_owned()));
        }
    }
    rows
}

/// docs/security.md's "Refusal reasons" lists every code of `Reason` once and no other,
/// and says which are retried (`is_transient`) and which are back-pressure
/// (`is_back_pressure`).
#[test]
fn the_refusal_reasons_table_lists_exactly_the_reason_codes() {
    let page = read(&root().join("docs/security.md"));
    let rows = code_rows(&page, "| code | where | meaning |");
    let mut documented = BTreeSet::new();
    let mut problems = Vec::new();
    for (codes, row) in &rows {
        let [code] = codes.as_slice() else {
            problems.push(format!("a row names not exactly one code: {row}"));
            continue;
        };
        if !documented.insert(code.as_str()) {
            problems.push(format!("`{code}` has two rows"));
        }
        let Some(reason) = Reason::ALL.into_iter().find(|r| r.as_str() == code) else {
            problems.push(format!("`{code}` is documented but is no Reason"));
            continue;
        };
        if row.contains("retried") != reason.is_transient() {
            problems.push(format!(
                "`{code}`: the row must say \"retried\" exactly when the reason is transient"
            ));
        }
        if row.contains("back-pressure") != reason.is_back_pressure() {
            problems.push(format!(
                "`{code}`: the row must say \"back-pressure\" exactly when it is back-pressure"
            ));
        }
    }
    for reason in Reason::ALL {
        if !documented.contains(reason.as_str()) {
            problems.push(format!("`{reason}` has no row"));
        }
    }
    assert!(
        rows.len() >= Reason::ALL.len() / 2,
        "the table under \"## Refusal reasons\" in docs/security.md was not found (its \
         header must stay `| code | where | meaning |`)"
    );
    assert!(
        problems.is_empty(),
        "docs/security.md, \"Refusal reasons\", disagrees with wire/src/refusal.rs:\n{}",
        problems.join("\n")
    );
}

/// The up-bridge's and the commands' tables in docs/bridging.md name only codes that exist
/// (`token_*` standing for the token reasons).
#[test]
fn the_bridging_tables_name_only_reason_codes() {
    let page = read(&root().join("docs/bridging.md"));
    let mut rows = code_rows(&page, "| code | meaning |");
    rows.extend(code_rows(&page, "| error code | meaning |"));
    assert!(
        rows.len() >= 10,
        "docs/bridging.md's code tables were not found"
    );
    let unknown: Vec<&String> = rows
        .iter()
        .flat_map(|(codes, _)| codes)
        .filter(|code| match code.strip_suffix('*') {
            Some(prefix) => !Reason::ALL
                .into_iter()
                .any(|r| r.is_token() && r.as_str().starts_with(prefix)),
            None => !Reason::ALL.into_iter().any(|r| r.as_str() == *code),
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/bridging.md names codes that are no Reason: {unknown:?}"
    );
}

/// docs/iot.md's table of sensor refusals lists exactly the IoT bridge's reasons.
#[test]
fn the_sensor_refusal_table_lists_exactly_the_iot_reasons() {
    let page = read(&root().join("docs/iot.md"));
    let documented: Vec<String> = code_rows(&page, "| reason | when |")
        .into_iter()
        .flat_map(|(codes, _)| codes)
        .collect();
    let expected: Vec<&str> = SensorReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        documented, expected,
        "docs/iot.md, \"Bad input\", must list iot-bridge/src/mapping.rs's Reason::ALL, in order"
    );
}

/// docs/events.md's catalog is the built-in registry's (`nexus-agent events list
/// --markdown` writes it): an event added, renamed or moved to another domain shows there.
#[test]
fn the_events_catalog_is_the_registry() {
    let page = read(&root().join("docs/events.md"));
    let catalog = page
        .split_once("<!-- catalog:begin -->\n")
        .and_then(|(_, rest)| rest.split_once("<!-- catalog:end -->"))
        .map(|(table, _)| table)
        .expect("docs/events.md has the catalog markers");
    let registry = nexus_events::Registry::builtin().expect("the built-in registry");
    assert_eq!(
        catalog,
        registry.catalog(),
        "regenerate it with `nexus-agent events list --markdown`"
    );
}
