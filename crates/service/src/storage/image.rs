use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use corral_contract::{
    Boot, Image, ImageBuild, ImageFormat, ImageSource, ImageStatus, StoragePhase, TemplateStatus,
    ValidationError, Vm, Volume,
};
use corral_storage::{BuildRequest, Cas, CasWriter, Digest, HostAccess};
use corral_store::Store;
use futures_util::{Stream, StreamExt};

use super::fetch::{self, BlockedAddress};
use super::{StorageService, blocking};
use crate::ServiceError;
use crate::resources::{Strategy, may_refer, now, read_all, refuse_if_used};

/// How images are admitted: an Image is created only once its bytes are in the image store
/// (by [`StorageService::create_image`] or [`StorageService::upload_image`]); it cannot be
/// deleted while a volume or VM uses it, and its bytes go with the last image that has them.
#[derive(Debug)]
pub struct ImageKind {
    cas: Cas,
}

impl ImageKind {
    /// Images whose bytes are in `cas`.
    pub fn new(cas: Cas) -> Self {
        ImageKind { cas }
    }

    pub(super) async fn remove_blob_if_unused(&self, store: &dyn Store, digest: &Digest) {
        let text = digest.to_string();
        let holds = |i: &Image| {
            i.status.digest.as_deref() == Some(&text)
                || i.status
                    .template
                    .as_ref()
                    .is_some_and(|t| t.state_digest == text)
        };
        match read_all::<Image>(store).await {
            Ok(images) if !images.iter().any(holds) => {
                if let Err(e) = self.cas.remove(digest) {
                    tracing::warn!(%digest, error = %e, "cannot remove image bytes");
                }
            }
            _ => {}
        }
    }
}

impl Strategy for ImageKind {
    type Object = Image;

    fn usage(&self, image: &Image) -> crate::Usage {
        crate::Usage::of_image(image)
    }

    /// The status the import computed, once its bytes are known to be stored.
    fn initial_status(&self, image: &Image) -> Result<ImageStatus, ServiceError> {
        let stored = image
            .status
            .digest
            .as_deref()
            .and_then(|d| d.parse::<Digest>().ok())
            .is_some_and(|d| self.cas.path(&d).is_file());
        if !stored {
            return Err(ValidationError::new(
                "spec.source",
                "an image is created by importing its bytes (corral image import)",
            )
            .into());
        }
        Ok(image.status.clone())
    }

    async fn check_delete(&self, store: &dyn Store, image: &Image) -> Result<(), ServiceError> {
        let volumes = read_all::<Volume>(store).await?.into_iter();
        refuse_if_used(
            image,
            volumes.filter(|v| {
                v.spec
                    .image
                    .as_ref()
                    .is_some_and(|i| may_refer(&v.metadata, i, image))
            }),
            "delete the volume first",
        )?;
        let Some(digest) = image.status.digest.as_deref() else {
            return Ok(());
        };
        let blob = self.cas.path(&digest.parse::<Digest>()?);
        let vms = read_all::<Vm>(store).await?.into_iter();
        refuse_if_used(
            image,
            vms.filter(|vm| match &vm.spec.boot {
                Boot::Kernel { kernel, initrd, .. } => {
                    *kernel == blob || initrd.as_ref() == Some(&blob)
                }
                Boot::Disk { path, .. } => *path == blob,
                Boot::Volume { .. } => false,
            }),
            "delete the VM or change its boot first",
        )
    }

    async fn deleted(&self, store: &dyn Store, image: &Image) {
        if let Some(digest) = image.status.digest.as_deref().and_then(|d| d.parse().ok()) {
            self.remove_blob_if_unused(store, &digest).await;
        }
        let state = image.status.template.as_ref();
        if let Some(digest) = state.and_then(|t| t.state_digest.parse().ok()) {
            self.remove_blob_if_unused(store, &digest).await;
        }
    }
}

/// Bytes an import has taken in so far (shared with whoever reports progress).
#[derive(Debug, Clone, Default)]
pub struct ImportProgress(Arc<AtomicU64>);

impl ImportProgress {
    /// Bytes so far.
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(super) fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
}

/// Compares the bytes in `temp` (whose BLAKE3 is `digest`) with the checksum the spec
/// declares. A mismatch is the caller's to fix, so it names `spec.checksum`.
fn check_checksum(
    checksum: &str,
    digest: &Digest,
    temp: &std::path::Path,
) -> Result<(), ServiceError> {
    let (algorithm, want) = corral_contract::parse_checksum(checksum)?;
    let got = match algorithm {
        "blake3" => digest.hex(),
        "sha256" => hash_hex::<sha2::Sha256>(temp)?,
        _ => hash_hex::<sha2::Sha512>(temp)?,
    };
    if got != want {
        return Err(ServiceError::Invalid(ValidationError::new(
            "spec.checksum",
            format!("the bytes have {algorithm}:{got}, not {checksum}: nothing was stored"),
        )));
    }
    Ok(())
}

fn hash_hex<H: sha2::Digest + std::io::Write>(
    path: &std::path::Path,
) -> Result<String, ServiceError> {
    let mut file = std::fs::File::open(path).map_err(|source| ServiceError::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    let mut hasher = H::new();
    std::io::copy(&mut file, &mut hasher).map_err(|source| ServiceError::Io {
        context: format!("hashing {}", path.display()),
        source,
    })?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
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

impl StorageService {
    /// Imports an image whose source is a path on this host or an http(s) URL, and returns it
    /// once its bytes are stored. A path is opened under the daemon's host-path rules for a
    /// caller with `access`; a URL is fetched under its import policy.
    pub async fn create_image(
        &self,
        image: Image,
        progress: ImportProgress,
        access: HostAccess,
    ) -> Result<Image, ServiceError> {
        self.check_new_image(&image, access).await?;
        let name = image.metadata.name.to_string();
        let writer = self.cas.writer()?;
        let max = self.config.import.max_size;
        let writer = match image.spec.source.clone() {
            ImageSource::Path(path) => {
                let n = name.clone();
                let rules = self.config.host_paths.clone();
                blocking(move || {
                    let mut w = writer;
                    let invalid = |message: String| {
                        ServiceError::Invalid(ValidationError::new("spec.source.path", message))
                    };
                    let host = rules
                        .open(&path, access)
                        .map_err(|e| invalid(e.to_string()))?;
                    let size = host.file.metadata().map(|m| m.len()).unwrap_or(0);
                    if size > max {
                        return Err(ServiceError::import(&n, TooLarge { limit: max, size }));
                    }
                    w.copy_from(host.file, &path.display().to_string(), |b| progress.set(b))
                        .map_err(|e| ServiceError::import(&n, e))?;
                    Ok(w)
                })
                .await?
            }
            ImageSource::Url(url) => self.fetch(&name, &url, writer, progress).await?,
            ImageSource::Build(build) => {
                // mmdebstrap runs package maintainer scripts as root in a chroot on this host
                // and fills its disk: a host resource, as bridge networks and host paths are.
                if access != HostAccess::Admin {
                    return Err(ServiceError::PermissionDenied {
                        what: format!(
                            "building image {name:?} (spec.source.build) runs mmdebstrap as root \
                             on corrald's host, which is for admins only"
                        ),
                        remedy: "ask an admin to build it, or import a built image",
                    });
                }
                let (writer, packages) = self.build(&name, &build, writer, progress).await?;
                return self.store_image(image, writer, packages, None).await;
            }
            ImageSource::Upload { .. } => {
                return Err(ServiceError::Invalid(ValidationError::new(
                    "spec.source",
                    "an upload is sent with the Upload call (corral image import NAME FILE)",
                )));
            }
            ImageSource::Template(_) => {
                return self.create_template(image, progress, access).await;
            }
        };
        self.store_image(image, writer, Vec::new(), None).await
    }

    /// Builds a disk image from distribution packages (or takes it from the build cache) and
    /// copies it into `writer`; returns the installed packages as `name=version`.
    async fn build(
        &self,
        name: &str,
        build: &ImageBuild,
        writer: CasWriter,
        progress: ImportProgress,
    ) -> Result<(CasWriter, Vec<String>), ServiceError> {
        let request = BuildRequest {
            suite: build.distribution.suite().to_owned(),
            packages: build.packages.clone(),
            size: build.size_bytes(),
            mirror: self.config.build.mirror.clone(),
        };
        let configured = self.config.build.cache.clone();
        let cache = configured
            .clone()
            .unwrap_or_else(|| self.config.data_dir.join("builds"));
        let n = name.to_owned();
        blocking(move || {
            let result = corral_storage::build_image(&request, &cache, |line| {
                tracing::info!(image = %n, "{line}");
            });
            if result.is_err() && configured.is_none() {
                // Nothing half-made stays behind (the script already removed its work tree).
                let _ = std::fs::remove_dir_all(cache.join(request.key()));
            }
            let built = result.map_err(|e| ServiceError::import(&n, e))?;
            tracing::info!(image = %n, cached = built.cached, "image built");
            let mut w = writer;
            let file = std::fs::File::open(&built.image).map_err(|e| ServiceError::Io {
                context: format!("opening {}", built.image.display()),
                source: e,
            })?;
            w.copy_from(file, &built.image.display().to_string(), |b| {
                progress.set(b)
            })
            .map_err(|e| ServiceError::import(&n, e))?;
            // Without a configured cache the build's copy goes once its bytes are stored.
            if configured.is_none() {
                if let Some(dir) = built.image.parent() {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            Ok((w, built.packages))
        })
        .await
    }

    /// Imports bytes a client streams; `size`, when given, is checked at the end. An upload
    /// that declares or sends more than [`StorageConfig::max_upload`](super::StorageConfig)
    /// bytes is refused as soon as it does, and its temp file removed.
    pub async fn upload_image<S>(
        &self,
        image: Image,
        size: Option<u64>,
        mut chunks: S,
        access: HostAccess,
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
        let name = image.metadata.name.to_string();
        let too_large = |limit| ServiceError::TooLarge {
            what: format!("the upload of image {name:?}"),
            limit,
            remedy: "corrald's --upload-max-size sets the limit",
        };
        let max = self.config.max_upload.unwrap_or(u64::MAX);
        if size.is_some_and(|size| size > max) {
            return Err(too_large(max));
        }
        self.check_new_image(&image, access).await?;
        let mut writer = self.cas.writer()?;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if writer.size().saturating_add(chunk.len() as u64) > max {
                // Dropping the writer removes its temp file.
                return Err(too_large(max));
            }
            off_the_runtime(|| writer.write_chunk(&chunk))
                .map_err(|e| ServiceError::import(&name, e))?;
        }
        if let Some(expected) = size {
            if writer.size() != expected {
                return Err(ServiceError::import(
                    &name,
                    corral_storage::CasError::Truncated {
                        expected,
                        got: writer.size(),
                    },
                ));
            }
        }
        self.store_image(image, writer, Vec::new(), None).await
    }

    async fn fetch(
        &self,
        name: &str,
        url: &str,
        mut writer: CasWriter,
        progress: ImportProgress,
    ) -> Result<CasWriter, ServiceError> {
        let policy = &self.config.import;
        let refused = |b: &BlockedAddress| {
            ServiceError::Invalid(ValidationError::new(
                "spec.source.url",
                format!("{url}: {b}"),
            ))
        };
        let failed = |source: reqwest::Error| match fetch::blocked_in(&source) {
            Some(b) => refused(b),
            None => ServiceError::import(
                name,
                Fetch {
                    url: url.to_owned(),
                    message: fetch::with_causes(&source),
                },
            ),
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            ServiceError::Invalid(ValidationError::new(
                "spec.source.url",
                format!("{url}: {e}"),
            ))
        })?;
        policy.check_url(&parsed).map_err(|b| refused(&b))?;
        let response = self
            .http
            .get(parsed)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(failed)?;
        // The resolver already refused what it saw; this also covers a configured proxy's
        // answer coming from where the name pointed.
        if let (None, Some(peer)) = (&policy.proxy, response.remote_addr()) {
            policy
                .check("the server", peer.ip())
                .map_err(|b| refused(&b))?;
        }
        let max = policy.max_size;
        if let Some(size) = response.content_length().filter(|&n| n > max) {
            return Err(ServiceError::import(name, TooLarge { limit: max, size }));
        }
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(failed)?;
            let size = writer.size() + chunk.len() as u64;
            if size > max {
                return Err(ServiceError::import(name, TooLarge { limit: max, size }));
            }
            off_the_runtime(|| writer.write_chunk(&chunk))
                .map_err(|e| ServiceError::import(name, e))?;
            progress.set(writer.size());
        }
        Ok(writer)
    }

    /// Refuses early, before any byte moves: a bad spec, a taken name, no qemu-img.
    pub(crate) async fn check_new_image(
        &self,
        image: &Image,
        access: HostAccess,
    ) -> Result<(), ServiceError> {
        image.metadata.validate()?;
        image.spec.validate()?;
        crate::check_share(&image.metadata, image.spec.shared, access)?;
        if self.images.exists(&image.metadata.key()).await? {
            return Err(ServiceError::AlreadyExists {
                kind: "Image",
                name: image.metadata.name.to_string(),
            });
        }
        let declared_boot_file = image.spec.format.is_some_and(|f| !f.is_disk());
        if !declared_boot_file {
            let qemu_img = self.qemu_img.clone();
            blocking(move || Ok(qemu_img.check()?)).await?;
        }
        Ok(())
    }

    /// Stores a template's disk copy `flat` and creates the image, with what else it saved.
    pub(super) async fn store_template_disk(
        &self,
        image: Image,
        flat: &std::path::Path,
        template: TemplateStatus,
    ) -> Result<Image, ServiceError> {
        let name = image.metadata.name.to_string();
        let mut writer = self.cas.writer()?;
        let flat = flat.to_path_buf();
        let writer = blocking(move || {
            let file = std::fs::File::open(&flat).map_err(|source| ServiceError::Io {
                context: format!("opening {}", flat.display()),
                source,
            })?;
            writer
                .copy_from(file, &flat.display().to_string(), |_| {})
                .map_err(|e| ServiceError::import(&name, e))?;
            Ok(writer)
        })
        .await?;
        self.store_image(image, writer, Vec::new(), Some(template))
            .await
    }

    /// Checks the bytes in `writer` (format, backing file), moves them into the store and
    /// creates the Image, recording `packages` (what a build installed) and `template` (what
    /// a template saved besides). On any failure nothing stays behind.
    async fn store_image(
        &self,
        mut image: Image,
        writer: CasWriter,
        packages: Vec<String>,
        template: Option<TemplateStatus>,
    ) -> Result<Image, ServiceError> {
        let name = image.metadata.name.to_string();
        let declared = image.spec.format;
        let checksum = image.spec.checksum.clone();
        let (qemu_img, cas) = (self.qemu_img.clone(), self.cas.clone());
        // Which blobs hold disk images, for the backing-chain check.
        let disks: std::collections::HashMap<Digest, &'static str> =
            read_all::<Image>(&**self.images.store())
                .await?
                .iter()
                .filter_map(|i| {
                    let digest = i.status.digest.as_deref()?.parse().ok()?;
                    match i.status.format? {
                        ImageFormat::Qcow2 => Some((digest, "qcow2")),
                        ImageFormat::Raw => Some((digest, "raw")),
                        ImageFormat::Kernel | ImageFormat::Initrd => None,
                    }
                })
                .collect();
        let n = name.clone();
        let (blob, format, virtual_size) = blocking(move || {
            let mut writer = writer;
            let (digest, _) = writer.finish().map_err(|e| ServiceError::import(&n, e))?;
            let temp = writer.temp_path().to_path_buf();
            if let Some(checksum) = &checksum {
                check_checksum(checksum, &digest, &temp)?;
            }
            let invalid = |e: corral_storage::ContentError| match e {
                corral_storage::ContentError::QemuImg(e) => ServiceError::import(&n, e),
                e => ServiceError::Invalid(ValidationError::new("spec.source", e.to_string())),
            };
            let (format, virtual_size) = match declared {
                Some(f) if !f.is_disk() => {
                    corral_storage::inspect_boot_file(&temp, f.as_str()).map_err(invalid)?;
                    (f, None)
                }
                _ => {
                    let declared_qcow2 = declared.map(|f| f == ImageFormat::Qcow2);
                    let inspected =
                        corral_storage::inspect_disk(&qemu_img, &cas, &temp, declared_qcow2, |d| {
                            disks.get(d).copied()
                        })
                        .map_err(invalid)?;
                    let format = if inspected.qcow2 {
                        ImageFormat::Qcow2
                    } else {
                        ImageFormat::Raw
                    };
                    (format, Some(inspected.virtual_size))
                }
            };
            let blob = writer.commit().map_err(|e| ServiceError::import(&n, e))?;
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
            packages,
            template,
        };
        match self.images.create(image).await {
            Ok(image) => {
                tracing::info!(image = %name, digest = %blob.digest, size = blob.size, deduplicated = blob.existed, "image imported");
                Ok(image)
            }
            Err(e) => {
                if !blob.existed {
                    self.images
                        .strategy()
                        .remove_blob_if_unused(&**self.images.store(), &blob.digest)
                        .await;
                }
                Err(e)
            }
        }
    }

    /// Recomputes an image's digest and records the outcome in its status.
    pub async fn verify_image(&self, name: &str) -> Result<(Image, bool), ServiceError> {
        let image = self.images.get(name).await?;
        let digest: Digest = image.status.digest.as_deref().unwrap_or_default().parse()?;
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

    /// Deletes an image; refused while a volume or VM uses it. Its bytes go when no other
    /// image has them.
    pub async fn delete_image(&self, name: &str) -> Result<Image, ServiceError> {
        self.images.delete(name, None).await
    }
}

/// Fetching an image's URL failed.
#[derive(Debug, thiserror::Error)]
#[error("fetching {url}: {message}")]
struct Fetch {
    url: String,
    message: String,
}

/// An import brings in more than the daemon accepts.
#[derive(Debug, thiserror::Error)]
#[error(
    "{size} bytes is more than the {limit} bytes an import may bring in (corrald --import-max-size)"
)]
struct TooLarge {
    limit: u64,
    size: u64,
}
