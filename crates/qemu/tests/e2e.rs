//! End-to-end tests of the QEMU backend: real QEMU processes booting the guest kit (TCG where
//! KVM is unusable). Each test passes only on evidence from inside the guest. A missing QEMU or
//! guest kit fails these tests; they never skip.

use std::time::Duration;

use corral_contract::{Accel, Arch, Machine};
use corral_hypervisor::{DiskFormat, Error, Hypervisor, StopMode, VmEventKind, VmState};
use corral_qemu::{HostCaps, QemuBackend, QemuBackendConfig, resolve_accel};
use corral_testkit::{HEARTBEAT, TestVm};

type Result = anyhow::Result<()>;

fn expected_accel(arch: Arch) -> Accel {
    resolve_accel(Accel::Auto, arch, &HostCaps::probe()).unwrap()
}

#[tokio::test]
async fn q35_boots_a_kernel_and_reports_its_accelerator() -> Result {
    let vm = TestVm::builder(Arch::X86_64).start().await?;
    let line = vm.wait_for_boot().await?;
    assert!(
        line.contains("arch=x86_64") && line.contains("root=initramfs"),
        "{line}"
    );
    assert_eq!(vm.info().accel, expected_accel(Arch::X86_64));
    assert_ne!(vm.info().accel, Accel::Auto);
    assert_eq!(vm.backend().state(vm.uid()).await?, VmState::Running);
    vm.send_line("echo hello-$((1+2))").await?;
    vm.wait_for_line("hello-3").await?;
    Ok(())
}

#[tokio::test]
async fn microvm_boots_a_kernel() -> Result {
    let vm = TestVm::builder(Arch::X86_64)
        .machine(Machine::Microvm)
        .start()
        .await?;
    let line = vm.wait_for_boot().await?;
    assert!(line.contains("arch=x86_64"), "{line}");
    Ok(())
}

#[tokio::test]
async fn root_filesystem_on_a_qcow2_disk() -> Result {
    let vm = TestVm::builder(Arch::X86_64)
        .root_disk(DiskFormat::Qcow2)
        .start()
        .await?;
    let line = vm.wait_for_boot().await?;
    assert!(line.contains("root=disk"), "{line}");
    vm.send_line("cat /etc/corral-rootfs").await?;
    vm.wait_for_line("corral-rootfs-ok").await?;
    Ok(())
}

#[tokio::test]
async fn root_filesystem_on_a_raw_disk_on_microvm() -> Result {
    let vm = TestVm::builder(Arch::X86_64)
        .machine(Machine::Microvm)
        .root_disk(DiskFormat::Raw)
        .start()
        .await?;
    let line = vm.wait_for_boot().await?;
    assert!(line.contains("root=disk"), "{line}");
    Ok(())
}

#[tokio::test]
async fn firmware_boots_from_a_disk() -> Result {
    let vm = TestVm::builder(Arch::X86_64)
        .firmware_boot()
        .start()
        .await?;
    let line = vm.wait_for_boot().await?;
    assert!(line.contains("arch=x86_64"), "{line}");
    Ok(())
}

#[tokio::test]
async fn aarch64_virt_boots() -> Result {
    let vm = TestVm::builder(Arch::Aarch64).start().await?;
    let line = vm.wait_for_boot().await?;
    assert!(line.contains("arch=aarch64"), "{line}");
    assert_eq!(vm.info().accel, expected_accel(Arch::Aarch64));
    Ok(())
}

#[tokio::test]
async fn pause_stops_the_heartbeat_and_resume_continues_it() -> Result {
    let vm = TestVm::builder(Arch::X86_64).start().await?;
    vm.wait_for_boot().await?;
    vm.wait_for_line(&format!("{HEARTBEAT} 2")).await?;
    let mut events = vm.backend().subscribe();

    vm.backend().pause(vm.uid()).await?;
    assert_eq!(
        vm.backend().state(vm.uid()).await?,
        VmState::Paused {
            reason: "paused".into()
        }
    );
    assert_eq!(events.recv().await?.kind, VmEventKind::Paused);
    let frozen = vm.last_heartbeat();
    let mark = vm.output().mark();
    // Three heartbeat periods with no heartbeat: the guest is really stopped.
    let silent = vm
        .wait_for_line_since(mark, HEARTBEAT, Duration::from_secs(3))
        .await;
    assert!(silent.is_err(), "heartbeat while paused: {silent:?}");
    assert_eq!(vm.last_heartbeat(), frozen);

    vm.backend().resume(vm.uid()).await?;
    assert_eq!(events.recv().await?.kind, VmEventKind::Resumed);
    assert_eq!(vm.backend().state(vm.uid()).await?, VmState::Running);
    let next = vm
        .wait_for_line_since(mark, HEARTBEAT, Duration::from_secs(30))
        .await?;
    let n: u64 = next.split_whitespace().last().unwrap_or_default().parse()?;
    assert!(Some(n) > frozen, "heartbeat {n} after {frozen:?}");
    Ok(())
}

#[tokio::test]
async fn graceful_stop_powers_the_guest_off_through_acpi() -> Result {
    let vm = TestVm::builder(Arch::X86_64).start().await?;
    vm.wait_for_boot().await?;
    let exit = vm
        .backend()
        .stop(
            vm.uid(),
            StopMode::Graceful {
                timeout: Duration::from_secs(60),
            },
        )
        .await?;
    vm.wait_for_line("CORRAL_POWEROFF").await?;
    assert_eq!(exit.code, Some(0), "{exit}");
    assert_eq!(exit.reason, "guest-shutdown", "{exit}");
    assert!(!exit.is_failure());
    assert!(!corral_qemu::is_alive(vm.pid()));
    Ok(())
}

#[tokio::test]
async fn kill_9_is_reported_as_killed() -> Result {
    let vm = TestVm::builder(Arch::X86_64).start().await?;
    vm.wait_for_boot().await?;
    let mut events = vm.backend().subscribe();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vm.pid() as i32),
        nix::sys::signal::SIGKILL,
    )?;
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let VmEventKind::Exited(exit) = events.recv().await?.kind {
                return anyhow::Ok(exit);
            }
        }
    })
    .await??;
    assert_eq!(event.signal, Some(9), "{event}");
    assert!(event.is_failure());
    match vm.backend().state(vm.uid()).await? {
        VmState::Exited(exit) => assert_eq!(exit.reason, "killed by SIGKILL"),
        other => panic!("expected Exited, got {other:?}"),
    }
    // Its sockets and pid file are gone; the serial log stays for post-mortems.
    let paths = vm.backend().paths(vm.uid());
    assert!(!paths.qmp.exists() && !paths.pid.exists() && paths.serial_log.exists());
    Ok(())
}

#[tokio::test]
async fn a_fresh_backend_adopts_a_running_vm_and_stops_it() -> Result {
    let mut vm = TestVm::builder(Arch::X86_64).start().await?;
    vm.wait_for_boot().await?;
    let pid = vm.pid();
    let info = vm.readopt().await?;
    assert!(info.adopted);
    assert_eq!(info.pid, pid, "adoption never starts a second QEMU");
    assert_eq!(vm.backend().state(vm.uid()).await?, VmState::Running);
    // The console works through the new backend.
    vm.send_line("echo adopted-$((40+2))").await?;
    vm.wait_for_line("adopted-42").await?;
    let exit = vm
        .backend()
        .stop(
            vm.uid(),
            StopMode::Graceful {
                timeout: Duration::from_secs(60),
            },
        )
        .await?;
    assert_eq!(exit.reason, "guest-shutdown", "{exit}");
    assert!(!corral_qemu::is_alive(pid));
    vm.backend().cleanup(vm.uid()).await?;
    assert!(!vm.backend().paths(vm.uid()).dir.exists());
    Ok(())
}

#[tokio::test]
async fn adopt_refuses_a_pid_that_runs_something_else() -> Result {
    let vm = TestVm::builder(Arch::X86_64).start().await?;
    let paths = vm.backend().paths(vm.uid());
    // A stale pid file pointing at an unrelated live process (pid reuse).
    std::fs::write(&paths.pid, format!("{}\n", std::process::id()))?;
    let fresh = QemuBackend::new(QemuBackendConfig::new(vm.run_dir()))?;
    let err = fresh.adopt(vm.uid()).await.unwrap_err();
    assert!(matches!(err, Error::AdoptRejected { .. }), "{err}");
    assert!(err.to_string().contains("different command line"), "{err}");
    Ok(())
}

#[tokio::test]
async fn commas_and_equals_in_paths_and_cmdline_inject_nothing() -> Result {
    let kit = corral_testkit::GuestKit::get(Arch::X86_64)?;
    let dir = tempfile::tempdir()?;
    let odd = dir.path().join("kit,readonly=on,x");
    std::fs::create_dir(&odd)?;
    std::fs::copy(kit.kernel(), odd.join("vm,linuz"))?;
    std::fs::copy(kit.initrd(), odd.join("init,rd=1"))?;
    let vm = TestVm::builder(Arch::X86_64)
        .kernel(odd.join("vm,linuz"))
        .initrd(odd.join("init,rd=1"))
        .cmdline("corral.marker=a,b=c,,d")
        .start()
        .await?;
    vm.wait_for_boot().await?;
    let marker = vm.wait_for_line("CORRAL_MARKER").await?;
    assert!(marker.ends_with("CORRAL_MARKER a,b=c,,d"), "{marker}");
    let cmdline = vm.wait_for_line("CORRAL_CMDLINE").await?;
    assert!(cmdline.contains("corral.marker=a,b=c,,d"), "{cmdline}");
    Ok(())
}

#[tokio::test]
async fn reset_reboots_the_guest() -> Result {
    let vm = TestVm::builder(Arch::X86_64).start().await?;
    vm.wait_for_boot().await?;
    let mark = vm.output().mark();
    vm.backend().reset(vm.uid()).await?;
    vm.wait_for_line_since(mark, "CORRAL_BOOT_OK", Duration::from_secs(120))
        .await?;
    assert_eq!(vm.backend().state(vm.uid()).await?, VmState::Running);
    Ok(())
}

#[tokio::test]
async fn a_second_start_of_a_running_vm_is_refused() -> Result {
    let vm = TestVm::builder(Arch::X86_64).start_paused().start().await?;
    assert!(matches!(
        vm.backend().state(vm.uid()).await?,
        VmState::Paused { .. }
    ));
    let err = vm.backend().start(vm.config()).await.unwrap_err();
    assert!(
        matches!(err, Error::AlreadyRunning { pid, .. } if pid == vm.pid()),
        "{err}"
    );
    // Nor from another backend instance on the same run directory.
    let other = QemuBackend::new(QemuBackendConfig::new(vm.run_dir()))?;
    let err = other.start(vm.config()).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyRunning { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_qemu_that_fails_to_start_leaves_nothing_behind() -> Result {
    let dir = tempfile::Builder::new()
        .prefix("corral-t")
        .tempdir_in("/tmp")?;
    // A raw file of zeros declared as qcow2: QEMU refuses it at start-up.
    let bogus = dir.path().join("bogus.qcow2");
    std::fs::write(&bogus, vec![0u8; 1 << 20])?;
    let builder = TestVm::builder(Arch::X86_64).introspection();
    let uid = uuid::Uuid::new_v4().to_string();
    let mut config = builder.config(dir.path(), &uid)?;
    let ram_file = config.memory_file.clone().expect("introspection");
    config.disks.push(corral_hypervisor::DiskConfig {
        path: bogus,
        format: DiskFormat::Qcow2,
        readonly: false,
        serial: None,
    });
    let backend = QemuBackend::new(QemuBackendConfig::new(dir.path()))?;
    let err = backend.start(&config).await.unwrap_err();
    assert!(matches!(err, Error::StartFailed { .. }), "{err}");
    assert!(
        err.to_string().contains("qcow2"),
        "QEMU's own message reaches the user: {err}"
    );
    let paths = backend.paths(&config.uid);
    assert!(
        !paths.qmp.exists()
            && !paths.console.exists()
            && !paths.pid.exists()
            && !paths.launch.exists()
    );
    assert!(!ram_file.exists(), "{} left behind", ram_file.display());
    backend.cleanup(&config.uid).await?;
    assert!(!paths.dir.exists());
    Ok(())
}

#[tokio::test]
async fn a_run_dir_too_long_for_sockets_is_refused_up_front() -> Result {
    let base = tempfile::tempdir()?;
    let long = base.path().join("r".repeat(90));
    let backend = QemuBackend::new(QemuBackendConfig::new(&long))?;
    let config = TestVm::builder(Arch::X86_64)
        .config(base.path(), "f00d0000-0000-4000-8000-000000000002")?;
    let err = backend.start(&config).await.unwrap_err();
    assert!(
        matches!(err, Error::SocketPathTooLong { max: 107, .. }),
        "{err}"
    );
    assert!(
        !backend.paths(&config.uid).dir.exists(),
        "nothing half-made"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_emulator_says_which_package_to_install() -> Result {
    let dir = tempfile::Builder::new()
        .prefix("corral-t")
        .tempdir_in("/tmp")?;
    let mut backend_config = QemuBackendConfig::new(dir.path());
    backend_config.emulator_dir = Some(dir.path().to_owned());
    let backend = QemuBackend::new(backend_config)?;
    let config =
        TestVm::builder(Arch::X86_64).config(dir.path(), "f00d0000-0000-4000-8000-000000000003")?;
    let err = backend.start(&config).await.unwrap_err();
    assert!(
        err.to_string().contains("apt-get install qemu-system-x86"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn introspection_ram_is_a_private_file_gone_when_the_vm_stops() -> Result {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let marker = format!("cm-{}", uuid::Uuid::new_v4().simple());
    // A stale file from an earlier run at the same path is replaced, never reused.
    let vm = TestVm::builder(Arch::X86_64)
        .introspection()
        .cmdline(format!("corral.marker={marker}"))
        .start()
        .await?;
    vm.wait_for_line(&format!("CORRAL_MARKER {marker}")).await?;
    let path = vm.config().memory_file.clone().expect("introspection");
    let meta = std::fs::metadata(&path)?;
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{}",
        path.display()
    );
    assert_eq!(meta.len(), vm.config().memory_bytes);
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    // The file really is the guest's RAM: the marker the guest keeps is in it.
    let bytes = std::fs::read(&path)?;
    assert!(
        bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "marker not in {}",
        path.display()
    );
    drop(bytes);
    vm.backend().stop(vm.uid(), StopMode::Force).await?;
    assert!(
        !path.exists(),
        "{} left after the VM stopped",
        path.display()
    );
    Ok(())
}

/// `-append ""` (a declared but empty kernel command line) is an empty argument in QEMU's argv;
/// a fresh backend must still recognise the process as the one it launched, and must never
/// clean up the directory of a live QEMU. The guest prints nothing without `console=`, so the
/// evidence is QEMU's own run state through the adopted monitor, and its pid.
#[tokio::test]
async fn a_vm_with_an_empty_kernel_command_line_is_adopted_not_cleaned_up() -> Result {
    let dir = tempfile::Builder::new()
        .prefix("corral-t")
        .tempdir_in("/tmp")?;
    let uid = uuid::Uuid::new_v4().to_string();
    let mut config = TestVm::builder(Arch::X86_64).config(dir.path(), &uid)?;
    if let corral_hypervisor::BootSource::Kernel { cmdline, .. } = &mut config.boot {
        *cmdline = Some(String::new());
    }
    let first = QemuBackend::new(QemuBackendConfig::new(dir.path()))?;
    let pid = first.start(&config).await?.pid;
    drop(first);

    let fresh = QemuBackend::new(QemuBackendConfig::new(dir.path()))?;
    let cleanup = fresh.cleanup(&uid).await;
    assert!(
        matches!(cleanup, Err(Error::AlreadyRunning { .. })),
        "cleanup of a live VM's directory must be refused: {cleanup:?}"
    );
    assert!(
        fresh.paths(&uid).qmp.exists(),
        "the live QEMU keeps its sockets"
    );
    let info = fresh.adopt(&uid).await?;
    assert!(info.adopted);
    assert_eq!(info.pid, pid, "adoption never starts a second QEMU");
    assert_eq!(fresh.state(&uid).await?, VmState::Running);
    fresh.stop(&uid, StopMode::Force).await?;
    assert!(!corral_qemu::is_alive(pid));
    fresh.cleanup(&uid).await?;
    Ok(())
}

async fn next_exit(
    events: &mut tokio::sync::broadcast::Receiver<corral_hypervisor::VmEvent>,
) -> anyhow::Result<corral_hypervisor::Exit> {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let VmEventKind::Exited(exit) = events.recv().await?.kind {
                return anyhow::Ok(exit);
            }
        }
    })
    .await?
}

/// An adopted QEMU is no child of ours, so there is no wait status: a kill must still be
/// told from a clean power-off, or a restart policy would treat the two alike.
#[tokio::test]
async fn an_adopted_vm_that_is_killed_ends_as_a_failure() -> Result {
    let mut vm = TestVm::builder(Arch::X86_64).start().await?;
    vm.wait_for_boot().await?;
    vm.readopt().await?;
    vm.send_line("echo adopted-$((40+2))").await?;
    vm.wait_for_line("adopted-42").await?;
    let mut events = vm.backend().subscribe();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vm.pid() as i32),
        nix::sys::signal::SIGKILL,
    )?;
    let exit = next_exit(&mut events).await?;
    assert!(exit.is_failure(), "{exit}");
    assert!(exit.reason.contains("without a shutdown event"), "{exit}");
    Ok(())
}

/// The guest powering itself off is announced by QEMU (SHUTDOWN, reason guest-shutdown)
/// before it exits: an adopted VM that does so ended cleanly.
#[tokio::test]
async fn an_adopted_vm_whose_guest_powers_off_ends_cleanly() -> Result {
    let mut vm = TestVm::builder(Arch::X86_64).start().await?;
    vm.wait_for_boot().await?;
    vm.readopt().await?;
    let mut events = vm.backend().subscribe();
    vm.send_line("poweroff -f").await?;
    let exit = next_exit(&mut events).await?;
    assert!(!exit.is_failure(), "{exit}");
    assert_eq!(exit.reason, "guest-shutdown", "{exit}");
    Ok(())
}

/// A QEMU started by an older corrald — as root, binding its sockets at their paths itself,
/// without `-sandbox` — whose launch record holds that command line is still adopted, and its
/// guest answers through the new backend.
#[tokio::test]
async fn a_qemu_launched_by_an_older_corrald_is_adopted() -> Result {
    use std::os::unix::process::CommandExt;
    let run = tempfile::Builder::new()
        .prefix("corral-o")
        .tempdir_in("/tmp")?;
    let uid = uuid::Uuid::new_v4().to_string();
    let config = TestVm::builder(Arch::X86_64).config(run.path(), &uid)?;
    let backend = QemuBackend::new(QemuBackendConfig::new(run.path()))?;
    let paths = backend.paths(&uid);
    let (accel, cmd) = backend.command_line(&config).await?;
    let socket = |id: &str, path: &std::path::Path| {
        format!(
            "socket,id={id},path={},server=on,wait=off",
            corral_qemu::escape_value(path.as_os_str()).to_string_lossy()
        )
    };
    let mut argv: Vec<String> = Vec::new();
    let mut args = cmd.argv().into_iter().map(|a| a.into_string().unwrap());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-sandbox" => {
                args.next();
            }
            "socket,id=console,fd=4,server=on,wait=off" => {
                argv.push(socket("console", &paths.console))
            }
            "socket,id=qmp,fd=3,server=on,wait=off" => argv.push(socket("qmp", &paths.qmp)),
            a if a.starts_with("socket,id=agent,fd=") => argv.push(socket("agent", &paths.agent)),
            _ => argv.push(arg),
        }
    }
    assert_eq!(
        argv.len() + 2,
        cmd.argv().len(),
        "the older command line differs as expected"
    );
    std::fs::create_dir_all(&paths.dir)?;
    let record = serde_json::json!({
        "argv": argv,
        "accel": accel,
        "emulator_version": backend.emulator(Arch::X86_64).await?.version,
        "config": config,
    });
    std::fs::write(&paths.launch, serde_json::to_vec(&record)?)?;
    let mut old = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(paths.qmp.exists() && paths.pid.exists()) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the older QEMU did not come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let info = backend.adopt(&uid).await?;
    assert!(info.adopted);
    assert_eq!(info.pid, old.id());
    backend.resume(&uid).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let log = backend.console_log(&uid, 1 << 20).await?;
        if String::from_utf8_lossy(&log).contains(corral_testkit::BOOT_MARKER) {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no boot marker from the adopted guest"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exit = backend.stop(&uid, StopMode::Force).await?;
    assert!(!corral_qemu::is_alive(info.pid), "{exit}");
    old.wait()?;
    backend.cleanup(&uid).await?;
    Ok(())
}

#[tokio::test]
async fn a_live_migration_moves_the_running_guest_to_a_second_qemu() -> Result {
    let source = TestVm::builder(Arch::X86_64).start().await?;
    source.wait_for_boot().await?;
    source.wait_for_line(&format!("{HEARTBEAT} 2")).await?;
    let target = source.start_incoming().await?;
    assert_eq!(
        target.backend().state(target.uid()).await?,
        VmState::Paused {
            reason: "inmigrate".into()
        }
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let uri = format!("tcp:127.0.0.1:{port}");
    target
        .backend()
        .migrate_incoming(target.uid(), &uri)
        .await?;
    let limits = corral_hypervisor::MigrationLimits {
        downtime_ms: 300,
        bandwidth: None,
    };
    source.backend().migrate(source.uid(), &uri, limits).await?;
    let done = loop {
        let info = source.backend().migration(source.uid()).await?;
        assert!(!info.failed(), "{info:?}");
        if info.completed() {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(done.transferred > 0, "{done:?}");
    assert!(done.downtime_ms.is_some(), "{done:?}");
    // The source stays stopped after the handover; the target waits (it was started with -S)
    // until it is told to run, so the guest never runs in both.
    assert_eq!(
        source.backend().state(source.uid()).await?,
        VmState::Paused {
            reason: "postmigrate".into()
        }
    );
    let before = source
        .last_heartbeat()
        .expect("a heartbeat before the move");
    target.backend().resume(target.uid()).await?;
    // The guest's counter carries on in the target: it was moved, not rebooted.
    let line = target
        .wait_for_line_since(target.output().mark(), HEARTBEAT, Duration::from_secs(30))
        .await?;
    let n: u64 = line.split_whitespace().last().unwrap_or_default().parse()?;
    assert!(
        n > before,
        "heartbeat {n} in the target after {before} in the source"
    );
    target.send_line("echo moved-$((40+2))").await?;
    target.wait_for_line("moved-42").await?;
    Ok(())
}
