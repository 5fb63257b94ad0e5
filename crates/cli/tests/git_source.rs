//! A Git source end to end: a `git daemon` the test starts, commits the test pushes, a real
//! corrald following the repository (created over REST, as an admin on the unix socket), and
//! real guests. Add a VM → it appears and boots (its console says so); change its memory →
//! same uid; remove another → pruned; a broken commit → the source's status names file and
//! line and nothing changes; a VM stopped out of band → started again and listed as drift; a
//! force-push to the first commit → converges back. `corral diff` exit codes at the steps.
//! The source is made with `corral source create` and read both with `corral source get` and
//! over REST.

use std::path::Path;
use std::time::{Duration, Instant};

use corral_contract::Arch;
use corral_testkit::http::Api;
use corral_testkit::{
    BOOT_MARKER, Cli, Corrald, GitServer, GuestKit, PATIENCE, git, workspace_binary,
};
use serde_json::{Value, json};

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

/// Polls `probe` until it returns something, within [`PATIENCE`].
fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(t) = probe() {
            return t;
        }
        assert!(Instant::now() < deadline, "no {what} within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn diff_code(cli: &Cli, dir: &Path) -> i32 {
    let dir = dir.to_str().unwrap();
    let out = cli.run(&["diff", "-f", dir, "--owner", "lab", "--prune"]);
    out.status.code().unwrap_or(-1)
}

#[test]
fn a_git_source_drives_real_guests() {
    let kit = GuestKit::get(Arch::X86_64).expect("guest kit");
    let vm = |name: &str, memory: &str, power: &str| {
        format!(
            "kind: Vm\nmetadata: {{name: {name}}}\nspec:\n  power: {power}\n  memory: {memory}\n  boot: {{kernel: {{kernel: {k}, initrd: {i}, cmdline: 'console=ttyS0 quiet'}}}}\n---\n",
            k = kit.kernel().display(),
            i = kit.initrd().display()
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let server = GitServer::start(dir.path());
    let work = server.work().to_owned();
    std::fs::create_dir_all(work.join("deploy")).unwrap();
    let deploy = work.join("deploy");
    let app = vm("app", "256M", "running");
    let spare = vm("spare", "128M", "stopped");
    let first = server.commit(
        &[
            ("deploy/app.yaml", Some(&app)),
            ("deploy/spare.yaml", Some(&spare)),
        ],
        "app and spare",
    );

    let mut d = Corrald::start(workspace_binary("corrald")).expect("corrald");
    let cli = Cli::new(CORRAL, &d);
    let api = Api::of(&d);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let source = json!({
        "kind": "Source",
        "metadata": {"name": "lab"},
        "spec": {
            "git": format!("git://127.0.0.1:{}/repo.git", server.port()),
            "ref": "main",
            "path": "deploy",
            "prune": true,
            "interval_seconds": 1
        }
    });
    rt.block_on(api.post("/v1/sources", &source)).expect(201);
    let status =
        || -> Value { rt.block_on(api.get("/v1/sources/lab")).expect(200)["status"].clone() };

    // Added: it appears and boots.
    eventually("first commit applied", || {
        (status()["commit"] == first.as_str()).then_some(())
    });
    cli.wait_console("app", BOOT_MARKER);
    let before = cli.json(&["vm", "get", "app", "-o", "json"]);
    assert_eq!(before["metadata"]["labels"]["corral.dev/owner"], "lab");
    assert_eq!(status()["applied"]["Vm"], 2);
    assert_eq!(diff_code(&cli, &deploy), 0);

    // Changed: diff says so before the push; the same VM after.
    std::fs::write(deploy.join("app.yaml"), vm("app", "384M", "running")).unwrap();
    assert_eq!(diff_code(&cli, &deploy), 2);
    let second = server.commit(&[], "more memory");
    eventually("memory change", || {
        (status()["commit"] == second.as_str()).then_some(())
    });
    let after = cli.json(&["vm", "get", "app", "-o", "json"]);
    assert_eq!(after["spec"]["memory"], "384M");
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(diff_code(&cli, &deploy), 0);

    // Removed: pruned.
    server.commit(&[("deploy/spare.yaml", None)], "drop spare");
    eventually("spare pruned", || {
        (!cli.vm_names().contains(&"spare".to_owned())).then_some(())
    });

    // Broken: named by file and line; nothing changes.
    let broken = format!(
        "{}kind: Vm\nmetadata: {{name: x}}\nspec: {{cpu: 2}}\n",
        vm("app", "1G", "running")
    );
    let bad = server.commit(&[("deploy/bad.yaml", Some(&broken))], "broken");
    let errors = eventually("the broken commit's error", || {
        let s = status();
        s["errors"].as_array().filter(|e| !e.is_empty()).cloned()
    });
    assert!(
        errors[0]
            .as_str()
            .unwrap()
            .starts_with("deploy/bad.yaml:8: document 2 (vm/x): spec.cpu"),
        "{errors:?}"
    );
    assert_ne!(status()["commit"], bad.as_str());
    assert_eq!(
        cli.json(&["vm", "get", "app", "-o", "json"])["spec"]["memory"],
        "384M"
    );
    assert!(!cli.vm_names().contains(&"x".to_owned()));
    let fixed = server.commit(&[("deploy/bad.yaml", None)], "fix");
    eventually("the fix applied", || {
        (status()["commit"] == fixed.as_str()).then_some(())
    });

    // Stopped out of band: started again, and listed as drift.
    cli.ok(&["vm", "stop", "app", "--force"]);
    let drift = eventually("drift", || {
        status()["drift"]
            .as_array()
            .filter(|d| !d.is_empty())
            .cloned()
    });
    assert_eq!(drift, [json!("vm/app: spec.power")]);
    eventually("app running again", || {
        let vm = cli.json(&["vm", "get", "app", "-o", "json"]);
        (vm["spec"]["power"] == "running" && vm["status"]["phase"] == "Running").then_some(())
    });

    // Force-pushed back to the first commit: converges back.
    git(&work, &["reset", "-q", "--hard", &first]);
    git(&work, &["push", "-q", "--force", "origin", "HEAD:main"]);
    eventually("the first commit again", || {
        (status()["commit"] == first.as_str()).then_some(())
    });
    assert!(cli.vm_names().contains(&"spare".to_owned()));
    assert_eq!(
        cli.json(&["vm", "get", "app", "-o", "json"])["spec"]["memory"],
        "256M"
    );
    assert_eq!(diff_code(&cli, &deploy), 0);
    let table = cli.ok(&["source", "list"]);
    assert!(
        table.contains(&format!("lab                  {}", &first[..12])),
        "{table}"
    );
    assert_eq!(
        cli.ok(&["source", "reconcile", "lab"]),
        "source/lab reconcile requested\n"
    );

    // A daemon restart in between: the source carries on from its commit, the next push is
    // applied, and the running guest is adopted rather than started again.
    let running = eventually("app running before the restart", || {
        let vm = cli.json(&["vm", "get", "app", "-o", "json"]);
        (vm["status"]["phase"] == "Running").then_some(vm)
    });
    drop(cli);
    d.restart().expect("corrald restarts");
    let cli = Cli::new(CORRAL, &d);
    let late = vm("late", "128M", "stopped");
    let after_restart = server.commit(&[("deploy/late.yaml", Some(&late))], "after a restart");
    eventually("the push after the restart", || {
        (status()["commit"] == after_restart.as_str()).then_some(())
    });
    assert!(cli.vm_names().contains(&"late".to_owned()));
    let app = cli.json(&["vm", "get", "app", "-o", "json"]);
    assert_eq!(
        app["status"]["pid"], running["status"]["pid"],
        "adopted, not restarted"
    );
    assert_eq!(app["metadata"]["uid"], running["metadata"]["uid"]);
}
