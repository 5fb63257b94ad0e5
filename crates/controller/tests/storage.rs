//! The storage controller with the real SQLite store and real qemu-img, the fake hypervisor,
//! and the VM controller resolving volumes.

use std::sync::Arc;

use corral_contract::{
    Boot, ByteSize, DiskFormat, Image, ImageFormat, ImageSource, ImageSpec, Phase, Power, Snapshot,
    SnapshotSpec, StoragePhase, Vm, VmSpec, Volume, VolumeAttachment, VolumeKind, VolumeSpec,
};
use corral_controller::{ControllerConfig, StorageController, VmController};
use corral_hypervisor::FakeHypervisor;
use corral_service::HostAccess;
use corral_service::{ImportProgress, StorageConfig, StorageService};
use corral_store::{SqliteStore, Store};

struct Fixture {
    fake: Arc<FakeHypervisor>,
    storage: StorageService,
    ctl: StorageController,
    vms: Arc<VmController>,
    dir: tempfile::TempDir,
}

async fn fixture(qemu_img: &str) -> Fixture {
    fixture_with_pools(qemu_img, &[]).await
}

/// A fixture whose node has storage pools `pools` (name, shared) under `<dir>/pools/`.
async fn fixture_with_pools(qemu_img: &str, pools: &[(&str, bool)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(dir.path().join("state.db"))
            .await
            .unwrap(),
    );
    let mut config = StorageConfig::new(dir.path());
    config.qemu_img = qemu_img.into();
    for (name, shared) in pools {
        let pool = corral_service::PoolConfig {
            path: dir.path().join("pools").join(name),
            shared: *shared,
        };
        config.pools.insert((*name).to_owned(), pool);
    }
    let storage = StorageService::new(store, config).unwrap();
    let hv = Arc::new(FakeHypervisor::new());
    let ctl = StorageController::new(storage.clone(), hv.clone());
    let fake = hv.clone();
    let vms = Arc::new(
        VmController::new(
            storage.vms().clone(),
            hv,
            ControllerConfig {
                shm_dir: dir.path().to_owned(),
                ..ControllerConfig::default()
            },
        )
        .with_storage(storage.clone()),
    );
    Fixture {
        fake,
        storage,
        ctl,
        vms,
        dir,
    }
}

fn volume(name: &str, spec: VolumeSpec) -> Volume {
    Volume::new(name.parse().unwrap(), spec)
}

fn empty(size: ByteSize, format: Option<DiskFormat>) -> VolumeSpec {
    VolumeSpec {
        kind: VolumeKind::Disk,
        format,
        size: Some(size),
        image: None,
        pool: None,
    }
}

fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|it| it.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn volumes_are_made_grown_and_removed_leaving_no_file() {
    let f = fixture("qemu-img").await;
    let spec = empty(ByteSize::from_mib(8), Some(DiskFormat::Raw));
    f.storage.create_volume(volume("a", spec)).await.unwrap();
    f.ctl.reconcile("Volume/a").await.unwrap();
    let a = f.storage.volumes.get("a").await.unwrap();
    assert_eq!(a.status.phase, StoragePhase::Ready, "{:?}", a.status);
    assert_eq!(a.status.size, Some(8 << 20));
    let path = std::path::PathBuf::from(a.status.path.clone().unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 << 20);

    f.storage
        .resize_volume("a", ByteSize::from_mib(16))
        .await
        .unwrap();
    f.ctl.reconcile("Volume/a").await.unwrap();
    let a = f.storage.volumes.get("a").await.unwrap();
    assert_eq!(a.status.size, Some(16 << 20));
    assert_eq!(a.status.observed_generation, a.metadata.generation);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 16 << 20);

    f.storage.delete_volume("a").await.unwrap();
    f.ctl.reconcile("Volume/a").await.unwrap();
    assert!(f.storage.volumes.get("a").await.is_err());
    assert!(files(&f.dir.path().join("volumes")).is_empty());
}

/// A volume in a pool is made in the pool's directory (marked shared when the pool is), and
/// a VM's disk is that file; one in a pool this node lacks waits, saying how to add it, and
/// leaves no file anywhere.
#[tokio::test]
async fn volumes_are_made_in_their_pool_and_one_of_a_missing_pool_waits() {
    let f = fixture_with_pools("qemu-img", &[("nfs", true), ("fast", false)]).await;
    let pooled = |pool: &str| VolumeSpec {
        pool: Some(pool.parse().unwrap()),
        ..empty(ByteSize::from_mib(8), None)
    };
    for (name, pool, shared) in [("n", "nfs", true), ("l", "fast", false)] {
        f.storage
            .create_volume(volume(name, pooled(pool)))
            .await
            .unwrap();
        f.ctl.reconcile(&format!("Volume/{name}")).await.unwrap();
        let v = f.storage.volumes.get(name).await.unwrap();
        assert_eq!(v.status.phase, StoragePhase::Ready, "{:?}", v.status);
        assert_eq!(v.status.shared, shared, "{name}");
        let file = f
            .dir
            .path()
            .join("pools")
            .join(pool)
            .join(format!("{}.qcow2", v.metadata.uid));
        assert_eq!(v.status.path.as_deref(), file.to_str());
        assert!(file.exists());
    }
    assert!(files(&f.dir.path().join("volumes")).is_empty());

    // A VM's disk is the file in the pool, as this node names it.
    let spec = VmSpec::builder(Boot::kernel("/k"))
        .volume(VolumeAttachment {
            volume: "n".parse().unwrap(),
            readonly: false,
            serial: None,
        })
        .build()
        .unwrap();
    let vm = f
        .storage
        .vms()
        .create(Vm::new("vm".parse().unwrap(), spec))
        .await
        .unwrap();
    f.vms.reconcile("vm").await.unwrap();
    let config = f.fake.config(&vm.metadata.uid).unwrap();
    assert!(
        config.disks[0]
            .path
            .starts_with(f.dir.path().join("pools/nfs")),
        "{:?}",
        config.disks
    );

    // The spec's pool never changes.
    let mut moved = f.storage.volumes.get("n").await.unwrap();
    moved.spec.pool = Some("fast".parse().unwrap());
    let err = f.storage.update_volume(moved).await.unwrap_err();
    assert!(err.to_string().contains("spec.pool"), "{err}");

    f.storage
        .create_volume(volume("m", pooled("ceph")))
        .await
        .unwrap();
    f.ctl.reconcile("Volume/m").await.unwrap();
    let m = f.storage.volumes.get("m").await.unwrap();
    assert_eq!(m.status.phase, StoragePhase::Pending);
    let message = m.status.message.unwrap_or_default();
    assert!(
        message.contains("no storage pool \"ceph\"") && message.contains("--storage-pool ceph="),
        "{message}"
    );
    assert!(m.status.path.is_none());
    f.storage.delete_volume("m").await.unwrap();
    f.ctl.reconcile("Volume/m").await.unwrap();
    assert!(f.storage.volumes.get("m").await.is_err());
}

/// Volume files hold guest data: made 0600, and one left wider (by an older corrald, which
/// made them 0644) is narrowed when it is next reconciled.
#[tokio::test]
async fn volume_files_are_private_and_a_wider_one_is_narrowed() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture("qemu-img").await;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    for (name, format) in [("q", DiskFormat::Qcow2), ("r", DiskFormat::Raw)] {
        let spec = empty(ByteSize::from_mib(8), Some(format));
        f.storage.create_volume(volume(name, spec)).await.unwrap();
        f.ctl.reconcile(&format!("Volume/{name}")).await.unwrap();
        let v = f.storage.volumes.get(name).await.unwrap();
        let path = std::path::PathBuf::from(v.status.path.unwrap());
        assert_eq!(mode(&path), 0o600, "{name}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        f.ctl.reconcile(&format!("Volume/{name}")).await.unwrap();
        assert_eq!(mode(&path), 0o600, "{name} narrowed");
    }
}

#[tokio::test]
async fn a_volume_qemu_img_cannot_make_fails_and_leaves_no_file() {
    let f = fixture("/nonexistent/qemu-img").await;
    let spec = empty(ByteSize::from_mib(8), None);
    f.storage.create_volume(volume("a", spec)).await.unwrap();
    f.ctl.reconcile("Volume/a").await.unwrap();
    let a = f.storage.volumes.get("a").await.unwrap();
    assert_eq!(a.status.phase, StoragePhase::Failed);
    assert!(
        a.status
            .message
            .as_deref()
            .unwrap()
            .contains("qemu-img not found"),
        "{:?}",
        a.status
    );
    assert!(files(&f.dir.path().join("volumes")).is_empty());
}

#[tokio::test]
async fn a_vm_gets_its_volumes_and_a_stopped_vm_takes_a_disk_snapshot() {
    let f = fixture("qemu-img").await;
    let src = f.dir.path().join("weights.bin");
    std::fs::write(&src, vec![3u8; 1 << 20]).unwrap();
    let image = Image::new(
        "w".parse().unwrap(),
        ImageSpec {
            source: ImageSource::Path(src),
            format: Some(ImageFormat::Raw),
            shared: false,
            checksum: None,
        },
    );
    f.storage
        .create_image(image, ImportProgress::default(), HostAccess::Admin)
        .await
        .unwrap();
    let weights = VolumeSpec {
        kind: VolumeKind::Weights,
        format: None,
        size: None,
        image: Some("w".parse().unwrap()),
        pool: None,
    };
    f.storage.create_volume(volume("w", weights)).await.unwrap();
    let root = empty(ByteSize::from_mib(8), None);
    f.storage.create_volume(volume("root", root)).await.unwrap();
    f.ctl.reconcile("Volume/w").await.unwrap();
    f.ctl.reconcile("Volume/root").await.unwrap();

    let spec = VmSpec::builder(Boot::Volume {
        volume: "root".parse().unwrap(),
    })
    .volume(VolumeAttachment {
        volume: "w".parse().unwrap(),
        readonly: false,
        serial: Some("w1".into()),
    })
    .power(Power::Stopped)
    .build()
    .unwrap();
    let vms = f.storage.vms();
    vms.create(Vm::new("vm".parse().unwrap(), spec))
        .await
        .unwrap();
    f.vms.reconcile("vm").await.unwrap();

    let snap = Snapshot::new(
        "s".parse().unwrap(),
        SnapshotSpec {
            vm: "vm".parse().unwrap(),
            memory: false,
        },
    );
    f.storage.create_snapshot(snap).await.unwrap();
    f.ctl.reconcile("Snapshot/s").await.unwrap();
    let s = f.storage.snapshots.get("s").await.unwrap();
    assert_eq!(s.status.phase, StoragePhase::Ready, "{:?}", s.status);
    assert_eq!(
        s.status.volumes,
        ["root"],
        "weights volumes hold no snapshot"
    );
    let root = f.storage.volumes.get("root").await.unwrap();
    let info = f
        .storage
        .qemu_img()
        .info(root.status.path.as_ref().unwrap().as_ref(), Some("qcow2"))
        .unwrap();
    assert_eq!(info.snapshots[0].name, s.status.tag.clone().unwrap());

    // Start: the fake receives the boot volume first, then the weights read-only.
    vms.set_power("vm", Power::Running, false).await.unwrap();
    f.vms.reconcile("vm").await.unwrap();
    let vm = vms.get("vm").await.unwrap();
    assert_eq!(vm.status.phase, Phase::Running, "{:?}", vm.status);
    let config = f.fake.config(&vm.metadata.uid).unwrap();
    let w = f.storage.volumes.get("w").await.unwrap();
    assert_eq!(config.disks.len(), 2);
    assert_eq!(config.disks[0].path.to_str(), root.status.path.as_deref());
    assert!(!config.disks[0].readonly);
    assert_eq!(config.disks[1].path.to_str(), w.status.path.as_deref());
    assert!(config.disks[1].readonly, "weights are always read-only");
    assert_eq!(config.disks[1].serial.as_deref(), Some("w1"));

    f.storage.delete_snapshot("s").await.unwrap();
    f.ctl.reconcile("Snapshot/s").await.unwrap();
    assert!(f.storage.snapshots.get("s").await.is_err());
}

#[tokio::test]
async fn only_an_admin_may_build_an_image_and_a_refusal_leaves_nothing() {
    let f = fixture("qemu-img").await;
    let image = Image::new(
        "deb".parse().unwrap(),
        ImageSpec {
            source: ImageSource::Build(corral_contract::ImageBuild {
                distribution: corral_contract::Distribution::Debian12,
                packages: vec!["git".into()],
                size: None,
            }),
            format: None,
            checksum: None,
            shared: false,
        },
    );
    let err = f
        .storage
        .create_image(image, ImportProgress::default(), HostAccess::Confined)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("for admins only"), "{err}");
    assert!(f.storage.images.get("deb").await.is_err());
    assert!(!f.dir.path().join("builds").exists(), "no build started");
}
