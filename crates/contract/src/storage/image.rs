use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{StoragePhase, storage_object};
use crate::choice::choice;
use crate::{ByteSize, ObjectMeta, ValidationError};

choice! {
    /// What an image holds.
    pub enum ImageFormat ("image format") {
        /// A qcow2 disk image.
        Qcow2 => "qcow2",
        /// A raw disk image.
        Raw => "raw",
        /// A kernel for direct boot.
        Kernel => "kernel",
        /// An initial ramdisk.
        Initrd => "initrd",
    }
}

impl ImageFormat {
    /// Whether a disk image (qcow2 or raw), as opposed to boot files.
    pub fn is_disk(self) -> bool {
        matches!(self, ImageFormat::Qcow2 | ImageFormat::Raw)
    }
}

/// Bytes stored once, by their BLAKE3 digest, under `images/blake3/<hex>` on the node.
// Deserialize and the schema (with `kind`, as on the wire): `strict_object!` in resource.rs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Name, labels and server-managed fields.
    pub metadata: ObjectMeta,
    /// Where the bytes come from.
    pub spec: ImageSpec,
    /// The stored bytes' digest, size and format.
    #[serde(default)]
    pub status: ImageStatus,
}

/// Where an image's bytes come from, and what they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// The source.
    pub source: ImageSource,
    /// What the bytes are. Left out, `qemu-img info` decides between qcow2 and raw; kernels
    /// and initrds must be declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    /// Volumes of every project may clone it (default false). Only an admin may share, and
    /// only an image of project `default`: a volume's `image: debian` names its own project's
    /// `debian`, or failing that a shared `debian` of `default`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// What the bytes must hash to, `sha256:<hex>`, `sha512:<hex>` or `blake3:<hex>` (as a
    /// catalogue or a publisher's SHA256SUMS gives it); an import whose bytes differ fails
    /// and stores nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}|blake3:[0-9a-f]{64})$")]
    pub checksum: Option<String>,
}

/// Splits a checksum into its algorithm and lower-case hex, checking both.
pub fn parse_checksum(checksum: &str) -> Result<(&str, &str), ValidationError> {
    let bad = || {
        ValidationError::new(
            "spec.checksum",
            format!(
                "{checksum:?} is not a checksum: write sha256:<64 hex>, sha512:<128 hex> or \
                 blake3:<64 hex> (lower case)"
            ),
        )
    };
    let (algorithm, hex) = checksum.split_once(':').ok_or_else(bad)?;
    let len = match algorithm {
        "sha256" | "blake3" => 64,
        "sha512" => 128,
        _ => return Err(bad()),
    };
    let hex_ok = hex.len() == len
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex_ok {
        return Err(bad());
    }
    Ok((algorithm, hex))
}

/// Where an image's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ImageSource {
    /// A file on the daemon's host (absolute path).
    Path(PathBuf),
    /// An `http://` or `https://` URL the daemon downloads.
    Url(String),
    /// Bytes a client streamed to the daemon (`corral image import FILE` from another host).
    Upload {
        /// The client-side file name, for people.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filename: Option<String>,
    },
    /// A disk image the daemon builds from distribution packages (`corral image build`).
    Build(ImageBuild),
    /// A template (`corral template create`): a running VM's disk, RAM and device state,
    /// saved at one instant on the VM's node. Volumes clone its disk like any disk image;
    /// VMs whose `spec.template` names it start from its state instead of booting.
    Template(TemplateSource),
}

/// The VM a template is saved from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSource {
    /// A running VM of the image's project with exactly one volume (its disk) and no
    /// shared folders.
    pub vm: crate::ResourceName,
}

/// What a template saved besides its disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateStatus {
    /// `blake3:<hex>` of the saved RAM and device state, in the image store.
    pub state_digest: String,
    /// Its size in bytes.
    pub state_size: u64,
    /// The VM it was saved from.
    pub vm: String,
    /// That VM's spec when it was saved: a VM started from the template has its hardware.
    pub spec: Box<crate::VmSpec>,
    /// How long the VM's guest was paused while it was saved, in milliseconds.
    pub paused_ms: u64,
}

choice! {
    /// A distribution release `corral image build` knows how to build.
    pub enum Distribution ("distribution") {
        /// Debian 12 "bookworm".
        Debian12 => "debian-12",
    }
}

impl Distribution {
    /// The suite name the package mirror knows it by.
    pub fn suite(self) -> &'static str {
        match self {
            Distribution::Debian12 => "bookworm",
        }
    }
}

/// What to build a disk image from: a distribution and extra packages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageBuild {
    /// The distribution release, e.g. `debian-12`.
    pub distribution: Distribution,
    /// Packages installed on top of the base set (kernel, systemd, cloud-init, openssh-server,
    /// qemu-guest-agent), by their distribution names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// The disk's size; 4G when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = build_size_schema)]
    pub size: Option<ByteSize>,
}

impl ImageBuild {
    /// The disk size when none is given.
    pub const DEFAULT_SIZE: u64 = 4 << 30;
    /// The smallest disk a Debian system with a kernel fits in.
    pub const MIN_SIZE: u64 = 1 << 30;
    /// The most extra packages one build takes.
    pub const MAX_PACKAGES: usize = 256;

    /// The disk size to build.
    pub fn size_bytes(&self) -> u64 {
        self.size.map_or(Self::DEFAULT_SIZE, ByteSize::as_u64)
    }

    /// Checks package names against Debian policy (§5.6.1: lower-case letters, digits, `+`,
    /// `-`, `.`, at least two characters, starting with a letter or digit) and the size.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.packages.len() > Self::MAX_PACKAGES {
            return Err(ValidationError::new(
                "spec.source.build.packages",
                format!(
                    "at most {} packages (got {})",
                    Self::MAX_PACKAGES,
                    self.packages.len()
                ),
            ));
        }
        for (i, p) in self.packages.iter().enumerate() {
            if !is_package_name(p) {
                return Err(ValidationError::new(
                    format!("spec.source.build.packages[{i}]"),
                    format!(
                        "{p:?} is not a Debian package name: lower-case letters, digits, \
                         '+', '-' and '.', starting with a letter or digit, 2 to 128 characters"
                    ),
                ));
            }
        }
        let max = crate::VolumeSpec::MAX_SIZE;
        if !(Self::MIN_SIZE..=max.as_u64()).contains(&self.size_bytes()) {
            return Err(ValidationError::new(
                "spec.source.build.size",
                format!(
                    "must be from 1G to {max} (got {})",
                    ByteSize::new(self.size_bytes())
                ),
            ));
        }
        if self.size_bytes() % 512 != 0 {
            return Err(ValidationError::new(
                "spec.source.build.size",
                format!(
                    "{} is not a whole number of 512-byte sectors",
                    self.size_bytes()
                ),
            ));
        }
        Ok(())
    }
}

fn build_size_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    let max = crate::VolumeSpec::MAX_SIZE.as_u64();
    crate::schema::or_null(crate::schema::byte_size(
        ImageBuild::MIN_SIZE,
        max,
        Some(512),
    ))
}

/// Whether `name` follows Debian's rules for package names.
fn is_package_name(name: &str) -> bool {
    let b = name.as_bytes();
    (2..=128).contains(&b.len())
        && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.')
        })
}

impl ImageSpec {
    /// The longest source URL, in bytes.
    pub const MAX_URL: usize = 8192;

    /// Checks the source: an absolute path, or an http(s) URL.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match &self.source {
            ImageSource::Path(path) => {
                if !path.is_absolute() || path.as_os_str().as_encoded_bytes().contains(&0) {
                    return Err(ValidationError::new(
                        "spec.source.path",
                        format!(
                            "must be an absolute path on the daemon's host (got {:?})",
                            path.display().to_string()
                        ),
                    ));
                }
            }
            ImageSource::Url(url) => {
                // URLs are ASCII (RFC 3986): visible characters only, so no spaces either.
                let rest = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"));
                let scheme_ok = rest.is_some_and(|rest| !rest.is_empty());
                let visible = url.bytes().all(|b| b.is_ascii_graphic());
                if !scheme_ok || url.len() > Self::MAX_URL || !visible {
                    return Err(ValidationError::new(
                        "spec.source.url",
                        format!("must be an http:// or https:// URL without spaces (got {url:?})"),
                    ));
                }
            }
            ImageSource::Upload { .. } | ImageSource::Template(_) => {}
            ImageSource::Build(build) => build.validate()?,
        }
        if let Some(checksum) = &self.checksum {
            parse_checksum(checksum)?;
        }
        Ok(())
    }
}

/// What is stored. Written by the server once the bytes are in place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct ImageStatus {
    /// Whether the bytes are stored and match their digest.
    pub phase: StoragePhase,
    /// `blake3:<hex>` of the bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Bytes stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The format, declared or detected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    /// For disk images, the size the guest sees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_size: Option<u64>,
    /// When the digest was last recomputed and matched, in RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<String>,
    /// A sentence for people, e.g. why verification failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For a built image, every package installed, as `name=version`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// For a template, its saved state and the hardware it needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateStatus>,
}

impl utoipa::PartialSchema for ImageSource {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use crate::schema::{object, or_null, string};
        let url = string()
            .max_length(Some(ImageSpec::MAX_URL))
            .pattern(Some("^https?://[!-~]+$"));
        let upload = object([("filename", or_null(string()), false)]);
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(object([("path", crate::schema::absolute_path(), true)]))
            .item(object([("url", url.into(), true)]))
            .item(object([("upload", upload.into(), true)]))
            .item(object([(
                "build",
                utoipa::openapi::schema::Ref::from_schema_name("ImageBuild").into(),
                true,
            )]))
            .item(object([(
                "template",
                utoipa::openapi::schema::Ref::from_schema_name("TemplateSource").into(),
                true,
            )]))
            .description(Some(
                "Exactly one of: path (a file on the daemon's host), url (http or https), \
                 upload (bytes a client streams), build (distribution packages), template \
                 (a running VM's disk, RAM and device state)",
            ))
            .into()
    }
}

impl utoipa::ToSchema for ImageSource {}

storage_object!(Image, ImageSpec, ImageStatus, Image, shared);

#[cfg(test)]
mod tests {
    use super::*;

    fn build(packages: &[&str], size: Option<u64>) -> ImageBuild {
        ImageBuild {
            distribution: Distribution::Debian12,
            packages: packages.iter().map(|p| p.to_string()).collect(),
            size: size.map(ByteSize::new),
        }
    }

    #[test]
    fn package_names_follow_debian_policy() {
        assert!(
            build(&["postgresql-15", "g++", "libc6.1"], None)
                .validate()
                .is_ok()
        );
        for bad in [
            "--option", "Vim", "a", "x;y", "a b", "pkg=1.0", "-x", "../x",
        ] {
            let err = build(&["curl", bad], None).validate().unwrap_err();
            assert_eq!(err.field, "spec.source.build.packages[1]", "{bad}");
        }
    }

    #[test]
    fn checksums_name_their_algorithm_and_have_its_length() {
        let sha = format!("sha256:{}", "a1".repeat(32));
        assert_eq!(parse_checksum(&sha).unwrap().0, "sha256");
        assert!(parse_checksum(&format!("sha512:{}", "0".repeat(128))).is_ok());
        for bad in ["md5:00", "sha256:", "sha256:A1", "blake3:xyz", "sha512:00"] {
            assert_eq!(
                parse_checksum(bad).unwrap_err().field,
                "spec.checksum",
                "{bad}"
            );
        }
        let upper = format!("sha256:{}", "A1".repeat(32));
        assert!(parse_checksum(&upper).is_err());
    }

    #[test]
    fn a_disk_below_one_gib_is_refused() {
        let err = build(&[], Some(512 << 20)).validate().unwrap_err();
        assert_eq!(err.field, "spec.source.build.size");
        assert_eq!(build(&[], None).size_bytes(), 4 << 30);
    }
}
