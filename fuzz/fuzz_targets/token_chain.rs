//! Untrusted token chains: decoding and verifying never panic, and whatever decodes
//! re-encodes to the exact bytes it came from (nothing is re-encoded before verifying).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_policies::token::{Chain, Token, Verifier};
use nexus_policies::{SecretKey, UnixTime};

fuzz_target!(|data: &[u8]| {
    if let Ok(chain) = Chain::decode(data) {
        assert_eq!(chain.encode(), data, "a decoded chain re-encodes to its bytes");
        let anchor = SecretKey::from_seed(&[1; 32]).map(|k| k.public());
        if let Ok(anchor) = anchor {
            let _ = Verifier::new(vec![anchor]).verify_chain(chain.tokens(), UnixTime(1_800_000_000));
        }
    }
    let _ = Token::decode(data);
});
