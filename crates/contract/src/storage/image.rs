use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{StoragePhase, storage_object};
use crate::choice::choice;
use crate::{ObjectMeta, ValidationError};

choice! {
    /// What an image holds.
    pub enum ImageFormat ("image format") {
        /// A qcow2 disk image.
        Qcow2 => "qcow2",
        /// A raw disk image.
        Raw => "raw",
        /// A kernel for direct boot.
        Kernel => "kernel",
        /// An initial ramdisk.
        Initrd => "initrd",
    }
}

impl ImageFormat {
    /// Whether a disk image (qcow2 or raw), as opposed to boot files.
    pub fn is_disk(self) -> bool {
        matches!(self, ImageFormat::Qcow2 | ImageFormat::Raw)
    }
}

/// Bytes stored once, by their BLAKE3 digest, under `images/blake3/<hex>` on the node.
// Deserialize and the schema (with `kind`, as on the wire): `strict_object!` in resource.rs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Name, labels and server-managed fields.
    pub metadata: ObjectMeta,
    /// Where the bytes come from.
    pub spec: ImageSpec,
    /// The stored bytes' digest, size and format.
    #[serde(default)]
    pub status: ImageStatus,
}

/// Where an image's bytes come from, and what they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// The source.
    pub source: ImageSource,
    /// What the bytes are. Left out, `qemu-img info` decides between qcow2 and raw; kernels
    /// and initrds must be declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    /// Volumes of every project may clone it (default false). Only an admin may share, and
    /// only an image of project `default`: a volume's `image: debian` names its own project's
    /// `debian`, or failing that a shared `debian` of `default`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// Where an image's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ImageSource {
    /// A file on the daemon's host (absolute path).
    Path(PathBuf),
    /// An `http://` or `https://` URL the daemon downloads.
    Url(String),
    /// Bytes a client streamed to the daemon (`corral image import FILE` from another host).
    Upload {
        /// The client-side file name, for people.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filename: Option<String>,
    },
}

impl ImageSpec {
    /// The longest source URL, in bytes.
    pub const MAX_URL: usize = 8192;

    /// Checks the source: an absolute path, or an http(s) URL.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match &self.source {
            ImageSource::Path(path) => {
                if !path.is_absolute() || path.as_os_str().as_encoded_bytes().contains(&0) {
                    return Err(ValidationError::new(
                        "spec.source.path",
                        format!(
                            "must be an absolute path on the daemon's host (got {:?})",
                            path.display().to_string()
                        ),
                    ));
                }
            }
            ImageSource::Url(url) => {
                // URLs are ASCII (RFC 3986): visible characters only, so no spaces either.
                let rest = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"));
                let scheme_ok = rest.is_some_and(|rest| !rest.is_empty());
                let visible = url.bytes().all(|b| b.is_ascii_graphic());
                if !scheme_ok || url.len() > Self::MAX_URL || !visible {
                    return Err(ValidationError::new(
                        "spec.source.url",
                        format!("must be an http:// or https:// URL without spaces (got {url:?})"),
                    ));
                }
            }
            ImageSource::Upload { .. } => {}
        }
        Ok(())
    }
}

/// What is stored. Written by the server once the bytes are in place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct ImageStatus {
    /// Whether the bytes are stored and match their digest.
    pub phase: StoragePhase,
    /// `blake3:<hex>` of the bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Bytes stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The format, declared or detected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    /// For disk images, the size the guest sees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_size: Option<u64>,
    /// When the digest was last recomputed and matched, in RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<String>,
    /// A sentence for people, e.g. why verification failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl utoipa::PartialSchema for ImageSource {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use crate::schema::{object, or_null, string};
        let url = string()
            .max_length(Some(ImageSpec::MAX_URL))
            .pattern(Some("^https?://[!-~]+$"));
        let upload = object([("filename", or_null(string()), false)]);
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(object([("path", crate::schema::absolute_path(), true)]))
            .item(object([("url", url.into(), true)]))
            .item(object([("upload", upload.into(), true)]))
            .description(Some(
                "Exactly one of: path (a file on the daemon's host), url (http or https), \
                 upload (bytes a client streams)",
            ))
            .into()
    }
}

impl utoipa::ToSchema for ImageSource {}

storage_object!(Image, ImageSpec, ImageStatus, Image, shared);
