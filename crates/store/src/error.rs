//! Errors returned by a [`Store`](crate::Store).

use std::path::PathBuf;

/// A boxed error from a store backend (SQLite today, etcd later).
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No object of this kind has this name.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
    },
    /// `create` found an object of this kind with this name already.
    #[error("{kind} {name:?} already exists; pick another name or update the existing one")]
    AlreadyExists {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
    },
    /// A compare-and-swap failed: the object changed since the caller read it.
    #[error(
        "{kind} {name:?} was modified concurrently: expected resource_version {expected}, \
         found {actual}; read it again and retry"
    )]
    Conflict {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// The resource version the caller expected.
        expected: u64,
        /// The resource version the store holds.
        actual: u64,
    },
    /// The events after `requested` were compacted away: list again, then watch from the
    /// list's revision.
    #[error(
        "revision {requested} is compacted (history starts after revision {oldest}); \
         list again and watch from the list's revision"
    )]
    Compacted {
        /// The revision the caller asked to watch after.
        requested: u64,
        /// The compaction revision: the smallest `after` that can still be watched from.
        oldest: u64,
    },
    /// `compact` was asked to drop history the store has not written yet.
    #[error("cannot compact up to revision {requested}: the store is only at revision {current}")]
    FutureRevision {
        /// The revision passed to `compact`.
        requested: u64,
        /// The store's current revision.
        current: u64,
    },
    /// The database was written by a newer Corral whose schema this build does not know.
    #[error(
        "store database {} has schema version {found}, but this build supports at most \
         {supported}; upgrade Corral or point it at another data directory",
        .path.display()
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The schema version recorded in the database.
        found: u32,
        /// The newest schema version this build knows.
        supported: u32,
    },
    /// Another process (or another store in this one) has the database open: a store
    /// file has exactly one owner.
    #[error(
        "store database {} is in use by another process; stop it, or point this one at \
         another data directory",
        .path.display()
    )]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The database file could not be created or opened.
    #[error("cannot open store database {}: {source}", .path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: BackendError,
    },
    /// A stored value could not be decoded, or an object could not be encoded.
    #[error("store data for {what} is not valid JSON: {source}")]
    Corrupt {
        /// What was being decoded or encoded, such as `Vm "web-1"`.
        what: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The store's configuration is unusable.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The setting, such as `etcd endpoints`.
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// The backend failed while doing `operation`.
    #[error("store backend failed to {operation}: {source}")]
    Backend {
        /// What the store was doing, such as `create an object`.
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
}

impl StoreError {
    /// Wraps a backend error with what the store was doing.
    pub fn backend(operation: &'static str, source: impl Into<BackendError>) -> Self {
        StoreError::Backend {
            operation,
            source: source.into(),
        }
    }
}
