//! The QEMU backend of Corral's [`Hypervisor`](corral_hypervisor::Hypervisor) trait.
//!
//! Each VM is one `qemu-system-*` process, started in its own session so it outlives the
//! daemon, with its monitor (QMP) and serial console on unix sockets under
//! `<run_dir>/vms/<uid>/`. A fresh backend re-adopts running VMs after checking the pid, the
//! exact command line and the monitor.
//!
//! ```no_run
//! use corral_hypervisor::{BootSource, Hypervisor, StopMode, VmConfig};
//! use corral_contract::{Accel, Arch, Machine};
//! use corral_qemu::{QemuBackend, QemuBackendConfig};
//! # async fn run() -> Result<(), corral_hypervisor::Error> {
//! let backend = QemuBackend::new(QemuBackendConfig::new("/run/corral"))?;
//! let config = VmConfig {
//!     uid: "6f1d2c3e-0000-4000-8000-000000000000".into(),
//!     name: "demo".into(),
//!     arch: Arch::X86_64,
//!     machine: Machine::Q35,
//!     accel: Accel::Auto,
//!     cpus: 1,
//!     memory_bytes: 256 << 20,
//!     boot: BootSource::Kernel {
//!         kernel: "/srv/vmlinuz".into(),
//!         initrd: Some("/srv/initrd.img".into()),
//!         cmdline: Some("console=ttyS0".into()),
//!     },
//!     disks: vec![],
//!     memory_file: None,
//!     start_paused: false,
//!     incoming: false,
//!     restore: Default::default(),
//!     nics: vec![],
//!     files: Default::default(),
//!     shares: Vec::new(),
//! };
//! let info = backend.start(&config).await?;
//! println!("pid {} on {}", info.pid, info.accel);
//! backend.stop(&config.uid, StopMode::Graceful { timeout: std::time::Duration::from_secs(30) }).await?;
//! backend.cleanup(&config.uid).await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod accel;
mod backend;
mod census;
mod cmdline;
mod disk_mirror;
mod emulator;
mod files;
mod guest_access;
mod guest_agent;
mod launch;
mod layout;
mod migrate_setup;
mod net;
mod process;
mod serial;
mod virtiofs;
mod vm;

pub use accel::{HostCaps, resolve as resolve_accel};
pub use backend::{QemuBackend, QemuBackendConfig};
pub use census::{Launched, is_launched, launched};
pub use cmdline::{OptList, QemuCommand, escape_value};
pub use emulator::{Emulator, package_for};
pub use layout::{MAX_SOCKET_PATH, VmPaths};
pub use process::is_alive;
