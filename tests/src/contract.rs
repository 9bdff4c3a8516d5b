//! The event contract, checked on real traffic: envelopes seen in the end-to-end tests
//! against the registry (the agent's own events plus the example's, config/examples/events),
//! and the AsyncAPI document through the AsyncAPI project's own parser (`./dev setup`
//! installs it with npm into `target/asyncapi-parser`; `$ASYNCAPI_PARSER_DIR` overrides).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nexus_events::{Registry, Verdict};
use serde_json::Value;

use crate::bins::INSTALL_HINT;
use crate::examples::example_registry;

/// The built-in events and the example's.
pub fn registry() -> Registry {
    Registry::load(Some(&example_registry()))
        .unwrap_or_else(|e| panic!("the example registry loads: {e}"))
}

/// Whether `envelope` (JSON) is a registered `event@version` whose payload satisfies its
/// schema: `Err` says which and why.
pub fn check(registry: &Registry, envelope: &Value) -> Result<(), String> {
    let name = envelope["event_name"].as_str().unwrap_or_default();
    let version = envelope["version"]
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    match registry.validate(name, version, &envelope["payload"]) {
        Verdict::Valid => Ok(()),
        Verdict::Unknown => Err(format!("{name}@{version} is not registered: {envelope}")),
        Verdict::Invalid(invalid) => Err(format!("{invalid}: {envelope}")),
    }
}

/// Where `npm` put @asyncapi/parser.
pub fn asyncapi_parser_dir() -> PathBuf {
    let dir = std::env::var_os("ASYNCAPI_PARSER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/asyncapi-parser"));
    assert!(
        dir.join("node_modules/@asyncapi/parser").is_dir(),
        "@asyncapi/parser is not installed in {}: {INSTALL_HINT}",
        dir.display()
    );
    dir
}

/// `node tests/asyncapi/validate.mjs DOCUMENT`: exit 0 and `valid: …` when the official
/// parser accepts it.
pub fn parse_asyncapi(document: &Path) -> Output {
    Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("asyncapi/validate.mjs"))
        .arg(document)
        .env("ASYNCAPI_PARSER_DIR", asyncapi_parser_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run node: {e}: {INSTALL_HINT}"))
}
