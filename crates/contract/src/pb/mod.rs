//! The gRPC API: protobuf messages and service stubs generated from
//! `proto/corral/v1/corral.proto` (package `corral.v1`), and conversions to and from the
//! resource types.
//!
//! The resource types stay the single source of validation: a message becomes a resource only
//! through `TryFrom` (e.g. `Vm::try_from(pb::Vm)`), which checks exactly what parsing a manifest
//! checks and names fields by the same JSON paths (`spec.cpus`, `metadata.name`). Resources
//! become messages through `From<&Vm> for pb::Vm`, which cannot fail.
//!
//! Servers implement [`vm_service_server::VmService`] and serve
//! [`vm_service_server::VmServiceServer`]; clients wrap a channel in
//! [`vm_service_client::VmServiceClient::new`] (this crate leaves tonic's transport out, so
//! there is no `connect`). [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.
//!
//! ```
//! use corral_contract::{Boot, Vm, VmSpec, pb};
//!
//! let spec = VmSpec::builder(Boot::kernel("/boot/vmlinuz")).cpus(2).build()?;
//! let vm = Vm::new("web-1".parse()?, spec);
//! let message = pb::Vm::from(&vm);
//! assert_eq!(message.spec.as_ref().and_then(|s| s.cpus), Some(2));
//! assert_eq!(Vm::try_from(message.clone())?, vm);
//!
//! let mut bad = message;
//! bad.spec.as_mut().unwrap().cpus = Some(0);
//! let err = Vm::try_from(bad).unwrap_err();
//! assert_eq!(err.to_string(), "spec.cpus: must be between 1 and 256 (got 0)");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod apply;
mod convert;
mod identity;
mod network;
mod node;
mod project;
mod source;
mod storage;

// Generated code: documented from the .proto where it has comments; prost and tonic decide
// its shape, so lints aimed at hand-written code do not apply.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/corral.v1.rs"));
}

pub use generated::*;

/// The encoded `google.protobuf.FileDescriptorSet` of `corral/v1/corral.proto`, for gRPC
/// server reflection (e.g. `tonic_reflection`'s `register_encoded_file_descriptor_set`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/corral_v1_descriptor.bin"));

/// A resource a client sent is not allowed: the gRPC status is `INVALID_ARGUMENT`, with the
/// error (`spec.cpus: must be between 1 and 256 (got 0)`) as its message.
impl From<crate::ValidationError> for tonic::Status {
    fn from(err: crate::ValidationError) -> Self {
        tonic::Status::invalid_argument(err.to_string())
    }
}

#[cfg(test)]
mod tests;
