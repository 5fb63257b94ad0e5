//! Images, volumes and snapshots.
//!
//! Image import is the one place the service layer writes files: the bytes exist only while
//! the request that carries them (an upload) or fetches them (a URL) runs, so they are hashed
//! and written as they arrive into a temp file of the image store and renamed into place
//! (`images/blake3/<hex>`) before the Image object is created. The write is atomic and
//! content-addressed, so it is idempotent; a failed import removes its temp file and a crash
//! leaves one that the next start sweeps. Volumes and snapshots are only declared here; the
//! storage controller makes them.

mod attest;
mod image;
mod snapshot;
mod volume;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use corral_contract::{Image, Snapshot, Volume};
use corral_storage::{Cas, CasError, QemuImg, QemuImgError};
use corral_store::Store;

use crate::{Objects, ServiceError, VmService};

pub use image::ImportProgress;

/// Annotation whose new value asks for a snapshot to be restored.
pub const ANNOTATION_RESTORE: &str = "corral.dev/restore-requested-at";

/// Where storage lives on this node, and the tools it uses.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The data directory: `images/`, `volumes/`, `keys/` are under it.
    pub data_dir: PathBuf,
    /// The `qemu-img` to run (a path, or a name looked up in `PATH`).
    pub qemu_img: PathBuf,
}

impl StorageConfig {
    /// Defaults under `data_dir`, with `qemu-img` from `PATH`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StorageConfig {
            data_dir: data_dir.into(),
            qemu_img: PathBuf::from("qemu-img"),
        }
    }

    /// The volume files' directory.
    pub fn volumes_dir(&self) -> PathBuf {
        self.data_dir.join("volumes")
    }
}

/// The storage operations every transport exposes, and what the storage controller reads.
#[derive(Debug, Clone)]
pub struct StorageService {
    /// Image objects.
    pub images: Objects<Image>,
    /// Volume objects.
    pub volumes: Objects<Volume>,
    /// Snapshot objects.
    pub snapshots: Objects<Snapshot>,
    vms: VmService,
    cas: Cas,
    qemu_img: QemuImg,
    config: StorageConfig,
    http: reqwest::Client,
}

impl StorageService {
    /// Opens the image store under `config.data_dir` (creating it) over `store`.
    pub fn new(store: Arc<dyn Store>, config: StorageConfig) -> Result<Self, ServiceError> {
        let cas = Cas::open(config.data_dir.join("images")).map_err(cas_error)?;
        std::fs::create_dir_all(config.volumes_dir()).map_err(|e| {
            ServiceError::FailedPrecondition(format!(
                "creating {}: {e}",
                config.volumes_dir().display()
            ))
        })?;
        Ok(StorageService {
            images: Objects::new(store.clone()),
            volumes: Objects::new(store.clone()),
            snapshots: Objects::new(store.clone()),
            vms: VmService::new(store),
            cas,
            qemu_img: QemuImg::new(&config.qemu_img),
            config,
            http: reqwest::Client::builder()
                .user_agent(concat!("corral/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
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

    /// The file of a blob.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ServiceError> {
        let digest = digest.parse().map_err(|e: corral_storage::BadDigest| {
            ServiceError::FailedPrecondition(e.to_string())
        })?;
        Ok(self.cas.path(&digest))
    }

    /// Whether `path` is a blob of the image store.
    pub fn in_store(&self, path: &Path) -> bool {
        self.cas.holds(path)
    }
}

pub(crate) fn cas_error(e: CasError) -> ServiceError {
    ServiceError::FailedPrecondition(e.to_string())
}

pub(crate) fn qemu_img_error(e: QemuImgError) -> ServiceError {
    ServiceError::FailedPrecondition(e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::FailedPrecondition(format!("storage task failed: {e}")))?
}
