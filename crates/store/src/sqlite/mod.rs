//! The embedded SQLite store: one file, one connection, one writer.

mod db;
mod schema;
mod watcher;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::{EventType, Object, Selector, Store, StoreError, WatchEvent, WatchStream};
use db::Db;

/// Tuning for a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// How long a statement waits for a lock held by another process on the same file.
    pub busy_timeout: Duration,
    /// How many live events the store buffers for its watchers. A watcher that falls
    /// further behind is caught up from the event log instead, without slowing writers.
    pub broadcast_capacity: usize,
    /// How many events each [`WatchStream`] buffers before its reader must catch up.
    pub stream_capacity: usize,
    /// How many events a catching-up watcher reads from the log per query.
    pub replay_page: usize,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            busy_timeout: Duration::from_secs(5),
            broadcast_capacity: 4096,
            stream_capacity: 256,
            replay_page: 512,
        }
    }
}

/// A [`Store`] in one SQLite file (or in memory), for a single host.
///
/// The database runs in WAL mode with `synchronous=NORMAL`: a commit costs no `fsync`, and
/// a power loss may lose the last commits but never corrupts the file. The file is created
/// with mode 0600. Its schema is versioned through `PRAGMA user_version`; opening a file
/// written by a newer Corral fails with [`StoreError::SchemaTooNew`]. The store holds an
/// exclusive lock on the file until it is dropped (the revision counter and the live
/// watch feed live in this process): a second opener gets [`StoreError::InUse`].
///
/// All SQL runs on tokio's blocking pool through one connection behind a mutex, so writes
/// are serialised and the async runtime is never blocked. Cloning is cheap and shares the
/// database; watches end when the last clone is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Mutex<Db>,
    /// Live events, sent after commit while the connection is still locked, so that they
    /// are sent in revision order.
    events: broadcast::Sender<Arc<WatchEvent>>,
    /// The revision of the last commit, readable without taking the lock.
    revision: AtomicU64,
    path: PathBuf,
    config: SqliteConfig,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Db> {
        // A panic while locked leaves no half-done transaction behind (it rolls back on
        // drop), so the connection is still usable.
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a write and, once it is committed, publishes its event.
    fn write(
        &self,
        event: EventType,
        op: impl FnOnce(&mut Db) -> Result<(Object, u64), StoreError>,
    ) -> Result<Object, StoreError> {
        let mut object = self.write_all(event, |db| op(db).map(|(o, r)| vec![(o, r)]))?;
        Ok(object.remove(0))
    }

    /// [`write`](Self::write) of an operation that changes several objects, each at its own
    /// revision (ascending): the watchers get their events in that order.
    fn write_all(
        &self,
        event: EventType,
        op: impl FnOnce(&mut Db) -> Result<Vec<(Object, u64)>, StoreError>,
    ) -> Result<Vec<Object>, StoreError> {
        let mut db = self.lock();
        let written = op(&mut db)?;
        if let Some((_, last)) = written.last() {
            self.revision.store(*last, Ordering::Release);
        }
        let watched = self.events.receiver_count() > 0;
        let objects = written
            .into_iter()
            .map(|(object, revision)| {
                if watched {
                    let event = WatchEvent {
                        revision,
                        event,
                        object: object.clone(),
                    };
                    // Fails only when every receiver is gone, which is fine.
                    let _ = self.events.send(Arc::new(event));
                }
                object
            })
            .collect();
        drop(db);
        Ok(objects)
    }
}

impl SqliteStore {
    /// Opens the database at `path`, creating it (mode 0600) and migrating its schema as
    /// needed. The path `":memory:"` opens a private in-memory database.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteConfig::default()).await
    }

    /// Opens an empty in-memory database, gone when the store is dropped.
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        Self::open(schema::IN_MEMORY).await
    }

    /// [`open`](SqliteStore::open) with explicit tuning.
    pub async fn open_with(
        path: impl AsRef<Path>,
        config: SqliteConfig,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        let store = tokio::task::spawn_blocking(move || {
            let (conn, revision, compacted) = schema::open(&path, config.busy_timeout)?;
            tracing::debug!(path = %path.display(), revision, compacted, "opened store");
            let (events, _) = broadcast::channel(config.broadcast_capacity.max(1));
            Ok::<_, StoreError>(SqliteStore {
                inner: Arc::new(Inner {
                    db: Mutex::new(Db::new(conn, revision, compacted)),
                    events,
                    revision: AtomicU64::new(revision),
                    path,
                    config,
                }),
            })
        })
        .await
        .map_err(|e| StoreError::backend("open the store", e))??;
        Ok(store)
    }

    /// The database file (`":memory:"` for an in-memory store).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The schema version this build writes into `PRAGMA user_version`.
    pub fn schema_version() -> u32 {
        schema::SCHEMA_VERSION
    }

    /// Runs `f` on the blocking pool with the store's state.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::backend("run a store task", e))?
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(&self, obj: Object) -> Result<Object, StoreError> {
        self.blocking(move |inner| {
            inner.write(EventType::Added, |db| {
                let obj = db.create(obj)?;
                let revision = obj.resource_version;
                Ok((obj, revision))
            })
        })
        .await
    }

    async fn get(&self, kind: &str, name: &str) -> Result<Object, StoreError> {
        let (kind, name) = (kind.to_owned(), name.to_owned());
        self.blocking(move |inner| inner.lock().get(&kind, &name))
            .await
    }

    async fn list(
        &self,
        kind: &str,
        selector: &Selector,
    ) -> Result<(Vec<Object>, u64), StoreError> {
        let (kind, selector) = (kind.to_owned(), selector.clone());
        self.blocking(move |inner| inner.lock().list(&kind, &selector))
            .await
    }

    async fn update(&self, obj: Object) -> Result<Object, StoreError> {
        self.blocking(move |inner| {
            inner.write(EventType::Modified, |db| {
                let obj = db.update(obj)?;
                let revision = obj.resource_version;
                Ok((obj, revision))
            })
        })
        .await
    }

    async fn update_all(&self, objs: Vec<Object>) -> Result<Vec<Object>, StoreError> {
        if objs.is_empty() {
            return Ok(Vec::new());
        }
        if objs.len() > crate::MAX_TXN_OBJECTS {
            return Err(StoreError::backend(
                "update objects together",
                format!(
                    "{} objects in one transaction; at most {} may go together",
                    objs.len(),
                    crate::MAX_TXN_OBJECTS
                ),
            ));
        }
        self.blocking(move |inner| {
            inner.write_all(EventType::Modified, |db| {
                let objs = db.update_all(objs)?;
                Ok(objs
                    .into_iter()
                    .map(|o| {
                        let revision = o.resource_version;
                        (o, revision)
                    })
                    .collect())
            })
        })
        .await
    }

    async fn delete(
        &self,
        kind: &str,
        name: &str,
        expected_version: Option<u64>,
    ) -> Result<Object, StoreError> {
        let (kind, name) = (kind.to_owned(), name.to_owned());
        self.blocking(move |inner| {
            inner.write(EventType::Deleted, |db| {
                db.delete(&kind, &name, expected_version)
            })
        })
        .await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.inner.revision.load(Ordering::Acquire))
    }

    async fn watch(&self, kind: Option<&str>, after: u64) -> Result<WatchStream, StoreError> {
        watcher::start(&self.inner, kind, after).await
    }

    async fn compact(&self, keep_after: u64) -> Result<(), StoreError> {
        self.blocking(move |inner| inner.lock().compact(keep_after))
            .await
    }
}
