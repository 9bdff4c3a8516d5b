//! What the on-disk stores (the outbox, the dead-letter store) share: SQLite opened for
//! durable commits, and a file that is not a sound database moved aside and replaced.
//!
//! Every store is opened the same way:
//! - `journal_mode=WAL` (a commit appends to the log: one sequential write, readers are not
//!   blocked) and `synchronous=FULL` (the log is fsynced at every commit, so a committed
//!   transaction survives a power cut as far as the medium keeps its promises);
//! - `journal_size_limit`: the log is truncated back to 4 MiB after a checkpoint, so a burst
//!   does not leave a large file behind;
//! - `busy_timeout` 5 s, so that a second connection (the `dlq` command beside a running
//!   agent) waits for a lock instead of failing at once;
//! - `PRAGMA quick_check` before anything else is read.
//!
//! A file that SQLite reports as corrupt or as not a database is never deleted: it is renamed
//! to `NAME.corrupt-<unix seconds>` (with its `-wal`/`-shm` companions, renamed the same way),
//! an ERROR is logged by the caller, and a fresh database takes its place. [`salvage_rows`]
//! reads what it can of the old file into the new one. A file that is merely busy, unreadable
//! (permissions, I/O error) or written by a newer schema is an error, never "corrupt".

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, Row};

/// How long a connection waits for another one's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an exclusive store waits for another holder at open.
const EXCLUSIVE_WAIT: Duration = Duration::from_secs(1);

/// Why a store could not be opened or used. Cloneable, so that one failed group commit can
/// be reported to every caller in the group.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("{context}: {source}")]
    Sqlite {
        /// What was being done.
        context: &'static str,
        /// SQLite's error.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// A file-system operation failed.
    #[error("cannot {context} {}: {source}", path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Another process holds the database (an exclusive store opened twice).
    #[error("{} is in use by another process (is another nexus-agent running on the same data_dir?)", path.display())]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The file was written by a newer nexus-agent.
    #[error("{} has schema version {found}, newer than this nexus-agent understands ({supported}); run the newer agent or move the file aside", path.display())]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// The database does not exist (and was not to be created).
    #[error("{} does not exist yet: nothing has been stored there", path.display())]
    Missing {
        /// The database file.
        path: PathBuf,
    },
    /// The database is damaged and was not to be repaired here.
    #[error("{} is damaged ({detail}); the agent moves it aside and starts a fresh one when it next starts", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
}

impl StoreError {
    pub(crate) fn sqlite(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        move |source| StoreError::Sqlite {
            context,
            source: Arc::new(source),
        }
    }
}

/// How a store shares its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Locking {
    /// `locking_mode=EXCLUSIVE`, taken at open: a second process opening the same file fails
    /// with [`StoreError::Locked`] instead of interleaving writes (the outbox).
    Exclusive,
    /// Normal WAL locking: other processes may read and write too (the dead-letter store,
    /// which the `dlq` command edits while the agent runs).
    Shared,
}

/// A store's schema: created in one transaction when `user_version` is 0; an older
/// version is brought up to date one step at a time, each step in one transaction with its
/// new `user_version`.
#[derive(Debug)]
pub(crate) struct Schema {
    /// `PRAGMA user_version` of this layout.
    pub version: i64,
    /// The DDL, run once on a new database.
    pub create: &'static str,
    /// `upgrades[i]` takes a database from version `i + 1` to `i + 2`; so it holds
    /// `version - 1` steps.
    pub upgrades: &'static [&'static str],
}

/// A database that was found damaged and replaced.
#[derive(Debug)]
pub(crate) struct MovedAside {
    /// Where the damaged file is now.
    pub to: PathBuf,
    /// What SQLite said about it.
    pub detail: String,
}

/// An open store, and what happened to a damaged predecessor.
#[derive(Debug)]
pub(crate) struct Opened {
    pub conn: Connection,
    pub moved_aside: Option<MovedAside>,
}

enum Failure {
    Corrupt(String),
    Other(StoreError),
}

/// Opens (creating it and its directory if needed) a store at `path`; a damaged file is
/// moved aside and replaced by a fresh database (see the module docs).
pub(crate) fn open(path: &Path, schema: &Schema, locking: Locking) -> Result<Opened, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
            context: "create the directory",
            path: dir.to_path_buf(),
            source: Arc::new(e),
        })?;
    }
    match try_open(path, schema, locking, true) {
        Ok(conn) => Ok(Opened {
            conn,
            moved_aside: None,
        }),
        Err(Failure::Other(error)) => Err(error),
        Err(Failure::Corrupt(detail)) => {
            let to = move_aside(path)?;
            let conn = try_open(path, schema, locking, true).map_err(|failure| match failure {
                Failure::Other(error) => error,
                Failure::Corrupt(detail) => StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: format!("a fresh database is damaged too: {detail}"),
                },
            })?;
            Ok(Opened {
                conn,
                moved_aside: Some(MovedAside { to, detail }),
            })
        }
    }
}

/// Opens an existing store for an operator command: never creates, never moves anything
/// aside (the agent that owns the file does that), reports damage as an error.
pub(crate) fn open_existing(path: &Path, schema: &Schema) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing {
            path: path.to_path_buf(),
        });
    }
    try_open(path, schema, Locking::Shared, false).map_err(|failure| match failure {
        Failure::Other(error) => error,
        Failure::Corrupt(detail) => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail,
        },
    })
}

/// An in-memory database with the schema (tests, and the outbox's `in_memory`).
pub(crate) fn open_in_memory(schema: &Schema) -> Result<Connection, StoreError> {
    let conn = Connection::open_in_memory().map_err(StoreError::sqlite("open in memory"))?;
    create_schema(&conn, Path::new(":memory:"), schema).map_err(|failure| match failure {
        Failure::Other(error) => error,
        Failure::Corrupt(detail) => StoreError::Corrupt {
            path: PathBuf::from(":memory:"),
            detail,
        },
    })?;
    Ok(conn)
}

fn try_open(
    path: &Path,
    schema: &Schema,
    locking: Locking,
    create: bool,
) -> Result<Connection, Failure> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| classify(path, "open the database", e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| classify(path, "set busy_timeout", e))?;
    if locking == Locking::Exclusive {
        // Must precede the first access: then WAL keeps its index in heap memory (no -shm
        // file) and the locks, once taken, are held until the connection closes.
        conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE;")
            .map_err(|e| classify(path, "set locking_mode", e))?;
    }
    // The first statement that reads the file: a non-database fails here.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|e| classify(path, "set journal_mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Failure::Other(StoreError::Sqlite {
            context: "set journal_mode (WAL refused)",
            source: Arc::new(rusqlite::Error::InvalidQuery),
        }));
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA journal_size_limit = 4194304;")
        .map_err(|e| classify(path, "set synchronous", e))?;
    if locking == Locking::Exclusive {
        // Take the write lock now, so a second agent fails at open, not at its first push.
        // A holder that is just closing gets a moment; a running one is not waited for long.
        conn.busy_timeout(EXCLUSIVE_WAIT)
            .and_then(|()| conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;"))
            .and_then(|()| conn.busy_timeout(BUSY_TIMEOUT))
            .map_err(|e| classify(path, "lock the database", e))?;
    }
    quick_check(&conn, path)?;
    create_schema(&conn, path, schema)?;
    Ok(conn)
}

fn quick_check(conn: &Connection, path: &Path) -> Result<(), Failure> {
    let mut stmt = conn
        .prepare("PRAGMA quick_check")
        .map_err(|e| classify(path, "check the database", e))?;
    let lines: Vec<String> = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .and_then(|rows| rows.take(5).collect())
        .map_err(|e| classify(path, "check the database", e))?;
    if lines.len() == 1 && lines[0] == "ok" {
        Ok(())
    } else {
        Err(Failure::Corrupt(format!(
            "quick_check: {}",
            lines.join("; ")
        )))
    }
}

fn create_schema(conn: &Connection, path: &Path, schema: &Schema) -> Result<(), Failure> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| classify(path, "read the schema version", e))?;
    if version > schema.version {
        return Err(Failure::Other(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported: schema.version,
        }));
    }
    if version == 0 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {} PRAGMA user_version = {}; COMMIT;",
            schema.create, schema.version
        ))
        .map_err(|e| classify(path, "create the schema", e))?;
        return Ok(());
    }
    for from in version..schema.version {
        let step = usize::try_from(from - 1)
            .ok()
            .and_then(|i| schema.upgrades.get(i))
            .ok_or_else(|| {
                Failure::Other(StoreError::Sqlite {
                    context: "upgrade the schema (no step from this version)",
                    source: Arc::new(rusqlite::Error::InvalidQuery),
                })
            })?;
        let upgraded = conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {step} PRAGMA user_version = {}; COMMIT;",
            from + 1
        ));
        if let Err(error) = upgraded {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(classify(path, "upgrade the schema", error));
        }
    }
    Ok(())
}

/// Damage is only what SQLite calls damage; busy, I/O and permission errors are not.
fn classify(path: &Path, context: &'static str, error: rusqlite::Error) -> Failure {
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            Failure::Corrupt(format!("{context}: {error}"))
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            Failure::Other(StoreError::Locked {
                path: path.to_path_buf(),
            })
        }
        _ => Failure::Other(StoreError::Sqlite {
            context,
            source: Arc::new(error),
        }),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Renames `path` (and its `-wal`, `-shm`) to `path.corrupt-<unix seconds>[-n]`.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut to = with_suffix(path, &format!(".corrupt-{secs}"));
    let mut n = 1;
    while to.exists() {
        n += 1;
        to = with_suffix(path, &format!(".corrupt-{secs}-{n}"));
    }
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|e| StoreError::Io {
            context: "move aside the damaged database",
            path: from.to_path_buf(),
            source: Arc::new(e),
        })
    };
    rename(path, &to)?;
    // The log belongs to the damaged file: left in place, SQLite would try to apply it to
    // the fresh database.
    for companion in ["-wal", "-shm"] {
        let from = with_suffix(path, companion);
        if from.exists() {
            rename(&from, &with_suffix(&to, companion))?;
        }
    }
    Ok(to)
}

/// Reads what is readable of a damaged database, best effort: the rows of `select` in key
/// order from the front until the first error, then from the back (`select_desc`) down to
/// the last row read from the front. So the rows before and after a damaged region are
/// kept; the region itself, and anything an index scan cannot reach, is not. The file is
/// opened read-only and is not changed. Rows that `read` refuses are skipped and counted.
///
/// Returns the rows (ascending key) and how many rows were refused.
pub(crate) fn salvage_rows<T>(
    damaged: &Path,
    select_asc: &str,
    select_desc: &str,
    read: impl Fn(&Row<'_>) -> rusqlite::Result<Option<(i64, T)>>,
) -> (Vec<(i64, T)>, u64) {
    let mut kept = Vec::new();
    let mut refused = 0u64;
    let Some(conn) = open_read_only(damaged) else {
        return (kept, refused);
    };
    let mut scan = |sql: &str, stop_at: Option<i64>, out: &mut Vec<(i64, T)>| {
        let Ok(mut stmt) = conn.prepare(sql) else {
            return;
        };
        let Ok(mut rows) = stmt.query([]) else {
            return;
        };
        loop {
            match rows.next() {
                Ok(Some(row)) => match read(row) {
                    Ok(Some((key, value))) => {
                        if stop_at.is_some_and(|stop| key <= stop) {
                            return;
                        }
                        out.push((key, value));
                    }
                    Ok(None) | Err(_) => refused += 1,
                },
                Ok(None) | Err(_) => return,
            }
        }
    };
    scan(select_asc, None, &mut kept);
    let last = kept.last().map(|(key, _)| *key);
    let mut tail = Vec::new();
    scan(select_desc, last, &mut tail);
    tail.reverse();
    kept.extend(tail);
    (kept, refused)
}

/// A read-only connection that can read `path`: normally (with its WAL, if any), or else
/// as an immutable file (no locks, WAL ignored).
fn open_read_only(path: &Path) -> Option<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let readable = |conn: &Connection| {
        // With a file shorter than its header says, SQLite refuses to read anything unless
        // the schema is "writable": then it reads the pages that are there. Nothing is
        // written through this read-only connection.
        let _ = conn.execute_batch("PRAGMA writable_schema = ON;");
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |row| {
            row.get::<_, i64>(0)
        })
        .is_ok()
    };
    if let Ok(conn) = Connection::open_with_flags(path, flags) {
        if readable(&conn) {
            return Some(conn);
        }
    }
    let uri = format!("file:{}?immutable=1", uri_path(path));
    Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)
        .ok()
        .filter(|conn| readable(conn))
}

/// `path` escaped for a `file:` URI.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for byte in path.as_os_str().as_encoded_bytes() {
        match byte {
            b'%' | b'?' | b'#' | 0x80.. | ..0x21 => out.push_str(&format!("%{byte:02X}")),
            _ => out.push(char::from(*byte)),
        }
    }
    out
}
