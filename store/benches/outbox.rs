//! Outbox throughput on disk: push with group commit (1, 16 and 256 concurrent producers),
//! drain (next_batch + ack), against peers in the same run: a naive loop of single-row
//! transactions (one fsync per event, same pragmas), and the same outbox in memory (no
//! disk at all).
//!
//! Run: `cargo bench -p nexus-store --bench outbox` (add `-- --quick` for a short run,
//! `-- --only push16` for one row: naive, push1, push16, push256, drain, memory; under
//! `strace -f -c -e trace=fsync,fdatasync` that counts the fsyncs of one scenario).
//! The database lives under `target/tmp` (a real disk: `/tmp` may be tmpfs, where fsync is
//! free). Events are signed before the clock starts; every figure is the best of 3 rounds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nexus_policies::SecretKey;
use nexus_store::outbox::{Outbox, OutboxOptions, Priority};
use nexus_wire::{Encoding, Envelope, SignedEvent};

fn events(n: usize) -> Vec<SignedEvent> {
    let key = SecretKey::from_seed(&[7; 32]).expect("fixed seed is a strong key");
    (0..n)
        .map(|i| {
            let payload = serde_json::json!({
                "sensor_id": "0x00158d0001a2b3c4", "metric": "temperature", "value": 21.5,
                "unit": "°C", "timestamp_unix": 1_795_000_000 + i
            });
            let serde_json::Value::Object(payload) = payload else {
                unreachable!("an object literal")
            };
            let envelope = Envelope::new(
                "iot.sensor_data",
                "edge-msk-01",
                Some("salon-001"),
                payload,
                time::OffsetDateTime::now_utc(),
            );
            SignedEvent::seal(&envelope, Encoding::Json, &key).expect("seals")
        })
        .collect()
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

/// Pushes `events` from `producers` concurrent tasks; returns the elapsed time.
async fn push_all(outbox: &Outbox, events: &[SignedEvent], producers: usize) -> Duration {
    let chunks: Vec<Vec<SignedEvent>> = events
        .chunks(events.len().div_ceil(producers))
        .map(<[SignedEvent]>::to_vec)
        .collect();
    let start = Instant::now();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                for event in chunk {
                    outbox.push(event, Priority::Bulk).await.expect("room");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("producer");
    }
    start.elapsed()
}

/// Drains everything with next_batch(256) + ack; returns the elapsed time.
async fn drain_all(outbox: &Outbox) -> Duration {
    let start = Instant::now();
    while outbox.stats().depth > 0 {
        let batch = outbox.next_batch(256).await;
        let seqs: Vec<u64> = batch.iter().map(|(s, _)| *s).collect();
        outbox.ack(&seqs).await;
    }
    start.elapsed()
}

/// The peer: one INSERT per transaction, so one fsync per event.
fn naive(path: &Path, events: &[SignedEvent]) -> Duration {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, priority INTEGER NOT NULL,
           enqueued_ms INTEGER NOT NULL, subject TEXT NOT NULL, event_id TEXT NOT NULL,
           encoding TEXT NOT NULL, body BLOB NOT NULL, signer TEXT NOT NULL,
           signature TEXT NOT NULL);
         CREATE INDEX outbox_order ON outbox (priority, seq);",
    )
    .expect("schema");
    let start = Instant::now();
    for event in events {
        conn.execute(
            "INSERT INTO outbox (priority, enqueued_ms, subject, event_id, encoding, body, signer, signature)
             VALUES (1, 0, ?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![
                event.subject,
                event.event_id,
                event.encoding.content_type(),
                &event.body[..],
                event.signer.to_string(),
                event.signature.to_string()
            ],
        )
        .expect("insert");
    }
    start.elapsed()
}

fn best(rounds: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..rounds).map(|_| f()).min().unwrap_or_default()
}

fn row(what: &str, producers: &str, n: usize, took: Duration) {
    let secs = took.as_secs_f64();
    println!(
        "| {what} | {producers} | {n} | {:.0} | {:.1} |",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let wanted = |name: &str| only.as_deref().is_none_or(|only| only == name);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("outbox-bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let scale = if quick { 1 } else { 4 };
    let all = events(5_000 * scale);
    println!("| operation | producers | events | events/s | µs/event |\n|---|---:|---:|---:|---:|");
    let naive_n = 500 * scale;
    if wanted("naive") {
        row(
            "push, one transaction + fsync per event (naive peer)",
            "1",
            naive_n,
            best(3, || naive(&fresh(&dir, "naive.db"), &all[..naive_n])),
        );
    }
    for (producers, n) in [(1, 500 * scale), (16, 2_500 * scale), (256, 5_000 * scale)] {
        if !wanted(&format!("push{producers}")) {
            continue;
        }
        let took = best(3, || {
            runtime.block_on(async {
                let outbox = Outbox::open(&fresh(&dir, "outbox.db"), OutboxOptions::new(1 << 30))
                    .expect("open");
                push_all(&outbox, &all[..n], producers).await
            })
        });
        row("push, group commit", &producers.to_string(), n, took);
    }
    let n = 5_000 * scale;
    if wanted("drain") {
        let took = best(3, || {
            runtime.block_on(async {
                let outbox = Outbox::open(&fresh(&dir, "outbox.db"), OutboxOptions::new(1 << 30))
                    .expect("open");
                push_all(&outbox, &all[..n], 256).await;
                drain_all(&outbox).await
            })
        });
        row(
            "drain: next_batch(256) + ack, one transaction per ack",
            "1",
            n,
            took,
        );
    }
    for (producers, n) in [(1, 5_000 * scale), (256, 5_000 * scale)] {
        if !wanted("memory") {
            break;
        }
        let took = best(3, || {
            runtime.block_on(async {
                let outbox = Outbox::in_memory(1 << 30);
                push_all(&outbox, &all[..n], producers).await
            })
        });
        row(
            "push, in memory (peer: no disk)",
            &producers.to_string(),
            n,
            took,
        );
    }
}
