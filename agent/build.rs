//! Records the target triple the binary is built for, so that `nexus-agent --version` names
//! it (an operator copying binaries between a Pi 3 on armv7 and a Pi 5 on aarch64 can tell
//! them apart).

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=NEXUS_AGENT_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
