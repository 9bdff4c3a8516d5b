//! Tests of the dead-letter store: bounds, filters, replay bookkeeping, damaged files.
use super::*;
use time::macros::datetime;

fn entry(reason: &str, body: &[u8], at: OffsetDateTime) -> DeadLetter {
    DeadLetter::new(
        STAGE_INGRESS,
        reason,
        format!("{reason} detail"),
        "_nexus.ingress.nexus.salon-001.iot.sensor_data",
        vec![
            (
                "Nats-Msg-Id".to_owned(),
                "01J0000000000000000000000".to_owned(),
            ),
            ("Nexus-Sig".to_owned(), "abc".to_owned()),
        ],
        body.to_vec(),
        at,
    )
}

fn store(dir: &tempfile::TempDir, max_bytes: u64, max_entries: u64) -> DeadLetters {
    DeadLetters::open(&dir.path().join("deadletter.db"), max_bytes, max_entries).expect("open")
}

const T0: OffsetDateTime = datetime!(2026-05-01 10:00:00.123 UTC);

/// What is recorded comes back whole, with an id; a reopen keeps it.
#[tokio::test]
async fn a_recorded_entry_comes_back_whole_after_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let given = entry("bad_signature", b"{\"x\":1}", T0);
    let id = store(&dir, 1 << 20, 100)
        .record(given.clone())
        .await
        .expect("record");
    let got = store(&dir, 1 << 20, 100)
        .get(id)
        .expect("get")
        .expect("present");
    assert_eq!(got, DeadLetter { id, ..given });
    assert!(store(&dir, 1 << 20, 100)
        .get(id + 1)
        .expect("get")
        .is_none());
}

/// The same message failing the same way again bumps the entry instead of adding one;
/// another reason is another entry.
#[tokio::test]
async fn the_same_failure_again_bumps_attempts_instead_of_adding_an_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dl = store(&dir, 1 << 20, 100);
    let first = dl
        .record(entry("bad_signature", b"same", T0))
        .await
        .expect("record");
    let mut again = entry("bad_signature", b"same", T0 + time::Duration::minutes(5));
    again.detail = "newer detail".into();
    let second = dl.record(again).await.expect("record");
    assert_eq!(first, second);
    let got = dl.get(first).expect("get").expect("present");
    assert_eq!(got.attempts, 2);
    assert_eq!(got.first_at, T0);
    assert_eq!(got.last_at, T0 + time::Duration::minutes(5));
    assert_eq!(got.detail, "newer detail");
    let other = dl
        .record(entry("malformed", b"same", T0))
        .await
        .expect("record");
    assert_ne!(other, first);
    assert_eq!(dl.stats().expect("stats").entries, 2);
}

/// Past `max_entries`, the oldest entries go, the newest stays, and evictions are counted.
#[tokio::test]
async fn the_oldest_entries_are_evicted_past_max_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dl = store(&dir, 1 << 20, 3);
    let mut ids = Vec::new();
    for n in 0..5u8 {
        ids.push(
            dl.record(entry("malformed", &[n], T0))
                .await
                .expect("record"),
        );
    }
    let kept: Vec<u64> = dl
        .list(&Filter::default())
        .expect("list")
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(kept, ids[2..]);
    let stats = dl.stats().expect("stats");
    assert_eq!((stats.entries, stats.evicted), (3, 2));
}

/// Past `max_bytes`, the oldest entries go; an entry larger than the bound alone is kept.
#[tokio::test]
async fn the_oldest_entries_are_evicted_past_max_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Each entry counts its body (400) plus headers, detail and subject (~140).
    let dl = store(&dir, 1200, 100);
    let a = dl
        .record(entry("malformed", &[1; 400], T0))
        .await
        .expect("record");
    let b = dl
        .record(entry("malformed", &[2; 400], T0))
        .await
        .expect("record");
    let c = dl
        .record(entry("malformed", &[3; 400], T0))
        .await
        .expect("record");
    let kept: Vec<u64> = dl
        .list(&Filter::default())
        .expect("list")
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(kept, vec![b, c], "{a} evicted");
    assert!(dl.stats().expect("stats").bytes <= 1200);
    let big = dl
        .record(entry("oversized", &[4; 5000], T0))
        .await
        .expect("record");
    let kept: Vec<u64> = dl
        .list(&Filter::default())
        .expect("list")
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(kept, vec![big]);
}

/// A body over 1 MiB keeps its first 1 MiB and its original size, and says so.
#[tokio::test]
async fn a_body_over_the_cap_is_truncated_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dl = store(&dir, 1 << 30, 100);
    let body = vec![7u8; MAX_BODY + 10];
    let id = dl
        .record(entry("oversized", &body, T0))
        .await
        .expect("record");
    let got = dl.get(id).expect("get").expect("present");
    assert_eq!(got.body.len(), MAX_BODY);
    assert_eq!(got.body_size, (MAX_BODY + 10) as u64);
    assert!(got.is_truncated());
}

/// `list` filters by reason, by time and keeps the newest `limit`, oldest first.
#[tokio::test]
async fn list_filters_by_reason_time_and_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dl = store(&dir, 1 << 20, 100);
    let hour = time::Duration::hours(1);
    let a = dl
        .record(entry("malformed", b"a", T0))
        .await
        .expect("record");
    let b = dl
        .record(entry("bad_signature", b"b", T0 + hour))
        .await
        .expect("record");
    let c = dl
        .record(entry("malformed", b"c", T0 + hour * 2))
        .await
        .expect("record");
    let ids = |filter: Filter| -> Vec<u64> {
        dl.list(&filter)
            .expect("list")
            .iter()
            .map(|e| e.id)
            .collect()
    };
    assert_eq!(ids(Filter::default()), vec![a, b, c]);
    assert_eq!(
        ids(Filter {
            reason: Some("malformed".into()),
            ..Filter::default()
        }),
        vec![a, c]
    );
    assert_eq!(
        ids(Filter {
            since: Some(T0 + hour),
            ..Filter::default()
        }),
        vec![b, c]
    );
    assert_eq!(
        ids(Filter {
            limit: Some(2),
            ..Filter::default()
        }),
        vec![b, c]
    );
    let summary = &dl.list(&Filter::default()).expect("list")[0];
    assert_eq!(
        (summary.reason.as_str(), summary.body_size, summary.attempts),
        ("malformed", 1, 1)
    );
}

/// `remove` deletes by id; `purge` deletes before a time, or everything.
#[tokio::test]
async fn remove_and_purge_delete_what_they_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dl = store(&dir, 1 << 20, 100);
    let day = time::Duration::days(1);
    let a = dl
        .record(entry("malformed", b"a", T0))
        .await
        .expect("record");
    let b = dl
        .record(entry("malformed", b"b", T0 + day))
        .await
        .expect("record");
    let c = dl
        .record(entry("malformed", b"c", T0 + day * 2))
        .await
        .expect("record");
    assert_eq!(dl.remove(&[b, 999]).expect("remove"), 1);
    assert_eq!(
        dl.purge(Some(T0 + day)).expect("purge"),
        1,
        "only a is older"
    );
    assert!(dl.get(a).expect("get").is_none());
    assert!(dl.get(c).expect("get").is_some());
    assert_eq!(dl.purge(None).expect("purge"), 1);
    assert_eq!(dl.stats().expect("stats").entries, 0);
}

/// An operator command on a node without a store gets a clear error, and creates nothing.
#[test]
fn opening_a_missing_store_for_a_command_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("deadletter.db");
    let error = DeadLetters::open_existing(&path).expect_err("missing");
    assert!(
        matches!(error, DeadLetterError::Store(StoreError::Missing { .. })),
        "{error}"
    );
    assert!(error.to_string().contains("does not exist yet"), "{error}");
    assert!(!path.exists());
}

/// The agent's handle and a command's handle share the file: what one records, the other
/// sees and can remove.
#[tokio::test]
async fn a_command_sees_and_removes_what_the_agent_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = store(&dir, 1 << 20, 100);
    let id = agent
        .record(entry("malformed", b"a", T0))
        .await
        .expect("record");
    let command = DeadLetters::open_existing(agent.path()).expect("open existing");
    assert_eq!(command.remove(&[id]).expect("remove"), 1);
    assert!(agent.get(id).expect("get").is_none());
}

/// A damaged file is moved aside (never deleted) and a fresh store starts.
#[tokio::test]
async fn a_garbage_file_is_moved_aside_and_a_fresh_store_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("deadletter.db");
    let garbage = vec![0x5au8; 8192];
    std::fs::write(&path, &garbage).expect("write");
    let dl = DeadLetters::open(&path, 1 << 20, 100).expect("opens fresh");
    assert_eq!(dl.stats().expect("stats").entries, 0);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains("deadletter.db.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).expect("read"), garbage);
    dl.record(entry("malformed", b"a", T0))
        .await
        .expect("record works");
}

/// The entries of one event are found by its id (the `Nats-Msg-Id` header), and only
/// those: not another event's, nor an id that merely starts the same.
#[tokio::test]
async fn an_events_entries_are_found_by_its_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dl = store(&dir, 1 << 20, 100);
    let ours = dl
        .record(entry("bad_signature", b"ours", T0))
        .await
        .expect("record");
    let mut other = entry("acl_denied", b"other", T0);
    other.headers[0].1 = "01J0000000000000000000000-longer".to_owned();
    dl.record(other).await.expect("record");
    let found = dl.find_event("01J0000000000000000000000").expect("find");
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].id, found[0].reason.as_str()),
        (ours, "bad_signature")
    );
    assert!(dl.find_event("nope").expect("find").is_empty());
}
