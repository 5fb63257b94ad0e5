//! Corral's resource store: declared objects, one global revision, compare-and-swap
//! writes and a resumable change feed.
//!
//! The [`Store`] trait is what the service layer and the controllers use; [`SqliteStore`]
//! implements it in one embedded SQLite file for single-host use, [`EtcdStore`] in an etcd
//! v3 cluster (see the mapping below). The store is
//! schema-agnostic: an [`Object`] is a resource's `kind`, `name`, `uid` and `labels`
//! (indexed) plus its whole body as JSON text, stored and returned verbatim (never parsed),
//! so this crate does not depend on the contract crate.
//!
//! Every write bumps one global revision and logs a [`WatchEvent`] at that revision in the
//! same transaction. A reader lists objects with the revision of its snapshot, then watches
//! from that revision: it sees every later change exactly once, in order
//! (list-then-watch, as in Kubernetes). Updates are compare-and-swap on
//! [`Object::resource_version`].
//!
//! ```
//! use corral_store::{EventType, Object, SqliteStore, Store, StoreError};
//! use serde_json::{Value, json};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SqliteStore::open_in_memory().await?;
//! let body = json!({"spec": {"power": "running"}}).to_string();
//! let vm = Object::new("Vm", "web-1", "uid-1", body).with_label("tier", "web");
//! let vm = store.create(vm).await?;
//!
//! let (vms, revision) = store.list("Vm", &"tier=web".parse()?).await?;
//! assert_eq!(vms, [vm.clone()]);
//! let mut changes = store.watch(Some("Vm"), revision).await?;
//!
//! // Compare-and-swap: an update from a stale version fails.
//! let mut stopped = vm.clone();
//! stopped.body = json!({"spec": {"power": "stopped"}}).to_string();
//! store.update(stopped.clone()).await?;
//! let err = store.update(stopped).await.unwrap_err();
//! assert!(matches!(err, StoreError::Conflict { .. }));
//!
//! let change = changes.recv().await.unwrap()?;
//! assert_eq!(change.event, EventType::Modified);
//! let body: Value = serde_json::from_str(&change.object.body)?;
//! assert_eq!(body["spec"]["power"], "stopped");
//! # Ok(())
//! # }
//! ```
//!
//! # Mapping onto etcd
//!
//! The trait follows etcd's model, so that [`EtcdStore`] implements it beside SQLite
//! without changing callers:
//!
//! | `Store` | etcd v3 |
//! |---------|---------|
//! | key `(kind, name)` | key `/corral/<kind>/<name>`, value = the object as JSON |
//! | global revision, [`Store::revision`] | the cluster revision (`header.revision`) |
//! | [`Object::resource_version`] | the key's `mod_revision` |
//! | `create` | `Txn(If create_revision(key) = 0, Then Put)`, else [`StoreError::AlreadyExists`] |
//! | `update` | `Txn(If mod_revision(key) = v, Then Put, Else Range)` → [`StoreError::Conflict`] with the `Else` branch's `mod_revision` |
//! | `update_all` | `Txn(Then Range…)` for the stored uids, then one `Txn(If mod_revision(k) = v…, Then Put…, Else Range…)` of up to [`MAX_TXN_OBJECTS`] keys |
//! | `delete` | `Txn(If mod_revision(key) = v, Then DeleteRange(prev_kv))`, or a plain delete when `expected_version` is `None` |
//! | `list` | `Range` over the prefix `/corral/<kind>/` (sorted by key, hence by name); the snapshot revision is `header.revision`; selectors filter client-side |
//! | `watch(kind, after)` | `Watch` of the kind's prefix, or of `/corral/`, from `start_revision = after + 1` with `prev_kv` (a delete event carries the last state) |
//! | [`StoreError::Compacted`] | the watch response's `compact_revision` |
//! | `compact(keep_after)` | `Compact(keep_after + 1)` (etcd keeps revisions at or above the compaction point) |
//!
//! Every write but `update_all` touches one key. In SQLite revisions along a watch are
//! strictly increasing; in etcd the keys of one `update_all` share its revision, and a watch
//! delivers them together (etcd never splits a revision across watch responses). A name may contain `/` (`project/name`): kinds never do,
//! so one kind's range never holds another kind's keys.
//!
//! Liveness and leader election are separate traits, [`Leases`] and [`Elections`]:
//! [`EtcdCoordinator`] implements them on etcd leases and etcd's election API (keys under
//! `/corral-coord/`, outside the objects' prefix), [`LocalCoordinator`] in one process
//! for a single host.
#![deny(missing_docs)]

mod coord;
mod error;
mod etcd;
mod object;
mod selector;
mod sqlite;
mod store;
mod watch;

pub use coord::{Elections, Leadership, Lease, Leases, LocalCoordinator};
pub use error::{BackendError, StoreError};
pub use etcd::{DEFAULT_PREFIX, EtcdConfig, EtcdCoordinator, EtcdStore, EtcdTls};
pub use object::{EventType, Object, WatchEvent};
pub use selector::{Requirement, Selector, SelectorError};
pub use sqlite::{SqliteConfig, SqliteStore};
pub use store::{MAX_TXN_OBJECTS, Store};
pub use watch::WatchStream;
