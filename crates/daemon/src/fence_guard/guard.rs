//! `corrald fence-guard`: the process that kills the node's QEMUs once the fence deadline
//! passes, whatever became of the corrald that started them.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

use super::stamp::{Stamp, Verdict, boottime, verdict};
use super::{FencedVm, GuardError, GuardPaths};

/// How often the guard looks at the deadline and the node's QEMUs when nothing is due.
pub const TICK: Duration = Duration::from_millis(200);

/// Which QEMUs run on the node. The real one reads the QEMU backend's run directory
/// ([`RunDirCensus`]); unit tests count ordinary processes.
pub trait Census {
    /// Every QEMU of the node: VM uid and pid.
    fn list(&self) -> Vec<corral_qemu::Launched>;
    /// Whether `pid` is (still) the QEMU of VM `uid`.
    fn is_it(&self, uid: &str, pid: u32) -> bool;
}

/// The QEMUs a QEMU backend on `run_dir` launched: each known by its launch record (written
/// before QEMU is spawned) and its pid file (written by QEMU), and checked against its exact
/// command line.
#[derive(Debug)]
pub struct RunDirCensus(pub PathBuf);

impl Census for RunDirCensus {
    fn list(&self) -> Vec<corral_qemu::Launched> {
        corral_qemu::launched(&self.0)
    }

    fn is_it(&self, uid: &str, pid: u32) -> bool {
        corral_qemu::is_launched(&self.0, uid, pid)
    }
}

/// One QEMU the guard holds: by a pidfd taken before it was checked, so that the signal
/// reaches exactly the process that was checked, never one that reused its pid.
#[derive(Debug)]
struct Watched {
    uid: String,
    start_time: u64,
    pidfd: OwnedFd,
    killed: bool,
}

/// The guard's state between ticks.
#[derive(Debug)]
pub struct Guard<C> {
    paths: GuardPaths,
    census: C,
    stamp: Option<Stamp>,
    // By pid: a pid is unique among live processes, and a dead one's entry goes first.
    watched: HashMap<u32, Watched>,
    bad_stamp_said: bool,
}

impl<C: Census> Guard<C> {
    /// A guard over the files in `paths` and the QEMUs `census` finds.
    pub fn new(paths: GuardPaths, census: C) -> Self {
        Guard {
            paths,
            census,
            stamp: None,
            watched: HashMap::new(),
            bad_stamp_said: false,
        }
    }

    /// One look at `now` (`CLOCK_BOOTTIME`): reads the deadline, takes hold of new QEMUs,
    /// lets go of ended ones, and kills them all once the deadline has passed. Returns what
    /// it killed and how long to wait before the next look.
    pub fn tick(&mut self, now: Duration) -> (Vec<FencedVm>, Duration) {
        match Stamp::read(&self.paths.stamp) {
            Ok(stamp) => {
                self.stamp = stamp;
                self.bad_stamp_said = false;
            }
            // Written by rename, a stamp is never torn; keep to the last good one.
            Err(e) if !self.bad_stamp_said => {
                tracing::error!(error = %e, "keeping to the last fence deadline read");
                self.bad_stamp_said = true;
            }
            Err(_) => {}
        }
        self.let_go_of_ended();
        self.take_hold_of_new();
        match verdict(self.stamp.as_ref(), now) {
            Verdict::Unarmed => (Vec::new(), TICK),
            Verdict::Armed { left } => (Vec::new(), left.min(TICK)),
            Verdict::Expired { ago } => (self.kill_all(ago), TICK),
        }
    }

    /// How many QEMUs the guard holds now.
    pub fn watching(&self) -> usize {
        self.watched.len()
    }

    fn let_go_of_ended(&mut self) {
        self.watched.retain(|pid, w| {
            let alive = !has_exited(&w.pidfd);
            if !alive {
                tracing::debug!(pid, uid = %w.uid, "QEMU ended");
            }
            alive
        });
    }

    fn take_hold_of_new(&mut self) {
        for launched in self.census.list() {
            if self.watched.contains_key(&launched.pid) {
                continue;
            }
            let Some(pid) = i32::try_from(launched.pid).ok().and_then(Pid::from_raw) else {
                continue;
            };
            // The pidfd first, then the checks; if its process still runs after them, the
            // pid named that process throughout, so the checks were of it.
            let Ok(pidfd) = pidfd_open(pid, PidfdFlags::empty()) else {
                continue;
            };
            if !self.census.is_it(&launched.uid, launched.pid) {
                continue;
            }
            let Some(start_time) = start_time(launched.pid) else {
                continue;
            };
            if has_exited(&pidfd) {
                continue;
            }
            tracing::info!(pid = launched.pid, uid = %launched.uid, start_time, "watching QEMU");
            self.watched.insert(
                launched.pid,
                Watched {
                    uid: launched.uid,
                    start_time,
                    pidfd,
                    killed: false,
                },
            );
        }
    }

    fn kill_all(&mut self, ago: Duration) -> Vec<FencedVm> {
        let mut fenced = Vec::new();
        for (&pid, w) in self.watched.iter_mut().filter(|(_, w)| !w.killed) {
            match pidfd_send_signal(&w.pidfd, Signal::KILL) {
                Ok(()) => {
                    w.killed = true;
                    tracing::warn!(
                        pid,
                        uid = %w.uid,
                        late_ms = ago.as_millis() as u64,
                        "fence deadline passed with no report from corrald: QEMU killed"
                    );
                    fenced.push(FencedVm {
                        uid: w.uid.clone(),
                        pid,
                        start_time: w.start_time,
                        killed_at: humantime::format_rfc3339_millis(std::time::SystemTime::now())
                            .to_string(),
                        late_ms: u64::try_from(ago.as_millis()).unwrap_or(u64::MAX),
                    });
                }
                // Already gone: nothing to do, nothing to record.
                Err(rustix::io::Errno::SRCH) => w.killed = true,
                Err(e) => tracing::error!(pid, uid = %w.uid, error = %e, "cannot kill QEMU"),
            }
        }
        if !fenced.is_empty() {
            if let Err(e) = append_records(&self.paths.fenced, &fenced) {
                tracing::error!(error = %e, "cannot record what the fence killed");
            }
        }
        fenced
    }
}

/// Whether the process of `pidfd` has ended (a pidfd turns readable then).
fn has_exited(pidfd: &OwnedFd) -> bool {
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
}

/// The start time of `pid` in clock ticks after boot (`/proc/<pid>/stat`, field 22): with
/// the pid, it names one process for the whole life of the host.
pub fn start_time(pid: u32) -> Option<u64> {
    parse_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // `comm` (field 2) may hold spaces and parentheses: count from after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Appends `fenced` to the record corrald reads, one JSON object a line, in one write.
fn append_records(path: &Path, fenced: &[FencedVm]) -> std::io::Result<()> {
    let mut text = String::new();
    for f in fenced {
        text.push_str(&serde_json::to_string(f).map_err(std::io::Error::other)?);
        text.push('\n');
    }
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Takes the node's guard lock: `Err(Held)` when another guard has it (it is tried for a
/// moment, as a corrald checking whether a guard runs holds it briefly too). The lock file
/// then holds this process's pid.
pub fn lock(paths: &GuardPaths) -> Result<Flock<File>, GuardError> {
    let io = |what: &str| {
        let what = format!("{what} {}", paths.lock.display());
        move |source| GuardError::Io { what, source }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut lock = loop {
        let file = open_lock(&paths.lock).map_err(io("opening"))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => break lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(GuardError::Held {
                    pid: super::guard_pid(paths),
                    dir: paths.dir.clone(),
                });
            }
            Err((_, e)) => return Err(io("locking")(e.into())),
        }
    };
    lock.set_len(0).map_err(io("writing"))?;
    writeln!(lock, "{}", std::process::id()).map_err(io("writing"))?;
    Ok(lock)
}

pub(super) fn open_lock(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// Runs the guard of `run_dir` until its fence directory is removed (the node's run
/// directory went, or a corrald retired fencing) or another guard replaced its lock file.
pub fn run(run_dir: &Path) -> Result<(), GuardError> {
    let paths = GuardPaths::new(run_dir);
    super::prepare_dir(&paths)?;
    let lock = lock(&paths)?;
    let inode = lock
        .metadata()
        .map_err(|source| GuardError::Io {
            what: format!("reading {}", paths.lock.display()),
            source,
        })?
        .ino();
    tracing::info!(run_dir = %run_dir.display(), pid = std::process::id(), "fence guard watching");
    let mut guard = Guard::new(paths.clone(), RunDirCensus(run_dir.to_owned()));
    loop {
        match std::fs::metadata(&paths.lock) {
            Ok(m) if m.ino() == inode => {}
            _ => {
                tracing::info!(
                    watching = guard.watching(),
                    "the fence directory is gone or another guard's: exiting"
                );
                return Ok(());
            }
        }
        let (_, wait) = guard.tick(boottime());
        std::thread::sleep(wait);
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command};
    use std::sync::Mutex;

    use super::*;

    /// `sleep` processes standing in for QEMUs; "its" process is the one whose argv carries
    /// the uid (`sleep 600 0.1` sleeps the sum: the uid rides along as a number).
    #[derive(Default)]
    struct Sleepers(Mutex<Vec<corral_qemu::Launched>>);

    impl Census for &Sleepers {
        fn list(&self) -> Vec<corral_qemu::Launched> {
            self.0.lock().unwrap().clone()
        }
        fn is_it(&self, uid: &str, pid: u32) -> bool {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|argv| argv.split(|b| *b == 0).any(|a| a == uid.as_bytes()))
        }
    }

    /// `sleep 600 <uid>`, returned once its command line is readable. `spawn` returns as
    /// soon as the child has left the parent's memory, which is before the kernel has set
    /// up the new program's arguments: for a moment `/proc/<pid>/cmdline` is empty. (QEMU
    /// writes its pid file long after that, so the real census never sees the gap.)
    fn sleeper(uid: &str) -> Child {
        let child = Command::new("sleep").args(["600", uid]).spawn().unwrap();
        let cmdline = format!("/proc/{}/cmdline", child.id());
        while std::fs::read(&cmdline).unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        child
    }

    fn alive(child: &mut Child) -> bool {
        child.try_wait().unwrap().is_none()
    }

    fn setup() -> (tempfile::TempDir, GuardPaths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = GuardPaths::new(dir.path());
        super::super::prepare_dir(&paths).unwrap();
        (dir, paths)
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn kills_what_it_watches_once_the_deadline_passes_and_records_it() {
        let (_dir, paths) = setup();
        let census = Sleepers::default();
        let mut vm = sleeper("0");
        // `sleep 600 0`: the "0" is the uid the census knows it by.
        census.0.lock().unwrap().push(corral_qemu::Launched {
            uid: "0".into(),
            pid: vm.id(),
        });
        let mut guard = Guard::new(paths.clone(), &census);
        let now = boottime();

        // No deadline yet: nothing is enforced.
        assert_eq!(guard.tick(now).0, []);
        assert_eq!(guard.watching(), 1);
        Stamp::after_report(now, S(10)).write(&paths.stamp).unwrap();
        let (killed, wait) = guard.tick(now + S(9));
        assert_eq!((killed, wait), (vec![], TICK));
        let (_, wait) = guard.tick(now + S(10) - Duration::from_millis(50));
        assert_eq!(wait, Duration::from_millis(50), "wakes at the deadline");
        assert!(alive(&mut vm));

        let (killed, _) = guard.tick(now + S(10));
        assert_eq!(killed.len(), 1);
        assert_eq!((killed[0].uid.as_str(), killed[0].pid), ("0", vm.id()));
        assert_eq!(Some(killed[0].start_time), start_time(vm.id()));
        let status = vm.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        let recorded = super::super::take_fenced(&paths);
        assert_eq!(recorded, killed);
        assert!(super::super::take_fenced(&paths).is_empty(), "taken once");
    }

    #[test]
    fn a_renewed_deadline_keeps_them_running_and_a_new_one_after_expiry_stops_the_killing() {
        let (_dir, paths) = setup();
        let census = Sleepers::default();
        let mut vm = sleeper("0.1");
        census.0.lock().unwrap().push(corral_qemu::Launched {
            uid: "0.1".into(),
            pid: vm.id(),
        });
        let mut guard = Guard::new(paths.clone(), &census);
        let now = boottime();
        Stamp::after_report(now, S(10)).write(&paths.stamp).unwrap();
        guard.tick(now);
        Stamp::after_report(now + S(8), S(10))
            .write(&paths.stamp)
            .unwrap();
        assert_eq!(guard.tick(now + S(15)).0, []);
        assert!(alive(&mut vm));
        // Fencing disarmed (no stamp): nothing happens, however late.
        std::fs::remove_file(&paths.stamp).unwrap();
        assert_eq!(guard.tick(now + S(1000)).0, []);
        assert!(alive(&mut vm));
        vm.kill().unwrap();
        vm.wait().unwrap();
    }

    #[test]
    fn never_kills_a_process_it_was_not_told_of_or_that_is_not_what_it_was_told() {
        let (_dir, paths) = setup();
        let census = Sleepers::default();
        // Told of uid "x" at this pid, but the process there runs something else: a pid
        // reused by another process.
        let mut other = sleeper("0.2");
        census.0.lock().unwrap().push(corral_qemu::Launched {
            uid: "0.3".into(),
            pid: other.id(),
        });
        // And one process it was never told of at all.
        let mut stranger = sleeper("0.3");
        let mut guard = Guard::new(paths.clone(), &census);
        let now = boottime();
        Stamp::after_report(now, S(1)).write(&paths.stamp).unwrap();
        assert_eq!(guard.tick(now + S(5)).0, []);
        assert_eq!(guard.watching(), 0);
        assert!(alive(&mut other) && alive(&mut stranger));
        for mut child in [other, stranger] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    #[test]
    fn keeps_killing_what_appears_while_expired_and_lets_go_of_what_ended() {
        let (_dir, paths) = setup();
        let census = Sleepers::default();
        let mut guard = Guard::new(paths.clone(), &census);
        let now = boottime();
        Stamp::after_report(now, S(1)).write(&paths.stamp).unwrap();
        assert_eq!(guard.tick(now + S(2)).0, []);
        // A QEMU whose pid file appears only now (or a corrald that started one while
        // fenced) is killed as well.
        let mut late = sleeper("0.4");
        census.0.lock().unwrap().push(corral_qemu::Launched {
            uid: "0.4".into(),
            pid: late.id(),
        });
        assert_eq!(guard.tick(now + S(3)).0.len(), 1);
        late.wait().unwrap();
        census.0.lock().unwrap().clear();
        assert_eq!(guard.tick(now + S(4)).0, [], "recorded once");
        assert_eq!(guard.watching(), 0);
    }

    #[test]
    fn one_guard_per_node() {
        let (_dir, paths) = setup();
        let held = lock(&paths).unwrap();
        assert_eq!(super::super::guard_pid(&paths), Some(std::process::id()));
        let err = lock(&paths).unwrap_err();
        assert!(
            matches!(err, GuardError::Held { pid: Some(p), .. } if p == std::process::id()),
            "{err}"
        );
        drop(held);
        lock(&paths).unwrap();
    }

    #[test]
    fn start_time_reads_past_a_command_name_with_parentheses() {
        let stat = "4242 (qemu) (x) 2) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 \
                    987654 1000000 100 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("4242 (qemu) S 1"), None);
        let me = std::process::id();
        assert!(start_time(me).is_some_and(|t| t > 0));
        assert_eq!(start_time(u32::MAX), None);
    }
}
