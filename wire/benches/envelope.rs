//! Envelope hot path: seal (encode + sign) and open (verify + decode + validate), in both
//! encodings, against their peers in the same run: bare serde encoding and bare Ed25519.
//!
//! Run: `cargo bench -p nexus-wire --bench envelope` (add `-- --quick` for a short run).
//! A plain harness (no criterion) keeps the build small; each figure is the best of 5
//! rounds, so background noise inflates nothing.

use std::hint::black_box;
use std::time::{Duration, Instant};

use nexus_policies::SecretKey;
use nexus_wire::envelope::MAX_ENVELOPE_BYTES;
use nexus_wire::{Encoding, Envelope, SignedEvent};

fn per_op(rounds: u32, iters: u32, mut f: impl FnMut()) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        best = best.min(start.elapsed() / iters);
    }
    best
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let iters = if quick { 2_000 } else { 20_000 };
    let key = SecretKey::from_seed(&[7; 32]).expect("fixed seed is a strong key");
    let payload = serde_json::json!({
        "sensor_id": "0x00158d0001a2b3c4", "metric": "temperature", "value": 21.5,
        "unit": "°C", "timestamp_unix": 1_795_000_000
    });
    let serde_json::Value::Object(payload) = payload else {
        return;
    };
    let envelope = Envelope::new(
        "iot.sensor_data",
        "edge-msk-01",
        Some("salon-001"),
        payload,
        time::OffsetDateTime::now_utc(),
    );

    println!("| operation | encoding | µs/op | ops/s | body bytes |");
    println!("|---|---|---:|---:|---:|");
    let row = |name: &str, enc: &str, d: Duration, bytes: usize| {
        println!(
            "| {name} | {enc} | {:.2} | {:.0} | {bytes} |",
            d.as_secs_f64() * 1e6,
            1.0 / d.as_secs_f64()
        );
    };
    let body = envelope.encode(Encoding::Json).expect("encodes");
    row(
        "ed25519 sign (peer)",
        "-",
        per_op(5, iters, || {
            black_box(key.sign(black_box(&body)));
        }),
        body.len(),
    );
    let sig = key.sign(&body);
    let public = key.public();
    row(
        "ed25519 verify_strict (peer)",
        "-",
        per_op(5, iters, || {
            black_box(public.verify(black_box(&body), &sig)).ok();
        }),
        body.len(),
    );
    for encoding in [Encoding::Json, Encoding::Cbor] {
        let name = format!("{encoding:?}");
        let bytes = envelope.encode(encoding).expect("encodes");
        row(
            "encode only (peer)",
            &name,
            per_op(5, iters, || {
                black_box(envelope.encode(encoding)).ok();
            }),
            bytes.len(),
        );
        row(
            "decode + validate only (peer)",
            &name,
            per_op(5, iters, || {
                black_box(Envelope::decode(&bytes, encoding, MAX_ENVELOPE_BYTES)).ok();
            }),
            bytes.len(),
        );
        row(
            "seal (encode + sign)",
            &name,
            per_op(5, iters, || {
                black_box(SignedEvent::seal(&envelope, encoding, &key)).ok();
            }),
            bytes.len(),
        );
        let event = SignedEvent::seal(&envelope, encoding, &key).expect("seals");
        let headers = event.provenance_headers();
        row(
            "open (verify + decode + checks)",
            &name,
            per_op(5, iters, || {
                black_box(SignedEvent::verify(
                    &event.subject,
                    Some(&headers),
                    event.body.clone(),
                    MAX_ENVELOPE_BYTES,
                ))
                .ok();
            }),
            bytes.len(),
        );
    }
}
