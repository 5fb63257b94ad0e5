//! Adoption after a daemon restart, against the fake hypervisor and the real SQLite store: an
//! adopted VM is judged exactly like one this controller started.

use std::sync::Arc;
use std::time::Duration;

use corral_contract::{Boot, Phase, Power, Vm, VmSpec};
use corral_controller::{ControllerConfig, VmController};
use corral_hypervisor::{FakeHypervisor, Hypervisor, VmConfig};
use corral_service::VmService;
use corral_store::SqliteStore;

/// corrald killed after spawning QEMU but before writing its pid: the next corrald adopts the
/// process and the status names it (before, the VM read Running with no pid).
#[tokio::test]
async fn a_vm_started_just_before_a_crash_is_adopted_with_its_pid() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("state.db"))
        .await
        .unwrap();
    let svc = VmService::new(Arc::new(store));
    let hv = Arc::new(FakeHypervisor::new());
    let config = || ControllerConfig {
        backoff_base: Duration::from_millis(1),
        shm_dir: dir.path().to_owned(),
        ..ControllerConfig::default()
    };
    let spec = VmSpec::builder(Boot::kernel("/k/vmlinuz"))
        .power(Power::Stopped)
        .build()
        .unwrap();
    let vm = svc
        .create(Vm::new("early".parse().unwrap(), spec.clone()))
        .await
        .unwrap();
    let first = VmController::new(svc.clone(), hv.clone(), config());
    first.reconcile("early").await.unwrap();
    svc.set_power("early", Power::Running, false).await.unwrap();
    // What the first corrald did before it died: QEMU runs, its pid was never written.
    let info = hv
        .start(&VmConfig::from_spec(&vm.metadata.uid, "early", &spec))
        .await
        .unwrap();
    drop(first);
    hv.forget_all();

    let second = VmController::new(svc.clone(), hv.clone(), config());
    for _ in 0..3 {
        second.reconcile("early").await.unwrap();
    }
    let vm = svc.get("early").await.unwrap();
    assert_eq!(vm.status.phase, Phase::Running);
    assert_eq!(vm.status.pid, Some(info.pid), "the adopted process's pid");
    assert_eq!(hv.list().await.unwrap().len(), 1, "no second process");
}
