//! Turning a [`VmConfig`] into the QEMU command line that runs it.

use std::path::Path;

use corral_contract::{Accel, Arch, Machine};
use corral_hypervisor::{BootSource, Error, VmConfig};

use crate::cmdline::{OptList, QemuCommand};
use crate::emulator::Emulator;
use crate::layout::VmPaths;

/// The descriptor QEMU inherits its listening QMP socket at.
pub const QMP_FD: i32 = crate::process::FIRST_INHERITED_FD;
/// The descriptor QEMU inherits its listening console socket at.
pub const CONSOLE_FD: i32 = QMP_FD + 1;

/// Builds the full command line. QEMU starts with its vCPUs stopped (`-S`) so the backend can
/// attach the console before the guest prints its first byte.
pub fn command_line(
    config: &VmConfig,
    accel: Accel,
    emu: &Emulator,
    paths: &VmPaths,
) -> Result<QemuCommand, Error> {
    check_machine(config)?;
    let firmware_boot = matches!(config.boot, BootSource::Firmware);
    let bios = emu.firmware(config.arch, config.machine, firmware_boot)?;
    let mut cmd = QemuCommand::new(&emu.binary);
    cmd.inherit(&config.files.raw_fds());

    // process= becomes the thread name (15 bytes), so `ps` and `top` show which VM it is.
    let process: String = format!("corral-{}", config.name).chars().take(15).collect();
    cmd.opts(
        "-name",
        OptList::with("guest", &config.name)
            .set("process", process)
            .flag("debug-threads", true),
    );
    if is_uuid(&config.uid) {
        cmd.raw("-uuid", &config.uid);
    }
    cmd.arg("-nodefaults")
        .arg("-no-user-config")
        .raw("-display", "none")
        .arg("-S");
    if let Some(fd) = config.restore.first() {
        // Read at start from the inherited file; `cont` then runs the guest once it is in.
        cmd.inherit(&[fd]);
        cmd.raw("-incoming", format!("fd:{fd}"));
    } else if config.incoming {
        // The migration URI comes later, through QMP (`migrate-incoming`).
        cmd.raw("-incoming", "defer");
    }

    let mut machine = OptList::new(config.machine.to_string());
    if config.machine == Machine::Virt {
        machine = machine.set(
            "gic-version",
            if accel == Accel::Tcg { "max" } else { "host" },
        );
    }
    if config.memory_file.is_some() || !config.shares.is_empty() {
        machine = machine.set("memory-backend", "ram0");
    }
    cmd.opts("-machine", machine);
    cmd.opts("-accel", OptList::new(accel.to_string()));
    cmd.raw("-cpu", cpu_model(config.arch, accel));
    cmd.raw("-smp", config.cpus.to_string());
    cmd.raw("-m", format!("{}B", config.memory_bytes));
    if let Some(path) = &config.memory_file {
        cmd.opts(
            "-object",
            OptList::new("memory-backend-file")
                .set("id", "ram0")
                .set("mem-path", path)
                .set("size", config.memory_bytes.to_string())
                .flag("share", true),
        );
    }
    if let Some(bios) = bios {
        cmd.raw("-bios", bios);
    }

    match &config.boot {
        BootSource::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            check_readable("kernel", kernel)?;
            cmd.raw("-kernel", kernel);
            if let Some(initrd) = initrd {
                check_readable("initrd", initrd)?;
                cmd.raw("-initrd", initrd);
            }
            if let Some(cmdline) = cmdline {
                cmd.raw("-append", cmdline);
            }
        }
        BootSource::Firmware if config.disks.is_empty() => {
            return Err(Error::InvalidConfig(
                "firmware boot needs at least one disk".into(),
            ));
        }
        BootSource::Firmware => {}
    }

    let blk_device = if config.machine == Machine::Microvm {
        "virtio-blk-device"
    } else {
        "virtio-blk-pci"
    };
    for (i, disk) in config.disks.iter().enumerate() {
        check_readable("disk", &disk.path)?;
        // -blockdev with an explicit driver: the file name is never parsed for a protocol
        // prefix and the format is never probed.
        cmd.opts(
            "-blockdev",
            OptList::with("driver", "file")
                .set("filename", &disk.path)
                .set("node-name", format!("file{i}"))
                .flag("read-only", disk.readonly),
        );
        cmd.opts(
            "-blockdev",
            OptList::with("driver", disk.format.as_str())
                .set("file", format!("file{i}"))
                .set("node-name", format!("disk{i}"))
                .flag("read-only", disk.readonly),
        );
        let mut device = OptList::new(blk_device).set("drive", format!("disk{i}"));
        if let Some(serial) = &disk.serial {
            device = device.set("serial", serial);
        }
        if firmware_boot && i == 0 {
            device = device.set("bootindex", "0");
        }
        cmd.opts("-device", device);
    }

    crate::net::add_nics(&mut cmd, config);
    crate::virtiofs::add_shares(&mut cmd, config);
    crate::guest_agent::add_agent(&mut cmd, config);

    // The monitor and console sockets are bound by the backend and inherited (their paths
    // stay in the VM's directory, which QEMU may not write): QMP at fd 3, console at fd 4.
    let socket = |id: &str, fd: i32| {
        OptList::new("socket")
            .set("id", id)
            .set("fd", fd.to_string())
            .flag("server", true)
            .flag("wait", false)
    };
    cmd.opts("-chardev", socket("console", CONSOLE_FD));
    cmd.raw("-serial", "chardev:console");
    cmd.opts("-chardev", socket("qmp", QMP_FD));
    cmd.opts(
        "-mon",
        OptList::with("chardev", "qmp").set("mode", "control"),
    );
    // No new files, processes, privileges or scheduling changes once the guest runs.
    cmd.opts(
        "-sandbox",
        OptList::new("on")
            .set("obsolete", "deny")
            .set("elevateprivileges", "deny")
            .set("spawn", "deny")
            .set("resourcecontrol", "deny"),
    );
    cmd.raw("-pidfile", &paths.pid);
    Ok(cmd)
}

fn check_machine(config: &VmConfig) -> Result<(), Error> {
    let ok = matches!(
        (config.arch, config.machine),
        (Arch::X86_64, Machine::Q35 | Machine::Microvm) | (Arch::Aarch64, Machine::Virt)
    );
    if !ok {
        return Err(Error::InvalidConfig(format!(
            "machine {} does not exist for {}",
            config.machine, config.arch
        )));
    }
    if config.machine == Machine::Microvm && matches!(config.boot, BootSource::Firmware) {
        return Err(Error::InvalidConfig(
            "microvm boots a kernel directly; use q35 to boot from a disk".into(),
        ));
    }
    if config.cpus == 0 || config.memory_bytes < (16 << 20) {
        return Err(Error::InvalidConfig(
            "a VM needs at least 1 vCPU and 16 MiB of memory".into(),
        ));
    }
    Ok(())
}

fn cpu_model(arch: Arch, accel: Accel) -> &'static str {
    match (arch, accel) {
        (_, Accel::Kvm | Accel::Hvf) => "host",
        // pauth-impdef: QEMU's own pointer-authentication algorithm, much cheaper to emulate
        // than the architected QARMA.
        (Arch::Aarch64, _) => "max,pauth-impdef=on",
        (Arch::X86_64, _) => "max",
    }
}

fn check_readable(what: &str, path: &Path) -> Result<(), Error> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| Error::io(format!("{what} {}", path.display()), e))
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_hypervisor::{DiskConfig, DiskFormat};
    use std::ffi::OsString;

    fn emulator(dir: &Path) -> Emulator {
        std::fs::write(dir.join("bios-256k.bin"), b"").unwrap();
        std::fs::write(dir.join("bios-microvm.bin"), b"").unwrap();
        Emulator {
            binary: "/usr/bin/qemu-system-x86_64".into(),
            version: "7.2.0".into(),
            data_dirs: vec![dir.into()],
        }
    }

    fn config(dir: &Path) -> VmConfig {
        let kernel = dir.join("vm,linuz");
        std::fs::write(&kernel, b"k").unwrap();
        VmConfig {
            uid: "6f1d2c3e-0000-4000-8000-000000000000".into(),
            name: "web-1".into(),
            arch: Arch::X86_64,
            machine: Machine::Q35,
            accel: Accel::Auto,
            cpus: 2,
            memory_bytes: 256 << 20,
            boot: BootSource::Kernel {
                kernel,
                initrd: None,
                cmdline: Some("console=ttyS0 a=b,c".into()),
            },
            disks: vec![],
            memory_file: None,
            start_paused: false,
            incoming: false,
            restore: Default::default(),
            nics: vec![],
            files: Default::default(),
            shares: Vec::new(),
        }
    }

    fn after<'a>(args: &'a [OsString], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].to_str().unwrap())
            .collect()
    }

    #[test]
    fn raw_values_pass_verbatim_and_option_values_are_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let paths = VmPaths::new(&dir.path().join("r,un"), "u1");
        let mut cfg = config(dir.path());
        cfg.disks.push(DiskConfig {
            path: dir.path().join("d,isk.qcow2"),
            format: DiskFormat::Qcow2,
            readonly: true,
            serial: Some("s,n".into()),
        });
        std::fs::write(dir.path().join("d,isk.qcow2"), b"").unwrap();
        let cmd = command_line(&cfg, Accel::Tcg, &emulator(dir.path()), &paths).unwrap();
        let args = cmd.args();
        assert!(after(args, "-kernel")[0].ends_with("/vm,linuz"));
        assert_eq!(after(args, "-append"), ["console=ttyS0 a=b,c"]);
        let blockdevs = after(args, "-blockdev");
        assert!(
            blockdevs[0].contains("/d,,isk.qcow2,node-name=file0,read-only=on"),
            "{blockdevs:?}"
        );
        assert!(after(args, "-device")[0].contains("serial=s,,n"));
        assert_eq!(
            after(args, "-chardev"),
            [
                // The guest agent's socket follows the TAPs and shares (none here): fd 5.
                "socket,id=agent,fd=5,server=on,wait=off",
                "socket,id=console,fd=4,server=on,wait=off",
                "socket,id=qmp,fd=3,server=on,wait=off"
            ]
        );
        assert!(
            after(args, "-device")
                .contains(&"virtserialport,bus=vser0.0,chardev=agent,name=org.qemu.guest_agent.0"),
            "{:?}",
            after(args, "-device")
        );
        assert!(after(args, "-pidfile")[0].ends_with("/r,un/vms/u1/qemu.pid"));
        assert_eq!(
            after(args, "-sandbox"),
            ["on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
        );
        assert_eq!(after(args, "-accel"), ["tcg"]);
        assert_eq!(after(args, "-m"), ["268435456B"]);
        assert!(args.iter().any(|a| a == "-S"));
    }

    #[test]
    fn microvm_uses_mmio_devices_and_refuses_firmware_boot() {
        let dir = tempfile::tempdir().unwrap();
        let paths = VmPaths::new(dir.path(), "u1");
        let mut cfg = config(dir.path());
        cfg.machine = Machine::Microvm;
        let disk = dir.path().join("root.raw");
        std::fs::write(&disk, b"").unwrap();
        cfg.disks.push(DiskConfig {
            path: disk,
            format: DiskFormat::Raw,
            readonly: false,
            serial: None,
        });
        let cmd = command_line(&cfg, Accel::Tcg, &emulator(dir.path()), &paths).unwrap();
        assert!(after(cmd.args(), "-device")[0].starts_with("virtio-blk-device,"));
        cfg.boot = BootSource::Firmware;
        let err = command_line(&cfg, Accel::Tcg, &emulator(dir.path()), &paths).unwrap_err();
        assert!(err.to_string().contains("microvm"), "{err}");
    }

    #[test]
    fn a_missing_kernel_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.boot = BootSource::Kernel {
            kernel: "/nonexistent/vmlinuz".into(),
            initrd: None,
            cmdline: None,
        };
        let err = command_line(
            &cfg,
            Accel::Tcg,
            &emulator(dir.path()),
            &VmPaths::new(dir.path(), "u"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("kernel /nonexistent/vmlinuz"),
            "{err}"
        );
    }

    #[test]
    fn introspection_backs_ram_with_a_shared_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.memory_file = Some("/dev/shm/corral-u1".into());
        let cmd = command_line(
            &cfg,
            Accel::Tcg,
            &emulator(dir.path()),
            &VmPaths::new(dir.path(), "u"),
        )
        .unwrap();
        assert_eq!(
            after(cmd.args(), "-object"),
            ["memory-backend-file,id=ram0,mem-path=/dev/shm/corral-u1,size=268435456,share=on"]
        );
        assert_eq!(after(cmd.args(), "-machine"), ["q35,memory-backend=ram0"]);
    }
}
