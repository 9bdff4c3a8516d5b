//! Untrusted revocation lists: decoding and verifying never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_policies::token::RevocationList;
use nexus_policies::SecretKey;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = RevocationList::decode(data) {
        if let Ok(anchor) = SecretKey::from_seed(&[1; 32]) {
            let _ = list.verify(&[anchor.public()]);
        }
    }
});
