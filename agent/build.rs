//! Records the target triple the binary is built for, so that `nexus-agent --version` names
//! it (an operator copying binaries between a Pi 3 on armv7 and a Pi 5 on aarch64 can tell
//! them apart), and the version it reports (updates compare it: docs/updates.md).
//!
//! - `NEXUS_AGENT_VERSION` (build-time, optional): the version to report instead of the
//!   crate's, `MAJOR.MINOR.PATCH`. Release builds leave it unset; the update tests build
//!   the agent with other versions.
//! - `NEXUS_AGENT_TEST_BAD=exit` (build-time, tests only): a binary that exits at once on
//!   `run`, to prove that an update to a broken release rolls back by itself.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=NEXUS_AGENT_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NEXUS_AGENT_VERSION");
    println!("cargo:rerun-if-env-changed=NEXUS_AGENT_TEST_BAD");
    let version = std::env::var("NEXUS_AGENT_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| std::env::var("CARGO_PKG_VERSION").ok())
        .unwrap_or_else(|| "0.0.0".to_owned());
    println!("cargo:rustc-env=NEXUS_AGENT_VERSION={version}");
    println!("cargo:rustc-check-cfg=cfg(nexus_test_bad_build)");
    if std::env::var("NEXUS_AGENT_TEST_BAD").is_ok_and(|v| v == "exit") {
        println!("cargo:rustc-cfg=nexus_test_bad_build");
    }
}
