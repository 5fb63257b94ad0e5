use serde::{Deserialize, Serialize};

use super::{StoragePhase, storage_object};
use crate::choice::choice;
use crate::{ByteSize, DiskFormat, ObjectMeta, ResourceName, ValidationError};

choice! {
    /// What a volume is for.
    #[derive(Default)]
    pub enum VolumeKind ("volume kind") {
        /// A VM's disk (the default).
        #[default]
        Disk => "disk",
        /// Read-only data such as model weights: a full copy of an image, always attached
        /// read-only, its digest checked before every VM start.
        Weights => "weights",
    }
}

/// A block device for VMs: `volumes/<uid>.<format>` on the node.
// Deserialize and the schema (with `kind`, as on the wire): `strict_object!` in resource.rs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Name, labels and server-managed fields.
    pub metadata: ObjectMeta,
    /// What the user wants.
    pub spec: VolumeSpec,
    /// What the controller made.
    #[serde(default)]
    pub status: VolumeStatus,
}

/// What a volume should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Disk or weights (default disk).
    #[serde(default)]
    pub kind: VolumeKind,
    /// File format (default qcow2). A clone of an image is always a qcow2 backed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// Size the guest sees. Required for an empty volume; for a clone, at least the image's
    /// size (default: the image's). Growing it resizes the volume, online when attached to
    /// a running VM; it never shrinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,
    /// Clone this Image (a disk image): a thin qcow2 on the read-only image for `disk`, a
    /// full copy for `weights`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ResourceName>,
    /// The storage pool that holds the file, as the nodes declare it
    /// (`corrald --storage-pool NAME=PATH[:shared]`). Default: the node's data directory,
    /// which makes the volume node-local (its VMs run where it was made). A volume in a
    /// `shared` pool can follow its VM to any node that mounts the pool. Set at creation only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<ResourceName>,
}

fn size_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    let max = VolumeSpec::MAX_SIZE.as_u64();
    crate::schema::byte_size(512, max, Some(512))
}

// Written out: which of kind, size, image and format go together is a `oneOf` the derive
// cannot say.
impl utoipa::PartialSchema for VolumeSpec {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use crate::schema::{name, object, or_null, string};
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let null =
            || -> utoipa::openapi::RefOr<_> { ObjectBuilder::new().schema_type(Type::Null).into() };
        let disk = || {
            string()
                .enum_values(Some([VolumeKind::Disk.as_str()]))
                .into()
        };
        let weights = string().enum_values(Some([VolumeKind::Weights.as_str()]));
        let pool = || or_null(name());
        let empty = object([
            ("kind", disk(), false),
            ("format", or_null(DiskFormat::schema()), false),
            ("size", size_schema(), true),
            ("image", null(), false),
            ("pool", pool(), false),
        ])
        .description(Some("An empty disk: a size, no image"));
        let clone = object([
            ("kind", disk(), false),
            (
                "format",
                or_null(string().enum_values(Some(["qcow2"]))),
                false,
            ),
            ("size", or_null(size_schema()), false),
            ("image", name().into(), true),
            ("pool", pool(), false),
        ])
        .description(Some("A disk cloned from an image: a qcow2 backed by it"));
        let copy = object([
            ("kind", weights.into(), true),
            ("format", or_null(DiskFormat::schema()), false),
            ("size", null(), false),
            ("image", name().into(), true),
            ("pool", pool(), false),
        ])
        .description(Some("Weights: a read-only copy of an image, no size"));
        OneOfBuilder::new()
            .item(empty)
            .item(clone)
            .item(copy)
            .description(Some("What a volume should be"))
            .into()
    }
}

impl utoipa::ToSchema for VolumeSpec {}

impl VolumeSpec {
    /// The largest volume.
    pub const MAX_SIZE: ByteSize = ByteSize::from_tib(64);

    /// The format in effect.
    pub fn format(&self) -> DiskFormat {
        match (self.kind, self.image.is_some()) {
            (VolumeKind::Disk, true) => DiskFormat::Qcow2,
            _ => self.format.unwrap_or(DiskFormat::Qcow2),
        }
    }

    /// Checks the combination of fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(size) = self.size {
            if size.as_u64() == 0 || size > Self::MAX_SIZE || size.as_u64() % 512 != 0 {
                return Err(ValidationError::new(
                    "spec.size",
                    format!(
                        "must be a multiple of 512 bytes between 512 and {} (got {size})",
                        Self::MAX_SIZE
                    ),
                ));
            }
        }
        match (self.kind, &self.image, self.size) {
            (VolumeKind::Disk, None, None) => Err(ValidationError::new(
                "spec.size",
                "required for an empty volume: give a size (e.g. 10G) or an image to clone",
            )),
            (VolumeKind::Disk, Some(_), _) if self.format == Some(DiskFormat::Raw) => {
                Err(ValidationError::new(
                    "spec.format",
                    "a clone of an image is a qcow2 backed by it: leave format out or use qcow2",
                ))
            }
            (VolumeKind::Weights, None, _) => Err(ValidationError::new(
                "spec.image",
                "required for a weights volume: name the Image holding the weights",
            )),
            (VolumeKind::Weights, Some(_), Some(_)) => Err(ValidationError::new(
                "spec.size",
                "a weights volume is an exact copy of its image: leave size out",
            )),
            _ => Ok(()),
        }
    }
}

/// What the controller made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct VolumeStatus {
    /// Whether the volume exists.
    pub phase: StoragePhase,
    /// The file on the node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Its format.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// Size the guest sees now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// For a clone: the digest of the image it was made from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// For a weights volume: the digest its bytes must have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The `metadata.generation` this status reflects.
    pub observed_generation: u64,
    /// A sentence for people, e.g. why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The node whose disk holds the volume: the node of the first VM that used it (made
    /// there), or where it moved with its VM. Only that node's corrald touches its file.
    /// For a volume in a shared pool: the node that manages the file now, that of the VM
    /// using it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Made in a pool every node mounts (`shared`): its VMs may run, move and be restarted
    /// on any node that has the pool.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

storage_object!(Volume, VolumeSpec, VolumeStatus, Volume);
