//! What a node's agent may see and change of the store, served to it by the servers: agents
//! hold no store credentials, and run their controllers over this narrow view.
//!
//! A node reads the `Node`s (a source picks the target of a live migration among them), the VMs
//! bound to it (`status.node`) or migrating to it (`status.migration.target`), and the volumes,
//! networks, images and snapshots VMs reference; it writes its own `Node`, its VMs without
//! changing their spec (status, and deleting those marked for deletion), the migration status
//! of a VM migrating to it, networks' status, and the status of the volumes on its disk
//! (`status.node` its own) or that a VM bound to it uses (a new volume is made on its first
//! VM's node; a volume moves with its VM's live migration), deleting its own volumes once
//! marked for deletion, and the status of the snapshots of its VMs (deleting them once marked).
//! Nothing else: identities, projects, sources, join tokens, other nodes, other nodes' VMs,
//! volumes and snapshots are refused.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use corral_store::{EventType, Object, Selector, Store, StoreError, WatchEvent, WatchStream};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An object as it travels between a server and an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireObject {
    /// Its kind.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The revision of its last write.
    pub resource_version: u64,
    /// The resource, JSON text.
    pub body: String,
}

impl From<Object> for WireObject {
    fn from(o: Object) -> Self {
        WireObject {
            kind: o.kind,
            name: o.name,
            uid: o.uid,
            labels: o.labels,
            resource_version: o.resource_version,
            body: o.body,
        }
    }
}

impl From<WireObject> for Object {
    fn from(o: WireObject) -> Self {
        Object {
            kind: o.kind,
            name: o.name,
            uid: o.uid,
            labels: o.labels,
            resource_version: o.resource_version,
            body: o.body,
        }
    }
}

/// One store call of an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreCall {
    /// [`Store::get`].
    Get {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
    },
    /// [`Store::list`].
    List {
        /// The kind.
        kind: String,
        /// A label selector, `k=v,…` (empty: all).
        #[serde(default)]
        selector: String,
    },
    /// [`Store::create`].
    Create {
        /// The object.
        object: WireObject,
    },
    /// [`Store::update`].
    Update {
        /// The object, with the version it was read at.
        object: WireObject,
    },
    /// [`Store::delete`].
    Delete {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
        /// Only at this version.
        #[serde(default)]
        expected_version: Option<u64>,
    },
    /// [`Store::revision`].
    Revision,
}

/// What a store call answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreAnswer {
    /// One object.
    Object(WireObject),
    /// A list and its revision.
    List {
        /// The objects.
        items: Vec<WireObject>,
        /// The revision of the list.
        revision: u64,
    },
    /// A revision.
    Revision(u64),
    /// One watch event.
    Event {
        /// Its revision.
        revision: u64,
        /// `added`, `modified` or `deleted`.
        event: String,
        /// The object.
        object: WireObject,
    },
    /// The store's answer was an error (not found, a conflict …), or the node may not.
    Error(WireError),
}

/// A store error as it travels: the ones controllers act on keep their shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "code", deny_unknown_fields)]
pub enum WireError {
    /// [`StoreError::NotFound`].
    NotFound {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
    },
    /// [`StoreError::AlreadyExists`].
    AlreadyExists {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
    },
    /// [`StoreError::Conflict`].
    Conflict {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
        /// The version the caller had.
        expected: u64,
        /// The version stored.
        actual: u64,
    },
    /// [`StoreError::Compacted`].
    Compacted {
        /// Asked after.
        requested: u64,
        /// The oldest revision still watchable.
        oldest: u64,
    },
    /// The node may not do this.
    PermissionDenied {
        /// What was refused and why.
        message: String,
    },
    /// Any other failure.
    Other {
        /// What failed.
        message: String,
    },
}

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, name } => WireError::NotFound { kind, name },
            StoreError::AlreadyExists { kind, name } => WireError::AlreadyExists { kind, name },
            StoreError::Conflict {
                kind,
                name,
                expected,
                actual,
            } => WireError::Conflict {
                kind,
                name,
                expected,
                actual,
            },
            StoreError::Compacted { requested, oldest } => {
                WireError::Compacted { requested, oldest }
            }
            other => WireError::Other {
                message: other.to_string(),
            },
        }
    }
}

impl From<WireError> for StoreError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NotFound { kind, name } => StoreError::NotFound { kind, name },
            WireError::AlreadyExists { kind, name } => StoreError::AlreadyExists { kind, name },
            WireError::Conflict {
                kind,
                name,
                expected,
                actual,
            } => StoreError::Conflict {
                kind,
                name,
                expected,
                actual,
            },
            WireError::Compacted { requested, oldest } => {
                StoreError::Compacted { requested, oldest }
            }
            WireError::PermissionDenied { message } | WireError::Other { message } => {
                StoreError::backend("ask the server", message)
            }
        }
    }
}

/// Kinds a node reads whole: what its VMs may reference.
const SHARED_KINDS: &[&str] = &["Volume", "Network", "Image", "Snapshot"];

/// The store as node `node` may use it.
#[derive(Debug, Clone)]
pub struct NodeScope {
    store: Arc<dyn Store>,
    node: String,
}

fn denied(message: String) -> WireError {
    WireError::PermissionDenied { message }
}

impl NodeScope {
    /// Node `node`'s view of `store`.
    pub fn new(store: Arc<dyn Store>, node: impl Into<String>) -> Self {
        NodeScope {
            store,
            node: node.into(),
        }
    }

    fn bound_here(&self, obj: &Object) -> bool {
        serde_json::from_str::<Value>(&obj.body)
            .ok()
            .is_some_and(|v| v["status"]["node"].as_str() == Some(self.node.as_str()))
    }

    /// A VM whose latest live migration goes (or went) to this node: the target receives it,
    /// and after a failure or cancel still sees it, to end its receiving QEMU.
    fn migrating_here(&self, obj: &Object) -> bool {
        obj.kind == "Vm"
            && serde_json::from_str::<Value>(&obj.body)
                .ok()
                .is_some_and(|v| {
                    v["status"]["migration"]["target"].as_str() == Some(self.node.as_str())
                })
    }

    fn vm_visible(&self, obj: &Object) -> bool {
        self.bound_here(obj) || self.migrating_here(obj)
    }

    fn readable(&self, obj: &Object) -> bool {
        match obj.kind.as_str() {
            "Vm" => self.vm_visible(obj),
            "Node" => true,
            kind => SHARED_KINDS.contains(&kind),
        }
    }

    fn kind_readable(&self, kind: &str) -> Result<(), WireError> {
        if kind == "Vm" || kind == "Node" || SHARED_KINDS.contains(&kind) {
            Ok(())
        } else {
            Err(denied(format!(
                "node {:?} may not read {kind} objects (only its Node, its VMs and what they \
                 reference)",
                self.node
            )))
        }
    }

    /// Answers one call.
    pub async fn call(&self, call: StoreCall) -> StoreAnswer {
        match self.answer(call).await {
            Ok(answer) => answer,
            Err(e) => StoreAnswer::Error(e),
        }
    }

    async fn answer(&self, call: StoreCall) -> Result<StoreAnswer, WireError> {
        let store = &self.store;
        Ok(match call {
            StoreCall::Get { kind, name } => {
                self.kind_readable(&kind)?;
                let obj = store.get(&kind, &name).await?;
                if !self.readable(&obj) {
                    return Err(denied(format!(
                        "{kind} {name:?} is not node {:?}'s",
                        self.node
                    )));
                }
                StoreAnswer::Object(obj.into())
            }
            StoreCall::List { kind, selector } => {
                self.kind_readable(&kind)?;
                let selector: Selector = selector.parse().map_err(|e| WireError::Other {
                    message: format!("selector {selector:?}: {e}"),
                })?;
                let (items, revision) = store.list(&kind, &selector).await?;
                StoreAnswer::List {
                    items: items
                        .into_iter()
                        .filter(|o| self.readable(o))
                        .map(Into::into)
                        .collect(),
                    revision,
                }
            }
            StoreCall::Create { object } => {
                let object = Object::from(object);
                if object.kind != "Node" || object.name != self.node {
                    return Err(denied(format!(
                        "node {:?} may create only its own Node, not {} {:?}",
                        self.node, object.kind, object.name
                    )));
                }
                StoreAnswer::Object(store.create(object).await?.into())
            }
            StoreCall::Update { object } => {
                let object = Object::from(object);
                let stored = store.get(&object.kind, &object.name).await?;
                self.may_update(&stored, &object).await?;
                StoreAnswer::Object(store.update(object).await?.into())
            }
            StoreCall::Delete {
                kind,
                name,
                expected_version,
            } => {
                let stored = store.get(&kind, &name).await?;
                let deleting = serde_json::from_str::<Value>(&stored.body)
                    .ok()
                    .is_some_and(|v| is_set(&v["metadata"]["deleting"]));
                let own = match kind.as_str() {
                    "Vm" | "Volume" => self.bound_here(&stored),
                    "Snapshot" => self.snapshot_of_vm_here(&stored).await?,
                    _ => false,
                };
                if !own || !deleting {
                    return Err(denied(format!(
                        "node {:?} may delete only its own VMs and volumes, and snapshots of \
                         its VMs, marked for deletion, not {kind} {name:?}",
                        self.node
                    )));
                }
                StoreAnswer::Object(store.delete(&kind, &name, expected_version).await?.into())
            }
            StoreCall::Revision => StoreAnswer::Revision(store.revision().await?),
        })
    }

    /// Its own Node (not its spec: cordoning is the admins'); the status of its VMs and of
    /// networks, and marking its VMs for deletion (an expired VM).
    async fn may_update(&self, stored: &Object, new: &Object) -> Result<(), WireError> {
        let allowed = match stored.kind.as_str() {
            "Volume" => only_status(stored, new) && self.may_hold_volume(stored, new).await?,
            "Node" => stored.name == self.node && same_spec(stored, new),
            "Vm" => {
                (self.bound_here(stored) && only_status(stored, new))
                    || (self.migrating_here(stored) && only_migration(stored, new))
            }
            "Network" => only_status(stored, new),
            // Snapshots are taken, restored and removed by the node that runs their VM.
            "Snapshot" => only_status(stored, new) && self.snapshot_of_vm_here(stored).await?,
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(denied(format!(
                "node {:?} may not change {} {:?} (only its Node, the status of its VMs, of \
                 networks and of its volumes, and the migration status of VMs migrating to it)",
                self.node, stored.kind, stored.name
            )))
        }
    }

    /// Whether snapshot `snap`'s VM is bound to this node.
    async fn snapshot_of_vm_here(&self, snap: &Object) -> Result<bool, WireError> {
        let Some(vm) = serde_json::from_str::<Value>(&snap.body)
            .ok()
            .and_then(|v| v["spec"]["vm"].as_str().map(str::to_owned))
        else {
            return Ok(false);
        };
        let (project, _) = corral_contract::split_key(&snap.name);
        match self
            .store
            .get("Vm", &corral_contract::object_key(project, &vm))
            .await
        {
            Ok(vm) => Ok(self.bound_here(&vm)),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the node may write `new` over the volume `stored`: the volume stays or becomes
    /// this node's (`status.node`), and it is this node's already or a VM bound here uses it
    /// (its first VM placed here, or a VM that moved here live with its disks).
    async fn may_hold_volume(&self, stored: &Object, new: &Object) -> Result<bool, WireError> {
        if !self.bound_here(new) {
            return Ok(false);
        }
        // Only a volume of a pool can be in a shared one: a node-local volume said to be
        // shared would have other nodes start its VMs on a file they do not have.
        let Ok(volume) = serde_json::from_str::<Value>(&new.body) else {
            return Ok(false);
        };
        if volume["status"]["shared"] == true && volume["spec"]["pool"].is_null() {
            return Ok(false);
        }
        if self.bound_here(stored) {
            return Ok(true);
        }
        let (vms, _) = self.store.list("Vm", &Selector::default()).await?;
        let users: Vec<_> = vms
            .iter()
            .filter_map(|vm| {
                Some((
                    vm,
                    serde_json::from_str::<corral_contract::Vm>(&vm.body).ok()?,
                ))
            })
            .filter(|(_, vm)| {
                vm.spec
                    .volume_names()
                    .any(|v| vm.metadata.key_of(v) == stored.name)
            })
            .collect();
        if users.iter().any(|(object, _)| self.bound_here(object)) {
            return Ok(true);
        }
        // A deleted volume of a shared pool that no VM uses: any node may finalize it (its
        // own node may be gone for good).
        let old = serde_json::from_str::<Value>(&stored.body).unwrap_or_default();
        Ok(users.is_empty()
            && old["status"]["shared"] == true
            && is_set(&old["metadata"]["deleting"]))
    }

    /// Whether the node may fetch the image blob `digest`: the bytes of an image that a
    /// volume of this node clones (it claims a volume before making it). Refused otherwise,
    /// so a node reads no image its own volumes do not need.
    pub async fn may_fetch_blob(&self, digest: &str) -> Result<(), WireError> {
        let (volumes, _) = self.store.list("Volume", &Selector::default()).await?;
        let mut wanted = HashSet::new();
        for volume in volumes.iter().filter(|v| self.bound_here(v)) {
            let Ok(volume) = serde_json::from_str::<corral_contract::Volume>(&volume.body) else {
                continue;
            };
            if let Some(image) = &volume.spec.image {
                // As the volume resolves it: its project's image, else the shared one.
                wanted.insert(volume.metadata.key_of(image));
                wanted.insert(corral_contract::object_key(
                    corral_contract::DEFAULT_PROJECT,
                    image.as_str(),
                ));
            }
        }
        if !wanted.is_empty() {
            let (images, _) = self.store.list("Image", &Selector::default()).await?;
            // `blake3:<hex>` as images record it, or the hex alone.
            let hex = |d: &str| d.strip_prefix("blake3:").unwrap_or(d).to_ascii_lowercase();
            let needed = images.iter().filter(|i| wanted.contains(&i.name)).any(|i| {
                serde_json::from_str::<Value>(&i.body)
                    .ok()
                    .is_some_and(|v| {
                        v["status"]["digest"]
                            .as_str()
                            .is_some_and(|d| hex(d) == hex(digest))
                    })
            });
            if needed {
                return Ok(());
            }
        }
        Err(denied(format!(
            "node {:?} may fetch only the images its own volumes clone, not blob {digest}",
            self.node
        )))
    }

    /// Follows the changes the node may see, after `after`: a VM's events while it is bound
    /// or migrating here, and the one that moves it away or deletes it.
    pub async fn watch(&self, kind: Option<&str>, after: u64) -> Result<WatchStream, WireError> {
        if let Some(kind) = kind {
            self.kind_readable(kind)?;
        }
        let mut inner = self.store.watch(kind, after).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let scope = self.clone();
        tokio::spawn(async move {
            // VMs bound here when the watch started: a watch resumed after the agent restarted
            // must still see them move away.
            let mut mine: HashSet<String> = scope
                .store
                .list("Vm", &Selector::default())
                .await
                .map(|(vms, _)| {
                    vms.into_iter()
                        .filter(|v| scope.vm_visible(v))
                        .map(|v| v.name)
                        .collect()
                })
                .unwrap_or_default();
            while let Some(event) = inner.recv().await {
                let pass = match &event {
                    Err(_) => true,
                    Ok(WatchEvent { object, event, .. }) if object.kind == "Vm" => {
                        let here = scope.vm_visible(object) && *event != EventType::Deleted;
                        let was = if here {
                            !mine.insert(object.name.clone())
                        } else {
                            mine.remove(&object.name)
                        };
                        here || was
                    }
                    Ok(WatchEvent { object, .. }) => scope.readable(object),
                };
                if pass && tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(WatchStream::new(rx))
    }
}

fn is_set(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false))
}

/// Whether `new` changes only the status of `stored`, or marks it for deletion.
fn only_status(stored: &Object, new: &Object) -> bool {
    let parse = |o: &Object| serde_json::from_str::<Value>(&o.body).ok();
    let (Some(mut a), Some(mut b)) = (parse(stored), parse(new)) else {
        return false;
    };
    let deleting = |v: &Value| is_set(&v["metadata"]["deleting"]);
    if deleting(&a) && !deleting(&b) {
        return false;
    }
    for v in [&mut a, &mut b] {
        if let Some(meta) = v["metadata"].as_object_mut() {
            meta.remove("resource_version");
            meta.remove("deleting");
        }
    }
    stored.labels == new.labels
        && a["spec"] == b["spec"]
        && a["metadata"] == b["metadata"]
        && a["kind"] == b["kind"]
}

/// Whether `new` changes only `status.migration` of `stored`: what the target of a live
/// migration writes (listening, its address, its failure).
fn only_migration(stored: &Object, new: &Object) -> bool {
    let parse = |o: &Object| serde_json::from_str::<Value>(&o.body).ok();
    let (Some(mut a), Some(mut b)) = (parse(stored), parse(new)) else {
        return false;
    };
    for v in [&mut a, &mut b] {
        if let Some(meta) = v["metadata"].as_object_mut() {
            meta.remove("resource_version");
        }
        if let Some(status) = v["status"].as_object_mut() {
            status.remove("migration");
        }
    }
    // Still migrating here after the write: the target cannot hand the migration elsewhere.
    stored.labels == new.labels && a == b && migration_target(stored) == migration_target(new)
}

fn migration_target(o: &Object) -> Option<String> {
    serde_json::from_str::<Value>(&o.body)
        .ok()?
        .pointer("/status/migration/target")?
        .as_str()
        .map(str::to_owned)
}

fn same_spec(a: &Object, b: &Object) -> bool {
    let spec = |o: &Object| serde_json::from_str::<Value>(&o.body).map(|v| v["spec"].clone());
    matches!((spec(a), spec(b)), (Ok(x), Ok(y)) if x == y)
}

/// `added`, `modified`, `deleted`.
pub fn event_name(e: EventType) -> &'static str {
    match e {
        EventType::Added => "added",
        EventType::Modified => "modified",
        EventType::Deleted => "deleted",
    }
}

/// The event named by [`event_name`].
pub fn event_of(name: &str) -> Option<EventType> {
    match name {
        "added" => Some(EventType::Added),
        "modified" => Some(EventType::Modified),
        "deleted" => Some(EventType::Deleted),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = corral_store::SqliteStore::open(dir.path().join("s.db"))
            .await
            .unwrap();
        (dir, Arc::new(store))
    }

    fn vm(node: &str, cpus: u32, deleting: bool, project: &str) -> Object {
        let body = serde_json::json!({
            "kind": "Vm",
            "metadata": {"name": "v", "project": project, "deleting": deleting, "resource_version": 3},
            "spec": {"cpus": cpus},
            "status": {"node": node, "phase": "Running"},
        });
        Object::new("Vm", "v", "u", body.to_string())
    }

    #[tokio::test]
    async fn a_node_changes_only_the_status_of_its_own_vms() {
        let (_dir, store) = sqlite().await;
        let a = NodeScope::new(store.clone(), "a");
        let own = vm("a", 1, false, "default");
        assert!(
            a.may_update(&own, &vm("b", 1, false, "default"))
                .await
                .is_ok(),
            "gives it back"
        );
        assert!(
            a.may_update(&own, &vm("a", 1, true, "default"))
                .await
                .is_ok(),
            "expires it"
        );
        assert!(
            a.may_update(&own, &vm("a", 2, false, "default"))
                .await
                .is_err(),
            "the spec"
        );
        assert!(
            a.may_update(&own, &vm("a", 1, false, "other"))
                .await
                .is_err(),
            "the project"
        );
        let mut relabelled = own.clone();
        relabelled.labels.insert("x".into(), "y".into());
        assert!(a.may_update(&own, &relabelled).await.is_err(), "labels");
        assert!(
            a.may_update(&vm("a", 1, true, "default"), &own)
                .await
                .is_err(),
            "undeleting"
        );
        let theirs = vm("b", 1, false, "default");
        assert!(
            a.may_update(&theirs, &vm("a", 1, false, "default"))
                .await
                .is_err(),
            "taking one"
        );
        assert!(!a.readable(&theirs) && a.readable(&own));
        let id = Object::new("Identity", "ci", "u", "{}");
        assert!(!a.readable(&id));
        assert!(matches!(
            a.call(StoreCall::List {
                kind: "Identity".into(),
                selector: String::new()
            })
            .await,
            StoreAnswer::Error(WireError::PermissionDenied { .. })
        ));
        let other_node = Object::new("Node", "b", "u", r#"{"spec": {}}"#);
        assert!(
            a.readable(&other_node),
            "a source picks its target among the nodes"
        );
        assert!(a.may_update(&other_node, &other_node).await.is_err());
        let mine = Object::new("Node", "a", "u", r#"{"spec": {"unschedulable": true}}"#);
        let uncordoned = Object::new("Node", "a", "u", r#"{"spec": {}}"#);
        assert!(
            a.may_update(&mine, &uncordoned).await.is_err(),
            "cordon is the admins'"
        );
    }

    fn migrating(node: &str, target: &str, phase: &str) -> Object {
        let body = serde_json::json!({
            "kind": "Vm",
            "metadata": {"name": "m", "project": "default", "resource_version": 3},
            "spec": {"cpus": 1},
            "status": {
                "node": node,
                "phase": "Running",
                "migration": {"request": "b@1", "source": node, "target": target, "phase": phase},
            },
        });
        Object::new("Vm", "m", "u", body.to_string())
    }

    fn volume(node: Option<&str>, path: &str) -> Object {
        let body = serde_json::json!({
            "kind": "Volume",
            "metadata": {"name": "data", "resource_version": 3},
            "spec": {"size": 1048576},
            "status": {"node": node, "path": path, "phase": "Ready"},
        });
        Object::new("Volume", "data", "vu", body.to_string())
    }

    #[tokio::test]
    async fn a_node_holds_its_own_volumes_and_those_its_vms_use() {
        let (_dir, store) = sqlite().await;
        let a = NodeScope::new(store.clone(), "a");
        let b = NodeScope::new(store.clone(), "b");
        let (on_a, on_b) = (volume(Some("a"), "/a/v"), volume(Some("b"), "/b/v"));
        let unclaimed = volume(None, "");
        assert!(
            a.may_update(&on_a, &volume(Some("a"), "/a/w"))
                .await
                .is_ok(),
            "its own"
        );
        assert!(
            a.may_update(&on_a, &volume(Some("b"), "/a/v"))
                .await
                .is_err(),
            "not given away"
        );
        for from in [&on_b, &unclaimed] {
            assert!(
                a.may_update(from, &volume(Some("a"), "/a/v"))
                    .await
                    .is_err(),
                "no VM of a uses it"
            );
        }
        let spec = corral_contract::VmSpec::builder(corral_contract::Boot::kernel("/k"))
            .volume(corral_contract::VolumeAttachment {
                volume: "data".parse().unwrap(),
                readonly: false,
                serial: None,
            })
            .build()
            .unwrap();
        let mut user = corral_contract::Vm::new("user".parse().unwrap(), spec);
        user.status.node = Some("a".into());
        let body = serde_json::to_string(&user).unwrap();
        store
            .create(Object::new("Vm", "user", "uu", body))
            .await
            .unwrap();
        // Its first VM is placed on a, or it moved there live with its disks.
        for from in [&unclaimed, &on_b] {
            assert!(a.may_update(from, &volume(Some("a"), "/a/v")).await.is_ok());
        }
        assert!(
            b.may_update(&unclaimed, &volume(Some("b"), "/b/v"))
                .await
                .is_err(),
            "b has no VM using it"
        );
        // A deleted shared volume no VM uses: any node may take it to finalize it.
        let shared = |node: &str, name: &str, deleting: bool| {
            let body = serde_json::json!({
                "kind": "Volume",
                "metadata": {"name": name, "resource_version": 3, "deleting": deleting},
                "spec": {"size": 1048576, "pool": "nfs"},
                "status": {"node": node, "path": "/p/v", "phase": "Ready", "shared": true},
            });
            Object::new("Volume", name, "vs", body.to_string())
        };
        assert!(
            b.may_update(&shared("c", "spare", true), &shared("b", "spare", true))
                .await
                .is_ok()
        );
        assert!(
            b.may_update(&shared("c", "spare", false), &shared("b", "spare", false))
                .await
                .is_err(),
            "not while it is kept"
        );
        assert!(
            b.may_update(&shared("c", "data", true), &shared("b", "data", true))
                .await
                .is_err(),
            "not while a VM uses it"
        );
        // A volume of no pool is never a shared one.
        let mut shared = volume(Some("a"), "/a/v");
        shared.body = shared
            .body
            .replace("\"phase\"", "\"shared\":true,\"phase\"");
        assert!(a.may_update(&on_a, &shared).await.is_err(), "not shared");
        // Its spec is the user's.
        let mut bigger = volume(Some("a"), "/a/v");
        bigger.body = bigger.body.replace("1048576", "2097152");
        assert!(a.may_update(&on_a, &bigger).await.is_err(), "nor its spec");
    }

    #[tokio::test]
    async fn a_node_takes_and_removes_only_the_snapshots_of_its_own_vms() {
        let (_dir, store) = sqlite().await;
        store.create(vm("a", 1, false, "default")).await.unwrap();
        let snap = |phase: &str, deleting: bool| {
            let body = serde_json::json!({
                "kind": "Snapshot",
                "metadata": {"name": "s", "deleting": deleting, "resource_version": 3},
                "spec": {"vm": "v", "memory": true},
                "status": {"phase": phase},
            });
            Object::new("Snapshot", "s", "su", body.to_string())
        };
        let (a, b) = (
            NodeScope::new(store.clone(), "a"),
            NodeScope::new(store.clone(), "b"),
        );
        let (pending, ready) = (snap("Pending", false), snap("Ready", false));
        assert!(a.may_update(&pending, &ready).await.is_ok(), "its VM's");
        assert!(
            b.may_update(&pending, &ready).await.is_err(),
            "another's VM"
        );
        let mut respec = ready.clone();
        respec.body = respec.body.replace("\"memory\":true", "\"memory\":false");
        assert!(a.may_update(&pending, &respec).await.is_err(), "the spec");
        store.create(snap("Ready", true)).await.unwrap();
        let delete = |scope: &NodeScope| {
            let scope = scope.clone();
            async move {
                scope
                    .call(StoreCall::Delete {
                        kind: "Snapshot".into(),
                        name: "s".into(),
                        expected_version: None,
                    })
                    .await
            }
        };
        assert!(matches!(
            delete(&b).await,
            StoreAnswer::Error(WireError::PermissionDenied { .. })
        ));
        assert!(matches!(delete(&a).await, StoreAnswer::Object(_)));
    }

    #[tokio::test]
    async fn a_migration_target_reads_the_vm_and_writes_only_its_migration() {
        let (_dir, store) = sqlite().await;
        let b = NodeScope::new(store.clone(), "b");
        let c = NodeScope::new(store, "c");
        let to_b = migrating("a", "b", "Pending");
        assert!(b.readable(&to_b), "the target reads it");
        assert!(!c.readable(&to_b), "a third node does not");
        assert!(
            !b.readable(&vm("a", 1, false, "default")),
            "nor does the target read the source's other VMs"
        );
        assert!(
            b.may_update(&to_b, &migrating("a", "b", "Listening"))
                .await
                .is_ok(),
            "its migration status"
        );
        assert!(
            c.may_update(&to_b, &migrating("a", "b", "Listening"))
                .await
                .is_err(),
            "a third node may not"
        );
        assert!(
            b.may_update(&to_b, &migrating("b", "b", "Listening"))
                .await
                .is_err(),
            "the target may not take the VM: the source hands it over"
        );
        assert!(
            b.may_update(&to_b, &migrating("a", "c", "Pending"))
                .await
                .is_err(),
            "nor send it elsewhere"
        );
        let mut respec: Value = serde_json::from_str(&to_b.body).unwrap();
        respec["spec"]["cpus"] = 2.into();
        let respec = Object::new("Vm", "m", "u", respec.to_string());
        assert!(b.may_update(&to_b, &respec).await.is_err(), "nor its spec");
    }
}
