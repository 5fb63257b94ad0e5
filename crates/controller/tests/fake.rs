//! The VM controller against the fake hypervisor and the real SQLite store.

use std::sync::Arc;
use std::time::Duration;

use corral_contract::{Boot, Phase, Power, RestartPolicy, Vm, VmSpec};
use corral_controller::{ControllerConfig, VmController};
use corral_hypervisor::{FakeHypervisor, Hypervisor, VmConfig, VmState};
use corral_service::VmService;
use corral_store::SqliteStore;

struct Fixture {
    svc: VmService,
    hv: Arc<FakeHypervisor>,
    ctl: Arc<VmController>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("state.db"))
        .await
        .unwrap();
    let svc = VmService::new(Arc::new(store));
    let hv = Arc::new(FakeHypervisor::new());
    let config = ControllerConfig {
        backoff_base: Duration::from_millis(1),
        shm_dir: dir.path().to_owned(),
        ..ControllerConfig::default()
    };
    let ctl = Arc::new(VmController::new(svc.clone(), hv.clone(), config));
    Fixture {
        svc,
        hv,
        ctl,
        _dir: dir,
    }
}

fn vm(name: &str, policy: RestartPolicy) -> Vm {
    let spec = VmSpec::builder(Boot::kernel("/k/vmlinuz"))
        .restart_policy(policy)
        .build()
        .unwrap();
    Vm::new(name.parse().unwrap(), spec)
}

impl Fixture {
    async fn settle(&self, name: &str) -> Vm {
        for _ in 0..5 {
            if let Some(delay) = self.ctl.reconcile(name).await.unwrap() {
                tokio::time::sleep(delay).await;
            }
        }
        self.svc.get(name).await.unwrap()
    }
}

#[tokio::test]
async fn create_starts_and_reports_status() {
    let f = fixture().await;
    let created = f.svc.create(vm("a", RestartPolicy::Never)).await.unwrap();
    let vm = f.settle("a").await;
    assert_eq!(vm.status.phase, Phase::Running);
    assert!(vm.status.pid.is_some());
    assert_eq!(vm.status.observed_generation, created.metadata.generation);
    assert_eq!(vm.status.condition("Ready").map(|c| c.status), Some(true));
    // Reconciling again changes nothing.
    let rv = vm.metadata.resource_version;
    assert_eq!(f.settle("a").await.metadata.resource_version, rv);
}

#[tokio::test]
async fn stop_pause_resume_start_follow_the_spec() {
    let f = fixture().await;
    f.svc.create(vm("a", RestartPolicy::Never)).await.unwrap();
    let uid = f.settle("a").await.metadata.uid;
    f.svc.set_power("a", Power::Paused, false).await.unwrap();
    assert_eq!(f.settle("a").await.status.phase, Phase::Paused);
    assert!(matches!(
        f.hv.state(&uid).await.unwrap(),
        VmState::Paused { .. }
    ));
    f.svc.set_power("a", Power::Running, false).await.unwrap();
    assert_eq!(f.settle("a").await.status.phase, Phase::Running);
    f.svc.set_power("a", Power::Stopped, false).await.unwrap();
    let stopped = f.settle("a").await;
    assert_eq!(stopped.status.phase, Phase::Stopped);
    assert_eq!(stopped.status.pid, None);
    f.svc.set_power("a", Power::Running, false).await.unwrap();
    assert_eq!(f.settle("a").await.status.phase, Phase::Running);
}

#[tokio::test]
async fn a_crash_fails_with_policy_never_and_restarts_with_on_failure() {
    let f = fixture().await;
    f.svc
        .create(vm("never", RestartPolicy::Never))
        .await
        .unwrap();
    f.svc
        .create(vm("onfail", RestartPolicy::OnFailure))
        .await
        .unwrap();
    let never = f.settle("never").await;
    let onfail = f.settle("onfail").await;

    f.hv.crash(&never.metadata.uid, 9).unwrap();
    let never = f.settle("never").await;
    assert_eq!(never.status.phase, Phase::Failed);
    assert_eq!(never.status.exit.as_ref().and_then(|e| e.signal), Some(9));

    f.hv.crash(&onfail.metadata.uid, 9).unwrap();
    let again = f.settle("onfail").await;
    assert_eq!(again.status.phase, Phase::Running);
    assert_ne!(again.status.pid, onfail.status.pid, "a new process");
}

/// Every run state QEMU can hold a guest in is handled: a panic, an emulation error or a
/// watchdog end the process as the failure it is (the restart policy applies, and a Failed
/// VM stays Failed); a failed write is reported and retried; a user's pause or a `-S` start
/// resumes.
#[tokio::test]
async fn qemu_run_states_are_each_handled() {
    let f = fixture().await;
    for (name, policy) in [
        ("never", RestartPolicy::Never),
        ("onfail", RestartPolicy::OnFailure),
        ("disk", RestartPolicy::Never),
        ("held", RestartPolicy::Never),
    ] {
        f.svc.create(vm(name, policy)).await.unwrap();
    }
    let never = f.settle("never").await;
    let onfail = f.settle("onfail").await;
    let disk = f.settle("disk").await;
    let held = f.settle("held").await;

    f.hv.hold(&never.metadata.uid, "guest-panicked").unwrap();
    let failed = f.settle("never").await;
    assert_eq!(failed.status.phase, Phase::Failed, "{:?}", failed.status);
    let exit = failed.status.exit.clone().expect("the exit is recorded");
    assert!(exit.reason.contains("guest-panicked"), "{exit:?}");
    assert!(matches!(
        f.hv.state(&never.metadata.uid).await.unwrap(),
        VmState::Exited(_)
    ));
    // Later looks do not turn the failure into a clean stop.
    assert_eq!(f.settle("never").await.status.phase, Phase::Failed);

    f.hv.hold(&onfail.metadata.uid, "internal-error").unwrap();
    let again = f.settle("onfail").await;
    assert_eq!(again.status.phase, Phase::Running);
    assert_ne!(again.status.pid, onfail.status.pid, "a new process");

    f.hv.hold(&disk.metadata.uid, "io-error").unwrap();
    let retry = f.ctl.reconcile("disk").await.unwrap();
    assert!(retry.is_some(), "looked at again to resume it");
    let paused = f.svc.get("disk").await.unwrap();
    assert_eq!(paused.status.phase, Phase::Paused);
    assert!(
        paused
            .status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("io-error") && m.contains("a disk write failed")),
        "{:?}",
        paused.status
    );

    f.hv.hold(&held.metadata.uid, "prelaunch").unwrap();
    assert_eq!(f.settle("held").await.status.phase, Phase::Running);
    f.hv.hold(&held.metadata.uid, "suspended").unwrap();
    let suspended = f.settle("held").await;
    assert_eq!(suspended.status.phase, Phase::Paused);
    assert_eq!(suspended.status.pid, held.status.pid, "left alone");
}

#[tokio::test]
async fn restart_runs_a_new_process_once_per_request() {
    let f = fixture().await;
    f.svc.create(vm("a", RestartPolicy::Never)).await.unwrap();
    let before = f.settle("a").await;
    f.svc.restart("a").await.unwrap();
    let after = f.settle("a").await;
    assert_eq!(after.status.phase, Phase::Running);
    assert_ne!(after.status.pid, before.status.pid);
    assert_eq!(
        f.settle("a").await.status.pid,
        after.status.pid,
        "one restart per request"
    );
}

#[tokio::test]
async fn delete_stops_cleans_up_and_removes_the_object() {
    let f = fixture().await;
    f.svc.create(vm("a", RestartPolicy::Always)).await.unwrap();
    let uid = f.settle("a").await.metadata.uid;
    f.svc.delete("a", None).await.unwrap();
    f.settle_missing("a").await;
    assert!(
        f.hv.list().await.unwrap().is_empty(),
        "nothing left of {uid}"
    );
}

impl Fixture {
    async fn settle_missing(&self, name: &str) {
        for _ in 0..5 {
            self.ctl.reconcile(name).await.unwrap();
        }
        assert!(self.svc.get(name).await.is_err());
    }
}

#[tokio::test]
async fn a_stopped_vm_is_created_without_a_process() {
    let f = fixture().await;
    let mut stopped = vm("a", RestartPolicy::Never);
    stopped.spec.power = Power::Stopped;
    f.svc.create(stopped).await.unwrap();
    let vm = f.settle("a").await;
    assert_eq!(vm.status.phase, Phase::Stopped);
    assert!(f.hv.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn run_loop_reacts_to_store_and_hypervisor_events_and_removes_orphans() {
    let f = fixture().await;
    // An orphan: the hypervisor runs something no object declares.
    let spec = VmSpec::builder(Boot::kernel("/k/vmlinuz")).build().unwrap();
    f.hv.start(&VmConfig::from_spec("orphan-uid", "orphan", &spec))
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(f.ctl.clone().run(stop_rx));
    f.svc
        .create(vm("a", RestartPolicy::OnFailure))
        .await
        .unwrap();
    let running = wait_for(&f.svc, "a", |vm| vm.status.phase == Phase::Running).await;
    assert!(
        !f.hv
            .list()
            .await
            .unwrap()
            .contains(&"orphan-uid".to_owned())
    );
    f.hv.crash(&running.metadata.uid, 9).unwrap();
    wait_for(&f.svc, "a", |vm| {
        vm.status.phase == Phase::Running && vm.status.pid != running.status.pid
    })
    .await;
    stop_tx.send(true).unwrap();
    run.await.unwrap().unwrap();
}

async fn wait_for(svc: &VmService, name: &str, pred: impl Fn(&Vm) -> bool) -> Vm {
    for _ in 0..200 {
        if let Ok(vm) = svc.get(name).await {
            if pred(&vm) {
                return vm;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{name} never reached the expected state: {:?}",
        svc.get(name).await
    );
}

#[tokio::test]
async fn a_vm_past_its_expiry_time_is_deleted_and_one_before_it_runs_until_then() {
    use corral_contract::names::annotations::EXPIRES_AT;
    let f = fixture().await;
    let at = |offset: i64| {
        let now = std::time::SystemTime::now();
        let t = if offset < 0 {
            now - Duration::from_secs(offset.unsigned_abs())
        } else {
            now + Duration::from_secs(offset as u64)
        };
        humantime::format_rfc3339_seconds(t).to_string()
    };
    let mut later = vm("later", RestartPolicy::Never);
    later
        .metadata
        .annotations
        .insert(EXPIRES_AT.into(), at(3600));
    let expires = later.metadata.annotations[EXPIRES_AT].clone();
    f.svc.create(later).await.unwrap();
    // Not `settle`, which would sleep until the expiry time this asks to be woken at.
    let mut next = None;
    for _ in 0..3 {
        next = f.ctl.reconcile("later").await.unwrap();
    }
    let running = f.svc.get("later").await.unwrap();
    assert_eq!(running.status.phase, Phase::Running);
    // Status tells readers when it goes.
    assert_eq!(running.status.expires_at.as_deref(), Some(expires.as_str()));
    let next = next.expect("a requeue by the expiry time");
    assert!(next <= Duration::from_secs(3600), "{next:?}");

    // Its time comes (the annotation is what a restart finds, too): gone, process and all.
    let mut now_due = f.svc.get("later").await.unwrap();
    now_due
        .metadata
        .annotations
        .insert(EXPIRES_AT.into(), at(-1));
    f.svc.update(now_due).await.unwrap();
    f.settle_missing("later").await;
    assert!(f.hv.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_guest_started_from_a_template_is_told_its_identity_even_after_a_daemon_restart() {
    let f = fixture().await;
    f.svc
        .create(vm("clone", RestartPolicy::Never))
        .await
        .unwrap();
    let running = f.settle("clone").await;
    assert_eq!(running.status.phase, Phase::Running);
    // As a corrald stopped right after starting it from a template leaves it: the state
    // restored, the identity not told.
    f.svc
        .update_status("clone", |_, st| {
            st.restored_from = Some(format!("tpl@blake3:{}", "0".repeat(64)));
            true
        })
        .await
        .unwrap();
    // The next look at the running VM tells it (the fake hypervisor has no guest agent: the
    // outcome is recorded as such).
    f.settle("clone").await;
    let told = wait_for(&f.svc, "clone", |vm| {
        vm.status.condition("GuestIdentity").is_some()
    })
    .await;
    let condition = told.status.condition("GuestIdentity").unwrap();
    assert!(!condition.status, "{condition:?}");
    assert!(
        condition
            .message
            .contains("keeps the template VM's hostname"),
        "{condition:?}"
    );
    assert_eq!(told.status.pid, running.status.pid, "the same process");
}
