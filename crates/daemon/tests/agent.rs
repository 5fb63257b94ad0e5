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
            Some(br#"{"ttl": "10m"}"#.as_slice()),
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
    let status = serde_json::to_vec(&json!({"capacity": {"cpus": 1}}))?;
    let put = |node: &str| {
        node_api
            .put(format!("{url}/v1/nodes/{node}/status"))
            .header("content-type", "application/json")
            .body(status.clone())
            .send()
    };
    assert_eq!(put("agent-a").await?.status(), 200);
    let other = put("agent-b").await?;
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
    // The node cannot be reported by anyone without a credential either.
    let anonymous = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
            ca_dir.join("ca.crt"),
        )?)?)
        .build()?;
    let reply = anonymous
        .put(format!("{url}/v1/nodes/agent-a/status"))
        .body(status.clone())
        .send()
        .await?;
    assert_eq!(reply.status(), 401);
    drop(agent);
    drop(etcd);
    Ok(())
}
