//! Disk images built from distribution packages: `debian_build.sh` (mmdebstrap, syslinux,
//! mkfs.ext4) run with a fixed argument vector, its outputs kept in a cache directory keyed by
//! everything that decides them.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

const SCRIPT: &str = include_str!("debian_build.sh");
/// How many of the build's last output lines an error carries.
const TAIL_LINES: usize = 40;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// Packages on top of the base set. Callers validate the names (no leading `-`).
    pub packages: Vec<String>,
    /// The disk's size in bytes.
    pub size: u64,
    /// The package mirror, e.g. `http://deb.debian.org/debian`.
    pub mirror: String,
}

impl BuildRequest {
    /// The cache key: a BLAKE3 over the build script and every input, packages sorted.
    pub fn key(&self) -> String {
        let mut packages = self.packages.clone();
        packages.sort();
        packages.dedup();
        let mut h = blake3::Hasher::new();
        for part in [SCRIPT, &self.suite, &self.size.to_string(), &self.mirror]
            .into_iter()
            .chain(packages.iter().map(String::as_str))
        {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().to_hex().to_string()
    }
}

/// A built image in the cache.
#[derive(Debug, Clone)]
pub struct Built {
    /// The qcow2 disk.
    pub image: PathBuf,
    /// Every installed package, `name=version`, sorted.
    pub packages: Vec<String>,
    /// Whether it came from the cache rather than a build just now.
    pub cached: bool,
}

/// A build that did not produce an image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file or directory of the cache could not be made or read.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The build ran and failed; `tail` is its last output.
    #[error("the image build failed ({status}); its last output:\n{tail}")]
    Failed {
        /// How the script ended.
        status: ExitStatus,
        /// Its last lines of output.
        tail: String,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> BuildError {
    let context = context.into();
    move |source| BuildError::Io { context, source }
}

/// Builds the image `req` describes under `cache/<key>/`, or returns the one already there.
/// `progress` sees each line the build prints. Needs root or unprivileged user namespaces
/// (mmdebstrap's `auto` mode), and mmdebstrap, syslinux, mtools, dosfstools, e2fsprogs and
/// qemu-img on `PATH`.
pub fn build_image(
    req: &BuildRequest,
    cache: &Path,
    mut progress: impl FnMut(&str),
) -> Result<Built, BuildError> {
    let dir = cache.join(req.key());
    let (image, list) = (dir.join("image.qcow2"), dir.join("packages.tsv"));
    // The script moves packages.tsv in before image.qcow2: an image means a complete entry.
    if image.is_file() {
        return Ok(Built {
            packages: read_packages(&list)?,
            image,
            cached: true,
        });
    }
    fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let script = dir.join("build.sh");
    fs::write(&script, SCRIPT).map_err(io(format!("writing {}", script.display())))?;
    let mut child = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .arg(&req.suite)
        .arg(req.size.to_string())
        .arg(&req.mirror)
        .args(&req.packages)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("starting bash for the image build"))?;
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line.map_err(io("reading the image build's output"))?;
            progress(&line);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child.wait().map_err(io("waiting for the image build"))?;
    if !status.success() || !image.is_file() {
        return Err(BuildError::Failed {
            status,
            tail: Vec::from(tail).join("\n"),
        });
    }
    Ok(Built {
        packages: read_packages(&list)?,
        image,
        cached: false,
    })
}

fn read_packages(path: &Path) -> Result<Vec<String>, BuildError> {
    let text = fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?;
    let mut packages: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(name, version)| format!("{name}={version}"))
        .collect();
    packages.sort();
    Ok(packages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(packages: &[&str]) -> BuildRequest {
        BuildRequest {
            suite: "bookworm".into(),
            packages: packages.iter().map(|p| p.to_string()).collect(),
            size: 4 << 30,
            mirror: "http://deb.debian.org/debian".into(),
        }
    }

    #[test]
    fn the_key_ignores_package_order_and_repeats_but_not_packages() {
        assert_eq!(
            req(&["curl", "git"]).key(),
            req(&["git", "curl", "git"]).key()
        );
        assert_ne!(req(&["curl"]).key(), req(&["curl", "git"]).key());
        let mut bigger = req(&[]);
        bigger.size = 8 << 30;
        assert_ne!(req(&[]).key(), bigger.key());
    }

    #[test]
    fn a_cached_entry_is_reused_without_running_anything() {
        let cache = tempfile::tempdir().unwrap();
        let r = req(&["curl"]);
        let dir = cache.path().join(r.key());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("packages.tsv"), "curl\t7.88\nbash\t5.2\n").unwrap();
        fs::write(dir.join("image.qcow2"), b"qcow").unwrap();
        let built = build_image(&r, cache.path(), |_| panic!("no build expected")).unwrap();
        assert!(built.cached);
        assert_eq!(built.packages, ["bash=5.2", "curl=7.88"]);
    }
}
