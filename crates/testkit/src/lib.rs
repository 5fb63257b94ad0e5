//! Test harness: boots guest-kit VMs through the real QEMU backend, waits on evidence from
//! inside the guest, and cleans up on drop — no orphan QEMU, no leftover files — even when the
//! test panics.
//!
//! What the end-to-end tests of every crate share lives here, once:
//!
//! - [`TestVm`]: a guest-kit VM on the QEMU backend alone, with console waits.
//! - [`Corrald`]: a real daemon on private directories ([`Corrald::builder`] for flags and a
//!   benchmark's quiet run; [`release_build`] for release binaries).
//! - [`Cli`]: the `corral` CLI on one daemon (socket, or TLS and a token) with asserting
//!   runners and console, phase and deletion waits; [`Console`] for an attached console.
//! - [`kit_vm`], [`wait_phase`], [`wait_console`]: the same through the typed gRPC client.
//! - [`EtcdCluster`]: real etcd members on loopback for the etcd store's tests.
//! - [`http`]: a REST client (HTTP/1.1 or HTTP/2, socket or TLS) and a TLS corrald;
//!   [`openapi`]: answers checked against an OpenAPI document.
//!
//! ```no_run
//! use corral_contract::Arch;
//! use corral_testkit::TestVm;
//! # async fn smoke() -> Result<(), corral_testkit::Error> {
//! let vm = TestVm::builder(Arch::X86_64).start().await?;
//! let line = vm.wait_for_boot().await?;
//! assert!(line.contains("arch=x86_64"));
//! vm.send_line("echo hello-$((1+2))").await?;
//! vm.wait_for_line("hello-3").await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod cli;
mod daemon;
mod error;
mod etcd;
mod git;
/// An HTTP client of corrald's REST API and a TLS corrald to use it on.
pub mod http;
mod kit;
mod netns;
/// Answers and values checked against an OpenAPI document.
pub mod openapi;
mod output;
mod vm;
mod vms;

pub use cli::{Cli, Console, PATIENCE, kit_vm_args, tail, workspace_binary};
pub use daemon::{
    Corrald, CorraldBuilder, end_guests_under, fence_guard_pid_under, qemu_pids_under,
    release_build,
};
pub use error::Error;
pub use etcd::{EtcdCluster, EtcdTlsFiles};
pub use git::{GitServer, git};
pub use kit::{GuestKit, workspace_root};
pub use netns::{Netns, ip};
pub use output::Output;
pub use vm::{BOOT_MARKER, HEARTBEAT, TestVm, TestVmBuilder};
pub use vms::{
    VM_PATIENCE, boots, guest_ram_file, guest_ram_path, kit_vm, last_heartbeat, type_on_console,
    wait_console, wait_phase,
};
