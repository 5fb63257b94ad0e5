//! A VM's files on the host: private from their first byte (files 0600, directories 0700 or
//! 0710), and given to the user QEMU runs as only where QEMU opens them itself.
//!
//! QEMU is started as an unprivileged user (see `process::spawn`), so it can open only what
//! that user may. corrald keeps the VM directory and its own files (launch record, logs) to
//! itself and hands QEMU the rest: the listening monitor and console sockets as inherited
//! descriptors, the pid file and the guest RAM file as files it owns. The directories on the
//! way are searchable by its group and nothing more, so QEMU never creates, renames or lists
//! anything there, and nothing it could plant is ever followed by corrald.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

use corral_hypervisor::{Error, FileOwner};
use nix::unistd::{Gid, Uid};

/// Creates `path` empty with mode 0600 (a stale file is replaced, never reused) and gives it
/// to `owner`. The mode is set by `open` itself: the file is never wider, not even briefly.
pub(crate) fn create_private(
    path: &Path,
    owner: Option<FileOwner>,
    what: &str,
) -> Result<File, Error> {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed a stale {what}"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing stale {}", path.display()), e)),
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating {what} {}", path.display()), e))?;
    if let Some(owner) = owner {
        nix::unistd::fchown(
            &file,
            Some(Uid::from_raw(owner.uid)),
            Some(Gid::from_raw(owner.gid)),
        )
        .map_err(|e| {
            let _ = std::fs::remove_file(path);
            Error::io(
                format!("giving {} to uid {}", path.display(), owner.uid),
                e.into(),
            )
        })?;
    }
    Ok(file)
}

/// Binds a listening unix socket at `path` and makes it 0600. The caller keeps `path`'s
/// directory private (0700) until this returns, so nobody can reach the socket while its
/// mode still follows the umask.
pub(crate) fn bind_socket(path: &Path) -> Result<UnixListener, Error> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("chmod 0600 {}", path.display()), e))?;
    Ok(listener)
}

/// Sets `dir`'s mode: 0710 with `owner`'s group when there is one (its QEMU may pass
/// through, not list or write), else 0700.
pub(crate) fn share_search(dir: &Path, owner: Option<FileOwner>) -> Result<(), Error> {
    let mode = match owner {
        Some(owner) => {
            nix::unistd::chown(dir, None, Some(Gid::from_raw(owner.gid)))
                .map_err(|e| Error::io(format!("chgrp {}", dir.display()), e.into()))?;
            0o710
        }
        None => 0o700,
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {mode:o} {}", dir.display()), e))
}

/// Attaches to the existing TAP device `ifname` (`/dev/net/tun`, `TUNSETIFF`) and returns the
/// descriptor QEMU inherits, so QEMU itself never needs `/dev/net/tun` or `CAP_NET_ADMIN`.
pub(crate) fn open_tap(ifname: &str) -> Result<OwnedFd, Error> {
    use nix::libc;
    let context = || format!("attaching to TAP {ifname}");
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(Error::InvalidConfig(format!(
            "TAP name {ifname:?} must be 1-{} bytes without NUL",
            libc::IFNAMSIZ - 1
        )));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| Error::io(context(), e))?;
    // SAFETY: ifreq is plain data (a name and a union of integers); all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    // The flags QEMU asks for itself: a TAP, no packet info, with virtio-net headers.
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads (and may write back) one ifreq, which `req` is, on a descriptor
    // of /dev/net/tun that `tun` owns for the duration of the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(Error::io(context(), std::io::Error::last_os_error()));
    }
    Ok(tun.into())
}

/// Makes `dir` 0700 again: nobody but corrald enters while a VM's files are being made.
pub(crate) fn make_private(dir: &Path) -> Result<(), Error> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("chmod 700 {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn private_files_and_sockets_are_0600_and_a_stale_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ram");
        std::fs::write(&path, b"old guest memory").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_private(&path, None, "guest RAM file").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.len()), (0o600, 0));

        let sock = dir.path().join("qmp.sock");
        let _listener = bind_socket(&sock).unwrap();
        assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_symlink_in_place_of_a_private_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("qemu.pid");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        create_private(&link, None, "pid file").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
    }
}
