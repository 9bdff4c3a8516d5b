//! Untrusted envelopes, in both encodings and through the whole opening path (headers,
//! signature, decode, validation): errors, never panics or unbounded work.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_federation::envelope::MAX_ENVELOPE_BYTES;
use nexus_federation::provenance::{HDR_CONTENT_TYPE, HDR_MSG_ID, HDR_SIGNATURE, HDR_SIGNER};
use nexus_federation::{Encoding, Envelope, SignedEvent};
use nexus_policies::SecretKey;

fuzz_target!(|data: &[u8]| {
    for encoding in [Encoding::Json, Encoding::Cbor] {
        if let Ok(envelope) = Envelope::decode(data, encoding, MAX_ENVELOPE_BYTES) {
            assert!(envelope.validate().is_ok());
        }
    }
    // Signed by a real key, so that decoding (not the signature) is what gets exercised.
    let Ok(key) = SecretKey::from_seed(&[2; 32]) else { return };
    let mut headers = async_nats_headers();
    headers.insert(HDR_MSG_ID, "fuzz");
    headers.insert(HDR_CONTENT_TYPE, if data.first().is_some_and(|b| b & 1 == 1) { "application/cbor" } else { "application/json" });
    headers.insert(HDR_SIGNER, key.public().to_string().as_str());
    headers.insert(HDR_SIGNATURE, key.sign(data).to_string().as_str());
    let _ = SignedEvent::open("nexus._core.edge.health.x", Some(&headers), bytes::Bytes::copy_from_slice(data), MAX_ENVELOPE_BYTES);
});

fn async_nats_headers() -> nexus_federation::provenance::HeaderMap {
    nexus_federation::provenance::HeaderMap::new()
}
