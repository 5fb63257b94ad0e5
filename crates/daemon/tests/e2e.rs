//! corrald end to end: a real daemon, real QEMU guests (TCG here), driven through the typed
//! gRPC client. Evidence comes from inside the guests' serial consoles.

use std::collections::BTreeSet;
use std::time::Duration;

use corral_client::{Client, ClientError, Endpoint, reached};
use corral_contract::{Boot, ByteSize, Phase, RestartPolicy};
use corral_testkit::{Corrald, boots, kit_vm, last_heartbeat, wait_console, wait_phase};

type Result = anyhow::Result<()>;

const WAIT: Duration = Duration::from_secs(120);

async fn client(d: &Corrald) -> anyhow::Result<Client> {
    Ok(Client::connect(Endpoint::Unix(d.socket())).await?)
}

#[tokio::test]
async fn create_boots_and_the_lifecycle_follows_the_spec() -> Result {
    let d = Corrald::start(env!("CARGO_BIN_EXE_corrald"))?;
    let c = client(&d).await?;
    c.create_vm(&kit_vm("life", |b| b)).await?;
    let running = wait_phase(&c, &d, "life", Phase::Running).await?;
    wait_console(&c, &d, "life", "CORRAL_BOOT_OK", 0).await?;
    // What `auto` resolves to on this host (TCG here, KVM where it works), never a constant.
    let expected = corral_qemu::resolve_accel(
        corral_contract::Accel::Auto,
        corral_contract::Arch::X86_64,
        &corral_qemu::HostCaps::probe(),
    )?;
    assert_eq!(running.status.accelerator, Some(expected));
    let pid = running.status.pid.expect("a pid");

    // Inside the guest: the heartbeat stops while paused and goes on after, same boot.
    wait_console(&c, &d, "life", "CORRAL_HEARTBEAT 2", 0).await?;
    c.pause_vm("life").await?;
    wait_phase(&c, &d, "life", Phase::Paused).await?;
    let held = last_heartbeat(&c, "life").await?.expect("heartbeats");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        last_heartbeat(&c, "life").await?,
        Some(held),
        "a paused guest's heartbeat stops"
    );
    c.resume_vm("life").await?;
    wait_phase(&c, &d, "life", Phase::Running).await?;
    wait_console(&c, &d, "life", &format!("CORRAL_HEARTBEAT {}", held + 2), 0).await?;
    assert_eq!(boots(&c, "life").await?, 1, "resume is not a reboot");

    let mark = c.console_log("life", 0).await?.len();
    c.restart_vm("life").await?;
    let restarted = c
        .wait_for(
            "life",
            |vm| vm.is_some_and(|vm| reached(vm, Phase::Running) && vm.status.pid != Some(pid)),
            WAIT,
        )
        .await?
        .expect("still there");
    assert_ne!(restarted.status.pid, Some(pid));
    wait_console(&c, &d, "life", "CORRAL_BOOT_OK", mark).await?;

    c.stop_vm("life", false).await?;
    let stopped = wait_phase(&c, &d, "life", Phase::Stopped).await?;
    assert_eq!(
        stopped.status.exit.as_ref().map(|e| e.reason.as_str()),
        Some("guest-shutdown")
    );
    wait_console(&c, &d, "life", "CORRAL_POWEROFF", 0).await?;

    c.start_vm("life").await?;
    wait_phase(&c, &d, "life", Phase::Running).await?;
    c.delete_vm("life").await?;
    c.wait_for("life", |vm| vm.is_none(), WAIT).await?;
    assert!(d.qemu_pids().is_empty(), "no QEMU left");
    assert!(
        !d.run_dir().join("vms").join(&running.metadata.uid).exists(),
        "no files left"
    );
    Ok(())
}

#[tokio::test]
async fn a_memory_change_on_a_stopped_vm_takes_effect_at_next_start() -> Result {
    let d = Corrald::start(env!("CARGO_BIN_EXE_corrald"))?;
    let c = client(&d).await?;
    c.create_vm(&kit_vm("grow", |b| b)).await?;
    wait_phase(&c, &d, "grow", Phase::Running).await?;
    let before = wait_console(&c, &d, "grow", "CORRAL_HARDWARE", 0).await?;
    c.stop_vm("grow", true).await?;
    wait_phase(&c, &d, "grow", Phase::Stopped).await?;

    let mut bigger = c.get_vm("grow").await?;
    bigger.spec.memory = ByteSize::from_mib(512);
    bigger.spec.cpus = 2;
    c.update_vm(&bigger).await?;
    let mark = c.console_log("grow", 0).await?.len();
    c.start_vm("grow").await?;
    wait_phase(&c, &d, "grow", Phase::Running).await?;
    let after = wait_console(&c, &d, "grow", "CORRAL_HARDWARE", mark).await?;
    let mem_kb = |line: &str| -> u64 {
        line.split("mem_kb=")
            .nth(1)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(after.contains("cpus=2"), "{after}");
    assert!(
        mem_kb(&after) > mem_kb(&before) + 200_000,
        "{before} -> {after}"
    );
    Ok(())
}

#[tokio::test]
async fn kill_9_of_the_daemon_loses_nothing_and_duplicates_nothing() -> Result {
    let mut d = Corrald::start(env!("CARGO_BIN_EXE_corrald"))?;
    let c = client(&d).await?;
    for name in ["k1", "k2", "k3"] {
        c.create_vm(&kit_vm(name, |b| b)).await?;
    }
    let mut pids = BTreeSet::new();
    for name in ["k1", "k2", "k3"] {
        pids.insert(
            wait_phase(&c, &d, name, Phase::Running)
                .await?
                .status
                .pid
                .expect("pid"),
        );
    }
    assert_eq!(d.qemu_pids().into_iter().collect::<BTreeSet<_>>(), pids);
    let mut beats = Vec::new();
    for name in ["k1", "k2", "k3"] {
        wait_console(&c, &d, name, "CORRAL_HEARTBEAT 1", 0).await?;
        beats.push(last_heartbeat(&c, name).await?.expect("heartbeats"));
    }

    d.restart()?;
    let c = client(&d).await?;
    // The stored status still says Running, so wait for the new daemon to say it re-adopted
    // all three before checking that nothing changed.
    let deadline = std::time::Instant::now() + WAIT;
    while d.log().matches("adopted running VM").count() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted daemon did not re-adopt the three VMs: {}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for name in ["k1", "k2", "k3"] {
        let vm = wait_phase(&c, &d, name, Phase::Running).await?;
        assert!(
            pids.contains(&vm.status.pid.expect("pid")),
            "{name} kept its QEMU"
        );
    }
    assert_eq!(
        d.qemu_pids().into_iter().collect::<BTreeSet<_>>(),
        pids,
        "no extra QEMU"
    );
    // Inside each guest: the same boot goes on (its heartbeat counts up; one boot marker).
    for (name, beat) in ["k1", "k2", "k3"].into_iter().zip(beats) {
        wait_console(&c, &d, name, &format!("CORRAL_HEARTBEAT {}", beat + 2), 0).await?;
        assert_eq!(boots(&c, name).await?, 1, "{name} was not rebooted");
    }
    // The adopted VMs are really under control: stop one through the new daemon.
    c.stop_vm("k1", false).await?;
    wait_phase(&c, &d, "k1", Phase::Stopped).await?;
    Ok(())
}

#[tokio::test]
async fn a_killed_qemu_fails_with_policy_never_and_restarts_with_on_failure() -> Result {
    let d = Corrald::start(env!("CARGO_BIN_EXE_corrald"))?;
    let c = client(&d).await?;
    c.create_vm(&kit_vm("never", |b| b)).await?;
    c.create_vm(&kit_vm("again", |b| {
        b.restart_policy(RestartPolicy::OnFailure)
    }))
    .await?;
    let never = wait_phase(&c, &d, "never", Phase::Running).await?;
    let again = wait_phase(&c, &d, "again", Phase::Running).await?;
    for name in ["never", "again"] {
        wait_console(&c, &d, name, "CORRAL_BOOT_OK", 0).await?;
    }
    for vm in [&never, &again] {
        let pid = vm.status.pid.expect("pid") as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL)?;
    }
    let failed = wait_phase(&c, &d, "never", Phase::Failed).await?;
    assert_eq!(failed.status.exit.as_ref().and_then(|e| e.signal), Some(9));
    let restarted = c
        .wait_for(
            "again",
            |vm| {
                vm.is_some_and(|vm| {
                    vm.status.phase == Phase::Running && vm.status.pid != again.status.pid
                })
            },
            WAIT,
        )
        .await?
        .expect("still there");
    assert!(restarted.status.pid.is_some());
    // Inside the guests: `again` booted a second time; `never` did not.
    let deadline = std::time::Instant::now() + WAIT;
    while boots(&c, "again").await? < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "again did not boot again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(boots(&c, "never").await?, 1);
    Ok(())
}

#[tokio::test]
async fn twenty_concurrent_creates_all_land() -> Result {
    let d = Corrald::start(env!("CARGO_BIN_EXE_corrald"))?;
    let c = client(&d).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let c = c.clone();
        tasks.spawn(async move {
            let mut vm = kit_vm(&format!("many-{i}"), |b| b);
            vm.spec.power = corral_contract::Power::Stopped;
            c.create_vm(&vm).await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    assert_eq!(c.list_vms("").await?.len(), 20);
    for i in 0..20 {
        wait_phase(&c, &d, &format!("many-{i}"), Phase::Stopped).await?;
    }
    assert!(d.qemu_pids().is_empty());
    Ok(())
}

#[tokio::test]
async fn bad_input_names_the_field_and_creates_nothing() -> Result {
    let d = Corrald::start(env!("CARGO_BIN_EXE_corrald"))?;
    let c = client(&d).await?;
    let mut missing_kernel = kit_vm("nokernel", |b| b);
    if let Boot::Kernel { kernel, .. } = &mut missing_kernel.spec.boot {
        *kernel = "/nonexistent/vmlinuz".into();
    }
    let err = c.create_vm(&missing_kernel).await.unwrap_err();
    assert!(matches!(err, ClientError::Invalid { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("spec.boot.kernel.kernel: /nonexistent/vmlinuz"),
        "{err}"
    );
    assert_eq!(err.exit_code(), 1);
    assert!(c.list_vms("").await?.is_empty(), "nothing created");
    assert!(matches!(
        c.get_vm("nokernel").await,
        Err(ClientError::NotFound { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn racing_writers_one_wins_the_other_gets_a_conflict() -> Result {
    let d = Corrald::start(env!("CARGO_BIN_EXE_corrald"))?;
    let c = client(&d).await?;
    let mut stopped = kit_vm("race", |b| b);
    stopped.spec.power = corral_contract::Power::Stopped;
    c.create_vm(&stopped).await?;
    // Once the controller has written its status, nobody else writes the VM.
    let created = wait_phase(&c, &d, "race", Phase::Stopped).await?;
    let mut first = created.clone();
    first.spec.cpus = 2;
    let mut second = created.clone();
    second.spec.cpus = 3;
    let (a, b) = tokio::join!(c.update_vm(&first), c.update_vm(&second));
    let conflicts = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(ClientError::Conflict { .. })))
        .count();
    assert_eq!(
        (a.is_ok() as u8 + b.is_ok() as u8, conflicts),
        (1, 1),
        "{a:?} {b:?}"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_the_daemon_and_leaves_vms_running() -> Result {
    let mut d = Corrald::start(env!("CARGO_BIN_EXE_corrald"))?;
    let c = client(&d).await?;
    c.create_vm(&kit_vm("stays", |b| b)).await?;
    let pid = wait_phase(&c, &d, "stays", Phase::Running)
        .await?
        .status
        .pid
        .expect("pid");
    wait_console(&c, &d, "stays", "CORRAL_HEARTBEAT 1", 0).await?;
    let status = d.terminate()?;
    assert!(
        status.success(),
        "corrald exits cleanly on SIGTERM: {status}"
    );
    assert!(!d.socket().exists(), "the API socket is removed");
    assert_eq!(
        d.qemu_pids(),
        [pid],
        "the VM keeps running without its daemon"
    );
    d.restart()?;
    let c = client(&d).await?;
    assert_eq!(
        wait_phase(&c, &d, "stays", Phase::Running)
            .await?
            .status
            .pid,
        Some(pid)
    );
    // Inside the guest: it ran on while corrald was away, the same boot.
    let beat = last_heartbeat(&c, "stays").await?.expect("heartbeats");
    wait_console(
        &c,
        &d,
        "stays",
        &format!("CORRAL_HEARTBEAT {}", beat + 1),
        0,
    )
    .await?;
    assert_eq!(boots(&c, "stays").await?, 1);
    Ok(())
}

#[tokio::test]
async fn grpc_health_and_reflection_answer_on_the_socket() -> Result {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let d = Corrald::start(env!("CARGO_BIN_EXE_corrald"))?;
    let socket = d.socket();
    let channel = tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await?;
    let mut health = HealthClient::new(channel.clone());
    let reply = health
        .check(HealthCheckRequest {
            service: "corral.v1.VmService".into(),
        })
        .await?
        .into_inner();
    assert_eq!(reply.status(), ServingStatus::Serving);

    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let reply = replies.next().await.expect("a reply")?;
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        anyhow::bail!("unexpected reflection reply: {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "corral.v1.VmService"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
    Ok(())
}
