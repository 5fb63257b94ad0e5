use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use corral_contract::Arch;
use nix::fcntl::{Flock, FlockArg};

use crate::Error;

/// The guest kit of one architecture: a kernel, a busybox initramfs and small disks, built by
/// `guest/build.sh` under `target/guest/<arch>/`.
#[derive(Debug, Clone)]
pub struct GuestKit {
    dir: PathBuf,
    console: String,
}

/// corrald as root runs QEMU as the unprivileged `corral-qemu` (when that user exists), which
/// opens the kit's kernel and disks by their paths: every directory on the way must let others
/// through and every file let others read (a checkout under a private home does not).
fn check_reachable_by_others(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .map(|m| m.mode())
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))
    };
    for ancestor in dir.ancestors() {
        if mode(ancestor)? & 0o001 == 0 {
            return Err(Error::Kit(format!(
                "the guest kit {} is out of reach of QEMU's unprivileged user: {} does not let \
                 others pass (chmod o+x {}, or build the kit elsewhere with CORRAL_GUEST_KIT)",
                dir.display(),
                ancestor.display(),
                ancestor.display()
            )));
        }
    }
    for entry in
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
    {
        let path = entry
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
            .path();
        if mode(&path)? & 0o004 == 0 {
            return Err(Error::Kit(format!(
                "{} is not readable by QEMU's unprivileged user (chmod o+r {})",
                path.display(),
                path.display()
            )));
        }
    }
    Ok(())
}

/// The workspace root (where `guest/build.sh` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

impl GuestKit {
    /// The kit for `arch`, built first when missing. `CORRAL_GUEST_KIT` points elsewhere.
    /// Concurrent test processes build it once: the build runs under a file lock.
    pub fn get(arch: Arch) -> Result<GuestKit, Error> {
        let root = std::env::var_os("CORRAL_GUEST_KIT")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target/guest"));
        let dir = root.join(arch.to_string());
        let manifest = dir.join("manifest.json");
        if !manifest.exists() {
            build(&root, arch)?;
        }
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| Error::io(format!("reading {}", manifest.display()), e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Kit(format!("{}: {e}", manifest.display())))?;
        let console = json["console"].as_str().unwrap_or(match arch {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        });
        let drops_privileges = nix::unistd::geteuid().is_root()
            && nix::unistd::User::from_name("corral-qemu").is_ok_and(|u| u.is_some());
        if drops_privileges {
            check_reachable_by_others(&dir)?;
        }
        Ok(GuestKit {
            dir,
            console: console.to_owned(),
        })
    }

    /// The kernel image.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// The busybox initramfs.
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }

    /// The ext4 root disk as qcow2 (`corral.root=/dev/vda` boots into it).
    pub fn rootfs_qcow2(&self) -> PathBuf {
        self.dir.join("rootfs.qcow2")
    }

    /// The ext4 root disk as raw.
    pub fn rootfs_raw(&self) -> PathBuf {
        self.dir.join("rootfs.raw")
    }

    /// A BIOS-bootable disk (x86_64): MBR, syslinux, kernel and initramfs.
    pub fn boot_disk(&self) -> PathBuf {
        self.dir.join("boot.qcow2")
    }

    /// The guest's serial console device (`ttyS0`, `ttyAMA0`).
    pub fn console(&self) -> &str {
        &self.console
    }
}

fn build(root: &Path, arch: Arch) -> Result<(), Error> {
    std::fs::create_dir_all(root)
        .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    let lock_path = root.join(".build.lock");
    let lock_file = File::create(&lock_path)
        .map_err(|e| Error::io(format!("creating {}", lock_path.display()), e))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::io("locking the guest kit build", e.into()))?;
    if root.join(arch.to_string()).join("manifest.json").exists() {
        return Ok(()); // another test process built it while we waited
    }
    let script = workspace_root().join("guest/build.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg("--arch")
        .arg(arch.to_string())
        .arg("--out")
        .arg(root)
        .status()
        .map_err(|e| Error::io(format!("running {}", script.display()), e))?;
    if !status.success() {
        return Err(Error::Kit(format!(
            "{} --arch {arch} failed ({status})",
            script.display()
        )));
    }
    Ok(())
}
