//! Where a VM's runtime files live: `<run_dir>/vms/<uid>/…`.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use corral_hypervisor::Error;

/// `sun_path` is 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// The runtime files of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    /// The VM's directory.
    pub dir: PathBuf,
    /// QMP socket.
    pub qmp: PathBuf,
    /// Serial console socket.
    pub console: PathBuf,
    /// Guest agent socket.
    pub agent: PathBuf,
    /// Pid file QEMU writes.
    pub pid: PathBuf,
    /// Bounded log of the serial console.
    pub serial_log: PathBuf,
    /// QEMU's own stdout and stderr.
    pub qemu_log: PathBuf,
    /// The launch record: argv and config, used to verify a process before adopting it.
    pub launch: PathBuf,
}

impl VmPaths {
    /// The paths of VM `uid` under `run_dir`.
    pub fn new(run_dir: &Path, uid: &str) -> Self {
        let dir = run_dir.join("vms").join(uid);
        VmPaths {
            qmp: dir.join("qmp.sock"),
            console: dir.join("console.sock"),
            agent: dir.join("agent.sock"),
            pid: dir.join("qemu.pid"),
            serial_log: dir.join("serial.log"),
            qemu_log: dir.join("qemu.log"),
            launch: dir.join("launch.json"),
            dir,
        }
    }

    /// Fails when a socket path would not fit in `sun_path`.
    pub fn check_socket_lengths(&self) -> Result<(), Error> {
        for path in [&self.qmp, &self.console, &self.agent] {
            let len = path.as_os_str().as_bytes().len();
            if len > MAX_SOCKET_PATH {
                return Err(Error::SocketPathTooLong {
                    path: path.clone(),
                    len,
                    max: MAX_SOCKET_PATH,
                });
            }
        }
        Ok(())
    }

    /// Removes the files that only make sense while QEMU runs; keeps the logs.
    pub fn remove_runtime_files(&self) {
        for path in [
            &self.qmp,
            &self.console,
            &self.agent,
            &self.pid,
            &self.launch,
        ] {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Checks that `uid` is safe as one path component: it names a directory.
pub fn check_uid(uid: &str) -> Result<(), Error> {
    let ok = !uid.is_empty()
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !uid.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "uid {uid:?} must be 1-64 ASCII letters, digits or '-', not starting with '-'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_run_dirs_are_refused_with_the_limit() {
        let long = PathBuf::from("/tmp").join("x".repeat(80));
        let err = VmPaths::new(&long, "0123456789abcdef")
            .check_socket_lengths()
            .unwrap_err();
        assert!(err.to_string().contains("limit of 107"), "{err}");
        VmPaths::new(
            Path::new("/run/corral"),
            "6f1d2c3e-0000-4000-8000-000000000000",
        )
        .check_socket_lengths()
        .unwrap();
    }

    #[test]
    fn uids_cannot_escape_the_run_dir() {
        for bad in ["", "../etc", "a/b", "-x", "a b", &"a".repeat(65)] {
            assert!(check_uid(bad).is_err(), "{bad}");
        }
        check_uid("6f1d2c3e-0000-4000-8000-000000000000").unwrap();
    }
}
