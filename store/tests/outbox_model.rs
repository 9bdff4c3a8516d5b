//! A model-based property test of the on-disk outbox: random sequences of push, next_batch,
//! ack (of handed-out, unknown and already-acked seqs) and close-and-reopen, run against the
//! real outbox (SQLite in a temp dir) and against a plain `Vec` model of what the module docs
//! promise. After every step the two must agree on what a batch hands out (seqs and exact
//! events), on what a push answers (stored / full, under both `when_full` policies), and on
//! depth, bytes and the dropped count. Failing cases are kept in
//! `outbox_model.proptest-regressions` beside this file (commit it).

use nexus_policies::SecretKey;
use nexus_store::outbox::{Outbox, OutboxError, OutboxOptions, Priority, WhenFull};
use nexus_wire::{Encoding, Envelope, SignedEvent};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Push an event of about `pad` extra bytes.
    Push { control: bool, pad: usize },
    /// Take a batch of at most `max`.
    Next { max: usize },
    /// Ack the handed-out seqs selected by `pick` (bit i: the i-th of the last batch), plus
    /// one seq that is unknown or already gone when `stale`.
    Ack { pick: u16, stale: bool },
    /// Close the outbox and open the file again.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), prop_oneof![Just(0usize), Just(150), Just(600)])
            .prop_map(|(control, pad)| Op::Push { control, pad }),
        3 => (1usize..8).prop_map(|max| Op::Next { max }),
        3 => (any::<u16>(), any::<bool>()).prop_map(|(pick, stale)| Op::Ack { pick, stale }),
        1 => Just(Op::Reopen),
    ]
}

/// The model: entries in push order, and what the docs say about them.
#[derive(Debug, Default)]
struct Model {
    max_bytes: u64,
    when_full: WhenFull,
    /// (seq, priority, event), ascending seq.
    entries: Vec<(u64, Priority, SignedEvent)>,
    highest_seq: u64,
    dropped: u64,
}

impl Model {
    fn bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|(_, _, e)| e.body.len() as u64)
            .sum()
    }

    fn control_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|(_, p, _)| *p == Priority::Control)
            .map(|(_, _, e)| e.body.len() as u64)
            .sum()
    }

    /// Whether the push must succeed; applies the drops it implies.
    fn admit(&mut self, size: u64) -> bool {
        if self.bytes() + size <= self.max_bytes {
            return true;
        }
        if self.when_full == WhenFull::Reject || self.control_bytes() + size > self.max_bytes {
            return false;
        }
        while self.bytes() + size > self.max_bytes {
            let oldest_bulk = self
                .entries
                .iter()
                .position(|(_, p, _)| *p == Priority::Bulk)
                .expect("control fits, so bulk must be there");
            self.entries.remove(oldest_bulk);
            self.dropped += 1;
        }
        true
    }

    fn batch(&self, max: usize) -> Vec<(u64, SignedEvent)> {
        let by = |priority| {
            self.entries
                .iter()
                .filter(move |(_, p, _)| *p == priority)
                .map(|(s, _, e)| (*s, e.clone()))
        };
        by(Priority::Control)
            .chain(by(Priority::Bulk))
            .take(max)
            .collect()
    }

    fn ack(&mut self, seqs: &[u64]) {
        self.entries.retain(|(s, _, _)| !seqs.contains(s));
    }
}

fn event(n: usize, pad: usize) -> SignedEvent {
    let key = SecretKey::from_seed(&[9; 32]).expect("key");
    let mut payload = serde_json::Map::new();
    payload.insert("n".into(), n.into());
    payload.insert("pad".into(), "p".repeat(pad).into());
    let envelope = Envelope::new(
        "iot.sensor_data",
        "edge-01",
        Some("salon-001"),
        payload,
        time::OffsetDateTime::UNIX_EPOCH,
    );
    SignedEvent::seal(&envelope, Encoding::Json, &key).expect("seal")
}

fn run(ops: Vec<Op>, max_bytes: u64, when_full: WhenFull) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("outbox.db");
    let options = OutboxOptions {
        when_full,
        ..OutboxOptions::new(max_bytes)
    };
    runtime.block_on(async {
        let mut outbox = Outbox::open(&path, options.clone()).expect("open");
        let mut model = Model {
            max_bytes,
            when_full,
            ..Model::default()
        };
        let mut last_batch: Vec<u64> = Vec::new();
        let mut gone: Vec<u64> = Vec::new();
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Push { control, pad } => {
                    let priority = if control {
                        Priority::Control
                    } else {
                        Priority::Bulk
                    };
                    let e = event(n, pad);
                    let admitted = model.admit(e.body.len() as u64);
                    match outbox.push(e.clone(), priority).await {
                        Ok(seq) => {
                            prop_assert!(admitted, "stored but the model refuses it");
                            prop_assert!(seq > model.highest_seq, "seq {seq} not increasing");
                            model.highest_seq = seq;
                            model.entries.push((seq, priority, e));
                        }
                        Err(OutboxError::Full { event, .. }) => {
                            prop_assert!(!admitted, "refused but the model admits it");
                            prop_assert_eq!(
                                event.map(|e| *e),
                                Some(e),
                                "the refused event comes back"
                            );
                        }
                        Err(other) => return Err(TestCaseError::fail(format!("{other}"))),
                    }
                }
                Op::Next { max } => {
                    if model.entries.is_empty() {
                        continue; // next_batch would wait, as it should
                    }
                    let got = outbox.next_batch(max).await;
                    let want = model.batch(max);
                    prop_assert_eq!(&got, &want);
                    last_batch = got.into_iter().map(|(s, _)| s).collect();
                }
                Op::Ack { pick, stale } => {
                    let mut seqs: Vec<u64> = last_batch
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| pick & (1 << i) != 0)
                        .map(|(_, s)| *s)
                        .collect();
                    if stale {
                        seqs.push(gone.first().copied().unwrap_or(model.highest_seq + 1000));
                    }
                    outbox.ack(&seqs).await;
                    model.ack(&seqs);
                    gone.extend(seqs);
                }
                Op::Reopen => {
                    drop(outbox);
                    outbox = Outbox::open(&path, options.clone()).expect("reopen");
                    model.dropped = 0; // counters are per process
                }
            }
            let stats = outbox.stats();
            prop_assert_eq!(stats.depth, model.entries.len() as u64);
            prop_assert_eq!(stats.bytes, model.bytes());
            prop_assert_eq!(stats.dropped, model.dropped);
            prop_assert!(stats.bytes <= max_bytes);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        // Next to this file: `outbox_model.proptest-regressions`.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    /// The outbox behaves like the model under any sequence of operations, both policies.
    #[test]
    fn the_outbox_behaves_like_its_model(
        ops in proptest::collection::vec(op(), 1..60),
        max_bytes in 800u64..4000,
        drop_oldest in any::<bool>(),
    ) {
        let when_full = if drop_oldest { WhenFull::DropOldest } else { WhenFull::Reject };
        run(ops, max_bytes, when_full)?;
    }
}
