//! corrald's data and run directories: created private, and refused when someone else owns
//! them or could write into them (they hold the store, the node key, the API socket and every
//! VM's files, so whoever can write there controls what corrald — often root — runs and reads).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use corral_hypervisor::FileOwner;
use nix::unistd::Gid;

/// A directory corrald will not use, or could not prepare.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// Making the directory (or a file in it), or setting its mode or group, failed.
    #[error("preparing {dir}: {source}")]
    Io {
        /// The directory or file.
        dir: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// Something other than a directory is in the way.
    #[error("{dir} is not a directory")]
    NotADirectory {
        /// The path.
        dir: PathBuf,
    },
    /// Another user owns it: they could replace anything corrald keeps there.
    #[error(
        "refusing {what} {dir}: it is owned by uid {owner}, not by corrald's uid {uid}, so that user \
         could replace what corrald keeps there; use a directory of your own \
         (chown {uid} {dir}, or choose another with {flag})"
    )]
    NotOwned {
        /// `data directory` or `run directory`.
        what: &'static str,
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// corrald's effective uid.
        uid: u32,
        /// The flag that picks another.
        flag: &'static str,
    },
    /// Group or others may write (or, for the `/tmp` fallback, even read) it.
    #[error(
        "refusing {what} {dir}: its mode {mode:04o} lets {who}; make it private (chmod 0700 {dir}) \
         or choose another with {flag}"
    )]
    TooOpen {
        /// `data directory` or `run directory`.
        what: &'static str,
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Who may do what it should not.
        who: &'static str,
        /// The flag that picks another.
        flag: &'static str,
    },
}

/// Which of corrald's directories, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// `--data-dir`.
    Data,
    /// `--run-dir`.
    Run,
    /// The `/tmp/corral-<uid>` run directory used when there is no `$XDG_RUNTIME_DIR`: in a
    /// directory everyone can write, so it must be exactly private (0700).
    RunFallback,
    /// A `--storage-pool` directory: volume files, as in the data directory's `volumes/`.
    Pool,
}

impl Which {
    fn what(self) -> &'static str {
        match self {
            Which::Data => "data directory",
            Which::Run | Which::RunFallback => "run directory",
            Which::Pool => "storage pool directory",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Which::Data => "--data-dir",
            Which::Run | Which::RunFallback => "--run-dir",
            Which::Pool => "--storage-pool",
        }
    }
}

/// Creates `dir` (mode 0700, parents too) when missing; refuses it when another user owns it
/// or group or others may write it (for [`Which::RunFallback`]: when group or others have any
/// access). Then sets it to 0700, or 0710 with `qemu`'s group when QEMU runs as that user and
/// must pass through to its files.
pub fn prepare(dir: &Path, which: Which, qemu: Option<FileOwner>) -> Result<(), DirError> {
    let io = |source| DirError::Io {
        dir: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let meta = std::fs::metadata(dir).map_err(io)?;
    if !meta.is_dir() {
        return Err(DirError::NotADirectory {
            dir: dir.to_owned(),
        });
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(DirError::NotOwned {
            what: which.what(),
            dir: dir.to_owned(),
            owner: meta.uid(),
            uid,
            flag: which.flag(),
        });
    }
    let mode = meta.mode() & 0o7777;
    let (forbidden, who) = match which {
        Which::RunFallback => (0o077, "group or others in"),
        Which::Data | Which::Run | Which::Pool => (0o022, "group or others write into it"),
    };
    if mode & forbidden != 0 {
        return Err(DirError::TooOpen {
            what: which.what(),
            dir: dir.to_owned(),
            mode,
            who,
            flag: which.flag(),
        });
    }
    share_search(dir, qemu).map_err(io)
}

/// Inside a prepared data directory: the store's files private to corrald (QEMU's group
/// passes through the directory; the store holds every spec, cloud-init user data included),
/// and the directories of what QEMU opens — image blobs (backing files, kernels), volumes and
/// cloud-init seeds — searchable by its group. `sqlite` says whether the store is the
/// SQLite file here (with `--store etcd` no store file is made).
pub fn prepare_data_layout(
    data_dir: &Path,
    qemu: Option<FileOwner>,
    sqlite: bool,
) -> Result<(), DirError> {
    for file in ["state.db", "state.db-wal", "state.db-shm"] {
        let path = data_dir.join(file);
        if (sqlite && file == "state.db") || path.exists() {
            private_file(&path).map_err(|source| DirError::Io { dir: path, source })?;
        }
    }
    for dir in ["images", "images/blake3", "volumes", "seeds"] {
        let dir = data_dir.join(dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|()| share_search(&dir, qemu))
            .map_err(|source| DirError::Io { dir, source })?;
    }
    Ok(())
}

/// Makes `file` private to corrald: created empty with mode 0600 when missing (SQLite then
/// gives its journal files the same mode), its group and other bits cleared when present.
pub fn private_file(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(file)?;
    let mode = std::fs::metadata(file)?.mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// Sets `dir` to 0700, or to 0710 with `qemu`'s group: QEMU may pass through to the files it
/// owns below, and never lists or writes the directory.
pub fn share_search(dir: &Path, qemu: Option<FileOwner>) -> std::io::Result<()> {
    let mode = match qemu {
        Some(owner) => {
            nix::unistd::chown(dir, None, Some(Gid::from_raw(owner.gid)))?;
            0o710
        }
        None => 0o700,
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(dir: &Path) -> u32 {
        std::fs::metadata(dir).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_missing_dir_is_created_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        prepare(&dir, Which::Data, None).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
    }

    #[test]
    fn a_dir_others_can_write_is_refused_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare(tmp.path(), Which::Data, None)
            .unwrap_err()
            .to_string();
        let dir = tmp.path().display();
        assert!(
            err.contains(&format!("refusing data directory {dir}: its mode 0777"))
                && err.contains(&format!("chmod 0700 {dir}"))
                && err.contains("--data-dir"),
            "{err}"
        );
        assert_eq!(
            mode(tmp.path()),
            0o777,
            "a refused directory is left as it was"
        );
    }

    #[test]
    fn the_tmp_fallback_must_be_exactly_private() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(tmp.path(), Which::Run, None).unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = prepare(tmp.path(), Which::RunFallback, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode 0755 lets group or others in"), "{err}");
    }

    #[test]
    fn qemus_group_may_only_pass_through() {
        let tmp = tempfile::tempdir().unwrap();
        let gid = nix::unistd::getegid().as_raw();
        let uid = nix::unistd::geteuid().as_raw();
        prepare(tmp.path(), Which::Run, Some(FileOwner { uid, gid })).unwrap();
        assert_eq!(mode(tmp.path()), 0o710);
        assert_eq!(std::fs::metadata(tmp.path()).unwrap().gid(), gid);
    }
}
