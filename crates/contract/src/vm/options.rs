//! The closed sets of words a VM spec chooses from.

use crate::choice::choice;

choice! {
    /// The guest's CPU architecture.
    #[derive(Default)]
    pub enum Arch ("architecture") {
        /// 64-bit x86 (the default).
        #[default]
        X86_64 => "x86_64",
        /// 64-bit Arm.
        Aarch64 => "aarch64",
    }
}

impl Arch {
    /// The QEMU system emulator for this architecture.
    pub const fn qemu_binary(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The machine types available on this architecture, the default first.
    pub const fn machines(self) -> &'static [Machine] {
        match self {
            Arch::X86_64 => &[Machine::Q35, Machine::Microvm],
            Arch::Aarch64 => &[Machine::Virt],
        }
    }
}

choice! {
    /// The QEMU machine type: the board the guest sees.
    pub enum Machine ("machine") {
        /// A modern PC (x86_64; the default there).
        Q35 => "q35",
        /// A minimal x86_64 board without PCI, for fast direct-kernel boot.
        Microvm => "microvm",
        /// The generic Arm board (aarch64; the only one there).
        Virt => "virt",
    }
}

impl Machine {
    /// The machine used when a spec names none.
    pub const fn default_for(arch: Arch) -> Machine {
        arch.machines()[0]
    }

    /// The architecture this machine exists on.
    pub const fn arch(self) -> Arch {
        match self {
            Machine::Q35 | Machine::Microvm => Arch::X86_64,
            Machine::Virt => Arch::Aarch64,
        }
    }
}

choice! {
    /// How guest code runs.
    #[derive(Default)]
    pub enum Accel ("accelerator") {
        /// The best available: KVM, else HVF, else TCG (the default; never reported in status).
        #[default]
        Auto => "auto",
        /// Linux KVM.
        Kvm => "kvm",
        /// macOS Hypervisor.framework.
        Hvf => "hvf",
        /// QEMU's software emulator.
        Tcg => "tcg",
    }
}

choice! {
    /// The power state the user wants.
    #[derive(Default)]
    pub enum Power ("power state") {
        /// Running (the default).
        #[default]
        Running => "running",
        /// Shut down; no process.
        Stopped => "stopped",
        /// Process alive, vCPUs paused.
        Paused => "paused",
    }
}

choice! {
    /// What happens when the guest stops without being asked to.
    #[derive(Default)]
    pub enum RestartPolicy ("restart policy") {
        /// Leave it stopped (the default).
        #[default]
        Never => "never",
        /// Start it again if it crashed or exited with an error.
        OnFailure => "on-failure",
        /// Start it again whenever it stops.
        Always => "always",
    }
}

choice! {
    /// The format of a disk image.
    pub enum DiskFormat ("disk format") {
        /// QEMU copy-on-write v2.
        Qcow2 => "qcow2",
        /// Raw bytes.
        Raw => "raw",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_match_the_manifest_format() {
        assert_eq!(
            Arch::ALL.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            ["x86_64", "aarch64"]
        );
        assert_eq!(
            Machine::ALL.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            ["q35", "microvm", "virt"]
        );
        assert_eq!(
            Accel::ALL.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            ["auto", "kvm", "hvf", "tcg"]
        );
        assert_eq!(
            Power::ALL.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            ["running", "stopped", "paused"]
        );
        assert_eq!(
            RestartPolicy::ALL
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>(),
            ["never", "on-failure", "always"]
        );
        assert_eq!(
            "on-failure".parse::<RestartPolicy>().unwrap(),
            RestartPolicy::OnFailure
        );
    }

    #[test]
    fn errors_list_allowed_values() {
        assert_eq!(
            "arm".parse::<Arch>().unwrap_err().to_string(),
            r#""arm" is not a valid architecture: use x86_64 or aarch64"#
        );
        assert_eq!(
            "pc".parse::<Machine>().unwrap_err().to_string(),
            r#""pc" is not a valid machine: use q35, microvm or virt"#
        );
        assert_eq!(
            "KVM".parse::<Accel>().unwrap_err().to_string(),
            r#""KVM" is not a valid accelerator: use auto, kvm, hvf or tcg"#
        );
    }

    #[test]
    fn machines_belong_to_one_arch() {
        assert_eq!(Machine::default_for(Arch::X86_64), Machine::Q35);
        assert_eq!(Machine::default_for(Arch::Aarch64), Machine::Virt);
        for arch in Arch::ALL {
            for machine in arch.machines() {
                assert_eq!(machine.arch(), *arch);
            }
        }
        assert_eq!(Arch::X86_64.qemu_binary(), "qemu-system-x86_64");
        assert_eq!(Arch::Aarch64.qemu_binary(), "qemu-system-aarch64");
    }

    #[test]
    fn defaults() {
        assert_eq!(Arch::default(), Arch::X86_64);
        assert_eq!(Accel::default(), Accel::Auto);
        assert_eq!(Power::default(), Power::Running);
        assert_eq!(RestartPolicy::default(), RestartPolicy::Never);
    }
}
