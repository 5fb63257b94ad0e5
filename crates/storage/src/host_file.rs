//! Host files that specs name (an image's source path, a VM's kernel, initrd or boot disk),
//! opened under the rules of [`HostPaths`].
//!
//! A file below a directory the operator allowed (`corrald --host-path-allow DIR`) is opened
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` relative to that directory, whoever
//! asks: `..` cannot leave it and no symlink is followed, so swapping a file for a symlink
//! after admission makes the open fail instead of reaching out. Other paths only an admin may
//! name. For everyone the opened file must be a regular file, not on a kernel pseudo file
//! system, and not corrald's own state (data and run directories, other VMs' RAM files); blobs
//! of the image store are the one part of the data directory anyone may name.
//!
//! What is checked is the opened descriptor, and that descriptor is what the caller reads (or
//! hands to QEMU), so nothing can change between the check and the use.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

/// Whether a caller may name host files outside the allowed directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostAccess {
    /// Any regular file that is not corrald's own state.
    Admin,
    /// Only files below the allowed directories (and image-store blobs).
    #[default]
    Confined,
}

/// Why a host path was refused. Messages name the path and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum HostPathError {
    /// Outside every allowed directory, and the caller is not an admin.
    #[error(
        "{path}: only an admin may name host files outside the allowed directories ({allowed}); \
         import the file as an image or boot a volume instead"
    )]
    NotAllowed {
        /// The path as given.
        path: PathBuf,
        /// The allowed directories, listed for the message.
        allowed: String,
    },
    /// `..` would leave the allowed directory.
    #[error("{path}: leaves the allowed directory {dir} (a '..' component escapes it)")]
    Escapes {
        /// The path as given.
        path: PathBuf,
        /// The allowed directory.
        dir: PathBuf,
    },
    /// A component below the allowed directory is a symlink.
    #[error("{path}: is or passes through a symbolic link; name the file itself")]
    Symlink {
        /// The path as given.
        path: PathBuf,
    },
    /// Not a regular file.
    #[error("{path}: is a {kind}, not a regular file")]
    NotRegular {
        /// The path as given.
        path: PathBuf,
        /// What it is (`directory`, `character device`, `FIFO` …).
        kind: &'static str,
    },
    /// Not a directory where one is needed.
    #[error("{path}: is a {kind}, not a directory")]
    NotDirectory {
        /// The path as given.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A file no caller may name.
    #[error("{path}: refused, it is {what}")]
    Refused {
        /// The path as given.
        path: PathBuf,
        /// What the file is (`corrald's own state` …).
        what: &'static str,
    },
    /// It could not be opened.
    #[error("{path}: {source}")]
    Open {
        /// The path as given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A host file opened and checked by [`HostPaths::open`], open for reading.
#[derive(Debug)]
pub struct HostFile {
    /// The open file.
    pub file: File,
    /// Where it really is (after the kernel resolved the path).
    pub real_path: PathBuf,
}

/// A host directory opened and checked by [`HostPaths::open_dir`].
#[derive(Debug)]
pub struct HostDir {
    /// The directory, open as `O_PATH`.
    pub fd: OwnedFd,
    /// Where it really is (after the kernel resolved the path).
    pub real_path: PathBuf,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

/// The rules for host paths on one daemon.
#[derive(Debug, Clone, Default)]
pub struct HostPaths {
    allowed: Vec<PathBuf>,
    private: Vec<PathBuf>,
    blobs: Option<PathBuf>,
}

/// File systems whose "regular files" are kernel interfaces (`/proc/self/environ` …).
const PSEUDO_FS: &[u64] = &[
    0x9fa0,      // proc
    0x6265_6572, // sysfs
    0x6462_6720, // debugfs
    0x7472_6163, // tracefs
    0x7363_6673, // securityfs
    0x0027_e0eb, // cgroup
    0x6367_7270, // cgroup2
    0xcafe_4a11, // bpf
    0x6265_6570, // configfs
    0xf97c_ff8c, // selinuxfs
    0xde5e_81e4, // efivarfs
];

/// Guest RAM files of introspectable VMs: `/dev/shm/corral-<uid>`.
const RAM_FILE_PREFIX: &str = "/dev/shm/corral-";

impl HostPaths {
    /// Rules with no allowed directory: only admins name host files.
    pub fn new() -> Self {
        HostPaths::default()
    }

    /// Allows every caller the files below `dir` (an absolute path; the operator's, so
    /// symlinks in it are followed once, when it is opened).
    pub fn allow(mut self, dir: impl Into<PathBuf>) -> Self {
        self.allowed.push(normal(&dir.into()));
        self
    }

    /// Refuses every file below `dir` (corrald's data and run directories) to every caller,
    /// except blobs of the image store at `blobs`, when given.
    pub fn private(mut self, dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        self.private
            .push(std::fs::canonicalize(&dir).unwrap_or_else(|_| normal(&dir)));
        self
    }

    /// Refuses these files (a TLS key, a token file) to every caller.
    pub fn private_files<P: AsRef<Path>>(self, files: impl IntoIterator<Item = P>) -> Self {
        files
            .into_iter()
            .fold(self, |rules, file| rules.private(file.as_ref()))
    }

    /// The image store's blob directory, whose files anyone may name.
    pub fn store_blobs(mut self, dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        self.blobs = Some(std::fs::canonicalize(&dir).unwrap_or_else(|_| normal(&dir)));
        self
    }

    /// The allowed directories.
    pub fn allowed(&self) -> &[PathBuf] {
        &self.allowed
    }

    /// Whether `path` is opened beneath an allowed directory (whoever names it).
    pub fn is_confined(&self, path: &Path) -> bool {
        self.allowed.iter().any(|dir| path.starts_with(dir))
    }

    /// Opens `path` for reading under these rules.
    pub fn open(&self, path: &Path, access: HostAccess) -> Result<HostFile, HostPathError> {
        let (fd, beneath) = self.open_path(path, access)?;
        let open_err = |source| HostPathError::Open {
            path: path.to_owned(),
            source,
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| open_err(e.into()))?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile {
            return Err(HostPathError::NotRegular {
                path: path.to_owned(),
                kind: kind_name(kind),
            });
        }
        // A hard link made in an allowed directory would reach a file outside it whatever
        // the resolve flags say; a file with one name cannot.
        if beneath && stat.st_nlink > 1 {
            return Err(HostPathError::Refused {
                path: path.to_owned(),
                what: "a file with other hard links, which could lead outside the allowed directory (copy it instead)",
            });
        }
        let fs = rustix::fs::fstatfs(&fd).map_err(|e| open_err(e.into()))?;
        #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
        if PSEUDO_FS.contains(&(fs.f_type as u64)) {
            return Err(HostPathError::Refused {
                path: path.to_owned(),
                what: "a kernel interface (proc, sys …), not a file",
            });
        }
        let proc_path = format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&fd));
        let real_path = std::fs::read_link(&proc_path).map_err(open_err)?;
        self.check_private(path, &real_path)?;
        // Reopening through the descriptor reads the very file that was checked; a regular
        // file opens without side effects (unlike a FIFO or a device).
        let file = File::open(&proc_path).map_err(open_err)?;
        Ok(HostFile { file, real_path })
    }

    /// Opens the directory `path` (a share the guest mounts) under these rules, as an
    /// `O_PATH` descriptor: beneath an allowed directory for everyone, anywhere for an admin.
    /// It must be a directory on a real file system that neither is inside corrald's own state
    /// nor holds it (sharing `/var/lib` would hand the guest corrald's store).
    pub fn open_dir(&self, path: &Path, access: HostAccess) -> Result<HostDir, HostPathError> {
        let (fd, _) = self.open_path(path, access)?;
        let open_err = |source| HostPathError::Open {
            path: path.to_owned(),
            source,
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| open_err(e.into()))?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::Directory {
            return Err(HostPathError::NotDirectory {
                path: path.to_owned(),
                kind: kind_name(kind),
            });
        }
        let fs = rustix::fs::fstatfs(&fd).map_err(|e| open_err(e.into()))?;
        #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
        if PSEUDO_FS.contains(&(fs.f_type as u64)) {
            return Err(HostPathError::Refused {
                path: path.to_owned(),
                what: "a kernel interface (proc, sys …), not a folder",
            });
        }
        let proc_path = format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&fd));
        let real_path = std::fs::read_link(&proc_path).map_err(open_err)?;
        if real_path.starts_with("/dev") {
            return Err(HostPathError::Refused {
                path: path.to_owned(),
                what: "the host's device folder",
            });
        }
        if self.private.iter().any(|dir| dir.starts_with(&real_path))
            || self
                .blobs
                .as_ref()
                .is_some_and(|b| b.starts_with(&real_path) || real_path.starts_with(b))
        {
            return Err(HostPathError::Refused {
                path: path.to_owned(),
                what: "a folder holding corrald's own state (its data or run directory)",
            });
        }
        self.check_private(path, &real_path)?;
        Ok(HostDir {
            fd,
            real_path,
            uid: stat.st_uid,
            gid: stat.st_gid,
        })
    }

    /// The file as an `O_PATH` descriptor, and whether it was opened beneath an allowed
    /// directory.
    fn open_path(&self, path: &Path, access: HostAccess) -> Result<(OwnedFd, bool), HostPathError> {
        if !path.is_absolute() {
            return Err(HostPathError::Open {
                path: path.to_owned(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not an absolute path"),
            });
        }
        if let Some(dir) = self.allowed.iter().find(|dir| path.starts_with(dir)) {
            let rel = path.strip_prefix(dir).unwrap_or(path);
            return Ok((beneath(dir, rel, path)?, true));
        }
        if let Some(blobs) = &self.blobs {
            if let Ok(rel) = path.strip_prefix(blobs) {
                return Ok((beneath(blobs, rel, path)?, false));
            }
        }
        match access {
            HostAccess::Admin => {
                rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
                    .map(|fd| (fd, false))
                    .map_err(|e| HostPathError::Open {
                        path: path.to_owned(),
                        source: e.into(),
                    })
            }
            HostAccess::Confined => Err(HostPathError::NotAllowed {
                path: path.to_owned(),
                allowed: if self.allowed.is_empty() {
                    "none: corrald runs without --host-path-allow".to_owned()
                } else {
                    self.allowed
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }),
        }
    }

    fn check_private(&self, path: &Path, real: &Path) -> Result<(), HostPathError> {
        let refused = |what| {
            Err(HostPathError::Refused {
                path: path.to_owned(),
                what,
            })
        };
        if real
            .as_os_str()
            .as_encoded_bytes()
            .starts_with(RAM_FILE_PREFIX.as_bytes())
        {
            return refused("a VM's guest RAM");
        }
        let blob = self
            .blobs
            .as_ref()
            .is_some_and(|b| real.parent() == Some(b.as_path()));
        if !blob && self.private.iter().any(|dir| real.starts_with(dir)) {
            return refused("corrald's own state (its data or run directory)");
        }
        Ok(())
    }
}

/// Opens `rel` beneath `dir` without following any symlink or leaving `dir`.
fn beneath(dir: &Path, rel: &Path, path: &Path) -> Result<OwnedFd, HostPathError> {
    let open_err = |source: io::Error| HostPathError::Open {
        path: path.to_owned(),
        source,
    };
    let dirfd = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| open_err(e.into()))?;
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    rustix::fs::openat2(
        dirfd.as_fd(),
        rel,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        resolve,
    )
    .map_err(|e| match e {
        rustix::io::Errno::XDEV => HostPathError::Escapes {
            path: path.to_owned(),
            dir: dir.to_owned(),
        },
        rustix::io::Errno::LOOP => HostPathError::Symlink {
            path: path.to_owned(),
        },
        e => open_err(e.into()),
    })
}

/// `path` without `.` components and repeated separators (`..` is kept: only the kernel,
/// beneath the allowed directory, decides what it means).
fn normal(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Directory => "directory",
        FileType::RegularFile => "regular file",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::Symlink => "symbolic link",
        _ => "special file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn setup() -> (tempfile::TempDir, HostPaths) {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        let data = dir.path().join("data");
        std::fs::create_dir_all(allowed.join("sub")).unwrap();
        std::fs::create_dir_all(data.join("images/blake3")).unwrap();
        std::fs::write(allowed.join("sub/ok.raw"), b"fine").unwrap();
        std::fs::write(data.join("state.db"), b"secret").unwrap();
        std::fs::write(data.join("images/blake3/ab"), b"blob").unwrap();
        std::os::unix::fs::symlink(data.join("state.db"), allowed.join("link")).unwrap();
        nix_mkfifo(&allowed.join("fifo"));
        let rules = HostPaths::new()
            .allow(&allowed)
            .private(&data)
            .store_blobs(data.join("images/blake3"));
        (dir, rules)
    }

    fn nix_mkfifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    #[test]
    fn shared_folders_are_directories_beneath_allowed_dirs_away_from_corralds_state() {
        let (dir, rules) = setup();
        let allowed = dir.path().join("allowed");
        let ok = rules
            .open_dir(&allowed.join("sub"), HostAccess::Confined)
            .unwrap();
        assert!(ok.real_path.ends_with("allowed/sub"));
        let e = rules
            .open_dir(Path::new("/etc"), HostAccess::Confined)
            .unwrap_err();
        assert!(matches!(e, HostPathError::NotAllowed { .. }), "{e}");
        let e = rules
            .open_dir(&allowed.join("sub/ok.raw"), HostAccess::Confined)
            .unwrap_err();
        assert!(
            e.to_string()
                .ends_with("is a regular file, not a directory"),
            "{e}"
        );
        let e = rules
            .open_dir(&allowed.join("link"), HostAccess::Admin)
            .unwrap_err();
        assert!(matches!(e, HostPathError::Symlink { .. }), "{e}");
        for held in [dir.path(), &dir.path().join("data/images")] {
            let e = rules.open_dir(held, HostAccess::Admin).unwrap_err();
            assert!(e.to_string().contains("corrald's own state"), "{e}");
        }
        let e = rules
            .open_dir(Path::new("/proc"), HostAccess::Admin)
            .unwrap_err();
        assert!(e.to_string().contains("kernel interface"), "{e}");
        rules
            .open_dir(Path::new("/etc"), HostAccess::Admin)
            .unwrap();
    }

    #[test]
    fn confined_callers_open_only_regular_files_beneath_allowed_dirs() {
        let (dir, rules) = setup();
        let allowed = dir.path().join("allowed");
        let mut text = String::new();
        rules
            .open(&allowed.join("sub/ok.raw"), HostAccess::Confined)
            .unwrap()
            .file
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "fine");
        let err = |p: PathBuf, access| rules.open(&p, access).unwrap_err();
        let e = err(allowed.join("link"), HostAccess::Admin);
        assert!(matches!(e, HostPathError::Symlink { .. }), "{e}");
        let e = err(
            allowed.join("sub/../../data/state.db"),
            HostAccess::Confined,
        );
        assert!(matches!(e, HostPathError::Escapes { .. }), "{e}");
        let e = err(allowed.join("fifo"), HostAccess::Confined);
        assert!(
            e.to_string().ends_with("is a FIFO, not a regular file"),
            "{e}"
        );
        std::fs::hard_link(dir.path().join("data/state.db"), allowed.join("hard")).unwrap();
        let e = err(allowed.join("hard"), HostAccess::Confined);
        assert!(e.to_string().contains("hard links"), "{e}");
        let e = err(allowed.join("sub"), HostAccess::Confined);
        assert!(
            matches!(
                e,
                HostPathError::NotRegular {
                    kind: "directory",
                    ..
                }
            ),
            "{e}"
        );
        let e = err("/etc/hostname".into(), HostAccess::Confined);
        assert!(matches!(e, HostPathError::NotAllowed { .. }), "{e}");
        assert!(e.to_string().contains(allowed.to_str().unwrap()), "{e}");
    }

    #[test]
    fn nobody_opens_corralds_state_pseudo_files_or_devices() {
        let (dir, rules) = setup();
        let data = dir.path().join("data");
        let e = rules
            .open(&data.join("state.db"), HostAccess::Admin)
            .unwrap_err();
        assert!(matches!(e, HostPathError::Refused { .. }), "{e}");
        let e = rules
            .open(Path::new("/proc/self/environ"), HostAccess::Admin)
            .unwrap_err();
        assert!(e.to_string().contains("kernel interface"), "{e}");
        let e = rules
            .open(Path::new("/dev/zero"), HostAccess::Admin)
            .unwrap_err();
        assert!(
            matches!(
                e,
                HostPathError::NotRegular {
                    kind: "character device",
                    ..
                }
            ),
            "{e}"
        );
        let blob = data.join("images/blake3/ab");
        assert!(rules.open(&blob, HostAccess::Confined).is_ok());
        assert!(
            rules
                .open(Path::new("/etc/hostname"), HostAccess::Admin)
                .is_ok()
        );
    }
}
