//! Bridge networks end to end, inside a network namespace of the test's own: corrald makes the
//! bridge, its dnsmasq and an nftables NAT table; two real guests get leases from that dnsmasq
//! and ping each other (evidence on their consoles); deleting everything leaves no bridge, TAP,
//! dnsmasq or nftables table behind.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use corral_contract::Arch;
use corral_testkit::{Cli, Corrald, GuestKit, Netns, kit_vm_args, workspace_binary};

fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", "command -v \"$1\"", "sh", tool])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is missing: run scripts/setup.sh (apt-get install {package})"
    );
}

/// Types `line` on `name`'s console until `answer` comes back.
fn type_until(cli: &Cli, name: &str, line: &str, answer: &str) {
    let mut console = cli.attach(name);
    console.type_until(
        line,
        answer,
        Duration::from_secs(8),
        Duration::from_secs(90),
    );
    let _ = console.close();
}

fn lease_ip(log: &str) -> String {
    log.lines()
        .find_map(|l| l.strip_prefix("CORRAL_NET eth0 ip="))
        .unwrap_or_else(|| panic!("no lease:\n{log}"))
        .trim()
        .to_owned()
}

fn leftovers(run_dir: &Path) -> Vec<String> {
    let mut left = Vec::new();
    // The thread's own namespace (sysfs shows the one it was mounted in).
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    for name in dev
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, _)| n.trim())
    {
        if name.starts_with("crl") || name.starts_with("ct") {
            left.push(format!("link {name}"));
        }
    }
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
    if tables.contains("corral_") {
        left.push(format!("nftables: {tables}"));
    }
    if run_dir.join("networks/lan").exists() {
        left.push("state dir".into());
    }
    left
}

#[test]
fn two_vms_on_a_bridge_get_leases_from_corrals_dnsmasq_and_ping_each_other() {
    need("dnsmasq", "dnsmasq-base");
    need("nft", "nftables");
    let ns = Netns::new("t");
    ns.enter();
    let d = Corrald::start(workspace_binary("corrald")).expect("corrald");
    let cli = Cli::new(env!("CARGO_BIN_EXE_corral"), &d);
    cli.ok(&[
        "network",
        "create",
        "lan",
        "--mode",
        "bridge",
        "--cidr",
        "10.77.0.0/24",
        "--mtu",
        "1400",
    ]);
    let lan = cli.wait_phase("network", "lan", "Ready");
    let bridge = lan["status"]["bridge"].as_str().expect("status.bridge");
    let link = Command::new("ip")
        .args(["-o", "link", "show", "dev", bridge])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout).into_owned();
    assert!(link.contains("mtu 1400"), "{link}");
    let uid = lan["metadata"]["uid"].as_str().unwrap();
    assert!(link.contains(&format!("alias corral:{uid}")), "{link}");
    let dnsmasq_pid: i32 = std::fs::read_to_string(d.run_dir().join("networks/lan/dnsmasq.pid"))
        .expect("dnsmasq pid file")
        .trim()
        .parse()
        .unwrap();

    let k = GuestKit::get(Arch::X86_64).expect("guest kit");
    for name in ["a", "b"] {
        let mut create = kit_vm_args(&k, name, "console=ttyS0 quiet");
        create.extend(["--network", "lan", "--wait"].map(String::from));
        cli.ok(&create);
    }
    let dnsmasq_log = || {
        std::fs::read_to_string(d.run_dir().join("networks/lan/dnsmasq.log")).unwrap_or_default()
    };
    let log_a = cli.wait_console("a", "CORRAL_NET eth0");
    let log_b = cli.wait_console("b", "CORRAL_NET eth0");
    assert!(
        log_a.contains("CORRAL_NET eth0 ip=") && log_b.contains("CORRAL_NET eth0 ip="),
        "a:\n{log_a}\nb:\n{log_b}\ndnsmasq:\n{}\ncorrald:\n{}",
        dnsmasq_log(),
        d.log()
    );
    let (ip_a, ip_b) = (lease_ip(&log_a), lease_ip(&log_b));
    assert!(
        ip_a.starts_with("10.77.0.") && ip_b.starts_with("10.77.0."),
        "{ip_a} {ip_b}"
    );
    assert_ne!(ip_a, ip_b);
    // The leases are dnsmasq's: its lease file has both guests' MACs.
    let leases = std::fs::read_to_string(d.run_dir().join("networks/lan/dnsmasq.leases")).unwrap();
    for name in ["a", "b"] {
        let vm = cli.json(&["vm", "get", name, "-o", "json"]);
        let mac = vm["spec"]["networks"][0]["mac"].as_str().unwrap();
        assert!(leases.contains(mac), "{mac} not in {leases}");
    }
    // Each guest pings the other; the guest computes the answer, so the echo of the typed
    // line cannot match it.
    type_until(
        &cli,
        "a",
        &format!("ping -c 2 -W 2 {ip_b} >/dev/null && echo PING-$((40+2))-OK"),
        "PING-42-OK",
    );
    type_until(
        &cli,
        "b",
        &format!("ping -c 2 -W 2 {ip_a} >/dev/null && echo PING-$((40+3))-OK"),
        "PING-43-OK",
    );

    for name in ["a", "b"] {
        cli.ok(&["vm", "delete", name, "--wait"]);
    }
    cli.ok(&["network", "delete", "lan"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = leftovers(&d.run_dir());
        let dnsmasq_alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(dnsmasq_pid), None)
            .is_ok()
            && std::fs::read(format!("/proc/{dnsmasq_pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"dnsmasq"));
        if left.is_empty() && !dnsmasq_alive {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {left:?}, dnsmasq alive: {dnsmasq_alive}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
