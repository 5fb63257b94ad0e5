use std::os::unix::fs::PermissionsExt;
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
    log_filter: Option<String>,
    // Whether the data directory is a tmpfs this value mounted.
    tmpfs: bool,
}

/// How to start a [`Corrald`]: [`Corrald::builder`].
#[derive(Debug, Clone)]
pub struct CorraldBuilder {
    binary: PathBuf,
    args: Vec<String>,
    log_filter: Option<String>,
    small_disk: Option<String>,
}

impl CorraldBuilder {
    /// Extra flags.
    pub fn args(mut self, args: &[&str]) -> CorraldBuilder {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Lets URL imports reach `cidr` (`127.0.0.0/8` for an HTTP server the test runs): by
    /// default corrald refuses loopback, private and link-local addresses.
    pub fn import_allow_net(self, cidr: &str) -> CorraldBuilder {
        self.args(&["--import-allow-net", cidr])
    }

    /// Lets every caller (tokens without the `admin` scope too) name host files below `dir`.
    pub fn host_path_allow(self, dir: &Path) -> CorraldBuilder {
        let dir = dir.to_str().expect("a UTF-8 path").to_owned();
        self.args(&["--host-path-allow", &dir])
    }

    /// Logs at corrald's default level and takes no `CORRAL_*` variable from the caller's
    /// environment (a benchmark measures the daemon as users run it), instead of debug logs.
    pub fn quiet(mut self) -> CorraldBuilder {
        self.log_filter = None;
        self
    }

    /// Puts the data directory on a tmpfs of `size` (`256m`), so that a test can fill the
    /// disk. Needs root (it mounts); unmounted on drop.
    pub fn small_disk(mut self, size: &str) -> CorraldBuilder {
        self.small_disk = Some(size.to_owned());
        self
    }

    /// Starts it on fresh private directories and waits until its socket answers.
    pub fn start(self) -> Result<Corrald, Error> {
        let dir = tempfile::Builder::new()
            .prefix("corral-d")
            .tempdir_in("/tmp")
            .map_err(|e| Error::io("creating daemon directories", e))?;
        // Searchable, not listable: corrald as root runs QEMU as an unprivileged user, which
        // must pass through to the VM files below (corrald makes its own directories 0710).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .map_err(|e| Error::io("opening the daemon directory to QEMU's user", e))?;
        let mut daemon = Corrald {
            binary: self.binary,
            child: None,
            dir,
            extra_args: self.args,
            log_filter: self.log_filter,
            tmpfs: false,
        };
        if let Some(size) = &self.small_disk {
            daemon.mount_tmpfs(size)?;
        }
        daemon.spawn()?;
        Ok(daemon)
    }
}

impl Corrald {
    /// Starts `binary` (e.g. `env!("CARGO_BIN_EXE_corrald")`) and waits until its socket answers.
    pub fn start(binary: impl Into<PathBuf>) -> Result<Corrald, Error> {
        Self::builder(binary).start()
    }

    /// Like [`Corrald::start`], with extra flags.
    pub fn start_with(binary: impl Into<PathBuf>, args: &[&str]) -> Result<Corrald, Error> {
        Self::builder(binary).args(args).start()
    }

    /// A corrald to configure before [`CorraldBuilder::start`]; it logs at debug level unless
    /// made [`CorraldBuilder::quiet`].
    pub fn builder(binary: impl Into<PathBuf>) -> CorraldBuilder {
        CorraldBuilder {
            binary: binary.into(),
            args: Vec::new(),
            log_filter: Some("info,corral=debug".into()),
            small_disk: None,
        }
    }

    fn mount_tmpfs(&mut self, size: &str) -> Result<(), Error> {
        let data = self.data_dir();
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
        self.tmpfs = true;
        Ok(())
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
        let mut command = Command::new(&self.binary);
        match &self.log_filter {
            Some(filter) => {
                command.env("CORRAL_LOG", filter);
            }
            None => {
                for (key, _) in std::env::vars_os() {
                    if key.to_string_lossy().starts_with("CORRAL_") {
                        command.env_remove(key);
                    }
                }
            }
        }
        let child = command
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(&self.extra_args)
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

    /// Stops the daemon with SIGTERM, and with SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the daemon again on the same directories.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill_9();
        self.spawn()
    }

    /// Pids of the QEMU processes under this daemon's run directory that are alive.
    pub fn qemu_pids(&self) -> Vec<u32> {
        qemu_pids_under(&self.run_dir())
    }

    /// The node's fence guard (`corrald fence-guard`, started by corrald in a cluster), if
    /// one runs for this daemon's run directory.
    pub fn fence_guard_pid(&self) -> Option<u32> {
        fence_guard_pid_under(&self.run_dir())
    }
}

/// The live `corrald fence-guard` whose lock file is under `run_dir/fence`.
pub fn fence_guard_pid_under(run_dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(run_dir.join("fence/guard.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // The pid named in the file must be a guard, of this run directory.
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = argv.split(|b| *b == 0);
    let is_guard = args.clone().any(|a| a == b"fence-guard")
        && args.any(|a| a == run_dir.as_os_str().as_encoded_bytes());
    (is_guard && corral_qemu::is_alive(pid)).then_some(pid)
}

/// Pids of the live QEMU processes whose pid files are under `run_dir/vms`.
pub fn qemu_pids_under(run_dir: &Path) -> Vec<u32> {
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

/// Kills the QEMUs whose pid files are under `run_dir/vms` and removes their guest RAM files
/// (`/dev/shm/corral-<uid>.<node>`): what a test's daemon, killed, leaves behind.
pub fn end_guests_under(run_dir: &Path) {
    for pid in qemu_pids_under(run_dir) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let Ok(vms) = std::fs::read_dir(run_dir.join("vms")) else {
        return;
    };
    let prefixes: Vec<String> = vms
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .map(|uid| format!("corral-{uid}."))
        .collect();
    let Ok(shm) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for entry in shm.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| name.starts_with(p)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl Drop for Corrald {
    fn drop(&mut self) {
        self.kill_9();
        // The guard first: it would otherwise record the QEMUs killed below.
        if let Some(pid) = self.fence_guard_pid() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        end_guests_under(&self.run_dir());
        if self.tmpfs {
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(self.data_dir())
                .status();
        }
    }
}

/// Builds `packages` in release mode (a no-op when up to date; always asked for, so a stale
/// binary is never measured) and returns the directory the binaries are in,
/// `$CARGO_TARGET_DIR/release` or `target/release`.
pub fn release_build(packages: &[&str]) -> Result<PathBuf, Error> {
    let root = crate::workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "--release", "--quiet"]);
    for package in packages {
        command.args(["-p", package]);
    }
    let status = command
        .current_dir(&root)
        .status()
        .map_err(|e| Error::io("running cargo build --release", e))?;
    if !status.success() {
        return Err(Error::Build(format!(
            "cargo build --release -p {} failed ({status})",
            packages.join(" -p ")
        )));
    }
    Ok(target.join("release"))
}
