//! Shared folders: one `virtiofsd` per share, serving the folder as its owner, and the QEMU
//! devices that reach it.
//!
//! virtiofsd runs in a user namespace of its own where the folder's owner is root: what the
//! guest's root makes is the owner's on the host, the owner's files are root's in the guest,
//! and chmod works because the owner may do it (Lima's 9p and virtiofs mounts, which serve
//! as another user, get both wrong: lima#1513, #2437). It can reach only what the owner
//! can. A read-only share is a read-only bind mount in its own mount namespace.
//!
//! virtiofsd starts in the directory the controller opened and checked, and is given its
//! resolved path (it bind-mounts and pivots into the path, which it needs by name); as it runs
//! as the folder's owner, a rename in between can only lead it to what that owner may read.
//!
//! The guest caches what it writes and sends it on close or fsync (`-o writeback`: unpacking
//! a source tree into the share takes about 0.7× the time it does without it), and
//! revalidates what it read after a second (`cache=auto`), so edits on either side are seen
//! on the other.
//!
//! corrald binds the vhost-user socket, hands the listening end to virtiofsd (`--fd`),
//! connects to it itself and gives QEMU the connected end (`-chardev socket,fd=N`): neither
//! process needs to find the other by path, and QEMU never opens a file.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use corral_contract::Machine;
use corral_hypervisor::{Error, ShareConfig, VmConfig};
use nix::libc;

use crate::cmdline::{OptList, QemuCommand};

/// Where distributions install virtiofsd: the Rust one (Fedora, newer Debian), then the C one
/// QEMU 7.2 ships (Debian 12's qemu-system-common). Both take the options used here.
const VIRTIOFSD: &[&str] = &[
    "/usr/libexec/virtiofsd",
    "/usr/lib/qemu/virtiofsd",
    "/usr/libexec/qemu/virtiofsd",
];

/// The virtiofsd binary.
pub(crate) fn binary() -> Result<PathBuf, Error> {
    VIRTIOFSD
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::InvalidConfig(format!(
                "a shared folder needs virtiofsd, found in none of {}: install it (Debian: \
                 apt-get install qemu-system-common)",
                VIRTIOFSD.join(", ")
            ))
        })
}

/// The descriptor QEMU inherits share `i`'s connected vhost-user socket at: after the TAPs.
fn share_fd(config: &VmConfig, i: usize) -> i32 {
    crate::net::FIRST_TAP_FD + crate::net::taps(config).count() as i32 + i as i32
}

/// Adds the shares' devices. vhost-user needs guest RAM QEMU can share: a memfd, unless RAM
/// is already a shared file (introspection); `launch` names it `ram0` on `-machine`.
pub(crate) fn add_shares(cmd: &mut QemuCommand, config: &VmConfig) {
    if config.shares.is_empty() {
        return;
    }
    if config.memory_file.is_none() {
        cmd.opts(
            "-object",
            OptList::new("memory-backend-memfd")
                .set("id", "ram0")
                .set("size", config.memory_bytes.to_string())
                .flag("share", true),
        );
    }
    let device = if config.machine == Machine::Microvm {
        "vhost-user-fs-device"
    } else {
        "vhost-user-fs-pci"
    };
    for (i, share) in config.shares.iter().enumerate() {
        cmd.opts(
            "-chardev",
            OptList::new("socket")
                .set("id", format!("fs{i}"))
                .set("fd", share_fd(config, i).to_string()),
        );
        cmd.opts(
            "-device",
            OptList::new(device)
                .set("chardev", format!("fs{i}"))
                .set("tag", &share.tag)
                .set("queue-size", "1024"),
        );
    }
}

/// Starts virtiofsd for `share` and returns the connected end QEMU gets. Its output goes to
/// `log`; `socket` is bound only until virtiofsd holds it. virtiofsd exits when QEMU closes
/// the connection, so it lives exactly as long as its VM (and outlives corrald like QEMU).
pub(crate) fn serve(share: &ShareConfig, socket: &Path, log: &Path) -> Result<UnixStream, Error> {
    let Some(dir) = share.dir.first() else {
        return Err(Error::InvalidConfig(format!(
            "share {}: the folder was not opened for this launch",
            share.tag
        )));
    };
    let out = File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
    let err = out.try_clone().map_err(|e| Error::io("virtiofsd log", e))?;
    // virtiofsd splits `-o` on commas: a path with one could add options.
    let source = share
        .path
        .to_str()
        .filter(|p| !p.contains([',', '\\']))
        .ok_or_else(|| {
            Error::InvalidConfig(format!(
                "share {}: {} has a ',' or '\\' (or is not UTF-8), which virtiofsd cannot take: \
                 rename the folder",
                share.tag,
                share.path.display()
            ))
        })?;
    let mut command = std::process::Command::new(binary()?);
    command
        .arg("--fd=3")
        .arg("-o")
        .arg(format!("source={source}"))
        .args([
            "-o",
            "sandbox=namespace",
            "-o",
            "cache=auto",
            "-o",
            "writeback",
        ])
        .arg("--rlimit-nofile=0")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let listener = crate::files::bind_socket(socket)?;
    let setup = NamespaceSetup::new(share, listener.as_raw_fd(), dir)?;
    // SAFETY: the closure runs in the forked child before exec; it makes only
    // async-signal-safe system calls (setsid, dup2, fchdir, setgroups, setresgid, setresuid,
    // prctl, unshare, open, write, close, mount, chdir) on memory prepared before the fork,
    // and allocates nothing.
    unsafe {
        command.pre_exec(move || setup.enter());
    }
    // Reaped by tokio once dropped; it ends with its VM.
    let child = tokio::process::Command::from(command)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| {
            let _ = std::fs::remove_file(socket);
            Error::io("starting virtiofsd", e)
        })?;
    drop(child);
    let stream = UnixStream::connect(socket).map_err(|e| {
        Error::io(
            format!("connecting to virtiofsd at {}", socket.display()),
            e,
        )
    });
    let _ = std::fs::remove_file(socket);
    drop(listener);
    stream
}

/// What the child does between fork and exec, prepared in the parent.
struct NamespaceSetup {
    listener: i32,
    dir: i32,
    uid: u32,
    gid: u32,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    read_only: Option<CString>,
}

const PROC_SETGROUPS: &std::ffi::CStr = c"/proc/self/setgroups";
const PROC_UID_MAP: &std::ffi::CStr = c"/proc/self/uid_map";
const PROC_GID_MAP: &std::ffi::CStr = c"/proc/self/gid_map";
const DOT: &std::ffi::CStr = c".";

impl NamespaceSetup {
    fn new(share: &ShareConfig, listener: i32, dir: i32) -> Result<Self, Error> {
        let (uid, gid) = (share.owner.uid, share.owner.gid);
        let read_only = if share.read_only {
            let path = CString::new(share.path.as_os_str().as_bytes()).map_err(|_| {
                Error::InvalidConfig(format!("share {}: a NUL in its path", share.tag))
            })?;
            Some(path)
        } else {
            None
        };
        Ok(NamespaceSetup {
            listener,
            dir,
            uid,
            gid,
            uid_map: format!("0 {uid} 1").into_bytes(),
            gid_map: format!("0 {gid} 1").into_bytes(),
            read_only,
        })
    }

    /// In the child: its own session; the listener at fd 3; the folder as working directory;
    /// the owner's ids; a user namespace where they are root; a read-only bind mount for a
    /// read-only share.
    fn enter(&self) -> std::io::Result<()> {
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: plain system calls on descriptors and NUL-terminated buffers that live for
        // the whole closure; none keeps a pointer.
        unsafe {
            check(libc::setsid())?;
            // Before the dup2, which may land on the folder's descriptor.
            check(libc::fchdir(self.dir))?;
            check(libc::dup2(self.listener, 3))?;
            // dup2 onto itself keeps close-on-exec.
            check(libc::fcntl(3, libc::F_SETFD, 0))?;
            // None: virtiofsd drops supplementary groups itself unless there are none, and
            // may not in a user namespace that denies setgroups.
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(self.gid, self.gid, self.gid))?;
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
            // A changed uid makes the process undumpable, and /proc/self/*_map root's.
            check(libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0))?;
            check(libc::unshare(libc::CLONE_NEWUSER))?;
            write_file(PROC_SETGROUPS, b"deny")?;
            write_file(PROC_UID_MAP, &self.uid_map)?;
            write_file(PROC_GID_MAP, &self.gid_map)?;
            if let Some(path) = &self.read_only {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                let flags = libc::MS_BIND | libc::MS_REC;
                check(libc::mount(
                    DOT.as_ptr(),
                    DOT.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                ))?;
                // Onto the new mount, then make it read-only.
                check(libc::chdir(path.as_ptr()))?;
                let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
                check(libc::mount(
                    std::ptr::null(),
                    DOT.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                ))?;
            }
        }
        Ok(())
    }
}

/// `open`, `write`, `close`: no allocation, fit between fork and exec.
unsafe fn write_file(path: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<()> {
    // SAFETY: `path` is NUL-terminated and `bytes` valid for its length.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n < 0 || n as usize != bytes.len() {
            return Err(err);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_contract::{Accel, Arch};
    use corral_hypervisor::{BootSource, FileOwner};

    #[test]
    fn shares_get_a_vhost_user_device_with_an_escaped_tag_and_shared_ram() {
        let mut config = VmConfig::from_spec(
            "u1",
            "a",
            &corral_contract::VmSpec::builder(corral_contract::Boot::kernel("/k"))
                .build()
                .unwrap(),
        );
        config.accel = Accel::Tcg;
        config.arch = Arch::X86_64;
        config.boot = BootSource::Firmware;
        config.shares.push(ShareConfig {
            tag: "a,b".into(),
            path: "/srv/p".into(),
            read_only: false,
            owner: FileOwner { uid: 1, gid: 1 },
            dir: Default::default(),
        });
        let mut cmd = QemuCommand::new("/bin/qemu");
        add_shares(&mut cmd, &config);
        let args: Vec<String> = cmd
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "-object",
                &format!(
                    "memory-backend-memfd,id=ram0,size={},share=on",
                    config.memory_bytes
                ),
                "-chardev",
                "socket,id=fs0,fd=5",
                "-device",
                "vhost-user-fs-pci,chardev=fs0,tag=a,,b,queue-size=1024",
            ]
        );
    }
}
