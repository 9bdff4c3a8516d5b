//! The repository agrees with itself: the Justfile offers exactly the commands of `./dev`,
//! each calling its namesake, and every citation of a section of `docs/pitfalls.md`
//! names a section that exists. Plain file reading: no server, no process, no `just`.

use std::path::{Path, PathBuf};

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
