//! The `Store` trait: what controllers and the service layer may ask of any backend.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::{Object, Selector, StoreError, WatchStream};

/// The most objects [`Store::update_all`] writes together: etcd's default `--max-txn-ops`.
pub const MAX_TXN_OBJECTS: usize = 128;

/// A transactional key-value store of [`Object`]s keyed by `(kind, name)`, with one global
/// revision counter, compare-and-swap writes, and an ordered, resumable change feed.
///
/// Every successful `create`, `update` and `delete` bumps the global revision and records a
/// [`WatchEvent`](crate::WatchEvent) at that revision, atomically with the change (by one
/// in SQLite; in etcd, other writes to the cluster bump it too). Revisions never go
/// backwards, including across restarts.
///
/// `tests/conformance.rs` runs the same tests against every implementation.
#[async_trait]
pub trait Store: Send + Sync + Debug + 'static {
    /// Stores a new object. Its `resource_version` is ignored and set to the new revision.
    ///
    /// Fails with [`StoreError::AlreadyExists`] when `(kind, name)` is taken.
    async fn create(&self, obj: Object) -> Result<Object, StoreError>;

    /// Reads one object. Fails with [`StoreError::NotFound`].
    async fn get(&self, kind: &str, name: &str) -> Result<Object, StoreError>;

    /// Reads every object of `kind` that `selector` matches, sorted by name, with the
    /// revision of the snapshot: pass it to [`watch`](Store::watch) to follow every change
    /// made after the list.
    async fn list(&self, kind: &str, selector: &Selector)
    -> Result<(Vec<Object>, u64), StoreError>;

    /// Replaces an object if nobody wrote it since the caller read it: `obj.resource_version`
    /// must equal the stored one, else [`StoreError::Conflict`]. `uid` is kept from the
    /// stored object. Fails with [`StoreError::NotFound`] if the object does not exist.
    async fn update(&self, obj: Object) -> Result<Object, StoreError>;

    /// [`update`](Store::update) of several objects as one write: every one is replaced, or
    /// none is. Fails as `update` does for the first object that is not at its expected
    /// version (or is gone), and then writes nothing. The objects must be distinct, and at most
    /// [`MAX_TXN_OBJECTS`]. For
    /// writes that many callers make at once (the scheduler's bindings): one transaction
    /// costs a fraction of as many.
    ///
    /// SQLite gives each object a revision of its own, in order; etcd gives them all the
    /// transaction's one revision, and a watch delivers its events together. A watcher that
    /// follows from the revision of the last event it saw may therefore miss the rest of
    /// that revision's events if its stream broke among them: one that can take an event
    /// twice resumes from the revision before.
    async fn update_all(&self, objs: Vec<Object>) -> Result<Vec<Object>, StoreError>;

    /// Deletes an object and returns its last state. With `Some(version)`, only if the
    /// stored `resource_version` equals `version`, else [`StoreError::Conflict`].
    async fn delete(
        &self,
        kind: &str,
        name: &str,
        expected_version: Option<u64>,
    ) -> Result<Object, StoreError>;

    /// The current global revision: that of the last write, 0 for an empty SQLite store.
    /// etcd's revision starts at 1 and counts every write to the cluster (leases and
    /// elections too), so callers compare revisions, never count them.
    async fn revision(&self) -> Result<u64, StoreError>;

    /// Follows changes with revision greater than `after`, for one kind or for all
    /// (`None`), in revision order, each exactly once: first those already in the event
    /// log, then live ones.
    ///
    /// Fails with [`StoreError::Compacted`] when events after `after` were compacted away.
    /// The stream is described at [`WatchStream`].
    async fn watch(&self, kind: Option<&str>, after: u64) -> Result<WatchStream, StoreError>;

    /// Drops the event history up to and including `keep_after`; watches from an `after`
    /// below it then fail with [`StoreError::Compacted`]. Compacting to a revision at or
    /// below the current compaction point does nothing; past the current revision fails
    /// with [`StoreError::FutureRevision`]. Objects are never affected.
    async fn compact(&self, keep_after: u64) -> Result<(), StoreError>;
}
