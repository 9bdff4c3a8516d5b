//! Untrusted desired-config documents (a tier's NEXUS_CONFIG bucket, docs/remote-config.md):
//! decoding and verification give errors, never panics or unbounded work, and what decodes
//! encodes back to the same bytes' meaning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_policies::DesiredConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = DesiredConfig::decode(data) {
        let _ = doc.verify();
        let again = DesiredConfig::decode(&doc.encode()).expect("an encoded document decodes");
        assert_eq!(again, doc);
    }
});
