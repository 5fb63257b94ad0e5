//! Corral's one service layer. gRPC and REST handlers decode a request, call one function
//! here, and encode the answer; no VM logic lives in a handler.
//!
//! Users write `spec`, labels and annotations; controllers write `status` (through
//! [`VmService::update_status`]). Power changes — start, stop, pause, resume, restart — are
//! spec changes, so they survive daemon restarts and reach every controller the same way.
//! Every change that expresses a new intent bumps `metadata.generation`; a controller reports
//! the generation it has acted on in `status.observed_generation`.
#![deny(missing_docs)]

mod access;
mod audit;
mod console;
mod error;
mod memory;
mod network;
mod objects;
mod storage;
mod vm;

pub use access::PortRange;
pub use audit::{AuditEntry, AuditLog};
pub use console::{ConsoleService, ConsoleSession};
pub use error::ServiceError;
pub use memory::CHUNK as MEMORY_CHUNK;
pub use memory::{
    ChunkReader, FrameStream, MemoryAccess, MemoryError, MemoryOp, MemoryService, MemorySnapshot,
    SnapshotMode,
};
pub use network::{DEFAULT_NETWORK, NetworkService};
pub use objects::Objects;
pub use storage::{ANNOTATION_RESTORE, ImportProgress, StorageConfig, StorageService};
pub use vm::{ANNOTATION_RESTART, ANNOTATION_STOP_MODE, VmEvent, VmEventType, VmService, VmWatch};
