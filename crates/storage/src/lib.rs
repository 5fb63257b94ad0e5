//! Corral's host-side storage: what controllers and the service layer use to put bytes on disk.
//!
//! - [`QemuImg`]: `qemu-img` with typed errors (`info --output=json`, create, resize, internal
//!   snapshots).
//! - [`Cas`]: the content-addressed image store, `images/blake3/<hex>`, filled in one pass
//!   that hashes while it copies; [`hash_file`] recomputes a digest (verify, weights).
//! - [`backing_outside`]: the check that refuses a qcow2 whose backing file escapes the store.
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
mod cas;
mod qemu_img;

use std::path::{Path, PathBuf};

pub use cas::{BadDigest, Blob, Cas, CasError, CasWriter, Digest, hash_file};
pub use qemu_img::{ImageInfo, QemuImg, QemuImgError, SnapshotInfo, SnapshotOp};

/// The backing file of an image when it is not a blob of `cas` (`None`: no backing file, or
/// one inside the store). A qcow2 that names an arbitrary host file as its backing file would
/// let whoever supplied the image read that file through the guest.
pub fn backing_outside(info: &ImageInfo, cas: &Cas, image_dir: &Path) -> Option<PathBuf> {
    let named = info
        .full_backing_filename
        .as_ref()
        .or(info.backing_filename.as_ref())?;
    let path = Path::new(named);
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        image_dir.join(path)
    };
    (!cas.holds(&path)).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backing_file_outside_the_store_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path().join("images")).unwrap();
        let img = QemuImg::default();
        let secret = dir.path().join("secret.raw");
        img.create(&secret, "raw", Some(1 << 20), None).unwrap();
        let evil = dir.path().join("evil.qcow2");
        img.create(&evil, "qcow2", None, Some((&secret, "raw")))
            .unwrap();
        let info = img.info(&evil, Some("qcow2")).unwrap();
        assert_eq!(
            backing_outside(&info, &cas, dir.path()),
            Some(secret.clone())
        );

        let inside = cas.import_file(&secret, |_| {}).unwrap();
        let good = dir.path().join("good.qcow2");
        img.create(&good, "qcow2", None, Some((&inside.path, "raw")))
            .unwrap();
        let info = img.info(&good, Some("qcow2")).unwrap();
        assert_eq!(backing_outside(&info, &cas, dir.path()), None);
        let plain = img.info(&secret, Some("raw")).unwrap();
        assert_eq!(backing_outside(&plain, &cas, dir.path()), None);
    }
}
