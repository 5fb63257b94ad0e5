mod options;
mod placement;
mod share;
mod spec;
mod status;

pub use options::{Accel, Arch, DiskFormat, Machine, Power, RestartPolicy};
pub use placement::Placement;
pub use share::Share;
pub use spec::{Boot, VmSpec, VmSpecBuilder, VolumeAttachment};
pub use status::{ExitInfo, MigrationOptions, MigrationPhase, MigrationStatus, Phase, VmStatus};

use serde::Serialize;

use crate::{Kind, Object, ObjectMeta, ResourceName, ValidationError};

/// A virtual machine: a QEMU process that controllers keep matching [`VmSpec`].
///
/// This is the body of the resource without its `kind`; manifests and API output wrap it in
/// [`Resource`](crate::Resource), which adds `"kind": "Vm"`. `status` may be left out on input.
// Deserialize and the schema (with `kind`, as on the wire): `strict_object!` in resource.rs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// Name, labels and server-managed fields.
    pub metadata: ObjectMeta,
    /// What the user wants.
    pub spec: VmSpec,
    /// What controllers last observed.
    #[serde(default)]
    pub status: VmStatus,
}

impl Vm {
    /// A VM named `name` with `spec`, and an empty status.
    pub fn new(name: ResourceName, spec: VmSpec) -> Self {
        Vm {
            metadata: ObjectMeta::new(name),
            spec,
            status: VmStatus::default(),
        }
    }
}

impl Object for Vm {
    const KIND: Kind = Kind::Vm;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Result<(), ValidationError> {
        self.metadata.validate()?;
        self.spec.validate()
    }
}

#[cfg(test)]
mod tests;
