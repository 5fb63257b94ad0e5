//! The storage controller: makes volume files, grows them, takes, restores and deletes
//! snapshots.
//!
//! Snapshots are qcow2 *internal* snapshots, in each writable qcow2 volume of the VM (RAM and
//! device state, for a memory snapshot, in the first). Chosen over external snapshots
//! (overlay chains) because deleting one never touches another file: there is no chain to
//! commit or rebase, so deleting a snapshot can never delete or rewrite a parent image —
//! the failure libvirt users hit with external ones. Internal snapshots also need no new
//! files per snapshot, survive daemon restarts in the volume itself, and QEMU 7.2 takes,
//! loads and deletes them on a running VM as jobs (`snapshot-save`/`-load`/`-delete`) and
//! `qemu-img snapshot` does it on a stopped one. The cost: raw volumes cannot hold them,
//! and a snapshot's space is freed only inside the qcow2.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corral_contract::names::annotations;
use corral_contract::{
    DiskFormat, Image, Kind, Phase, Snapshot, StoragePhase, ValidationError, Vm, Volume, VolumeKind,
};
use corral_hypervisor::{FileOwner, Hypervisor, SnapshotOp as HvSnapshotOp, VmState};
use corral_service::{ServiceError, StorageService, may_refer, resolve};
use corral_storage::SnapshotOp;
use tokio::sync::watch;

use crate::deps::{self, DependencyIndex, Readiness};
use crate::disks::attached_volumes;
use crate::{ControllerError, WorkQueue};

const VOLUME: &str = "Volume/";
const SNAPSHOT: &str = "Snapshot/";

/// Where a node gets an image's bytes it does not hold: in a cluster, the agents fetch them
/// from the servers, which keep the images.
#[async_trait::async_trait]
pub trait BlobSource: Send + Sync + std::fmt::Debug {
    /// Puts the blob `digest` (BLAKE3, hex) into `cas`, verified: bytes that hash to anything
    /// else are refused and nothing is left behind.
    async fn fetch(&self, digest: &str, cas: &corral_storage::Cas) -> Result<(), String>;
}

/// Makes volumes and snapshots match their spec.
#[derive(Debug)]
pub struct StorageController {
    svc: StorageService,
    hv: Arc<dyn Hypervisor>,
    // Where missing image blobs come from (agents: the servers).
    blobs: Option<Arc<dyn BlobSource>>,
    queue: WorkQueue,
    // Image → the volumes cloned from it, from the volumes this controller has seen.
    deps: DependencyIndex,
    // VM → the snapshots of it, so that a snapshot waiting for its VM goes on when it is there.
    snapshot_deps: DependencyIndex,
    // When each failed volume is tried again, and how many times it has failed in a row.
    retries: std::sync::Mutex<std::collections::HashMap<String, Retry>>,
    // This node, when volumes are shared by several (see [`Ownership`]).
    node: Option<NodeRole>,
    // Volumes no node holds yet, waiting for a VM that uses them to be bound.
    unclaimed: std::sync::Mutex<std::collections::HashSet<String>>,
    // Volumes of a shared pool another node manages: this node's once a VM using one is
    // bound here.
    shared_elsewhere: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Whose a volume is, as this node sees it.
#[derive(Debug, PartialEq, Eq)]
enum Ownership {
    /// This node's: it makes, grows and deletes the file.
    Mine,
    /// Another node's; nothing to do here.
    Elsewhere,
    /// No node's yet, and this node should make it: claim it first.
    Claim,
    /// No node's yet, and none can make it yet: why.
    Unclaimed(&'static str),
}

/// The node a storage controller acts for.
#[derive(Debug, Clone)]
struct NodeRole {
    name: String,
    /// Other nodes share the store (etcd): a volume is made on the node of its first VM.
    /// On one host (SQLite) every volume is this node's.
    cluster: bool,
    /// An agent's: it makes its own node's volumes and nothing else; the servers tell
    /// volumes that wait for a node why, and take snapshots' records.
    agent: bool,
}

/// The backoff of a volume whose making failed: 2 s, doubling to at most 5 minutes.
#[derive(Debug, Clone, Copy)]
struct Retry {
    failures: u32,
    at: std::time::Instant,
}

impl Retry {
    fn delay(failures: u32) -> Duration {
        Duration::from_secs(2u64.saturating_pow(failures.min(9)).min(300))
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ControllerError> + Send + 'static,
) -> Result<T, ControllerError> {
    tokio::task::spawn_blocking(f).await?
}

impl StorageController {
    /// A controller over `svc` and the node's hypervisor.
    pub fn new(svc: StorageService, hv: Arc<dyn Hypervisor>) -> Self {
        StorageController {
            svc,
            hv,
            queue: WorkQueue::new(),
            deps: DependencyIndex::default(),
            snapshot_deps: DependencyIndex::default(),
            retries: Default::default(),
            node: None,
            unclaimed: Default::default(),
            shared_elsewhere: Default::default(),
            blobs: None,
        }
    }

    /// Fetches image blobs this node lacks from `blobs` before cloning a volume from them.
    #[must_use]
    pub fn with_blob_source(mut self, blobs: Arc<dyn BlobSource>) -> Self {
        self.blobs = Some(blobs);
        self
    }

    /// Acts for node `name`: volumes get `status.node`, and this controller touches only the
    /// files of its own. With `cluster` (other nodes share the store) a new volume is made on
    /// the node of the first VM that uses it, once that VM is bound; without, every volume is
    /// this node's.
    #[must_use]
    pub fn with_node(mut self, name: &str, cluster: bool) -> Self {
        self.node = Some(NodeRole {
            name: name.to_owned(),
            cluster,
            agent: false,
        });
        self
    }

    /// Acts as agent `name`'s (see [`with_node`](Self::with_node)): only its own volumes,
    /// with what the servers let a node write (the volumes on its disk or used by its VMs).
    #[must_use]
    pub fn for_agent(mut self, name: &str) -> Self {
        self.node = Some(NodeRole {
            name: name.to_owned(),
            cluster: true,
            agent: true,
        });
        self
    }

    fn agent(&self) -> bool {
        self.node.as_ref().is_some_and(|n| n.agent)
    }

    /// Whose `volume` is (see [`Ownership`]).
    async fn ownership(&self, volume: &Volume) -> Ownership {
        let Some(me) = &self.node else {
            return Ownership::Mine;
        };
        match volume.status.node.as_deref() {
            Some(node) if node == me.name => return Ownership::Mine,
            // In a shared pool the file is on every node: it is managed by the node of the
            // VM using it, and follows that VM when it moves or is restarted elsewhere.
            // A deleted one no VM uses may be finalized by any node with the pool, so that
            // it does not wait for a node that is gone.
            Some(_) if volume.status.shared && me.cluster => {
                return match self.attached_to(volume).await {
                    Some((vm, _)) if vm.status.node.as_deref() == Some(me.name.as_str()) => {
                        Ownership::Claim
                    }
                    None if volume.metadata.deleting && self.has_pool(volume) => Ownership::Claim,
                    _ => Ownership::Elsewhere,
                };
            }
            Some(_) => return Ownership::Elsewhere,
            None => {}
        }
        if !me.cluster {
            return Ownership::Claim;
        }
        if volume.status.phase != StoragePhase::Pending {
            if me.agent {
                // Agents came after volumes had nodes: such a volume is a `--role all`
                // node's.
                return Ownership::Elsewhere;
            }
            // Made before volumes had nodes: whoever's volumes directory holds its file.
            let mine = volume.status.path.as_deref().is_some_and(|p| {
                std::path::Path::new(p).starts_with(self.svc.config().volumes_dir())
            });
            return if mine {
                Ownership::Claim
            } else {
                Ownership::Elsewhere
            };
        }
        match self.attached_to(volume).await {
            Some((vm, _)) => match vm.status.node.as_deref() {
                Some(node) if node == me.name => Ownership::Claim,
                Some(_) => Ownership::Elsewhere,
                None => Ownership::Unclaimed(
                    "waiting for its VM to be placed: a volume is made on its first VM's node",
                ),
            },
            None if volume.metadata.deleting => Ownership::Mine,
            None => Ownership::Unclaimed(
                "waiting for a VM that uses it: in a cluster a volume is made on the node of \
                 the first VM that uses it",
            ),
        }
    }

    /// The volumes of the VM whose stored body is `vm` that are in a shared pool another node
    /// manages.
    fn shared_volumes_of(&self, vm: &str) -> Vec<String> {
        let Ok(vm) = serde_json::from_str::<Vm>(vm) else {
            return Vec::new();
        };
        let elsewhere = self
            .shared_elsewhere
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        vm.spec
            .volume_names()
            .map(|v| vm.metadata.key_of(v))
            .filter(|key| elsewhere.contains(key))
            .collect()
    }

    /// Whether this node has the pool `volume` is in.
    fn has_pool(&self, volume: &Volume) -> bool {
        volume
            .spec
            .pool
            .as_ref()
            .is_some_and(|p| self.svc.config().pools.contains_key(p.as_str()))
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        let this = self.clone();
        tasks.spawn(async move {
            while let Some(key) = this.queue.next().await {
                let result = this.reconcile(&key).await;
                if let Err(e) = result {
                    tracing::warn!(%key, error = %e, "storage reconcile failed; retrying");
                    this.queue.add_after(&key, Duration::from_secs(2));
                }
                this.queue.done(&key);
            }
        });
        let this = self.clone();
        tasks.spawn(async move { this.follow_store().await });
        let _ = shutdown.wait_for(|stop| *stop).await;
        tasks.shutdown().await;
    }

    async fn enqueue_all(&self) -> u64 {
        let mut revision = 0;
        if let Ok((volumes, rev)) = self.svc.volumes.list("").await {
            revision = rev;
            for v in volumes {
                self.queue.add(&format!("{VOLUME}{}", v.metadata.key()));
            }
        }
        if let Ok((snaps, rev)) = self.svc.snapshots.list("").await {
            revision = revision.min(rev).max(1);
            for s in snaps {
                self.queue.add(&format!("{SNAPSHOT}{}", s.metadata.key()));
            }
        }
        revision
    }

    async fn follow_store(&self) {
        let store = self.svc.vms().store().clone();
        loop {
            let revision = self.enqueue_all().await;
            let mut watch = match store.watch(None, revision).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch storage objects; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let resync = tokio::time::sleep(Duration::from_secs(30));
            tokio::pin!(resync);
            loop {
                tokio::select! {
                    event = watch.recv() => match event {
                        Some(Ok(event)) => match event.object.kind.as_str() {
                            "Volume" => self.queue.add(&format!("{VOLUME}{}", event.object.name)),
                            "Image" => {
                                for volume in self.deps.dependents(Kind::Image, &event.object.name) {
                                    self.queue.add(&format!("{VOLUME}{volume}"));
                                }
                            }
                            "Snapshot" => self.queue.add(&format!("{SNAPSHOT}{}", event.object.name)),
                            "Vm" => {
                                for snap in self.snapshot_deps.dependents(Kind::Vm, &event.object.name) {
                                    self.queue.add(&format!("{SNAPSHOT}{snap}"));
                                }
                                // A VM bound to a node may make its volumes that node's.
                                let waiting: Vec<String> = self
                                    .unclaimed
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .iter()
                                    .cloned()
                                    .collect();
                                for volume in waiting {
                                    self.queue.add(&format!("{VOLUME}{volume}"));
                                }
                                // A VM bound here may make its shared volumes this node's.
                                for volume in self.shared_volumes_of(&event.object.body) {
                                    self.queue.add(&format!("{VOLUME}{volume}"));
                                }
                            }
                            _ => {}
                        },
                        _ => break,
                    },
                    _ = &mut resync => break,
                }
            }
        }
    }

    /// Reconciles one `Volume/<name>` or `Snapshot/<name>`.
    pub async fn reconcile(&self, key: &str) -> Result<(), ServiceError> {
        if let Some(name) = key.strip_prefix(VOLUME) {
            self.reconcile_volume(name).await
        } else if let Some(name) = key.strip_prefix(SNAPSHOT) {
            self.reconcile_snapshot(name).await
        } else {
            Ok(())
        }
    }

    /// A volume of this node in a pool this node does not have (`corrald --storage-pool`
    /// missing or removed): one to make waits, saying so, until corrald runs with the pool;
    /// one to delete is forgotten, its file left to whoever removed the pool.
    async fn without_pool(&self, volume: &Volume, why: ServiceError) -> Result<(), ServiceError> {
        let name = volume.metadata.key();
        if volume.metadata.deleting {
            tracing::warn!(volume = %name, error = %why, "deleting a volume whose pool is gone: its file stays");
            return match self
                .svc
                .volumes
                .remove(&name, volume.metadata.resource_version)
                .await
            {
                Ok(()) | Err(ServiceError::NotFound { .. } | ServiceError::Conflict { .. }) => {
                    Ok(())
                }
                Err(e) => Err(e),
            };
        }
        if volume.status.phase == StoragePhase::Ready {
            tracing::warn!(volume = %name, error = %why, "a made volume's pool is gone");
            return Ok(());
        }
        let message = why.to_string();
        if volume.status.message.as_deref() != Some(message.as_str()) {
            self.svc
                .volumes
                .modify(&name, 0, |v| {
                    v.status.message = Some(message.clone());
                    Ok(true)
                })
                .await?;
        }
        Ok(())
    }

    async fn reconcile_volume(&self, name: &str) -> Result<(), ServiceError> {
        let volume = match self.svc.volumes.get(name).await {
            Ok(v) => v,
            Err(ServiceError::NotFound { .. }) => {
                self.deps.forget(name);
                self.retries_mut().remove(name);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.deps.set(name, deps::of_volume(&volume));
        let ownership = self.ownership(&volume).await;
        for (set, member) in [
            (
                &self.unclaimed,
                matches!(ownership, Ownership::Unclaimed(_)),
            ),
            (
                &self.shared_elsewhere,
                ownership == Ownership::Elsewhere && volume.status.shared,
            ),
        ] {
            let mut set = set.lock().unwrap_or_else(|e| e.into_inner());
            if member {
                set.insert(name.to_owned());
            } else {
                set.remove(name);
            }
        }
        match ownership {
            Ownership::Mine => {}
            Ownership::Elsewhere => return Ok(()),
            Ownership::Unclaimed(why) => {
                if volume.status.message.as_deref() != Some(why) && !self.agent() {
                    self.svc
                        .volumes
                        .modify(name, 0, |v| {
                            if v.status.node.is_some() || v.status.phase != StoragePhase::Pending {
                                return Ok(false);
                            }
                            v.status.message = Some(why.to_owned());
                            Ok(true)
                        })
                        .await?;
                }
                return Ok(());
            }
            Ownership::Claim => {
                // Compare-and-swap: of two nodes claiming at once, one wins; the other sees
                // the volume taken on its next look.
                let me = self.node.as_ref().map(|n| n.name.clone());
                let claimed = self
                    .svc
                    .volumes
                    .modify(name, volume.metadata.resource_version, |v| {
                        v.status.node = me.clone();
                        Ok(true)
                    })
                    .await;
                match claimed {
                    Ok(_) | Err(ServiceError::Conflict { .. }) => {
                        self.queue.add(&format!("{VOLUME}{name}"));
                        return Ok(());
                    }
                    Err(ServiceError::NotFound { .. }) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }
        let path = match self.svc.config().volume_file(&volume) {
            Ok(path) => path,
            Err(no_pool) => return self.without_pool(&volume, no_pool).await,
        };
        if !volume.metadata.deleting && self.owner_is_gone(&volume).await? {
            // Made for a VM (`vm create --image`) that no longer exists: the VM controller
            // deletes it with the VM; this catches a crash in between.
            tracing::info!(volume = name, "its VM is gone: deleting it");
            self.svc.volumes.delete(name, None).await?;
            return Ok(());
        }
        if volume.metadata.deleting {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(part_path(&path));
            tracing::info!(volume = name, "deleted");
            return match self
                .svc
                .volumes
                .remove(name, volume.metadata.resource_version)
                .await
            {
                Ok(()) | Err(ServiceError::NotFound { .. }) => Ok(()),
                Err(ServiceError::Conflict { .. }) => {
                    self.queue.add(&format!("{VOLUME}{name}"));
                    Ok(())
                }
                Err(e) => Err(e),
            };
        }
        let generation = volume.metadata.generation;
        match volume.status.phase {
            StoragePhase::Pending => {
                // The image it clones must be Ready first: until then it waits, saying why,
                // and is requeued when the image changes.
                let readiness =
                    deps::check(&**self.svc.vms().store(), &deps::of_volume(&volume)).await?;
                if readiness != Readiness::Ready {
                    let message = readiness.message().to_owned();
                    if volume.status.message.as_deref() != Some(message.as_str()) {
                        self.svc
                            .volumes
                            .modify(name, 0, |v| {
                                v.status.observed_generation = generation;
                                v.status.message = Some(message.clone());
                                Ok(true)
                            })
                            .await?;
                    }
                    return Ok(());
                }
                let shared = self
                    .svc
                    .config()
                    .pool_shared(volume.spec.pool.as_ref().map(|p| p.as_str()));
                let outcome = self.make_volume(&volume, &path).await;
                let retry_in = match &outcome {
                    Ok(_) => {
                        self.retries_mut().remove(name);
                        None
                    }
                    Err(e) => {
                        let delay = self.backoff(name);
                        tracing::warn!(volume = name, error = %e, ?delay, "making the volume failed; will retry");
                        self.queue.add_after(&format!("{VOLUME}{name}"), delay);
                        Some(delay)
                    }
                };
                self.svc
                    .volumes
                    .modify(name, 0, |v| {
                        v.status.observed_generation = generation;
                        match &outcome {
                            Ok(made) => {
                                v.status.phase = StoragePhase::Ready;
                                v.status.shared = shared;
                                v.status.path = Some(path.display().to_string());
                                v.status.format = Some(made.format);
                                v.status.size = Some(made.size);
                                v.status.image_digest = made.image_digest.clone();
                                v.status.digest = made.digest.clone();
                                v.status.message = None;
                            }
                            Err(e) => {
                                v.status.phase = StoragePhase::Failed;
                                v.status.message = Some(format!(
                                    "{e} (retrying in {})",
                                    humantime::format_duration(retry_in.unwrap_or_default())
                                ));
                            }
                        }
                        Ok(true)
                    })
                    .await?;
                Ok(())
            }
            StoragePhase::Ready => {
                if let Err(e) = keep_private(&path, self.hv.file_owner()) {
                    tracing::warn!(volume = name, error = %e, "cannot make the volume file private");
                }
                let want = volume.spec.size.map(|s| s.as_u64());
                let have = volume.status.size.unwrap_or(0);
                let grow = want.filter(|w| *w > have);
                let outcome = match grow {
                    Some(size) => Some(self.grow(&volume, &path, size).await.map(|()| size)),
                    None => None,
                };
                if outcome.is_none() && volume.status.observed_generation == generation {
                    return Ok(());
                }
                self.svc
                    .volumes
                    .modify(name, 0, |v| {
                        v.status.observed_generation = generation;
                        match &outcome {
                            Some(Ok(size)) => {
                                v.status.size = Some(*size);
                                v.status.message = None;
                            }
                            Some(Err(m)) => v.status.message = Some(format!("resize failed: {m}")),
                            None => {}
                        }
                        Ok(true)
                    })
                    .await?;
                Ok(())
            }
            StoragePhase::Failed => {
                // Tried again with backoff (a full disk or a failing qemu-img passes), and at
                // once when its spec changed.
                let due = {
                    let retries = self.retries_mut();
                    match retries.get(name) {
                        Some(r) => r.at,
                        // Failed before this daemon started: try again now.
                        None => std::time::Instant::now(),
                    }
                };
                let now = std::time::Instant::now();
                if due > now && volume.status.observed_generation == generation {
                    self.queue.add_after(&format!("{VOLUME}{name}"), due - now);
                    return Ok(());
                }
                tracing::info!(volume = name, "trying again to make the volume");
                self.svc
                    .volumes
                    .modify(name, 0, |v| {
                        if v.status.phase != StoragePhase::Failed {
                            return Ok(false);
                        }
                        v.status.phase = StoragePhase::Pending;
                        Ok(true)
                    })
                    .await?;
                Ok(())
            }
        }
    }

    fn retries_mut(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Retry>> {
        self.retries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one more failure of `name` and says how long until it is tried again.
    fn backoff(&self, name: &str) -> Duration {
        let mut retries = self.retries_mut();
        let failures = retries.get(name).map_or(0, |r| r.failures) + 1;
        let delay = Retry::delay(failures);
        retries.insert(
            name.to_owned(),
            Retry {
                failures,
                at: std::time::Instant::now() + delay,
            },
        );
        delay
    }

    async fn make_volume(&self, volume: &Volume, path: &Path) -> Result<Made, ControllerError> {
        let part = part_path(path);
        let qemu_img = self.svc.qemu_img().clone();
        let spec = volume.spec.clone();
        let image = match &spec.image {
            Some(name) => {
                let project = volume.metadata.project();
                let image = resolve::<Image>(&**self.svc.images.store(), project, name.as_str());
                Some(image.await?.ok_or_else(|| ServiceError::NotFound {
                    kind: "image",
                    name: name.to_string(),
                })?)
            }
            None => None,
        };
        let blob = match image.as_ref().and_then(|i| i.status.digest.as_deref()) {
            Some(d) => {
                let path = self.svc.blob_path(d)?;
                if let (false, Some(source)) = (path.exists(), &self.blobs) {
                    tracing::info!(volume = %volume.metadata.key(), digest = d, "fetching the image's bytes");
                    source.fetch(d, self.svc.cas()).await.map_err(|reason| {
                        ControllerError::Fetch {
                            digest: d.to_owned(),
                            reason,
                        }
                    })?;
                }
                Some(path)
            }
            None => None,
        };
        let (path, part2) = (path.to_path_buf(), part.clone());
        let owner = self.hv.file_owner();
        let result = blocking(move || {
            // qemu-img keeps the mode of a file that exists; it would create one 0644.
            if !(spec.kind == VolumeKind::Weights && blob.is_some()) {
                create_private(&part2)?;
            }
            let image_format = image.as_ref().and_then(|i| i.status.format).map(|f| {
                if f.as_str() == "qcow2" {
                    DiskFormat::Qcow2
                } else {
                    DiskFormat::Raw
                }
            });
            let image_digest = image.as_ref().and_then(|i| i.status.digest.clone());
            let made = match (spec.kind, &blob) {
                (VolumeKind::Disk, Some(blob)) => {
                    let fmt = image_format.unwrap_or(DiskFormat::Raw);
                    qemu_img.create(
                        &part2,
                        "qcow2",
                        spec.size.map(|s| s.as_u64()),
                        Some((blob, fmt.as_str())),
                    )?;
                    Made {
                        format: DiskFormat::Qcow2,
                        size: 0,
                        image_digest,
                        digest: None,
                    }
                }
                (VolumeKind::Weights, Some(blob)) => {
                    let digest = copy_hashing(blob, &part2)?;
                    if Some(digest.to_string()) != image_digest {
                        return Err(ControllerError::DigestMismatch {
                            expected: image_digest.unwrap_or_default(),
                            actual: digest.to_string(),
                        });
                    }
                    Made {
                        format: image_format.unwrap_or(DiskFormat::Raw),
                        size: 0,
                        image_digest: image_digest.clone(),
                        digest: image_digest,
                    }
                }
                (_, None) => {
                    let format = spec.format();
                    let size = spec.size.map(|s| s.as_u64()).ok_or_else(|| {
                        ServiceError::from(ValidationError::new(
                            "spec.size",
                            "required for a volume without an image",
                        ))
                    })?;
                    qemu_img.create(&part2, format.as_str(), Some(size), None)?;
                    Made {
                        format,
                        size: 0,
                        image_digest: None,
                        digest: None,
                    }
                }
            };
            let info = qemu_img.info(&part2, Some(made.format.as_str()))?;
            // QEMU opens the volume itself, as the unprivileged user it runs as.
            if let Some(owner) = owner {
                std::os::unix::fs::chown(&part2, Some(owner.uid), Some(owner.gid))
                    .map_err(ControllerError::io("giving to QEMU's user", &part2))?;
            }
            std::fs::rename(&part2, &path)
                .map_err(ControllerError::io("moving into place", &part2))?;
            Ok(Made {
                size: info.virtual_size,
                ..made
            })
        })
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        result
    }

    /// Grows a volume: through QEMU when a running VM has it attached, else with qemu-img.
    async fn grow(&self, volume: &Volume, path: &Path, size: u64) -> Result<(), ControllerError> {
        let name = volume.metadata.name.as_str();
        if let Some((vm, index)) = self.attached_to(volume).await {
            if matches!(
                self.hv.state(&vm.metadata.uid).await,
                Ok(VmState::Running | VmState::Paused { .. })
            ) {
                tracing::info!(volume = name, vm = %vm.metadata.name, size, "growing online");
                return Ok(self.hv.resize_disk(&vm.metadata.uid, index, size).await?);
            }
        }
        let qemu_img = self.svc.qemu_img().clone();
        let (path, format) = (path.to_path_buf(), volume.spec.format());
        blocking(move || Ok(qemu_img.resize(&path, format.as_str(), size)?)).await
    }

    /// Whether `volume` names an owner VM (by uid) that no longer exists.
    async fn owner_is_gone(&self, volume: &Volume) -> Result<bool, ServiceError> {
        let Some(uid) = volume.metadata.annotations.get(annotations::OWNER_VM) else {
            return Ok(false);
        };
        let (vms, _) = self.svc.vms().list("").await?;
        Ok(!vms.iter().any(|vm| &vm.metadata.uid == uid))
    }

    /// The VM that has this volume attached, and its disk index.
    async fn attached_to(&self, volume: &Volume) -> Option<(Vm, usize)> {
        let (vms, _) = self.svc.vms().list("").await.ok()?;
        vms.into_iter().find_map(|vm| {
            let index = attached_volumes(&vm.spec)
                .into_iter()
                .find(|a| may_refer(&vm.metadata, &a.volume, volume))?
                .index;
            Some((vm, index))
        })
    }

    async fn vm_is_live(&self, vm: &Vm) -> bool {
        matches!(
            self.hv.state(&vm.metadata.uid).await,
            Ok(VmState::Running | VmState::Paused { .. } | VmState::ShuttingDown)
        )
    }

    /// The VM's writable qcow2 volumes (index, file), which hold its snapshots.
    async fn snapshot_disks(
        &self,
        vm: &Vm,
    ) -> Result<Vec<(usize, String, PathBuf)>, ControllerError> {
        let mut out = Vec::new();
        for a in attached_volumes(&vm.spec) {
            let volume = self.svc.volumes.get(&vm.metadata.key_of(&a.volume)).await?;
            let writable = !a.readonly && volume.spec.kind == VolumeKind::Disk;
            if writable
                && volume.status.format == Some(DiskFormat::Qcow2)
                && volume.status.path.is_some()
            {
                // This node's own name for the file, never the path another node wrote.
                let path = self.svc.config().volume_file(&volume)?;
                out.push((a.index, a.volume.to_string(), path));
            }
        }
        if out.is_empty() {
            return Err(ControllerError::NoSnapshotDisk {
                vm: vm.metadata.name.to_string(),
            });
        }
        Ok(out)
    }

    async fn reconcile_snapshot(&self, name: &str) -> Result<(), ServiceError> {
        let snap = match self.svc.snapshots.get(name).await {
            Ok(s) => s,
            Err(ServiceError::NotFound { .. }) => {
                self.snapshot_deps.forget(name);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let vm_key = snap.metadata.key_of(&snap.spec.vm);
        self.snapshot_deps
            .set(name, vec![(Kind::Vm, vm_key.clone())]);
        let vm = match self.svc.vms().get(&vm_key).await {
            Ok(vm) => Some(vm),
            Err(ServiceError::NotFound { .. }) => None,
            // An agent sees only the VMs bound to it: one it may not read is another node's.
            Err(_) if self.agent() => None,
            Err(e) => return Err(e),
        };
        if !self.snapshot_mine(vm.as_ref()) {
            return Ok(());
        }
        if snap.metadata.deleting {
            if let (Some(vm), Some(tag)) = (&vm, &snap.status.tag) {
                if let Err(e) = self.apply(vm, &snap, tag, Action::Delete).await {
                    tracing::warn!(snapshot = name, error = %e, "removing the snapshot from its volumes");
                }
            }
            return match self
                .svc
                .snapshots
                .remove(name, snap.metadata.resource_version)
                .await
            {
                Ok(()) | Err(ServiceError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            };
        }
        let Some(vm) = vm else {
            // Not there yet (or gone): a snapshot still to take waits for it.
            if snap.status.phase == StoragePhase::Pending {
                self.wait(&snap, format!("Waiting: vm/{} is missing", snap.spec.vm))
                    .await?;
            }
            return Ok(());
        };
        match snap.status.phase {
            StoragePhase::Pending => {
                if let Some(why) = self.not_yet(&vm, &snap).await {
                    return self.wait(&snap, why).await;
                }
                let tag = format!("corral-{}", snap.metadata.uid);
                let outcome = self.apply(&vm, &snap, &tag, Action::Take).await;
                self.record(name, |s| match &outcome {
                    Ok(volumes) => {
                        s.status.phase = StoragePhase::Ready;
                        s.status.tag = Some(tag.clone());
                        s.status.volumes = volumes.clone();
                        s.status.taken_at = Some(now());
                        s.status.message = None;
                    }
                    Err(e) => {
                        s.status.phase = StoragePhase::Failed;
                        s.status.message = Some(e.to_string());
                    }
                })
                .await
            }
            StoragePhase::Ready => {
                let asked = snap
                    .metadata
                    .annotations
                    .get(annotations::RESTORE_REQUESTED_AT)
                    .cloned();
                if asked.is_none() || asked == snap.status.restored_for {
                    return Ok(());
                }
                let tag = snap.status.tag.clone().unwrap_or_default();
                let outcome = self.apply(&vm, &snap, &tag, Action::Restore).await;
                if let Err(m) = &outcome {
                    tracing::warn!(snapshot = name, error = %m, "restore failed");
                }
                self.record(name, |s| {
                    s.status.restored_for = asked.clone();
                    s.status.message = Some(match &outcome {
                        Ok(_) => format!("restored at {}", now()),
                        Err(m) => format!("restore failed: {m}"),
                    });
                })
                .await
            }
            StoragePhase::Failed => Ok(()),
        }
    }

    /// Whether this node acts on a snapshot of `vm`: the node that runs the VM takes,
    /// restores and removes it, since the VM's volumes are on its disk; a snapshot whose VM is
    /// bound to no node (or is gone) is the servers' to keep waiting or to finalize.
    fn snapshot_mine(&self, vm: Option<&Vm>) -> bool {
        let Some(me) = &self.node else {
            return true;
        };
        match vm.and_then(|vm| vm.status.node.as_deref()) {
            Some(node) => node == me.name || !me.cluster,
            None => !me.agent,
        }
    }

    /// Why a snapshot cannot be taken yet: the VM has not reached the state it is taken in
    /// (running or paused for a memory snapshot, stopped for a disk-only one).
    async fn not_yet(&self, vm: &Vm, snap: &Snapshot) -> Option<String> {
        let vm_name = vm.metadata.name.as_str();
        if vm.metadata.deleting {
            return Some(format!("Waiting: vm/{vm_name} is being deleted"));
        }
        let live = self.vm_is_live(vm).await;
        let settled = !matches!(
            vm.status.phase,
            Phase::Pending | Phase::Starting | Phase::Stopping
        );
        match (snap.spec.memory, live) {
            (true, true) if settled => None,
            (false, false) if settled => None,
            (true, _) => Some(format!(
                "Waiting: vm/{vm_name} is {}; a memory snapshot is taken while it runs",
                vm.status.phase
            )),
            (false, _) => Some(format!(
                "Waiting: vm/{vm_name} is {}; a disk-only snapshot is taken while it is stopped",
                vm.status.phase
            )),
        }
    }

    /// Keeps a snapshot Pending, saying what it waits for (written only when it changes).
    async fn wait(&self, snap: &Snapshot, why: String) -> Result<(), ServiceError> {
        if snap.status.message.as_deref() == Some(why.as_str()) {
            return Ok(());
        }
        self.record(&snap.metadata.key(), |s| {
            if s.status.phase == StoragePhase::Pending {
                s.status.message = Some(why.clone());
            }
        })
        .await
    }

    async fn record(&self, name: &str, f: impl Fn(&mut Snapshot)) -> Result<(), ServiceError> {
        self.svc
            .snapshots
            .modify(name, 0, |s| {
                f(s);
                Ok(true)
            })
            .await
            .map(drop)
    }

    /// Takes, restores or deletes snapshot `tag` on the VM's volumes; returns the volumes.
    async fn apply(
        &self,
        vm: &Vm,
        snap: &Snapshot,
        tag: &str,
        action: Action,
    ) -> Result<Vec<String>, ControllerError> {
        let disks = self.snapshot_disks(vm).await?;
        let names: Vec<String> = disks.iter().map(|(_, n, _)| n.clone()).collect();
        let live = self.vm_is_live(vm).await;
        let vm_name = vm.metadata.name.as_str();
        if action != Action::Delete {
            let (state, need) = match (snap.spec.memory, live) {
                (true, false) => ("not running", "a memory snapshot needs it running"),
                (false, true) => ("running", "a disk-only snapshot needs it stopped"),
                _ => ("", ""),
            };
            if !state.is_empty() {
                return Err(ControllerError::VmState {
                    vm: vm_name.to_owned(),
                    state,
                    need,
                });
            }
        }
        if live {
            let indices: Vec<usize> = disks.iter().map(|(i, _, _)| *i).collect();
            let op = match action {
                Action::Take => HvSnapshotOp::Save,
                Action::Restore => HvSnapshotOp::Load,
                Action::Delete => HvSnapshotOp::Delete,
            };
            let was_running = matches!(self.hv.state(&vm.metadata.uid).await, Ok(VmState::Running));
            self.hv
                .snapshot(&vm.metadata.uid, op, tag, &indices)
                .await?;
            // Saving and loading stop the vCPUs; put the guest back as it was.
            if was_running && !matches!(self.hv.state(&vm.metadata.uid).await, Ok(VmState::Running))
            {
                self.hv.resume(&vm.metadata.uid).await?;
            }
            return Ok(names);
        }
        let qemu_img = self.svc.qemu_img().clone();
        let tag = tag.to_owned();
        blocking(move || {
            let op = match action {
                Action::Take => SnapshotOp::Create,
                Action::Restore => SnapshotOp::Apply,
                Action::Delete => SnapshotOp::Delete,
            };
            let mut done: Vec<&Path> = Vec::new();
            for (_, _, path) in &disks {
                if let Err(e) = qemu_img.snapshot(path, op, &tag) {
                    if action == Action::Delete {
                        // Already gone (or the volume is): nothing left to remove.
                        continue;
                    }
                    if action == Action::Take {
                        for p in done {
                            let _ = qemu_img.snapshot(p, SnapshotOp::Delete, &tag);
                        }
                    }
                    return Err(e.into());
                }
                done.push(path);
            }
            Ok(names)
        })
        .await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Take,
    Restore,
    Delete,
}

struct Made {
    format: DiskFormat,
    size: u64,
    image_digest: Option<String>,
    digest: Option<String>,
}

fn part_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".part");
    path.with_file_name(name)
}

/// Keeps a volume file private and QEMU's: one made by an older corrald (0644, root's) loses
/// its group and other bits and goes to the user QEMU runs as, which must open it.
fn keep_private(path: &Path, owner: Option<FileOwner>) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    match owner {
        Some(o) if (meta.uid(), meta.gid()) != (o.uid, o.gid) => {
            std::os::unix::fs::chown(path, Some(o.uid), Some(o.gid))
        }
        _ => Ok(()),
    }
}

/// Creates `path` empty with mode 0600, replacing a leftover.
fn create_private(path: &Path) -> Result<(), ControllerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(ControllerError::io("creating", path))
}

/// Copies `src` to `dst` (created read-only, mode 0400: written through the descriptor only)
/// and returns the BLAKE3 digest of the bytes, in one pass.
fn copy_hashing(src: &Path, dst: &Path) -> Result<corral_storage::Digest, ControllerError> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut input = std::fs::File::open(src).map_err(ControllerError::io("opening", src))?;
    let _ = std::fs::remove_file(dst);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(dst)
        .map_err(ControllerError::io("creating", dst))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input
            .read(&mut buf)
            .map_err(ControllerError::io("reading", src))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(ControllerError::io("writing", dst))?;
        hasher.update(&buf[..n]);
    }
    out.sync_all()
        .map_err(ControllerError::io("writing", dst))?;
    Ok(corral_storage::Digest(*hasher.finalize().as_bytes()))
}
