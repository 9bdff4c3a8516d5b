//! What a registry check costs per event, beside what the member spends on the same event
//! anyway: validating a payload against its registered schema (boon, draft 2020-12)
//! for `iot.sensor_data`, `edge.health` and the example's `booking.created`, against the
//! Ed25519 signature every event gets (the dominant part of sealing, docs/benchmarks.md
//! "Envelope hot path") and a bare JSON parse of the same payload.
//!
//! Run: `cargo bench -p nexus-events --bench validate` (`-- --quick` for a short run). Each
//! figure is the best of 5 rounds.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use nexus_events::Registry;
use nexus_policies::SecretKey;
use serde_json::Value;

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
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/events");
    let registry = Registry::load(Some(&examples)).expect("the example registry loads");
    let key = SecretKey::from_seed(&[7; 32]).expect("fixed seed is a strong key");
    let example = |name: &str| -> Value {
        registry
            .find(name)
            .and_then(|e| e.examples.first())
            .map(|(_, v)| v.clone())
            .expect("an example")
    };
    let sign_peer = {
        let body = serde_json::to_vec(&example("iot.sensor_data")).expect("JSON");
        per_op(5, iters, || {
            black_box(key.sign(black_box(&body)));
        })
    };
    println!("| event | payload bytes | JSON parse, µs | schema check, µs | check ÷ Ed25519 sign ({:.1} µs) |", sign_peer.as_secs_f64() * 1e6);
    println!("|---|---:|---:|---:|---:|");
    for name in ["iot.sensor_data", "edge.health", "booking.created"] {
        let payload = example(name);
        let text = payload.to_string();
        let entry = registry.find(name).expect("registered");
        assert!(
            entry.check(&payload).is_ok(),
            "{name}: its example validates"
        );
        let parse = per_op(5, iters, || {
            black_box(serde_json::from_str::<Value>(black_box(&text)).ok());
        });
        let check = per_op(5, iters, || {
            black_box(entry.check(black_box(&payload)).is_ok());
        });
        println!(
            "| `{name}` | {} | {:.2} | {:.2} | {:.1} % |",
            text.len(),
            parse.as_secs_f64() * 1e6,
            check.as_secs_f64() * 1e6,
            100.0 * check.as_secs_f64() / sign_peer.as_secs_f64()
        );
    }
}
