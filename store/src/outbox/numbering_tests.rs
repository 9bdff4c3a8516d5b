//! The outbox's numbering: gap-free `seq`s in one epoch, kept across restarts, and what
//! it gives up recorded exactly until announced.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use nexus_policies::SecretKey;
use nexus_wire::envelope::{Encoding, Envelope, MAX_ENVELOPE_BYTES};

use super::*;

fn key() -> SecretKey {
    SecretKey::from_seed(&[1; 32]).expect("key")
}

fn envelope(n: u32, pad: usize) -> Envelope {
    let mut payload = serde_json::Map::new();
    payload.insert("n".into(), n.into());
    payload.insert("pad".into(), "x".repeat(pad).into());
    Envelope::new(
        "edge.health",
        "edge-01",
        None,
        payload,
        time::OffsetDateTime::UNIX_EPOCH,
    )
}

/// The body size of a numbered event `pad` makes (the number's digits aside).
fn size(pad: usize) -> u64 {
    let mut e = envelope(0, pad);
    e.set_sequence(Some(Sequence {
        epoch: uuid::Uuid::now_v7().to_string(),
        seq: 1,
    }));
    e.encode(Encoding::Json).expect("encodes").len() as u64
}

async fn numbered(outbox: &Outbox, n: u32, priority: Priority) -> Numbered {
    numbered_sized(outbox, n, 0, priority)
        .await
        .expect("stored")
}

async fn numbered_sized(
    outbox: &Outbox,
    n: u32,
    pad: usize,
    priority: Priority,
) -> Result<Numbered, OutboxError> {
    outbox
        .push_numbered(
            envelope(n, pad).into_sealer(Encoding::Json, key()),
            priority,
        )
        .await
}

/// The envelope as stored.
fn opened(event: &SignedEvent) -> Envelope {
    Envelope::decode(&event.body, event.encoding, MAX_ENVELOPE_BYTES).expect("decodes")
}

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("outbox.db")
}

/// Numbers 1, 2, 3, … in push order; what a push is refused (full, or its seal fails)
/// uses no number; the stored event carries the outbox's epoch and its number, signed.
#[tokio::test]
async fn numbers_are_gap_free_over_what_is_stored() {
    let outbox = Outbox::in_memory(size(0) * 3 + 10);
    let epoch = outbox.epoch().to_owned();
    assert_eq!(
        uuid::Uuid::parse_str(&epoch)
            .expect("uuid")
            .get_version_num(),
        7
    );
    let a = numbered(&outbox, 0, Priority::Bulk).await;
    let b = numbered(&outbox, 1, Priority::Control).await;
    // A seal that fails: nothing stored, no number used.
    let failed = outbox
        .push_numbered(
            |_| Err(EnvelopeError::Encode("test".into())),
            Priority::Bulk,
        )
        .await;
    assert!(matches!(failed, Err(OutboxError::Seal(_))), "{failed:?}");
    let c = numbered(&outbox, 2, Priority::Bulk).await;
    // Full under Reject: refused, and nothing comes back to be sent by mistake.
    let refused = numbered_sized(&outbox, 3, 0, Priority::Bulk).await;
    assert!(
        matches!(refused, Err(OutboxError::Full { event: None, .. })),
        "{refused:?}"
    );
    outbox.ack(&[a.entry]).await;
    let d = numbered(&outbox, 4, Priority::Bulk).await;
    let got: Vec<u64> = [&a, &b, &c, &d].iter().map(|n| n.sequence.seq).collect();
    assert_eq!(got, [1, 2, 3, 4]);
    for n in [&a, &b, &c, &d] {
        assert_eq!(n.sequence.epoch, epoch);
        let stored = opened(&n.event);
        assert_eq!(stored.sequence(), Some(n.sequence.clone()));
        assert!(key()
            .public()
            .verify(&n.event.body, &n.event.signature)
            .is_ok());
    }
    // What the uplink reads is what was stored.
    let batch = outbox.next_batch(10).await;
    assert_eq!(
        batch.iter().map(|(_, e)| opened(e).seq).collect::<Vec<_>>(),
        [Some(2), Some(3), Some(4)]
    );
}

/// Concurrent pushes, grouped into shared commits, still get 1..=N, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_numbered_pushes_get_one_number_each() {
    let outbox = Outbox::in_memory(1 << 24);
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let outbox = outbox.clone();
            tokio::spawn(async move { numbered(&outbox, n, Priority::Bulk).await })
        })
        .collect();
    let mut got = Vec::new();
    for task in tasks {
        got.push(task.await.expect("joined").sequence.seq);
    }
    got.sort_unstable();
    assert_eq!(got, (1..=200).collect::<Vec<u64>>());
}

/// The epoch and the numbering survive a restart: the next number follows the highest
/// ever committed, even when every numbered event was acked before.
#[tokio::test]
async fn numbering_continues_after_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = Outbox::open(&db(&dir), OutboxOptions::new(1 << 20)).expect("open");
    let epoch = outbox.epoch().to_owned();
    let mut entries = Vec::new();
    for n in 0..3 {
        entries.push(numbered(&outbox, n, Priority::Bulk).await.entry);
    }
    outbox.ack(&entries).await;
    drop(outbox);

    let outbox = Outbox::open(&db(&dir), OutboxOptions::new(1 << 20)).expect("reopen");
    assert_eq!(outbox.epoch(), epoch, "the same database, the same epoch");
    let next = numbered(&outbox, 3, Priority::Bulk).await;
    assert_eq!(next.sequence.seq, 4);
    drop(outbox);

    // A new database (a wiped data dir) is a new epoch, which sorts after the old one.
    std::fs::remove_file(db(&dir)).expect("wipe");
    let outbox = Outbox::open(&db(&dir), OutboxOptions::new(1 << 20)).expect("fresh");
    assert!(
        outbox.epoch() > epoch.as_str(),
        "{} > {epoch}",
        outbox.epoch()
    );
    assert_eq!(numbered(&outbox, 0, Priority::Bulk).await.sequence.seq, 1);
}

/// A version 1 database (before numbering) is upgraded in place: its rows stay and are
/// sent as they are, unnumbered; it gets an epoch and numbers from 1. Giving up such a
/// row is announced as unnumbered.
#[tokio::test]
async fn a_version_1_database_is_upgraded_and_its_rows_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = SignedEvent::seal(&envelope(7, 0), Encoding::Json, &key()).expect("seal");
    {
        let conn = rusqlite::Connection::open(db(&dir)).expect("create v1");
        conn.execute_batch(
            "CREATE TABLE outbox (
                 seq         INTEGER PRIMARY KEY AUTOINCREMENT,
                 priority    INTEGER NOT NULL,
                 enqueued_ms INTEGER NOT NULL,
                 subject     TEXT    NOT NULL,
                 event_id    TEXT    NOT NULL,
                 encoding    TEXT    NOT NULL,
                 body        BLOB    NOT NULL,
                 signer      TEXT    NOT NULL,
                 signature   TEXT    NOT NULL
             );
             CREATE INDEX outbox_order ON outbox (priority, seq);
             PRAGMA user_version = 1;",
        )
        .expect("v1 schema");
        conn.execute(
            "INSERT INTO outbox (priority, enqueued_ms, subject, event_id, encoding, body, signer, signature) \
             VALUES (1, 0, ?1, ?2, 'application/json', ?3, ?4, ?5)",
            rusqlite::params![
                old.subject,
                old.event_id,
                &old.body[..],
                old.signer.to_string(),
                old.signature.to_string()
            ],
        )
        .expect("a v1 row");
    }
    let options = OutboxOptions {
        when_full: WhenFull::DropOldest,
        ..OutboxOptions::new(2 * size(0) + 10)
    };
    let outbox = Outbox::open(&db(&dir), options).expect("upgrades");
    let batch = outbox.next_batch(10).await;
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].1, old, "the v1 row, unchanged");
    let first = numbered(&outbox, 0, Priority::Control).await;
    assert_eq!(first.sequence.seq, 1);
    // A second numbered event does not fit beside both: the v1 row (Bulk) is dropped.
    let second = numbered(&outbox, 1, Priority::Control).await;
    assert_eq!(second.sequence.seq, 2);
    let losses = outbox
        .losses(LossKind::Dropped, 16)
        .await
        .expect("reads")
        .expect("one loss");
    assert_eq!(
        (
            losses.epoch.as_deref(),
            losses.ranges.as_slice(),
            losses.unnumbered
        ),
        (None, &[][..], 1)
    );
    drop(outbox);
    let outbox = Outbox::open(&db(&dir), OutboxOptions::new(1 << 20)).expect("reopen");
    assert_eq!(
        numbered(&outbox, 2, Priority::Control).await.sequence.seq,
        3
    );
    drop(outbox);
    let version: i64 = rusqlite::Connection::open(db(&dir))
        .and_then(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
        .expect("user_version");
    assert_eq!(version, 2);
}

/// Under `drop_oldest` the numbers given up are recorded exactly, as ranges (Control
/// events, never dropped, split them), until an announcement settles them; what is
/// given up later comes with the next announcement.
#[tokio::test]
async fn drop_oldest_records_the_exact_numbers_until_announced() {
    let options = OutboxOptions {
        when_full: WhenFull::DropOldest,
        ..OutboxOptions::new(size(0) * 6 + 20)
    };
    let outbox = Outbox::in_memory_with(options, store::system_clock());
    // seqs 1..=9: Bulk but 4 and 7 (Control).
    for n in 1..=9u32 {
        let priority = if n == 4 || n == 7 {
            Priority::Control
        } else {
            Priority::Bulk
        };
        assert_eq!(
            numbered(&outbox, n, priority).await.sequence.seq,
            u64::from(n)
        );
    }
    // 6 fit: 1, 2, 3 were dropped (oldest Bulk first).
    let stats = outbox.stats();
    assert_eq!((stats.dropped, stats.unannounced_dropped), (3, 3));
    for n in 10..=11u32 {
        numbered(&outbox, n, Priority::Bulk).await;
    }
    // 5 and 6 too; 4 (Control) stays.
    let losses = outbox
        .losses(LossKind::Dropped, 16)
        .await
        .expect("reads")
        .expect("losses");
    assert_eq!(losses.epoch.as_deref(), Some(outbox.epoch()));
    assert_eq!(losses.ranges, [(1, 3), (5, 6)]);
    assert_eq!((losses.unnumbered, losses.count()), (0, 5));
    assert!(outbox
        .losses(LossKind::Expired, 16)
        .await
        .expect("reads")
        .is_none());

    // The announcement (itself numbered, 12) settles them with its own commit.
    let announced = outbox
        .push_announcement(
            &losses,
            envelope(99, 0).into_sealer(Encoding::Json, key()),
            Priority::Control,
        )
        .await
        .expect("stored");
    assert_eq!(announced.sequence.seq, 12);
    // Storing it dropped 8 to make room: that is the next announcement's.
    let next = outbox
        .losses(LossKind::Dropped, 16)
        .await
        .expect("reads")
        .expect("the next loss");
    assert_eq!(next.ranges, [(8, 8)]);
    assert_eq!(outbox.stats().unannounced_dropped, 1);
}

/// What is given up while an announcement is being made (between reading the losses and
/// storing the audit) is not settled by it, even when its numbers follow the announced
/// ones: it waits for the next announcement.
#[tokio::test]
async fn losses_given_up_during_an_announcement_wait_for_the_next() {
    let options = OutboxOptions {
        when_full: WhenFull::DropOldest,
        ..OutboxOptions::new(size(0) * 3 + 10)
    };
    let outbox = Outbox::in_memory_with(options, store::system_clock());
    for n in 1..=4 {
        numbered(&outbox, n, Priority::Bulk).await;
    }
    let read = outbox
        .losses(LossKind::Dropped, 16)
        .await
        .expect("reads")
        .expect("losses");
    assert_eq!(read.ranges, [(1, 1)]);
    // 2 is dropped now: it follows 1, but 1 is being announced.
    numbered(&outbox, 5, Priority::Bulk).await;
    // Storing the announcement drops 3 to make room.
    outbox
        .push_announcement(
            &read,
            envelope(0, 0).into_sealer(Encoding::Json, key()),
            Priority::Control,
        )
        .await
        .expect("stored");
    let next = outbox
        .losses(LossKind::Dropped, 16)
        .await
        .expect("reads")
        .expect("what came after");
    assert_eq!(next.ranges, [(2, 3)]);
    assert_eq!(outbox.stats().unannounced_dropped, 2);
}

/// At most `max_ranges` ranges per read, lowest first; the rest follow once those are
/// settled. Nothing is left out.
#[tokio::test]
async fn losses_come_in_bounded_pieces_and_none_is_left_out() {
    let options = OutboxOptions {
        when_full: WhenFull::DropOldest,
        ..OutboxOptions::new(size(0) * 3 + 10)
    };
    let outbox = Outbox::in_memory_with(options, store::system_clock());
    // Alternate Bulk and Control: each dropped Bulk is a range of its own.
    for n in 1..=30u32 {
        let priority = if n % 2 == 0 {
            Priority::Control
        } else {
            Priority::Bulk
        };
        let _ = numbered(&outbox, n, priority).await;
        // Keep the Control events from filling the outbox: they are sent (acked).
        if n % 2 == 0 {
            let controls: Vec<u64> = outbox
                .next_batch(100)
                .await
                .into_iter()
                .filter(|(_, e)| opened(e).seq.is_some_and(|s| s % 2 == 0))
                .map(|(entry, _)| entry)
                .collect();
            outbox.ack(&controls).await;
        }
    }
    let mut announced = Vec::new();
    let mut pieces = 0;
    while let Some(losses) = outbox.losses(LossKind::Dropped, 4).await.expect("reads") {
        assert!(losses.ranges.len() <= 4, "{losses:?}");
        pieces += 1;
        announced.extend(losses.ranges.iter().copied());
        let announcement = outbox
            .push_announcement(
                &losses,
                envelope(0, 0).into_sealer(Encoding::Json, key()),
                Priority::Control,
            )
            .await
            .expect("stored");
        // Sent: it takes no room from the next one.
        outbox.ack(&[announcement.entry]).await;
    }
    let dropped = outbox.stats().dropped;
    let count: u64 = announced.iter().map(|(a, b)| b - a + 1).sum();
    assert_eq!(count, dropped, "{announced:?}");
    assert!(pieces >= 3, "{pieces} pieces for {announced:?}");
    assert!(
        announced.iter().all(|(a, b)| a == b && a % 2 == 1),
        "{announced:?}"
    );
}

/// Expiry records the numbers it gives up (Control and Bulk alike, oldest first), and
/// they wait on disk, across a restart, until announced.
#[tokio::test]
async fn expiry_records_exact_ranges_that_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = Arc::new(AtomicI64::new(1_000_000));
    let read = Arc::clone(&now);
    let clock: Clock = Arc::new(move || read.load(Ordering::SeqCst));
    let options = OutboxOptions {
        max_age: Some(Duration::from_secs(60)),
        ..OutboxOptions::new(1 << 20)
    };
    let outbox =
        Outbox::open_with_clock(&db(&dir), options.clone(), Arc::clone(&clock)).expect("open");
    for n in 1..=3 {
        numbered(&outbox, n, Priority::Bulk).await;
    }
    numbered(&outbox, 4, Priority::Control).await;
    now.fetch_add(61_000, Ordering::SeqCst);
    let young = numbered(&outbox, 5, Priority::Bulk).await;
    assert_eq!(seqs(&outbox.next_batch(10).await), [young.entry]);
    assert_eq!(outbox.stats().unannounced_expired, 4);
    drop(outbox);

    let outbox = Outbox::open_with_clock(&db(&dir), options, clock).expect("reopen");
    assert_eq!(outbox.stats().unannounced_expired, 4, "kept on disk");
    let losses = outbox
        .losses(LossKind::Expired, 16)
        .await
        .expect("reads")
        .expect("losses");
    assert_eq!(
        (losses.kind, losses.ranges.as_slice(), losses.count()),
        (LossKind::Expired, &[(1, 4)][..], 4)
    );
}

/// A damaged outbox is replaced by a new database, with a new epoch; the rows salvaged
/// keep the numbers they were signed with, of the old epoch, and giving them up is
/// announced under that epoch.
#[tokio::test]
async fn salvaged_rows_keep_their_old_epoch_and_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = Outbox::open(&db(&dir), OutboxOptions::new(1 << 24)).expect("open");
    let old_epoch = outbox.epoch().to_owned();
    for n in 0..300 {
        numbered_sized(&outbox, n, 200, Priority::Bulk)
            .await
            .expect("stored");
    }
    drop(outbox);
    let len = std::fs::metadata(db(&dir)).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(db(&dir))
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate");

    let options = OutboxOptions {
        max_age: Some(Duration::from_secs(60)),
        ..OutboxOptions::new(1 << 24)
    };
    let late: Clock = Arc::new(|| i64::MAX / 2);
    let outbox = Outbox::open_with_clock(&db(&dir), options, late).expect("opens fresh");
    assert_ne!(
        outbox.epoch(),
        old_epoch,
        "a replaced database is a new epoch"
    );
    assert_eq!(
        numbered(&outbox, 0, Priority::Control).await.sequence.seq,
        1
    );
    // Everything salvaged is old by this clock (it keeps its age): expired on the next
    // read, unlike the event just pushed.
    let salvaged = outbox.stats().depth - 1;
    assert!(salvaged > 0, "the intact half is readable");
    let _ = outbox.next_batch(1).await;
    assert_eq!(outbox.stats().depth, 1);
    let losses = outbox
        .losses(LossKind::Expired, 1000)
        .await
        .expect("reads")
        .expect("losses");
    assert_eq!(losses.epoch.as_deref(), Some(old_epoch.as_str()));
    let count: u64 = losses.ranges.iter().map(|(a, b)| b - a + 1).sum();
    assert_eq!(count, salvaged, "{:?}", losses.ranges);
    assert_eq!(
        losses.ranges[0].0, 1,
        "salvaged from the front: seq 1 first"
    );
}

fn seqs(batch: &[(u64, SignedEvent)]) -> Vec<u64> {
    batch.iter().map(|(s, _)| *s).collect()
}
