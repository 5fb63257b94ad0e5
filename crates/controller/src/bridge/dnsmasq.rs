//! The dnsmasq of a bridge network: started with a pid file of the network's own, and
//! recognised only by that file's path among its arguments. A stale pid file whose number now
//! belongs to another process (another dnsmasq included) never makes corrald signal it, and a
//! process is signalled through a pidfd, so a pid reused between the check and the signal
//! cannot be hit either.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

/// The argument that names the network's pid file, as dnsmasq is started with it.
pub(super) fn pid_file_arg(pid_file: &Path) -> String {
    format!("--pid-file={}", pid_file.display())
}

/// Whether `cmdline` (NUL-separated, as `/proc/<pid>/cmdline`) is a dnsmasq started with
/// exactly `--pid-file=<pid_file>`.
pub(super) fn is_ours(cmdline: &[u8], pid_file: &Path) -> bool {
    let mut args = cmdline.split(|b| *b == 0);
    let is_dnsmasq = args
        .next()
        .is_some_and(|argv0| argv0.rsplit(|b| *b == b'/').next() == Some(b"dnsmasq"));
    let want = pid_file_arg(pid_file);
    is_dnsmasq && args.any(|a| a == want.as_bytes())
}

/// The network's running dnsmasq, held by a pidfd: `None` when the pid file is missing or
/// stale (no such process, or a process that is not the dnsmasq of this pid file).
pub(super) fn find(pid_file: &Path) -> Option<OwnedFd> {
    let raw: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let pid = Pid::from_raw(raw)?;
    // The pidfd first, then the check: the check then describes the process the pidfd holds
    // (if that one exited meanwhile, signalling the pidfd does nothing).
    let fd = pidfd_open(pid, PidfdFlags::empty()).ok()?;
    let cmdline = std::fs::read(format!("/proc/{raw}/cmdline")).ok()?;
    if is_ours(&cmdline, pid_file) {
        Some(fd)
    } else {
        tracing::warn!(
            pid = raw,
            pid_file = %pid_file.display(),
            "the pid file names a process that is not this network's dnsmasq: leaving it alone"
        );
        None
    }
}

/// Stops the network's dnsmasq, if it runs: SIGTERM, then SIGKILL after 2.5 s.
pub(super) async fn stop(pid_file: &Path) {
    let Some(fd) = find(pid_file) else {
        return;
    };
    if pidfd_send_signal(&fd, Signal::TERM).is_err() {
        return; // already gone
    }
    let exited = tokio::task::spawn_blocking(move || {
        let exited = wait_exit(&fd, Duration::from_millis(2500));
        if !exited {
            let _ = pidfd_send_signal(&fd, Signal::KILL);
        }
        exited
    })
    .await
    .unwrap_or(false);
    tracing::debug!(pid_file = %pid_file.display(), exited, "stopped dnsmasq");
}

/// Waits up to `limit` for the process of `pidfd` to exit (a pidfd turns readable then).
fn wait_exit(pidfd: &OwnedFd, limit: Duration) -> bool {
    let timeout = Timespec {
        tv_sec: limit.as_secs() as _,
        tv_nsec: limit.subsec_nanos() as _,
    };
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    loop {
        match poll(&mut fds, Some(&timeout)) {
            Ok(n) => return n > 0,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dnsmasq_with_this_exact_pid_file_is_ours() {
        let pid_file = Path::new("/run/corral/networks/lan/dnsmasq.pid");
        let ours =
            b"dnsmasq\0--conf-file=/dev/null\0--pid-file=/run/corral/networks/lan/dnsmasq.pid\0";
        assert!(is_ours(ours, pid_file));
        let full_path = b"/usr/sbin/dnsmasq\0--pid-file=/run/corral/networks/lan/dnsmasq.pid\0";
        assert!(is_ours(full_path, pid_file));
        for other in [
            // Someone else's dnsmasq (libvirt's, NetworkManager's).
            &b"/usr/sbin/dnsmasq\0--conf-file=/var/lib/libvirt/dnsmasq/default.conf\0"[..],
            // Another network's.
            b"dnsmasq\0--pid-file=/run/corral/networks/lan2/dnsmasq.pid\0",
            // A prefix of ours is not ours.
            b"dnsmasq\0--pid-file=/run/corral/networks/lan/dnsmasq.pid.old\0",
            // Not a dnsmasq, though it carries the argument.
            b"sleep\0--pid-file=/run/corral/networks/lan/dnsmasq.pid\0",
            b"/opt/notdnsmasq\0--pid-file=/run/corral/networks/lan/dnsmasq.pid\0",
            b"",
        ] {
            assert!(
                !is_ours(other, pid_file),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn a_stale_pid_file_naming_another_process_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("dnsmasq.pid");
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(&pid_file, format!("{}\n", sleeper.id())).unwrap();
        assert!(find(&pid_file).is_none());
        std::fs::write(&pid_file, "not a pid").unwrap();
        assert!(find(&pid_file).is_none());
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }
}
