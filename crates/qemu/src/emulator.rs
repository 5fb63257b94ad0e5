//! Finding the emulator binary, its version, and the firmware it will need.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use corral_contract::{Arch, Machine};
use corral_hypervisor::Error;

/// An installed `qemu-system-*` binary, probed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emulator {
    /// Absolute path of the binary.
    pub binary: PathBuf,
    /// Version, e.g. `7.2.22`.
    pub version: String,
    /// Where it looks for firmware (`-L help`).
    pub data_dirs: Vec<PathBuf>,
}

/// Which Debian package ships the emulator for `arch`.
pub fn package_for(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "qemu-system-x86",
        Arch::Aarch64 => "qemu-system-arm",
    }
}

/// Looks `name` up in `search` (or `$PATH` when `None`).
pub fn find_binary(name: &str, search: Option<&Path>) -> Option<PathBuf> {
    let dirs: Vec<PathBuf> = match search {
        Some(dir) => vec![dir.to_owned()],
        None => std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default(),
    };
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl Emulator {
    /// Finds and probes the emulator for `arch`.
    pub async fn probe(arch: Arch, search: Option<&Path>) -> Result<Emulator, Error> {
        let name = arch.qemu_binary();
        let binary = find_binary(name, search).ok_or(Error::EmulatorMissing {
            binary: name.to_owned(),
            package: package_for(arch),
        })?;
        let version_out = run(&binary, &["--version"]).await?;
        let version = parse_version(&version_out).ok_or_else(|| Error::StartFailed {
            exit: "unexpected --version output".into(),
            stderr: version_out.lines().next().unwrap_or_default().to_owned(),
        })?;
        let dirs_out = run(&binary, &["-L", "help"]).await?;
        let data_dirs = dirs_out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(PathBuf::from)
            .collect();
        Ok(Emulator {
            binary,
            version,
            data_dirs,
        })
    }

    /// Checks that the firmware a machine needs is installed and returns its path (for
    /// firmware QEMU finds by itself) or the path to pass with `-bios`.
    pub fn firmware(
        &self,
        arch: Arch,
        machine: Machine,
        firmware_boot: bool,
    ) -> Result<Option<PathBuf>, Error> {
        let (file, package, explicit) = match (arch, machine, firmware_boot) {
            (Arch::X86_64, Machine::Microvm, _) => ("bios-microvm.bin", "qemu-system-data", false),
            (Arch::X86_64, _, _) => ("bios-256k.bin", "seabios", false),
            (Arch::Aarch64, _, false) => return Ok(None),
            (Arch::Aarch64, _, true) => ("QEMU_EFI.fd", "qemu-efi-aarch64", true),
        };
        let mut searched = self.data_dirs.clone();
        if explicit {
            searched.insert(0, PathBuf::from("/usr/share/qemu-efi-aarch64"));
        }
        match searched.iter().map(|d| d.join(file)).find(|p| p.exists()) {
            Some(path) => Ok(explicit.then_some(path)),
            None => Err(Error::FirmwareMissing {
                file: file.to_owned(),
                arch,
                searched: searched
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                package,
            }),
        }
    }
}

async fn run(binary: &Path, args: &[&str]) -> Result<String, Error> {
    let out = tokio::process::Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            Error::io(
                format!("running {} {}", binary.display(), args.join(" ")),
                e,
            )
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads `7.2.22` out of `QEMU emulator version 7.2.22 (Debian …)`.
fn parse_version(out: &str) -> Option<String> {
    let rest = out.lines().next()?.split("version ").nth(1)?;
    let version = rest.split_whitespace().next()?;
    version
        .chars()
        .next()?
        .is_ascii_digit()
        .then(|| version.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parsing() {
        assert_eq!(
            parse_version(
                "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright"
            ),
            Some("7.2.22".into())
        );
        assert_eq!(parse_version("nonsense"), None);
    }

    #[tokio::test]
    async fn missing_binary_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let err = Emulator::probe(Arch::Aarch64, Some(dir.path()))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("qemu-system-aarch64") && msg.contains("apt-get install qemu-system-arm"),
            "{msg}"
        );
    }

    #[test]
    fn missing_firmware_names_the_package() {
        let emu = Emulator {
            binary: "/x".into(),
            version: "7.2".into(),
            data_dirs: vec!["/nonexistent".into()],
        };
        let err = emu
            .firmware(Arch::X86_64, Machine::Q35, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bios-256k.bin") && err.contains("seabios"),
            "{err}"
        );
    }
}
