//! 10,000 VMs through the service: prints creates/s and `VmService::list("")` time (run in
//! release with `--nocapture`; nothing here asserts on time).

use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_contract::{Boot, Power, Vm, VmSpec};
use corral_service::VmService;
use corral_store::SqliteStore;

const VMS: usize = 10_000;

fn vm(i: usize) -> Vm {
    let boot = Boot::Kernel {
        kernel: "/var/lib/corral/images/blake3/4f1c2e9a/vmlinuz".into(),
        initrd: Some("/var/lib/corral/images/blake3/4f1c2e9a/initrd.img".into()),
        cmdline: Some("console=ttyS0 quiet root=/dev/vda rw".into()),
    };
    let spec = VmSpec::builder(boot)
        .cpus(2)
        .memory("2G".parse().expect("valid size"))
        .power(Power::Stopped)
        .build()
        .expect("valid spec");
    let mut vm = Vm::new(format!("vm-{i:05}").parse().expect("valid name"), spec);
    let labels = &mut vm.metadata.labels;
    labels.insert("tier".into(), "web".into());
    labels.insert("shard".into(), (i % 8).to_string());
    if i % 10 == 0 {
        labels.insert("gpu".into(), "a100".into());
    }
    vm.metadata
        .annotations
        .insert("corral.dev/owner".into(), "bench".into());
    vm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_vms() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("state.db"))
        .await
        .unwrap();
    let svc = VmService::new(Arc::new(store));

    let start = Instant::now();
    for i in 0..VMS {
        svc.create(vm(i)).await.unwrap();
    }
    let create = start.elapsed();

    // The first list also warms SQLite's page cache; report it and the best of three more.
    let start = Instant::now();
    let (all, revision) = svc.list("").await.unwrap();
    let first = start.elapsed();
    assert_eq!(all.len(), VMS);
    assert_eq!(revision, VMS as u64);
    assert!(
        all.windows(2)
            .all(|w| w[0].metadata.name.as_str() < w[1].metadata.name.as_str())
    );
    assert!(all.iter().all(|vm| vm.metadata.resource_version > 0));
    let body = serde_json::to_string(&all[0]).unwrap().len();
    drop(all);
    let mut warm = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let (listed, _) = svc.list("").await.unwrap();
        warm = warm.min(start.elapsed());
        assert_eq!(listed.len(), VMS);
    }

    let start = Instant::now();
    let (gpus, _) = svc.list("gpu,shard=0").await.unwrap();
    let selected = start.elapsed();
    assert_eq!(gpus.len(), VMS / 40);

    eprintln!(
        "service scale ({VMS} VMs of ~{body} bytes of JSON, power stopped, file-backed, {} build):",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    eprintln!(
        "  VmService::create:          {create:>10.2?}  ({:.0} creates/s)",
        VMS as f64 / create.as_secs_f64()
    );
    eprintln!("  VmService::list(\"\"), first: {first:>10.2?}");
    eprintln!("  VmService::list(\"\"), warm:  {warm:>10.2?}  (best of 3)");
    eprintln!(
        "  list(\"gpu,shard=0\"):         {selected:>10.2?}  ({} matches)",
        gpus.len()
    );
}
