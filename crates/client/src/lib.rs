//! The typed client of corrald: the one client the `corral` CLI and the Terraform provider
//! share.
//!
//! [`Client`] speaks gRPC (`corral.v1.VmService`, `corral.v1.SystemService`) to the local
//! daemon over its unix socket, or to a remote one over TLS with a bearer token, chosen by
//! [`Endpoint`]. Calls take and return the contract's resource types, so a VM read from the
//! server is validated exactly as a manifest is. Failures are a [`ClientError`] per gRPC
//! status, whose message names the object or field, and whose
//! [`exit_code`](ClientError::exit_code) a CLI can return.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use corral_client::{Client, Endpoint, reached};
//! use corral_contract::{Boot, Phase, Vm, VmSpec};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // --socket / --server flags first, then CORRAL_SOCKET / CORRAL_SERVER, then the default.
//! let endpoint = Endpoint::from_env_and_flags(None, None, None, None)?;
//! let client = Client::connect(endpoint).await?;
//!
//! let spec = VmSpec::builder(Boot::kernel("/var/lib/corral/vmlinuz")).cpus(2).build()?;
//! let vm = client.create_vm(&Vm::new("web-1".parse()?, spec)).await?;
//! let running = client
//!     .wait_for(
//!         "web-1",
//!         |vm| vm.is_none_or(|vm| reached(vm, Phase::Running) || reached(vm, Phase::Failed)),
//!         Duration::from_secs(60),
//!     )
//!     .await?;
//! println!("{} is {:?}", vm.metadata.name, running.map(|vm| vm.status.phase));
//! let serial = client.console_log("web-1", 4096).await?;
//! print!("{}", String::from_utf8_lossy(&serial));
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod apply;
mod auth;
mod client;
mod console;
mod endpoint;
mod error;
mod memory;
mod network;
mod node;
mod source;
mod storage;
mod tunnel;
mod ui;
mod watch;

pub use auth::{AuditFilter, AuditRecord};
pub use client::{Auth, Client, ServerVersion, Transport};
pub use console::ConsoleSession;
pub use endpoint::{
    ENV_CA_FILE, ENV_PROJECT, ENV_SERVER, ENV_SOCKET, ENV_TOKEN, Endpoint, default_socket_path,
};
pub use error::ClientError;
pub use memory::{MemorySnapshot, SnapshotChunk, SnapshotMode, SnapshotReport};
pub use tunnel::Tunnel;
pub use ui::{ConsoleLink, console_link};
pub use watch::{EventType, VmEvent, VmWatch, is_observed, reached};

/// The contract crate this client speaks, re-exported so that callers match its version.
pub use corral_contract as contract;
