//! The dead-letter store: messages a node could not accept or deliver, kept with their
//! reason so that an operator can look at them, replay them or purge them
//! (`nexus-agent dlq …`). One per node, at `{data_dir}/deadletter.db`; written with the
//! refusals of the ingress, the up-bridge and the command service (through
//! `nexus_federation::refusal::RefusalSink`), and by the IoT bridge.
//!
//! # Invariants
//! - Bounded: after every record, the oldest entries (lowest id) are deleted until at most
//!   `max_entries` remain and their `size` sums to at most `max_bytes`; the entry just
//!   recorded is always kept. Deletions are counted (`evicted`) and logged, rate-limited.
//! - A body is kept up to [`MAX_BODY`] (1 MiB); `body_size` keeps the original size, and a
//!   truncated entry cannot be replayed.
//! - The same message failing the same way again (same stage, reason, subject and body
//!   digest) does not add an entry: the existing one gets `attempts` added, `last_at`, and
//!   the newest `detail`. A redelivered poison message is one entry, not thousands.
//! - Ids only grow and are never reused (`AUTOINCREMENT`).
//! - The database is shared (normal WAL locking): the `dlq` command lists, removes and
//!   purges while the agent records.
//!
//! # Table layout (`user_version` 1)
//! ```sql
//! CREATE TABLE dead_letters (
//!     id          INTEGER PRIMARY KEY AUTOINCREMENT,
//!     reason      TEXT    NOT NULL,  -- stable code: bad_signature, malformed, …
//!     detail      TEXT    NOT NULL,  -- human-readable, the newest
//!     stage       TEXT    NOT NULL,  -- ingress | uplink | iot | bridge | command
//!     subject     TEXT    NOT NULL,  -- the subject it arrived on (replay target)
//!     headers     TEXT    NOT NULL,  -- JSON [[name, value], …] in arrival order
//!     body        BLOB    NOT NULL,  -- the first MAX_BODY bytes
//!     body_size   INTEGER NOT NULL,  -- the original size
//!     digest      BLOB    NOT NULL,  -- SHA-256 of the whole body (dedup key)
//!     attempts    INTEGER NOT NULL,
//!     first_at_ms INTEGER NOT NULL,  -- unix ms
//!     last_at_ms  INTEGER NOT NULL,  -- unix ms
//!     size        INTEGER NOT NULL   -- bytes counted against max_bytes
//! );
//! CREATE INDEX dead_letters_by_digest ON dead_letters (digest);
//! CREATE INDEX dead_letters_by_last ON dead_letters (last_at_ms);
//! ```
//!
//! Durability and damage handling are the outbox's (see [`crate::sqlite`]): WAL,
//! `synchronous=FULL`, a damaged file moved aside to `deadletter.db.corrupt-<unix seconds>`
//! with an ERROR, and the readable rows carried over.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use nexus_runtime::ratelog::RateLimitedLog;
use rusqlite::{params, Connection, OptionalExtension as _, Row};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use tracing::{error, warn};

use crate::sqlite::{self, Locking, Schema, StoreError};

/// The most body bytes kept per entry.
pub const MAX_BODY: usize = 1024 * 1024;

/// `stage` of rejections at a hub's or root's ingress.
pub const STAGE_INGRESS: &str = "ingress";
/// `stage` of messages the uplink could not deliver (poison messages).
pub const STAGE_UPLINK: &str = "uplink";
/// `stage` of MQTT messages the IoT bridge could not translate.
pub const STAGE_IOT: &str = "iot";
/// `stage` of local apps' messages the subject bridge refused (raw, as published).
pub const STAGE_BRIDGE: &str = "bridge";
/// `stage` of commands refused by the node they were for (or by the hub routing them).
pub const STAGE_COMMAND: &str = "command";

const SCHEMA: Schema = Schema {
    version: 1,
    create: "
        CREATE TABLE dead_letters (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            reason      TEXT    NOT NULL,
            detail      TEXT    NOT NULL,
            stage       TEXT    NOT NULL,
            subject     TEXT    NOT NULL,
            headers     TEXT    NOT NULL,
            body        BLOB    NOT NULL,
            body_size   INTEGER NOT NULL,
            digest      BLOB    NOT NULL,
            attempts    INTEGER NOT NULL,
            first_at_ms INTEGER NOT NULL,
            last_at_ms  INTEGER NOT NULL,
            size        INTEGER NOT NULL
        );
        CREATE INDEX dead_letters_by_digest ON dead_letters (digest);
        CREATE INDEX dead_letters_by_last ON dead_letters (last_at_ms);
    ",
    upgrades: &[],
};

const COLUMNS: &str = "id, reason, detail, stage, subject, headers, body, body_size, attempts, \
                       first_at_ms, last_at_ms";
const SUMMARY_COLUMNS: &str =
    "id, reason, detail, stage, subject, body_size, attempts, first_at_ms, last_at_ms";

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Assigned by the store ([`DeadLetters::record`] ignores the given value).
    pub id: u64,
    /// A stable code, e.g. `bad_signature`, `malformed`, `subject_not_granted`
    /// (docs/security.md, "Refusal reasons"; the IoT bridge's: docs/iot.md).
    pub reason: String,
    /// What exactly was wrong, for people.
    pub detail: String,
    /// Where it failed: [`STAGE_INGRESS`], [`STAGE_UPLINK`], [`STAGE_IOT`],
    /// [`STAGE_BRIDGE`] or [`STAGE_COMMAND`].
    pub stage: String,
    /// The subject it arrived on (for ingress: the ingress subject, where a replay goes).
    pub subject: String,
    /// Its headers, in order.
    pub headers: Vec<(String, String)>,
    /// Its body, at most [`MAX_BODY`] bytes kept.
    pub body: Vec<u8>,
    /// The body's original size (greater than `body.len()` when truncated). Set by
    /// [`DeadLetters::record`] from the body it is given.
    pub body_size: u64,
    /// How many times this message failed this way.
    pub attempts: u32,
    /// When it first failed (millisecond precision).
    pub first_at: OffsetDateTime,
    /// When it last failed (millisecond precision).
    pub last_at: OffsetDateTime,
}

impl DeadLetter {
    /// A first failure at `at`: one attempt, body size from `body`.
    pub fn new(
        stage: &str,
        reason: &str,
        detail: impl Into<String>,
        subject: &str,
        headers: Vec<(String, String)>,
        body: impl Into<Vec<u8>>,
        at: OffsetDateTime,
    ) -> Self {
        let body = body.into();
        let at = from_ms(to_ms(at));
        Self {
            id: 0,
            reason: reason.to_owned(),
            detail: detail.into(),
            stage: stage.to_owned(),
            subject: subject.to_owned(),
            headers,
            body_size: body.len() as u64,
            body,
            attempts: 1,
            first_at: at,
            last_at: at,
        }
    }

    /// Whether only a prefix of the body was kept.
    pub fn is_truncated(&self) -> bool {
        (self.body.len() as u64) < self.body_size
    }
}

/// A dead letter without its headers and body, as [`DeadLetters::list`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterSummary {
    /// Its id.
    pub id: u64,
    /// The reason code.
    pub reason: String,
    /// The newest detail.
    pub detail: String,
    /// Where it failed.
    pub stage: String,
    /// The subject it arrived on.
    pub subject: String,
    /// The body's original size.
    pub body_size: u64,
    /// How many times it failed this way.
    pub attempts: u32,
    /// First failure.
    pub first_at: OffsetDateTime,
    /// Last failure.
    pub last_at: OffsetDateTime,
}

/// Which entries [`DeadLetters::list`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this reason code.
    pub reason: Option<String>,
    /// Only entries that failed (last) at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only the newest this many (still returned oldest first).
    pub limit: Option<usize>,
}

/// Size and losses of a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeadLetterStats {
    /// Entries kept.
    pub entries: u64,
    /// Their bytes, as counted against `max_bytes`.
    pub bytes: u64,
    /// Entries deleted to respect the bounds, by this handle since it was opened.
    pub evicted: u64,
}

/// Why a dead-letter operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeadLetterError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task that writes it panicked or was cancelled.
    #[error("the dead-letter writer task failed: {0}")]
    Task(String),
}

/// A cloneable handle to a node's dead-letter store.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// One connection; SQLite serialises writers anyway, and records are rare.
    conn: Mutex<Connection>,
    max_bytes: u64,
    max_entries: u64,
    evicted: AtomicU64,
    log: Mutex<RateLimitedLog>,
}

fn to_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn id_u64(id: i64) -> u64 {
    id.max(0) as u64
}

fn read_entry(row: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    let headers: String = row.get(5)?;
    let headers: Vec<(String, String)> = serde_json::from_str(&headers).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(DeadLetter {
        id: id_u64(row.get(0)?),
        reason: row.get(1)?,
        detail: row.get(2)?,
        stage: row.get(3)?,
        subject: row.get(4)?,
        headers,
        body: row.get(6)?,
        body_size: id_u64(row.get(7)?),
        attempts: u32::try_from(row.get::<_, i64>(8)?.max(0)).unwrap_or(u32::MAX),
        first_at: from_ms(row.get(9)?),
        last_at: from_ms(row.get(10)?),
    })
}

fn read_summary(row: &Row<'_>) -> rusqlite::Result<DeadLetterSummary> {
    Ok(DeadLetterSummary {
        id: id_u64(row.get(0)?),
        reason: row.get(1)?,
        detail: row.get(2)?,
        stage: row.get(3)?,
        subject: row.get(4)?,
        body_size: id_u64(row.get(5)?),
        attempts: u32::try_from(row.get::<_, i64>(6)?.max(0)).unwrap_or(u32::MAX),
        first_at: from_ms(row.get(7)?),
        last_at: from_ms(row.get(8)?),
    })
}

/// Inserts `entry` as is (its id when `keep_id`), body truncated, size computed.
fn insert(
    conn: &Connection,
    entry: &DeadLetter,
    digest: &[u8],
    keep_id: bool,
) -> rusqlite::Result<i64> {
    let body = &entry.body[..entry.body.len().min(MAX_BODY)];
    let headers = serde_json::to_string(&entry.headers).unwrap_or_else(|_| "[]".to_owned());
    let size = body.len() + headers.len() + entry.detail.len() + entry.subject.len();
    conn.prepare_cached(
        "INSERT INTO dead_letters (id, reason, detail, stage, subject, headers, body, body_size, \
         digest, attempts, first_at_ms, last_at_ms, size) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        keep_id.then(|| i64::try_from(entry.id).unwrap_or(i64::MAX)),
        entry.reason,
        entry.detail,
        entry.stage,
        entry.subject,
        headers,
        body,
        i64::try_from(entry.body_size.max(body.len() as u64)).unwrap_or(i64::MAX),
        digest,
        i64::from(entry.attempts.max(1)),
        to_ms(entry.first_at),
        to_ms(entry.last_at),
        i64::try_from(size).unwrap_or(i64::MAX),
    ])?;
    Ok(conn.last_insert_rowid())
}

impl DeadLetters {
    /// Opens (or creates, with its directory) the store at `path`, bounded to `max_entries`
    /// entries and `max_bytes` bytes. A damaged file is moved aside (see the module docs).
    pub fn open(path: &Path, max_bytes: u64, max_entries: u64) -> Result<Self, DeadLetterError> {
        let opened = sqlite::open(path, &SCHEMA, Locking::Shared)?;
        if let Some(aside) = &opened.moved_aside {
            let (kept, refused) = salvage(&aside.to, &opened.conn);
            error!(
                path = %path.display(),
                moved_to = %aside.to.display(),
                detail = %aside.detail,
                salvaged = kept,
                unreadable = refused,
                "The dead-letter database was damaged: it was moved aside (not deleted) and a \
                 fresh one started with the entries that could still be read."
            );
        }
        Ok(Self::from_conn(path, opened.conn, max_bytes, max_entries))
    }

    /// Opens an existing store for an operator command: fails with
    /// [`StoreError::Missing`] if there is none yet, never creates or moves anything, and
    /// never evicts (`record` through it is unbounded).
    pub fn open_existing(path: &Path) -> Result<Self, DeadLetterError> {
        let conn = sqlite::open_existing(path, &SCHEMA)?;
        Ok(Self::from_conn(path, conn, u64::MAX, u64::MAX))
    }

    fn from_conn(path: &Path, conn: Connection, max_bytes: u64, max_entries: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                conn: Mutex::new(conn),
                max_bytes,
                max_entries: max_entries.max(1),
                evicted: AtomicU64::new(0),
                log: Mutex::new(RateLimitedLog::new(std::time::Duration::from_secs(60))),
            }),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic inside a transaction rolls it back when the statement guard drops; the
        // connection itself stays usable.
        self.inner
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a dead letter (committed and fsynced when it returns); returns its id: a new
    /// one, or that of the same message failing the same way before (see the module docs).
    /// Runs on tokio's blocking pool.
    pub async fn record(&self, entry: DeadLetter) -> Result<u64, DeadLetterError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.record_blocking(&entry))
            .await
            .map_err(|e| DeadLetterError::Task(e.to_string()))?
    }

    /// [`Self::record`] on the calling thread.
    pub fn record_blocking(&self, entry: &DeadLetter) -> Result<u64, DeadLetterError> {
        let context = "record a dead letter";
        let digest = Sha256::digest(&entry.body).to_vec();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(StoreError::sqlite(context))?;
        let existing: Option<i64> = tx
            .prepare_cached(
                "SELECT id FROM dead_letters WHERE digest = ?1 AND stage = ?2 AND reason = ?3 \
                 AND subject = ?4 ORDER BY id DESC LIMIT 1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![digest, entry.stage, entry.reason, entry.subject],
                    |row| row.get(0),
                )
                .optional()
            })
            .map_err(StoreError::sqlite(context))?;
        let id = match existing {
            Some(id) => {
                tx.prepare_cached(
                    "UPDATE dead_letters SET attempts = attempts + ?2, \
                     last_at_ms = max(last_at_ms, ?3), detail = ?4 WHERE id = ?1",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        id,
                        i64::from(entry.attempts.max(1)),
                        to_ms(entry.last_at),
                        entry.detail
                    ])
                })
                .map_err(StoreError::sqlite(context))?;
                id
            }
            None => insert(&tx, entry, &digest, false).map_err(StoreError::sqlite(context))?,
        };
        let evicted = self.evict(&tx, id).map_err(StoreError::sqlite(context))?;
        tx.commit().map_err(StoreError::sqlite(context))?;
        if evicted > 0 {
            let total = self.inner.evicted.fetch_add(evicted, Ordering::Relaxed) + evicted;
            let mut log = self
                .inner
                .log
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(suppressed) = log.check("evicted", Instant::now()) {
                warn!(
                    evicted_total = total,
                    suppressed,
                    max_entries = self.inner.max_entries,
                    max_bytes = self.inner.max_bytes,
                    "Dead-letter store full; its oldest entries were deleted."
                );
            }
        }
        Ok(id_u64(id))
    }

    /// Deletes the oldest entries (never `keep`) until within the bounds; returns how many.
    fn evict(&self, conn: &Connection, keep: i64) -> rusqlite::Result<u64> {
        let (mut count, mut bytes): (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM dead_letters",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let max_entries = i64::try_from(self.inner.max_entries).unwrap_or(i64::MAX);
        let max_bytes = i64::try_from(self.inner.max_bytes).unwrap_or(i64::MAX);
        if count <= max_entries && bytes <= max_bytes {
            return Ok(0);
        }
        let mut doomed = Vec::new();
        {
            let mut stmt = conn
                .prepare_cached("SELECT id, size FROM dead_letters WHERE id <> ?1 ORDER BY id")?;
            let mut rows = stmt.query([keep])?;
            while count > max_entries || bytes > max_bytes {
                let Some(row) = rows.next()? else { break };
                doomed.push(row.get::<_, i64>(0)?);
                bytes -= row.get::<_, i64>(1)?;
                count -= 1;
            }
        }
        let mut stmt = conn.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?;
        for id in &doomed {
            stmt.execute([id])?;
        }
        Ok(doomed.len() as u64)
    }

    /// The entries that match, oldest first (`limit` keeps the newest that many).
    pub fn list(&self, filter: &Filter) -> Result<Vec<DeadLetterSummary>, DeadLetterError> {
        let limit = filter
            .limit
            .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {SUMMARY_COLUMNS} FROM dead_letters \
                 WHERE (?1 IS NULL OR reason = ?1) AND (?2 IS NULL OR last_at_ms >= ?2) \
                 ORDER BY id DESC LIMIT ?3"
            ))
            .map_err(StoreError::sqlite("list dead letters"))?;
        let mut entries = stmt
            .query_map(
                params![filter.reason, filter.since.map(to_ms), limit],
                read_summary,
            )
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(StoreError::sqlite("list dead letters"))?;
        entries.reverse();
        Ok(entries)
    }

    /// The entries of the message whose `Nats-Msg-Id` header is `event_id` (an event's
    /// id), oldest first: a scan of the headers, bounded by the store's `max_entries`.
    pub fn find_event(&self, event_id: &str) -> Result<Vec<DeadLetterSummary>, DeadLetterError> {
        // The headers column is JSON `[[name, value], …]`: the pair, as serde_json writes it.
        let pair = format!(
            "[\"Nats-Msg-Id\",{}]",
            serde_json::Value::String(event_id.to_owned())
        );
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {SUMMARY_COLUMNS} FROM dead_letters WHERE instr(headers, ?1) > 0 \
                 ORDER BY id LIMIT 100"
            ))
            .map_err(StoreError::sqlite("find dead letters"))?;
        let entries = stmt
            .query_map([pair], read_summary)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(StoreError::sqlite("find dead letters"))?;
        Ok(entries)
    }

    /// One entry, whole.
    pub fn get(&self, id: u64) -> Result<Option<DeadLetter>, DeadLetterError> {
        let conn = self.conn();
        let entry = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM dead_letters WHERE id = ?1"),
                [i64::try_from(id).unwrap_or(i64::MAX)],
                read_entry,
            )
            .optional()
            .map_err(StoreError::sqlite("read a dead letter"))?;
        Ok(entry)
    }

    /// Deletes these entries (absent ids are ignored); returns how many were deleted.
    pub fn remove(&self, ids: &[u64]) -> Result<u64, DeadLetterError> {
        let context = "remove dead letters";
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(StoreError::sqlite(context))?;
        let mut removed = 0;
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM dead_letters WHERE id = ?1")
                .map_err(StoreError::sqlite(context))?;
            for id in ids {
                removed += stmt
                    .execute([i64::try_from(*id).unwrap_or(i64::MAX)])
                    .map_err(StoreError::sqlite(context))? as u64;
            }
        }
        tx.commit().map_err(StoreError::sqlite(context))?;
        Ok(removed)
    }

    /// Deletes every entry that last failed before `before` (every entry for `None`);
    /// returns how many.
    pub fn purge(&self, before: Option<OffsetDateTime>) -> Result<u64, DeadLetterError> {
        let conn = self.conn();
        let n = conn
            .execute(
                "DELETE FROM dead_letters WHERE ?1 IS NULL OR last_at_ms < ?1",
                [before.map(to_ms)],
            )
            .map_err(StoreError::sqlite("purge dead letters"))?;
        Ok(n as u64)
    }

    /// Entries and bytes now; evictions by this handle.
    pub fn stats(&self) -> Result<DeadLetterStats, DeadLetterError> {
        let conn = self.conn();
        let (entries, bytes): (i64, i64) = conn
            .query_row(
                "SELECT count(*), coalesce(sum(size), 0) FROM dead_letters",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(StoreError::sqlite("count dead letters"))?;
        Ok(DeadLetterStats {
            entries: id_u64(entries),
            bytes: id_u64(bytes),
            evicted: self.inner.evicted.load(Ordering::Relaxed),
        })
    }
}

/// Copies the readable rows of a damaged store (see [`sqlite::salvage_rows`]), with their
/// ids. Returns (kept, refused).
fn salvage(damaged: &Path, into: &Connection) -> (u64, u64) {
    let (rows, mut refused) = sqlite::salvage_rows(
        damaged,
        &format!("SELECT {COLUMNS} FROM dead_letters ORDER BY id"),
        &format!("SELECT {COLUMNS} FROM dead_letters ORDER BY id DESC"),
        |row| {
            let entry = read_entry(row)?;
            Ok(Some((i64::try_from(entry.id).unwrap_or(i64::MAX), entry)))
        },
    );
    let mut kept = 0;
    for (_, entry) in rows {
        // The digest of a truncated body is not the original's: such an entry just will
        // not merge with a later failure of the same message.
        let digest = Sha256::digest(&entry.body).to_vec();
        match insert(into, &entry, &digest, true) {
            Ok(_) => kept += 1,
            Err(_) => refused += 1,
        }
    }
    (kept, refused)
}

#[cfg(test)]
mod tests;
