use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use nexus_policies::SecretKey;
use nexus_wire::envelope::{Encoding, Envelope};

use super::*;

fn event(n: u32) -> SignedEvent {
    event_sized(n, 0)
}

/// An event whose body grows with `pad` bytes of payload.
fn event_sized(n: u32, pad: usize) -> SignedEvent {
    let key = SecretKey::from_seed(&[1; 32]).expect("key");
    let mut payload = serde_json::Map::new();
    payload.insert("n".into(), n.into());
    payload.insert("pad".into(), "x".repeat(pad).into());
    let envelope = Envelope::new(
        "edge.health",
        "edge-01",
        None,
        payload,
        time::OffsetDateTime::UNIX_EPOCH,
    );
    SignedEvent::seal(&envelope, Encoding::Json, &key).expect("seal")
}

fn seqs(batch: &[(u64, SignedEvent)]) -> Vec<u64> {
    batch.iter().map(|(s, _)| *s).collect()
}

async fn push(outbox: &Outbox, event: SignedEvent, priority: Priority) -> u64 {
    outbox.push(event, priority).await.expect("room")
}

/// A clock the test moves by hand (unix ms).
fn manual_clock(start_ms: i64) -> (Clock, Arc<AtomicI64>) {
    let now = Arc::new(AtomicI64::new(start_ms));
    let read = Arc::clone(&now);
    (Arc::new(move || read.load(Ordering::SeqCst)), now)
}

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data").join("outbox.db")
}

fn corrupt_files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("outbox.db.corrupt-") && !n.ends_with("-wal") && !n.ends_with("-shm")
            })
        })
        .collect();
    found.sort();
    found
}

/// Batches are oldest first and stay until acked; a batch not acked is handed out again.
#[tokio::test]
async fn batches_come_oldest_first_and_stay_until_acked() {
    let outbox = Outbox::in_memory(1 << 20);
    let mut pushed = Vec::new();
    let first = event(0);
    for n in 0..5 {
        let e = if n == 0 { first.clone() } else { event(n) };
        pushed.push(push(&outbox, e, Priority::Bulk).await);
    }
    let batch = outbox.next_batch(3).await;
    assert_eq!(seqs(&batch), pushed[..3]);
    assert_eq!(batch[0].1, first, "the exact event comes back");
    assert_eq!(
        seqs(&outbox.next_batch(3).await),
        pushed[..3],
        "not acked: again"
    );
    outbox.ack(&pushed[..2]).await;
    assert_eq!(seqs(&outbox.next_batch(10).await), pushed[2..]);
    assert_eq!(outbox.stats().depth, 3);
}

/// An event is found by its id while it waits, and no longer once acked.
#[tokio::test]
async fn a_waiting_event_is_found_by_its_id_until_acked() {
    let outbox = Outbox::in_memory(1 << 20);
    let (bulk, control) = (event(1), event(2));
    let (bulk_id, control_id) = (bulk.event_id.clone(), control.event_id.clone());
    let b = push(&outbox, bulk, Priority::Bulk).await;
    let c = push(&outbox, control, Priority::Control).await;
    let found = outbox.find(&bulk_id).await.expect("find").expect("waiting");
    assert_eq!((found.entry, found.control), (b, false));
    assert!(found.enqueued_ms > 0);
    let found = outbox
        .find(&control_id)
        .await
        .expect("find")
        .expect("waiting");
    assert_eq!((found.entry, found.control), (c, true));
    assert_eq!(outbox.find("no-such-event").await.expect("find"), None);
    outbox.ack(&[b]).await;
    assert_eq!(outbox.find(&bulk_id).await.expect("find"), None);
}

/// Control entries overtake Bulk ones; within a priority the order is the push order.
#[tokio::test]
async fn control_comes_before_bulk_each_in_push_order() {
    let outbox = Outbox::in_memory(1 << 20);
    let b1 = push(&outbox, event(1), Priority::Bulk).await;
    let c1 = push(&outbox, event(2), Priority::Control).await;
    let b2 = push(&outbox, event(3), Priority::Bulk).await;
    let c2 = push(&outbox, event(4), Priority::Control).await;
    assert_eq!(seqs(&outbox.next_batch(10).await), vec![c1, c2, b1, b2]);
    assert_eq!(seqs(&outbox.next_batch(3).await), vec![c1, c2, b1]);
    outbox.ack(&[c1, b1]).await;
    assert_eq!(seqs(&outbox.next_batch(10).await), vec![c2, b2]);
}

/// Under `Reject`, a push that does not fit gives the event back and changes nothing.
#[tokio::test]
async fn a_full_outbox_rejects_and_gives_the_event_back() {
    let one = event(0).body.len() as u64;
    let outbox = Outbox::in_memory(one * 2);
    let first = push(&outbox, event(0), Priority::Bulk).await;
    push(&outbox, event(1), Priority::Bulk).await;
    let third = event(2);
    let error = outbox
        .push(third.clone(), Priority::Control)
        .await
        .expect_err("full");
    assert!(
        matches!(error, OutboxError::Full { bytes, max_bytes, .. } if bytes == one * 2 && max_bytes == one * 2)
    );
    assert_eq!(error.into_event(), Some(third), "given back whole");
    let stats = outbox.stats();
    assert_eq!((stats.depth, stats.bytes, stats.dropped), (2, one * 2, 0));
    outbox.ack(&[first]).await;
    assert!(
        outbox.push(event(2), Priority::Bulk).await.is_ok(),
        "acking frees room"
    );
}

/// Under `DropOldest`, the oldest Bulk entries make room and are counted; Control entries
/// are never dropped, and an event that cannot fit without dropping Control is refused.
#[tokio::test]
async fn drop_oldest_drops_the_oldest_bulk_and_never_control() {
    let one = event(0).body.len() as u64;
    let options = OutboxOptions {
        when_full: WhenFull::DropOldest,
        ..OutboxOptions::new(one * 3)
    };
    let outbox = Outbox::in_memory_with(options, store::system_clock());
    let c = push(&outbox, event(0), Priority::Control).await;
    push(&outbox, event(1), Priority::Bulk).await;
    let b2 = push(&outbox, event(2), Priority::Bulk).await;
    let b3 = push(&outbox, event(3), Priority::Bulk).await;
    assert_eq!(seqs(&outbox.next_batch(10).await), vec![c, b2, b3]);
    assert_eq!(outbox.stats().dropped, 1);
    // A Control push drops Bulk too.
    let c2 = push(&outbox, event(4), Priority::Control).await;
    let c3 = push(&outbox, event(5), Priority::Control).await;
    assert_eq!(seqs(&outbox.next_batch(10).await), vec![c, c2, c3]);
    assert_eq!(outbox.stats().dropped, 3);
    // Only Control left: nothing may be dropped, so the push is refused.
    let refused = outbox.push(event(6), Priority::Bulk).await;
    assert!(matches!(refused, Err(OutboxError::Full { .. })));
    let refused = outbox.push(event(7), Priority::Control).await;
    assert!(matches!(refused, Err(OutboxError::Full { .. })));
    assert_eq!(outbox.stats().depth, 3);
}

/// An event larger than the whole bound is refused under either policy.
#[tokio::test]
async fn an_event_larger_than_the_bound_is_refused_under_either_policy() {
    for when_full in [WhenFull::Reject, WhenFull::DropOldest] {
        let options = OutboxOptions {
            when_full,
            ..OutboxOptions::new(100)
        };
        let outbox = Outbox::in_memory_with(options, store::system_clock());
        let result = outbox.push(event_sized(0, 200), Priority::Bulk).await;
        assert!(
            matches!(result, Err(OutboxError::Full { .. })),
            "{when_full:?}"
        );
    }
}

/// Entries older than `max_age` are deleted before a batch is read and counted; the age of
/// the oldest is reported.
#[tokio::test]
async fn old_entries_expire_and_are_counted() {
    let (clock, now) = manual_clock(1_000_000);
    let options = OutboxOptions {
        max_age: Some(Duration::from_secs(60)),
        ..OutboxOptions::new(1 << 20)
    };
    let outbox = Outbox::in_memory_with(options, clock);
    push(&outbox, event(0), Priority::Bulk).await;
    push(&outbox, event(1), Priority::Control).await;
    now.fetch_add(30_000, Ordering::SeqCst);
    let young = push(&outbox, event(2), Priority::Bulk).await;
    assert_eq!(outbox.stats().oldest_age_secs, 30);
    now.fetch_add(31_000, Ordering::SeqCst);
    assert_eq!(seqs(&outbox.next_batch(10).await), vec![young]);
    let stats = outbox.stats();
    assert_eq!(
        (stats.depth, stats.expired, stats.oldest_age_secs),
        (1, 2, 31)
    );
}

/// A full outbox with expired entries makes room by expiring them, even under `Reject`.
#[tokio::test]
async fn a_full_outbox_expires_before_it_rejects() {
    let (clock, now) = manual_clock(0);
    let one = event(0).body.len() as u64;
    let options = OutboxOptions {
        max_age: Some(Duration::from_secs(10)),
        ..OutboxOptions::new(one)
    };
    let outbox = Outbox::in_memory_with(options, clock);
    push(&outbox, event(0), Priority::Bulk).await;
    assert!(outbox.push(event(1), Priority::Bulk).await.is_err());
    now.fetch_add(11_000, Ordering::SeqCst);
    assert!(outbox.push(event(1), Priority::Bulk).await.is_ok());
    assert_eq!(outbox.stats().expired, 1);
}

/// A waiting `next_batch` wakes up on a push.
#[tokio::test]
async fn a_waiting_batch_wakes_on_push() {
    let outbox = Outbox::in_memory(1 << 20);
    let waiter = tokio::spawn({
        let outbox = outbox.clone();
        async move { outbox.next_batch(8).await.len() }
    });
    tokio::task::yield_now().await;
    push(&outbox, event(0), Priority::Bulk).await;
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken")
        .expect("joined");
    assert_eq!(got, 1);
}

/// Many concurrent pushes all resolve, with distinct seqs, and all are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_all_resolve_with_distinct_seqs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = Outbox::open(&db(&dir), OutboxOptions::new(1 << 24)).expect("open");
    let tasks: Vec<_> = (0..64)
        .map(|n| {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.push(event(n), Priority::Bulk).await })
        })
        .collect();
    let mut got = Vec::new();
    for task in tasks {
        got.push(task.await.expect("joined").expect("stored"));
    }
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), 64);
    assert_eq!(outbox.stats().depth, 64);
}

/// Bulk is handed out at most `drain_rate` per second; Control is never held back.
#[tokio::test(start_paused = true)]
async fn the_drain_rate_limits_bulk_only() {
    let options = OutboxOptions {
        drain_rate: NonZeroU32::new(2),
        ..OutboxOptions::new(1 << 20)
    };
    let outbox = Outbox::in_memory_with(options, store::system_clock());
    for n in 0..5 {
        push(&outbox, event(n), Priority::Bulk).await;
    }
    let started = Instant::now();
    assert_eq!(outbox.next_batch(10).await.len(), 2, "one second of burst");
    let batch = outbox.next_batch(10).await;
    assert_eq!(batch.len(), 1);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "waited for a token"
    );
    // The bucket is empty now, but Control passes at once.
    let c = push(&outbox, event(9), Priority::Control).await;
    let at = Instant::now();
    assert_eq!(seqs(&outbox.next_batch(10).await), vec![c]);
    assert_eq!(at.elapsed(), Duration::ZERO);
}

/// What was pushed survives closing and reopening: same events, same bytes, same counters;
/// and seqs are never reused, even the one of an acked newest entry.
#[tokio::test]
async fn entries_survive_a_reopen_and_seqs_are_never_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let outbox = Outbox::open(&path, OutboxOptions::new(1 << 20)).expect("open");
    let (e0, e1) = (event(0), event(1));
    let a = push(&outbox, e0.clone(), Priority::Bulk).await;
    let b = push(&outbox, e1.clone(), Priority::Control).await;
    let c = push(&outbox, event(2), Priority::Bulk).await;
    outbox.ack(&[c]).await;
    let before = outbox.stats();
    drop(outbox);

    let outbox = Outbox::open(&path, OutboxOptions::new(1 << 20)).expect("reopen");
    let batch = outbox.next_batch(10).await;
    assert_eq!(seqs(&batch), vec![b, a]);
    assert_eq!(batch[0].1, e1);
    assert_eq!(batch[1].1, e0);
    let after = outbox.stats();
    assert_eq!((after.depth, after.bytes), (before.depth, before.bytes));
    let d = push(&outbox, event(3), Priority::Bulk).await;
    assert!(d > c, "seq {d} reuses {c}");
}

/// A second outbox on the same file is refused while the first is open.
#[tokio::test]
async fn a_second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let _first = Outbox::open(&path, OutboxOptions::default()).expect("open");
    let second = Outbox::open(&path, OutboxOptions::default());
    assert!(
        matches!(second, Err(OutboxError::Open(StoreError::Locked { .. }))),
        "{second:?}"
    );
}

/// A file that is not a database is moved aside (not deleted, bytes unchanged) and a fresh
/// outbox starts.
#[tokio::test]
async fn a_garbage_file_is_moved_aside_and_a_fresh_outbox_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let garbage: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&path, &garbage).expect("write");

    let outbox = Outbox::open(&path, OutboxOptions::default()).expect("opens fresh");
    assert_eq!(outbox.stats().depth, 0);
    let aside = corrupt_files(path.parent().expect("parent"));
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).expect("read"), garbage);
    let seq = push(&outbox, event(0), Priority::Bulk).await;
    assert_eq!(seqs(&outbox.next_batch(1).await), vec![seq]);
}

/// A truncated database is moved aside; the rows still readable from its intact part are
/// carried over, unchanged and with their seqs, and nothing else appears.
#[tokio::test]
async fn a_truncated_file_is_moved_aside_and_its_readable_rows_salvaged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let outbox = Outbox::open(&path, OutboxOptions::new(1 << 24)).expect("open");
    let mut pushed = Vec::new();
    for n in 0..300 {
        let e = event_sized(n, 200);
        pushed.push((push(&outbox, e.clone(), Priority::Bulk).await, e));
    }
    drop(outbox); // checkpoints the WAL into the file
    let len = std::fs::metadata(&path).expect("stat").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.set_len(len / 2).expect("truncate");
    drop(file);

    let outbox = Outbox::open(&path, OutboxOptions::new(1 << 24)).expect("opens fresh");
    let aside = corrupt_files(path.parent().expect("parent"));
    assert_eq!(aside.len(), 1);
    let depth = outbox.stats().depth;
    assert!(depth > 0, "the intact first half is readable");
    let salvaged = outbox.next_batch(1000).await;
    assert!(!salvaged.is_empty(), "the intact first half is readable");
    assert!(
        salvaged.len() < pushed.len(),
        "the lost half is not invented"
    );
    for (seq, event) in &salvaged {
        let original = pushed.iter().find(|(s, _)| s == seq).expect("a pushed seq");
        assert_eq!(&original.1, event, "seq {seq} salvaged unchanged");
    }
}
