//! Shared folders of a development VM: host folders corrald serves over virtiofs
//! (`spec.shares`), mounted in the guest at boot by cloud-init.

use std::path::{Component, Path, PathBuf};

use corral_contract::{CloudInit, Share, VmSpecBuilder};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where `corral up` and `corral temp` mount the project's folder in the guest by default.
pub const DEFAULT_GUEST: &str = "/project";

/// A host folder mounted in the guest. The guest's root is the folder's owner: files made
/// in the guest are yours on the host, with the modes chmod gives them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Folder {
    /// The host folder: absolute, under ~/, or relative to corral.yaml's folder [default: .]
    #[serde(default = "dot")]
    #[schemars(with = "String")]
    pub host: PathBuf,
    /// Where the guest mounts it: an absolute path of letters, digits, '/', '-', '_' and '.'
    /// [default: /project]
    #[serde(default = "project")]
    #[schemars(regex(pattern = r"^/[-A-Za-z0-9_./]*$"))]
    pub guest: String,
    /// The guest may read but not change it [default: false]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

fn dot() -> PathBuf {
    PathBuf::from(".")
}

fn project() -> String {
    DEFAULT_GUEST.to_owned()
}

impl Folder {
    /// The project's own folder at /project: what a VM gets when its entry names no folders.
    pub fn project_default() -> Self {
        Folder {
            host: dot(),
            guest: project(),
            read_only: false,
        }
    }
}

/// Guest folders a mount would hide and break the guest with.
const SYSTEM: &[&str] = &[
    "/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/run", "/sbin", "/sys",
    "/tmp", "/usr", "/var",
];

/// Checks a guest mount point: absolute, plain characters, no `..`, not a system folder.
pub fn check_guest(path: &str) -> Result<(), String> {
    let plain = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
    if !path.starts_with('/') || !plain {
        return Err(format!(
            "{path:?}: give an absolute path of letters, digits, '/', '-', '_' and '.'"
        ));
    }
    if Path::new(path)
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!("{path:?}: '.' and '..' are not allowed"));
    }
    let normal = path.trim_end_matches('/');
    let normal = if normal.is_empty() { "/" } else { normal };
    if SYSTEM.contains(&normal) {
        return Err(format!(
            "{path:?} is a system folder the mount would hide: use e.g. {DEFAULT_GUEST}"
        ));
    }
    Ok(())
}

/// One folder resolved on this host.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    /// The host folder, absolute.
    pub host: PathBuf,
    /// The guest mount point.
    pub guest: String,
    /// Read-only.
    pub read_only: bool,
}

impl Mount {
    /// `folder` with its host path made absolute against `base`.
    pub fn resolve(folder: &Folder, base: &Path) -> Mount {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let host = match (folder.host.strip_prefix("~"), home) {
            (Ok(rest), Some(home)) => home.join(rest),
            _ if folder.host.is_absolute() => folder.host.clone(),
            _ => base.join(&folder.host),
        };
        // `..` stays for corrald to judge beneath its allowed folders; `.` goes.
        let host = host
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect();
        Mount {
            host,
            guest: folder.guest.clone(),
            read_only: folder.read_only,
        }
    }
}

/// Shares `mounts` with the VM (tags `folder0`, `folder1` …) and has cloud-init mount them at
/// every boot, before ssh answers. The commands are argument lists (no shell): a path
/// reaches `mount` as one argument.
pub fn attach(
    mut spec: VmSpecBuilder,
    cloud_init: &mut CloudInit,
    mounts: &[Mount],
) -> VmSpecBuilder {
    if mounts.is_empty() {
        return spec;
    }
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut doc = String::from("bootcmd:\n");
    for (i, m) in mounts.iter().enumerate() {
        let tag = format!("folder{i}");
        spec = spec.share(Share {
            host_path: m.host.clone(),
            tag: tag.clone(),
            read_only: m.read_only,
        });
        let mode = if m.read_only { "ro" } else { "rw" };
        doc += &format!("- [\"mkdir\", \"-p\", {}]\n", q(&m.guest));
        doc += &format!(
            "- [\"mount\", \"-t\", \"virtiofs\", \"-o\", \"{mode}\", {}, {}]\n",
            q(&tag),
            q(&m.guest)
        );
    }
    let user_data = cloud_init
        .user_data
        .get_or_insert_with(|| "#cloud-config\n".to_owned());
    user_data.push_str(&doc);
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_contract::{Boot, VmSpec};

    #[test]
    fn guest_mount_points_are_plain_absolute_paths_away_from_the_system() {
        check_guest("/project").unwrap();
        check_guest("/home/dev/src").unwrap();
        for bad in [
            "project",
            "/etc",
            "/usr/",
            "/",
            "/a/../etc",
            "/a b",
            "/a;reboot",
        ] {
            assert!(check_guest(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn folders_become_shares_and_argument_list_mounts() {
        let mounts = [
            Mount::resolve(&Folder::project_default(), Path::new("/home/u/shop")),
            Mount::resolve(
                &Folder {
                    host: "/srv/data".into(),
                    guest: "/data".into(),
                    read_only: true,
                },
                Path::new("/home/u/shop"),
            ),
        ];
        assert_eq!(mounts[0].host, Path::new("/home/u/shop"));
        let mut ci = CloudInit::ssh_user_data(None, &[], Some("a"));
        let spec = attach(VmSpec::builder(Boot::kernel("/k")), &mut ci, &mounts)
            .build()
            .unwrap();
        assert_eq!(spec.shares.len(), 2);
        assert_eq!(spec.shares[1].tag, "folder1");
        assert!(spec.shares[1].read_only);
        let doc = ci.user_data.unwrap();
        assert!(
            doc.ends_with(
                "bootcmd:\n- [\"mkdir\", \"-p\", \"/project\"]\n- [\"mount\", \"-t\", \
                 \"virtiofs\", \"-o\", \"rw\", \"folder0\", \"/project\"]\n- [\"mkdir\", \"-p\", \
                 \"/data\"]\n- [\"mount\", \"-t\", \"virtiofs\", \"-o\", \"ro\", \"folder1\", \
                 \"/data\"]\n"
            ),
            "{doc}"
        );
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&doc).unwrap();
        assert_eq!(parsed["bootcmd"][1][6], "/project");
    }
}
