use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use corral_contract::{
    Boot, Image, ImageFormat, ImageSource, ImageStatus, StoragePhase, ValidationError,
};
use corral_storage::{CasWriter, Digest, backing_outside};
use futures_util::{Stream, StreamExt};

use super::{StorageService, blocking, cas_error, qemu_img_error};
use crate::ServiceError;
use crate::objects::now;

/// Bytes an import has taken in so far (shared with whoever reports progress).
#[derive(Debug, Clone, Default)]
pub struct ImportProgress(Arc<AtomicU64>);

impl ImportProgress {
    /// Bytes so far.
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
}

/// Runs a blocking file write without stalling other tasks on a multi-threaded runtime (the
/// daemon's); on a current-thread runtime (tests) it just runs.
fn off_the_runtime<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn import_failed(name: &str, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::FailedPrecondition(format!("importing image {name:?}: {e}"))
}

impl StorageService {
    /// Imports an image whose source is a path on this host or an http(s) URL, and returns it
    /// once its bytes are stored.
    pub async fn create_image(
        &self,
        image: Image,
        progress: ImportProgress,
    ) -> Result<Image, ServiceError> {
        self.check_new_image(&image).await?;
        let name = image.metadata.name.to_string();
        let writer = self.cas.writer().map_err(cas_error)?;
        let writer = match image.spec.source.clone() {
            ImageSource::Path(path) => {
                let n = name.clone();
                blocking(move || {
                    let mut w = writer;
                    let file = std::fs::File::open(&path).map_err(|e| {
                        ServiceError::Invalid(ValidationError::new(
                            "spec.source.path",
                            format!("{}: {e}", path.display()),
                        ))
                    })?;
                    w.copy_from(file, &path.display().to_string(), |b| progress.set(b))
                        .map_err(|e| import_failed(&n, e))?;
                    Ok(w)
                })
                .await?
            }
            ImageSource::Url(url) => self.fetch(&name, &url, writer, progress).await?,
            ImageSource::Upload { .. } => {
                return Err(ServiceError::Invalid(ValidationError::new(
                    "spec.source",
                    "an upload is sent with the Upload call (corral image import NAME FILE)",
                )));
            }
        };
        self.store_image(image, writer).await
    }

    /// Imports bytes a client streams; `size`, when given, is checked at the end.
    pub async fn upload_image<S>(
        &self,
        image: Image,
        size: Option<u64>,
        mut chunks: S,
    ) -> Result<Image, ServiceError>
    where
        S: Stream<Item = Result<Vec<u8>, ServiceError>> + Unpin,
    {
        if !matches!(image.spec.source, ImageSource::Upload { .. }) {
            return Err(ServiceError::Invalid(ValidationError::new(
                "spec.source",
                "an upload must have an upload source",
            )));
        }
        self.check_new_image(&image).await?;
        let name = image.metadata.name.to_string();
        let mut writer = self.cas.writer().map_err(cas_error)?;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            off_the_runtime(|| writer.write_chunk(&chunk)).map_err(|e| import_failed(&name, e))?;
        }
        if let Some(expected) = size {
            if writer.size() != expected {
                return Err(import_failed(
                    &name,
                    corral_storage::CasError::Truncated {
                        expected,
                        got: writer.size(),
                    },
                ));
            }
        }
        self.store_image(image, writer).await
    }

    async fn fetch(
        &self,
        name: &str,
        url: &str,
        mut writer: CasWriter,
        progress: ImportProgress,
    ) -> Result<CasWriter, ServiceError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| import_failed(name, format!("fetching {url}: {e}")))?;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| import_failed(name, format!("fetching {url}: {e}")))?;
            off_the_runtime(|| writer.write_chunk(&chunk)).map_err(|e| import_failed(name, e))?;
            progress.set(writer.size());
        }
        Ok(writer)
    }

    /// Refuses early, before any byte moves: a bad spec, a taken name, no qemu-img.
    async fn check_new_image(&self, image: &Image) -> Result<(), ServiceError> {
        image.metadata.validate()?;
        image.spec.validate()?;
        if self.images.exists(image.metadata.name.as_str()).await? {
            return Err(ServiceError::AlreadyExists {
                kind: "Image",
                name: image.metadata.name.to_string(),
            });
        }
        let declared_boot_file = image.spec.format.is_some_and(|f| !f.is_disk());
        if !declared_boot_file {
            let qemu_img = self.qemu_img.clone();
            blocking(move || qemu_img.check().map_err(qemu_img_error)).await?;
        }
        Ok(())
    }

    /// Checks the bytes in `writer` (format, backing file), moves them into the store and
    /// creates the Image. On any failure nothing stays behind.
    async fn store_image(
        &self,
        mut image: Image,
        writer: CasWriter,
    ) -> Result<Image, ServiceError> {
        let name = image.metadata.name.to_string();
        let declared = image.spec.format;
        let (qemu_img, cas) = (self.qemu_img.clone(), self.cas.clone());
        let n = name.clone();
        let (blob, format, virtual_size) = blocking(move || {
            let mut writer = writer;
            writer.finish().map_err(|e| import_failed(&n, e))?;
            let (format, virtual_size) = match declared {
                Some(f) if !f.is_disk() => (f, None),
                _ => {
                    let temp = writer.temp_path().to_path_buf();
                    let info = qemu_img
                        .info(&temp, declared.map(|f| f.as_str()))
                        .map_err(|e| import_failed(&n, e))?;
                    let format = match info.format.as_str() {
                        "qcow2" => ImageFormat::Qcow2,
                        "raw" => ImageFormat::Raw,
                        other => {
                            return Err(ServiceError::Invalid(ValidationError::new(
                                "spec.format",
                                format!(
                                    "the image is {other}: Corral stores qcow2 or raw disk images (convert it with qemu-img convert -O qcow2), or declare kernel or initrd"
                                ),
                            )));
                        }
                    };
                    let dir = temp.parent().map(PathBuf::from).unwrap_or_default();
                    if let Some(outside) = backing_outside(&info, &cas, &dir) {
                        return Err(ServiceError::Invalid(ValidationError::new(
                            "spec.source",
                            format!(
                                "the qcow2 image names {} as its backing file, outside the image store: refused (flatten it with qemu-img convert)",
                                outside.display()
                            ),
                        )));
                    }
                    (format, Some(info.virtual_size))
                }
            };
            let blob = writer.commit().map_err(|e| import_failed(&n, e))?;
            Ok((blob, format, virtual_size))
        })
        .await?;
        image.status = ImageStatus {
            phase: StoragePhase::Ready,
            digest: Some(blob.digest.to_string()),
            size: Some(blob.size),
            format: Some(format),
            virtual_size,
            verified_at: Some(now()),
            message: None,
        };
        match self.images.create(image).await {
            Ok(image) => {
                tracing::info!(image = %name, digest = %blob.digest, size = blob.size, deduplicated = blob.existed, "image imported");
                Ok(image)
            }
            Err(e) => {
                if !blob.existed {
                    self.remove_blob_if_unused(&blob.digest).await;
                }
                Err(e)
            }
        }
    }

    async fn remove_blob_if_unused(&self, digest: &Digest) {
        let text = digest.to_string();
        match self.images.list("").await {
            Ok((images, _))
                if !images
                    .iter()
                    .any(|i| i.status.digest.as_deref() == Some(&text)) =>
            {
                if let Err(e) = self.cas.remove(digest) {
                    tracing::warn!(%digest, error = %e, "cannot remove image bytes");
                }
            }
            _ => {}
        }
    }

    /// Recomputes an image's digest and records the outcome in its status.
    pub async fn verify_image(&self, name: &str) -> Result<(Image, bool), ServiceError> {
        let image = self.images.get(name).await?;
        let digest: Digest = image
            .status
            .digest
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e: corral_storage::BadDigest| {
                ServiceError::FailedPrecondition(e.to_string())
            })?;
        let cas = self.cas.clone();
        let result = blocking(move || Ok(cas.verify(&digest))).await?;
        let (ok, message) = match result {
            Ok(true) => (true, None),
            Ok(false) => (
                false,
                Some(format!(
                    "stored bytes no longer match {digest}: the file was changed on disk; delete and import the image again"
                )),
            ),
            Err(e) => (false, Some(format!("cannot read the stored bytes: {e}"))),
        };
        let image = self
            .images
            .modify(name, 0, |img| {
                img.status.phase = if ok {
                    StoragePhase::Ready
                } else {
                    StoragePhase::Failed
                };
                if ok {
                    img.status.verified_at = Some(now());
                }
                img.status.message = message.clone();
                Ok(true)
            })
            .await?;
        Ok((image, ok))
    }

    /// Deletes an image; refused while a Volume or VM uses it. Its bytes go when no other
    /// image has them.
    pub async fn delete_image(&self, name: &str) -> Result<Image, ServiceError> {
        let image = self.images.get(name).await?;
        let (volumes, _) = self.volumes.list("").await?;
        if let Some(v) = volumes
            .iter()
            .find(|v| v.spec.image.as_ref().is_some_and(|i| i.as_str() == name))
        {
            return Err(ServiceError::FailedPrecondition(format!(
                "image {name:?} is used by volume {:?}: delete the volume first",
                v.metadata.name.as_str()
            )));
        }
        if let Some(digest) = image.status.digest.as_deref() {
            let blob = self.blob_path(digest)?;
            let (vms, _) = self.vms.list("").await?;
            for vm in &vms {
                let uses = match &vm.spec.boot {
                    Boot::Kernel { kernel, initrd, .. } => {
                        *kernel == blob || initrd.as_ref() == Some(&blob)
                    }
                    Boot::Disk { path, .. } => *path == blob,
                    Boot::Volume { .. } => false,
                };
                if uses {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "image {name:?} is used by VM {:?}: delete the VM or change its boot first",
                        vm.metadata.name.as_str()
                    )));
                }
            }
        }
        self.images
            .remove(name, image.metadata.resource_version)
            .await?;
        if let Some(digest) = image.status.digest.as_deref().and_then(|d| d.parse().ok()) {
            self.remove_blob_if_unused(&digest).await;
        }
        Ok(image)
    }
}
