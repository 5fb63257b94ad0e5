//! Git sources against a real `git daemon` the test starts and commits the test pushes: a VM
//! declared appears; a changed one is updated in place; a removed one is pruned; a broken
//! commit changes nothing and names file and line; a VM changed out of band is put back and
//! listed as drift; a force-push to an older commit converges back; a non-admin's source may
//! not fetch from loopback. The store is the real SQLite one; a task stands in for the VM
//! controller's finalizer.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_contract::names::labels::OWNER;
use corral_contract::{ByteSize, DriftPolicy, Power, Source, SourceSpec, SourceStatus};
use corral_controller::{RunOptions, SourceController, SourceReconciler};
use corral_service::{
    ApplyService, HostAccess, ImportPolicy, NetworkService, SourceService, StorageConfig,
    StorageService, VmService,
};
use corral_store::SqliteStore;
use corral_testkit::{GitServer, git};

fn vm(name: &str, memory: &str) -> String {
    format!(
        "kind: Vm\nmetadata: {{name: {name}}}\nspec:\n  memory: {memory}\n  boot: {{kernel: {{kernel: /k/vmlinuz}}}}\n---\n"
    )
}

/// The services a source works with, on a SQLite store under a test's directory, with a task
/// standing in for the VM controller's finalizer (deleted VMs go).
struct World {
    vms: VmService,
    sources: SourceService,
    reconciler: SourceReconciler,
}

impl World {
    async fn open(dir: &Path) -> World {
        let store = Arc::new(SqliteStore::open(dir.join("state.db")).await.unwrap());
        let vms = VmService::new(store.clone());
        let storage = StorageService::new(store.clone(), StorageConfig::new(dir)).unwrap();
        let apply = ApplyService::new(vms.clone(), NetworkService::new(store.clone()), storage);
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
            vms,
            sources: SourceService::new(store),
            reconciler: SourceReconciler::new(apply, ImportPolicy::default(), dir.join("git")),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_follows_its_repository() {
    let dir = tempfile::tempdir().unwrap();
    let server = GitServer::start(dir.path());
    let work = server.work().to_owned();

    let World {
        vms,
        reconciler: sources,
        ..
    } = World::open(dir.path()).await;
    let name = "lab".parse().unwrap();
    let spec = SourceSpec {
        git: server.url(),
        reference: "main".into(),
        path: "vms".into(),
        prune: true,
        drift: DriftPolicy::Correct,
        interval_seconds: None,
        depends_on: Vec::new(),
        verify_keys: Vec::new(),
    };
    let admin = RunOptions {
        access: HostAccess::Admin,
        allow_mass_prune: false,
        project: corral_contract::DEFAULT_PROJECT.to_owned(),
    };
    let web = vm("web-1", "256M") + &vm("web-2", "256M");

    // Add: both VMs appear, labelled with the source.
    let first = server.commit(
        &[("vms/web.yaml", Some(&web)), ("README.md", Some("hi"))],
        "add",
    );
    let status = sources
        .reconcile(&name, &spec, &SourceStatus::default(), admin.clone())
        .await;
    assert_eq!(status.errors, Vec::<String>::new());
    assert_eq!(status.commit.as_deref(), Some(first.as_str()));
    assert_eq!(status.applied["Vm"], 2);
    let before = vms.get("web-1").await.unwrap();
    assert_eq!(before.metadata.labels[OWNER], "lab");

    // Change: updated in place.
    let changed = vm("web-1", "512M") + &vm("web-2", "256M");
    server.commit(&[("vms/web.yaml", Some(&changed))], "more memory");
    let status = sources
        .reconcile(&name, &spec, &status, admin.clone())
        .await;
    let after = vms.get("web-1").await.unwrap();
    assert_eq!(after.metadata.uid, before.metadata.uid);
    assert_eq!(after.spec.memory, ByteSize::from_mib(512));

    // Remove: pruned.
    let third = server.commit(
        &[("vms/web.yaml", Some(&vm("web-1", "512M")))],
        "drop web-2",
    );
    let status = sources
        .reconcile(&name, &spec, &status, admin.clone())
        .await;
    assert_eq!(status.commit.as_deref(), Some(third.as_str()));
    assert!(!vms.exists("web-2").await.unwrap());

    // A broken commit: errors with file and line, nothing changes.
    let broken = format!(
        "{}kind: Vm\nmetadata: {{name: web-3}}\nspec: {{cpu: 2}}\n",
        vm("web-1", "1G")
    );
    server.commit(&[("vms/more.yaml", Some(&broken))], "broken");
    let status = sources
        .reconcile(&name, &spec, &status, admin.clone())
        .await;
    assert_eq!(status.commit.as_deref(), Some(third.as_str()), "{status:?}");
    assert_eq!(status.errors.len(), 1, "{status:?}");
    assert!(
        status.errors[0]
            .starts_with("vms/more.yaml:7: document 2 (vm/web-3): spec.cpu: unknown field"),
        "{}",
        status.errors[0]
    );
    assert_eq!(
        vms.get("web-1").await.unwrap().spec.memory,
        ByteSize::from_mib(512)
    );
    assert!(!vms.exists("web-3").await.unwrap());

    // Fixed; then stopped out of band: put back, and listed as drift.
    let fixed = server.commit(&[("vms/more.yaml", None)], "fix");
    let status = sources
        .reconcile(&name, &spec, &status, admin.clone())
        .await;
    assert_eq!(status.commit.as_deref(), Some(fixed.as_str()));
    assert!(
        status.errors.is_empty() && status.drift.is_empty(),
        "{status:?}"
    );
    vms.set_power("web-1", Power::Stopped, false).await.unwrap();
    let warn = SourceSpec {
        drift: DriftPolicy::Warn,
        ..spec.clone()
    };
    let warned = sources
        .reconcile(&name, &warn, &status, admin.clone())
        .await;
    assert_eq!(warned.drift, ["vm/web-1: spec.power"]);
    assert_eq!(vms.get("web-1").await.unwrap().spec.power, Power::Stopped);
    let status = sources
        .reconcile(&name, &spec, &status, admin.clone())
        .await;
    assert_eq!(status.drift, ["vm/web-1: spec.power"]);
    assert_eq!(vms.get("web-1").await.unwrap().spec.power, Power::Running);

    // A resource's own policy wins over the source's: web-4 (ignore) and web-5 (warn) are
    // left as they were changed, web-1 (the source's correct) is put back.
    let annotated = |name: &str, policy: &str| {
        vm(name, "128M").replacen(
            &format!("metadata: {{name: {name}}}"),
            &format!("metadata: {{name: {name}, annotations: {{corral.dev/drift: {policy}}}}}"),
            1,
        )
    };
    let policies = format!(
        "{}{}",
        annotated("web-4", "ignore"),
        annotated("web-5", "warn")
    );
    server.commit(&[("vms/policies.yaml", Some(&policies))], "own policies");
    let status = sources
        .reconcile(&name, &spec, &status, admin.clone())
        .await;
    assert!(status.errors.is_empty(), "{status:?}");
    for vm in ["web-1", "web-4", "web-5"] {
        vms.set_power(vm, Power::Stopped, false).await.unwrap();
    }
    let status = sources
        .reconcile(&name, &spec, &status, admin.clone())
        .await;
    assert_eq!(
        status.drift,
        ["vm/web-1: spec.power", "vm/web-5: spec.power"],
        "{status:?}"
    );
    assert_eq!(vms.get("web-1").await.unwrap().spec.power, Power::Running);
    assert_eq!(vms.get("web-4").await.unwrap().spec.power, Power::Stopped);
    assert_eq!(vms.get("web-5").await.unwrap().spec.power, Power::Stopped);
    // A policy that is none of the three changes nothing and says where it is.
    let bad = annotated("web-4", "sometimes");
    server.commit(&[("vms/policies.yaml", Some(&bad))], "typo");
    let failed = sources
        .reconcile(&name, &spec, &status, admin.clone())
        .await;
    assert_eq!(
        failed.commit, status.commit,
        "a broken commit is not applied"
    );
    assert!(
        failed.errors[0].contains("vm/web-4: metadata.annotations.corral.dev/drift"),
        "{failed:?}"
    );
    server.commit(&[("vms/policies.yaml", None)], "no policies");
    let approved = RunOptions {
        allow_mass_prune: true,
        ..admin.clone()
    };
    let status = sources.reconcile(&name, &spec, &status, approved).await;
    assert!(status.errors.is_empty(), "{status:?}");

    // Force-push back to the first commit: web-2 returns, web-1 has its old memory.
    git(&work, &["reset", "-q", "--hard", &first]);
    git(&work, &["push", "-q", "--force", "origin", "HEAD:main"]);
    let status = sources
        .reconcile(&name, &spec, &status, admin.clone())
        .await;
    assert_eq!(status.commit.as_deref(), Some(first.as_str()), "{status:?}");
    assert_eq!(
        vms.get("web-1").await.unwrap().spec.memory,
        ByteSize::from_mib(256)
    );
    assert!(vms.exists("web-2").await.unwrap());

    // A non-admin's source may not make corrald fetch from loopback.
    let confined = RunOptions {
        access: HostAccess::Confined,
        allow_mass_prune: false,
        project: corral_contract::DEFAULT_PROJECT.to_owned(),
    };
    let refused = sources
        .reconcile(
            &"other".parse().unwrap(),
            &spec,
            &SourceStatus::default(),
            confined,
        )
        .await;
    assert!(refused.commit.is_none());
    assert!(
        refused.errors[0].contains("is a loopback address")
            && refused.errors[0].contains("only an admin"),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_waits_for_the_sources_it_depends_on_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = GitServer::start(dir.path());
    let net = "kind: Network\nmetadata: {name: lab}\nspec: {mode: user}\n";
    server.commit(&[("base/net.yaml", Some(net))], "network");
    let head = server.commit(&[("apps/web.yaml", Some(&vm("web-1", "128M")))], "app");

    let World {
        vms,
        sources,
        reconciler,
    } = World::open(dir.path()).await;
    let controller = SourceController::new(sources.clone(), reconciler);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(controller.run(stopped));

    let spec = |path: &str, depends_on: &[&str]| SourceSpec {
        git: server.url(),
        reference: "main".into(),
        path: path.into(),
        prune: true,
        drift: DriftPolicy::Correct,
        interval_seconds: Some(1),
        depends_on: depends_on.iter().map(|d| d.parse().unwrap()).collect(),
        verify_keys: Vec::new(),
    };
    let apps = Source::new("apps".parse().unwrap(), spec("apps", &["base"]));
    sources.create_as(apps, HostAccess::Admin).await.unwrap();
    let waiting = poll(|| async {
        let s = sources.get("apps").await.unwrap();
        s.status.waiting.clone()
    })
    .await;
    assert_eq!(waiting, "waiting for source/base does not exist");
    assert!(!vms.exists("web-1").await.unwrap());

    let base = Source::new("base".parse().unwrap(), spec("base", &[]));
    sources.create_as(base, HostAccess::Admin).await.unwrap();
    poll(|| async {
        let s = sources.get("apps").await.unwrap();
        (s.status.commit.is_some() && s.status.waiting.is_none()).then_some(())
    })
    .await;
    for name in ["base", "apps"] {
        let status = sources.get(name).await.unwrap().status;
        assert_eq!(status.commit.as_deref(), Some(head.as_str()), "{name}");
    }
    assert!(vms.exists("web-1").await.unwrap());
    let err = Source::new("loop".parse().unwrap(), spec("apps", &["loop"]));
    let err = sources.create_as(err, HostAccess::Admin).await.unwrap_err();
    assert!(err.to_string().contains("spec.depends_on"), "{err}");
    stop.send(true).unwrap();
    running.await.unwrap();
}

/// Polls `probe` until it gives something, for up to a minute.
async fn poll<T, F: std::future::Future<Output = Option<T>>>(mut probe: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(t) = probe().await {
            return t;
        }
        assert!(Instant::now() < deadline, "not within a minute");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn emptying_a_repository_stops_at_the_guard_until_approved_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = GitServer::start(dir.path());
    let two = vm("web-1", "128M") + &vm("web-2", "128M");
    let first = server.commit(&[("vms/web.yaml", Some(&two))], "two");

    let World {
        vms,
        sources,
        reconciler,
    } = World::open(dir.path()).await;
    let controller = SourceController::new(sources.clone(), reconciler);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(controller.run(stopped));
    let spec = SourceSpec {
        git: server.url(),
        reference: "main".into(),
        path: "vms".into(),
        prune: true,
        drift: DriftPolicy::Correct,
        interval_seconds: Some(1),
        depends_on: Vec::new(),
        verify_keys: Vec::new(),
    };
    let source = Source::new("lab".parse().unwrap(), spec);
    sources.create_as(source, HostAccess::Admin).await.unwrap();
    poll(|| async {
        let s = sources.get("lab").await.unwrap();
        (s.status.commit.as_deref() == Some(first.as_str())).then_some(())
    })
    .await;

    let emptied = server.commit(&[("vms/web.yaml", Some("# all gone\n"))], "empty");
    let errors = poll(|| async {
        let s = sources.get("lab").await.unwrap();
        (!s.status.errors.is_empty()).then_some(s.status.errors)
    })
    .await;
    assert!(
        errors[0].contains("pruning 2 of its 2 resources"),
        "{errors:?}"
    );
    assert!(vms.exists("web-1").await.unwrap() && vms.exists("web-2").await.unwrap());

    sources.approve_prune("lab").await.unwrap();
    let status = poll(|| async {
        let s = sources.get("lab").await.unwrap();
        (s.status.commit.as_deref() == Some(emptied.as_str())).then_some(s.status)
    })
    .await;
    assert!(status.errors.is_empty(), "{status:?}");
    assert!(status.approval_used.is_some());
    assert!(!vms.exists("web-1").await.unwrap() && !vms.exists("web-2").await.unwrap());
    stop.send(true).unwrap();
    running.await.unwrap();
}

/// A new ed25519 key pair in `dir`: (private key file, public key line).
fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let file = dir.join(name);
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&file)
        .status()
        .expect("ssh-keygen (openssh-client, installed by scripts/setup.sh)");
    assert!(made.success());
    let public = std::fs::read_to_string(file.with_extension("pub")).unwrap();
    (file, public.trim().to_owned())
}

/// Commits `files` signed with the SSH key `key` (or unsigned) and pushes to `main`.
fn signed_commit(work: &Path, files: &[(&str, &str)], key: Option<&Path>) -> String {
    for (path, text) in files {
        let file = work.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, text).unwrap();
    }
    git(work, &["add", "-A"]);
    match key {
        Some(key) => {
            let signing = format!("user.signingkey={}", key.display());
            git(
                work,
                &[
                    "-c",
                    "gpg.format=ssh",
                    "-c",
                    &signing,
                    "commit",
                    "-q",
                    "-S",
                    "-m",
                    "signed",
                ],
            )
        }
        None => git(work, &["commit", "-q", "-m", "unsigned"]),
    };
    git(work, &["push", "-q", "--force", "origin", "HEAD:main"]);
    git(work, &["rev-parse", "HEAD"])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_with_verify_keys_applies_only_commits_its_keys_signed() {
    let dir = tempfile::tempdir().unwrap();
    let server = GitServer::start(dir.path());
    let work = server.work().to_owned();
    let (trusted, trusted_pub) = ssh_key(dir.path(), "release");
    let (stranger, _) = ssh_key(dir.path(), "stranger");

    let World {
        vms,
        reconciler: sources,
        ..
    } = World::open(dir.path()).await;
    let name = "signed".parse().unwrap();
    let spec = SourceSpec {
        git: server.url(),
        reference: "main".into(),
        path: "vms".into(),
        prune: false,
        drift: DriftPolicy::Correct,
        interval_seconds: None,
        depends_on: Vec::new(),
        verify_keys: vec![trusted_pub],
    };
    let admin = RunOptions {
        access: HostAccess::Admin,
        allow_mass_prune: false,
        project: corral_contract::DEFAULT_PROJECT.to_owned(),
    };

    // Signed by the release key: applied.
    let good = signed_commit(
        &work,
        &[("vms/a.yaml", &vm("web-1", "256M"))],
        Some(&trusted),
    );
    let status = sources
        .reconcile(&name, &spec, &SourceStatus::default(), admin.clone())
        .await;
    assert_eq!(status.commit.as_deref(), Some(good.as_str()), "{status:?}");
    assert!(vms.exists("web-1").await.unwrap());

    // Unsigned, then signed by a key the source does not trust: nothing changes, and the
    // status says why.
    let unsigned = signed_commit(&work, &[("vms/b.yaml", &vm("web-2", "256M"))], None);
    let refused = sources
        .reconcile(&name, &spec, &status, admin.clone())
        .await;
    assert_eq!(refused.commit.as_deref(), Some(good.as_str()));
    assert_eq!(
        refused.errors,
        [format!(
            "commit {unsigned} is not signed; this source applies only commits signed by one of its verify keys"
        )]
    );
    let foreign = signed_commit(
        &work,
        &[("vms/b.yaml", &vm("web-3", "256M"))],
        Some(&stranger),
    );
    let refused = sources
        .reconcile(&name, &spec, &status, admin.clone())
        .await;
    assert_eq!(refused.commit.as_deref(), Some(good.as_str()));
    assert!(
        refused.errors[0].starts_with(&format!("commit {foreign} is signed by SHA256:"))
            && refused.errors[0].ends_with("which is not one of the source's verify keys"),
        "{refused:?}"
    );
    assert!(!vms.exists("web-2").await.unwrap() && !vms.exists("web-3").await.unwrap());

    // Signed again by the release key: the source moves on.
    let next = signed_commit(
        &work,
        &[("vms/c.yaml", &vm("web-4", "256M"))],
        Some(&trusted),
    );
    let status = sources
        .reconcile(&name, &spec, &status, admin.clone())
        .await;
    assert_eq!(status.commit.as_deref(), Some(next.as_str()), "{status:?}");
    assert!(vms.exists("web-4").await.unwrap() && vms.exists("web-3").await.unwrap());
}
