//! Untrusted payloads against every schema of the built-in registry (what the root does to
//! each event it lands, and a member to each registered app event): a verdict, never a
//! panic or unbounded work, and the same verdict twice.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nexus_events::{Registry, Verdict};

fn registry() -> Option<&'static Registry> {
    static REGISTRY: OnceLock<Option<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry::builtin().ok()).as_ref()
}

fuzz_target!(|data: &[u8]| {
    let Some(registry) = registry() else { return };
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    for entry in registry.entries() {
        let first = registry.validate(&entry.name, entry.version, &payload);
        assert!(!matches!(first, Verdict::Unknown));
        assert_eq!(first, registry.validate(&entry.name, entry.version, &payload));
    }
});
