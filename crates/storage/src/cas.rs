//! The content-addressed image store: `<root>/blake3/<hex>`, files named by the BLAKE3 digest
//! of their bytes, read-only once stored.
//!
//! Bytes come in through a [`CasWriter`], which hashes while it writes (one pass over the
//! data) into `<root>/tmp/`, then renames the file into place: a reader never sees a partial
//! image, the same bytes imported twice are stored once, and an import that fails or is
//! dropped leaves nothing behind (a crash leaves a temp file, removed by [`Cas::open`]).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Buffer size for copying and hashing: large enough that syscalls do not dominate.
const CHUNK: usize = 1 << 20;

/// A BLAKE3 digest, written `blake3:<64 hex digits>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3:{}", self.hex())
    }
}

/// A string is not `blake3:<64 hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a digest: use blake3: and 64 hex digits")]
pub struct BadDigest(pub String);

impl FromStr for Digest {
    type Err = BadDigest;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix("blake3:").unwrap_or(s);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadDigest(s.to_owned()));
        }
        blake3::Hash::from_hex(hex.to_ascii_lowercase())
            .map(|h| Digest(*h.as_bytes()))
            .map_err(|_| BadDigest(s.to_owned()))
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// A file operation failed; `what` says which, with the path.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. `writing /var/lib/corral/images/tmp/import-…`.
        what: String,
        /// The cause (`No space left on device` …).
        #[source]
        source: io::Error,
    },
    /// The source ended before the size it announced.
    #[error("the upload ended after {got} bytes, {expected} were announced")]
    Truncated {
        /// Bytes announced.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> CasError {
    let what = what.into();
    move |source| CasError::Io { what, source }
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Where it is.
    pub path: PathBuf,
    /// Whether these bytes were already stored (this import added nothing).
    pub existed: bool,
}

/// The image store under one directory.
#[derive(Debug, Clone)]
pub struct Cas {
    root: PathBuf,
}

impl Cas {
    /// Opens (creating, mode 0700) `<root>/blake3` and `<root>/tmp`, and removes temp files an
    /// interrupted import left.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CasError> {
        let cas = Cas { root: root.into() };
        for dir in [cas.blobs_dir(), cas.tmp_dir()] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err(format!("creating {}", dir.display())))?;
        }
        if let Ok(entries) = fs::read_dir(cas.tmp_dir()) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(cas)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blake3")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where the blob with `digest` is (or would be).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// Whether `path` names a blob of this store (after resolving symlinks and `..`).
    pub fn holds(&self, path: &Path) -> bool {
        let (Ok(dir), Ok(file)) = (fs::canonicalize(self.blobs_dir()), fs::canonicalize(path))
        else {
            return false;
        };
        file.parent() == Some(dir.as_path())
    }

    /// A writer for new bytes, in a temp file of the store.
    pub fn writer(&self) -> Result<CasWriter, CasError> {
        let mut rand = [0u8; 8];
        getrandom::getrandom(&mut rand).map_err(|e| CasError::Io {
            what: "reading random bytes".into(),
            source: io::Error::other(e),
        })?;
        let name: String = rand.iter().map(|b| format!("{b:02x}")).collect();
        let path = self.tmp_dir().join(format!("import-{name}"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(format!("creating {}", path.display())))?;
        Ok(CasWriter {
            cas: self.clone(),
            file: Some(file),
            path,
            hasher: blake3::Hasher::new(),
            size: 0,
        })
    }

    /// Imports a file of this host, hashing while copying. `progress` is told the bytes
    /// copied so far.
    pub fn import_file(&self, src: &Path, progress: impl FnMut(u64)) -> Result<Blob, CasError> {
        let file = File::open(src).map_err(io_err(format!("opening {}", src.display())))?;
        let mut w = self.writer()?;
        w.copy_from(file, &src.display().to_string(), progress)?;
        w.commit()
    }

    /// Recomputes the digest of a stored blob; `Ok(false)` when it no longer matches.
    pub fn verify(&self, digest: &Digest) -> Result<bool, CasError> {
        Ok(hash_file(&self.path(digest))?.0 == *digest)
    }

    /// Removes a blob. Idempotent.
    pub fn remove(&self, digest: &Digest) -> Result<(), CasError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(format!("removing {}", path.display()))(e))
            }
            _ => Ok(()),
        }
    }
}

/// Bytes on their way into the store. Dropped without [`CasWriter::commit`], it removes its
/// temp file.
#[derive(Debug)]
pub struct CasWriter {
    cas: Cas,
    file: Option<File>,
    path: PathBuf,
    hasher: blake3::Hasher,
    size: u64,
}

impl CasWriter {
    /// Appends bytes (hashes them and writes them in the same pass).
    pub fn write_chunk(&mut self, data: &[u8]) -> Result<(), CasError> {
        let file = self.file.as_mut().expect("writer not committed");
        file.write_all(data)
            .map_err(io_err(format!("writing {}", self.path.display())))?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Copies everything from `src` (named `what` in errors).
    pub fn copy_from(
        &mut self,
        mut src: impl Read,
        what: &str,
        mut progress: impl FnMut(u64),
    ) -> Result<(), CasError> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(format!("reading {what}"))(e)),
            };
            self.write_chunk(&buf[..n])?;
            progress(self.size);
        }
    }

    /// The temp file (for checks such as `qemu-img info` before committing).
    pub fn temp_path(&self) -> &Path {
        &self.path
    }

    /// Flushes the bytes to disk (so the file can be inspected) and returns digest and size.
    pub fn finish(&mut self) -> Result<(Digest, u64), CasError> {
        if let Some(file) = &self.file {
            file.sync_all()
                .map_err(io_err(format!("writing {}", self.path.display())))?;
        }
        Ok((Digest(*self.hasher.finalize().as_bytes()), self.size))
    }

    /// Moves the bytes into the store under their digest (read-only, mode 0444). When the
    /// store already has them, the new copy is dropped.
    pub fn commit(mut self) -> Result<Blob, CasError> {
        let (digest, size) = self.finish()?;
        self.file = None;
        let dest = self.cas.path(&digest);
        if dest.exists() {
            let _ = fs::remove_file(&self.path);
            return Ok(Blob {
                digest,
                size,
                path: dest,
                existed: true,
            });
        }
        fs::set_permissions(&self.path, fs::Permissions::from_mode(0o444))
            .map_err(io_err(format!("protecting {}", self.path.display())))?;
        fs::rename(&self.path, &dest).map_err(io_err(format!(
            "moving {} to {}",
            self.path.display(),
            dest.display()
        )))?;
        if let Ok(dir) = File::open(self.cas.blobs_dir()) {
            let _ = dir.sync_all();
        }
        Ok(Blob {
            digest,
            size,
            path: dest,
            existed: false,
        })
    }
}

impl Drop for CasWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The BLAKE3 digest and size of a file.
pub fn hash_file(path: &Path) -> Result<(Digest, u64), CasError> {
    let file = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    hash_reader(file).map_err(io_err(format!("reading {}", path.display())))
}

/// The BLAKE3 digest and size of everything `src` yields (an already opened file).
pub fn hash_reader(mut src: impl Read) -> io::Result<(Digest, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((Digest(*hasher.finalize().as_bytes()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_dedupes_and_verify_catches_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path().join("images")).unwrap();
        let src = dir.path().join("a.img");
        fs::write(&src, vec![7u8; 3 * CHUNK + 5]).unwrap();
        let mut seen = 0;
        let a = cas.import_file(&src, |n| seen = n).unwrap();
        assert_eq!(seen, a.size);
        assert_eq!(a.size, 3 * CHUNK as u64 + 5);
        assert!(!a.existed);
        assert_eq!(
            a.digest,
            Digest(*blake3::hash(&fs::read(&src).unwrap()).as_bytes())
        );
        assert_eq!(
            fs::metadata(&a.path).unwrap().permissions().mode() & 0o777,
            0o444
        );
        let b = cas.import_file(&src, |_| {}).unwrap();
        assert!(b.existed);
        assert_eq!(a.path, b.path);
        assert!(cas.holds(&a.path));
        assert!(!cas.holds(&src));
        assert!(cas.verify(&a.digest).unwrap());
        fs::set_permissions(&a.path, fs::Permissions::from_mode(0o644)).unwrap();
        let mut f = OpenOptions::new().write(true).open(&a.path).unwrap();
        f.write_all(b"x").unwrap();
        assert!(!cas.verify(&a.digest).unwrap());
        assert_eq!(
            fs::read_dir(dir.path().join("images/tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        let mut w = cas.writer().unwrap();
        w.write_chunk(b"partial").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.path().join("blake3")).unwrap().count(), 0);
    }

    #[test]
    fn digests_parse_strictly() {
        let d: Digest = format!("blake3:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(d.to_string(), format!("blake3:{}", "ab".repeat(32)));
        assert!("blake3:xyz".parse::<Digest>().is_err());
    }
}
