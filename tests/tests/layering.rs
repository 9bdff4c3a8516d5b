//! The crate layering, checked: which workspace crate may import which, and what each
//! library crate may depend on (normal dependencies, transitively, as `cargo tree` resolves
//! them from Cargo.lock). A forbidden arrow fails here, in CI, before it becomes a habit.
//! docs/architecture.md, "Crates", draws the picture.
//!
//! - `nexus-policies` is pure: keys, ACLs, tokens. No runtime, no network, no storage.
//! - `nexus-config` parses and validates; it connects to nothing and stores nothing.
//! - `nexus-wire` (envelope, provenance, subjects, refusal reasons) is pure too: the fuzz
//!   targets build on it and `nexus-policies` alone. So is `nexus-events` (the registry of
//!   event schemas).
//! - `nexus-runtime` (subsystem contract, retry waits) and `nexus-store` (outbox, dead
//!   letters) run on tokio but speak no network protocol; `nexus-tls` builds rustls
//!   settings and needs no runtime.
//! - `nexus-iot-bridge` speaks MQTT and never links a NATS client; `nexus-federation` speaks
//!   NATS and never links an MQTT client.

use std::collections::BTreeSet;
use std::path::Path;
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

/// Every workspace crate and the workspace crates it may depend on directly (normal
/// dependencies). Arrows point down only: a crate never imports one above it.
const ALLOWED: &[(&str, &[&str])] = &[
    ("nexus-policies", &[]),
    ("nexus-config", &["nexus-policies"]),
    ("nexus-wire", &["nexus-policies"]),
    ("nexus-events", &["nexus-policies"]),
    ("nexus-runtime", &[]),
    ("nexus-tls", &["nexus-config"]),
    (
        "nexus-store",
        &["nexus-policies", "nexus-runtime", "nexus-wire"],
    ),
    (
        "nexus-federation",
        &[
            "nexus-config",
            "nexus-events",
            "nexus-policies",
            "nexus-runtime",
            "nexus-store",
            "nexus-tls",
            "nexus-wire",
        ],
    ),
    (
        "nexus-iot-bridge",
        &[
            "nexus-config",
            "nexus-policies",
            "nexus-runtime",
            "nexus-store",
            "nexus-tls",
            "nexus-wire",
        ],
    ),
    (
        "nexus-agent",
        &[
            "nexus-config",
            "nexus-events",
            "nexus-federation",
            "nexus-iot-bridge",
            "nexus-policies",
            "nexus-runtime",
            "nexus-store",
            "nexus-tls",
            "nexus-wire",
        ],
    ),
    // The end-to-end tests' support library drives the agent from outside, through the
    // federation's public API.
    (
        "nexus-e2e",
        &[
            "nexus-config",
            "nexus-events",
            "nexus-federation",
            "nexus-policies",
            "nexus-runtime",
            "nexus-store",
            "nexus-tls",
            "nexus-wire",
        ],
    ),
];

/// The workspace crates the fuzz targets (`fuzz/`, a workspace of their own) may use.
const FUZZ_ALLOWED: &[&str] = &["nexus-events", "nexus-policies", "nexus-wire"];

/// `cargo tree` of `package` (normal dependencies, all features of the workspace build),
/// one package name per line; `depth` 1 for direct dependencies only.
fn tree(package: &str, depth: Option<u32>) -> BTreeSet<String> {
    let mut command = Command::new(env!("CARGO"));
    command.args([
        "tree",
        "--offline",
        "--locked",
        "-e",
        "normal",
        "--prefix",
        "none",
    ]);
    if let Some(depth) = depth {
        command.args(["--depth", &depth.to_string()]);
    }
    let out = command
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

/// Every package `package` depends on, transitively, by name.
fn dependencies(package: &str) -> BTreeSet<String> {
    tree(package, None)
}

/// The workspace crates `package` depends on directly.
fn workspace_imports(package: &str) -> BTreeSet<String> {
    tree(package, Some(1))
        .into_iter()
        .filter(|name| name.starts_with("nexus-") && name != package)
        .collect()
}

/// Fails if `package` depends, transitively, on any of `forbidden`.
fn assert_free_of(package: &str, forbidden: &[&str], why: &str) {
    let found: Vec<&str> = dependencies(package)
        .iter()
        .filter_map(|name| forbidden.iter().copied().find(|f| f == name))
        .collect();
    assert!(
        found.is_empty(),
        "{package} {why} but depends on {found:?} \
         (see `cargo tree -p {package} -i <crate>`)"
    );
}

fn assert_free_of_io(package: &str) {
    assert_free_of(package, IO_CRATES, "must stay free of I/O crates");
}

#[test]
fn policies_is_pure() {
    assert_free_of_io("nexus-policies");
}

#[test]
fn config_connects_to_nothing_and_stores_nothing() {
    assert_free_of_io("nexus-config");
}

/// The wire format builds without a runtime, a client, TLS or SQLite: so do the fuzz
/// targets of its decoders.
#[test]
fn wire_is_pure() {
    assert_free_of_io("nexus-wire");
}

/// The event registry is pure too: validating a payload needs no runtime, and the fuzz
/// targets could build on it.
#[test]
fn events_is_pure() {
    assert_free_of_io("nexus-events");
}

#[test]
fn runtime_speaks_no_protocol_and_stores_nothing() {
    assert_free_of(
        "nexus-runtime",
        &[
            "async-nats",
            "rumqttc",
            "rustls",
            "rusqlite",
            "libsqlite3-sys",
        ],
        "is what every subsystem shares, whatever it speaks",
    );
}

#[test]
fn store_speaks_no_protocol() {
    assert_free_of(
        "nexus-store",
        &["async-nats", "rumqttc", "rustls"],
        "keeps events on disk and must not know how they travel",
    );
}

#[test]
fn tls_needs_no_runtime_and_no_client() {
    assert_free_of(
        "nexus-tls",
        &[
            "tokio",
            "mio",
            "async-nats",
            "rumqttc",
            "rusqlite",
            "libsqlite3-sys",
        ],
        "builds TLS settings and must not know which client uses them",
    );
}

/// The MQTT bridge hands events to the outbox; the uplink, not the bridge, speaks NATS.
#[test]
fn iot_bridge_links_no_nats_client() {
    assert_free_of(
        "nexus-iot-bridge",
        &["async-nats", "nexus-federation"],
        "must not know about NATS",
    );
}

#[test]
fn federation_links_no_mqtt_client() {
    assert_free_of(
        "nexus-federation",
        &["rumqttc", "nexus-iot-bridge"],
        "must not know about MQTT",
    );
}

/// Each workspace crate imports only the crates below it in the picture, and every crate
/// of the workspace has its place in the picture.
#[test]
fn workspace_crates_import_only_what_the_picture_allows() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--offline",
            "--no-deps",
            "--format-version",
            "1",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed");
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let members: BTreeSet<&str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let placed: BTreeSet<&str> = ALLOWED.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        members, placed,
        "every workspace crate needs its row in ALLOWED (and in docs/architecture.md, \"Crates\")"
    );
    let mut wrong = Vec::new();
    for (package, allowed) in ALLOWED {
        for import in workspace_imports(package) {
            if !allowed.contains(&import.as_str()) {
                wrong.push(format!("{package} → {import}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows the picture does not allow (docs/architecture.md, \"Crates\"): {wrong:?}"
    );
}

/// The fuzz crate is a workspace of its own (cargo tree of the main workspace does not see
/// it): its manifest names only the pure crates.
#[test]
fn fuzz_targets_depend_on_the_pure_crates_alone() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("fuzz/Cargo.toml is readable");
    let dependencies = text
        .split("\n[dependencies]\n")
        .nth(1)
        .expect("fuzz/Cargo.toml has [dependencies]")
        .split("\n[")
        .next()
        .unwrap_or_default();
    let workspace: BTreeSet<&str> = dependencies
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name.trim()))
        .filter(|name| name.starts_with("nexus-"))
        .collect();
    assert_eq!(
        workspace,
        FUZZ_ALLOWED.iter().copied().collect(),
        "the fuzz targets build on the pure crates alone (nexus-wire, nexus-policies, nexus-events)"
    );
}

/// The check itself sees what it looks for: the federation crate does use tokio and NATS,
/// and SQLite through the store.
#[test]
fn the_check_finds_io_crates_where_they_are() {
    let federation = dependencies("nexus-federation");
    for io in ["tokio", "async-nats", "rusqlite"] {
        assert!(federation.contains(io), "{io} in {federation:?}");
    }
    let bridge = workspace_imports("nexus-iot-bridge");
    assert!(bridge.contains("nexus-store"), "{bridge:?}");
}
