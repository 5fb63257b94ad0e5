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
    // SAFETY: the closure runs in the forked child before exec and calls only setsid(2), which
    // is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
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

/// The argv of a running process, from `/proc/<pid>/cmdline`.
pub fn cmdline(pid: u32) -> std::io::Result<Vec<OsString>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(raw
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| OsString::from_vec(arg.to_vec()))
        .collect())
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
