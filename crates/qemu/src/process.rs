//! The emulator process: spawning it in its own session, and checking on a pid that may not
//! be our child.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Pid, Uid};

use corral_hypervisor::FileOwner;

use crate::cmdline::QemuCommand;

/// A user to run QEMU as: its ids and the groups it is a member of.
#[derive(Debug, Clone)]
pub struct RunAs {
    /// User and primary group.
    pub owner: FileOwner,
    /// Every group of the user, its primary group included.
    pub groups: Vec<Gid>,
}

impl RunAs {
    /// `owner` with the groups `/etc/group` lists for its user.
    pub fn lookup(owner: FileOwner) -> std::io::Result<RunAs> {
        let gid = Gid::from_raw(owner.gid);
        let user = nix::unistd::User::from_uid(Uid::from_raw(owner.uid))?;
        let groups = match user {
            Some(user) => {
                let name = std::ffi::CString::new(user.name).map_err(std::io::Error::other)?;
                nix::unistd::getgrouplist(&name, gid)?
            }
            None => vec![gid],
        };
        Ok(RunAs { owner, groups })
    }
}

/// The descriptor numbers QEMU finds its inherited sockets at: the first is `fd=3` on its
/// command line, the next `fd=4`.
pub const FIRST_INHERITED_FD: i32 = 3;

/// Spawns QEMU in a session of its own, so it outlives the process that started it and no
/// signal aimed at that process's group or terminal reaches it. Its stdout and stderr go to
/// `log` (created 0600). `inherit[i]` becomes its descriptor `FIRST_INHERITED_FD + i`.
///
/// With `run_as`, the child drops to that user, its group and its supplementary groups
/// (`kvm`, for one) before it executes QEMU, so QEMU never holds root. QEMU's own `-runas`
/// drops later, after its seccomp filter is installed, and `-sandbox elevateprivileges=deny`
/// forbids the very `setuid` it needs: QEMU 7.2 dies with SIGSYS.
pub fn spawn(
    cmd: &QemuCommand,
    log: &Path,
    run_as: Option<&RunAs>,
    inherit: &[BorrowedFd<'_>],
) -> std::io::Result<tokio::process::Child> {
    let run_as = run_as.cloned();
    let out = File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)?;
    let err = out.try_clone()?;
    // Copies above the low numbers, so that placing one at 3 can never overwrite another
    // before it is placed. They close in the parent when `sources` drops, and on exec.
    let sources: Vec<OwnedFd> = inherit
        .iter()
        .map(|fd| {
            fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(16)).map(|raw| {
                // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
                unsafe { OwnedFd::from_raw_fd(raw) }
            })
        })
        .collect::<Result<_, _>>()?;
    let raw_sources: Vec<i32> = sources.iter().map(AsRawFd::as_raw_fd).collect();
    let mut command = std::process::Command::new(cmd.binary());
    command
        .args(cmd.args())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // Host files the command names as `/dev/fd/N` keep their numbers; they must not sit
    // where the sockets are placed.
    let keep = cmd.inherited().to_vec();
    let placed = FIRST_INHERITED_FD..FIRST_INHERITED_FD + raw_sources.len() as i32;
    if let Some(fd) = keep.iter().find(|fd| placed.contains(fd)) {
        return Err(std::io::Error::other(format!(
            "descriptor {fd} for QEMU would be overwritten by an inherited socket"
        )));
    }
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe system calls (setsid, fcntl, dup2, umask, setgroups, setresgid,
    // setresuid); it reads memory the parent set up before the fork and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid()?;
            for &fd in &keep {
                // Open in the parent (the caller holds it through the spawn), so open in this
                // copy of its table.
                let fd = BorrowedFd::borrow_raw(fd);
                fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))?;
            }
            for (i, &src) in raw_sources.iter().enumerate() {
                // dup2 clears close-on-exec on the new descriptor. The targets hold only the
                // parent's own descriptors (its runtime's, opened before any VM), which are
                // close-on-exec and of no use to QEMU.
                if nix::libc::dup2(src, FIRST_INHERITED_FD + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            nix::sys::stat::umask(Mode::from_bits_truncate(0o077));
            if let Some(run_as) = &run_as {
                let (uid, gid) = (
                    Uid::from_raw(run_as.owner.uid),
                    Gid::from_raw(run_as.owner.gid),
                );
                nix::unistd::setgroups(&run_as.groups)?;
                nix::unistd::setresgid(gid, gid, gid)?;
                nix::unistd::setresuid(uid, uid, uid)?;
            }
            Ok(())
        });
    }
    let child = tokio::process::Command::from(command)
        .kill_on_drop(false)
        .spawn();
    drop(sources);
    child
}

/// Whether `pid` names a live process (a zombie counts as dead).
pub fn is_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(Errno::EPERM) => !is_zombie(pid),
        Err(_) => false,
    }
}

fn is_zombie(pid: u32) -> bool {
    // /proc/<pid>/stat: "pid (comm) S ..." — comm may contain spaces and parentheses, so the
    // state is the first field after the last ')'.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: u32, signal: Signal) -> std::io::Result<()> {
    let raw =
        i32::try_from(pid).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    match kill(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The argv of a running process, from `/proc/<pid>/cmdline`, exactly: empty arguments (such
/// as `-append ""`) are kept, so it compares equal to the argv the process was started with.
pub fn cmdline(pid: u32) -> std::io::Result<Vec<OsString>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(split_cmdline(&raw))
}

/// Splits `/proc/<pid>/cmdline`: every argument ends with a NUL, and an argument may be empty.
fn split_cmdline(raw: &[u8]) -> Vec<OsString> {
    // Only the terminator of the last argument is dropped; a zombie's file is empty.
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0)
        .map(|arg| OsString::from_vec(arg.to_vec()))
        .collect()
}

/// Whether the live process `pid` names `dir` in one of its arguments: a QEMU started for the
/// VM whose runtime directory that is. A process that does may not be judged dead, whatever
/// its launch record says.
pub fn mentions(pid: u32, dir: &Path) -> bool {
    let Some(dir) = dir.to_str() else {
        return false;
    };
    cmdline(pid).is_ok_and(|argv| argv.iter().any(|arg| arg.to_string_lossy().contains(dir)))
}

/// Reads a pid file as QEMU writes it (decimal, newline).
pub fn read_pid_file(path: &Path) -> std::io::Result<u32> {
    let text = std::fs::read_to_string(path)?;
    text.trim().parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} holds no pid: {text:?}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_and_cmdline_of_ourselves() {
        let me = std::process::id();
        assert!(is_alive(me));
        let argv = cmdline(me).unwrap();
        assert!(!argv.is_empty());
        assert!(!is_alive(u32::MAX));
    }

    #[test]
    fn cmdline_keeps_empty_arguments() {
        let split = |raw: &[u8]| -> Vec<String> {
            split_cmdline(raw)
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect()
        };
        assert_eq!(
            split(b"qemu\0-append\0\0-S\0"),
            ["qemu", "-append", "", "-S"]
        );
        assert_eq!(split(b"qemu\0-append\0\0"), ["qemu", "-append", ""]);
        assert_eq!(split(b""), Vec::<String>::new());
    }

    #[test]
    fn a_live_process_with_an_empty_argument_reads_back_exactly() {
        // `read` is a builtin: the shell waits on its stdin without forking a child.
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "read x", "", "/run/corral-test/vms/x"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        // Until the child has exec'd, /proc shows the test binary's argv.
        let argv = (0..500)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                cmdline(child.id()).unwrap()
            })
            .find(|argv| argv.first().is_some_and(|a| a == "/bin/sh"))
            .expect("the child execs /bin/sh");
        assert_eq!(
            argv,
            ["/bin/sh", "-c", "read x", "", "/run/corral-test/vms/x"].map(OsString::from)
        );
        assert!(mentions(child.id(), Path::new("/run/corral-test/vms/x")));
        assert!(!mentions(child.id(), Path::new("/run/corral-test/vms/y")));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn inherited_descriptors_land_from_fd_3_and_the_umask_is_private() {
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        let (first, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let second = File::open("/dev/null").unwrap();
        let out = dir.path().join("out");
        let mut cmd = QemuCommand::new("/bin/sh");
        cmd.arg("-c")
            .arg("{ readlink /proc/self/fd/3; readlink /proc/self/fd/4; umask; } >\"$0\"")
            .arg(&out);
        let inherit = [first.as_fd(), second.as_fd()];
        let mut child = spawn(&cmd, &dir.path().join("log"), None, &inherit).unwrap();
        assert!(child.wait().await.unwrap().success());
        let text = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("socket:["), "{text}");
        assert_eq!(lines[1..], ["/dev/null", "0077"], "{text}");
    }

    #[tokio::test]
    async fn spawned_process_leads_its_own_session() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = QemuCommand::new("/bin/sh");
        cmd.arg("-c").arg("sleep 5");
        let mut child = spawn(&cmd, &dir.path().join("log"), None, &[]).unwrap();
        let pid = child.id().unwrap();
        let sid = nix::unistd::getsid(Some(Pid::from_raw(pid as i32))).unwrap();
        assert_eq!(sid.as_raw() as u32, pid);
        signal(pid, Signal::SIGKILL).unwrap();
        child.wait().await.unwrap();
        assert!(!is_alive(pid));
    }
}
