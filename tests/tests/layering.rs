//! The crate layering, checked: what each library crate may depend on (normal dependencies,
//! transitively, as `cargo tree` resolves them from Cargo.lock). A forbidden arrow fails
//! here, in CI, before it becomes a habit. docs/architecture.md draws the picture.
//!
//! - `nexus-policies` is pure: keys, ACLs, tokens. No runtime, no network, no storage.
//! - `nexus-config` parses and validates; it connects to nothing and stores nothing.

use std::collections::BTreeSet;
use std::process::Command;

/// What no pure crate may pull in: an async runtime, a NATS or MQTT client, TLS, SQLite.
const IO_CRATES: &[&str] = &[
    "tokio",
    "mio",
    "async-nats",
    "rumqttc",
    "rustls",
    "rusqlite",
    "libsqlite3-sys",
];

/// Every package `package` depends on (normal dependencies, all features of the workspace
/// build), by name.
fn dependencies(package: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["--format", "{p}", "-p", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn assert_free_of_io(package: &str) {
    let found: Vec<&str> = dependencies(package)
        .iter()
        .filter_map(|name| IO_CRATES.iter().copied().find(|io| io == name))
        .collect();
    assert!(
        found.is_empty(),
        "{package} must stay free of I/O crates but depends on {found:?} \
         (see `cargo tree -p {package} -i <crate>`)"
    );
}

#[test]
fn policies_is_pure() {
    assert_free_of_io("nexus-policies");
}

#[test]
fn config_connects_to_nothing_and_stores_nothing() {
    assert_free_of_io("nexus-config");
}

/// The check itself sees what it looks for: the federation crate does use tokio and NATS.
#[test]
fn the_check_finds_io_crates_where_they_are() {
    let federation = dependencies("nexus-federation");
    for io in ["tokio", "async-nats", "rusqlite"] {
        assert!(federation.contains(io), "{io} in {federation:?}");
    }
}
