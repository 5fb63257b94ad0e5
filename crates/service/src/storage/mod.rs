//! Images, volumes and snapshots.
//!
//! Image import is the one place the service layer writes files: the bytes exist only while
//! the request that carries them (an upload) or fetches them (a URL) runs, so they are hashed
//! and written as they arrive into a temp file of the image store and renamed into place
//! (`images/blake3/<hex>`) before the Image object is created. The write is atomic and
//! content-addressed, so it is idempotent; a failed import removes its temp file and a crash
//! leaves one that the next start sweeps. Volumes and snapshots are only declared here; the
//! storage controller makes them.
//!
//! Each kind is a strategy of the generic path ([`ImageKind`], [`VolumeKind`],
//! [`SnapshotKind`]); [`StorageService`] adds the verbs that are more than CRUD (import,
//! verify, resize, restore, attest).

mod attest;
mod fetch;
mod image;
mod snapshot;
mod template;
mod volume;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use corral_storage::{Cas, HostPaths, QemuImg};
use corral_store::Store;

use corral_contract::{DiskFormat, ValidationError, Volume};

use crate::resources::Resources;
use crate::{ServiceError, VmService};

pub use fetch::{BlockedAddress, ImportPolicy};

pub use image::{ImageKind, ImportProgress};
pub use snapshot::SnapshotKind;
pub use volume::VolumeKind;

/// Where storage lives on this node, and the tools it uses.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The data directory: `images/`, `volumes/`, `keys/` are under it.
    pub data_dir: PathBuf,
    /// The `qemu-img` to run (a path, or a name looked up in `PATH`).
    pub qemu_img: PathBuf,
    /// Which host files an image's source path may name.
    pub host_paths: HostPaths,
    /// How URL imports may reach out, and how large an import may be.
    pub import: ImportPolicy,
    /// The most bytes one upload may send; `None` for no limit.
    pub max_upload: Option<u64>,
    /// How `corral image build` builds.
    pub build: BuildConfig,
    /// Storage pools besides the data directory, by name (`corrald --storage-pool`).
    pub pools: std::collections::BTreeMap<String, PoolConfig>,
}

/// A storage pool: a directory volumes may be made in instead of `<data_dir>/volumes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// The directory, absolute. For a shared pool, the same path on every node.
    pub path: PathBuf,
    /// Mounted on every node (NFS, CephFS …): its volumes follow their VMs to any node.
    pub shared: bool,
}

/// How images are built from distribution packages.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// The Debian mirror packages come from.
    pub mirror: String,
    /// Where built images are kept, keyed by their inputs, to be reused by the next build of
    /// the same inputs. `None`: built under `<data_dir>/builds` and removed once imported.
    pub cache: Option<PathBuf>,
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig {
            mirror: "http://deb.debian.org/debian".into(),
            cache: None,
        }
    }
}

impl StorageConfig {
    /// Defaults under `data_dir`, with `qemu-img` from `PATH`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StorageConfig {
            data_dir: data_dir.into(),
            qemu_img: PathBuf::from("qemu-img"),
            host_paths: HostPaths::new(),
            import: ImportPolicy::default(),
            max_upload: None,
            build: BuildConfig::default(),
            pools: Default::default(),
        }
    }

    /// The volume files' directory in the data directory (volumes of no pool).
    pub fn volumes_dir(&self) -> PathBuf {
        self.data_dir.join("volumes")
    }

    /// The directory of pool `pool` on this node (`None`: the data directory's).
    pub fn pool_dir(&self, pool: Option<&str>) -> Result<PathBuf, ServiceError> {
        match pool {
            None => Ok(self.volumes_dir()),
            Some(name) => {
                self.pools
                    .get(name)
                    .map(|p| p.path.clone())
                    .ok_or_else(|| ServiceError::NoPool {
                        pool: name.to_owned(),
                    })
            }
        }
    }

    /// Whether pool `pool` is shared by every node.
    pub fn pool_shared(&self, pool: Option<&str>) -> bool {
        pool.and_then(|p| self.pools.get(p))
            .is_some_and(|p| p.shared)
    }

    /// The file `volume` has on this node: `<pool dir>/<uid>.<qcow2|raw|weights>`. Made from
    /// this node's own settings, never from the volume's status (which another node wrote).
    pub fn volume_file(&self, volume: &Volume) -> Result<PathBuf, ServiceError> {
        self.volume_file_as(volume, volume_format(volume))
    }

    /// [`volume_file`](Self::volume_file) in `format` (a volume that moved here by a
    /// migration is a qcow2 whatever it was).
    pub fn volume_file_as(
        &self,
        volume: &Volume,
        format: VolumeFormat,
    ) -> Result<PathBuf, ServiceError> {
        let ext = match format {
            VolumeFormat::Weights => "weights",
            VolumeFormat::Disk(DiskFormat::Qcow2) => "qcow2",
            VolumeFormat::Disk(DiskFormat::Raw) => "raw",
        };
        let dir = self.pool_dir(volume.spec.pool.as_ref().map(|p| p.as_str()))?;
        Ok(dir.join(format!("{}.{ext}", volume.metadata.uid)))
    }
}

/// What a volume's file holds, which names its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeFormat {
    /// A weights volume: its image's bytes, whatever their format.
    Weights,
    /// A disk in this format.
    Disk(DiskFormat),
}

/// The format of `volume`'s file: as made (a disk that moved with a migration became a
/// qcow2), else as its spec asks.
fn volume_format(volume: &Volume) -> VolumeFormat {
    match volume.spec.kind {
        corral_contract::VolumeKind::Weights => VolumeFormat::Weights,
        corral_contract::VolumeKind::Disk => {
            VolumeFormat::Disk(volume.status.format.unwrap_or(volume.spec.format()))
        }
    }
}

/// The storage operations every transport exposes, and what the storage controller reads.
#[derive(Debug, Clone)]
pub struct StorageService {
    /// Image objects (create them with [`StorageService::create_image`] or
    /// [`StorageService::upload_image`], which store their bytes first).
    pub images: Resources<ImageKind>,
    /// Volume objects.
    pub volumes: Resources<VolumeKind>,
    /// Snapshot objects.
    pub snapshots: Resources<SnapshotKind>,
    vms: VmService,
    cas: Cas,
    qemu_img: QemuImg,
    config: StorageConfig,
    http: reqwest::Client,
    /// The node's VMs, for saving templates (none on a `--role server`).
    hypervisor: Option<Arc<dyn corral_hypervisor::Hypervisor>>,
}

impl StorageService {
    /// Opens the image store under `config.data_dir` (creating it) over `store`.
    pub fn new(store: Arc<dyn Store>, config: StorageConfig) -> Result<Self, ServiceError> {
        let cas = Cas::open(config.data_dir.join("images"))?;
        for dir in std::iter::once(config.volumes_dir())
            .chain(config.pools.values().map(|p| p.path.clone()))
        {
            std::fs::create_dir_all(&dir).map_err(|source| ServiceError::Io {
                context: format!("creating {}", dir.display()),
                source,
            })?;
        }
        Ok(StorageService {
            images: Resources::with_strategy(store.clone(), ImageKind::new(cas.clone())),
            volumes: Resources::new(store.clone()),
            snapshots: Resources::new(store.clone()),
            vms: VmService::new(store),
            cas,
            qemu_img: QemuImg::new(&config.qemu_img),
            http: config.import.client().map_err(|e| {
                ValidationError::new(
                    "import_proxy",
                    format!("{e}: give an http:// or https:// URL"),
                )
            })?,
            config,
            hypervisor: None,
        })
    }

    /// The image store.
    pub fn cas(&self) -> &Cas {
        &self.cas
    }

    /// The qemu-img wrapper.
    pub fn qemu_img(&self) -> &QemuImg {
        &self.qemu_img
    }

    /// Settings.
    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    /// The VM service over the same store.
    pub fn vms(&self) -> &VmService {
        &self.vms
    }

    /// The file of a blob, by the digest an image's status records.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ServiceError> {
        let digest = digest.parse::<corral_storage::Digest>()?;
        Ok(self.cas.path(&digest))
    }

    /// Whether `path` is a blob of the image store.
    pub fn in_store(&self, path: &Path) -> bool {
        self.cas.holds(path)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| ServiceError::Task {
            what: "storage task",
            source,
        })?
}
