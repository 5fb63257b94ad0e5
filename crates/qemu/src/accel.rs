//! Choosing the accelerator: `auto` means KVM where it really works, HVF on macOS, else TCG.

use std::fs::OpenOptions;

use corral_contract::{Accel, Arch};
use corral_hypervisor::Error;

/// What the host offers, read once from the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCaps {
    /// The host's architecture as Rust names it (`x86_64`, `aarch64`).
    pub arch: &'static str,
    /// The host OS (`linux`, `macos`).
    pub os: &'static str,
    /// `/dev/kvm` opens read-write.
    pub kvm_device: bool,
    /// The CPU advertises hardware virtualisation (vmx/svm on x86; always true on aarch64,
    /// whose /proc/cpuinfo does not show it).
    pub cpu_virt: bool,
}

impl HostCaps {
    /// Reads this host's capabilities.
    pub fn probe() -> Self {
        let arch = std::env::consts::ARCH;
        let kvm_device = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let cpu_virt = match arch {
            "x86_64" => std::fs::read_to_string("/proc/cpuinfo")
                .map(|info| cpuinfo_has_virt(&info))
                .unwrap_or(false),
            _ => true,
        };
        HostCaps {
            arch,
            os: std::env::consts::OS,
            kvm_device,
            cpu_virt,
        }
    }
}

fn cpuinfo_has_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

fn native(host: &HostCaps, guest: Arch) -> bool {
    host.arch == guest.to_string()
}

/// Resolves the accelerator for a guest of `arch`: `auto` to the best that works, and an
/// explicit choice checked, with the reason when it cannot be used.
pub fn resolve(asked: Accel, arch: Arch, host: &HostCaps) -> Result<Accel, Error> {
    let kvm = || -> Result<(), String> {
        if host.os != "linux" {
            return Err(format!(
                "KVM exists only on Linux (this host runs {})",
                host.os
            ));
        }
        if !native(host, arch) {
            return Err(format!(
                "a {arch} guest cannot use KVM on a {} host",
                host.arch
            ));
        }
        if !host.kvm_device {
            return Err("/dev/kvm is missing or not read-write for this user".into());
        }
        if !host.cpu_virt {
            // A /dev/kvm without vmx/svm is what nested setups without virtualisation
            // extensions show: guests hang there, so it does not count.
            return Err("the CPU shows no vmx/svm flag (no hardware virtualisation)".into());
        }
        Ok(())
    };
    let hvf = || -> Result<(), String> {
        if host.os != "macos" {
            return Err(format!(
                "HVF exists only on macOS (this host runs {})",
                host.os
            ));
        }
        if !native(host, arch) {
            return Err(format!(
                "a {arch} guest cannot use HVF on a {} host",
                host.arch
            ));
        }
        Ok(())
    };
    let unavailable = |reason: String| Error::AccelUnavailable {
        accel: asked.to_string(),
        reason,
    };
    match asked {
        Accel::Tcg => Ok(Accel::Tcg),
        Accel::Kvm => kvm().map(|()| Accel::Kvm).map_err(unavailable),
        Accel::Hvf => hvf().map(|()| Accel::Hvf).map_err(unavailable),
        Accel::Auto => Ok(if kvm().is_ok() {
            Accel::Kvm
        } else if hvf().is_ok() {
            Accel::Hvf
        } else {
            Accel::Tcg
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux(kvm_device: bool, cpu_virt: bool) -> HostCaps {
        HostCaps {
            arch: "x86_64",
            os: "linux",
            kvm_device,
            cpu_virt,
        }
    }

    #[test]
    fn auto_picks_kvm_only_when_device_and_cpu_agree() {
        assert_eq!(
            resolve(Accel::Auto, Arch::X86_64, &linux(true, true)).unwrap(),
            Accel::Kvm
        );
        // The build machines: /dev/kvm present, no vmx/svm.
        assert_eq!(
            resolve(Accel::Auto, Arch::X86_64, &linux(true, false)).unwrap(),
            Accel::Tcg
        );
        assert_eq!(
            resolve(Accel::Auto, Arch::X86_64, &linux(false, true)).unwrap(),
            Accel::Tcg
        );
    }

    #[test]
    fn cross_architecture_guests_use_tcg() {
        assert_eq!(
            resolve(Accel::Auto, Arch::Aarch64, &linux(true, true)).unwrap(),
            Accel::Tcg
        );
        let err = resolve(Accel::Kvm, Arch::Aarch64, &linux(true, true)).unwrap_err();
        assert!(
            err.to_string().contains("aarch64 guest cannot use KVM"),
            "{err}"
        );
    }

    #[test]
    fn macos_picks_hvf() {
        let mac = HostCaps {
            arch: "aarch64",
            os: "macos",
            kvm_device: false,
            cpu_virt: true,
        };
        assert_eq!(
            resolve(Accel::Auto, Arch::Aarch64, &mac).unwrap(),
            Accel::Hvf
        );
        assert_eq!(
            resolve(Accel::Auto, Arch::X86_64, &mac).unwrap(),
            Accel::Tcg
        );
    }

    #[test]
    fn explicit_kvm_without_vmx_says_why() {
        let err = resolve(Accel::Kvm, Arch::X86_64, &linux(true, false)).unwrap_err();
        assert!(err.to_string().contains("vmx/svm"), "{err}");
    }

    #[test]
    fn cpuinfo_parsing() {
        assert!(cpuinfo_has_virt(
            "processor: 0\nflags\t\t: fpu vme vmx sse\n"
        ));
        assert!(!cpuinfo_has_virt("flags\t\t: fpu vme sse hypervisor\n"));
    }

    #[test]
    fn this_host_resolves_auto() {
        // Whatever this machine is, auto resolves to a concrete accelerator.
        let accel = resolve(Accel::Auto, Arch::X86_64, &HostCaps::probe()).unwrap();
        assert_ne!(accel, Accel::Auto);
    }
}
