//! Crash safety of the outbox as a real process: a child pushes events from several
//! concurrent producers and prints each seq once its push resolved; it is killed with SIGKILL
//! mid-stream, several times over the same file; after each kill, the reopened outbox holds
//! every event whose seq was printed, byte for byte.
//!
//! SIGKILL proves the ordering (a push resolves only after its commit) and SQLite's recovery
//! of a process that died mid-transaction; it cannot prove what a power cut does to a medium
//! that lies about fsync (see the outbox module docs).
//!
//! The child numbers its events (`push_numbered`): after each kill, the numbers stored are
//! exactly 1..=N of one epoch (nothing is acked here, so everything ever committed is
//! there), and the next number is N + 1: none committed is ever handed out again.
//!
//! The child is this same test binary, run with [`CHILD_ENV`] set on the
//! `crash_child_process` test, so no extra binary is needed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use nexus_policies::SecretKey;
use nexus_store::outbox::{Outbox, OutboxOptions, Priority};
use nexus_wire::envelope::MAX_ENVELOPE_BYTES;
use nexus_wire::{Encoding, Envelope, SignedEvent};

/// Set to the database path in the child.
const CHILD_ENV: &str = "NEXUS_OUTBOX_CRASH_CHILD";
/// Producers in the child: pushes race, so commits are grouped when the kill lands.
const PRODUCERS: usize = 8;

fn key() -> SecretKey {
    SecretKey::from_seed(&[3; 32]).expect("key")
}

fn envelope(n: usize) -> Envelope {
    let mut payload = serde_json::Map::new();
    payload.insert("n".into(), n.into());
    Envelope::new(
        "iot.sensor_data",
        "edge-01",
        Some("salon-001"),
        payload,
        time::OffsetDateTime::now_utc(),
    )
}

/// Not a test of its own: the child process of the crash test (does nothing unless
/// `NEXUS_OUTBOX_CRASH_CHILD` is set). Pushes until killed, printing `pushed SEQ EVENT_ID`
/// after each push resolved.
#[test]
fn crash_child_process() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let outbox = Outbox::open(path.as_ref(), OutboxOptions::new(1 << 30)).expect("open");
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    for n in 0.. {
                        let e = envelope(n * PRODUCERS + p);
                        let id = e.event_id.clone();
                        let seal = e.into_sealer(Encoding::Json, key());
                        let stored = outbox
                            .push_numbered(seal, Priority::Bulk)
                            .await
                            .expect("stored");
                        println!("pushed {} {id}", stored.entry);
                    }
                })
            })
            .collect();
        for producer in producers {
            let _ = producer.await;
        }
    });
}

/// Kill -9 mid-stream, three times over the same file: every event whose push had resolved
/// (its seq printed) is in the reopened outbox, unchanged.
#[test]
fn a_killed_process_loses_no_event_whose_push_had_resolved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("outbox.db");
    let mut promised: HashMap<u64, String> = HashMap::new();
    let mut epoch = None;
    for (round, kill_after) in [200usize, 600, 1500].into_iter().enumerate() {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "crash_child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("child starts");
        let stdout = child.stdout.take().expect("piped");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let mut seen = 0;
        let mut killed = false;
        loop {
            line.clear();
            let n = reader.read_line(&mut line).expect("read");
            if n == 0 {
                break; // EOF: the child is gone and the pipe is drained
            }
            // A line cut by the kill has no newline: its push may not have been reported.
            let Some(text) = line.strip_suffix('\n') else {
                continue;
            };
            let Some(rest) = text.strip_prefix("pushed ") else {
                continue;
            };
            let (seq, id) = rest.split_once(' ').expect("seq and id");
            let seq: u64 = seq.parse().expect("seq");
            assert!(
                promised.insert(seq, id.to_owned()).is_none(),
                "seq {seq} handed out twice"
            );
            seen += 1;
            if seen == kill_after && !killed {
                child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
                killed = true;
            }
        }
        let status = child.wait().expect("reaped");
        assert!(
            killed,
            "round {round}: the child stopped by itself: {status}"
        );

        // Reopen in this process and compare.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let outbox = Outbox::open(&path, OutboxOptions::new(1 << 30)).expect("reopen");
            let depth = outbox.stats().depth as usize;
            let stored: HashMap<u64, SignedEvent> =
                outbox.next_batch(depth.max(1)).await.into_iter().collect();
            assert!(
                stored.len() >= promised.len(),
                "round {round}: {} stored < {} promised",
                stored.len(),
                promised.len()
            );
            for (seq, id) in &promised {
                let event = stored
                    .get(seq)
                    .unwrap_or_else(|| panic!("round {round}: resolved seq {seq} lost"));
                assert_eq!(&event.event_id, id, "seq {seq}");
                let body = std::str::from_utf8(&event.body).expect("JSON body");
                assert!(
                    body.contains(id.as_str()),
                    "seq {seq}: the body is this event's"
                );
            }
            // The bytes are the signed bytes (a sample: verifying is slow in debug builds).
            for event in stored.values().take(20) {
                assert!(event.signer.verify(&event.body, &event.signature).is_ok());
            }
            // The numbers: one epoch, 1..=N, each once; the next is N + 1.
            let mut numbers: Vec<u64> = stored
                .values()
                .map(|event| {
                    let envelope =
                        Envelope::decode(&event.body, event.encoding, MAX_ENVELOPE_BYTES)
                            .expect("decodes");
                    assert_eq!(envelope.epoch.as_deref(), Some(outbox.epoch()));
                    envelope.seq.expect("numbered")
                })
                .collect();
            numbers.sort_unstable();
            let n = numbers.len() as u64;
            assert!(
                numbers.iter().copied().eq(1..=n),
                "round {round}: the numbers stored are not 1..={n}"
            );
            assert_eq!(
                epoch.get_or_insert_with(|| outbox.epoch().to_owned()),
                outbox.epoch(),
                "the same database keeps its epoch"
            );
            let next = outbox
                .push_numbered(
                    envelope(0).into_sealer(Encoding::Json, key()),
                    Priority::Bulk,
                )
                .await
                .expect("stored");
            assert_eq!(next.sequence.seq, n + 1, "round {round}");
            promised.insert(next.entry, next.event.event_id);
            eprintln!(
                "round {round}: killed after {seen} reported pushes; {} promised, {} stored",
                promised.len(),
                stored.len()
            );
        });
    }
}
