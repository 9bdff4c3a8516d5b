//! Embeds the built-in registry (`registry/NAME/VERSION/{schema.json, event.toml,
//! examples/*.json}`) in the crate: one `include_str!` per file, listed from the directory so
//! that an event added there cannot be left out of the binary.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
                .path()
        })
        .collect();
    entries.sort();
    entries
}

fn main() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("registry");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut out = String::from("&[\n");
    for name_dir in sorted_entries(&root).into_iter().filter(|p| p.is_dir()) {
        let name = name_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 name");
        for version_dir in sorted_entries(&name_dir).into_iter().filter(|p| p.is_dir()) {
            let version = version_dir
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a UTF-8 version");
            let examples_dir = version_dir.join("examples");
            let examples = if examples_dir.is_dir() {
                sorted_entries(&examples_dir)
            } else {
                Vec::new()
            };
            let _ = writeln!(
                out,
                "    BuiltinFiles {{ name: {name:?}, version: {version:?}, schema: include_str!({:?}), meta: include_str!({:?}), examples: &[",
                version_dir.join("schema.json"),
                version_dir.join("event.toml"),
            );
            for example in examples
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
            {
                let file = example
                    .file_name()
                    .and_then(|n| n.to_str())
                    .expect("a UTF-8 file name");
                let _ = writeln!(out, "        ({file:?}, include_str!({example:?})),");
            }
            out.push_str("    ] },\n");
        }
    }
    out.push_str("]\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("builtin.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
}
