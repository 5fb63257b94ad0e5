//! The emulator process: spawning it in its own session, and checking on a pid that may not
//! be our child.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cmdline::QemuCommand;

/// Spawns QEMU in a session of its own, so it outlives the process that started it and no
/// signal aimed at that process's group or terminal reaches it. Its stdout and stderr go to
/// `log`.
pub fn spawn(cmd: &QemuCommand, log: &Path) -> std::io::Result<tokio::process::Child> {
    let out = File::options().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let mut command = std::process::Command::new(cmd.binary());
    command
        .args(cmd.args())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let inherit = cmd.inherited().to_vec();
    // SAFETY: the closure runs in the forked child before exec and calls only setsid(2) and
    // fcntl(2), which are async-signal-safe; it reads a vector allocated before the fork and
    // allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            for &fd in &inherit {
                // The descriptor is open in the parent (the caller holds it through the
                // spawn), so it is open in this copy of its table.
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                nix::fcntl::fcntl(
                    fd,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                )
                .map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    tokio::process::Command::from(command)
        .kill_on_drop(false)
        .spawn()
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
    async fn spawned_process_leads_its_own_session() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = QemuCommand::new("/bin/sh");
        cmd.arg("-c").arg("sleep 5");
        let mut child = spawn(&cmd, &dir.path().join("log")).unwrap();
        let pid = child.id().unwrap();
        let sid = nix::unistd::getsid(Some(Pid::from_raw(pid as i32))).unwrap();
        assert_eq!(sid.as_raw() as u32, pid);
        signal(pid, Signal::SIGKILL).unwrap();
        child.wait().await.unwrap();
        assert!(!is_alive(pid));
    }
}
