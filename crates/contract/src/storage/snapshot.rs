use serde::{Deserialize, Serialize};

use super::{StoragePhase, storage_object};
use crate::{ObjectMeta, ResourceName, ValidationError};

/// A point-in-time state of a VM's writable qcow2 volumes, and optionally its RAM and device
/// state, kept inside those volumes (qcow2 internal snapshots).
// Deserialize and the schema (with `kind`, as on the wire): `strict_object!` in resource.rs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Name, labels and server-managed fields.
    pub metadata: ObjectMeta,
    /// Which VM, and whether with memory.
    pub spec: SnapshotSpec,
    /// What was taken.
    #[serde(default)]
    pub status: SnapshotStatus,
}

/// What to snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSpec {
    /// The VM.
    pub vm: ResourceName,
    /// Also save RAM and device state (the VM must be running or paused); restoring resumes
    /// the guest where it was. Without it the snapshot is disk-only and may be taken and
    /// restored only while the VM is stopped.
    #[serde(default)]
    pub memory: bool,
}

impl SnapshotSpec {
    /// Nothing to check beyond the types.
    pub fn validate(&self) -> Result<(), ValidationError> {
        Ok(())
    }
}

/// What was taken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct SnapshotStatus {
    /// Whether the snapshot exists.
    pub phase: StoragePhase,
    /// The internal snapshot's tag in each volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The volumes it covers.
    pub volumes: Vec<String>,
    /// When it was taken, in RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taken_at: Option<String>,
    /// The restore request (the `corral.dev/restore-requested-at` annotation's value) last
    /// carried out, so that each request restores once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_for: Option<String>,
    /// A sentence for people, e.g. why it failed or the last restore's outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

storage_object!(Snapshot, SnapshotSpec, SnapshotStatus, Snapshot);
