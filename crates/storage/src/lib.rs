//! Corral's host-side storage: what controllers and the service layer use to put bytes on disk.
//!
//! - [`QemuImg`]: `qemu-img` with typed errors (`info --output=json`, create, resize, internal
//!   snapshots).
//! - [`Cas`]: the content-addressed image store, `images/blake3/<hex>`, filled in one pass
//!   that hashes while it copies; [`hash_file`] recomputes a digest (verify, weights).
//! - [`inspect_disk`], [`inspect_boot_file`]: what an imported image may contain (no external
//!   data file; a backing chain made only of disk blobs of the store).
//! - [`HostPaths`]: host files named in specs, opened beneath allowed directories.
//! - [`build_image`]: a bootable Debian disk built from packages (mmdebstrap), cached by its
//!   inputs.
//! - [`attest`]: in-toto statements in DSSE envelopes, signed with the node's Ed25519 key.
//!
//! ```
//! use corral_storage::{Cas, hash_file};
//!
//! let dir = tempfile::tempdir()?;
//! let src = dir.path().join("disk.raw");
//! std::fs::write(&src, b"bytes")?;
//! let cas = Cas::open(dir.path().join("images"))?;
//! let blob = cas.import_file(&src, |_copied| {})?;
//! assert_eq!(hash_file(&blob.path)?.0, blob.digest);
//! assert!(cas.import_file(&src, |_| {})?.existed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod attest;
mod build;
mod cas;
mod content;
mod host_file;
mod qemu_img;

pub use build::{BuildError, BuildRequest, Built, build_image};
pub use cas::{BadDigest, Blob, Cas, CasError, CasWriter, Digest, hash_file, hash_reader};
pub use content::{ContentError, Inspected, inspect_boot_file, inspect_disk, is_qcow2};
pub use host_file::{HostAccess, HostDir, HostFile, HostPathError, HostPaths};
pub use qemu_img::{
    FormatSpecific, FormatSpecificData, INFO_LIMITS, ImageInfo, Limits, QemuImg, QemuImgError,
    SnapshotInfo, SnapshotOp,
};
