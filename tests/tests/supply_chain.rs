//! What the binary is built from, checked in CI like `cargo deny check licenses bans` would,
//! from Cargo.lock alone (`cargo metadata --offline` for the Linux targets we ship): every
//! crate's licence is one we accept, and no crate comes in two versions unless it is listed
//! below with the reason. Advisories need the RustSec database, which this project's
//! machines cannot reach; docs/pitfalls.md says so.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Licences we accept for anything linked into the agent (SPDX identifiers).
const ALLOWED: &[&str] = &[
    "MIT",
    // MIT without the attribution clause (borrow-or-share, under boon's URI parser).
    "MIT-0",
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Unicode-3.0",
    "Zlib",
    "Unlicense",
    "CC0-1.0",
];

/// Crates that come in two versions today, each with why; a new duplicate fails the test
/// (one version is smaller and has one set of bugs), as does a listed one that is gone
/// (the list stays true).
const KNOWN_DUPLICATES: &[(&str, &str)] = &[
    (
        "base64",
        "0.22 ours and async-nats'; 0.23 of a newer dependency",
    ),
    (
        "cpufeatures",
        "sha2 and the ed25519 stack on different releases",
    ),
    (
        "getrandom",
        "rand_core 0.6 (ed25519-dalek) and uuid's newer one",
    ),
    ("rand_core", "ed25519-dalek 2 on 0.6; newer crates on 0.10"),
    (
        "rustls-webpki",
        "rumqttc 0.25 depends on 0.102 directly; rustls uses 0.103",
    ),
    ("syn", "proc-macro crates between syn 2 and 3"),
    ("synstructure", "follows syn"),
];

/// Name → its versions, and each package's (`name version`, licence expression).
type Resolved = (BTreeMap<String, BTreeSet<String>>, Vec<(String, String)>);

/// The resolved packages for the Linux targets we ship.
fn packages() -> Resolved {
    let mut versions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut licences = Vec::new();
    for target in [
        "x86_64-unknown-linux-gnu",
        "aarch64-unknown-linux-gnu",
        "armv7-unknown-linux-gnueabihf",
    ] {
        let out = Command::new(env!("CARGO"))
            .args(["metadata", "--offline", "--locked", "--format-version", "1"])
            .args(["--filter-platform", target])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo metadata runs");
        assert!(
            out.status.success(),
            "cargo metadata: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let metadata: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let resolved: BTreeSet<&str> = metadata["resolve"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|node| node["id"].as_str())
            .collect();
        for package in metadata["packages"].as_array().into_iter().flatten() {
            let id = package["id"].as_str().unwrap_or_default();
            if !resolved.contains(id) {
                continue;
            }
            let name = package["name"].as_str().unwrap_or("?").to_owned();
            let version = package["version"].as_str().unwrap_or("?").to_owned();
            let licence = package["license"].as_str().unwrap_or("").to_owned();
            licences.push((format!("{name} {version}"), licence));
            versions.entry(name).or_default().insert(version);
        }
    }
    (versions, licences)
}

/// Whether an SPDX expression (`MIT OR Apache-2.0`, `(MIT OR Apache-2.0) AND Unicode-3.0`,
/// the old `MIT/Apache-2.0`, `Apache-2.0 WITH LLVM-exception`) is satisfied by [`ALLOWED`].
fn acceptable(expression: &str) -> bool {
    let spaced = expression
        .replace('/', " OR ")
        .replace('(', " ( ")
        .replace(')', " ) ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut at = 0;
    let ok = any_of(&tokens, &mut at);
    ok && at == tokens.len() && !tokens.is_empty()
}

/// `all_of (OR all_of)*`
fn any_of(tokens: &[&str], at: &mut usize) -> bool {
    let mut ok = all_of(tokens, at);
    while tokens.get(*at) == Some(&"OR") {
        *at += 1;
        ok |= all_of(tokens, at);
    }
    ok
}

/// `one (AND one)*`
fn all_of(tokens: &[&str], at: &mut usize) -> bool {
    let mut ok = one(tokens, at);
    while tokens.get(*at) == Some(&"AND") {
        *at += 1;
        ok &= one(tokens, at);
    }
    ok
}

/// `( any_of )` or `ID [WITH EXCEPTION]`
fn one(tokens: &[&str], at: &mut usize) -> bool {
    match tokens.get(*at) {
        Some(&"(") => {
            *at += 1;
            let ok = any_of(tokens, at);
            if tokens.get(*at) == Some(&")") {
                *at += 1;
                ok
            } else {
                false
            }
        }
        Some(id) => {
            *at += 1;
            if tokens.get(*at) == Some(&"WITH") {
                *at += 2;
            }
            ALLOWED.contains(id)
        }
        None => false,
    }
}

#[test]
fn spdx_expressions_are_read_as_written() {
    assert!(acceptable("MIT OR Apache-2.0"));
    assert!(acceptable("MIT/Apache-2.0"));
    assert!(acceptable("(MIT OR Apache-2.0) AND Unicode-3.0"));
    assert!(acceptable(
        "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT"
    ));
    assert!(acceptable("GPL-3.0 OR MIT"));
    assert!(!acceptable("GPL-3.0"));
    assert!(!acceptable("MIT AND GPL-3.0"));
    assert!(!acceptable("(MIT OR Apache-2.0"));
    assert!(!acceptable(""));
}

#[test]
fn every_dependency_has_a_licence_we_accept() {
    let (_, licences) = packages();
    let refused: BTreeSet<String> = licences
        .iter()
        .filter(|(_, licence)| !acceptable(licence))
        .map(|(package, licence)| format!("{package}: {licence:?}"))
        .collect();
    assert!(
        refused.is_empty(),
        "licences not in the accepted list: {refused:#?}"
    );
}

#[test]
fn no_crate_comes_in_two_versions_without_a_reason() {
    let (versions, _) = packages();
    let duplicated: BTreeSet<&str> = versions
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(name, _)| name.as_str())
        .collect();
    let known: BTreeSet<&str> = KNOWN_DUPLICATES.iter().map(|(name, _)| *name).collect();
    let new: Vec<String> = duplicated
        .difference(&known)
        .map(|name| format!("{name} {:?}", versions[*name]))
        .collect();
    let gone: Vec<&&str> = known.difference(&duplicated).collect();
    assert!(
        new.is_empty(),
        "crates newly in two versions (align them, or list them with the reason): {new:?}"
    );
    assert!(
        gone.is_empty(),
        "no longer duplicated, remove from KNOWN_DUPLICATES: {gone:?}"
    );
}
