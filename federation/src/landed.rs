//! The root's record of what it landed, to drop copies that arrive after JetStream's
//! `duplicate_window` (an outbox resending after an outage of hours).
//!
//! Events that carry their source's order (`epoch` and `seq`, see docs/delivery.md, "Order
//! per source") are recorded per (source, epoch): the seq numbers landed, as ranges, in the
//! KV bucket [`LANDED_SEQ_BUCKET`] under the key `{source}.{epoch}`. A source's traffic is
//! nearly always one range (`1-48210`), so the record is a few bytes per source whatever
//! the event rate, it is looked up in memory, and it is written once per source per
//! [`FLUSH_EVERY`] instead of once per event. Events without them (from agents before
//! sequence numbers, or published by the CLI) are recorded one key per event_id in
//! [`LANDED_BUCKET`], as before.
//!
//! Several root instances share the ingress consumer and the buckets: each writes its
//! ranges with compare-and-set (merging on conflict), and re-reads a source's record before
//! deciding on an event it has not seen landed when its copy is older than a quarter of the
//! window. A copy that matters arrives more than a window after its first landing, by which
//! time the instance that landed it wrote it down (within [`FLUSH_EVERY`]), so the re-read
//! finds it.
//!
//! What is recorded is written after the landing's PubAck: a crash in between leaves the
//! copies to JetStream's window (which the redelivery reaches within the consumer's ack
//! wait), as for the per-event record.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::StorageType;
use bytes::Bytes;
use futures::future::join_all;
use tracing::debug;

use crate::envelope::Envelope;
use crate::link::Link;

/// The root's KV bucket of landed event_ids (key = event_id, value `1`), for events without
/// a sequence number.
pub const LANDED_BUCKET: &str = "NEXUS_LANDED";
/// The root's KV bucket of landed sequence numbers: key `{source}.{epoch}`, value the
/// ranges landed (`1-500,502-900`).
pub const LANDED_SEQ_BUCKET: &str = "NEXUS_LANDED_SEQ";
/// How often what was landed is written down (at most once per source per period).
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Records kept in memory beyond which the least recently used clean ones are forgotten
/// (they are read again from the bucket when their source sends again).
const MAX_CACHED: usize = 100_000;
/// A clean record unused this long is forgotten.
const IDLE: Duration = Duration::from_secs(600);

/// The seq numbers landed of one (source, epoch): sorted, disjoint, non-adjacent inclusive
/// ranges.
///
/// Bounded to [`SeqRanges::MAX_RANGES`]: beyond it, the range with the fewest numbers (the
/// lowest among equals) is forgotten. Forgetting is the safe side: a copy of a forgotten
/// number that arrives after the journal's `duplicate_window` lands again (a duplicate,
/// which consumers drop by event_id), whereas counting a gap as landed would drop an event
/// that never landed. Gaps are not only numbers the source gave up: events still on their
/// way leave them anywhere below the highest number landed (the redeliveries of a batch
/// whose publishes partly failed while a cluster elected a new leader; a backlog of Bulk
/// events sent after the source's newer Control events), and filling the lowest gap lost
/// them (tests/tests/root_cluster.rs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqRanges(Vec<(u64, u64)>);

impl SeqRanges {
    /// The most ranges kept.
    pub const MAX_RANGES: usize = 256;

    /// Whether `n` landed.
    pub fn contains(&self, n: u64) -> bool {
        let at = self.0.partition_point(|&(_, last)| last < n);
        self.0.get(at).is_some_and(|&(first, _)| first <= n)
    }

    /// Adds `n`; `false` if it was there already.
    pub fn insert(&mut self, n: u64) -> bool {
        if self.contains(n) {
            return false;
        }
        self.union_range(n, n);
        true
    }

    /// Adds every number of `other`.
    pub fn union(&mut self, other: &SeqRanges) {
        for &(first, last) in &other.0 {
            self.union_range(first, last);
        }
    }

    fn union_range(&mut self, first: u64, last: u64) {
        // Ranges touching [first - 1, last + 1] merge with it.
        let lo = first.saturating_sub(1);
        let hi = last.saturating_add(1);
        let start = self.0.partition_point(|&(_, l)| l < lo);
        let end = self.0.partition_point(|&(f, _)| f <= hi);
        let (mut first, mut last) = (first, last);
        if start < end {
            first = first.min(self.0[start].0);
            last = last.max(self.0[end - 1].1);
        }
        self.0.splice(start..end, [(first, last)]);
        while self.0.len() > Self::MAX_RANGES {
            let smallest = self
                .0
                .iter()
                .enumerate()
                .min_by_key(|(_, &(first, last))| last - first)
                .map_or(0, |(at, _)| at);
            self.0.remove(smallest);
        }
    }

    /// The ranges, lowest first.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// `1-500,502,504-900`.
    pub fn encode(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(first, last)| {
                if first == last {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                }
            })
            .collect();
        parts.join(",")
    }

    /// Reads [`Self::encode`]'s form; `None` for anything else (ranges out of order,
    /// overlapping, or too many).
    pub fn parse(text: &str) -> Option<Self> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        if text.is_empty() {
            return Some(Self::default());
        }
        for part in text.split(',') {
            let (first, last) = match part.split_once('-') {
                Some((first, last)) => (first.parse().ok()?, last.parse().ok()?),
                None => {
                    let n = part.parse().ok()?;
                    (n, n)
                }
            };
            if first > last
                || ranges
                    .last()
                    .is_some_and(|&(_, l)| l.saturating_add(1) >= first)
            {
                return None;
            }
            ranges.push((first, last));
        }
        (ranges.len() <= Self::MAX_RANGES).then_some(Self(ranges))
    }
}

/// How the root recognizes one event among those it landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LandedKey {
    /// By its source's order: the record `{source}.{epoch}` and the event's number in it.
    Seq {
        /// `{source}.{epoch}`.
        record: String,
        /// The event's `seq`.
        seq: u64,
    },
    /// By event_id (events without a sequence number).
    Id(String),
}

impl LandedKey {
    /// The key of a verified envelope.
    pub fn of(envelope: &Envelope) -> Self {
        match (&envelope.epoch, envelope.seq) {
            (Some(epoch), Some(seq)) => LandedKey::Seq {
                record: format!("{}.{epoch}", envelope.source),
                seq,
            },
            _ => LandedKey::Id(envelope.event_id.clone()),
        }
    }
}

#[derive(Debug)]
struct Record {
    ranges: SeqRanges,
    /// The bucket revision `ranges` includes; `None`: not in the bucket (yet).
    revision: Option<u64>,
    fetched: Instant,
    used: Instant,
    /// Bumped by every insert; the flush clears `dirty` only if it wrote the latest.
    generation: u64,
    dirty: bool,
}

/// The landed-event record of a root (see the module docs).
#[derive(Debug)]
pub struct Landed {
    ids: kv::Store,
    seqs: kv::Store,
    /// A record read longer ago than this is read again before an unseen number is let
    /// through.
    refetch_after: Duration,
    records: Mutex<HashMap<String, Record>>,
    last_flush: Mutex<Instant>,
}

impl Landed {
    /// Opens (or creates) both buckets on `link`, entries kept `ttl` after their last
    /// update, each kept by `replicas` servers of the cluster (`ingress.replicas`: an
    /// existing bucket is scaled to it); `window` is the landing's `duplicate_window`.
    pub async fn open(
        link: &Link,
        ttl: Duration,
        window: Duration,
        replicas: usize,
    ) -> Result<Self, String> {
        let ids = bucket(link, LANDED_BUCKET, ttl, replicas).await?;
        let seqs = bucket(link, LANDED_SEQ_BUCKET, ttl, replicas).await?;
        Ok(Self {
            ids,
            seqs,
            refetch_after: window / 4,
            records: Mutex::new(HashMap::new()),
            last_flush: Mutex::new(Instant::now()),
        })
    }

    /// For each key, whether that event landed before. A lookup that fails answers `false`
    /// (JetStream's window still catches near copies).
    pub async fn seen(&self, keys: &[&LandedKey]) -> Vec<bool> {
        // Records to (re)read: unknown here, or read too long ago to trust a miss.
        let mut stale: Vec<&str> = Vec::new();
        {
            let records = self.lock();
            for key in keys {
                if let LandedKey::Seq { record, seq } = key {
                    let fresh = records.get(record.as_str()).is_some_and(|r| {
                        r.ranges.contains(*seq) || r.fetched.elapsed() < self.refetch_after
                    });
                    if !fresh && !stale.contains(&record.as_str()) {
                        stale.push(record);
                    }
                }
            }
        }
        let fetched = join_all(stale.iter().map(|record| self.seqs.entry(*record))).await;
        {
            let mut records = self.lock();
            let now = Instant::now();
            for (record, entry) in stale.iter().zip(fetched) {
                let Ok(entry) = entry else { continue };
                let stored = entry.as_ref().map(|e| {
                    let ranges = std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(SeqRanges::parse);
                    if ranges.is_none() {
                        debug!(record, "Unreadable landed record; treated as empty.");
                    }
                    (ranges.unwrap_or_default(), e.revision)
                });
                let cached = records.entry((*record).to_owned()).or_insert(Record {
                    ranges: SeqRanges::default(),
                    revision: None,
                    fetched: now,
                    used: now,
                    generation: 0,
                    dirty: false,
                });
                if let Some((ranges, revision)) = stored {
                    cached.ranges.union(&ranges);
                    cached.revision = Some(revision);
                }
                cached.fetched = now;
            }
        }
        let ids: Vec<&str> = keys
            .iter()
            .filter_map(|key| match key {
                LandedKey::Id(id) => Some(id.as_str()),
                LandedKey::Seq { .. } => None,
            })
            .collect();
        let mut by_id = join_all(ids.iter().map(|id| self.ids.get(*id)))
            .await
            .into_iter()
            .map(|found| matches!(found, Ok(Some(_))));
        let mut records = self.lock();
        let now = Instant::now();
        keys.iter()
            .map(|key| match key {
                LandedKey::Seq { record, seq } => {
                    records.get_mut(record.as_str()).is_some_and(|r| {
                        r.used = now;
                        r.ranges.contains(*seq)
                    })
                }
                LandedKey::Id(_) => by_id.next().unwrap_or(false),
            })
            .collect()
    }

    /// Records these events as landed: numbers in memory (written by [`Self::flush`]),
    /// event_ids in their bucket at once. Returns the number of event_ids that could not
    /// be written.
    pub async fn record(&self, keys: &[&LandedKey]) -> usize {
        let mut ids = Vec::new();
        {
            let mut records = self.lock();
            let now = Instant::now();
            for key in keys {
                match key {
                    LandedKey::Seq { record, seq } => {
                        let cached = records.entry(record.clone()).or_insert(Record {
                            ranges: SeqRanges::default(),
                            revision: None,
                            // Never read: the first miss of a copy reads it.
                            fetched: now.checked_sub(self.refetch_after).unwrap_or(now),
                            used: now,
                            generation: 0,
                            dirty: false,
                        });
                        if cached.ranges.insert(*seq) {
                            cached.generation += 1;
                            cached.dirty = true;
                        }
                        cached.used = now;
                    }
                    LandedKey::Id(id) => ids.push(id.as_str()),
                }
            }
        }
        let puts = join_all(
            ids.iter()
                .map(|id| self.ids.put(*id, Bytes::from_static(b"1"))),
        )
        .await;
        puts.into_iter().filter(Result::is_err).count()
    }

    /// Whether [`Self::flush`] is due: something unwritten and [`FLUSH_EVERY`] passed.
    pub fn flush_due(&self) -> bool {
        let elapsed = self
            .last_flush
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed();
        elapsed >= FLUSH_EVERY && self.lock().values().any(|r| r.dirty)
    }

    /// Writes every record that changed (compare-and-set, merging with what another
    /// instance wrote meanwhile), and forgets idle clean records. Returns how many records
    /// could not be written (they stay pending for the next flush).
    pub async fn flush(&self) -> usize {
        *self
            .last_flush
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        let pending: Vec<(String, SeqRanges, Option<u64>, u64)> = self
            .lock()
            .iter()
            .filter(|(_, r)| r.dirty)
            .map(|(k, r)| (k.clone(), r.ranges.clone(), r.revision, r.generation))
            .collect();
        let written = join_all(
            pending
                .iter()
                .map(|(key, ranges, revision, _)| self.write(key, ranges.clone(), *revision)),
        )
        .await;
        let mut failed = 0;
        let mut records = self.lock();
        for ((key, _, _, generation), result) in pending.iter().zip(written) {
            let Some(record) = records.get_mut(key) else {
                continue;
            };
            match result {
                Ok((ranges, revision)) => {
                    record.ranges.union(&ranges);
                    record.revision = Some(revision);
                    record.fetched = Instant::now();
                    if record.generation == *generation {
                        record.dirty = false;
                    }
                }
                Err(error) => {
                    failed += 1;
                    debug!(record = %key, %error, "Cannot write a landed record yet.");
                }
            }
        }
        records.retain(|_, r| r.dirty || r.used.elapsed() < IDLE);
        if records.len() > MAX_CACHED {
            let mut clean: Vec<(Instant, String)> = records
                .iter()
                .filter(|(_, r)| !r.dirty)
                .map(|(k, r)| (r.used, k.clone()))
                .collect();
            clean.sort();
            let excess = records.len() - MAX_CACHED;
            for (_, key) in clean.into_iter().take(excess) {
                records.remove(&key);
            }
        }
        failed
    }

    /// Writes `ranges` under `key` expecting `revision`; on a conflict, merges with what is
    /// there and tries again. Returns what was written and its revision.
    async fn write(
        &self,
        key: &str,
        mut ranges: SeqRanges,
        mut revision: Option<u64>,
    ) -> Result<(SeqRanges, u64), String> {
        for _ in 0..4 {
            let value = Bytes::from(ranges.encode());
            let written = match revision {
                Some(revision) => self
                    .seqs
                    .update(key, value, revision)
                    .await
                    .map_err(|e| e.to_string()),
                None => self
                    .seqs
                    .create(key, value)
                    .await
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(revision) => return Ok((ranges, revision)),
                Err(conflict) => {
                    // Written by another instance (or expired): merge with what is there.
                    let entry = self.seqs.entry(key).await.map_err(|e| e.to_string())?;
                    match entry {
                        Some(entry) => {
                            let theirs = std::str::from_utf8(&entry.value)
                                .ok()
                                .and_then(SeqRanges::parse)
                                .unwrap_or_default();
                            ranges.union(&theirs);
                            revision = Some(entry.revision);
                        }
                        None if revision.is_some() => revision = None,
                        None => return Err(conflict),
                    }
                }
            }
        }
        Err(format!("record {key} kept changing under us"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn bucket(
    link: &Link,
    name: &str,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, String> {
    let config = kv::Config {
        bucket: name.to_owned(),
        history: 1,
        max_age: ttl,
        storage: StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    crate::replicas::ensure_bucket(link.jetstream(), config, "ingress.replicas").await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(numbers: &[u64]) -> SeqRanges {
        let mut r = SeqRanges::default();
        for &n in numbers {
            r.insert(n);
        }
        r
    }

    #[test]
    fn numbers_merge_into_ranges_in_any_order() {
        let r = ranges(&[5, 1, 3, 2, 9, 4, 10, 8]);
        assert_eq!(r.ranges(), &[(1, 5), (8, 10)]);
        assert!(r.contains(1) && r.contains(5) && r.contains(9));
        assert!(!r.contains(0) && !r.contains(6) && !r.contains(7) && !r.contains(11));
        assert_eq!(r.encode(), "1-5,8-10");
        assert_eq!(SeqRanges::parse("1-5,8-10"), Some(r.clone()));
        let mut joined = r;
        joined.insert(7);
        joined.insert(6);
        assert_eq!(joined.ranges(), &[(1, 10)]);
        assert!(!joined.insert(3));
    }

    #[test]
    fn a_union_is_the_set_union() {
        let mut a = ranges(&[1, 2, 3, 10, 11]);
        let b = ranges(&[4, 5, 9, 20]);
        a.union(&b);
        assert_eq!(a.ranges(), &[(1, 5), (9, 11), (20, 20)]);
        assert_eq!(a.encode(), "1-5,9-11,20");
    }

    #[test]
    fn too_many_gaps_forget_the_smallest_ranges_and_never_fill_a_gap() {
        let mut r = ranges(&(1..=1000).collect::<Vec<_>>());
        let top = 1000 + 2 * (SeqRanges::MAX_RANGES as u64 + 2);
        for n in (1002..=top).step_by(2) {
            r.insert(n);
        }
        assert_eq!(r.ranges().len(), SeqRanges::MAX_RANGES);
        // The big range stays; the lowest singletons were forgotten, not merged.
        assert_eq!(r.ranges()[0], (1, 1000));
        assert!(!r.contains(1002) && !r.contains(1004) && !r.contains(1006));
        assert!(r.contains(top) && !r.contains(top - 1));
        // No gap is ever counted as landed.
        for gap in (1001..top).step_by(2) {
            assert!(!r.contains(gap), "{gap}");
        }
        // A union beyond the bound forgets too, and the result still parses.
        let mut other = SeqRanges::default();
        for n in (top + 2..top + 40).step_by(2) {
            other.insert(n);
        }
        r.union(&other);
        assert_eq!(r.ranges().len(), SeqRanges::MAX_RANGES);
        assert_eq!(SeqRanges::parse(&r.encode()), Some(r.clone()));
        assert!(r.contains(500) && !r.contains(top + 1));
    }

    #[test]
    fn anything_but_the_encoding_is_refused() {
        for bad in [
            "x",
            "5-1",
            "1-3,2-4",
            "4,2",
            "1-3,4",
            "-",
            "1,,2",
            "18446744073709551616",
        ] {
            assert_eq!(SeqRanges::parse(bad), None, "{bad}");
        }
        assert_eq!(SeqRanges::parse(""), Some(SeqRanges::default()));
        assert_eq!(
            SeqRanges::parse("18446744073709551615").map(|r| r.ranges().to_vec()),
            Some(vec![(u64::MAX, u64::MAX)])
        );
    }
}
