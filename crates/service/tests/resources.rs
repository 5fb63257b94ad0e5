//! The generic resource path, driven through different kinds on the real SQLite store: the
//! same code creates, updates, guards and deletes networks, volumes and VMs; only their
//! strategies differ.

use std::sync::Arc;

use corral_contract::{
    Boot, ByteSize, Image, ImageSource, ImageSpec, ImageStatus, Network, NetworkMode, NetworkPhase,
    NetworkSpec, StoragePhase, Vm, VmSpec, Volume, VolumeAttachment, VolumeSpec,
};
use corral_service::{
    ErrorCode, EventType, NetworkService, ServiceError, StorageConfig, StorageService, VmService,
};
use corral_store::SqliteStore;

struct Services {
    vms: VmService,
    nets: NetworkService,
    storage: StorageService,
    _dir: tempfile::TempDir,
}

async fn services() -> Services {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(dir.path().join("state.db"))
            .await
            .unwrap(),
    );
    Services {
        vms: VmService::new(store.clone()),
        nets: NetworkService::new(store.clone()),
        storage: StorageService::new(store, StorageConfig::new(dir.path())).unwrap(),
        _dir: dir,
    }
}

fn network(name: &str) -> Network {
    Network::new(name.parse().unwrap(), NetworkSpec::default())
}

fn volume(name: &str, gib: u64) -> Volume {
    let spec = VolumeSpec {
        kind: Default::default(),
        format: None,
        size: Some(ByteSize::from_gib(gib)),
        image: None,
        pool: None,
    };
    Volume::new(name.parse().unwrap(), spec)
}

fn vm_using(name: &str, volume: &str, network: &str) -> Vm {
    let mut att = corral_contract::NetworkAttachment::new(network.parse().unwrap());
    att.forwards.clear();
    let spec = VmSpec::builder(Boot::kernel("/k/vmlinuz"))
        .volume(VolumeAttachment {
            volume: volume.parse().unwrap(),
            readonly: false,
            serial: None,
        })
        .network(att)
        .build()
        .unwrap();
    Vm::new(name.parse().unwrap(), spec)
}

#[tokio::test]
async fn create_stamps_identity_and_the_kinds_initial_status() {
    let s = services().await;
    let mut net = network("lan");
    net.status.phase = NetworkPhase::Failed;
    let net = s.nets.create(net).await.unwrap();
    assert_eq!(net.metadata.uid.len(), 36);
    assert_eq!(net.metadata.generation, 1);
    assert!(net.metadata.created_at.is_some());
    assert_eq!(
        net.status.phase,
        NetworkPhase::Ready,
        "user networks start Ready"
    );

    let mut vol = volume("data", 1);
    vol.status.phase = StoragePhase::Ready;
    let vol = s.storage.volumes.create(vol).await.unwrap();
    assert_eq!(vol.metadata.generation, 1);
    assert_eq!(
        vol.status.phase,
        StoragePhase::Pending,
        "request status ignored"
    );

    for err in [
        s.nets.create(network("lan")).await.unwrap_err(),
        s.storage
            .volumes
            .create(volume("data", 1))
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(err, ServiceError::AlreadyExists { .. }), "{err}");
        assert_eq!(err.code(), ErrorCode::AlreadyExists);
    }

    // An Image is created only by importing its bytes: a bare create is refused.
    let mut image = Image::new(
        "img".parse().unwrap(),
        ImageSpec {
            source: ImageSource::Url("https://example.invalid/x.qcow2".into()),
            format: None,
            shared: false,
            checksum: None,
        },
    );
    image.status = ImageStatus {
        digest: Some(format!("blake3:{}", "0".repeat(64))),
        ..Default::default()
    };
    let err = s.storage.images.create(image).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    assert!(!s.storage.images.exists("img").await.unwrap());
}

#[tokio::test]
async fn updates_bump_generation_on_spec_changes_and_conflict_on_stale_versions() {
    let s = services().await;
    let vol = s.storage.volumes.create(volume("data", 1)).await.unwrap();
    let net = s.nets.create(network("lan")).await.unwrap();

    let mut labelled = vol.clone();
    labelled.metadata.labels.insert("tier".into(), "db".into());
    let labelled = s.storage.volumes.update(labelled).await.unwrap();
    assert_eq!(labelled.metadata.generation, 1, "labels are not intent");
    let mut bigger = labelled.clone();
    bigger.spec.size = Some(ByteSize::from_gib(2));
    let bigger = s.storage.volumes.update(bigger).await.unwrap();
    assert_eq!(bigger.metadata.generation, 2);

    // The first read is stale now: the same code refuses it for both kinds.
    let mut stale = vol.clone();
    stale.spec.size = Some(ByteSize::from_gib(3));
    let err = s.storage.volumes.update(stale).await.unwrap_err();
    assert!(matches!(err, ServiceError::Conflict { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::Aborted);
    let mut relabelled = net.clone();
    relabelled.metadata.labels.insert("a".into(), "b".into());
    s.nets.update(relabelled.clone()).await.unwrap();
    let err = s.nets.update(relabelled).await.unwrap_err();
    assert!(matches!(err, ServiceError::Conflict { .. }), "{err}");

    // Each kind's update rules: a volume only grows and keeps its format; a network's spec is
    // fixed at creation.
    let mut smaller = s.storage.volumes.get("data").await.unwrap();
    smaller.spec.size = Some(ByteSize::from_gib(1));
    let err = s.storage.volumes.update(smaller).await.unwrap_err();
    assert!(
        err.to_string().starts_with("spec.size: volumes only grow"),
        "{err}"
    );
    let mut raw = s.storage.volumes.get("data").await.unwrap();
    raw.spec.format = Some(corral_contract::DiskFormat::Raw);
    let err = s.storage.volumes.update(raw).await.unwrap_err();
    assert!(
        matches!(
            err,
            ServiceError::Immutable {
                field: "spec.format",
                ..
            }
        ),
        "{err}"
    );
    let mut bridged = s.nets.get("lan").await.unwrap();
    bridged.spec.mode = NetworkMode::Bridge;
    let err = s.nets.update(bridged).await.unwrap_err();
    assert!(matches!(err, ServiceError::Immutable { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn watch_reports_typed_events_for_the_named_object_only() {
    let s = services().await;
    let (_, revision) = s.nets.list("").await.unwrap();
    let mut watch = s.nets.watch(Some("a"), revision).await.unwrap();
    s.nets.create(network("b")).await.unwrap();
    s.nets.create(network("a")).await.unwrap();
    s.nets
        .set_status("a", NetworkPhase::Failed, Some("broken".into()))
        .await
        .unwrap();
    s.nets.delete("a", None).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = watch.recv().await.unwrap().unwrap();
        assert_eq!(event.object.metadata.name.as_str(), "a");
        seen.push((event.event, event.object.status.phase));
    }
    assert_eq!(
        seen,
        [
            (EventType::Added, NetworkPhase::Ready),
            (EventType::Modified, NetworkPhase::Failed),
            (EventType::Deleted, NetworkPhase::Failed),
        ]
    );
}

#[tokio::test]
async fn deletes_are_guarded_while_in_use_then_immediate_or_finalized_by_kind() {
    let s = services().await;
    s.nets.create(network("lan")).await.unwrap();
    s.storage.volumes.create(volume("data", 1)).await.unwrap();
    let vm = s.vms.create(vm_using("web", "data", "lan")).await.unwrap();

    for err in [
        s.nets.delete("lan", None).await.unwrap_err(),
        s.storage.volumes.delete("data", None).await.unwrap_err(),
    ] {
        match &err {
            ServiceError::InUse { by_kind, by, .. } => {
                assert_eq!((*by_kind, by.as_slice()), ("VM", &["web".to_owned()][..]));
            }
            other => panic!("not InUse: {other}"),
        }
        assert_eq!(err.code(), ErrorCode::FailedPrecondition);
        assert!(err.to_string().contains("is used by VM \"web\""), "{err}");
    }

    // The VM kind is finalized by its controller: delete marks it, new intent is refused.
    let marked = s.vms.delete("web", None).await.unwrap();
    assert!(marked.metadata.deleting);
    let err = s.vms.restart("web").await.unwrap_err();
    assert!(matches!(err, ServiceError::Deleting { .. }), "{err}");
    s.vms
        .finalize_delete("web", marked.metadata.resource_version)
        .await
        .unwrap();
    assert_ne!(marked.metadata.uid, "", "{vm:?}");

    // Nothing uses them now: a network goes at once, a volume waits for its controller.
    let gone = s.nets.delete("lan", None).await.unwrap();
    assert_eq!(gone.metadata.name.as_str(), "lan");
    assert!(matches!(
        s.nets.get("lan").await,
        Err(ServiceError::NotFound { .. })
    ));
    let marked = s.storage.volumes.delete("data", None).await.unwrap();
    assert!(marked.metadata.deleting);
    let mut grow = marked.clone();
    grow.spec.size = Some(ByteSize::from_gib(5));
    let err = s.storage.volumes.update(grow).await.unwrap_err();
    assert!(matches!(err, ServiceError::Deleting { .. }), "{err}");
    s.storage
        .volumes
        .remove("data", marked.metadata.resource_version)
        .await
        .unwrap();
    assert!(!s.storage.volumes.exists("data").await.unwrap());
}
