//! `terraform-provider-corral`: Corral's Terraform provider (source address
//! `corral-vm/corral`), speaking Terraform Plugin Protocol 6 over go-plugin's gRPC transport.
//!
//! The layers, from the wire inwards:
//!
//! - [`plugin`] — what go-plugin expects of a plugin process: the magic cookie, the handshake
//!   line on stdout, a unix socket with AutoMTLS ([`tls`]), the `plugin` health service,
//!   `GRPCController.Shutdown` and `GRPCStdio`;
//! - [`ProviderService`] — `tfplugin6.Provider`: decodes Terraform's MessagePack values
//!   ([`value`]), routes each call to a resource or data source, encodes the answer;
//! - [`schema`] and [`plan`] — each resource declares its attributes once (type, required,
//!   default, replace-on-change, stable, quiet); plans, the schema Terraform reads and the
//!   matching data source follow from that declaration;
//! - [`stored`] — the one generic resource path: [`stored::Managed`] creates, waits, reads,
//!   updates, deletes and imports any [`stored::Kind`], and [`stored::Lookup`] reads it as a
//!   data source, calling corrald through `corral-client`, the same client as the `corral` CLI;
//! - the kinds ([`vm`], [`image`], [`volume`], [`network`], [`snapshot`]) — each only its
//!   strategy: a schema, a mapping between attributes and the API's type, its client calls,
//!   and hooks where it does more (a VM's power-aware update, its restart warning, its watch).
//!
//! Adding a kind is adding one module like [`volume`] with an `impl Kind`, registered in
//! [`provider`] as `Managed::<NewKind>::default()`.
//!
//! Why not the `tf-provider` crate: its last release (0.2.2, July 2024) is built on tonic
//! 0.12/prost 0.13 and needs `protoc` at build time, where this workspace uses tonic 0.14,
//! prost 0.14 and `protox`; its AutoMTLS makes client certificates optional; and it expresses
//! plans as per-resource code, where a declarative schema keeps each resource small. The
//! protocol surface a provider needs is a dozen RPCs, written here over the published
//! `tfplugin6` definitions.
//!
//! ```
//! let provider = corral_terraform_provider::provider();
//! assert!(format!("{provider:?}").contains("corral_vm"));
//! ```

#![deny(missing_docs)]

pub mod attestation;
mod config;
#[cfg(test)]
mod coverage;
pub mod diag;
pub mod image;
pub mod network;
pub mod pb;
pub mod plan;
pub mod plugin;
mod resource;
pub mod schema;
mod server;
pub mod snapshot;
pub mod stored;
pub mod tls;
pub mod value;
pub mod vm;
pub mod volume;

pub use resource::{Ctx, DataSource, Outcome, Resource};
pub use server::ProviderService;

/// The provider with every resource and data source Corral has.
pub fn provider() -> ProviderService {
    ProviderService::new()
        .resource(vm::VmResource::default())
        .resource(image::ImageResource::default())
        .resource(volume::VolumeResource::default())
        .resource(network::NetworkResource::default())
        .resource(snapshot::SnapshotResource::default())
        .data_source(vm::data_source())
        .data_source(image::data_source())
        .data_source(attestation::data_source())
}
