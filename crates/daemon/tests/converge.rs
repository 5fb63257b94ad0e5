//! Converge, always: what review found corrald giving up on, each shown from inside the guest.
//! A real corrald and real QEMU guests (TCG here), driven through the typed gRPC client.

use std::time::Duration;

use corral_client::{Client, Endpoint};
use corral_contract::{Phase, Power, RestartPolicy, Vm};
use corral_testkit::{Corrald, GuestKit, boots, kit_vm, last_heartbeat};

type Result = anyhow::Result<()>;

const WAIT: Duration = Duration::from_secs(120);

async fn client(d: &Corrald) -> anyhow::Result<Client> {
    Ok(Client::connect(Endpoint::Unix(d.socket())).await?)
}

/// The console text after the first `skip` bytes.
async fn console_after(c: &Client, name: &str, skip: usize) -> anyhow::Result<String> {
    let log = c.console_log(name, 0).await?;
    Ok(String::from_utf8_lossy(&log[skip.min(log.len())..]).into_owned())
}

/// A VM created paused sits in QEMU's `prelaunch` state (started with -S, never continued);
/// `resume` must run it. Before the fix the controller resumed only the reason `paused`.
#[tokio::test]
async fn a_vm_created_paused_runs_when_resumed() -> Result {
    let d = Corrald::start(env!("CARGO_BIN_EXE_corrald"))?;
    let c = client(&d).await?;
    c.create_vm(&kit_vm("held", |b| b.power(Power::Paused)))
        .await?;
    corral_testkit::wait_phase(&c, &d, "held", Phase::Paused).await?;
    // Paused before its first instruction: the guest has printed nothing at all.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = console_after(&c, "held", 0).await?;
    assert!(
        !before.contains("CORRAL_BOOT_OK"),
        "a paused guest booted: {before}"
    );
    c.resume_vm("held").await?;
    corral_testkit::wait_phase(&c, &d, "held", Phase::Running).await?;
    corral_testkit::wait_console(&c, &d, "held", "CORRAL_BOOT_OK", 0).await?;
    corral_testkit::wait_console(&c, &d, "held", "CORRAL_HEARTBEAT 2", 0).await?;
    Ok(())
}

/// After a corrald restart the VMs are adopted, not children: a QEMU killed then must still
/// count as a failure, so `on-failure` restarts it (a fresh boot inside the guest). Before the
/// fix it ended Stopped, and every corrald upgrade silently turned crash recovery off.
#[tokio::test]
async fn an_adopted_vm_killed_after_a_daemon_restart_is_restarted_by_policy() -> Result {
    let mut d = Corrald::start(env!("CARGO_BIN_EXE_corrald"))?;
    let c = client(&d).await?;
    c.create_vm(&kit_vm("phoenix", |b| {
        b.restart_policy(RestartPolicy::OnFailure)
    }))
    .await?;
    let first = corral_testkit::wait_phase(&c, &d, "phoenix", Phase::Running).await?;
    let pid = first.status.pid.expect("pid");
    corral_testkit::wait_console(&c, &d, "phoenix", "CORRAL_HEARTBEAT 2", 0).await?;

    d.restart()?;
    let c = client(&d).await?;
    let deadline = std::time::Instant::now() + WAIT;
    while !d.log().contains("adopted running VM") {
        assert!(
            std::time::Instant::now() < deadline,
            "not re-adopted: {}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The same boot goes on: its heartbeat keeps counting up, no second boot marker.
    let beat = last_heartbeat(&c, "phoenix").await?.expect("heartbeats");
    corral_testkit::wait_console(
        &c,
        &d,
        "phoenix",
        &format!("CORRAL_HEARTBEAT {}", beat + 2),
        0,
    )
    .await?;
    assert_eq!(boots(&c, "phoenix").await?, 1);
    assert_eq!(d.qemu_pids(), [pid]);

    let mark = c.console_log("phoenix", 0).await?.len();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGKILL,
    )?;
    let restarted = c
        .wait_for(
            "phoenix",
            |vm| {
                vm.is_some_and(|vm| {
                    vm.status.phase == Phase::Running && vm.status.pid.is_some_and(|p| p != pid)
                })
            },
            WAIT,
        )
        .await?
        .expect("still there");
    corral_testkit::wait_console(&c, &d, "phoenix", "CORRAL_BOOT_OK", mark).await?;
    assert_eq!(d.qemu_pids(), [restarted.status.pid.expect("pid")]);
    Ok(())
}

/// `always` restarts a VM whatever ended it — here the guest powering itself off, which
/// `on-failure` would accept — and a stop the user asked for is left alone.
#[tokio::test]
async fn policy_always_restarts_a_guest_that_powers_off_but_not_a_user_stop() -> Result {
    let d = Corrald::start(env!("CARGO_BIN_EXE_corrald"))?;
    let c = client(&d).await?;
    c.create_vm(&kit_vm("evergreen", |b| {
        b.restart_policy(RestartPolicy::Always)
    }))
    .await?;
    let first = corral_testkit::wait_phase(&c, &d, "evergreen", Phase::Running).await?;
    corral_testkit::wait_console(&c, &d, "evergreen", "CORRAL_BOOT_OK", 0).await?;
    let mark = c.console_log("evergreen", 0).await?.len();
    let console = c.attach_console("evergreen", true, false).await?;
    console.input.send(b"poweroff\n".to_vec()).await?;
    let again = c
        .wait_for(
            "evergreen",
            |vm| {
                vm.is_some_and(|vm| {
                    vm.status.phase == Phase::Running && vm.status.pid != first.status.pid
                })
            },
            WAIT,
        )
        .await?
        .expect("still there");
    corral_testkit::wait_console(&c, &d, "evergreen", "CORRAL_BOOT_OK", mark).await?;

    c.stop_vm("evergreen", false).await?;
    corral_testkit::wait_phase(&c, &d, "evergreen", Phase::Stopped).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped = c.get_vm("evergreen").await?;
    assert_eq!(stopped.status.phase, Phase::Stopped, "a user stop stays");
    assert!(d.qemu_pids().is_empty());
    assert_ne!(again.status.pid, first.status.pid);
    Ok(())
}

/// Dependencies wait, in any order: a VM booting a volume that does not exist yet is
/// accepted and waits in Pending naming it; the volume, created before its image exists,
/// waits for the image; once the image is imported everything converges and the guest boots
/// from the volume. Before, the VM was refused (or ended Failed for ever).
#[tokio::test]
async fn a_vm_waits_for_its_volume_which_waits_for_its_image() -> Result {
    let d = Corrald::start(env!("CARGO_BIN_EXE_corrald"))?;
    let c = client(&d).await?;
    let kit = GuestKit::get(corral_contract::Arch::X86_64)?;
    let vm: Vm = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "patient"},
        "spec": {"memory": "256M", "boot": {"volume": {"volume": "root"}}},
    }))?;
    c.create_vm(&vm).await?;
    let waiting = c
        .wait_for(
            "patient",
            |vm| {
                vm.is_some_and(|vm| {
                    vm.status
                        .message
                        .as_deref()
                        .is_some_and(|m| m.contains("volume/root is missing"))
                })
            },
            WAIT,
        )
        .await?
        .expect("still there");
    assert_eq!(waiting.status.phase, Phase::Pending);
    let ready = waiting
        .status
        .condition("Ready")
        .expect("a Ready condition");
    assert_eq!((ready.status, ready.reason.as_str()), (false, "Waiting"));

    let volume: corral_contract::Volume = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "root"},
        "spec": {"image": "disk"},
    }))?;
    c.create_volume(&volume).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = c.get_volume("root").await?;
        if v.status.message.as_deref() == Some("Waiting: image/disk is missing") {
            assert_eq!(v.status.phase, corral_contract::StoragePhase::Pending);
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the volume does not say it waits for its image: {:?}",
            v.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let image: corral_contract::Image = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "disk"},
        "spec": {"source": {"path": kit.boot_disk()}},
    }))?;
    c.create_image(&image).await?;
    corral_testkit::wait_phase(&c, &d, "patient", Phase::Running).await?;
    corral_testkit::wait_console(&c, &d, "patient", "CORRAL_BOOT_OK", 0).await?;
    Ok(())
}

/// A guest that ignores the power button (booted with `acpi=off`) held a delete for the
/// whole graceful timeout. `delete --force` skips the graceful stop; `--grace` bounds it. The
/// bounds below are the point of the feature: corrald's default grace is 10 s.
#[tokio::test]
async fn delete_force_and_grace_do_not_wait_on_a_guest_that_ignores_acpi() -> Result {
    let d = Corrald::start(env!("CARGO_BIN_EXE_corrald"))?;
    let c = client(&d).await?;
    let kit = GuestKit::get(corral_contract::Arch::X86_64)?;
    for name in ["deaf-force", "deaf-grace"] {
        let vm: Vm = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"memory": "256M", "boot": {"kernel": {
                "kernel": kit.kernel(),
                "initrd": kit.initrd(),
                "cmdline": format!("console={} quiet panic=-1 acpi=off", kit.console()),
            }}},
        }))?;
        c.create_vm(&vm).await?;
    }
    for name in ["deaf-force", "deaf-grace"] {
        corral_testkit::wait_phase(&c, &d, name, Phase::Running).await?;
        corral_testkit::wait_console(&c, &d, name, "CORRAL_BOOT_OK", 0).await?;
    }
    let t0 = std::time::Instant::now();
    c.delete_vm_with("deaf-force", Some(0)).await?;
    c.wait_for("deaf-force", |vm| vm.is_none(), WAIT).await?;
    let forced = t0.elapsed();
    let t1 = std::time::Instant::now();
    c.delete_vm_with("deaf-grace", Some(2)).await?;
    c.wait_for("deaf-grace", |vm| vm.is_none(), WAIT).await?;
    let graced = t1.elapsed();
    assert!(forced < Duration::from_secs(8), "--force took {forced:?}");
    // The guest really ignored the power button: the full 2 s passed before QEMU was told
    // to quit, and no more.
    assert!(
        graced >= Duration::from_secs(2) && graced < Duration::from_secs(8),
        "--grace 2 took {graced:?}"
    );
    assert!(d.qemu_pids().is_empty());
    Ok(())
}

/// A volume whose making failed (here `qemu-img` failing, as on a full disk) was `Failed` for
/// good, and so was every VM on it. Now it is tried again with backoff, the VM says which
/// dependency failed and why, and both go on by themselves once `qemu-img` works again.
#[tokio::test]
async fn a_failed_volume_is_made_again_and_its_vm_recovers_by_itself() -> Result {
    let work = tempfile::tempdir()?;
    let flag = work.path().join("broken");
    std::fs::write(&flag, b"")?;
    let wrapper = work.path().join("qemu-img");
    let real = ["/usr/bin/qemu-img", "/usr/local/bin/qemu-img"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("qemu-img is installed by scripts/setup.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$1\" in create) [ -e '{}' ] && {{ echo 'qemu-img: injected failure' >&2; exit 1; }};; esac\nexec {real} \"$@\"\n",
            flag.display()
        ),
    )?;
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let d = Corrald::start_with(
        env!("CARGO_BIN_EXE_corrald"),
        &["--qemu-img", wrapper.to_str().unwrap()],
    )?;
    let c = client(&d).await?;
    let kit = GuestKit::get(corral_contract::Arch::X86_64)?;
    let image: corral_contract::Image = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "disk"},
        "spec": {"source": {"path": kit.boot_disk()}},
    }))?;
    c.create_image(&image).await?;
    let volume: corral_contract::Volume = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "root"},
        "spec": {"image": "disk"},
    }))?;
    c.create_volume(&volume).await?;
    let vm: Vm = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "sturdy"},
        "spec": {"memory": "256M", "boot": {"volume": {"volume": "root"}}},
    }))?;
    c.create_vm(&vm).await?;
    let failed = c
        .wait_for(
            "sturdy",
            |vm| {
                vm.and_then(|vm| vm.status.condition("Ready"))
                    .is_some_and(|r| r.reason == "DependencyFailed")
            },
            WAIT,
        )
        .await?
        .expect("still there");
    let ready = failed.status.condition("Ready").expect("Ready condition");
    assert!(
        ready.message.contains("volume/root failed") && ready.message.contains("injected failure"),
        "{ready:?}"
    );
    let v = c.get_volume("root").await?;
    let message = v.status.message.clone().unwrap_or_default();
    assert!(message.contains("retrying in"), "{:?}", v.status);

    // qemu-img works again: the volume is made on its next try, and the VM boots from it.
    std::fs::remove_file(&flag)?;
    corral_testkit::wait_phase(&c, &d, "sturdy", Phase::Running).await?;
    corral_testkit::wait_console(&c, &d, "sturdy", "CORRAL_BOOT_OK", 0).await?;
    assert_eq!(
        c.get_volume("root").await?.status.phase,
        corral_contract::StoragePhase::Ready
    );
    Ok(())
}
