//! Network objects against the host they reconfigure, each test in a network namespace of its
//! own with a real corrald, real `ip`, dnsmasq and nftables: a link corrald did not make is
//! refused and left as it was, at admission and at reconcile; similar long names get distinct
//! bridges; overlapping subnets are refused naming what they overlap; `ip_forward` is put back
//! after the last bridge network; a stale dnsmasq pid file never gets an unrelated process
//! killed; only admins create bridge networks; a guest on a user network reaches the host's
//! loopback only when the network says `host_access: true` (evidence from inside the guest).

mod common;

use std::time::Duration;

use common::{CORRALD, api, tls_api};
use corral_client::{Client, Endpoint};
use corral_contract::{Network, NetworkAttachment, Phase, PortForward};
use corral_testkit::http::{Api, TlsSetup, eventually};
use corral_testkit::{Corrald, Netns, ip, kit_vm, wait_console, wait_phase};
use serde_json::{Value, json};

fn bridge_net(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["mode"] = "bridge".into();
    json!({"kind": "Network", "metadata": {"name": name}, "spec": spec})
}

/// Waits until network `name` is in `phase`; returns it.
async fn phase(api: &Api, name: &str, phase: &str) -> Value {
    eventually(&format!("network {name} {phase}"), || async {
        let net = api.get(&format!("/v1/networks/{name}")).await.expect(200);
        (net["status"]["phase"] == phase).then_some(net)
    })
    .await
}

/// What a link is, without its counters: flags, MTU, master, alias and addresses.
fn link_state(name: &str) -> Value {
    let mut link: Value = serde_json::from_str(&ip(&["-j", "addr", "show", "dev", name])).unwrap();
    let link = link[0].take();
    // `ip addr` leaves the alias out; `ip link` has it.
    let mut alias: Value = serde_json::from_str(&ip(&["-j", "link", "show", "dev", name])).unwrap();
    json!({
        "flags": link["flags"], "mtu": link["mtu"], "operstate": link["operstate"],
        "master": link["master"], "ifalias": alias[0]["ifalias"].take(),
        "addrs": link["addr_info"].as_array().unwrap().iter()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect::<Vec<_>>(),
    })
}

fn link_exists(name: &str) -> bool {
    std::process::Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .unwrap()
        .status
        .success()
}

/// Makes a bridge the way an administrator (or docker) would, with an address, up.
fn foreign_bridge(name: &str, addr: &str) -> Value {
    ip(&["link", "add", "name", name, "type", "bridge"]);
    ip(&["addr", "add", addr, "dev", name]);
    ip(&["link", "set", "dev", name, "up"]);
    link_state(name)
}

fn ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .unwrap()
        .trim()
        .to_owned()
}

fn in_netns(tag: &str) -> (Netns, Corrald) {
    let ns = Netns::new(tag);
    ns.enter();
    let d = Corrald::start(CORRALD).expect("corrald starts");
    (ns, d)
}

#[tokio::test]
async fn an_existing_link_is_refused_and_left_untouched() {
    let (_ns, mut d) = in_netns("own");
    let api = api(&d);
    let before = foreign_bridge("br0", "192.168.77.1/24");

    let message = api
        .post(
            "/v1/networks",
            &bridge_net("hijack", json!({"bridge": "br0", "cidr": "10.66.0.0/24"})),
        )
        .await
        .expect_error(400, "InvalidArgument");
    assert!(
        message.starts_with("spec.bridge:") && message.contains("\"br0\" already exists"),
        "{message}"
    );
    api.delete("/v1/networks/hijack")
        .await
        .expect_error(404, "NotFound");
    assert_eq!(link_state("br0"), before);

    // Again at reconcile: a network whose bridge was made while corrald was away, by someone
    // else, fails and touches nothing; deleting it deletes nothing of the host's.
    api.post(
        "/v1/networks",
        &bridge_net("late", json!({"bridge": "br-late", "cidr": "10.67.0.0/24"})),
    )
    .await
    .expect(201);
    let late = phase(&api, "late", "Ready").await;
    assert_eq!(late["status"]["bridge"], "br-late");
    let uid = late["metadata"]["uid"].as_str().unwrap();
    assert_eq!(link_state("br-late")["ifalias"], format!("corral:{uid}"));
    d.kill_9();
    ip(&["link", "del", "dev", "br-late"]);
    let foreign = foreign_bridge("br-late", "192.168.78.1/24");
    d.restart().unwrap();
    let api = common::api(&d);
    let failed = phase(&api, "late", "Failed").await;
    let message = failed["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("link \"br-late\" already exists on the host and was not made by Corral"),
        "{message}"
    );
    api.delete("/v1/networks/late").await.expect(200);
    // Let the controller pass over the deleted network a few times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!d.run_dir().join("networks/late").exists(), "{}", d.log());
    assert_eq!(link_state("br-late"), foreign);
    assert_eq!(link_state("br0"), before);
}

#[tokio::test]
async fn two_networks_with_long_similar_names_get_distinct_bridges() {
    let (_ns, d) = in_netns("names");
    let api = api(&d);
    let names = ["project-frontend-network-a", "project-frontend-network-b"];
    for (name, cidr) in names.iter().zip(["10.71.0.0/24", "10.72.0.0/24"]) {
        api.post("/v1/networks", &bridge_net(name, json!({"cidr": cidr})))
            .await
            .expect(201);
    }
    let mut links = Vec::new();
    for (name, gateway) in names.iter().zip(["10.71.0.1/24", "10.72.0.1/24"]) {
        let net = phase(&api, name, "Ready").await;
        let link = net["status"]["bridge"].as_str().unwrap().to_owned();
        assert_eq!(link.len(), 15, "{link}");
        let state = link_state(&link);
        let uid = net["metadata"]["uid"].as_str().unwrap();
        assert_eq!(state["ifalias"], format!("corral:{uid}"));
        assert_eq!(state["addrs"][0], gateway);
        links.push(link);
    }
    assert_ne!(links[0], links[1]);
    for name in names {
        api.delete(&format!("/v1/networks/{name}"))
            .await
            .expect(200);
    }
    eventually("both bridges removed", || async {
        links.iter().all(|l| !link_exists(l)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn overlapping_subnets_are_refused_naming_what_they_overlap() {
    let (_ns, d) = in_netns("cidr");
    let api = api(&d);
    // The host's own: an address and a route of an interface corrald did not make.
    foreign_bridge("uplink", "172.30.0.1/24");
    ip(&["route", "add", "10.123.0.0/16", "via", "172.30.0.2"]);
    api.post(
        "/v1/networks",
        &bridge_net("wide", json!({"cidr": "10.70.0.0/16"})),
    )
    .await
    .expect(201);
    phase(&api, "wide", "Ready").await;

    for (name, cidr, want) in [
        (
            "inside",
            "10.70.5.0/24",
            "spec.cidr: 10.70.5.0/24 overlaps network \"wide\" (10.70.0.0/16)",
        ),
        (
            "around",
            "10.0.0.0/8",
            "spec.cidr: 10.0.0.0/8 overlaps network \"wide\"",
        ),
        (
            "routed",
            "10.123.4.0/24",
            "the host's route to 10.123.0.0/16 via uplink",
        ),
        (
            "addressed",
            "172.30.0.0/25",
            "the host's address 172.30.0.1/24 on uplink",
        ),
        (
            "loopback",
            "127.0.0.0/8",
            "the host's address 127.0.0.1/8 on lo",
        ),
        ("huge", "10.0.0.0/7", "spec.cidr: /7 is wider than /8"),
    ] {
        let message = api
            .post("/v1/networks", &bridge_net(name, json!({"cidr": cidr})))
            .await
            .expect_error(400, "InvalidArgument");
        assert!(message.contains(want), "{cidr}: {message}");
        api.get(&format!("/v1/networks/{name}"))
            .await
            .expect_error(404, "NotFound");
    }
    // Next to it is fine.
    api.post(
        "/v1/networks",
        &bridge_net("beside", json!({"cidr": "10.69.0.0/16"})),
    )
    .await
    .expect(201);
    phase(&api, "beside", "Ready").await;
}

#[tokio::test]
async fn ip_forward_is_restored_after_the_last_bridge_network() {
    let (_ns, d) = in_netns("fwd");
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "0").unwrap();
    let api = api(&d);
    for (name, cidr) in [("one", "10.73.0.0/24"), ("two", "10.74.0.0/24")] {
        api.post("/v1/networks", &bridge_net(name, json!({"cidr": cidr})))
            .await
            .expect(201);
        phase(&api, name, "Ready").await;
    }
    assert_eq!(ip_forward(), "1");
    api.delete("/v1/networks/one").await.expect(200);
    eventually("network one torn down", || async {
        (!d.run_dir().join("networks/one").exists()).then_some(())
    })
    .await;
    assert_eq!(ip_forward(), "1", "network two still routes");
    api.delete("/v1/networks/two").await.expect(200);
    eventually("ip_forward back to 0", || async {
        (ip_forward() == "0").then_some(())
    })
    .await;
}

/// The dnsmasq whose pid file is `pid_file`, if it runs (the test's own check).
fn dnsmasq_of(pid_file: &std::path::Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let want = format!("--pid-file={}", pid_file.display());
    cmdline
        .split(|b| *b == 0)
        .any(|a| a == want.as_bytes())
        .then_some(pid)
}

#[tokio::test]
async fn a_stale_dnsmasq_pid_file_never_gets_an_unrelated_process_killed() {
    let (_ns, mut d) = in_netns("dns");
    let api = api(&d);
    api.post(
        "/v1/networks",
        &bridge_net("lan", json!({"cidr": "10.75.0.0/24"})),
    )
    .await
    .expect(201);
    phase(&api, "lan", "Ready").await;
    let pid_file = d.run_dir().join("networks/lan/dnsmasq.pid");
    let first = dnsmasq_of(&pid_file).expect("corrald's dnsmasq runs");

    // corrald goes away, so does its dnsmasq, and the pid it left now names a bystander.
    d.kill_9();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut bystander = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    std::fs::write(&pid_file, format!("{}\n", bystander.id())).unwrap();
    d.restart().unwrap();
    let api = common::api(&d);

    // corrald sees its dnsmasq is gone and starts another; the bystander is left alone.
    let second = eventually("a new dnsmasq", || async { dnsmasq_of(&pid_file) }).await;
    assert_ne!(second, bystander.id() as i32);
    phase(&api, "lan", "Ready").await;
    api.delete("/v1/networks/lan").await.expect(200);
    eventually("network lan torn down", || async {
        (!d.run_dir().join("networks/lan").exists()).then_some(())
    })
    .await;
    // Gone, or a zombie waiting for its reaper (whose cmdline is empty).
    let second_runs =
        std::fs::read(format!("/proc/{second}/cmdline")).is_ok_and(|c| c.starts_with(b"dnsmasq"));
    assert!(
        !second_runs,
        "corrald's own dnsmasq {second} was not stopped"
    );
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was killed:\n{}",
        d.log()
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[tokio::test]
async fn only_an_admin_creates_bridge_networks() {
    let ns = Netns::new("admin");
    ns.enter();
    let tls = TlsSetup::new();
    let ca = tls.ca().clone();
    let line = |token: &str, args: &[&str]| {
        let mut all = vec!["hash-token"];
        all.extend_from_slice(args);
        let (status, line, stderr) = common::run_corrald(&all, token.as_bytes());
        assert!(status.success(), "{stderr}");
        line
    };
    let (ops, boss) = (line("ops", &[]), line("boss", &["--scope", "admin"]));
    assert!(boss.trim_end().ends_with("scopes=vms,admin"), "{boss}");
    std::fs::write(tls.token_file(), format!("{ops}{boss}")).unwrap();
    let (d, port) = tls.start(CORRALD);
    eventually("the TLS listener", || async {
        tls_api(port, &ca, Some("ops"))
            .try_send("GET", "/v1/networks", None)
            .await
            .ok()
    })
    .await
    .expect(200);

    let ops = tls_api(port, &ca, Some("ops"));
    let message = ops
        .post(
            "/v1/networks",
            &bridge_net("lab", json!({"cidr": "10.76.0.0/24"})),
        )
        .await
        .expect_error(403, "PermissionDenied");
    assert!(
        message.contains("mode bridge (spec.mode) reconfigures the host and is for admins only"),
        "{message}"
    );
    ops.get("/v1/networks/lab")
        .await
        .expect_error(404, "NotFound");
    // A user network leaves the host as it is: anyone with `vms` may make one.
    ops.post(
        "/v1/networks",
        &json!({"kind": "Network", "metadata": {"name": "mine"}, "spec": {"mode": "user"}}),
    )
    .await
    .expect(201);
    // The same over gRPC.
    let grpc = Client::connect(Endpoint::Https {
        url: format!("https://localhost:{port}"),
        token: Some("ops".into()),
        ca_file: Some(tls.ca_file()),
    })
    .await
    .unwrap();
    let lab: Network = serde_json::from_value(json!({
        "metadata": {"name": "lab"}, "spec": {"mode": "bridge", "cidr": "10.76.0.0/24"},
    }))
    .unwrap();
    let err = grpc.create_network(&lab).await.unwrap_err().to_string();
    assert!(err.contains("is for admins only"), "{err}");
    let boss = tls_api(port, &ca, Some("boss"));
    boss.post(
        "/v1/networks",
        &bridge_net("lab", json!({"cidr": "10.76.0.0/24"})),
    )
    .await
    .expect(201);
    phase(&boss, "lab", "Ready").await;
    // The unix socket's peer is the host's owner: admin.
    api(&d)
        .post(
            "/v1/networks",
            &bridge_net("lab2", json!({"cidr": "10.77.0.0/24"})),
        )
        .await
        .expect(201);
}

/// Boots a guest-kit VM on user network `net` (guest port 5555 forwarded), waits for its DHCP
/// lease, has it serve one line on port 5555, and has it connect to `port` on its gateway —
/// where QEMU's user stack may lead to the host's 127.0.0.1. Returns what the guest printed:
/// `GOT[<what it read>]-42`.
async fn probe_gateway(c: &Client, d: &Corrald, vm: &str, net: &str, port: u16) -> String {
    let mut att = NetworkAttachment::new(net.parse().unwrap());
    att.forwards.push(PortForward::tcp(5555));
    c.create_vm(&kit_vm(vm, |b| b.network(att))).await.unwrap();
    wait_phase(c, d, vm, Phase::Running).await.unwrap();
    let lease = wait_console(c, d, vm, "CORRAL_NET eth0", 0).await.unwrap();
    assert!(lease.contains("ip=10."), "{lease}");
    let mark = c.console_log(vm, 0).await.unwrap().len();
    let console = c.attach_console(vm, true, false).await.unwrap();
    // The guest's shell does not echo, and the answers are computed in the guest.
    let serve = "nc -l -p 5555 -e echo GUEST-SAYS-$((40+3)) &\n";
    console.input.send(serve.into()).await.unwrap();
    let probe = format!("echo \"GOT[$(sleep 5 | nc 10.0.2.2 {port})]-$((6*7))\"\n");
    console.input.send(probe.into_bytes()).await.unwrap();
    wait_console(c, d, vm, "]-42", mark).await.unwrap()
}

/// Reads the line the guest serves on its port 5555 through the host port forwarded to it.
async fn forwarded_line(c: &Client, vm: &str) -> String {
    let status = c.get_vm(vm).await.unwrap().status;
    let port = status.networks[0].forwards[0].host_port;
    eventually("the guest's line through the forward", || async {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let mut line = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut line)
            .await
            .ok()?;
        line.contains("GUEST-SAYS").then_some(line)
    })
    .await
    .trim()
    .to_owned()
}

#[tokio::test]
async fn only_a_network_with_host_access_lets_guests_reach_the_hosts_loopback() {
    // A service on the host's loopback only, like a corrald TCP listener or another VM's
    // forwarded SSH port.
    let service = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = service.local_addr().unwrap().port();
    let secret = format!("LOOPBACK-SECRET-{}", std::process::id());
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (line, count) = (secret.clone(), served.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = service.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = tokio::io::AsyncWriteExt::write_all(&mut conn, format!("{line}\n").as_bytes())
                .await;
        }
    });

    let d = Corrald::start(CORRALD).expect("corrald starts");
    let c = Client::connect(Endpoint::Unix(d.socket())).await.unwrap();
    let user = |name: &str, spec: Value| -> Network {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    };
    c.create_network(&user("sealed", json!({}))).await.unwrap();
    c.create_network(&user("open", json!({"host_access": true})))
        .await
        .unwrap();
    assert!(!c.get_network("sealed").await.unwrap().spec.host_access);

    let sealed = probe_gateway(&c, &d, "sealed-vm", "sealed", port).await;
    assert!(sealed.ends_with("GOT[]-42"), "{sealed}");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The sealed guest is on the network all the same: what is forwarded to it arrives.
    let through = forwarded_line(&c, "sealed-vm").await;
    assert!(through.starts_with("GUEST-SAYS-43"), "{through}");

    let open = probe_gateway(&c, &d, "open-vm", "open", port).await;
    assert!(open.ends_with(&format!("GOT[{secret}]-42")), "{open}");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
}
