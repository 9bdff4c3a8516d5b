//! The outbox table and every statement on it. Synchronous and single-threaded: only the
//! writer thread ([`super::worker`]) owns a [`Store`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use nexus_policies::{PublicKey, Signature};
use nexus_wire::envelope::{Encoding, Envelope, EnvelopeError, Sequence, MAX_ENVELOPE_BYTES};
use nexus_wire::provenance::SignedEvent;
use rusqlite::{params, Connection, OptionalExtension as _, Row};
use tracing::error;

use super::{Clock, LossKind, Priority, Seal, Waiting, WhenFull};
use crate::sqlite::{self, Schema, StoreError};
use losses::{kind_of, read_or_make_epoch, GivenUp};

mod losses;

/// The tables that version 2 added: the epoch and the numbers given up. The row of
/// `outbox_meta` is written by [`Store::new`] (SQL cannot make a UUIDv7).
macro_rules! tables_of_version_2 {
    () => {
        "
        CREATE TABLE outbox_meta (
            id          INTEGER PRIMARY KEY CHECK (id = 1),
            epoch       TEXT    NOT NULL,
            last_number INTEGER NOT NULL
        );
        CREATE TABLE outbox_losses (
            id          INTEGER PRIMARY KEY,
            kind        INTEGER NOT NULL,
            epoch       TEXT,
            first       INTEGER,
            last        INTEGER,
            count       INTEGER NOT NULL
        );
        "
    };
}

/// The layout (see the module docs of [`super`]).
pub(crate) const SCHEMA: Schema = Schema {
    version: 2,
    create: concat!(
        "
        CREATE TABLE outbox (
            seq         INTEGER PRIMARY KEY AUTOINCREMENT,
            priority    INTEGER NOT NULL,
            enqueued_ms INTEGER NOT NULL,
            subject     TEXT    NOT NULL,
            event_id    TEXT    NOT NULL,
            encoding    TEXT    NOT NULL,
            body        BLOB    NOT NULL,
            signer      TEXT    NOT NULL,
            signature   TEXT    NOT NULL,
            number      INTEGER,
            epoch       TEXT
        );
        CREATE INDEX outbox_order ON outbox (priority, seq);
        ",
        tables_of_version_2!()
    ),
    // 1 → 2: rows stored before carry no number (`number` NULL); the epoch is made at open.
    upgrades: &[concat!(
        "
        ALTER TABLE outbox ADD COLUMN number INTEGER;
        ALTER TABLE outbox ADD COLUMN epoch TEXT;
        ",
        tables_of_version_2!()
    )],
};

const COLUMNS: &str =
    "seq, priority, enqueued_ms, subject, event_id, encoding, body, signer, signature";

/// Counters the handle publishes after every change (depth and bytes per priority).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub control: u64,
    pub bulk: u64,
    pub control_bytes: u64,
    pub bulk_bytes: u64,
    /// `enqueued_ms` of the lowest seq.
    pub oldest_ms: Option<i64>,
    pub dropped: u64,
    pub expired: u64,
    /// Events given up and not announced yet (rows of `outbox_losses`), per kind.
    pub unannounced_dropped: u64,
    pub unannounced_expired: u64,
}

impl Snapshot {
    pub fn depth(&self) -> u64 {
        self.control + self.bulk
    }

    fn unannounced(&mut self, kind: LossKind) -> &mut u64 {
        match kind {
            LossKind::Dropped => &mut self.unannounced_dropped,
            LossKind::Expired => &mut self.unannounced_expired,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.control_bytes + self.bulk_bytes
    }

    fn add(&mut self, priority: Priority, size: u64) {
        match priority {
            Priority::Control => {
                self.control += 1;
                self.control_bytes += size;
            }
            Priority::Bulk => {
                self.bulk += 1;
                self.bulk_bytes += size;
            }
        }
    }

    fn remove(&mut self, priority: Priority, size: u64) {
        match priority {
            Priority::Control => {
                self.control = self.control.saturating_sub(1);
                self.control_bytes = self.control_bytes.saturating_sub(size);
            }
            Priority::Bulk => {
                self.bulk = self.bulk.saturating_sub(1);
                self.bulk_bytes = self.bulk_bytes.saturating_sub(size);
            }
        }
    }
}

/// What a read hands out.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Control entries first, then Bulk.
    pub events: Vec<(u64, SignedEvent)>,
    /// How many of `events` are Bulk (the tail).
    pub bulk: usize,
}

/// One write of a group commit, in arrival order.
pub(crate) enum Write {
    /// An event sealed already (no number).
    Push {
        event: Box<SignedEvent>,
        priority: Priority,
    },
    /// An event sealed here, with the next number; `settles` are `outbox_losses` rows
    /// this event announces, removed with it.
    PushNew {
        /// Taken when the write is applied.
        seal: Option<Seal>,
        priority: Priority,
        settles: Vec<i64>,
    },
    Ack(Vec<u64>),
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Write::Push { event, priority } => f
                .debug_struct("Push")
                .field("event_id", &event.event_id)
                .field("priority", priority)
                .finish(),
            Write::PushNew {
                priority, settles, ..
            } => f
                .debug_struct("PushNew")
                .field("priority", priority)
                .field("settles", settles)
                .finish_non_exhaustive(),
            Write::Ack(seqs) => f.debug_tuple("Ack").field(seqs).finish(),
        }
    }
}

/// What became of a push in a committed group.
#[derive(Debug)]
pub(crate) enum PushOutcome {
    Stored(u64),
    Numbered {
        entry: u64,
        sequence: Sequence,
        event: Box<SignedEvent>,
    },
    Full {
        bytes: u64,
        max_bytes: u64,
    },
    /// The seal failed: nothing stored, no number used.
    Unsealed(EnvelopeError),
}

/// The policy a store enforces.
#[derive(Clone)]
pub(crate) struct Limits {
    pub max_bytes: u64,
    pub when_full: WhenFull,
    pub max_age_ms: Option<i64>,
    pub clock: Clock,
}

/// The outbox table behind one connection.
pub(crate) struct Store {
    conn: Connection,
    limits: Limits,
    snap: Snapshot,
    /// This database's epoch (`outbox_meta`).
    epoch: String,
    /// The highest number committed in it (`outbox_meta.last_number`, or above while a
    /// transaction is open).
    last_number: u64,
    /// The highest `outbox_losses` id [`Store::losses`] handed out: rows up to it may be
    /// in an announcement being made, so they are never extended (settling one deletes
    /// exactly what was read of it).
    handed_out: i64,
}

fn priority_of(value: i64) -> Priority {
    // Anything but 0 is Bulk, so that a row with an unexpected value is still read.
    if value == 0 {
        Priority::Control
    } else {
        Priority::Bulk
    }
}

fn priority_value(priority: Priority) -> i64 {
    match priority {
        Priority::Control => 0,
        Priority::Bulk => 1,
    }
}

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A row as stored.
pub(crate) struct StoredRow {
    pub seq: i64,
    pub priority: i64,
    pub enqueued_ms: i64,
    pub event: SignedEvent,
    /// The event's `seq`, if it has one.
    pub number: Option<i64>,
    /// The event's `epoch` when it is not the store's own (salvaged rows); `None` for the
    /// own epoch or no number.
    pub epoch: Option<String>,
}

/// Decodes a row selected with [`COLUMNS`]; `Ok(None)` if it does not hold a sound event.
fn decode_row(row: &Row<'_>) -> rusqlite::Result<(i64, Option<StoredRow>)> {
    let seq: i64 = row.get(0)?;
    let encoding: String = row.get(5)?;
    let signer: String = row.get(7)?;
    let signature: String = row.get(8)?;
    let decoded = (|| {
        let encoding = Encoding::from_content_type(Some(&encoding)).ok()?;
        let signer = PublicKey::parse(&signer).ok()?;
        let signature = Signature::parse(&signature).ok()?;
        Some((encoding, signer, signature))
    })();
    let Some((encoding, signer, signature)) = decoded else {
        return Ok((seq, None));
    };
    let body: Vec<u8> = row.get(6)?;
    Ok((
        seq,
        Some(StoredRow {
            seq,
            priority: row.get(1)?,
            enqueued_ms: row.get(2)?,
            event: SignedEvent {
                subject: row.get(3)?,
                event_id: row.get(4)?,
                encoding,
                body: body.into(),
                signer,
                signature,
            },
            number: None,
            epoch: None,
        }),
    ))
}

/// Inserts a row; `explicit_seq` keeps `row.seq` (salvage), otherwise the next seq is
/// assigned (a NULL key of an AUTOINCREMENT column).
fn insert(conn: &Connection, row: &StoredRow, explicit_seq: bool) -> rusqlite::Result<i64> {
    let event = &row.event;
    conn.prepare_cached(
        "INSERT INTO outbox (seq, priority, enqueued_ms, subject, event_id, encoding, body, signer, signature, number, epoch) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        explicit_seq.then_some(row.seq),
        row.priority,
        row.enqueued_ms,
        event.subject,
        event.event_id,
        event.encoding.content_type(),
        &event.body[..],
        event.signer.to_string(),
        event.signature.to_string(),
        row.number,
        row.epoch,
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Copies the readable rows of a damaged outbox into a fresh one: rows before and after the
/// damaged region (see [`sqlite::salvage_rows`]) whose event still decodes and whose
/// signature still verifies over its body, with their seq, priority and age. Returns
/// (kept, refused).
pub(crate) fn salvage(damaged: &std::path::Path, into: &Connection) -> (u64, u64) {
    let (rows, mut refused) = sqlite::salvage_rows(
        damaged,
        &format!("SELECT {COLUMNS} FROM outbox ORDER BY seq"),
        &format!("SELECT {COLUMNS} FROM outbox ORDER BY seq DESC"),
        |row| {
            let (seq, stored) = decode_row(row)?;
            Ok(stored
                .filter(|s| {
                    s.event
                        .signer
                        .verify(&s.event.body, &s.event.signature)
                        .is_ok()
                })
                .map(|s| (seq, s)))
        },
    );
    let mut kept = 0;
    for (_, mut row) in rows {
        // The body keeps the number it was signed with, in the damaged database's epoch
        // (this one has a new epoch): kept beside the row, so that giving it up later is
        // announced under that epoch.
        if let Some(sequence) =
            Envelope::decode(&row.event.body, row.event.encoding, MAX_ENVELOPE_BYTES)
                .ok()
                .and_then(|envelope| envelope.sequence())
        {
            row.number = i64::try_from(sequence.seq).ok();
            row.epoch = row.number.map(|_| sequence.epoch);
        }
        match insert(into, &row, true) {
            Ok(_) => kept += 1,
            Err(_) => refused += 1,
        }
    }
    (kept, refused)
}

impl Store {
    /// Takes over an open connection with the schema; reads the counters (one pass over the
    /// table).
    pub fn new(conn: Connection, limits: Limits) -> Result<Self, StoreError> {
        let mut snap = Snapshot::default();
        {
            let mut stmt = conn
                .prepare(
                    "SELECT priority <> 0, count(*), coalesce(sum(length(body)), 0) \
                     FROM outbox GROUP BY priority <> 0",
                )
                .map_err(StoreError::sqlite("count the outbox"))?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((
                        row.get::<_, bool>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(StoreError::sqlite("count the outbox"))?;
            for (bulk, count, bytes) in rows {
                let (count, bytes) = (count.max(0) as u64, bytes.max(0) as u64);
                if bulk {
                    snap.bulk = count;
                    snap.bulk_bytes = bytes;
                } else {
                    snap.control = count;
                    snap.control_bytes = bytes;
                }
            }
        }
        {
            let context = "count the unannounced losses";
            let mut stmt = conn
                .prepare("SELECT kind, coalesce(sum(count), 0) FROM outbox_losses GROUP BY kind")
                .map_err(StoreError::sqlite(context))?;
            let rows = stmt
                .query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(StoreError::sqlite(context))?;
            for (kind, count) in rows {
                *snap.unannounced(kind_of(kind)) += count.max(0) as u64;
            }
        }
        let (epoch, last_number) = read_or_make_epoch(&conn)?;
        let mut store = Self {
            conn,
            limits,
            snap,
            epoch,
            last_number,
            handed_out: 0,
        };
        store.refresh_oldest()?;
        Ok(store)
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snap
    }

    /// This database's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn now_ms(&self) -> i64 {
        (self.limits.clock)()
    }

    fn refresh_oldest(&mut self) -> Result<(), StoreError> {
        self.snap.oldest_ms = self
            .conn
            .prepare_cached("SELECT enqueued_ms FROM outbox ORDER BY seq LIMIT 1")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)).optional())
            .map_err(StoreError::sqlite("read the oldest entry"))?;
        Ok(())
    }

    /// Runs `f` in one transaction (one fsync at commit); on any failure rolls back and
    /// restores the counters.
    fn transaction<T>(
        &mut self,
        context: &'static str,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(StoreError::sqlite(context))?;
        let saved = (self.snap, self.last_number);
        let result = f(self).and_then(|value| {
            if self.last_number != saved.1 {
                // The high-water number commits with the rows that used it: a number
                // committed once is never handed out again, even after its row is gone.
                self.conn
                    .prepare_cached("UPDATE outbox_meta SET last_number = ?1 WHERE id = 1")
                    .and_then(|mut stmt| stmt.execute([seq_i64(self.last_number)]))
                    .map_err(StoreError::sqlite(context))?;
            }
            self.conn
                .execute_batch("COMMIT")
                .map_err(StoreError::sqlite(context))?;
            Ok(value)
        });
        if result.is_err() {
            // A failed COMMIT may already have rolled back: the error of this is moot.
            let _ = self.conn.execute_batch("ROLLBACK");
            (self.snap, self.last_number) = saved;
        }
        result
    }

    /// Applies a group of writes in one transaction: one outcome per write (`None` for
    /// acks). All or nothing: on `Err` nothing of the group is stored.
    ///
    /// A [`Write::PushNew`]'s seal is taken (and called) here: a retry after an `Err`
    /// finds it gone.
    pub fn commit(&mut self, writes: &mut [Write]) -> Result<Vec<Option<PushOutcome>>, StoreError> {
        self.transaction("commit to the outbox", |store| {
            let mut outcomes = Vec::with_capacity(writes.len());
            let mut removed = false;
            for write in writes.iter_mut() {
                match write {
                    Write::Push { event, priority } => {
                        let (outcome, evicted) = store.push_one(event, *priority)?;
                        removed |= evicted;
                        outcomes.push(Some(outcome));
                    }
                    Write::PushNew {
                        seal,
                        priority,
                        settles,
                    } => {
                        let outcome = match seal.take() {
                            Some(seal) => {
                                let (outcome, evicted) =
                                    store.push_new(seal, *priority, settles)?;
                                removed |= evicted;
                                outcome
                            }
                            None => PushOutcome::Unsealed(EnvelopeError::Encode(
                                "the event was handed to a commit that failed".into(),
                            )),
                        };
                        outcomes.push(Some(outcome));
                    }
                    Write::Ack(seqs) => {
                        removed |= store.delete(seqs)? > 0;
                        outcomes.push(None);
                    }
                }
            }
            if removed || store.snap.oldest_ms.is_none() {
                store.refresh_oldest()?;
            }
            Ok(outcomes)
        })
    }

    /// Makes room for `size` more bytes as the limits say: expires, then (DropOldest) drops
    /// the oldest Bulk. Returns `Err(Full)` if it does not fit, and whether older entries
    /// were removed.
    fn make_room(&mut self, size: u64) -> Result<(Result<(), PushOutcome>, bool), StoreError> {
        let max_bytes = self.limits.max_bytes;
        let mut removed = false;
        if self.snap.bytes() + size > max_bytes && self.limits.max_age_ms.is_some() {
            removed |= self.expire_in_tx()? > 0;
        }
        if self.snap.bytes() + size > max_bytes {
            let full = PushOutcome::Full {
                bytes: self.snap.bytes(),
                max_bytes,
            };
            match self.limits.when_full {
                WhenFull::Reject => return Ok((Err(full), removed)),
                WhenFull::DropOldest => {
                    // Only Bulk entries are dropped: if the event does not fit even without
                    // any, it is refused like under Reject.
                    if self.snap.control_bytes + size > max_bytes {
                        return Ok((Err(full), removed));
                    }
                    let need = self.snap.bytes() + size - max_bytes;
                    removed |= self.evict_bulk(need)? > 0;
                }
            }
        }
        Ok((Ok(()), removed))
    }

    /// Returns the outcome and whether older entries were removed to make room.
    fn push_one(
        &mut self,
        event: &SignedEvent,
        priority: Priority,
    ) -> Result<(PushOutcome, bool), StoreError> {
        let size = event.body.len() as u64;
        let (fits, removed) = self.make_room(size)?;
        if let Err(full) = fits {
            return Ok((full, removed));
        }
        let row = StoredRow {
            seq: 0,
            priority: priority_value(priority),
            enqueued_ms: self.now_ms(),
            event: event.clone(),
            number: None,
            epoch: None,
        };
        let seq = insert(&self.conn, &row, false).map_err(StoreError::sqlite("store an event"))?;
        self.snap.add(priority, size);
        Ok((PushOutcome::Stored(seq.max(0) as u64), removed))
    }

    /// Seals an event with the next number and stores it, settling the loss rows it
    /// announces. A seal that fails or an event that does not fit uses no number.
    fn push_new(
        &mut self,
        seal: Seal,
        priority: Priority,
        settles: &[i64],
    ) -> Result<(PushOutcome, bool), StoreError> {
        let sequence = Sequence {
            epoch: self.epoch.clone(),
            seq: self.last_number + 1,
        };
        let sealed = std::panic::catch_unwind(AssertUnwindSafe(|| seal(sequence.clone())))
            .unwrap_or_else(|_| Err(EnvelopeError::Encode("sealing the event panicked".into())));
        let event = match sealed {
            Ok(event) => event,
            Err(error) => return Ok((PushOutcome::Unsealed(error), false)),
        };
        let size = event.body.len() as u64;
        let (fits, removed) = self.make_room(size)?;
        if let Err(full) = fits {
            return Ok((full, removed));
        }
        let row = StoredRow {
            seq: 0,
            priority: priority_value(priority),
            enqueued_ms: self.now_ms(),
            event,
            number: Some(seq_i64(sequence.seq)),
            epoch: None,
        };
        let entry =
            insert(&self.conn, &row, false).map_err(StoreError::sqlite("store an event"))?;
        self.snap.add(priority, size);
        self.last_number = sequence.seq;
        self.settle(settles)?;
        Ok((
            PushOutcome::Numbered {
                entry: entry.max(0) as u64,
                sequence,
                event: Box::new(row.event),
            },
            removed,
        ))
    }

    /// Deletes the oldest Bulk entries until `need` bytes are free; returns how many.
    fn evict_bulk(&mut self, need: u64) -> Result<u64, StoreError> {
        let context = "drop the oldest bulk entries";
        let mut freed = 0u64;
        let mut last = None;
        let mut gone: Vec<GivenUp> = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT seq, length(body), number, epoch FROM outbox WHERE priority <> 0 \
                     ORDER BY priority, seq",
                )
                .map_err(StoreError::sqlite(context))?;
            let mut rows = stmt.query([]).map_err(StoreError::sqlite(context))?;
            while freed < need {
                let Some(row) = rows.next().map_err(StoreError::sqlite(context))? else {
                    break;
                };
                let seq: i64 = row.get(0).map_err(StoreError::sqlite(context))?;
                let len: i64 = row.get(1).map_err(StoreError::sqlite(context))?;
                freed += len.max(0) as u64;
                gone.push((
                    row.get(2).map_err(StoreError::sqlite(context))?,
                    row.get(3).map_err(StoreError::sqlite(context))?,
                ));
                last = Some(seq);
            }
        }
        let count = gone.len() as u64;
        if let Some(last) = last {
            self.conn
                .prepare_cached("DELETE FROM outbox WHERE priority <> 0 AND seq <= ?1")
                .and_then(|mut stmt| stmt.execute([last]))
                .map_err(StoreError::sqlite(context))?;
            self.snap.bulk = self.snap.bulk.saturating_sub(count);
            self.snap.bulk_bytes = self.snap.bulk_bytes.saturating_sub(freed);
            self.snap.dropped += count;
            self.record_losses(LossKind::Dropped, gone)?;
        }
        Ok(count)
    }

    /// Deletes these seqs (absent ones are ignored); returns how many were present.
    fn delete(&mut self, seqs: &[u64]) -> Result<u64, StoreError> {
        let context = "remove acknowledged events";
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM outbox WHERE seq = ?1 RETURNING priority, length(body)")
            .map_err(StoreError::sqlite(context))?;
        let mut count = 0;
        for seq in seqs {
            let gone: Option<(i64, i64)> = stmt
                .query_row([seq_i64(*seq)], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
                .map_err(StoreError::sqlite(context))?;
            if let Some((priority, len)) = gone {
                self.snap.remove(priority_of(priority), len.max(0) as u64);
                count += 1;
            }
        }
        Ok(count)
    }

    /// Deletes entries older than `max_age` (walking from the oldest, stopping at the first
    /// younger one); returns how many. Cheap when nothing is due: it looks at the oldest's
    /// timestamp first.
    pub fn expire(&mut self) -> Result<u64, StoreError> {
        let Some(max_age) = self.limits.max_age_ms else {
            return Ok(0);
        };
        let due = self
            .snap
            .oldest_ms
            .is_some_and(|oldest| oldest < self.now_ms().saturating_sub(max_age));
        if !due {
            return Ok(0);
        }
        self.transaction("expire old events", |store| {
            let n = store.expire_in_tx()?;
            store.refresh_oldest()?;
            Ok(n)
        })
    }

    fn expire_in_tx(&mut self) -> Result<u64, StoreError> {
        let Some(max_age) = self.limits.max_age_ms else {
            return Ok(0);
        };
        let context = "expire old events";
        let cutoff = self.now_ms().saturating_sub(max_age);
        let mut doomed = Vec::new();
        let mut gone: Vec<GivenUp> = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT seq, priority, length(body), enqueued_ms, number, epoch FROM outbox \
                     ORDER BY seq",
                )
                .map_err(StoreError::sqlite(context))?;
            let mut rows = stmt.query([]).map_err(StoreError::sqlite(context))?;
            while let Some(row) = rows.next().map_err(StoreError::sqlite(context))? {
                let at: i64 = row.get(3).map_err(StoreError::sqlite(context))?;
                if at >= cutoff {
                    break;
                }
                let seq: i64 = row.get(0).map_err(StoreError::sqlite(context))?;
                let priority: i64 = row.get(1).map_err(StoreError::sqlite(context))?;
                let len: i64 = row.get(2).map_err(StoreError::sqlite(context))?;
                doomed.push((seq, priority_of(priority), len.max(0) as u64));
                gone.push((
                    row.get(4).map_err(StoreError::sqlite(context))?,
                    row.get(5).map_err(StoreError::sqlite(context))?,
                ));
            }
        }
        let Some(&(last, _, _)) = doomed.last() else {
            return Ok(0);
        };
        self.conn
            .prepare_cached("DELETE FROM outbox WHERE seq <= ?1")
            .and_then(|mut stmt| stmt.execute([last]))
            .map_err(StoreError::sqlite(context))?;
        for (_, priority, len) in &doomed {
            self.snap.remove(*priority, *len);
        }
        let n = doomed.len() as u64;
        self.snap.expired += n;
        self.record_losses(LossKind::Expired, gone)?;
        Ok(n)
    }

    /// Deletes rows that no longer decode, in one transaction, counted as dropped and
    /// recorded as given up (by the number and epoch columns, which do not depend on the
    /// damaged ones).
    fn give_up_unreadable(&mut self, seqs: &[u64]) -> Result<(), StoreError> {
        self.transaction("remove unreadable entries", |store| {
            let context = "remove unreadable entries";
            let mut gone: Vec<GivenUp> = Vec::new();
            {
                let mut stmt = store
                    .conn
                    .prepare_cached(
                        "DELETE FROM outbox WHERE seq = ?1 \
                         RETURNING priority, length(body), number, epoch",
                    )
                    .map_err(StoreError::sqlite(context))?;
                for seq in seqs {
                    let row: Option<(i64, i64, Option<i64>, Option<String>)> = stmt
                        .query_row([seq_i64(*seq)], |row| {
                            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                        })
                        .optional()
                        .map_err(StoreError::sqlite(context))?;
                    if let Some((priority, len, number, epoch)) = row {
                        store.snap.remove(priority_of(priority), len.max(0) as u64);
                        gone.push((number, epoch));
                    }
                }
            }
            store.snap.dropped += gone.len() as u64;
            store.record_losses(LossKind::Dropped, gone)?;
            store.refresh_oldest()
        })
    }

    /// The entry holding `event_id`, if one waits: its entry key, whether it is Control,
    /// and when it was queued (unix ms).
    pub fn find(&mut self, event_id: &str) -> Result<Option<Waiting>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, priority, enqueued_ms FROM outbox WHERE event_id = ?1 LIMIT 1",
            )
            .map_err(StoreError::sqlite("find an outbox entry"))?;
        let mut rows = stmt
            .query([event_id])
            .map_err(StoreError::sqlite("find an outbox entry"))?;
        let row = rows
            .next()
            .map_err(StoreError::sqlite("find an outbox entry"))?;
        row.map(|row| {
            Ok(Waiting {
                entry: row.get::<_, i64>(0)?.max(0) as u64,
                control: row.get::<_, i64>(1)? == 0,
                enqueued_ms: row.get(2)?,
            })
        })
        .transpose()
        .map_err(StoreError::sqlite("find an outbox entry"))
    }

    /// Up to `max` entries: Control first, then at most `bulk_max` Bulk, each by seq; and
    /// how many of them are Bulk. Rows that no longer decode are logged, deleted and
    /// counted as dropped.
    pub fn read(&mut self, max: usize, bulk_max: usize) -> Result<Batch, StoreError> {
        let context = "read the outbox";
        let mut out = Vec::new();
        let mut bad = Vec::new();
        let mut select = |sql: &str, limit: usize, out: &mut Vec<(u64, SignedEvent)>| {
            if limit == 0 {
                return Ok(());
            }
            let mut stmt = self.conn.prepare_cached(sql)?;
            let mut rows = stmt.query([i64::try_from(limit).unwrap_or(i64::MAX)])?;
            while let Some(row) = rows.next()? {
                match decode_row(row)? {
                    (seq, Some(stored)) => out.push((seq.max(0) as u64, stored.event)),
                    (seq, None) => bad.push(seq.max(0) as u64),
                }
            }
            Ok::<_, rusqlite::Error>(())
        };
        select(
            &format!(
                "SELECT {COLUMNS} FROM outbox WHERE priority = 0 ORDER BY priority, seq LIMIT ?1"
            ),
            max,
            &mut out,
        )
        .map_err(StoreError::sqlite(context))?;
        let control = out.len();
        let room = max.saturating_sub(control).min(bulk_max);
        select(
            &format!(
                "SELECT {COLUMNS} FROM outbox WHERE priority <> 0 ORDER BY priority, seq LIMIT ?1"
            ),
            room,
            &mut out,
        )
        .map_err(StoreError::sqlite(context))?;
        if !bad.is_empty() {
            error!(
                seqs = ?bad,
                "Outbox entries no longer decode (damaged on disk); they are deleted and counted as dropped."
            );
            self.give_up_unreadable(&bad)?;
        }
        let bulk = out.len() - control;
        Ok(Batch { events: out, bulk })
    }
}

/// The default clock: the wall clock in unix milliseconds.
pub(crate) fn system_clock() -> Clock {
    Arc::new(|| {
        let now = time::OffsetDateTime::now_utc();
        i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
    })
}
