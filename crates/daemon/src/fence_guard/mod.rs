//! The node's fence guard: self-fencing that holds when corrald itself is gone.
//!
//! QEMU outlives corrald by design. In a cluster that is a hazard: a corrald killed or
//! frozen stops reporting, the servers move its VMs once the node TTL plus a margin has
//! passed, and the old QEMUs would run on — one VM twice. `corrald fence-guard` is a small
//! process per node that outlives corrald as QEMU does. corrald starts it (when it runs VMs
//! on etcd or as an agent; never for a single host on SQLite) or finds it running:
//!
//! - after every successful report corrald writes `deadline = when the report was sent +
//!   TTL` (`CLOCK_BOOTTIME`) to `<run-dir>/fence/deadline`, a temporary file renamed over
//!   the old one; that is always before the servers may move a VM;
//! - the guard knows the node's QEMUs from the QEMU backend's own records — the launch
//!   record written before QEMU is spawned and the pid file QEMU writes — and holds each by
//!   a pidfd from first sight, checked against its exact command line and start time;
//! - once the deadline passes with no newer one, it SIGKILLs them (and any that appears
//!   until a new deadline comes), logs it and appends a line to `<run-dir>/fence/fenced`;
//!   corrald reads that (on restart, or when its reports get through again) so that VMs
//!   still bound to the node start again.
//!
//! One guard per node: it holds an exclusive `flock` on `<run-dir>/fence/guard.lock`, which
//! holds its pid. It exits when that file is removed (the run directory went away, or a
//! corrald on SQLite retired fencing) or replaced.

mod guard;
mod stamp;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use guard::run;
pub use stamp::{Stamp, Verdict, boottime, verdict};

/// What can go wrong with the fence guard.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// A file of the guard could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The deadline file holds no deadline.
    #[error("the fence deadline {path} is unreadable: {reason}")]
    BadStamp {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Another guard already watches this node.
    #[error(
        "another fence guard{} already watches {dir}: one guard per node",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held {
        /// Its pid, when its lock file says.
        pid: Option<u32>,
        /// The fence directory.
        dir: PathBuf,
    },
    /// A guard was started but did not take its lock.
    #[error("the fence guard did not start within {secs}s; the end of {log}:\n{tail}")]
    NotStarted {
        /// How long it was waited for.
        secs: u64,
        /// Its log file.
        log: PathBuf,
        /// The end of that log.
        tail: String,
    },
}

/// The guard's files under `<run-dir>/fence/`.
#[derive(Debug, Clone)]
pub struct GuardPaths {
    /// The directory.
    pub dir: PathBuf,
    /// `guard.lock`: locked by the running guard, holding its pid.
    pub lock: PathBuf,
    /// `deadline`: the [`Stamp`] corrald writes.
    pub stamp: PathBuf,
    /// `fenced`: one [`FencedVm`] a line, appended by the guard, taken by corrald.
    pub fenced: PathBuf,
    /// `guard.log`: the guard's log.
    pub log: PathBuf,
}

impl GuardPaths {
    /// The guard files of the node whose run directory is `run_dir`.
    pub fn new(run_dir: &Path) -> GuardPaths {
        let dir = run_dir.join("fence");
        GuardPaths {
            lock: dir.join("guard.lock"),
            stamp: dir.join("deadline"),
            fenced: dir.join("fenced"),
            log: dir.join("guard.log"),
            dir,
        }
    }
}

/// A QEMU the guard killed, as recorded in `<run-dir>/fence/fenced`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencedVm {
    /// The VM's uid.
    pub uid: String,
    /// The QEMU's pid.
    pub pid: u32,
    /// Its start time (clock ticks after boot), which with the pid names that one process.
    pub start_time: u64,
    /// When it was killed (RFC 3339).
    pub killed_at: String,
    /// How long after the deadline, in milliseconds.
    pub late_ms: u64,
}

fn prepare_dir(paths: &GuardPaths) -> Result<(), GuardError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&paths.dir)
        .map_err(|source| GuardError::Io {
            what: format!("creating {}", paths.dir.display()),
            source,
        })
}

/// The pid the guard lock file holds.
fn guard_pid(paths: &GuardPaths) -> Option<u32> {
    std::fs::read_to_string(&paths.lock)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a guard holds the lock now.
fn is_held(paths: &GuardPaths) -> bool {
    let Ok(file) = guard::open_lock(&paths.lock) else {
        return false;
    };
    matches!(
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock),
        Err((_, nix::errno::Errno::EWOULDBLOCK))
    )
}

/// Takes the guard's records of what it killed (they are removed).
fn take_fenced(paths: &GuardPaths) -> Vec<FencedVm> {
    // Renamed first: a record the guard appends meanwhile goes to a new file, not lost.
    let taken = paths.fenced.with_extension("taken");
    if std::fs::rename(&paths.fenced, &taken).is_err() {
        return Vec::new();
    }
    let text = std::fs::read_to_string(&taken).unwrap_or_default();
    let _ = std::fs::remove_file(&taken);
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// corrald's side of the node's fence guard.
#[derive(Debug)]
pub struct FenceGuard {
    paths: GuardPaths,
    run_dir: PathBuf,
    ttl: Duration,
}

impl FenceGuard {
    /// The guard of the node whose run directory is `run_dir`: the one running (a corrald
    /// restarted re-attaches to it), or one started now, outside corrald's process group so
    /// that nothing aimed at corrald reaches it. Deadlines are counted with the node TTL
    /// `ttl`.
    pub async fn attach(run_dir: &Path, ttl: Duration) -> Result<FenceGuard, GuardError> {
        let guard = FenceGuard {
            paths: GuardPaths::new(run_dir),
            run_dir: run_dir.to_owned(),
            ttl,
        };
        prepare_dir(&guard.paths)?;
        match guard.ensure_running().await? {
            Some(pid) => tracing::info!(pid, "fence guard started"),
            None => tracing::info!(
                pid = guard_pid(&guard.paths),
                "fence guard already running: re-attached"
            ),
        }
        Ok(guard)
    }

    /// Starts a guard unless one runs (it may have been killed); returns the pid of one
    /// started now.
    pub async fn ensure_running(&self) -> Result<Option<u32>, GuardError> {
        if is_held(&self.paths) {
            return Ok(None);
        }
        let io = |what: String| move |source| GuardError::Io { what, source };
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.paths.log)
            .map_err(io(format!("opening {}", self.paths.log.display())))?;
        let err = log
            .try_clone()
            .map_err(io(format!("opening {}", self.paths.log.display())))?;
        let exe = std::env::current_exe().map_err(io("finding corrald's own binary".into()))?;
        let mut command = tokio::process::Command::new(exe);
        // Its settings are its run directory; the rest of corrald's (a join token) stays out.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CORRAL_") {
                command.env_remove(key);
            }
        }
        command
            .arg("--run-dir")
            .arg(&self.run_dir)
            .arg("fence-guard")
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(false);
        // Dropped at once: tokio reaps it should it end while corrald runs.
        let pid = command
            .spawn()
            .map_err(io("starting the fence guard".into()))?
            .id();
        let wait = Duration::from_secs(10);
        let deadline = tokio::time::Instant::now() + wait;
        while !(is_held(&self.paths) && guard_pid(&self.paths) == pid) {
            if tokio::time::Instant::now() >= deadline {
                let text = std::fs::read_to_string(&self.paths.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                return Err(GuardError::NotStarted {
                    secs: wait.as_secs(),
                    log: self.paths.log.clone(),
                    tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(pid)
    }

    /// A report sent at `sent` (`CLOCK_BOOTTIME`, see [`boottime`]) succeeded: the node's
    /// VMs may run for the TTL from then.
    pub fn renewed(&self, sent: Duration) -> Result<(), GuardError> {
        Stamp::after_report(sent, self.ttl).write(&self.paths.stamp)
    }

    /// Where the node stands now by the last deadline written.
    pub fn verdict(&self) -> Verdict {
        let stamp = Stamp::read(&self.paths.stamp).ok().flatten();
        verdict(stamp.as_ref(), boottime())
    }

    /// Takes the guard's records of the QEMUs it killed since last asked.
    pub fn take_fenced(&self) -> Vec<FencedVm> {
        take_fenced(&self.paths)
    }
}

/// Stops fencing on `run_dir`: a corrald that runs VMs on its own (SQLite) removes the fence
/// directory, and a guard left from an earlier cluster run there sees it gone and exits.
pub fn retire(run_dir: &Path) {
    let dir = GuardPaths::new(run_dir).dir;
    if dir.exists() {
        tracing::info!(dir = %dir.display(), "no cluster: fencing retired");
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the fence directory");
        }
    }
}

/// What a corrald that runs this node's VMs in a cluster does at start: attaches to the
/// node's guard (or starts it), and takes what the guard did while corrald was away into
/// `state` — the VMs it killed start again if they are still this node's, and while the
/// deadline stays passed nothing starts (the guard would kill it) until a report gets
/// through.
pub async fn attach_at_start(
    run_dir: &Path,
    ttl: Duration,
    state: &corral_controller::FenceState,
) -> Result<FenceGuard, GuardError> {
    let guard = FenceGuard::attach(run_dir, ttl).await?;
    let fenced = guard.take_fenced();
    for f in &fenced {
        tracing::warn!(
            uid = %f.uid,
            pid = f.pid,
            killed_at = %f.killed_at,
            "while corrald was away the fence guard killed this VM's QEMU (no report reached the cluster in time)"
        );
        state.stopped(&f.uid);
    }
    if !fenced.is_empty() || matches!(guard.verdict(), Verdict::Expired { .. }) {
        tracing::warn!("the fence deadline has passed: starting no VM until a report gets through");
        state.set(true);
    }
    Ok(guard)
}
