//! `corral apply --owner --prune` and `corral diff` against a real corrald: ownership labels,
//! another owner refused, prune of what a manifest no longer declares behind the mass-prune
//! guard, and diff's exit codes (0 nothing would change, 2 something would, 1 error) at each
//! step. VMs are declared stopped: what is checked here is what corrald stores.

use std::path::Path;

use corral_testkit::{Cli, Corrald, workspace_binary};

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

/// A kernel file the VMs name (corrald checks it exists; they never start).
static KERNEL: std::sync::LazyLock<tempfile::NamedTempFile> =
    std::sync::LazyLock::new(|| tempfile::NamedTempFile::new().unwrap());

fn vm(name: &str, memory: &str) -> String {
    format!(
        "kind: Vm\nmetadata: {{name: {name}}}\nspec:\n  power: stopped\n  memory: {memory}\n  boot: {{kernel: {{kernel: {}}}}}\n---\n",
        KERNEL.path().display()
    )
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

fn code(cli: &Cli, args: &[&str]) -> (i32, String, String) {
    let out = cli.run(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn apply_as_an_owner_prunes_what_it_no_longer_declares_and_diff_says_so_first() {
    let d = Corrald::start(workspace_binary("corrald")).expect("corrald");
    let cli = Cli::new(CORRAL, &d);
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path().to_str().unwrap().to_owned();
    write(
        repo.path(),
        "a.yaml",
        &(vm("web-1", "256M") + &vm("web-2", "256M")),
    );
    write(
        repo.path(),
        "b.yml",
        &(vm("web-3", "256M") + &vm("db-1", "256M")),
    );
    write(repo.path(), "README.md", "not a manifest");
    let diff = ["diff", "-f", &dir, "--owner", "repo", "--prune"];
    let apply = ["apply", "-f", &dir, "--owner", "repo", "--prune"];

    let (status, out, err) = code(&cli, &diff);
    assert_eq!(status, 2, "everything would be created:\n{out}{err}");
    assert!(out.contains("+ vm/web-1 (create)"), "{out}");
    assert!(cli.vm_names().is_empty(), "diff writes nothing");

    let out = cli.ok(&apply);
    assert_eq!(
        out,
        "vm/web-1 created\nvm/web-2 created\nvm/web-3 created\nvm/db-1 created\n"
    );
    let web = cli.json(&["vm", "get", "web-1", "-o", "json"]);
    assert_eq!(web["metadata"]["labels"]["corral.dev/owner"], "repo");
    let (status, out, _) = code(&cli, &diff);
    assert_eq!((status, out.as_str()), (0, "no changes\n"));

    // A change, field by field; applying it keeps the uid.
    write(
        repo.path(),
        "a.yaml",
        &(vm("web-1", "512M") + &vm("web-2", "256M")),
    );
    let (status, out, _) = code(&cli, &diff);
    assert_eq!(status, 2);
    assert_eq!(out, "~ vm/web-1\n    spec.memory: \"256M\" -> \"512M\"\n");
    let (status, out, _) = code(&cli, &["diff", "-f", &dir, "--owner", "repo", "-o", "json"]);
    assert_eq!(status, 2);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["dry_run"], true);
    assert_eq!(json["items"][0]["changes"][0]["path"], "spec.memory");
    assert!(cli.ok(&apply).contains("vm/web-1 configured"));
    let after = cli.json(&["vm", "get", "web-1", "-o", "json"]);
    assert_eq!(after["metadata"]["uid"], web["metadata"]["uid"]);
    assert_eq!(after["spec"]["memory"], "512M");

    // Removed from the manifest: pruned (one of four).
    write(repo.path(), "b.yml", &vm("web-3", "256M"));
    let (status, out, _) = code(&cli, &diff);
    assert_eq!((status, out.as_str()), (2, "- vm/db-1 (prune)\n"));
    assert!(cli.ok(&apply).contains("vm/db-1 pruned"));
    assert_eq!(cli.vm_names(), ["web-1", "web-2", "web-3"]);

    // Another owner, or none, cannot take repo's VMs; nothing of its request is made.
    let other = tempfile::tempdir().unwrap();
    write(
        other.path(),
        "x.yaml",
        &(vm("new-1", "128M") + &vm("web-2", "1G")),
    );
    let theirs = other.path().to_str().unwrap();
    cli.fails(
        &["apply", "-f", theirs, "--owner", "other"],
        1,
        "vm/web-2 is owned by \"repo\"",
    );
    cli.fails(&["apply", "-f", theirs], 1, "vm/web-2 is owned by \"repo\"");
    assert_eq!(cli.vm_names(), ["web-1", "web-2", "web-3"]);

    // Emptying most of the repository stops at the guard until it is allowed.
    write(repo.path(), "a.yaml", "# nothing here now\n");
    cli.fails(
        &apply,
        1,
        "pruning 2 of its 3 resources (vm/web-1, vm/web-2)",
    );
    assert_eq!(cli.vm_names(), ["web-1", "web-2", "web-3"]);
    let mut allowed = apply.to_vec();
    allowed.push("--allow-mass-prune");
    let out = cli.ok(&allowed);
    assert!(
        out.contains("vm/web-1 pruned") && out.contains("vm/web-2 pruned"),
        "{out}"
    );
    assert_eq!(cli.vm_names(), ["web-3"]);

    // Errors: 1, whatever the cause.
    write(
        repo.path(),
        "b.yml",
        "kind: Vm\nmetadata: {name: web-3}\nspec: {cpu: 2}\n",
    );
    let (status, _, err) = code(&cli, &diff);
    assert_eq!(status, 1, "{err}");
    assert!(
        err.contains("b.yml:1: document 1 (vm/web-3): spec.cpu"),
        "{err}"
    );
    cli.fails(&["apply", "-f", &dir, "--prune"], 2, "--owner");
}
