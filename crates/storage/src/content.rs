//! What an imported image may contain: its format decided without probing, its qcow2 header
//! screened before qemu-img reads it, and its whole backing chain inside the image store.
//!
//! A qcow2 header can name other files: a backing file, read whenever the guest reads a
//! cluster the image does not hold, and an external data file, where all guest data lives.
//! Either would let whoever supplied the image read a host file (or, through a `json:` or
//! `nbd://` name, reach a network service) from inside the guest. So before qemu-img opens
//! anything, the raw header is read here: an external data file is refused and a backing name
//! must be a plain path. Then each element of the chain is read with `qemu-img info` (which
//! never opens a backing file) under [`INFO_LIMITS`](crate::qemu_img::INFO_LIMITS), and every
//! backing file must be a disk blob of the store, named with its format.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{Cas, Digest, QemuImg, QemuImgError};

/// The first bytes of every qcow2 image.
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// qcow2 incompatible feature bit: guest data lives in an external data file.
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// The longest backing chain accepted.
const MAX_CHAIN: usize = 16;

/// Why an image's content is refused.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// A qcow2 image with an external data file.
    #[error(
        "the qcow2 image keeps its data in an external file{}: refused (convert it into a self-contained image with qemu-img convert -O qcow2)",
        name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
    )]
    DataFile {
        /// The data file named in the image, when qemu-img reported it.
        name: Option<String>,
    },
    /// A backing file outside the store, of the wrong kind, or named the wrong way.
    #[error(
        "the qcow2 image names {name:?} as its backing file: {why} (flatten it with qemu-img convert)"
    )]
    Backing {
        /// The backing file as named in the header.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Declared one format, holds another.
    #[error("declared {declared}, but the bytes are {found}")]
    Mismatch {
        /// The declared format.
        declared: &'static str,
        /// What the bytes are.
        found: &'static str,
    },
    /// A chain longer than [`MAX_CHAIN`].
    #[error("the backing chain is longer than {MAX_CHAIN} images")]
    TooLong,
    /// Reading the header failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// qemu-img failed.
    #[error(transparent)]
    QemuImg(#[from] QemuImgError),
}

/// A disk image that passed [`inspect_disk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspected {
    /// `true` for qcow2, `false` for raw.
    pub qcow2: bool,
    /// The size the guest sees.
    pub virtual_size: u64,
}

/// What the raw header of a file says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Qcow2Header {
    backing: Option<String>,
    data_file: bool,
}

/// Whether the file at `path` starts like a qcow2 image.
pub fn is_qcow2(path: &Path) -> Result<bool, ContentError> {
    Ok(read_header(path)?.is_some())
}

fn read_header(path: &Path) -> Result<Option<Qcow2Header>, ContentError> {
    let err = |source| ContentError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(err)?;
    let mut head = Vec::with_capacity(104);
    file.by_ref()
        .take(104)
        .read_to_end(&mut head)
        .map_err(err)?;
    if head.len() < 72 || &head[..4] != QCOW2_MAGIC {
        return Ok(None);
    }
    let u32_at = |at: usize| u32::from_be_bytes(head[at..at + 4].try_into().unwrap_or_default());
    let u64_at = |at: usize| u64::from_be_bytes(head[at..at + 8].try_into().unwrap_or_default());
    let version = u32_at(4);
    let data_file = version >= 3 && head.len() >= 80 && u64_at(72) & INCOMPAT_DATA_FILE != 0;
    let (offset, size) = (u64_at(8), u32_at(16));
    let backing = if offset == 0 || size == 0 {
        None
    } else if size > 1023 {
        Some(String::from("<longer than qcow2 allows>"))
    } else {
        use std::io::{Seek, SeekFrom};
        let mut name = vec![0u8; size as usize];
        file.seek(SeekFrom::Start(offset)).map_err(err)?;
        file.read_exact(&mut name).map_err(err)?;
        Some(String::from_utf8_lossy(&name).into_owned())
    };
    Ok(Some(Qcow2Header { backing, data_file }))
}

/// Checks a disk image at `path` (a file of the store's temp area) and returns its format and
/// size. `declared` is `Some(true)` for qcow2, `Some(false)` for raw, `None` to decide from the
/// bytes (never by qemu-img's probing). `disk_blob` tells whether a blob of `cas` holds a disk
/// image and which (`Some("qcow2")`, `Some("raw")`, `None` for none or a kernel/initrd).
pub fn inspect_disk(
    qemu_img: &QemuImg,
    cas: &Cas,
    path: &Path,
    declared: Option<bool>,
    disk_blob: impl Fn(&Digest) -> Option<&'static str>,
) -> Result<Inspected, ContentError> {
    let header = read_header(path)?;
    let qcow2 = match (declared, &header) {
        (Some(true), None) => {
            return Err(ContentError::Mismatch {
                declared: "qcow2",
                found: "not a qcow2 image",
            });
        }
        // Declared raw: QEMU never reads the bytes as a header.
        (Some(false), _) => false,
        (_, h) => h.is_some(),
    };
    if !qcow2 {
        let info = qemu_img.info(path, Some("raw"))?;
        return Ok(Inspected {
            qcow2,
            virtual_size: info.virtual_size,
        });
    }
    let none = Qcow2Header {
        backing: None,
        data_file: false,
    };
    let mut element = path.to_owned();
    let mut header = header.unwrap_or(none.clone());
    let mut format = "qcow2";
    let mut virtual_size = None;
    for _ in 0..MAX_CHAIN {
        // The raw header first: qemu-img may open what it names.
        if header.data_file {
            return Err(ContentError::DataFile { name: None });
        }
        let protocol = |name: &str| name.split('/').next().is_some_and(|c| c.contains(':'));
        let info = match &header.backing {
            // QEMU reads `proto:` prefixes (json:, nbd:, http: …) in backing names as protocols.
            Some(name) if protocol(name) => None,
            _ => Some(qemu_img.info(&element, Some(format))?),
        };
        let virtual_size = *virtual_size.get_or_insert(info.as_ref().map_or(0, |i| i.virtual_size));
        let data_file = info
            .as_ref()
            .and_then(|i| i.format_specific.as_ref())
            .and_then(|f| f.data.data_file.clone());
        if data_file.is_some() {
            return Err(ContentError::DataFile { name: data_file });
        }
        let named = header
            .backing
            .clone()
            .or_else(|| info.as_ref().and_then(|i| i.backing_filename.clone()));
        let Some(name) = named else {
            return Ok(Inspected {
                qcow2,
                virtual_size,
            });
        };
        let refuse = |why| {
            Err(ContentError::Backing {
                name: name.clone(),
                why,
            })
        };
        let Some(info) = info.filter(|_| !protocol(&name)) else {
            return refuse("a protocol or json: name, not a file of the image store");
        };
        let dir = element.parent().unwrap_or(Path::new("/"));
        let backing = dir.join(&name);
        if !cas.holds(&backing) {
            return refuse("outside the image store");
        }
        let digest = backing
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<Digest>().ok());
        let Some(kind) = digest.as_ref().and_then(&disk_blob) else {
            return refuse("a blob of the store that is not a disk image (a kernel or initrd)");
        };
        match info.backing_filename_format.as_deref() {
            Some(f) if f == kind => {}
            Some(_) => return refuse("recorded with a format other than the stored image's"),
            None => return refuse("recorded without its format (make it with qemu-img create -F)"),
        }
        if kind == "raw" {
            return Ok(Inspected {
                qcow2,
                virtual_size,
            });
        }
        header = read_header(&backing)?.unwrap_or(none.clone());
        element = backing;
        format = kind;
    }
    Err(ContentError::TooLong)
}

/// Checks a blob declared a kernel or initrd: QEMU loads it as bytes, but it must not be a
/// disk image in disguise (a qcow2 that a later `boot.disk` could open with its backing file).
pub fn inspect_boot_file(path: &Path, declared: &'static str) -> Result<(), ContentError> {
    if read_header(path)?.is_some() {
        return Err(ContentError::Mismatch {
            declared,
            found: "a qcow2 disk image",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Cas, QemuImg) {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path().join("images")).unwrap();
        (dir, cas, QemuImg::default())
    }

    #[test]
    fn a_chain_into_the_store_passes_and_a_host_file_is_refused() {
        let (dir, cas, img) = setup();
        let secret = dir.path().join("secret.raw");
        img.create(&secret, "raw", Some(1 << 20), None).unwrap();
        let evil = dir.path().join("evil.qcow2");
        img.create(&evil, "qcow2", None, Some((&secret, "raw")))
            .unwrap();
        let any_disk = |_: &Digest| Some("raw");
        let err = inspect_disk(&img, &cas, &evil, None, any_disk).unwrap_err();
        assert!(err.to_string().contains("outside the image store"), "{err}");

        let base = cas.import_file(&secret, |_| {}).unwrap();
        let good = dir.path().join("good.qcow2");
        img.create(&good, "qcow2", None, Some((&base.path, "raw")))
            .unwrap();
        let ok = inspect_disk(&img, &cas, &good, None, any_disk).unwrap();
        assert_eq!(
            ok,
            Inspected {
                qcow2: true,
                virtual_size: 1 << 20
            }
        );
        let err = inspect_disk(&img, &cas, &good, None, |_| None).unwrap_err();
        assert!(err.to_string().contains("not a disk image"), "{err}");
        let err = inspect_disk(&img, &cas, &good, None, |_| Some("qcow2")).unwrap_err();
        assert!(err.to_string().contains("format other"), "{err}");
    }

    /// `qemu-img create -q -f qcow2 ARGS… 1M`, which must succeed.
    fn qemu_img_create(args: &[&std::ffi::OsStr]) {
        let out = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .args(args)
            .arg("1M")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn an_external_data_file_is_refused_before_qemu_img_reads_it() {
        let (dir, cas, img) = setup();
        let data = dir.path().join("data.raw");
        let image = dir.path().join("with-data.qcow2");
        qemu_img_create(&[
            "-o".as_ref(),
            format!("data_file={}", data.display()).as_ref(),
            image.as_ref(),
        ]);
        let err = inspect_disk(&img, &cas, &image, None, |_| Some("raw")).unwrap_err();
        assert!(matches!(err, ContentError::DataFile { .. }), "{err}");
        let err = inspect_boot_file(&image, "kernel").unwrap_err();
        assert!(err.to_string().contains("declared kernel"), "{err}");
        // Declared raw, the same bytes are only bytes.
        assert!(
            !inspect_disk(&img, &cas, &image, Some(false), |_| None)
                .unwrap()
                .qcow2
        );
    }

    #[test]
    fn protocol_backing_names_are_refused() {
        let (dir, cas, img) = setup();
        let image = dir.path().join("nbd.qcow2");
        qemu_img_create(&[
            "-u".as_ref(),
            "-F".as_ref(),
            "raw".as_ref(),
            "-b".as_ref(),
            "nbd://169.254.169.254:10809/x".as_ref(),
            image.as_ref(),
        ]);
        let err = inspect_disk(&img, &cas, &image, None, |_| Some("raw")).unwrap_err();
        assert!(err.to_string().contains("protocol"), "{err}");
    }
}
