//! Corral's API contract: the resource types every other crate speaks, and their validation.
//!
//! Every object is a resource with the same shape — [`ObjectMeta`], a spec the user writes and
//! a status controllers write — wrapped with its kind in [`Resource`] for manifests and API
//! output. Input is strict: unknown fields are errors, values are checked while they are
//! parsed, and every error names the field by its JSON path (`spec.memory: …`). This crate
//! does no I/O.
//!
//! [`pb`] is the same contract as a gRPC API (`proto/corral/v1/corral.proto`): generated
//! messages and service stubs, and conversions that validate through the types here.
//!
//! ```
//! use corral_contract::{Boot, ByteSize, Machine, Resource, Vm, VmSpec};
//!
//! let manifest = r#"{
//!     "kind": "Vm",
//!     "metadata": {"name": "web-1", "labels": {"tier": "web"}},
//!     "spec": {"memory": "1G", "boot": {"kernel": {"kernel": "/boot/vmlinuz"}}}
//! }"#;
//! let vm = serde_json::from_str::<Resource>(manifest)?.into_vm().expect("a Vm");
//! assert_eq!(vm.spec.memory, ByteSize::from_gib(1));
//! assert_eq!(vm.spec.machine(), Machine::Q35);
//!
//! let err = serde_json::from_str::<Resource>(&manifest.replace("1G", "1GB")).unwrap_err();
//! assert!(err.to_string().starts_with("spec.memory: \"1GB\" uses the decimal unit GB"));
//!
//! let spec = VmSpec::builder(Boot::kernel("/boot/vmlinuz")).cpus(2).build()?;
//! let json = serde_json::to_value(Resource::from(Vm::new("db-1".parse()?, spec)))?;
//! assert_eq!(json["kind"], "Vm");
//! assert_eq!(json["status"]["phase"], "Pending");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod apply;
mod choice;
mod cloudinit;
mod condition;
mod de;
mod error;
mod identity;
pub mod manifest;
mod meta;
mod name;
pub mod names;
mod network;
mod node;
pub mod pb;
mod project;
mod resource;
pub mod schema;
mod size;
mod source;
mod storage;
mod vm;

pub use apply::{
    ApplyAction, ApplyItem, ApplyReport, ApplyRequest, DEFAULT_MASS_PRUNE_PERCENT, FieldChange,
    field_changes,
};
pub use choice::UnknownChoice;
pub use cloudinit::CloudInit;
pub use condition::{Condition, set_condition};
pub use de::{Strict, from_json};
pub use error::ValidationError;
pub use identity::{Credential, DEFAULT_PROJECT, Identity, IdentitySpec, IdentityStatus, Role};
pub use meta::{ObjectMeta, object_key, split_key};
pub use name::{NameError, ResourceName};
pub use network::{
    Cidr, ForwardStatus, MacAddr, Network, NetworkAttachment, NetworkAttachmentStatus, NetworkMode,
    NetworkPhase, NetworkSpec, NetworkStatus, PortForward, Protocol,
};
pub use node::{NODE_READY, Node, NodePool, NodeResources, NodeSpec, NodeStatus};
pub use project::{Project, ProjectLimits, ProjectSpec, ProjectStatus};
pub use resource::{Kind, Object, Resource};
pub use size::{ByteSize, ByteSizeError};
pub use source::{DEFAULT_SOURCE_INTERVAL_SECONDS, DriftPolicy, Source, SourceSpec, SourceStatus};
pub use storage::{
    Distribution, Image, ImageBuild, ImageFormat, ImageSource, ImageSpec, ImageStatus, Snapshot,
    SnapshotSpec, SnapshotStatus, StoragePhase, TemplateSource, TemplateStatus, Volume, VolumeKind,
    VolumeSpec, VolumeStatus, is_digest, parse_checksum,
};
pub use vm::{
    Accel, Arch, Boot, DiskFormat, ExitInfo, Machine, MigrationOptions, MigrationPhase,
    MigrationStatus, Phase, Placement, Power, RestartPolicy, Share, Vm, VmSpec, VmSpecBuilder,
    VmStatus, VolumeAttachment,
};
