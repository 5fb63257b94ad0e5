//! Corral's one service layer. gRPC and REST handlers decode a request, call one function
//! here, and encode the answer; no VM logic lives in a handler.
//!
//! Users write `spec`, labels and annotations; controllers write `status` (through
//! [`Resources::update_status`]). Power changes — start, stop, pause, resume, restart — are
//! spec changes, so they survive daemon restarts and reach every controller the same way.
//! Every change that expresses a new intent bumps `metadata.generation`; a controller reports
//! the generation it has acted on in `status.observed_generation`.
//!
//! # One generic path; a kind is a strategy
//!
//! [`Resources<S>`] is written once: create (validate, admit, stamp uid/generation/time,
//! initial status, allocate, write), get, list, update (compare-and-swap with retries; spec
//! changes bump `generation`), delete (mark `deleting` for kinds a controller finalizes,
//! remove at once otherwise), remove, watch (typed [`Event`]s), [`Resources::modify`] for
//! kind-specific verbs and [`Resources::update_status`] for controllers. What differs between
//! kinds is a [`Strategy`]: [`VmKind`], [`NetworkKind`], [`ImageKind`], [`VolumeKind`],
//! [`SnapshotKind`]. [`VmService`] and [`NetworkService`] are `Resources` of their strategy
//! with a few verbs on top (`set_power`, `restart`, `set_status` …).
//!
//! To add a kind: give its contract type (metadata, spec, status) a [`Stored`] impl (one line
//! in the `stored!` table of `resources.rs`), write a unit struct implementing [`Strategy`]
//! with only the hooks it needs — references in [`Strategy::admit`] (read them with [`read`]
//! and [`read_all`]), its starting status in [`Strategy::initial_status`], server allocations
//! in [`Strategy::prepare`], fixed fields in [`Strategy::check_update`], users that block a
//! delete in [`Strategy::check_delete`] (with [`refuse_if_used`]), and `FINALIZED` if a controller cleans up before the
//! object goes — then serve `Resources<YourKind>`. Verbs beyond CRUD go in an
//! `impl Resources<YourKind>` block on top of [`Resources::modify`].
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use corral_contract::{Network, NetworkSpec};
//! use corral_service::{EventType, NetworkService};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Arc::new(corral_store::SqliteStore::open(dir.path().join("state.db")).await?);
//! let networks = NetworkService::new(store);
//! let mut watch = networks.watch(None, 0).await?;
//! let net = networks.create(Network::new("lan".parse()?, NetworkSpec::default())).await?;
//! assert_eq!(net.metadata.generation, 1);
//! assert_eq!(watch.recv().await.unwrap()?.event, EventType::Added);
//! networks.delete("lan", None).await?;
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
//! ```
#![deny(missing_docs)]

mod access;
mod allocate;
mod apply;
mod audit;
mod console;
mod error;
mod identity;
mod join;
mod limits;
mod memory;
mod network;
mod node;
mod node_link;
mod node_scope;
mod project;
mod resources;
mod source;
mod storage;
mod tunnel;
mod vm;

pub use access::{RequireAdmin, check_share};
pub use allocate::{BadPortRange, PortRange};
pub use apply::ApplyService;
pub use audit::{AuditEntry, AuditLog, AuditQuery, AuditRecord, AuditRotation};
pub use console::{ConsoleService, ConsoleSession};
pub use corral_storage::{HostAccess, HostPaths};
pub use corral_store::EventType;
pub use error::{ErrorCode, ServiceError};
pub use identity::{IdentityKind, IdentityService, new_token, token_hash};
pub use join::{
    CaError, ClusterCa, JoinService, JoinToken, Joined, MAX_TOKEN_TTL, SERVER_ORG, TokenParts,
    certificate_org, pem_der, sha256_hex, write_private,
};
pub use limits::Usage;
pub use memory::CHUNK as MEMORY_CHUNK;
pub use memory::{
    ChunkReader, DEFAULT_SNAPSHOT_LIMIT, FrameStream, MAX_FIND_LIMIT, MemoryAccess, MemoryError,
    MemoryOp, MemoryService, RemoteChunks, SnapshotMode, SnapshotPiece, SnapshotReport,
    SnapshotStream,
};
pub use network::{
    DEFAULT_NETWORK, HostAddr, HostLink, HostNet, HostNetError, HostRoute, NetworkKind,
    NetworkService, bridge_name, host_conflict, link_alias, network_conflict,
};
pub use node::{EVICTING, NodeKind, NodeService};
pub use node_link::{NodeLink, NodeRoute};
pub use node_scope::{
    NodeScope, StoreAnswer, StoreCall, WireError, WireObject, event_name, event_of,
};
pub use project::{ProjectKind, ProjectService};
pub use resources::{
    Event, Projects, Resources, Stored, Strategy, Watch, may_refer, read, read_all, reference_keys,
    refuse_if_used, resolve,
};
pub use source::{SourceKind, SourceService};
pub use storage::{
    BlockedAddress, BuildConfig, ImageKind, ImportPolicy, ImportProgress, PoolConfig, SnapshotKind,
    StorageConfig, StorageService, VolumeFormat, VolumeKind,
};
pub use tunnel::TunnelService;
pub use vm::{VmKind, VmService};
