//! A typed wrapper around `qemu-img`: arguments as a vector (never a shell), JSON output parsed
//! into types, failures as [`QemuImgError`] variants that say what to do.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

/// Why a `qemu-img` call failed.
#[derive(Debug, thiserror::Error)]
pub enum QemuImgError {
    /// The executable is not there.
    #[error(
        "qemu-img not found ({binary}): install the Debian package qemu-utils (apt-get install qemu-utils) or set the qemu-img path"
    )]
    Missing {
        /// What was run.
        binary: String,
    },
    /// It ran and reported an error.
    #[error("qemu-img {subcommand} {path} failed: {stderr}")]
    Failed {
        /// The subcommand, e.g. `create`.
        subcommand: &'static str,
        /// The file it worked on.
        path: String,
        /// What qemu-img printed, trimmed.
        stderr: String,
    },
    /// Its output was not what this wrapper understands.
    #[error("qemu-img {subcommand} printed output that does not parse: {reason}")]
    BadOutput {
        /// The subcommand.
        subcommand: &'static str,
        /// Why.
        reason: String,
    },
    /// It could not be started for another reason.
    #[error("cannot run {binary}: {source}")]
    Spawn {
        /// What was run.
        binary: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What `qemu-img info --output=json` says about an image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    /// The format qemu-img detected (`qcow2`, `raw` …).
    pub format: String,
    /// The size the guest sees, in bytes.
    pub virtual_size: u64,
    /// Bytes the file takes on the host.
    #[serde(default)]
    pub actual_size: Option<u64>,
    /// The backing file as written in the image header.
    #[serde(default)]
    pub backing_filename: Option<String>,
    /// The backing file resolved against the image's directory.
    #[serde(default)]
    pub full_backing_filename: Option<String>,
    /// The backing file's format as recorded in the header.
    #[serde(default)]
    pub backing_filename_format: Option<String>,
    /// Internal snapshots (qcow2).
    #[serde(default)]
    pub snapshots: Vec<SnapshotInfo>,
    /// What only this format has (qcow2: an external data file …).
    #[serde(default)]
    pub format_specific: Option<FormatSpecific>,
}

/// `format-specific` in `qemu-img info --output=json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FormatSpecific {
    /// The format it describes.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its fields.
    #[serde(default)]
    pub data: FormatSpecificData,
}

/// The fields of [`FormatSpecific`] that Corral reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FormatSpecificData {
    /// A qcow2 image's external data file: where its guest data really lives.
    #[serde(default)]
    pub data_file: Option<String>,
}

/// One internal snapshot of a qcow2 image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotInfo {
    /// Its name (the tag).
    pub name: String,
    /// Bytes of saved VM state (0 for a disk-only snapshot).
    #[serde(default)]
    pub vm_state_size: u64,
}

/// The `qemu-img` executable to run.
#[derive(Debug, Clone)]
pub struct QemuImg {
    binary: PathBuf,
}

impl Default for QemuImg {
    fn default() -> Self {
        QemuImg::new("qemu-img")
    }
}

impl QemuImg {
    /// Runs `binary` (a path, or a name looked up in `PATH`).
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        QemuImg {
            binary: binary.into(),
        }
    }

    /// The executable.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Checks that qemu-img can be run at all (so a missing one is reported before any work).
    pub fn check(&self) -> Result<(), QemuImgError> {
        self.run("--version", Path::new(""), &["--version".into()])
            .map(drop)
    }

    /// Reads an image's header (never its backing file). With `format`, the format is not
    /// probed. The image may be hostile: qemu-img runs with [`INFO_LIMITS`].
    pub fn info(&self, path: &Path, format: Option<&str>) -> Result<ImageInfo, QemuImgError> {
        let mut args = vec!["info".into(), "--output=json".into(), "-U".into()];
        if let Some(f) = format {
            args.extend(["-f".into(), f.into()]);
        }
        args.push(path.into());
        let out = self.run_limited("info", path, &args, Some(INFO_LIMITS))?;
        serde_json::from_slice(&out).map_err(|e| QemuImgError::BadOutput {
            subcommand: "info",
            reason: e.to_string(),
        })
    }

    /// Creates an image of `size` bytes, or a thin qcow2 on `backing` (path and its format).
    pub fn create(
        &self,
        path: &Path,
        format: &str,
        size: Option<u64>,
        backing: Option<(&Path, &str)>,
    ) -> Result<(), QemuImgError> {
        let mut args: Vec<std::ffi::OsString> = vec!["create".into(), "-q".into()];
        args.extend(["-f".into(), format.into()]);
        if let Some((file, fmt)) = backing {
            args.extend(["-b".into(), file.into(), "-F".into(), fmt.into()]);
        }
        args.push(path.into());
        if let Some(size) = size {
            args.push(size.to_string().into());
        }
        // With a backing file qemu-img reads that image's header too.
        let limits = backing.map(|_| INFO_LIMITS);
        self.run_limited("create", path, &args, limits).map(drop)
    }

    /// Copies a qcow2 image and everything under it (its backing chain) into one standalone
    /// qcow2 at `to`, sharing the file with a QEMU that has it open (`-U`): the caller makes
    /// sure nothing writes it meanwhile (the guest is stopped and its disk flushed).
    pub fn flatten(&self, from: &Path, to: &Path) -> Result<(), QemuImgError> {
        let args = vec![
            "convert".into(),
            "-q".into(),
            "-U".into(),
            "-f".into(),
            "qcow2".into(),
            "-O".into(),
            "qcow2".into(),
            from.into(),
            to.into(),
        ];
        self.run("convert", from, &args).map(drop)
    }

    /// Grows an image (never shrinks: qemu-img refuses without `--shrink`).
    pub fn resize(&self, path: &Path, format: &str, size: u64) -> Result<(), QemuImgError> {
        let args = vec![
            "resize".into(),
            "-q".into(),
            "-f".into(),
            format.into(),
            path.into(),
            size.to_string().into(),
        ];
        self.run("resize", path, &args).map(drop)
    }

    /// Internal snapshot operations on a stopped qcow2 image: `-c` create, `-a` apply, `-d`
    /// delete.
    pub fn snapshot(&self, path: &Path, op: SnapshotOp, tag: &str) -> Result<(), QemuImgError> {
        let flag = match op {
            SnapshotOp::Create => "-c",
            SnapshotOp::Apply => "-a",
            SnapshotOp::Delete => "-d",
        };
        // `snapshot` has no `-f`: `--image-opts` names the driver so the format is not probed,
        // with the path's commas doubled so it cannot add options.
        let mut opts = std::ffi::OsString::from("driver=qcow2,file.filename=");
        opts.push(escape_commas(path));
        let args = vec![
            "snapshot".into(),
            "-q".into(),
            "--image-opts".into(),
            flag.into(),
            tag.into(),
            opts,
        ];
        self.run("snapshot", path, &args).map(drop)
    }

    fn run(
        &self,
        subcommand: &'static str,
        path: &Path,
        args: &[std::ffi::OsString],
    ) -> Result<Vec<u8>, QemuImgError> {
        self.run_limited(subcommand, path, args, None)
    }

    fn run_limited(
        &self,
        subcommand: &'static str,
        path: &Path,
        args: &[std::ffi::OsString],
        limits: Option<Limits>,
    ) -> Result<Vec<u8>, QemuImgError> {
        let binary = self.binary.display().to_string();
        let mut command = Command::new(&self.binary);
        command.args(args).env("LC_ALL", "C");
        if let Some(limits) = limits {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the forked child before exec and only calls
            // setrlimit(2), which is async-signal-safe; it touches no shared memory.
            unsafe {
                command.pre_exec(move || limits.apply());
            }
        }
        let out = command.output().map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => QemuImgError::Missing {
                binary: binary.clone(),
            },
            _ => QemuImgError::Spawn {
                binary: binary.clone(),
                source,
            },
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            let stderr = stderr
                .strip_prefix("qemu-img: ")
                .unwrap_or(&stderr)
                .to_owned();
            return Err(QemuImgError::Failed {
                subcommand,
                path: path.display().to_string(),
                stderr,
            });
        }
        Ok(out.stdout)
    }
}

/// Resource limits for a qemu-img that parses an untrusted image (as QEMU's security notes
/// advise): a crafted header cannot make it take the host's memory or spin for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Address space, bytes (`RLIMIT_AS`).
    pub address_space: u64,
    /// CPU time, seconds (`RLIMIT_CPU`).
    pub cpu_seconds: u64,
}

/// The limits `qemu-img info` runs under: 1 GiB of address space, 30 s of CPU.
pub const INFO_LIMITS: Limits = Limits {
    address_space: 1 << 30,
    cpu_seconds: 30,
};

impl Limits {
    fn apply(&self) -> std::io::Result<()> {
        use rustix::process::{Resource, Rlimit, setrlimit};
        let limit = |n| Rlimit {
            current: Some(n),
            maximum: Some(n),
        };
        setrlimit(Resource::As, limit(self.address_space))?;
        setrlimit(Resource::Cpu, limit(self.cpu_seconds))?;
        Ok(())
    }
}

fn escape_commas(path: &Path) -> std::ffi::OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// What [`QemuImg::snapshot`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOp {
    /// Take a snapshot.
    Create,
    /// Revert the image to it.
    Apply,
    /// Remove it (the image's other data stays).
    Delete,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_info_resize_snapshot_with_the_real_tool() {
        let dir = tempfile::tempdir().unwrap();
        let img = QemuImg::default();
        let base = dir.path().join("base,x.raw");
        img.create(&base, "raw", Some(1 << 20), None).unwrap();
        let top = dir.path().join("top,1.qcow2");
        img.create(&top, "qcow2", None, Some((&base, "raw")))
            .unwrap();
        let info = img.info(&top, Some("qcow2")).unwrap();
        assert_eq!(info.format, "qcow2");
        assert_eq!(info.virtual_size, 1 << 20);
        assert_eq!(
            info.full_backing_filename.as_deref(),
            Some(base.to_str().unwrap())
        );
        img.resize(&top, "qcow2", 2 << 20).unwrap();
        assert_eq!(img.info(&top, None).unwrap().virtual_size, 2 << 20);
        img.snapshot(&top, SnapshotOp::Create, "s1").unwrap();
        assert_eq!(img.info(&top, None).unwrap().snapshots[0].name, "s1");
        img.snapshot(&top, SnapshotOp::Delete, "s1").unwrap();
        assert!(img.info(&top, None).unwrap().snapshots.is_empty());
    }

    #[test]
    fn info_runs_under_its_limits() {
        // A qemu-img whose address space is too small to start fails instead of running.
        let dir = tempfile::tempdir().unwrap();
        let img = QemuImg::default();
        let path = dir.path().join("a.raw");
        img.create(&path, "raw", Some(1 << 20), None).unwrap();
        let tiny = Limits {
            address_space: 1 << 20,
            cpu_seconds: 30,
        };
        let args = ["info".into(), path.clone().into_os_string()];
        assert!(img.run_limited("info", &path, &args, Some(tiny)).is_err());
        assert!(
            img.run_limited("info", &path, &args, Some(INFO_LIMITS))
                .is_ok()
        );
    }

    #[test]
    fn typed_errors_for_a_missing_tool_and_a_failed_call() {
        let err = QemuImg::new("/nonexistent/qemu-img").check().unwrap_err();
        assert!(matches!(err, QemuImgError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("qemu-utils"), "{err}");
        let err = QemuImg::default()
            .info(Path::new("/nonexistent/disk"), None)
            .unwrap_err();
        assert!(
            matches!(
                err,
                QemuImgError::Failed {
                    subcommand: "info",
                    ..
                }
            ),
            "{err}"
        );
    }
}
