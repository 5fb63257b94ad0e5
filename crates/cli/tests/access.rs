//! Guest access end to end: a real corrald, real QEMU guests (TCG), the system's ssh client.
//! Evidence comes from inside the guest: its kernel version over ssh, a file served by a
//! guest web server through a forwarded port, lines typed on its console and the answer.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use corral_contract::Arch;
use corral_testkit::{Cli, Corrald, GuestKit, kit_vm_args, workspace_binary};

/// `corral` on `d`, keeping its managed ssh keys in `ssh_dir`.
fn corral<'a>(d: &'a Corrald, ssh_dir: &std::path::Path) -> Cli<'a> {
    Cli::new(env!("CARGO_BIN_EXE_corral"), d).env("CORRAL_SSH_DIR", ssh_dir)
}

/// A port range nothing listens on now, 40 wide, different per test process.
fn port_range() -> String {
    let base = 30000 + (std::process::id() % 500) as u16 * 40;
    format!("{base}-{}", base + 39)
}

fn host_port(vm: &serde_json::Value, guest: u64) -> u16 {
    vm["status"]["networks"][0]["forwards"]
        .as_array()
        .expect("status.networks[0].forwards")
        .iter()
        .find(|f| f["guest_port"] == guest)
        .and_then(|f| f["host_port"].as_u64())
        .unwrap_or_else(|| panic!("no forward of guest port {guest} in {vm}")) as u16
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn a_new_vm_is_reachable_by_ssh_forwards_and_its_console() {
    let range = port_range();
    let d = Corrald::start_with(workspace_binary("corrald"), &["--port-range", &range])
        .expect("corrald");
    let keys = tempfile::tempdir().unwrap();
    let cli = corral(&d, &keys.path().join("managed"));
    // A second key, for a user of its own.
    let extra = keys.path().join("alice");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&extra)
        .status()
        .expect("ssh-keygen (apt-get install openssh-client)");
    assert!(made.success());
    let k = GuestKit::get(Arch::X86_64).expect("guest kit");
    let mut create = kit_vm_args(&k, "web", "console=ttyS0 quiet");
    let key = extra.with_extension("pub");
    create.extend(
        [
            "--forward",
            "8080",
            "--ssh-key",
            key.to_str().unwrap(),
            "--user",
            "alice",
            "--wait",
            "--wait-ssh",
        ]
        .map(String::from),
    );
    let out = cli.ok(&create);
    assert!(out.contains("vm/web ssh ready"), "{out}");

    // The seed arrived: the guest applied hostname, both keys and the user.
    let log = cli.wait_console("web", "CORRAL_CLOUDINIT");
    assert!(
        log.contains("CORRAL_CLOUDINIT hostname=web keys=4 users=alice"),
        "{log}"
    );
    let booted_kernel = log
        .lines()
        .find_map(|l| l.split("kernel=").nth(1))
        .expect("CORRAL_BOOT_OK kernel=")
        .trim()
        .to_owned();

    // Status: a generated MAC, the host ports picked from the range, SshReady.
    let vm = cli.json(&["vm", "get", "web", "-o", "json"]);
    let mac = vm["spec"]["networks"][0]["mac"].as_str().unwrap();
    assert!(mac.starts_with("02:c0:"), "{mac}");
    assert_eq!(vm["status"]["networks"][0]["mac"], mac);
    let ssh_port = host_port(&vm, 22);
    let (lo, hi) = range.split_once('-').unwrap();
    assert!((lo.parse().unwrap()..=hi.parse().unwrap()).contains(&ssh_port));
    let ready = vm["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "SshReady")
        .expect("SshReady");
    assert_eq!(ready["status"], true, "{ready}");

    // ssh with the managed key, as root: the guest's own kernel answers.
    let uname = cli.ok(&["vm", "ssh", "web", "--", "uname", "-r"]);
    assert_eq!(uname.trim(), booted_kernel);
    // And as the user cloud-init made, with the key given on the command line.
    let who = cli.ok(&[
        "vm",
        "ssh",
        "web",
        "-l",
        "alice",
        "-i",
        extra.to_str().unwrap(),
        "--",
        "id",
        "-un",
    ]);
    assert_eq!(who.trim(), "alice");

    // A guest service behind a forward: busybox httpd serving a file the guest wrote.
    cli.ok(&[
        "vm",
        "ssh",
        "web",
        "--",
        "mkdir -p /srv && echo served-by-$(hostname) > /srv/index.html && httpd -p 8080 -h /srv",
    ]);
    let web_port = host_port(&vm, 8080);
    let body = (0..40)
        .find_map(|_| {
            let body = http_get(web_port, "/index.html").filter(|b| b.contains("served-by"));
            if body.is_none() {
                std::thread::sleep(Duration::from_millis(250));
            }
            body
        })
        .expect("the guest's web server answers through the forward");
    assert!(body.contains("served-by-web"), "{body}");

    // The same service through a tunnel (corrald connects to the forward, as it does for a
    // VM on another node of a cluster): a request on stdin, the guest's answer on stdout.
    let mut tunnel = cli
        .command()
        .args(["vm", "tunnel", "web", "8080"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    tunnel
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .unwrap();
    let answer = tunnel.wait_with_output().unwrap();
    let answer = String::from_utf8_lossy(&answer.stdout);
    assert!(
        answer.contains("served-by-web"),
        "through the tunnel: {answer}"
    );
    // And ssh riding it, as `vm ssh` does for a VM on another host.
    let proxy = format!(
        "ProxyCommand={} --socket {} vm tunnel web 22",
        env!("CARGO_BIN_EXE_corral"),
        d.socket().display()
    );
    let out = Command::new("ssh")
        .args([
            "-i",
            keys.path().join("managed/id_ed25519").to_str().unwrap(),
        ])
        .args(["-o", &proxy])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes"])
        .args(["root@web", "uname", "-r"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        booted_kernel,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A port the VM does not forward is refused, naming what to do.
    cli.fails(
        &["vm", "tunnel", "web", "25"],
        1,
        "forwarding no TCP port 25",
    );

    // The console, attached in pipe mode: a command typed, its output read.
    let mut attached = cli.attach("web");
    // The guest computes the answer, so the typed line itself cannot match it.
    let token = format!("{}", std::process::id());
    attached.type_until(
        &format!("echo hi-$((6*7))-{token}"),
        &format!("hi-42-{token}"),
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    // One writer at a time; readers are welcome.
    cli.fails(&["vm", "console", "web"], 1, "already has a writer");
    let mut reader = cli
        .command()
        .args(["vm", "console", "web", "--read-only"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(reader.stdin.take());
    let read = reader.wait_with_output().unwrap();
    assert!(read.status.success());
    assert!(
        String::from_utf8_lossy(&read.stdout).contains("CORRAL_BOOT_OK"),
        "the scrollback comes first"
    );
    let status = attached.close();
    assert!(status.success());

    // Deleting the VM frees its ports and removes its seed.
    cli.ok(&["vm", "delete", "web", "--wait"]);
    let seeds: Vec<_> = std::fs::read_dir(d.data_dir().join("seeds"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(seeds.is_empty(), "{seeds:?}");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", ssh_port)).is_ok(),
        "port {ssh_port} still held"
    );
}

#[test]
fn port_conflicts_are_refused_naming_the_holder() {
    let range = port_range();
    let mut d = Corrald::start_with(workspace_binary("corrald"), &["--port-range", &range])
        .expect("corrald");
    let keys = tempfile::tempdir().unwrap();
    let cli = corral(&d, keys.path());
    let k = GuestKit::get(Arch::X86_64).expect("guest kit");
    let kernel = k.kernel();
    let base = [
        "vm",
        "create",
        "--kernel",
        kernel.to_str().unwrap(),
        "--no-start",
    ];
    let create = |name: &str, forward: &str| {
        let mut args = base.to_vec();
        args.insert(2, name);
        args.extend(["--forward", forward]);
        cli.run(&args)
    };
    let port: u16 = range.split_once('-').unwrap().0.parse::<u16>().unwrap() + 5;
    assert!(create("first", &format!("80:{port}")).status.success());
    cli.fails(
        &[
            base[0], base[1], "second", base[2], base[3], base[4], "--forward",
            &format!("8080:{port}"),
        ],
        1,
        &format!("spec.networks[0].forwards[0].host_port: {port}/tcp is already forwarded to VM \"first\""),
    );
    // A port some other program holds.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    cli.fails(
        &[
            base[0],
            base[1],
            "third",
            base[2],
            base[3],
            base[4],
            "--forward",
            &format!("22:{busy_port}"),
        ],
        1,
        "is in use on this host",
    );
    assert_eq!(cli.vm_names(), ["first"], "nothing half-made");
    // The default network never goes (`--ssh` joins it).
    cli.fails(
        &["network", "delete", "default"],
        1,
        "it cannot be deleted: `corral vm create --ssh` joins it",
    );
    let list = cli.ok(&["network", "list"]);
    assert!(
        list.contains("default  user  10.0.2.0/24  10.0.2.2  10.0.2.3  Ready"),
        "{list}"
    );

    // The registry survives a daemon restart: the held port is still refused.
    d.restart().expect("corrald restarts");
    let cli = corral(&d, keys.path());
    let mut args = base.to_vec();
    args.insert(2, "fifth");
    let forward = format!("8080:{port}");
    args.extend(["--forward", forward.as_str()]);
    cli.fails(&args, 1, "is already forwarded to VM \"first\"");
    drop(busy);
}

#[test]
fn a_manifest_declares_a_network_and_the_vms_on_it() {
    let range = port_range();
    let d = Corrald::start_with(workspace_binary("corrald"), &["--port-range", &range])
        .expect("corrald");
    let keys = tempfile::tempdir().unwrap();
    let cli = corral(&d, keys.path());
    let k = GuestKit::get(Arch::X86_64).expect("guest kit");
    let manifest = keys.path().join("lab.yaml");
    std::fs::write(
        &manifest,
        format!(
            "kind: Vm\nmetadata: {{name: app}}\nspec:\n  power: stopped\n  boot: {{kernel: {{kernel: {}}}}}\n  \
             networks: [{{network: lab, forwards: [{{guest_port: 80}}]}}]\n---\n\
             kind: Network\nmetadata: {{name: lab}}\nspec: {{cidr: 10.5.0.0/24}}\n",
            k.kernel().display()
        ),
    )
    .unwrap();
    let path = manifest.to_str().unwrap();
    let first = cli.ok(&["apply", "-f", path]);
    assert_eq!(first, "network/lab created\nvm/app created\n");
    // The picked port and MAC are the VM's now; the same manifest changes nothing.
    let again = cli.ok(&["apply", "-f", path]);
    assert_eq!(again, "network/lab unchanged\nvm/app unchanged\n");
    let vm = cli.json(&["vm", "get", "app", "-o", "json"]);
    assert!(
        vm["spec"]["networks"][0]["forwards"][0]["host_port"].is_u64(),
        "{vm}"
    );
    let net = cli.json(&["network", "get", "lab", "-o", "json"]);
    assert_eq!(net["status"]["phase"], "Ready");
    assert_eq!(net["spec"]["cidr"], "10.5.0.0/24");
    // VMs go first; the network goes in the same run when its VM is already gone (a stopped
    // VM is removed at once), else the error names the VM and a later delete takes it.
    let out = cli.run(&["delete", "-f", path]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.starts_with("vm/app deleting\n"), "{stdout}");
    cli.wait_gone("vm", "app");
    if cli.run(&["network", "get", "lab"]).status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(stderr.contains("is used by VM \"app\""), "{stderr}");
        cli.ok(&["network", "delete", "lab"]);
    }
    assert_eq!(cli.run(&["network", "get", "lab"]).status.code(), Some(3));
}
