//! The outbox: signed events waiting for the next tier's durable acknowledgement, kept in
//! SQLite at `{data_dir}/outbox.db` so that they survive a crash, a restart or a power cut.
//!
//! # Invariants
//! - [`Outbox::push_numbered`] and [`Outbox::push`] resolve `Ok` only after the transaction
//!   holding the event was committed and fsynced (`synchronous=FULL`, WAL). A producer may
//!   acknowledge its own source (an MQTT PUBACK, a local request) from then on.
//! - An event leaves the outbox only through [`Outbox::ack`], which the uplink calls after a
//!   JetStream PubAck for it (never after a mere publish or flush), or by the stated
//!   policies: [`WhenFull::DropOldest`] (oldest Bulk first, counted as `dropped`) and
//!   `max_age` (counted as `expired`).
//! - Entry keys (the `seq` column) only grow and are never reused, not even after the
//!   newest entry was acked or dropped and the agent restarted (`AUTOINCREMENT`): an ack
//!   for a key can only ever remove the event that was handed out under it.
//! - Numbering (the envelope's `epoch` and `seq`, docs/delivery.md "Order per source"): the
//!   database has an **epoch**, a UUIDv7 made when it is created (or upgraded from version
//!   1), kept in `outbox_meta`. [`Outbox::push_numbered`] numbers what it stores 1, 2, 3, …
//!   in that epoch: the writer thread takes the next number when it applies the push inside
//!   the group's transaction and calls the producer's seal with it, so the numbers follow
//!   the commit order and are **gap-free over what is stored** (a push refused as full, a
//!   seal that fails or a group whose commit fails uses none). The highest number committed
//!   is written to `outbox_meta` in the same transaction as the rows: after a restart or a
//!   SIGKILL numbering continues after it, and a number committed once is never handed out
//!   again, even when its event was acked or given up. [`Outbox::push`] stores events that
//!   are sealed already, unnumbered (`number` NULL): the agent creates none of its own that
//!   way; it is kept for events of other origins and for tools.
//! - Every number the outbox **gives up** (an entry dropped under `drop_oldest`, expired by
//!   `max_age`, or found unreadable) is written to `outbox_losses` in the transaction that
//!   deletes it, as ranges per kind and epoch (a count for unnumbered entries), and stays
//!   there until the event announcing it is stored ([`Outbox::losses`] reads them, at most a
//!   given number of ranges at a time; [`Outbox::push_announcement`] stores the
//!   announcement and deletes what it announces in one transaction). So no loss goes
//!   unannounced across a crash, and none is announced twice.
//! - Order: [`Outbox::next_batch`] hands out Control entries first, then Bulk, each oldest
//!   (lowest seq) first: `ORDER BY (priority, seq)`. Live traffic and backlog are not told
//!   apart: after an outage the backlog drains in order, and new Bulk events queue behind
//!   it; heartbeats, audit events and command replies (Control) overtake it. A batch that
//!   was not acked is handed out again.
//! - The bodies of the entries never exceed `max_bytes`, except after a restart with a
//!   smaller bound (nothing is deleted at open; pushes are refused, or make room by
//!   dropping, until it drains). `max_bytes` counts body bytes only: the file also holds
//!   ~250 bytes of headers and index per entry, SQLite's free pages (the file keeps its
//!   high-water size) and the WAL (truncated to 4 MiB after checkpoints).
//! - The exact signed bytes are stored and handed back; nothing is re-encoded.
//!
//! # Table layout (`user_version` 2)
//! ```sql
//! CREATE TABLE outbox (
//!     seq         INTEGER PRIMARY KEY AUTOINCREMENT, -- entry key: handed out, acked by
//!     priority    INTEGER NOT NULL,   -- 0 Control, 1 Bulk
//!     enqueued_ms INTEGER NOT NULL,   -- wall clock at push, unix ms (age, expiry)
//!     subject     TEXT    NOT NULL,   -- event subject (nexus.…), derived from the body
//!     event_id    TEXT    NOT NULL,   -- Nats-Msg-Id
//!     encoding    TEXT    NOT NULL,   -- Content-Type: application/json | application/cbor
//!     body        BLOB    NOT NULL,   -- the exact signed bytes
//!     signer      TEXT    NOT NULL,   -- Nexus-Signer (ed25519:…)
//!     signature   TEXT    NOT NULL,   -- Nexus-Sig (base64url)
//!     number      INTEGER,            -- the envelope's `seq`; NULL: unnumbered (`push`)
//!     epoch       TEXT                -- the envelope's `epoch` when it is not this
//!                                     -- database's (salvaged rows); NULL otherwise
//! );
//! CREATE INDEX outbox_order ON outbox (priority, seq);
//! CREATE TABLE outbox_meta (          -- one row
//!     id          INTEGER PRIMARY KEY CHECK (id = 1),
//!     epoch       TEXT    NOT NULL,   -- this database's UUIDv7
//!     last_number INTEGER NOT NULL    -- the highest number ever committed (0: none)
//! );
//! CREATE TABLE outbox_losses (        -- given up, not announced yet
//!     id          INTEGER PRIMARY KEY,
//!     kind        INTEGER NOT NULL,   -- 0 dropped (drop_oldest, unreadable), 1 expired
//!     epoch       TEXT,               -- the numbers' epoch; NULL: unnumbered entries
//!     first       INTEGER,            -- the range first..=last (NULL when unnumbered)
//!     last        INTEGER,
//!     count       INTEGER NOT NULL    -- events: last - first + 1, or how many unnumbered
//! );
//! ```
//! Version 1 (no numbering) is upgraded in place at open: the columns and tables are
//! added, its rows stay (unnumbered) and are sent as they are, and the database gets a
//! fresh epoch.
//!
//! # How
//! One writer thread owns the connection ([`worker`]). Concurrent pushes are batched into
//! one transaction and one fsync (group commit); each push resolves once its group is
//! committed. The database is opened in exclusive locking mode: a second agent on the same
//! `data_dir` fails at start instead of sending the same events twice. Counters (depth,
//! bytes, oldest age, dropped, expired) are kept in memory beside the table and published on
//! a `watch`, so [`Outbox::stats`] never touches the disk; `dropped` and `expired` count
//! since the process started.
//!
//! Expiry (`max_age`, off by default) walks from the oldest entry and stops at the first
//! younger one; it runs before every batch is read, when a push finds the outbox full, and
//! on a timer. It trusts the wall clock: on a box without an RTC a clock that jumps forward
//! by days at NTP sync ages every queued event at once. Leave it off unless old events are
//! worthless.
//!
//! On open, `PRAGMA quick_check` runs first. A file that is not a database, or is damaged,
//! is renamed to `outbox.db.corrupt-<unix seconds>` (never deleted), an ERROR says so and
//! where, and a fresh database starts — with a new epoch. What is kept of the old one: the
//! rows readable in seq order from both ends up to the damaged region, whose signature
//! still verifies over their body (see [`crate::sqlite`]). They keep their entry keys and
//! their signed bodies, so their numbers are those of the old epoch (kept in `number` and
//! `epoch`, and announced under it if they are given up later). What was in the damaged
//! region cannot be known, so it is not announced: the ERROR is all that says so.
//!
//! No store is more durable than its medium: an SD card that acknowledges a write before it
//! is stable can still lose the last commits on power loss. What software can prove is
//! tested: a process killed with SIGKILL loses no event whose push had resolved
//! (`tests/outbox_crash.rs`).

mod losses;
mod store;
mod worker;

#[cfg(test)]
mod numbering_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use nexus_wire::envelope::{EnvelopeError, Sequence};
use nexus_wire::provenance::SignedEvent;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{error, warn};

use crate::sqlite::{self, Locking, StoreError};
pub use losses::{LossKind, Losses};
use store::{Batch, Limits, Snapshot, Store};
use worker::Command;

/// The unix-milliseconds wall clock the store reads (replaced in tests).
pub(crate) type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// An event still waiting in the outbox ([`Outbox::find`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// Its entry key.
    pub entry: u64,
    /// Whether it is a Control entry (else Bulk).
    pub control: bool,
    /// When it was queued, unix milliseconds.
    pub enqueued_ms: i64,
}

/// Which queue an event waits in. Control overtakes Bulk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Heartbeats, audit events, command replies: small, and what operators need first.
    Control,
    /// Sensor and application data.
    Bulk,
}

/// What a push does when the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Refuse the new event ([`OutboxError::Full`] gives it back): the producer keeps it,
    /// or does not acknowledge it to its own source (back pressure). The default.
    #[default]
    Reject,
    /// Delete the oldest Bulk entries to make room (counted as `dropped`). Control entries
    /// are never dropped: an event that does not fit even without any Bulk is refused.
    DropOldest,
}

/// How an outbox is bounded and drained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxOptions {
    /// The bound on the body bytes waiting.
    pub max_bytes: u64,
    /// The policy when a push does not fit.
    pub when_full: WhenFull,
    /// Entries older than this are deleted (counted as `expired`); `None`: never.
    pub max_age: Option<Duration>,
    /// At most this many Bulk events per second are handed out (a token bucket with one
    /// second of burst); Control is never held back. `None`: no limit.
    pub drain_rate: Option<NonZeroU32>,
}

impl OutboxOptions {
    /// `max_bytes`, rejecting when full, no expiry, no drain limit.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            when_full: WhenFull::Reject,
            max_age: None,
            drain_rate: None,
        }
    }
}

impl Default for OutboxOptions {
    /// 64 MiB, the config's default.
    fn default() -> Self {
        Self::new(64 * 1024 * 1024)
    }
}

/// What seals an event once the outbox has numbered it (see [`Outbox::push_numbered`]):
/// given the event's [`Sequence`], it sets `epoch` and `seq` in the envelope, encodes and
/// signs it. It carries the key; `Envelope::into_sealer` makes one.
pub type Seal = Box<dyn FnOnce(Sequence) -> Result<SignedEvent, EnvelopeError> + Send>;

/// An event [`Outbox::push_numbered`] sealed and stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Numbered {
    /// The entry's key in the outbox (handed out with batches, acked by).
    pub entry: u64,
    /// The event's place in this node's order (its envelope's `epoch` and `seq`).
    pub sequence: Sequence,
    /// The event as stored, signed.
    pub event: SignedEvent,
}

/// Why an outbox operation failed. A failed [`Outbox::push`] gives its event back; a failed
/// [`Outbox::push_numbered`] never does (the event it sealed carries a number that was
/// not used: it must not be sent).
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Full, and the policy refused the event.
    #[error("outbox full: {bytes} of {max_bytes} bytes used, event{} refused", event_id(.event))]
    Full {
        /// The refused event ([`Outbox::push`] only).
        event: Option<Box<SignedEvent>>,
        /// Bytes in use.
        bytes: u64,
        /// The bound.
        max_bytes: u64,
    },
    /// The database could not be opened.
    #[error("cannot open the outbox: {0}")]
    Open(#[source] StoreError),
    /// The commit failed (disk full, I/O error): the event was not stored.
    #[error("the outbox could not store event{}: {source}", event_id(.event))]
    Storage {
        /// The event, not stored ([`Outbox::push`] only).
        event: Option<Box<SignedEvent>>,
        /// What failed.
        #[source]
        source: StoreError,
    },
    /// The seal of [`Outbox::push_numbered`] failed: nothing was stored, no number used.
    #[error("cannot seal the event: {0}")]
    Seal(#[source] EnvelopeError),
    /// The writer thread is gone (it panicked). `event` is `None` when it had taken the
    /// event already: whether it was stored is unknown.
    #[error("the outbox is closed")]
    Closed {
        /// The event, if it was never handed over ([`Outbox::push`] only).
        event: Option<Box<SignedEvent>>,
    },
}

/// ` ID` of an event an error names, or nothing.
fn event_id(event: &Option<Box<SignedEvent>>) -> String {
    event
        .as_ref()
        .map(|event| format!(" {}", event.event_id))
        .unwrap_or_default()
}

impl OutboxError {
    /// The event a failed [`Outbox::push`] gives back, if any.
    pub fn into_event(self) -> Option<SignedEvent> {
        match self {
            OutboxError::Full { event, .. }
            | OutboxError::Storage { event, .. }
            | OutboxError::Closed { event } => event.map(|e| *e),
            OutboxError::Open(_) | OutboxError::Seal(_) => None,
        }
    }
}

/// Depth, size and losses, for heartbeats and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    /// Events waiting.
    pub depth: u64,
    /// Their body bytes.
    pub bytes: u64,
    /// Age of the oldest waiting event, whole seconds (0 when empty).
    pub oldest_age_secs: u64,
    /// Bulk events deleted to make room ([`WhenFull::DropOldest`]) or found undecodable,
    /// since the process started.
    pub dropped: u64,
    /// Events deleted for being older than `max_age`, since the process started.
    pub expired: u64,
    /// Events dropped (as `dropped` counts them) whose numbers are not announced yet:
    /// [`Outbox::losses`] has them, whenever they were given up (they are kept on disk).
    pub unannounced_dropped: u64,
    /// Events expired whose numbers are not announced yet.
    pub unannounced_expired: u64,
}

impl OutboxStats {
    /// The events of `kind` given up and not announced yet.
    pub fn unannounced(&self, kind: LossKind) -> u64 {
        match kind {
            LossKind::Dropped => self.unannounced_dropped,
            LossKind::Expired => self.unannounced_expired,
        }
    }
}

/// A cloneable handle to the outbox. The database closes when the last handle is dropped
/// (after committing what is queued).
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    /// `Option` so that `Drop` can disconnect it before joining the thread.
    commands: Option<mpsc::Sender<Command>>,
    worker: Option<JoinHandle<()>>,
    snapshot: watch::Receiver<Snapshot>,
    /// Shared by every clone: the drain limit is per outbox, not per caller.
    bucket: Option<Mutex<TokenBucket>>,
    clock: Clock,
    /// The database's epoch.
    epoch: String,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("snapshot", &*self.snapshot.borrow())
            .field("drain_limited", &self.bucket.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Disconnect, then wait for the writer to commit what is queued and close the
        // database, so that a reopen right after finds the file free.
        self.commands.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl Outbox {
    /// Opens (or creates, with its directory) the outbox database at `path`; a damaged file
    /// is moved aside (see the module docs). Blocks for the integrity check: call it at
    /// start, before traffic.
    pub fn open(path: &Path, options: OutboxOptions) -> Result<Self, OutboxError> {
        Self::open_with_clock(path, options, store::system_clock())
    }

    pub(crate) fn open_with_clock(
        path: &Path,
        options: OutboxOptions,
        clock: Clock,
    ) -> Result<Self, OutboxError> {
        let opened =
            sqlite::open(path, &store::SCHEMA, Locking::Exclusive).map_err(OutboxError::Open)?;
        if let Some(aside) = &opened.moved_aside {
            let (kept, refused) = store::salvage(&aside.to, &opened.conn);
            error!(
                path = %path.display(),
                moved_to = %aside.to.display(),
                detail = %aside.detail,
                salvaged = kept,
                unreadable = refused,
                "The outbox database was damaged: it was moved aside (not deleted) and a fresh one \
                 started with the entries that could still be read and verified. Events in the \
                 damaged part are lost unless recovered from the moved file by hand."
            );
        }
        Self::start(opened.conn, options, clock)
    }

    /// An outbox in memory (SQLite `:memory:`), for tests: same behaviour, no durability.
    ///
    /// # Panics
    /// If SQLite cannot create an in-memory database (out of memory).
    pub fn in_memory(max_bytes: u64) -> Self {
        Self::in_memory_with(OutboxOptions::new(max_bytes), store::system_clock())
    }

    /// [`Self::in_memory`] with every option (for tests of what uses an outbox).
    ///
    /// # Panics
    /// If SQLite cannot create an in-memory database (out of memory).
    pub fn in_memory_with_options(options: OutboxOptions) -> Self {
        Self::in_memory_with(options, store::system_clock())
    }

    pub(crate) fn in_memory_with(options: OutboxOptions, clock: Clock) -> Self {
        let started = sqlite::open_in_memory(&store::SCHEMA)
            .map_err(OutboxError::Open)
            .and_then(|conn| Self::start(conn, options, clock));
        match started {
            Ok(outbox) => outbox,
            Err(error) => panic!("cannot create an in-memory outbox: {error}"),
        }
    }

    fn start(
        conn: rusqlite::Connection,
        options: OutboxOptions,
        clock: Clock,
    ) -> Result<Self, OutboxError> {
        let limits = Limits {
            max_bytes: options.max_bytes,
            when_full: options.when_full,
            max_age_ms: options
                .max_age
                .map(|age| i64::try_from(age.as_millis()).unwrap_or(i64::MAX)),
            clock: Arc::clone(&clock),
        };
        let store = Store::new(conn, limits).map_err(OutboxError::Open)?;
        let epoch = store.epoch().to_owned();
        let (snapshot_tx, snapshot) = watch::channel(store.snapshot());
        let (commands, receiver) = mpsc::channel();
        let expiry_tick = options
            .max_age
            .map(|age| (age / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)));
        let worker = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || worker::run(store, receiver, snapshot_tx, expiry_tick))
            .map_err(|e| {
                OutboxError::Open(StoreError::Io {
                    context: "start the writer thread for",
                    path: "outbox".into(),
                    source: Arc::new(e),
                })
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                commands: Some(commands),
                worker: Some(worker),
                snapshot,
                bucket: options
                    .drain_rate
                    .map(|rate| Mutex::new(TokenBucket::new(rate, Instant::now()))),
                clock,
                epoch,
            }),
        })
    }

    fn send(&self, command: Command) -> Result<(), Command> {
        match &self.inner.commands {
            Some(commands) => commands.send(command).map_err(|e| e.0),
            None => Err(command),
        }
    }

    /// This outbox's epoch: the UUIDv7 made when its database was created (see the module
    /// docs). Every event [`Self::push_numbered`] stores carries it.
    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    /// Stores an event this node creates, numbered: the writer thread gives it the next
    /// number of this outbox's epoch when it commits, calls `seal` with it (which sets the
    /// envelope's `epoch` and `seq`, encodes and signs), and stores the result. Resolves
    /// once it is committed to disk, with the entry key, the number and the signed event.
    ///
    /// Numbers are gap-free over what is stored: a push that is refused (full under
    /// [`WhenFull::Reject`], a failed commit, a failing `seal`) uses no number, and a
    /// number committed once is never handed out again (not after a restart or a crash
    /// either). A failed push gives nothing back: build a new `seal` to try again.
    ///
    /// Cancel safety: as [`Self::push`]; a retry after a dropped future may store the
    /// event twice, under two numbers (and the same `event_id`, if the retry seals the
    /// same envelope: a consumer deduplicating by `event_id` sees it once).
    pub async fn push_numbered<F>(
        &self,
        seal: F,
        priority: Priority,
    ) -> Result<Numbered, OutboxError>
    where
        F: FnOnce(Sequence) -> Result<SignedEvent, EnvelopeError> + Send + 'static,
    {
        self.push_new(Box::new(seal), priority, Vec::new()).await
    }

    async fn push_new(
        &self,
        seal: Seal,
        priority: Priority,
        settles: Vec<i64>,
    ) -> Result<Numbered, OutboxError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::PushNew {
            seal,
            priority,
            settles,
            reply,
        })
        .map_err(|_| OutboxError::Closed { event: None })?;
        answer
            .await
            .unwrap_or(Err(OutboxError::Closed { event: None }))
    }

    /// What the outbox gave up of `kind` and has not announced yet (`None`: nothing), at
    /// most `max_ranges` ranges of one epoch at a time (the rest come with the next call,
    /// once these are announced). Kept on disk from the transaction that gave them up until
    /// [`Self::push_announcement`] stores their announcement, so a crash in between loses
    /// no announcement.
    pub async fn losses(
        &self,
        kind: LossKind,
        max_ranges: usize,
    ) -> Result<Option<Losses>, OutboxError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Losses {
            kind,
            max_ranges,
            reply,
        })
        .map_err(|_| OutboxError::Closed { event: None })?;
        match answer.await {
            Ok(Ok(losses)) => Ok(losses),
            Ok(Err(source)) => Err(OutboxError::Storage {
                event: None,
                source,
            }),
            Err(_) => Err(OutboxError::Closed { event: None }),
        }
    }

    /// [`Self::push_numbered`] for the event that announces `losses`: stored, and the
    /// losses marked announced, in one transaction (if it is refused, they stay waiting).
    pub async fn push_announcement<F>(
        &self,
        losses: &Losses,
        seal: F,
        priority: Priority,
    ) -> Result<Numbered, OutboxError>
    where
        F: FnOnce(Sequence) -> Result<SignedEvent, EnvelopeError> + Send + 'static,
    {
        self.push_new(Box::new(seal), priority, losses.ids.clone())
            .await
    }

    /// Stores an event that is sealed already, as it is: it gets no number (the events
    /// this node creates go through [`Self::push_numbered`]). Resolves with its entry key
    /// once it is committed to disk. When full: see [`WhenFull`]. A failed push gives the
    /// event back.
    ///
    /// Cancel safety: once polled, the event is handed to the writer; dropping the future
    /// then may still store it (the caller just does not learn the seq). A retry stores it
    /// twice: a duplicate, removed upstream by `event_id`, never a loss.
    pub async fn push(&self, event: SignedEvent, priority: Priority) -> Result<u64, OutboxError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Push {
            event: Box::new(event),
            priority,
            reply,
        })
        .map_err(|command| OutboxError::Closed {
            event: command.into_event(),
        })?;
        answer
            .await
            .unwrap_or(Err(OutboxError::Closed { event: None }))
    }

    /// Up to `max` entries, Control first then Bulk, each oldest first, waiting until there
    /// is at least one (and, for Bulk under a drain limit, a token). Nothing is removed:
    /// entries not acked are handed out again.
    ///
    /// Cancel safety: nothing is removed here and no token is spent before it returns, so
    /// dropping the future loses nothing.
    pub async fn next_batch(&self, max: usize) -> Vec<(u64, SignedEvent)> {
        let max = max.max(1);
        let mut snapshot = self.inner.snapshot.clone();
        loop {
            let now = *snapshot.borrow_and_update();
            if now.depth() > 0 {
                let bulk_max = match &self.inner.bucket {
                    Some(bucket) => lock(bucket).available(Instant::now()),
                    None => usize::MAX,
                };
                if now.control > 0 || bulk_max > 0 {
                    let batch = self.read(max, bulk_max).await;
                    if !batch.events.is_empty() {
                        if let Some(bucket) = &self.inner.bucket {
                            lock(bucket).take(batch.bulk);
                        }
                        return batch.events;
                    }
                    // Acked or expired meanwhile: wait for the next change.
                } else if let Some(bucket) = &self.inner.bucket {
                    let wait = lock(bucket).until_next(Instant::now());
                    // Cancel safety: both branches only wait.
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        changed = snapshot.changed() => {
                            if changed.is_err() { return self.closed().await; }
                            continue;
                        }
                    }
                }
            }
            if snapshot.changed().await.is_err() {
                return self.closed().await;
            }
        }
    }

    async fn read(&self, max: usize, bulk_max: usize) -> Batch {
        let (reply, answer) = oneshot::channel();
        if self
            .send(Command::Read {
                max,
                bulk_max,
                reply,
            })
            .is_err()
        {
            return self.closed().await;
        }
        match answer.await {
            Ok(Ok(batch)) => batch,
            Ok(Err(error)) => {
                warn!(%error, "Cannot read the outbox; retrying in a second.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                Batch::default()
            }
            Err(_) => self.closed().await,
        }
    }

    /// The writer is gone: say so once, then never return (the caller's shutdown ends it).
    async fn closed<T>(&self) -> T {
        error!("The outbox writer stopped; nothing more can be sent from the outbox.");
        std::future::pending().await
    }

    /// Removes these entries (acknowledged by the next tier) in one transaction; resolves
    /// once that is committed. Unknown seqs are ignored. If the commit fails, the entries
    /// stay and are sent again (a duplicate, never a loss); that is logged.
    pub async fn ack(&self, seqs: &[u64]) {
        if seqs.is_empty() {
            return;
        }
        let (reply, answer) = oneshot::channel();
        if self
            .send(Command::Ack {
                seqs: seqs.to_vec(),
                reply,
            })
            .is_ok()
        {
            let _ = answer.await;
        }
    }

    /// The entry holding `event_id`, if it still waits for the next tier's ack (a scan of
    /// the waiting entries, bounded by `max_bytes`).
    pub async fn find(&self, event_id: &str) -> Result<Option<Waiting>, OutboxError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Find {
            event_id: event_id.to_owned(),
            reply,
        })
        .map_err(|_| OutboxError::Closed { event: None })?;
        match answer.await {
            Ok(result) => result.map_err(|source| OutboxError::Storage {
                event: None,
                source,
            }),
            Err(_) => Err(OutboxError::Closed { event: None }),
        }
    }

    /// Depth, bytes, oldest age and losses now (from memory: never waits for the disk).
    pub fn stats(&self) -> OutboxStats {
        let now = *self.inner.snapshot.borrow();
        let age_ms = now.oldest_ms.map_or(0, |oldest| {
            (self.inner.clock)().saturating_sub(oldest).max(0)
        });
        OutboxStats {
            depth: now.depth(),
            bytes: now.bytes(),
            oldest_age_secs: (age_ms / 1000) as u64,
            dropped: now.dropped,
            expired: now.expired,
            unannounced_dropped: now.unannounced_dropped,
            unannounced_expired: now.unannounced_expired,
        }
    }
}

fn lock(bucket: &Mutex<TokenBucket>) -> std::sync::MutexGuard<'_, TokenBucket> {
    // Every update is a few arithmetic assignments: a poisoned bucket is still consistent.
    bucket.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A token bucket: `rate` tokens per second, at most `rate` stored (one second of burst).
#[derive(Debug, Clone)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: NonZeroU32, now: Instant) -> Self {
        let rate = f64::from(rate.get());
        Self {
            rate,
            tokens: rate,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
    }

    /// Whole tokens available now.
    fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.floor() as usize
    }

    fn take(&mut self, n: usize) {
        self.tokens = (self.tokens - n as f64).max(0.0);
    }

    /// How long until one whole token is available.
    fn until_next(&mut self, now: Instant) -> Duration {
        self.refill(now);
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / self.rate).max(Duration::from_millis(1))
    }
}
