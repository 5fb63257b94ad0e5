//! `corral auth` and `corral audit` against a live corrald on TLS: a token made once and
//! kept only hashed, used through CORRAL_TOKEN and --token-file (and --token, which warns),
//! its role enforced, its refusals in the audit log, and revocation.

use std::time::{Duration, Instant};

use corral_testkit::http::TlsSetup;
use corral_testkit::{Cli, workspace_binary};

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

#[test]
fn auth_round_trip_roles_audit_and_revocation() {
    let tls = TlsSetup::new();
    std::fs::write(tls.token_file(), "").unwrap();
    let (d, port) = tls.start(workspace_binary("corrald"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the TLS listener never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("https://localhost:{port}");
    let admin = Cli::new(CORRAL, &d);

    // The token is printed once, on stdout alone; the store keeps its hash.
    let made = admin.run(&["auth", "token", "create", "ci", "--role", "viewer"]);
    assert!(made.status.success(), "{made:?}");
    let token = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("crl_") && token.len() == 68, "{token}");
    assert!(String::from_utf8_lossy(&made.stderr).contains("shown only now"));
    let listed = admin.json(&["auth", "list", "-o", "json"]);
    let ci = &listed["items"][0];
    assert_eq!(ci["metadata"]["name"], "ci");
    assert_eq!(ci["spec"]["role"], "viewer");
    assert_eq!(ci["spec"]["credential"]["type"], "token");
    assert!(
        !listed.to_string().contains(&token),
        "the token itself is never shown again"
    );
    assert!(admin.ok(&["auth", "list"]).contains("viewer"));
    admin.fails(
        &["auth", "token", "create", "x", "--role", "root"],
        1,
        "\"root\" is not a valid role",
    );
    admin.fails(
        &["auth", "token", "create", "ci", "--role", "viewer"],
        1,
        "already exists",
    );

    // CORRAL_TOKEN: the viewer reads and may not write or manage identities.
    let viewer = Cli::new(CORRAL, &d).tls(&url, &tls.ca_file(), &token);
    viewer.ok(&["vm", "list"]);
    viewer.fails(&["network", "create", "lan"], 1, "role viewer");
    viewer.fails(&["auth", "list"], 1, "role admin");
    viewer.fails(&["audit"], 1, "role admin");

    // --token-file reads the token quietly; --token works but warns.
    let file = tls.dir().join("ci.token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let base = || {
        let mut cmd = std::process::Command::new(CORRAL);
        cmd.env_remove("CORRAL_TOKEN")
            .env_remove("CORRAL_SOCKET")
            .args(["--server", &url, "--ca-file"])
            .arg(tls.ca_file());
        cmd
    };
    let from_file = base()
        .arg("--token-file")
        .arg(&file)
        .args(["vm", "list"])
        .output()
        .unwrap();
    assert!(from_file.status.success(), "{from_file:?}");
    assert!(!String::from_utf8_lossy(&from_file.stderr).contains("warning"));
    let on_line = base()
        .args(["--token", &token, "vm", "list"])
        .output()
        .unwrap();
    assert!(on_line.status.success(), "{on_line:?}");
    assert!(
        String::from_utf8_lossy(&on_line.stderr).contains("visible to every user"),
        "{on_line:?}"
    );

    // The viewer's refused write is in the audit log, which only admins read.
    let audit = admin.json(&["audit", "--identity", "identity:ci", "-o", "json"]);
    let items = audit["items"].as_array().unwrap();
    assert!(
        items.iter().any(|r| r["verb"] == "create"
            && r["kind"] == "Network"
            && r["name"] == "lan"
            && r["outcome"] == "denied"),
        "{audit:#}"
    );
    assert!(items.iter().all(|r| r["identity"] == "identity:ci"));
    admin.fails(&["audit", "--since", "last tuesday"], 1, "since");
    let table = admin.ok(&["audit", "--since", "1h"]);
    assert!(
        table.contains("identity:ci") && table.contains("network/lan"),
        "{table}"
    );

    // Revoked: refused from then on, and the refusal names the identity.
    assert!(
        admin
            .ok(&["auth", "revoke", "ci"])
            .contains("identity/ci revoked")
    );
    viewer.fails(&["vm", "list"], 1, "revoked");
    let audit = admin.json(&["audit", "--identity", "identity:ci", "-o", "json"]);
    let last = audit["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["outcome"], "denied", "{last}");
    admin.fails(&["auth", "revoke", "ci"], 3, "not found");
}

#[test]
fn a_project_limit_refuses_creates_naming_the_limit_and_its_use() {
    let d = corral_testkit::Corrald::start(workspace_binary("corrald")).expect("corrald");
    let corral = Cli::new(CORRAL, &d);
    let made = corral.ok(&["project", "create", "default", "--limit", "disk=1G,vms=20"]);
    assert!(made.contains("project/default created"), "{made}");
    corral.fails(
        &["project", "create", "other", "--limit", "gpus=1"],
        1,
        "unknown limit \"gpus\"",
    );
    let listed = corral.ok(&["project", "list"]);
    assert!(listed.contains("vms=20,disk=1G"), "{listed}");
    corral.ok(&["volume", "create", "v1", "--size", "768M"]);
    let err = corral.fails(
        &["volume", "create", "v2", "--size", "512M"],
        1,
        "limit disk=1G would be exceeded: 768M in use, and this volume asks 512M more",
    );
    assert!(err.contains("corral project update default"), "{err}");
    corral.fails(&["volume", "get", "v2"], 3, "not found");
    // Raised, the same create is admitted.
    corral.ok(&["project", "update", "default", "--limit", "disk=2G"]);
    corral.ok(&["volume", "create", "v2", "--size", "512M"]);
    let p = corral.json(&["project", "get", "default", "-o", "json"]);
    assert_eq!(p["spec"]["limits"]["disk"], "2G");
    assert!(p["spec"]["limits"].get("vms").is_none(), "{p}");
}

#[test]
fn projects_from_the_cli_flag_environment_and_manifest() {
    let d = corral_testkit::Corrald::start(workspace_binary("corrald")).expect("corrald");
    let corral = Cli::new(CORRAL, &d);
    corral.ok(&["project", "create", "web"]);
    corral.fails(
        &[
            "--project",
            "nope",
            "volume",
            "create",
            "v",
            "--size",
            "64M",
        ],
        3,
        "project \"nope\" not found",
    );
    // The same name in two projects, by flag and by CORRAL_PROJECT.
    corral.ok(&["volume", "create", "data", "--size", "64M"]);
    corral.ok(&[
        "--project",
        "web",
        "volume",
        "create",
        "data",
        "--size",
        "128M",
    ]);
    let in_web = Cli::new(CORRAL, &d).env("CORRAL_PROJECT", "web");
    let v = in_web.json(&["volume", "get", "data", "-o", "json"]);
    assert_eq!(v["metadata"]["project"], "web");
    assert_eq!(v["spec"]["size"], "128M");
    let v = corral.json(&["volume", "get", "data", "-o", "json"]);
    assert_eq!(v["metadata"]["project"], "default");
    // A manifest names its project; apply puts it there, delete finds it there.
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.yaml");
    std::fs::write(
        &manifest,
        "kind: Volume\nmetadata: {name: cart, project: shop}\nspec: {size: 64M}\n",
    )
    .unwrap();
    corral.ok(&["project", "create", "shop"]);
    let m = manifest.to_str().unwrap();
    let applied = corral.ok(&["apply", "-f", m]);
    assert!(applied.contains("volume/cart created"), "{applied}");
    corral.fails(&["volume", "get", "cart"], 3, "not found");
    corral.ok(&["--project", "shop", "volume", "get", "cart"]);
    // Every project at once names each object PROJECT/NAME.
    let all = corral.ok(&["volume", "list", "--all-projects"]);
    for name in ["default/data", "web/data", "shop/cart"] {
        assert!(all.contains(name), "{name} in {all}");
    }
    let only_web = in_web.ok(&["volume", "list"]);
    assert!(
        only_web.contains("data") && !only_web.contains("cart"),
        "{only_web}"
    );
    corral.fails(&["project", "delete", "shop"], 1, "not empty (1 volume(s))");
    let deleted = corral.ok(&["delete", "-f", m]);
    assert!(deleted.contains("volume/cart deleting"), "{deleted}");
}
