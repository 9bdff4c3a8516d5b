//! Untrusted envelopes, in both encodings and through the whole opening path (headers,
//! signature, decode, validation): errors, never panics or unbounded work.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_policies::SecretKey;
use nexus_wire::envelope::MAX_ENVELOPE_BYTES;
use nexus_wire::provenance::{Headers, HDR_CONTENT_TYPE, HDR_MSG_ID, HDR_SIGNATURE, HDR_SIGNER};
use nexus_wire::{Encoding, Envelope, SignedEvent};

fuzz_target!(|data: &[u8]| {
    for encoding in [Encoding::Json, Encoding::Cbor] {
        if let Ok(envelope) = Envelope::decode(data, encoding, MAX_ENVELOPE_BYTES) {
            assert!(envelope.validate().is_ok());
        }
    }
    // Signed by a real key, so that decoding (not the signature) is what gets exercised.
    let Ok(key) = SecretKey::from_seed(&[2; 32]) else { return };
    let mut headers = Headers::new();
    headers.insert(HDR_MSG_ID, "fuzz");
    headers.insert(HDR_CONTENT_TYPE, if data.first().is_some_and(|b| b & 1 == 1) { "application/cbor" } else { "application/json" });
    headers.insert(HDR_SIGNER, key.public().to_string().as_str());
    headers.insert(HDR_SIGNATURE, key.sign(data).to_string().as_str());
    let _ = SignedEvent::verify("nexus._core.edge.health.x", Some(&headers), bytes::Bytes::copy_from_slice(data), MAX_ENVELOPE_BYTES);
});
