//! Untrusted release manifests and rollout records (a tier's NEXUS_UPDATES bucket,
//! docs/updates.md): decoding and verification give errors, never panics or unbounded work,
//! and what decodes encodes back to the same meaning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_policies::{ReleaseManifest, Rollout, SecretKey};

fuzz_target!(|data: &[u8]| {
    let Ok(key) = SecretKey::from_seed(&[3; 32]) else { return };
    if let Ok(manifest) = ReleaseManifest::decode(data) {
        let _ = manifest.verify(&[key.public()]);
        let again = ReleaseManifest::decode(&manifest.encode()).expect("an encoded manifest decodes");
        assert_eq!(again, manifest);
    }
    if let Ok(rollout) = Rollout::decode(data) {
        let _ = rollout.verify(&[key.public()]);
        let again = Rollout::decode(&rollout.encode()).expect("an encoded rollout decodes");
        assert_eq!(again, rollout);
    }
});
