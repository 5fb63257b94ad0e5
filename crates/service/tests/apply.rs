//! Applying declared resources as an owner, on the real SQLite store: dry runs write nothing,
//! another owner's resources are refused, and prune removes what is no longer declared (VMs
//! first) behind the mass-prune guard. A task stands in for the VM controller's finalizer.

use std::sync::Arc;

use corral_contract::names::labels::OWNER;
use corral_contract::{
    ApplyAction, ApplyRequest, Boot, ByteSize, Network, NetworkSpec, Resource, Vm, VmSpec, Volume,
    VolumeAttachment, VolumeSpec,
};
use corral_service::{
    ApplyService, ErrorCode, HostAccess, NetworkService, ServiceError, StorageConfig,
    StorageService, VmService,
};
use corral_store::SqliteStore;

struct World {
    apply: ApplyService,
    vms: VmService,
    storage: StorageService,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(dir.path().join("state.db"))
            .await
            .unwrap(),
    );
    let vms = VmService::new(store.clone());
    let nets = NetworkService::new(store.clone());
    let storage = StorageService::new(store, StorageConfig::new(dir.path())).unwrap();
    // The VM controller's part of a delete: remove the object once marked.
    let finalizer = vms.clone();
    tokio::spawn(async move {
        let mut watch = finalizer.watch(None, 0).await.unwrap();
        while let Some(Ok(event)) = watch.recv().await {
            let vm = event.object;
            if vm.metadata.deleting {
                let _ = finalizer
                    .finalize_delete(vm.metadata.name.as_str(), vm.metadata.resource_version)
                    .await;
            }
        }
    });
    World {
        apply: ApplyService::new(vms.clone(), nets, storage.clone()),
        vms,
        storage,
        _dir: dir,
    }
}

fn vm(name: &str, memory_mib: u64) -> Resource {
    let spec = VmSpec::builder(Boot::kernel("/k/vmlinuz"))
        .memory(ByteSize::from_mib(memory_mib))
        .volume(VolumeAttachment {
            volume: "data".parse().unwrap(),
            readonly: false,
            serial: None,
        })
        .build()
        .unwrap();
    Resource::Vm(Vm::new(name.parse().unwrap(), spec))
}

fn declared() -> Vec<Resource> {
    let volume = VolumeSpec {
        kind: Default::default(),
        format: None,
        size: Some(ByteSize::from_gib(1)),
        image: None,
        pool: None,
    };
    vec![
        vm("web-1", 256),
        vm("db-1", 256),
        Resource::Volume(Volume::new("data".parse().unwrap(), volume)),
        Resource::Network(Network::new("lab".parse().unwrap(), NetworkSpec::default())),
    ]
}

fn request(owner: Option<&str>, resources: Vec<Resource>) -> ApplyRequest {
    ApplyRequest {
        owner: owner.map(|o| o.parse().unwrap()),
        prune: owner.is_some(),
        allow_mass_prune: false,
        dry_run: false,
        resources,
    }
}

fn dry(mut r: ApplyRequest) -> ApplyRequest {
    r.dry_run = true;
    r
}

fn actions(report: &corral_contract::ApplyReport) -> Vec<(String, ApplyAction)> {
    report
        .items
        .iter()
        .map(|i| (format!("{}/{}", i.kind, i.name), i.action))
        .collect()
}

#[tokio::test]
async fn apply_creates_in_dependency_order_and_then_changes_nothing() {
    let w = world().await;
    let plan = w
        .apply
        .apply(
            dry(request(Some("repo"), declared())),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap();
    assert!(plan.dry_run && plan.changes_anything());
    assert!(
        w.vms.list("").await.unwrap().0.is_empty(),
        "a dry run writes nothing"
    );
    let report = w
        .apply
        .apply(
            request(Some("repo"), declared()),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap();
    assert_eq!(
        actions(&report),
        [
            ("Network/lab".into(), ApplyAction::Create),
            ("Volume/data".into(), ApplyAction::Create),
            ("Vm/web-1".into(), ApplyAction::Create),
            ("Vm/db-1".into(), ApplyAction::Create),
        ]
    );
    assert_eq!(actions(&plan), actions(&report));
    let web = w.vms.get("web-1").await.unwrap();
    assert_eq!(web.metadata.labels[OWNER], "repo");
    assert_eq!(
        w.storage.volumes.get("data").await.unwrap().metadata.labels[OWNER],
        "repo"
    );

    let again = w
        .apply
        .apply(
            request(Some("repo"), declared()),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap();
    assert!(!again.changes_anything(), "{again:?}");
}

#[tokio::test]
async fn a_change_is_reported_field_by_field_and_keeps_the_uid() {
    let w = world().await;
    w.apply
        .apply(
            request(Some("repo"), declared()),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap();
    let before = w.vms.get("web-1").await.unwrap();
    let mut resources = declared();
    resources[0] = vm("web-1", 512);

    let plan = w
        .apply
        .apply(
            dry(request(Some("repo"), resources.clone())),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap();
    let change = plan.items.iter().find(|i| i.name == "web-1").unwrap();
    assert_eq!(change.action, ApplyAction::Change);
    assert_eq!(change.changes.len(), 1, "{:?}", change.changes);
    assert_eq!(change.changes[0].path, "spec.memory");
    assert_eq!(change.changes[0].before, Some("256M".into()));
    assert_eq!(change.changes[0].after, Some("512M".into()));
    assert_eq!(
        w.vms.get("web-1").await.unwrap().metadata.generation,
        before.metadata.generation,
        "a dry run writes nothing"
    );

    w.apply
        .apply(
            request(Some("repo"), resources),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap();
    let after = w.vms.get("web-1").await.unwrap();
    assert_eq!(after.metadata.uid, before.metadata.uid);
    assert_eq!(after.spec.memory, ByteSize::from_mib(512));
    assert_eq!(after.metadata.generation, before.metadata.generation + 1);
}

#[tokio::test]
async fn corralds_own_annotations_survive_an_apply() {
    let w = world().await;
    w.apply
        .apply(
            request(Some("repo"), declared()),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap();
    w.vms.restart("web-1").await.unwrap();
    let again = w
        .apply
        .apply(
            request(Some("repo"), declared()),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap();
    assert!(!again.changes_anything(), "{again:?}");
    let web = w.vms.get("web-1").await.unwrap();
    assert!(
        web.metadata
            .annotations
            .contains_key(corral_contract::names::annotations::RESTART_REQUESTED_AT)
    );
}

#[tokio::test]
async fn another_owners_resources_are_never_touched() {
    let w = world().await;
    w.apply
        .apply(
            request(Some("repo"), declared()),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap();
    // `fresh` would be created, `web-1` is repo's: the whole request changes nothing.
    let theirs = vec![vm("fresh", 128), vm("web-1", 1024)];
    let err = w
        .apply
        .apply(
            request(Some("other"), theirs.clone()),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::FailedPrecondition);
    let message = err.to_string();
    assert!(
        message.contains("vm/web-1 is owned by \"repo\" (label corral.dev/owner)"),
        "{message}"
    );
    assert!(!w.vms.exists("fresh").await.unwrap());
    let err = w
        .apply
        .apply(
            request(None, theirs),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Applying { .. }), "{err}");
    assert_eq!(
        w.vms.get("web-1").await.unwrap().spec.memory,
        ByteSize::from_mib(256)
    );

    // Nor by declaring the label: it is the owner's to set.
    let Resource::Vm(mut planted) = vm("planted", 128) else {
        unreachable!()
    };
    planted.metadata.labels.insert(OWNER.into(), "repo".into());
    let err = w
        .apply
        .apply(
            request(None, vec![Resource::Vm(planted)]),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("metadata.labels.corral.dev/owner: is set by apply's owner"),
        "{err}"
    );
    assert!(!w.vms.exists("planted").await.unwrap());

    let mut prune_alone = request(None, vec![vm("x", 128)]);
    prune_alone.prune = true;
    let err = w
        .apply
        .apply(
            prune_alone,
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("owner: prune needs an owner"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unowned_resource_is_adopted() {
    let w = world().await;
    let Resource::Vm(plain) = vm("web-1", 256) else {
        unreachable!()
    };
    w.vms.create(plain).await.unwrap();
    let report = w
        .apply
        .apply(
            request(Some("repo"), declared()),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap();
    let web = report.items.iter().find(|i| i.name == "web-1").unwrap();
    assert_eq!(web.action, ApplyAction::Change);
    assert_eq!(web.changes[0].path, "metadata.labels.corral.dev/owner");
}

#[tokio::test]
async fn prune_removes_what_is_no_longer_declared_behind_the_mass_prune_guard() {
    let w = world().await;
    w.apply
        .apply(
            request(Some("repo"), declared()),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap();
    // One of four: pruned.
    let mut resources = declared();
    resources.remove(1);
    let report = w
        .apply
        .apply(
            request(Some("repo"), resources),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap();
    assert_eq!(
        report.items.last().map(|i| (i.name.as_str(), i.action)),
        Some(("db-1", ApplyAction::Prune))
    );
    assert!(!w.vms.exists("db-1").await.unwrap());

    // Two of three (the VM and the volume it used): more than half, refused whole.
    let only_network = vec![declared().remove(3)];
    let err = w
        .apply
        .apply(
            request(Some("repo"), only_network.clone()),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("pruning 2 of its 3 resources (vm/web-1, volume/data)"),
        "{err}"
    );
    assert!(w.vms.exists("web-1").await.unwrap());
    // A dry run shows the prunes without the guard's refusal.
    let plan = w
        .apply
        .apply(
            dry(request(Some("repo"), only_network.clone())),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await
        .unwrap();
    assert_eq!(
        plan.items
            .iter()
            .filter(|i| i.action == ApplyAction::Prune)
            .count(),
        2
    );

    let mut allowed = request(Some("repo"), only_network);
    allowed.allow_mass_prune = true;
    w.apply
        .apply(allowed, HostAccess::Admin, corral_contract::DEFAULT_PROJECT)
        .await
        .unwrap();
    assert!(!w.vms.exists("web-1").await.unwrap());
    // The volume went after the VM that used it (its delete is refused while a VM uses it).
    let gone = w.storage.volumes.get("data").await;
    assert!(matches!(gone, Err(ServiceError::NotFound { .. })) || gone.unwrap().metadata.deleting);
}
