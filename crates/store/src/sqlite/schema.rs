//! Opening the database file: permissions, pragmas and versioned migrations.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

/// The schema, one migration per version: `MIGRATIONS[i]` takes a database from
/// `user_version` `i` to `i + 1`. Append only; never edit a released migration.
const MIGRATIONS: &[&str] = &[
    // 1: objects, the event log, and the revision counters.
    "CREATE TABLE objects (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        uid TEXT NOT NULL,
        labels TEXT NOT NULL,
        resource_version INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (kind, name)
    );
    CREATE TABLE events (
        revision INTEGER PRIMARY KEY,
        type INTEGER NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        uid TEXT NOT NULL,
        labels TEXT NOT NULL,
        resource_version INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE state (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        revision INTEGER NOT NULL,
        compacted INTEGER NOT NULL
    );
    INSERT INTO state (id, revision, compacted) VALUES (0, 0, 0);",
];

/// The schema version this build writes: the number of migrations.
pub(crate) const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The path that names SQLite's in-memory database.
pub(crate) const IN_MEMORY: &str = ":memory:";

/// Opens (creating with mode 0600 if needed) and migrates the database at `path`.
/// Returns the connection with the stored `(revision, compacted)`.
pub(crate) fn open(
    path: &Path,
    busy_timeout: Duration,
) -> Result<(Connection, u64, u64), StoreError> {
    let open_err = |source| open_error(path, source);
    if path.as_os_str() != IN_MEMORY {
        // Create the file ourselves so that it never exists with a wider mode; SQLite gives
        // its -wal and -shm files the database file's mode.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source: source.into(),
            })?;
    }
    let mut conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(busy_timeout).map_err(open_err)?;
    // One owner per file: the revision counter and the live watch feed live in this
    // process, so a second writer would break both. The lock is taken by the migration
    // below and held until the store is dropped; the WAL index then lives in this
    // process's memory, so there is no -shm file.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(open_err)?;
    // Readers never block the writer, and a commit costs no fsync (only checkpoints do):
    // a power loss may lose the last commits but never corrupts the database.
    let _mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_err)?;
    conn.set_prepared_statement_cache_capacity(32);
    migrate(&mut conn, path)?;
    let (revision, compacted) = conn
        .query_row(
            "SELECT revision, compacted FROM state WHERE id = 0",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(open_err)?;
    Ok((conn, revision, compacted))
}

fn open_error(path: &Path, source: rusqlite::Error) -> StoreError {
    if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
        StoreError::InUse {
            path: path.to_owned(),
        }
    } else {
        StoreError::Open {
            path: path.to_owned(),
            source: source.into(),
        }
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = |source| open_error(path, source);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(open_err)?;
    let found: u32 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(open_err)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tracing::info!(path = %path.display(), version = version + 1, "migrating store schema");
        tx.execute_batch(sql).map_err(open_err)?;
    }
    if found < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(open_err)?;
    }
    tx.commit().map_err(open_err)
}
