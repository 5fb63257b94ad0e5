//! Agents join a cluster: `corrald cluster init`, a server on a real etcd serving TLS with the
//! cluster's certificate, a join token minted by an admin, and `corrald --role agent`
//! processes. The agent joins once (its key never leaves it, the CA is pinned by the token),
//! reports its node with its node certificate, restarts on that certificate without a token;
//! the spent token is refused to a second agent; the node certificate may report only its own
//! node and reaches nothing else.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_testkit::http::free_port;
use corral_testkit::{Corrald, EtcdCluster};
use serde_json::{Value, json};

mod common;
use common::{CORRALD, api};

/// `corrald --role agent` with its own directories and log.
struct Agent {
    child: Child,
    dir: PathBuf,
}

impl Agent {
    fn start(dir: &Path, server: &str, node: &str, token: Option<&str>) -> Agent {
        Agent::start_with(dir, server, node, token, &[])
    }

    /// [`start`](Self::start) with more flags.
    fn start_with(
        dir: &Path,
        server: &str,
        node: &str,
        token: Option<&str>,
        extra: &[&str],
    ) -> Agent {
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .unwrap();
        let mut command = Command::new(CORRALD);
        command
            .args(["--role", "agent", "--server", server, "--node-name", node])
            .arg("--data-dir")
            .arg(dir.join("d"))
            .arg("--run-dir")
            .arg(dir.join("r"))
            .args(extra)
            .env("CORRAL_LOG", "info,corral=debug")
            .env_remove("CORRAL_JOIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(token) = token {
            command.env("CORRAL_JOIN_TOKEN", token);
        }
        Agent {
            child: command.spawn().expect("corrald --role agent starts"),
            dir: dir.to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Waits for the agent to exit (a refused join ends it) and returns its log.
    fn wait_exit(&mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.wait_exit();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its fence guard outlives it too.
        if let Some(pid) = corral_testkit::fence_guard_pid_under(&self.dir.join("r")) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // QEMU outlives corrald: end the guests this agent started, as `Corrald` does.
        corral_testkit::end_guests_under(&self.dir.join("r"));
    }
}

/// The server's view of `node`, once `ready` holds for it.
async fn wait_node(
    server: &Corrald,
    node: &str,
    what: &str,
    ready: impl Fn(&Value) -> bool,
    agent: &Agent,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = api(server)
            .try_send("GET", &format!("/v1/nodes/{node}"), None)
            .await;
        if let Ok(reply) = reply {
            let body = reply.json();
            if reply.status == 200 && ready(&body) {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {node} never {what}:\nagent:\n{}\nserver:\n{}",
            agent.log(),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn is_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == true)
}

/// A TLS client presenting the agent's node certificate, trusting only the cluster CA.
fn node_client(agent_dir: &Path) -> reqwest::Client {
    let node = agent_dir.join("d/node");
    let read = |f: &str| std::fs::read(node.join(f)).unwrap();
    let mut identity = read("node.crt");
    identity.extend(read("node.key"));
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&read("ca.crt")).unwrap())
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_joins_once_by_token_and_acts_only_for_its_node() -> anyhow::Result<()> {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??;
    let tmp = tempfile::Builder::new()
        .prefix("crl-agent")
        .tempdir_in("/tmp")?;
    let cluster = tmp.path().join("cluster-init");
    let out = Command::new(CORRALD)
        .args(["cluster", "init", "--server-name", "127.0.0.1"])
        .arg("--data-dir")
        .arg(&cluster)
        .output()?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca_dir = cluster.join("cluster");
    for key in ["ca.key", "server.key"] {
        let mode = std::fs::metadata(ca_dir.join(key))?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let again = Command::new(CORRALD)
        .args(["cluster", "init", "--data-dir"])
        .arg(&cluster)
        .output()?;
    assert!(!again.status.success(), "a second init keeps the CA");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let port = free_port();
    let file = |f: &str| ca_dir.join(f).to_str().unwrap().to_owned();
    let server = Corrald::builder(CORRALD)
        .args(&["--store", "etcd", "--etcd-endpoints", &etcd.endpoint(0)])
        .args(&["--role", "server", "--node-name", "srv"])
        .args(&["--listen", &format!("127.0.0.1:{port}")])
        .args(&[
            "--tls-cert",
            &file("server.crt"),
            "--tls-key",
            &file("server.key"),
        ])
        .args(&["--cluster-dir", &file("")])
        .start()?;
    let url = format!("https://127.0.0.1:{port}");

    let minted = api(&server)
        .send(
            "POST",
            "/v1/nodes/join-tokens",
            Some(br#"{"ttl": "10m", "node": "agent-a"}"#.as_slice()),
        )
        .await
        .expect(201);
    let token = minted["token"].as_str().unwrap().to_owned();
    assert!(
        said.contains(minted["ca_sha256"].as_str().unwrap()),
        "{said}"
    );
    let bad = api(&server)
        .send(
            "POST",
            "/v1/nodes/join-tokens",
            Some(br#"{"ttl": "30d"}"#.as_slice()),
        )
        .await
        .expect_error(400, "InvalidArgument");
    assert!(bad.contains("ttl"), "{bad}");

    // First start: joins by token, then reports its node.
    let mut agent = Agent::start(&tmp.path().join("a"), &url, "agent-a", Some(&token));
    let node = wait_node(&server, "agent-a", "became Ready", is_ready, &agent).await;
    assert!(
        node["status"]["capacity"]["cpus"].as_u64() >= Some(1),
        "{node}"
    );
    let key_mode = std::fs::metadata(agent.dir.join("d/node/node.key"))?
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert!(
        agent.log().contains("joined the cluster"),
        "{}",
        agent.log()
    );

    // Restarted without a token, it reuses its certificate and keeps reporting.
    agent.stop();
    let before = node["status"]["heartbeat"].as_str().unwrap().to_owned();
    let agent = Agent::start(&agent.dir.clone(), &url, "agent-a", None);
    wait_node(
        &server,
        "agent-a",
        "reported after the restart",
        |n| {
            n["status"]["heartbeat"]
                .as_str()
                .is_some_and(|h| h > before.as_str())
        },
        &agent,
    )
    .await;
    assert!(
        agent
            .log()
            .contains("using the node certificate from an earlier join"),
        "{}",
        agent.log()
    );

    // The token is spent: a second agent is refused, says why, and keeps nothing.
    let mut second = Agent::start(&tmp.path().join("b"), &url, "agent-b", Some(&token));
    let (status, log) = second.wait_exit();
    assert!(!status.success());
    assert!(log.contains("already used (by node \"agent-a\")"), "{log}");
    assert!(!second.dir.join("d/node/node.crt").exists());
    // An unknown token likewise, and a join without one at all.
    let forged = format!("{}{}", &token[..token.len() - 4], "0000");
    let mut third = Agent::start(&tmp.path().join("c"), &url, "agent-c", Some(&forged));
    let (status, log) = third.wait_exit();
    assert!(!status.success() && log.contains("unknown token"), "{log}");
    let mut fourth = Agent::start(&tmp.path().join("e"), &url, "agent-e", None);
    let (status, log) = fourth.wait_exit();
    assert!(!status.success() && log.contains("--join-token"), "{log}");

    // The node certificate: its own node only; no other node, VM, identity or project.
    let node_api = node_client(&agent.dir);
    let (status, own) = store_call(
        &node_api,
        &url,
        "agent-a",
        json!({"op": "get", "kind": "Node", "name": "agent-a"}),
    )
    .await;
    assert_eq!(
        (status, own["object"]["name"].as_str()),
        (200, Some("agent-a")),
        "{own}"
    );
    let other = node_api
        .post(format!("{url}/v1/nodes/agent-b/store"))
        .header("content-type", "application/json")
        .body(json!({"op": "revision"}).to_string())
        .send()
        .await?;
    assert_eq!(other.status(), 403);
    let why: Value = serde_json::from_slice(&other.bytes().await?)?;
    assert!(
        why["error"]["message"]
            .as_str()
            .unwrap()
            .contains("agent-b"),
        "{why}"
    );
    for (method, path) in [
        ("GET", "/v1/vms"),
        ("GET", "/v1/nodes"),
        ("GET", "/v1/identities"),
        ("GET", "/v1/projects"),
        ("POST", "/v1/nodes/join-tokens"),
        ("POST", "/v1/nodes/agent-a/cordon"),
    ] {
        let reply = node_api
            .request(method.parse()?, format!("{url}{path}"))
            .send()
            .await?;
        assert_eq!(reply.status(), 403, "{method} {path}");
        let why: Value = serde_json::from_slice(&reply.bytes().await?)?;
        assert!(
            why["error"]["message"]
                .as_str()
                .unwrap()
                .contains("node:agent-a"),
            "{method} {path}: {why}"
        );
    }
    // Nobody without a credential reaches a node's store.
    let anonymous = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
            ca_dir.join("ca.crt"),
        )?)?)
        .build()?;
    let reply = anonymous
        .post(format!("{url}/v1/nodes/agent-a/store"))
        .header("content-type", "application/json")
        .body(json!({"op": "revision"}).to_string())
        .send()
        .await?;
    assert_eq!(reply.status(), 401);
    drop(agent);
    drop(etcd);
    Ok(())
}

/// A cluster of one server (TLS, on the cluster's certificate) on a real etcd, for agents.
struct Cluster {
    server: Corrald,
    url: String,
    tmp: tempfile::TempDir,
    _etcd: EtcdCluster,
}

impl Cluster {
    async fn start() -> anyhow::Result<Cluster> {
        let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??;
        let tmp = tempfile::Builder::new()
            .prefix("crl-agent")
            .tempdir_in("/tmp")?;
        // QEMU runs as its own user and opens the agents' volume files by path.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711))?;
        let keys = tmp.path().join("keys");
        let out = Command::new(CORRALD)
            .args([
                "cluster",
                "init",
                "--server-name",
                "127.0.0.1",
                "--data-dir",
            ])
            .arg(&keys)
            .output()?;
        anyhow::ensure!(out.status.success(), "{out:?}");
        let file = |f: &str| keys.join("cluster").join(f).to_str().unwrap().to_owned();
        let port = free_port();
        let server = Corrald::builder(CORRALD)
            .args(&["--store", "etcd", "--etcd-endpoints", &etcd.endpoint(0)])
            .args(&["--role", "server", "--node-name", "srv"])
            .args(&["--listen", &format!("127.0.0.1:{port}")])
            .args(&[
                "--tls-cert",
                &file("server.crt"),
                "--tls-key",
                &file("server.key"),
            ])
            .args(&["--cluster-dir", &file("")])
            .start()?;
        Ok(Cluster {
            server,
            url: format!("https://127.0.0.1:{port}"),
            tmp,
            _etcd: etcd,
        })
    }

    async fn token(&self) -> String {
        let minted = api(&self.server)
            .send("POST", "/v1/nodes/join-tokens", Some(b"{}".as_slice()))
            .await
            .expect(201);
        minted["token"].as_str().unwrap().to_owned()
    }
}

impl Cluster {
    /// agent-a and agent-b (under `<tmp>/a` and `<tmp>/b`) joined with `extra` flags, once
    /// the server sees each one `ready`.
    async fn two_agents(
        &self,
        extra: &[&str],
        what: &str,
        ready: impl Fn(&Value) -> bool + Copy,
    ) -> (Agent, Agent) {
        let mut agents = Vec::new();
        for (dir, node) in [("a", "agent-a"), ("b", "agent-b")] {
            let dir = self.tmp.path().join(dir);
            let token = self.token().await;
            agents.push(Agent::start_with(
                &dir,
                &self.url,
                node,
                Some(&token),
                extra,
            ));
        }
        for (agent, node) in agents.iter().zip(["agent-a", "agent-b"]) {
            wait_node(&self.server, node, what, ready, agent).await;
        }
        let b = agents.pop().unwrap();
        (agents.pop().unwrap(), b)
    }

    /// Both agents' logs and the server's, for a failure message.
    fn logs(&self, a: &Agent, b: &Agent) -> String {
        format!(
            "agent-a:\n{}\nagent-b:\n{}\nserver:\n{}",
            a.log(),
            b.log(),
            self.server.log()
        )
    }
}

/// Waits until VM `name` has moved to node `target` and runs there; its migration's status.
async fn wait_moved(
    admin: &corral_client::Client,
    name: &str,
    target: &str,
    logs: impl Fn() -> String,
) -> anyhow::Result<(corral_contract::Vm, corral_contract::MigrationStatus)> {
    use corral_contract::{MigrationPhase, Phase};
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let vm = admin.get_vm(name).await?;
        let m = vm.status.migration.clone().unwrap_or_default();
        assert!(
            !matches!(m.phase, MigrationPhase::Failed | MigrationPhase::Cancelled),
            "{m:?}\n{}",
            logs()
        );
        if m.phase == MigrationPhase::Completed
            && vm.status.node.as_deref() == Some(target)
            && vm.status.pid.is_some()
            && vm.status.phase == Phase::Running
        {
            return Ok((vm, m));
        }
        assert!(Instant::now() < deadline, "not moved: {m:?}\n{}", logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the guest of VM `uid` on the agent under `dir` counts past `before` without
/// having booted there: it moved live.
async fn counts_on_without_boot(dir: &Path, uid: &str, before: u64, logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (count, booted) = heartbeat_under(dir, uid);
        assert!(!booted, "the guest booted again under {}", dir.display());
        if count.is_some_and(|n| n > before) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat after {before} under {}\n{}",
            dir.display(),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The agent's store call as node `node`, answered by the server.
async fn store_call(client: &reqwest::Client, url: &str, node: &str, call: Value) -> (u16, Value) {
    let reply = client
        .post(format!("{url}/v1/nodes/{node}/store"))
        .header("content-type", "application/json")
        .body(call.to_string())
        .send()
        .await
        .unwrap();
    let status = reply.status().as_u16();
    (
        status,
        serde_json::from_slice(&reply.bytes().await.unwrap()).unwrap(),
    )
}

/// Waits until the console of VM `uid`, as the agent under `dir` keeps it, holds `needle`.
async fn wait_serial(dir: &Path, uid: &str, needle: &str, agent: &Agent) {
    let serial = dir.join("r/vms").join(uid).join("serial.log");
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {}:\n{text}\nagent:\n{}",
            serial.display(),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A kit VM with volume `volume` attached (the guest's /dev/vda) that runs `script` at boot.
fn kit_vm_on_volume(name: &str, volume: &str, script: &str) -> corral_contract::Vm {
    let mut vm = corral_testkit::kit_vm(name, |b| {
        b.volume(corral_contract::VolumeAttachment {
            volume: volume.parse().unwrap(),
            readonly: false,
            serial: None,
        })
    });
    vm.spec.cloud_init = Some(corral_contract::CloudInit {
        user_data: Some(format!("#!/bin/sh\n{script}\n")),
        ..Default::default()
    });
    vm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_made_through_the_server_boots_on_the_agent_which_readopts_it() -> anyhow::Result<()> {
    use corral_client::{Client, Endpoint};
    use corral_contract::Phase;
    use corral_testkit::{kit_vm, qemu_pids_under, wait_phase};

    let mut cluster = Cluster::start().await?;
    let token = cluster.token().await;
    let dir = cluster.tmp.path().join("agent");
    let mut agent = Agent::start(&dir, &cluster.url, "agent-a", Some(&token));
    wait_node(&cluster.server, "agent-a", "became Ready", is_ready, &agent).await;

    let admin = Client::connect(Endpoint::Unix(cluster.server.socket())).await?;
    // A forward of guest port 8080, which a tunnel through the server reaches.
    admin
        .create_vm(&kit_vm("on-agent", |b| {
            b.introspection(true).network(
                corral_contract::NetworkAttachment::new("default".parse().unwrap()).forward(8080),
            )
        }))
        .await?;
    let vm = wait_phase(&admin, &cluster.server, "on-agent", Phase::Running)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nagent:\n{}", agent.log()))?;
    assert_eq!(vm.status.node.as_deref(), Some("agent-a"));
    let pid = vm.status.pid.expect("a pid");
    assert_eq!(
        qemu_pids_under(&dir.join("r")),
        vec![pid],
        "QEMU runs under the agent"
    );
    assert!(
        cluster.server.qemu_pids().is_empty(),
        "the server runs no VM"
    );
    // Evidence from inside the guest: its console, as the agent drains it.
    wait_serial(&dir, &vm.metadata.uid, "CORRAL_BOOT_OK", &agent).await;
    node_local_streams_through_the_server(&cluster, &admin, &dir, &agent).await?;

    // Restarted, the agent reuses its certificate and adopts the running guest: one QEMU.
    agent.stop();
    let agent = Agent::start(&dir, &cluster.url, "agent-a", None);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !agent.log().contains("adopted running VM") {
        assert!(Instant::now() < deadline, "not adopted:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        qemu_pids_under(&dir.join("r")),
        vec![pid],
        "the same one QEMU"
    );
    let vm = admin.get_vm("on-agent").await?;
    assert_eq!(
        (vm.status.phase, vm.status.pid),
        (Phase::Running, Some(pid))
    );

    // The server killed and started again: the agent's watches resume through the new one,
    // so a stop asked there reaches the guest on the agent.
    cluster.server.restart()?;
    let admin = Client::connect(Endpoint::Unix(cluster.server.socket())).await?;
    admin.stop_vm("on-agent", true).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !qemu_pids_under(&dir.join("r")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the stop did not reach the agent:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let vm = wait_phase(&admin, &cluster.server, "on-agent", Phase::Stopped).await?;
    assert_eq!(vm.status.node.as_deref(), Some("agent-a"));

    // A VM bound to no node of agent-a: its certificate can neither read nor change it, nor
    // reach identities, nor act as another node.
    let mut elsewhere = kit_vm("elsewhere", |b| b);
    elsewhere
        .spec
        .placement
        .node_selector
        .insert("zone".into(), "nowhere".into());
    admin.create_vm(&elsewhere).await?;
    let node = node_client(&dir);
    let url = &cluster.url;
    let (_, got) = store_call(
        &node,
        url,
        "agent-a",
        json!({"op": "get", "kind": "Vm", "name": "elsewhere"}),
    )
    .await;
    assert_eq!(got["error"]["code"], "PermissionDenied", "{got}");
    let (_, own) = store_call(
        &node,
        url,
        "agent-a",
        json!({"op": "get", "kind": "Vm", "name": "on-agent"}),
    )
    .await;
    let mut forged = own["object"].clone();
    forged["name"] = json!("elsewhere");
    let (_, put) = store_call(
        &node,
        url,
        "agent-a",
        json!({"op": "update", "object": forged}),
    )
    .await;
    assert_eq!(put["error"]["code"], "PermissionDenied", "{put}");
    let (_, list) = store_call(&node, url, "agent-a", json!({"op": "list", "kind": "Vm"})).await;
    let names: Vec<&str> = list["list"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["on-agent"], "{list}");
    // Its own VM's spec is the user's: a node may not change it.
    let mut respec = own["object"].clone();
    let mut body: Value = serde_json::from_str(respec["body"].as_str().unwrap())?;
    body["spec"]["cpus"] = json!(4);
    respec["body"] = json!(body.to_string());
    let (_, put) = store_call(
        &node,
        url,
        "agent-a",
        json!({"op": "update", "object": respec}),
    )
    .await;
    assert_eq!(put["error"]["code"], "PermissionDenied", "{put}");
    let (_, ids) = store_call(
        &node,
        url,
        "agent-a",
        json!({"op": "list", "kind": "Identity"}),
    )
    .await;
    assert_eq!(ids["error"]["code"], "PermissionDenied", "{ids}");
    let (status, _) = store_call(&node, url, "agent-b", json!({"op": "revision"})).await;
    assert_eq!(status, 403);

    // Volumes: a blank volume is made on the agent of its first VM, and the guest sees it.
    for name in ["data", "orphan"] {
        admin
            .create_volume(&serde_json::from_value(json!({
                "metadata": {"name": name}, "spec": {"size": 32 << 20},
            }))?)
            .await?;
    }
    let disky = kit_vm_on_volume(
        "disky",
        "data",
        "echo CORRAL_VDA_SECTORS=$(cat /sys/block/vda/size)",
    );
    admin.create_vm(&disky).await?;
    let vm = wait_phase(&admin, &cluster.server, "disky", Phase::Running)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nagent:\n{}", agent.log()))?;
    assert_eq!(vm.status.node.as_deref(), Some("agent-a"));
    let data = admin.get_volume("data").await?;
    assert_eq!(data.status.node.as_deref(), Some("agent-a"), "{data:?}");
    let path = data.status.path.clone().expect("a path");
    assert!(
        Path::new(&path).starts_with(dir.join("d")) && Path::new(&path).exists(),
        "{path}"
    );
    // 32 MiB in 512-byte sectors, as the guest's kernel counts them.
    wait_serial(&dir, &vm.metadata.uid, "CORRAL_VDA_SECTORS=65536", &agent).await;
    // A volume no VM of agent-a uses: the agent can neither claim nor delete it.
    let (_, orphan) = store_call(
        &node,
        url,
        "agent-a",
        json!({"op": "get", "kind": "Volume", "name": "orphan"}),
    )
    .await;
    let mut claimed = orphan["object"].clone();
    let mut body: Value = serde_json::from_str(claimed["body"].as_str().unwrap())?;
    body["status"]["node"] = json!("agent-a");
    body["status"]["path"] = json!("/etc/shadow");
    claimed["body"] = json!(body.to_string());
    let (_, put) = store_call(
        &node,
        url,
        "agent-a",
        json!({"op": "update", "object": claimed}),
    )
    .await;
    assert_eq!(put["error"]["code"], "PermissionDenied", "{put}");
    let (_, del) = store_call(
        &node,
        url,
        "agent-a",
        json!({"op": "delete", "kind": "Volume", "name": "orphan"}),
    )
    .await;
    assert_eq!(del["error"]["code"], "PermissionDenied", "{del}");

    // Images live on the servers: a volume cloned from one is made on the agent from the
    // blob it fetches by digest (and verifies), and the guest reads the image's bytes.
    let upload = |name: &str, first: &str| {
        let file = cluster.tmp.path().join(format!("{name}.raw"));
        let mut bytes = first.as_bytes().to_vec();
        bytes.resize(1 << 20, 0);
        std::fs::write(&file, bytes).unwrap();
        let image: corral_contract::Image = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"source": {"upload": {}}, "format": "raw"},
        }))
        .unwrap();
        (image, file)
    };
    let (marked, file) = upload("marked", "image-marker-42\n");
    let marked = admin.upload_image(&marked, &file, |_| {}).await?;
    let (secret, file) = upload("secret", "not-for-agents\n");
    let secret = admin.upload_image(&secret, &file, |_| {}).await?;
    admin
        .create_volume(&serde_json::from_value(json!({
            "metadata": {"name": "cloned"}, "spec": {"image": "marked"},
        }))?)
        .await?;
    let cloner = kit_vm_on_volume(
        "cloner",
        "cloned",
        "echo \"CORRAL_IMAGEREAD $(head -c 15 /dev/vda)\"",
    );
    admin.create_vm(&cloner).await?;
    let vm = wait_phase(&admin, &cluster.server, "cloner", Phase::Running)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nagent:\n{}", agent.log()))?;
    wait_serial(
        &dir,
        &vm.metadata.uid,
        "CORRAL_IMAGEREAD image-marker-42",
        &agent,
    )
    .await;
    let hex = |d: Option<String>| {
        d.expect("a digest")
            .trim_start_matches("blake3:")
            .to_owned()
    };
    let digest = hex(marked.status.digest.clone());
    assert!(
        agent.log().contains("image blob fetched and verified"),
        "{}",
        agent.log()
    );
    assert!(dir.join("d/images/blake3").join(&digest).exists());
    // A blob no volume of agent-a clones is not agent-a's to read, nor anything as agent-b.
    let fetch = |node: &str, digest: &str| {
        let (client, url) = (
            node_client(&dir),
            format!("{url}/v1/nodes/{node}/blobs/{digest}"),
        );
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    let secret = hex(secret.status.digest.clone());
    assert_eq!(fetch("agent-a", &secret).await, 403);
    assert_eq!(fetch("agent-b", &digest).await, 403);
    assert_eq!(fetch("agent-a", &digest).await, 200);

    // A disk+memory snapshot of a VM on agent-a, asked of the server: the agent takes it in
    // the volume on its disk (qemu-img lists the tag there), and removes it when deleted.
    let snapshot: corral_contract::Snapshot = serde_json::from_value(json!({
        "metadata": {"name": "snap"}, "spec": {"vm": "cloner", "memory": true},
    }))?;
    admin.create_snapshot(&snapshot).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let taken = loop {
        let s = admin.get_snapshot("snap").await?;
        match s.status.phase {
            corral_contract::StoragePhase::Ready => break s,
            corral_contract::StoragePhase::Failed => {
                anyhow::bail!("snapshot failed: {:?}\n{}", s.status, agent.log())
            }
            _ if Instant::now() > deadline => {
                anyhow::bail!("snapshot not taken: {:?}\n{}", s.status, agent.log())
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let tag = taken.status.tag.clone().expect("a tag");
    let volume = admin.get_volume("cloned").await?;
    let file = dir
        .join("d/volumes")
        .join(format!("{}.qcow2", volume.metadata.uid));
    let listed = |file: &Path| {
        let out = Command::new("qemu-img")
            .args(["snapshot", "-l", "-U"])
            .arg(file)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(listed(&file).contains(&tag), "{}", listed(&file));
    admin.delete_snapshot("snap").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while admin.get_snapshot("snap").await.is_ok() || listed(&file).contains(&tag) {
        assert!(
            Instant::now() < deadline,
            "snapshot not removed: {}\n{}",
            listed(&file),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(agent);
    Ok(())
}

/// The console, console log and attestation of VM `on-agent`, which agent-a runs, asked of
/// the server as a user would: the server reaches the agent's node listener. That listener
/// takes the servers' certificate only: a node certificate of the same CA is refused.
async fn node_local_streams_through_the_server(
    cluster: &Cluster,
    admin: &corral_client::Client,
    dir: &Path,
    agent: &Agent,
) -> anyhow::Result<()> {
    let logs = || format!("agent:\n{}\nserver:\n{}", agent.log(), cluster.server.log());
    let log = admin.console_log("on-agent", 0).await?;
    assert!(
        String::from_utf8_lossy(&log).contains("CORRAL_BOOT_OK"),
        "the log through the server: {}\n{}",
        String::from_utf8_lossy(&log),
        logs()
    );
    // A live console: typed through the server, answered by the guest's shell on agent-a.
    let mut console = admin.attach_console("on-agent", true, true).await?;
    console
        .input
        .send(b"echo CONSOLE-$((6*7))\n".to_vec())
        .await?;
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&seen).contains("CONSOLE-42") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, console.output.recv()).await {
            Ok(Some(Ok(data))) => seen.extend(data),
            other => panic!(
                "no answer on the console ({other:?}): {}\n{}",
                String::from_utf8_lossy(&seen),
                logs()
            ),
        }
    }
    // Guest RAM, read on agent-a through the server: a line the guest's shell computed is
    // found, read back, and in a full snapshot; a map renders. Audited on both sides.
    let marker = format!("MEM-{}-", std::process::id());
    console
        .input
        .send(format!("echo {marker}$((6*7))XY\n").into_bytes())
        .await?;
    let wanted = format!("{marker}42XY");
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let (found, _) = admin
            .find_in_memory("on-agent", wanted.as_bytes(), 4)
            .await?;
        if let Some(addr) = found.first() {
            break *addr;
        }
        assert!(Instant::now() < deadline, "{wanted} not in RAM\n{}", logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let read = admin
        .read_memory("on-agent", addr, wanted.len() as u64)
        .await?;
    assert_eq!(read, wanted.as_bytes(), "read back at {addr:#x}");
    let png = admin.map_memory("on-agent", 64).await?;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let mut snap = admin
        .snapshot_memory("on-agent", corral_client::SnapshotMode::Consistent)
        .await?;
    let regions: u64 = snap.regions.iter().map(|r| r.1).sum();
    assert_eq!(snap.total_bytes, regions);
    assert!(
        snap.total_bytes >= 256 << 20,
        "all RAM: {}",
        snap.total_bytes
    );
    let mut got = 0u64;
    let copied = tokio::time::timeout(Duration::from_secs(180), async {
        while let corral_client::SnapshotChunk::Data(data) = snap.next().await? {
            got += data.len() as u64;
        }
        anyhow::Ok(())
    })
    .await;
    match copied {
        Ok(done) => done?,
        Err(_) => panic!("the snapshot stalled after {got} bytes\n{}", logs()),
    }
    assert_eq!(got, snap.total_bytes, "every byte came through the server");
    // Out of range: the node's refusal reads as the server's own.
    let bad = admin
        .read_memory("on-agent", u64::MAX - 8, 4)
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("addr/len"), "{bad}");
    let server_audit = std::fs::read_to_string(cluster.server.data_dir().join("audit.log"))?;
    assert!(
        server_audit.contains("memory.find") && server_audit.contains("read on node agent-a"),
        "{server_audit}"
    );
    let agent_audit = std::fs::read_to_string(dir.join("d/audit.log"))?;
    assert!(
        agent_audit.contains("memory.read") && agent_audit.contains("through a server"),
        "{agent_audit}"
    );

    // One writer per console, also through a server.
    let second = admin.attach_console("on-agent", true, false).await;
    let refused = match second {
        Ok(mut s) => tokio::time::timeout(Duration::from_secs(10), s.output.recv())
            .await
            .ok()
            .flatten()
            .and_then(Result::err)
            .map(|e| e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    assert!(
        refused.as_deref().is_some_and(|e| e.contains("writer")),
        "{refused:?}"
    );

    // A tunnel through the server to the guest's port 8080, which agent-a forwards on its
    // host: a web server started on the console answers a request sent through it.
    console
        .input
        .send(
            b"mkdir -p /srv && echo tunnel-$((6*7)) > /srv/index.html && httpd -p 8080 -h /srv\n"
                .to_vec(),
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut answer = Vec::new();
        let opened = admin.tunnel("on-agent", 8080).await;
        if let Err(e) = &opened {
            answer.extend(format!("(tunnel: {e})").into_bytes());
        }
        if let Ok(mut tunnel) = opened {
            tunnel
                .input
                .send(b"GET /index.html HTTP/1.0\r\n\r\n".to_vec())
                .await?;
            drop(tunnel.input);
            while let Ok(Some(data)) =
                tokio::time::timeout(Duration::from_secs(10), tunnel.output.recv()).await
            {
                match data {
                    Ok(data) => answer.extend(data),
                    Err(e) => answer.extend(format!("(tunnel: {e})").into_bytes()),
                }
            }
        }
        if String::from_utf8_lossy(&answer).contains("tunnel-42") {
            break;
        }
        if Instant::now() >= deadline {
            let console = admin.console_log("on-agent", 0).await.unwrap_or_default();
            panic!(
                "no answer through the tunnel: {}\nconsole:\n{}\n{}",
                String::from_utf8_lossy(&answer),
                String::from_utf8_lossy(&console),
                logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Only ports the VM forwards.
    let refused = admin.tunnel("on-agent", 22).await.map(drop);
    let refused = match refused {
        Err(e) => e.to_string(),
        Ok(()) => String::new(),
    };
    assert!(refused.contains("forwarding no TCP port 22"), "{refused}");
    drop(console);

    // The attestation is signed by agent-a's own key, for agent-a.
    let (envelope, key_pem) = admin.attestation("on-agent").await?;
    let agent_key = std::fs::read_to_string(dir.join("d/keys/node.pub"))?;
    assert_eq!(
        key_pem.trim(),
        agent_key.trim(),
        "signed by the agent's key"
    );
    let key_file = dir.join("agent-key.pub");
    std::fs::write(&key_file, &key_pem)?;
    let key = corral_storage::attest::read_public_key(&key_file)?;
    let statement = corral_storage::attest::verify(&envelope, &key)?;
    assert_eq!(statement.predicate.node_id, "agent-a");
    assert!(
        statement.predicate.vm.ends_with("on-agent"),
        "{:?}",
        statement.predicate
    );

    // The node listener, at the address the node reports, refuses a node certificate (the
    // agent's own) and a client without one.
    let node = api(&cluster.server)
        .send("GET", "/v1/nodes/agent-a", None)
        .await
        .expect(200);
    let address: std::net::SocketAddr = node["status"]["address"]
        .as_str()
        .expect("the node reports its address")
        .parse()?;
    let read = |f: &str| std::fs::read(dir.join("d/node").join(f)).unwrap();
    let mut identity = read("node.crt");
    identity.extend(read("node.key"));
    let url = format!(
        "https://agent-a:{}/v1/node/console/log?vm=default/on-agent",
        address.port()
    );
    let as_node = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&read("ca.crt"))?)
        .identity(reqwest::Identity::from_pem(&identity)?)
        .resolve("agent-a", address)
        .build()?;
    let reply = as_node.get(&url).send().await?;
    assert_eq!(reply.status(), 403, "a node certificate reaches no node");
    let anonymous = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&read("ca.crt"))?)
        .resolve("agent-a", address)
        .build()?;
    assert!(
        anonymous.get(&url).send().await.is_err(),
        "no client certificate, no connection"
    );
    Ok(())
}

/// The highest heartbeat count in the serial log the agent under `dir` keeps of VM `uid`,
/// and whether that log holds a boot.
fn heartbeat_under(dir: &Path, uid: &str) -> (Option<u64>, bool) {
    let log =
        std::fs::read_to_string(dir.join("r/vms").join(uid).join("serial.log")).unwrap_or_default();
    let count = log
        .lines()
        .filter_map(|l| l.split_once(corral_testkit::HEARTBEAT))
        .filter_map(|(_, n)| n.trim().parse().ok())
        .max();
    (count, log.contains(corral_testkit::BOOT_MARKER))
}

/// Two agents joined to one server: a running guest moves live from one to the other over the
/// migration stream, TLS on the cluster's node certificates. Evidence from inside the guest:
/// its heartbeat counter carries on in the target's QEMU, which never booted it. The target
/// reads the VM only while it migrates there; the source no longer reads it once it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_moves_live_between_two_agents() -> anyhow::Result<()> {
    use corral_client::{Client, Endpoint};
    use corral_contract::Phase;
    use corral_testkit::{qemu_pids_under, wait_phase};

    let cluster = Cluster::start().await?;
    let (dir_a, dir_b) = (cluster.tmp.path().join("a"), cluster.tmp.path().join("b"));
    let (agent_a, agent_b) = cluster.two_agents(&[], "became Ready", is_ready).await;
    let logs = || cluster.logs(&agent_a, &agent_b);
    let admin = Client::connect(Endpoint::Unix(cluster.server.socket())).await?;

    // Placed on agent-a (agent-b cordoned meanwhile), booted, counting. Its volume is made
    // on agent-a; the guest writes a marker on it, then reads it back every two seconds
    // past its page cache.
    admin.cordon_node("agent-b", true).await?;
    admin
        .create_volume(&serde_json::from_value(json!({
            "metadata": {"name": "roam-disk"}, "spec": {"size": 32 << 20},
        }))?)
        .await?;
    // A second marker stays in guest RAM (a file on the initramfs root), read through the
    // memory bridge of whichever node runs the guest.
    let mut roamer = kit_vm_on_volume(
        "roamer",
        "roam-disk",
        "printf 'roam-marker-%s\\n' $((6*7)) > /dev/vda; sync\n\
         printf 'ram-kept-%s-here\\n' $((6*7)) > /ram-marker\n\
         (while :; do echo 3 > /proc/sys/vm/drop_caches; \
         echo \"CORRAL_DISKREAD $(head -c 15 /dev/vda)\"; sleep 2; done) &",
    );
    roamer.spec.introspection = true;
    admin.create_vm(&roamer).await?;
    let vm = wait_phase(&admin, &cluster.server, "roamer", Phase::Running)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;
    admin.cordon_node("agent-b", false).await?;
    assert_eq!(vm.status.node.as_deref(), Some("agent-a"));
    let uid = vm.metadata.uid.clone();
    let deadline = Instant::now() + Duration::from_secs(240);
    let before = loop {
        if let Some(n) = heartbeat_under(&dir_a, &uid).0.filter(|n| *n >= 3) {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat on agent-a\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let disk_reads = |dir: &Path| {
        std::fs::read_to_string(dir.join("r/vms").join(&uid).join("serial.log"))
            .unwrap_or_default()
            .matches("CORRAL_DISKREAD roam-marker-42")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while disk_reads(&dir_a) == 0 {
        assert!(
            Instant::now() < deadline,
            "no disk read on agent-a\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let in_ram = || async {
        admin
            .find_in_memory("roamer", b"ram-kept-42-here", 4)
            .await
            .map(|(found, _)| found.len())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while in_ram().await? == 0 {
        assert!(
            Instant::now() < deadline,
            "no RAM marker on agent-a\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let volume = admin.get_volume("roam-disk").await?;
    assert_eq!(volume.status.node.as_deref(), Some("agent-a"), "{volume:?}");
    let path_a = volume.status.path.clone().expect("a path");
    assert!(Path::new(&path_a).starts_with(&dir_a), "{path_a}");
    let (node_a, node_b) = (node_client(&dir_a), node_client(&dir_b));
    let get = |client: &reqwest::Client, node: &str| {
        let (client, url, node) = (client.clone(), cluster.url.clone(), node.to_owned());
        async move {
            store_call(
                &client,
                &url,
                &node,
                json!({"op": "get", "kind": "Vm", "name": "roamer"}),
            )
            .await
            .1
        }
    };
    assert_eq!(
        get(&node_b, "agent-b").await["error"]["code"],
        "PermissionDenied",
        "agent-b reads agent-a's VM before any migration to it"
    );

    // Moved to agent-b while it runs.
    admin.migrate_vm("roamer", Some("agent-b")).await?;
    let (vm, m) = wait_moved(&admin, "roamer", "agent-b", logs).await?;
    assert_eq!(
        (m.source.as_str(), m.target.as_str()),
        ("agent-a", "agent-b")
    );
    assert!(m.tls, "the migration stream was not TLS: {m:?}");
    println!(
        "migrated agent-a → agent-b over TLS: downtime {:?} ms, total {:?} ms, {} bytes",
        m.downtime_ms, m.total_time_ms, m.transferred_bytes
    );
    // The target's TLS credentials: its QEMU's alone, in the VM's run directory.
    let key = dir_b
        .join("r/vms")
        .join(&uid)
        .join("migration-tls/server-key.pem");
    assert_eq!(
        std::fs::metadata(&key)?.permissions().mode() & 0o777,
        0o600,
        "{}",
        key.display()
    );
    assert_eq!(
        qemu_pids_under(&dir_b.join("r")),
        [vm.status.pid.unwrap()],
        "the status names agent-b's QEMU"
    );
    counts_on_without_boot(&dir_b, &uid, before, logs).await;
    // The RAM marker, now read on agent-b (the server asks the node that runs the guest).
    assert!(
        in_ram().await? > 0,
        "the RAM marker did not move\n{}",
        logs()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !qemu_pids_under(&dir_a.join("r")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "agent-a still runs a QEMU\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its disk came along: the guest on agent-b reads the marker from agent-b's file.
    let deadline = Instant::now() + Duration::from_secs(60);
    while disk_reads(&dir_b) < 2 {
        assert!(
            Instant::now() < deadline,
            "no disk read on agent-b\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let volume = admin.get_volume("roam-disk").await?;
    assert_eq!(volume.status.node.as_deref(), Some("agent-b"), "{volume:?}");
    let path_b = volume.status.path.clone().expect("a path");
    assert!(
        Path::new(&path_b).starts_with(&dir_b) && Path::new(&path_b).exists(),
        "{path_b}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&path_a).exists() {
        assert!(Instant::now() < deadline, "agent-a keeps {path_a}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The VM is agent-b's now: agent-a reads it no more.
    assert_eq!(get(&node_b, "agent-b").await["object"]["name"], "roamer");
    assert_eq!(
        get(&node_a, "agent-a").await["error"]["code"],
        "PermissionDenied"
    );
    drop((agent_a, agent_b));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_on_a_shared_pool_moves_ram_only_and_restarts_elsewhere_when_its_node_dies()
-> anyhow::Result<()> {
    use corral_client::{Client, Endpoint};
    use corral_contract::Phase;
    use corral_testkit::{qemu_pids_under, wait_phase};

    let cluster = Cluster::start().await?;
    let (dir_a, dir_b) = (cluster.tmp.path().join("a"), cluster.tmp.path().join("b"));
    // One directory both agents mount at the same path: the tests' stand-in for NFS.
    let pool = cluster.tmp.path().join("pool");
    let pool_flag = format!("shared={}:shared", pool.display());
    let has_shared_pool = |node: &Value| {
        is_ready(node) && node["status"]["pools"] == json!([{"name": "shared", "shared": true}])
    };
    let (mut agent_a, agent_b) = cluster
        .two_agents(
            &["--storage-pool", &pool_flag],
            "reported its pool",
            has_shared_pool,
        )
        .await;
    let logs = |a: &Agent, b: &Agent| cluster.logs(a, b);
    let admin = Client::connect(Endpoint::Unix(cluster.server.socket())).await?;

    // Made on agent-a (agent-b cordoned meanwhile) in the shared pool. The guest writes a
    // marker once — on the first boot only — then reads it back every two seconds past its
    // page cache.
    admin.cordon_node("agent-b", true).await?;
    admin
        .create_volume(&serde_json::from_value(json!({
            "metadata": {"name": "pool-disk"},
            "spec": {"size": 32 << 20, "pool": "shared"},
        }))?)
        .await?;
    let mut vm = kit_vm_on_volume(
        "pooled",
        "pool-disk",
        "if [ \"$(head -c 4 /dev/vda)\" != pool ]; then \
         printf 'pool-marker-%s\\n' $((6*7)) > /dev/vda; sync; echo CORRAL_WROTE_MARKER; fi\n\
         (while :; do echo 3 > /proc/sys/vm/drop_caches; \
         echo \"CORRAL_DISKREAD $(head -c 14 /dev/vda)\"; sleep 2; done) &",
    );
    // Restarted elsewhere should its node be lost.
    vm.spec.restart_policy = corral_contract::RestartPolicy::Always;
    admin.create_vm(&vm).await?;
    let vm = wait_phase(&admin, &cluster.server, "pooled", Phase::Running)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&agent_a, &agent_b)))?;
    admin.cordon_node("agent-b", false).await?;
    assert_eq!(vm.status.node.as_deref(), Some("agent-a"));
    let uid = vm.metadata.uid.clone();
    let volume = admin.get_volume("pool-disk").await?;
    assert!(volume.status.shared, "{volume:?}");
    assert_eq!(volume.status.node.as_deref(), Some("agent-a"));
    let file = pool.join(format!("{}.qcow2", volume.metadata.uid));
    assert_eq!(volume.status.path.as_deref(), file.to_str());
    let serial = |dir: &Path| {
        std::fs::read_to_string(dir.join("r/vms").join(&uid).join("serial.log")).unwrap_or_default()
    };
    let reads = |dir: &Path| {
        serial(dir)
            .matches("CORRAL_DISKREAD pool-marker-42")
            .count()
    };
    let wait_reads = |dir: PathBuf, at_least: usize, what: &'static str| {
        let reads = &reads;
        let (a, b) = (&agent_a, &agent_b);
        async move {
            let deadline = Instant::now() + Duration::from_secs(240);
            while reads(&dir) < at_least {
                assert!(Instant::now() < deadline, "{what}\n{}", logs(a, b));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    wait_reads(dir_a.clone(), 1, "no disk read on agent-a").await;
    assert!(serial(&dir_a).contains("CORRAL_WROTE_MARKER"));
    let before = heartbeat_under(&dir_a, &uid).0.unwrap_or(0);

    // Live to agent-b: RAM and devices only, no disk mirror; the file stays where it is.
    admin.migrate_vm("pooled", Some("agent-b")).await?;
    let (_, m) = wait_moved(&admin, "pooled", "agent-b", || logs(&agent_a, &agent_b)).await?;
    assert!(
        m.disk_address.is_none(),
        "a shared volume was mirrored: {m:?}"
    );
    println!(
        "moved RAM-only agent-a → agent-b: downtime {:?} ms, total {:?} ms, {} bytes",
        m.downtime_ms, m.total_time_ms, m.transferred_bytes
    );
    counts_on_without_boot(&dir_b, &uid, before, || logs(&agent_a, &agent_b)).await;
    wait_reads(dir_b.clone(), 2, "no disk read on agent-b").await;
    // The volume follows its VM: agent-b manages it now; the file never moved.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let volume = admin.get_volume("pool-disk").await?;
        if volume.status.node.as_deref() == Some("agent-b") {
            assert_eq!(volume.status.path.as_deref(), file.to_str());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{volume:?}\n{}",
            logs(&agent_a, &agent_b)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(file.exists(), "the source removed the shared file");
    assert!(
        std::fs::read_dir(dir_a.join("d/volumes"))?.next().is_none()
            && std::fs::read_dir(dir_b.join("d/volumes"))?.next().is_none(),
        "a node-local copy was made"
    );

    // agent-b dies (kill -9; its fence guard stays and stops the guest at the deadline).
    // The VM starts again on agent-a from the same disk: the marker is read, not written.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent_b.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let killed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut samples = 0;
    let vm = loop {
        let running =
            qemu_pids_under(&dir_a.join("r")).len() + qemu_pids_under(&dir_b.join("r")).len();
        assert!(
            running <= 1,
            "two QEMUs for one VM\n{}",
            logs(&agent_a, &agent_b)
        );
        samples += 1;
        let vm = admin.get_vm("pooled").await?;
        if vm.status.node.as_deref() == Some("agent-a") && vm.status.phase == Phase::Running {
            break vm;
        }
        assert!(
            Instant::now() < deadline,
            "not restarted on agent-a: {:?}\n{}",
            vm.status,
            logs(&agent_a, &agent_b)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "agent-b lost → running on agent-a after {:.1} s ({samples} samples, never two QEMUs)",
        killed.elapsed().as_secs_f64()
    );
    assert!(
        vm.status.condition("NodeLost").is_none_or(|c| !c.status),
        "{:?}",
        vm.status
    );
    // A new boot on agent-a (its console log starts anew) that reads the marker the first
    // boot wrote, and writes none.
    wait_reads(
        dir_a.clone(),
        1,
        "no disk read on agent-a after the failover",
    )
    .await;
    assert!(
        heartbeat_under(&dir_a, &uid).1,
        "no boot on agent-a:\n{}",
        serial(&dir_a)
    );
    assert!(
        !serial(&dir_a).contains("CORRAL_WROTE_MARKER"),
        "the restarted guest did not find its marker on the shared disk:\n{}",
        serial(&dir_a)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin.get_volume("pool-disk").await?.status.node.as_deref() != Some("agent-a") {
        assert!(
            Instant::now() < deadline,
            "the volume stayed agent-b's\n{}",
            logs(&agent_a, &agent_b)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    agent_a.stop();
    drop((agent_a, agent_b));
    Ok(())
}
