//! The QEMU processes a backend on a run directory started and that still run, as its files
//! record them: for a watcher that is not the backend (the node's fence guard), which must
//! find every one of them and never mistake another process for one.
//!
//! A backend writes a VM's launch record (its exact argv) before it spawns QEMU, and QEMU
//! writes its own pid file as it starts; so a QEMU is known here from its first instant
//! on, whatever becomes of the daemon that started it.

use std::path::Path;

use crate::backend::{argv_matches, recorded_argv};
use crate::layout::{VmPaths, check_uid};
use crate::process;

/// One running QEMU of a run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    /// The VM's uid (its directory under `<run_dir>/vms/`).
    pub uid: String,
    /// The QEMU process.
    pub pid: u32,
}

/// Every VM under `<run_dir>/vms/` whose pid file names a live process that runs exactly
/// the command line of its launch record, by uid.
pub fn launched(run_dir: &Path) -> Vec<Launched> {
    let Ok(entries) = std::fs::read_dir(run_dir.join("vms")) else {
        return Vec::new();
    };
    let mut found: Vec<Launched> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|uid| check_uid(uid).is_ok())
        .filter_map(|uid| {
            let pid = process::read_pid_file(&VmPaths::new(run_dir, &uid).pid).ok()?;
            is_launched(run_dir, &uid, pid).then_some(Launched { uid, pid })
        })
        .collect();
    found.sort_by(|a, b| a.uid.cmp(&b.uid));
    found
}

/// Whether `pid` is alive and runs exactly the command line recorded for VM `uid` under
/// `run_dir` (byte for byte: a process that merely reused the pid never does).
pub fn is_launched(run_dir: &Path, uid: &str, pid: u32) -> bool {
    if check_uid(uid).is_err() || !process::is_alive(pid) {
        return false;
    }
    recorded_argv(&VmPaths::new(run_dir, uid)).is_some_and(|argv| argv_matches(pid, &argv))
}
