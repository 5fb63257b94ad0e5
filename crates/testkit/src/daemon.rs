use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::Error;

/// A real `corrald` on private data and run directories, for end-to-end tests.
///
/// Dropping it kills the daemon and every QEMU it started (they outlive the daemon by design),
/// then removes both directories.
#[derive(Debug)]
pub struct Corrald {
    binary: PathBuf,
    child: Option<Child>,
    dir: TempDir,
    extra_args: Vec<String>,
    // Whether the data directory is a tmpfs this value mounted.
    tmpfs: bool,
}

impl Corrald {
    /// Starts `binary` (e.g. `env!("CARGO_BIN_EXE_corrald")`) and waits until its socket answers.
    pub fn start(binary: impl Into<PathBuf>) -> Result<Corrald, Error> {
        Self::start_with(binary, &[])
    }

    /// Like [`Corrald::start`], with extra flags.
    pub fn start_with(binary: impl Into<PathBuf>, args: &[&str]) -> Result<Corrald, Error> {
        Self::launch(binary.into(), args, None)
    }

    /// Like [`Corrald::start_with`], with the data directory on a tmpfs of `size` (`256m`), so
    /// that a test can fill the disk. Needs root (it mounts); unmounted on drop.
    pub fn start_with_small_disk(
        binary: impl Into<PathBuf>,
        args: &[&str],
        size: &str,
    ) -> Result<Corrald, Error> {
        Self::launch(binary.into(), args, Some(size))
    }

    fn launch(binary: PathBuf, args: &[&str], tmpfs: Option<&str>) -> Result<Corrald, Error> {
        let dir = tempfile::Builder::new()
            .prefix("corral-d")
            .tempdir_in("/tmp")
            .map_err(|e| Error::io("creating daemon directories", e))?;
        let mut daemon = Corrald {
            binary,
            child: None,
            dir,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            tmpfs: false,
        };
        if let Some(size) = tmpfs {
            let data = daemon.data_dir();
            std::fs::create_dir_all(&data)
                .map_err(|e| Error::io(format!("creating {}", data.display()), e))?;
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size},mode=0700"))
                .arg("tmpfs")
                .arg(&data)
                .status()
                .map_err(|e| Error::io("running mount", e))?;
            if !status.success() {
                return Err(Error::Kit(format!(
                    "mounting a {size} tmpfs on {} failed ({status}): this needs root",
                    data.display()
                )));
            }
            daemon.tmpfs = true;
        }
        daemon.spawn()?;
        Ok(daemon)
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| Error::io("opening the daemon log", e))?;
        let err = log
            .try_clone()
            .map_err(|e| Error::io("opening the daemon log", e))?;
        let child = Command::new(&self.binary)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(&self.extra_args)
            .env("CORRAL_LOG", "info,corral=debug")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", self.binary.display()), e))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(Error::Kit(format!(
                    "corrald exited at start ({status}):\n{}",
                    self.log()
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Kit(format!(
                    "corrald did not open its socket:\n{}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("corral.sock")
    }

    /// The run directory.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("r")
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("d")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("corrald.log")
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the daemon with SIGKILL, as a crash would; its VMs keep running.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the daemon with SIGTERM and waits for it; its VMs keep running.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus, Error> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| Error::Kit("corrald is not running".into()))?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        child
            .wait()
            .map_err(|e| Error::io("waiting for corrald", e))
    }

    /// Starts the daemon again on the same directories.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill_9();
        self.spawn()
    }

    /// Pids of the QEMU processes under this daemon's run directory that are alive.
    pub fn qemu_pids(&self) -> Vec<u32> {
        qemu_pids(&self.run_dir())
    }
}

fn qemu_pids(run_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(run_dir.join("vms")) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("qemu.pid")).ok())
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&pid| corral_qemu::is_alive(pid))
        .collect();
    pids.sort();
    pids
}

impl Drop for Corrald {
    fn drop(&mut self) {
        self.kill_9();
        for pid in qemu_pids(&self.run_dir()) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        if let Ok(entries) = std::fs::read_dir("/dev/shm") {
            // RAM files of introspectable VMs are named by uid; ours have a runtime dir here.
            let uids: Vec<String> = std::fs::read_dir(self.run_dir().join("vms"))
                .map(|it| {
                    it.filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default();
            for entry in entries.filter_map(|e| e.ok()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if uids.iter().any(|uid| name == format!("corral-{uid}")) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        if self.tmpfs {
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(self.data_dir())
                .status();
        }
    }
}
