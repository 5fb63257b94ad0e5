//! The hostile-tenant suite: a real corrald on TLS, an admin on its unix socket, and two
//! tenant projects with an identity of each role in each — in `red` `mallory` (operator), `vic`
//! (viewer) and `peek` (operator with the memory grant), in `blue` `bob` (operator) and `bea`
//! (viewer) — who try every way found to reach what only root on the host, or another
//! project, may reach: host files through every path-taking field, another VM's RAM file,
//! corrald's own state, qcow2 images whose headers name host files, URL imports to loopback
//! and metadata addresses (directly, by name, in disguise, through a redirect), a bridge on
//! the host (also an admin's, over a link corrald did not make), escalation through the
//! identity and audit APIs, guest RAM without the grant, every read, write and reference
//! across projects, a revoked token on a live console and watch, unbounded memory scans and a
//! connection flood. Each attack must be refused with a clear message, each identity's
//! refusals are in the audit log, and at the end no byte of the secret the test planted is in
//! any image, volume or console log. The summary prints the count.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use corral_client::{Client, ClientError, Endpoint};
use corral_contract::{
    Boot, ByteSize, Credential, DiskFormat, Identity, IdentitySpec, Image, ImageFormat,
    ImageSource, ImageSpec, Network, NetworkMode, NetworkSpec, Phase, Power, Project, ProjectSpec,
    Role, Vm, VmSpec, Volume, VolumeKind, VolumeSpec,
};
use corral_testkit::http::{Api, TlsSetup};
use corral_testkit::{GuestKit, kit_vm, wait_phase};

const CORRALD: &str = env!("CARGO_BIN_EXE_corrald");

/// The attacks made so far, by family, and by the identity that made them.
#[derive(Default)]
struct Attacks {
    by_family: BTreeMap<&'static str, usize>,
    /// Refusals the audit log must hold, per identity (attacks by no identity are not here).
    by_identity: BTreeMap<&'static str, usize>,
}

impl Attacks {
    /// Records an attack by identity `who` (empty: no identity) that must have been refused
    /// with a message containing `says`.
    #[track_caller]
    fn refused<T: std::fmt::Debug>(
        &mut self,
        who: &'static str,
        family: &'static str,
        what: &str,
        result: Result<T, ClientError>,
        says: &str,
    ) {
        match result {
            Err(e) => {
                let message = e.to_string();
                println!("refused [{family}] {who}: {what}: {message}");
                assert!(
                    message.contains(says),
                    "{family}: {what}: refused, but the message {message:?} does not say {says:?}"
                );
            }
            Ok(got) => panic!("{family}: {what}: NOT refused: {got:?}"),
        }
        *self.by_family.entry(family).or_default() += 1;
        if !who.is_empty() {
            *self.by_identity.entry(who).or_default() += 1;
        }
    }

    /// Records an attack the caller checked itself.
    fn counted(&mut self, family: &'static str) {
        *self.by_family.entry(family).or_default() += 1;
    }

    fn total(&self) -> usize {
        self.by_family.values().sum()
    }
}

async fn tls_client(tls: &TlsSetup, port: u16, token: &str) -> Client {
    Client::connect(Endpoint::Https {
        url: format!("https://localhost:{port}"),
        token: Some(token.into()),
        ca_file: Some(tls.ca_file()),
    })
    .await
    .expect("a TLS client")
}

/// An identity of `role` (with the memory grant if `memory`) working in `project`, and its token.
async fn identity(admin: &Client, name: &str, role: Role, memory: bool, project: &str) -> String {
    let spec = IdentitySpec {
        role,
        memory,
        projects: vec![project.parse().unwrap()],
        credential: Credential::Token { blake3: None },
    };
    let (_, token) = admin
        .create_identity(&Identity::new(name.parse().unwrap(), spec))
        .await
        .expect("the admin makes identities");
    token.expect("a token, shown once")
}

fn path_image(name: &str, path: &Path, format: ImageFormat) -> Image {
    Image::new(
        name.parse().unwrap(),
        ImageSpec {
            source: ImageSource::Path(path.to_owned()),
            format: Some(format),
            shared: false,
            checksum: None,
        },
    )
}

fn url_image(name: &str, url: &str) -> Image {
    Image::new(
        name.parse().unwrap(),
        ImageSpec {
            source: ImageSource::Url(url.to_owned()),
            format: Some(ImageFormat::Raw),
            shared: false,
            checksum: None,
        },
    )
}

fn boot_vm(name: &str, boot: Boot) -> Vm {
    let mut vm = kit_vm(name, |b| b);
    vm.spec.boot = boot;
    vm
}

/// A blank 64 MiB volume.
fn blank_volume(name: &str) -> Volume {
    Volume::new(
        name.parse().unwrap(),
        VolumeSpec {
            kind: VolumeKind::Disk,
            size: Some(ByteSize::new(64 << 20)),
            format: None,
            image: None,
            pool: None,
        },
    )
}

/// A stopped VM that boots from volume `disk`.
fn stopped_vm(name: &str, disk: &str) -> Vm {
    let spec = VmSpec::builder(Boot::Volume {
        volume: disk.parse().unwrap(),
    })
    .power(Power::Stopped)
    .build()
    .unwrap();
    Vm::new(name.parse().unwrap(), spec)
}

/// A link on the host that corrald did not make (a bridge, like `docker0`; this kernel has no
/// `dummy` driver), deleted when dropped: what a bridge network must not take over.
struct ForeignLink(&'static str);

impl ForeignLink {
    fn add(name: &'static str) -> Self {
        let _ = Command::new("ip")
            .args(["link", "del", "dev", name])
            .status();
        let ok = Command::new("ip")
            .args(["link", "add", "name", name, "type", "bridge"])
            .status()
            .unwrap();
        assert!(ok.success(), "ip link add {name} type bridge");
        ForeignLink(name)
    }

    /// `ip -j addr show` of the link: flags, master and addresses.
    fn state(&self) -> String {
        let out = Command::new("ip")
            .args(["-j", "addr", "show", "dev", self.0])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for ForeignLink {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", "dev", self.0])
            .status();
    }
}

/// A one-thread HTTP server on `addr` answering every request with `answer(path)`.
fn http_server(addr: &str, answer: impl Fn(&str) -> Vec<u8> + Send + 'static) -> u16 {
    let listener = TcpListener::bind(addr).expect("binding the test's HTTP server");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                    break;
                }
            }
            let mut stream = stream;
            let _ = stream.write_all(&answer(&path));
        }
    });
    port
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

/// Every regular file below `dir`.
fn files_below(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => files_below(&path, out),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_hostile_tenant_is_refused_everything_only_root_may_do() {
    let kit = GuestKit::get(corral_contract::Arch::X86_64).expect("guest kit");
    let mut attacks = Attacks::default();

    // The secret: a file only root should ever see through Corral.
    let vault = tempfile::Builder::new()
        .prefix("crl-vault")
        .tempdir_in("/tmp")
        .unwrap();
    let marker = format!(
        "CORRAL-SECRET-{}",
        &blake3::hash(format!("{:?}", std::time::SystemTime::now()).as_bytes()).to_hex()[..16]
    );
    let secret = vault.path().join("secret");
    std::fs::write(&secret, marker.repeat(4096)).unwrap();

    // The directory tenants may name files below, laid with traps.
    let allowed = tempfile::Builder::new()
        .prefix("crl-allow")
        .tempdir_in("/tmp")
        .unwrap();
    let a = allowed.path();
    let kernel = a.join("vmlinuz");
    let initrd = a.join("initrd.img");
    std::fs::copy(kit.kernel(), &kernel).unwrap();
    std::fs::copy(kit.initrd(), &initrd).unwrap();
    std::os::unix::fs::symlink(&secret, a.join("link")).unwrap();
    std::fs::hard_link(&secret, a.join("hard")).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(a.join("fifo"))
            .status()
            .unwrap()
            .success()
    );
    let backing = a.join("backing.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        secret.to_str().unwrap(),
        backing.to_str().unwrap(),
    ]);
    let data_file = a.join("datafile.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={},data_file_raw=on", secret.display()),
        data_file.to_str().unwrap(),
        "64K",
    ]);

    // HTTP servers the attacker aims imports at: one on loopback serving the secret, one on an
    // allowed address that redirects there.
    let secret_bytes = std::fs::read(&secret).unwrap();
    let loopback = http_server("127.0.0.1:0", move |_| {
        let mut reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            secret_bytes.len()
        )
        .into_bytes();
        reply.extend_from_slice(&secret_bytes);
        reply
    });
    let redirect = http_server("127.0.0.2:0", move |_| {
        format!(
            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{loopback}/secret\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .into_bytes()
    });

    let tls = TlsSetup::new();
    std::fs::write(tls.token_file(), "# identities live in the store\n").unwrap();
    let (d, port) = tls.start_with(
        CORRALD,
        &[
            "--host-path-allow",
            a.to_str().unwrap(),
            "--import-allow-net",
            "127.0.0.2/32",
            "--max-connections",
            "16",
        ],
    );
    let admin = Client::connect(Endpoint::Unix(d.socket())).await.unwrap();
    // Two tenant projects: mallory (operator), vic (viewer) and peek (operator with the memory
    // grant) work in red; bob (operator) and bea (viewer) in blue.
    for project in ["red", "blue"] {
        admin
            .create_project(&Project::new(
                project.parse().unwrap(),
                ProjectSpec::default(),
            ))
            .await
            .unwrap();
    }
    let mallory_token = identity(&admin, "mallory", Role::Operator, false, "red").await;
    let vic_token = identity(&admin, "vic", Role::Viewer, false, "red").await;
    let peek_token = identity(&admin, "peek", Role::Operator, true, "red").await;
    let bob_token = identity(&admin, "bob", Role::Operator, false, "blue").await;
    let bea_token = identity(&admin, "bea", Role::Viewer, false, "blue").await;
    let mallory = tls_client(&tls, port, &mallory_token).await;
    let vic = tls_client(&tls, port, &vic_token).await;
    let peek = tls_client(&tls, port, &peek_token).await;
    let bob = tls_client(&tls, port, &bob_token).await;
    let bea = tls_client(&tls, port, &bea_token).await;
    let admin_all = admin.clone().in_project(None, true).unwrap();

    // The victim, an admin's VM in red: its RAM lives in /dev/shm, its console is a stream to
    // attack. Blue holds a stopped VM, a volume, an image and a network of bob's.
    let admin_in_red = admin.clone().in_project(Some("red"), false).unwrap();
    let mut victim = kit_vm("victim", |b| b);
    victim.spec.introspection = true;
    admin_in_red.create_vm(&victim).await.unwrap();
    wait_phase(&admin_in_red, &d, "victim", Phase::Running)
        .await
        .unwrap();
    corral_testkit::wait_console(&admin_in_red, &d, "victim", "CORRAL_BOOT_OK", 0)
        .await
        .unwrap();
    let victim = admin_in_red.get_vm("victim").await.unwrap();
    let ram = corral_testkit::guest_ram_file(&victim);
    assert!(ram.exists());
    bob.create_volume(&blank_volume("blue-disk")).await.unwrap();
    bob.create_vm(&stopped_vm("blue-vm", "blue-disk"))
        .await
        .unwrap();
    bob.create_network(&Network::new(
        "blue-net".parse().unwrap(),
        NetworkSpec::default(),
    ))
    .await
    .unwrap();
    bob.create_image(&path_image("blue-kernel", &kernel, ImageFormat::Raw))
        .await
        .unwrap();
    admin
        .create_image(&path_image("private", &kernel, ImageFormat::Raw))
        .await
        .unwrap();

    // 1. Host files through every path-taking field.
    let data = d.data_dir();
    let host_files: Vec<PathBuf> = vec![
        "/etc/shadow".into(),
        secret.clone(),
        a.join("link"),
        a.join("hard"),
        a.join("sub/../../..")
            .join(secret.strip_prefix("/").unwrap()),
        "/proc/self/environ".into(),
        "/proc/kcore".into(),
        "/dev/zero".into(),
        a.join("fifo"),
        ram.clone(),
        data.join("state.db"),
        data.join("keys/node.key"),
        tls.token_file(),
    ];
    std::fs::create_dir(a.join("sub")).unwrap();
    for (i, path) in host_files.iter().enumerate() {
        let shown = path.display().to_string();
        attacks.refused(
            "mallory",
            "host file",
            &format!("image from {shown}"),
            mallory
                .create_image(&path_image(&format!("steal-{i}"), path, ImageFormat::Raw))
                .await,
            "spec.source.path",
        );
        let fields = [
            (
                "spec.boot.kernel.kernel",
                Boot::Kernel {
                    kernel: path.clone(),
                    initrd: Some(initrd.clone()),
                    cmdline: None,
                },
            ),
            (
                "spec.boot.kernel.initrd",
                Boot::Kernel {
                    kernel: kernel.clone(),
                    initrd: Some(path.clone()),
                    cmdline: None,
                },
            ),
            (
                "spec.boot.disk.path",
                Boot::Disk {
                    path: path.clone(),
                    format: Some(DiskFormat::Raw),
                },
            ),
        ];
        for (j, (field, boot)) in fields.into_iter().enumerate() {
            attacks.refused(
                "mallory",
                "host file",
                &format!("{field} = {shown}"),
                mallory
                    .create_vm(&boot_vm(&format!("steal-{i}-{j}"), boot))
                    .await,
                field,
            );
        }
    }

    // 2. Images whose content names host files.
    attacks.refused(
        "mallory",
        "image content",
        "qcow2 backed by the secret",
        mallory
            .create_image(&path_image("chained", &backing, ImageFormat::Qcow2))
            .await,
        "backing",
    );
    attacks.refused(
        "mallory",
        "image content",
        "qcow2 with the secret as data file",
        mallory
            .create_image(&path_image("datafile", &data_file, ImageFormat::Qcow2))
            .await,
        "external file",
    );

    // 3. URL imports to where only the host may go.
    for (i, url) in [
        format!("http://127.0.0.1:{loopback}/secret"),
        format!("http://localhost:{loopback}/secret"),
        format!("http://[::ffff:127.0.0.1]:{loopback}/secret"),
        format!("http://2130706433:{loopback}/secret"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://127.0.0.2:{redirect}/go"),
    ]
    .iter()
    .enumerate()
    {
        attacks.refused(
            "mallory",
            "SSRF",
            url,
            mallory
                .create_image(&url_image(&format!("fetch-{i}"), url))
                .await,
            "corrald does not fetch from it",
        );
    }

    // 4. The host's network: a bridge is an admin's.
    let bridge = Network::new(
        "hijack".parse().unwrap(),
        NetworkSpec {
            mode: NetworkMode::Bridge,
            ..NetworkSpec::default()
        },
    );
    attacks.refused(
        "mallory",
        "host network",
        "bridge network",
        mallory.create_network(&bridge).await,
        "spec.mode",
    );
    // Not even an admin's bridge network takes over a link corrald did not make.
    let foreign = ForeignLink::add("crl-hostile0");
    let before = foreign.state();
    let hijack = Network::new(
        "hijack".parse().unwrap(),
        NetworkSpec {
            mode: NetworkMode::Bridge,
            bridge: Some(foreign.0.into()),
            ..NetworkSpec::default()
        },
    );
    attacks.refused(
        "mallory",
        "host network",
        "bridge network on an existing host bridge",
        mallory.create_network(&hijack).await,
        "spec.mode",
    );
    attacks.refused(
        "",
        "host network",
        "an admin's bridge network on an existing host bridge",
        admin.create_network(&hijack).await,
        "already exists",
    );
    assert_eq!(foreign.state(), before, "the host bridge is untouched");
    drop(foreign);

    // 5. Escalation and reading what is not theirs.
    let escalate = IdentitySpec {
        role: Role::Admin,
        memory: true,
        projects: vec![],
        credential: Credential::Token { blake3: None },
    };
    attacks.refused(
        "mallory",
        "escalation",
        "operator makes an admin identity",
        mallory
            .create_identity(&Identity::new("root2".parse().unwrap(), escalate))
            .await,
        "needs role admin",
    );
    attacks.refused(
        "mallory",
        "escalation",
        "operator reads the audit log",
        mallory.audit(&Default::default()).await,
        "needs role admin",
    );
    attacks.refused(
        "mallory",
        "escalation",
        "operator revokes the viewer",
        mallory.revoke_identity("vic").await,
        "needs role admin",
    );
    attacks.refused(
        "vic",
        "escalation",
        "viewer creates a VM",
        vic.create_vm(&kit_vm("vics", |b| b)).await,
        "may not write",
    );
    attacks.refused(
        "vic",
        "escalation",
        "viewer deletes the admin's VM",
        vic.delete_vm("victim").await,
        "may not write",
    );
    attacks.refused(
        "mallory",
        "guest RAM",
        "operator without the grant reads RAM",
        mallory.read_memory("victim", 0, 4096).await,
        "memory",
    );
    attacks.refused(
        "mallory",
        "guest RAM",
        "operator without the grant scans RAM",
        mallory.find_in_memory("victim", b"CORRAL", 5).await,
        "memory",
    );
    let rest = Api::tls(port, tls.ca());
    let anonymous = rest.get("/v1/vms").await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    attacks.counted("unauthenticated");
    let forged = rest
        .clone()
        .token(Some("forged-token"))
        .get("/v1/vms")
        .await;
    assert_eq!(forged.status, 401, "{}", forged.text());
    attacks.counted("unauthenticated");

    // 6. Across projects: red's identities reach nothing of blue's, by naming blue, by
    // smuggling it into an object, or by reference; blue's viewer reaches nothing of red's.
    let red_in_blue = mallory.clone().in_project(Some("blue"), false).unwrap();
    let outside = "works in project(s) red, not in \"blue\"";
    attacks.refused(
        "mallory",
        "cross-project",
        "read blue's VM",
        red_in_blue.get_vm("blue-vm").await,
        outside,
    );
    attacks.refused(
        "mallory",
        "cross-project",
        "list blue's VMs",
        red_in_blue.list_vms("").await,
        outside,
    );
    attacks.refused(
        "mallory",
        "cross-project",
        "watch blue's VMs",
        red_in_blue.watch_vms(None, 0).await,
        outside,
    );
    attacks.refused(
        "mallory",
        "cross-project",
        "start blue's VM",
        red_in_blue.start_vm("blue-vm").await,
        outside,
    );
    attacks.refused(
        "mallory",
        "cross-project",
        "delete blue's VM",
        red_in_blue.delete_vm("blue-vm").await,
        outside,
    );
    attacks.refused(
        "mallory",
        "cross-project",
        "create a VM in blue",
        red_in_blue
            .create_vm(&stopped_vm("intruder", "blue-disk"))
            .await,
        outside,
    );
    attacks.refused(
        "mallory",
        "cross-project",
        "read blue's console log",
        red_in_blue.console_log("blue-vm", 100).await,
        outside,
    );
    attacks.refused(
        "mallory",
        "cross-project",
        "delete blue's volume",
        red_in_blue.delete_volume("blue-disk").await,
        outside,
    );
    attacks.refused(
        "mallory",
        "cross-project",
        "read blue's image",
        red_in_blue.get_image("blue-kernel").await,
        outside,
    );
    attacks.refused(
        "mallory",
        "cross-project",
        "delete blue's network",
        red_in_blue.delete_network("blue-net").await,
        outside,
    );
    attacks.refused(
        "peek",
        "cross-project",
        "the memory grant reads RAM in blue",
        peek.clone()
            .in_project(Some("blue"), false)
            .unwrap()
            .read_memory("blue-vm", 0, 4096)
            .await,
        "works in project(s) red",
    );
    let mut smuggled = stopped_vm("smuggled", "blue-disk");
    smuggled.metadata.project = Some("blue".parse().unwrap());
    attacks.refused(
        "mallory",
        "cross-project",
        "a VM naming project blue, sent to red",
        mallory.create_vm(&smuggled).await,
        "metadata.project: \"blue\" is not the request's project \"red\"",
    );
    attacks.refused(
        "mallory",
        "cross-project",
        "a volume cloning default's image that is not shared",
        mallory
            .create_volume(&Volume::new(
                "stolen".parse().unwrap(),
                VolumeSpec {
                    kind: VolumeKind::Disk,
                    size: None,
                    format: None,
                    image: Some("private".parse().unwrap()),
                    pool: None,
                },
            ))
            .await,
        "is not shared with project \"red\"",
    );
    attacks.refused(
        "bea",
        "cross-project",
        "blue's viewer reads red's VM",
        bea.clone()
            .in_project(Some("red"), false)
            .unwrap()
            .get_vm("victim")
            .await,
        "works in project(s) blue",
    );
    attacks.refused(
        "bob",
        "cross-project",
        "blue's operator attaches to red's console",
        bob.clone()
            .in_project(Some("red"), false)
            .unwrap()
            .attach_console("victim", false, true)
            .await,
        "works in project(s) blue",
    );
    // A reference by name resolves in the caller's project only: red's VM naming blue's
    // volume waits for a red volume of that name and never touches blue's.
    let mut borrower = stopped_vm("borrower", "blue-disk");
    borrower.spec.power = Power::Running;
    mallory.create_vm(&borrower).await.unwrap();
    let waits = mallory
        .wait_for(
            "borrower",
            |vm| {
                vm.is_some_and(|vm| {
                    vm.status
                        .message
                        .as_deref()
                        .is_some_and(|m| m.contains("volume/blue-disk is missing"))
                })
            },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(
        waits.is_some(),
        "red's VM waits for a red volume named blue-disk"
    );
    mallory.delete_vm("borrower").await.unwrap();
    attacks.counted("cross-project");
    // Every list shows the caller's projects only.
    let red_all = mallory.clone().in_project(None, true).unwrap();
    let seen: Vec<String> = red_all
        .list_vms("")
        .await
        .unwrap()
        .iter()
        .map(|v| format!("{}/{}", v.metadata.project(), v.metadata.name))
        .collect();
    assert!(seen.iter().all(|s| s.starts_with("red/")), "{seen:?}");
    assert!(
        bea.list_vms("")
            .await
            .unwrap()
            .iter()
            .all(|v| v.metadata.project() == "blue")
    );
    attacks.counted("cross-project");

    // 7. Exhaustion: a scan that would match every byte stops at its limit; a limit past the
    // bound is refused; a connection flood is held to the cap while the admin is served.
    let zeros = [0u8; 2];
    let (found, more) = peek.find_in_memory("victim", &zeros, 5).await.unwrap();
    assert!(
        found.len() <= 5 && more,
        "{} matches, truncated {more}",
        found.len()
    );
    attacks.counted("exhaustion");
    attacks.refused(
        "peek",
        "exhaustion",
        "memory find with a limit past the bound",
        peek.find_in_memory("victim", &zeros, 10_000_000).await,
        "limit",
    );
    let pid = d.pid().expect("corrald's pid");
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = open_fds();
    let flood: Vec<TcpStream> = (0..64)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    // Past the cap, connections are closed as they are accepted: corrald holds at most 16
    // of them (a few descriptors of slack for its own work in between).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = open_fds();
    assert!(
        during <= before + 16 + 4,
        "{during} descriptors open during a flood of 64, {before} before, cap 16"
    );
    assert!(
        admin.list_vms("").await.is_ok(),
        "the admin is still served"
    );
    drop(flood);
    attacks.counted("exhaustion");

    // 8. A revoked identity's live streams end: a console attached to the victim and a watch.
    let console_token = identity(&admin, "mallory-console", Role::Operator, false, "red").await;
    let watcher = tls_client(&tls, port, &console_token).await;
    let mut console = watcher
        .attach_console("victim", false, true)
        .await
        .expect("red's operator attaches to red's console");
    let mut watch = watcher.watch_vms(None, 0).await.unwrap();
    admin.revoke_identity("mallory-console").await.unwrap();
    let console_ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match console.output.recv().await {
                Some(Ok(_)) => continue,
                other => return other.map(|r| r.map(drop)),
            }
        }
    })
    .await
    .expect("the revoked identity's console stream ends");
    assert!(
        matches!(console_ended, Some(Err(_)) | None),
        "{console_ended:?}"
    );
    println!("refused [revocation] the live console stream: {console_ended:?}");
    attacks.counted("revocation");
    let watch_ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match watch.next().await {
                Some(Ok(_)) => continue,
                other => return other.map(|r| r.map(drop)),
            }
        }
    })
    .await
    .expect("the revoked identity's watch ends");
    assert!(
        matches!(watch_ended, Some(Err(_)) | None),
        "{watch_ended:?}"
    );
    attacks.counted("revocation");
    attacks.refused(
        "",
        "revocation",
        "a revoked token's next request",
        watcher.list_vms("").await,
        "revoked",
    );

    // Nothing was made for the attackers: every project holds what its owner made.
    let mut images: Vec<String> = admin_all
        .list_images("")
        .await
        .unwrap()
        .iter()
        .map(|i| format!("{}/{}", i.metadata.project(), i.metadata.name))
        .collect();
    images.sort();
    assert_eq!(images, ["blue/blue-kernel", "default/private"]);
    let mut vms: Vec<String> = admin_all
        .list_vms("")
        .await
        .unwrap()
        .iter()
        .map(|v| format!("{}/{}", v.metadata.project(), v.metadata.name))
        .collect();
    vms.sort();
    assert_eq!(vms, ["blue/blue-vm", "red/victim"]);
    assert!(admin_all.list_volumes("").await.unwrap().len() == 1);

    // Every refusal of each identity's is in the audit log, under the project it aimed at.
    let audit: Vec<serde_json::Value> = std::fs::read_to_string(data.join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut refusals = 0;
    for (who, made) in &attacks.by_identity {
        let audited = audit
            .iter()
            .filter(|l| l["identity"] == format!("identity:{who}") && l["outcome"] != "ok")
            .count();
        assert!(
            audited >= *made,
            "{audited} audited refusals of {who}'s for {made} attacks: {:#?}",
            audit
                .iter()
                .filter(|l| l["identity"] == format!("identity:{who}"))
                .collect::<Vec<_>>()
        );
        refusals += audited;
    }
    assert!(
        audit.iter().any(|l| l["identity"] == "identity:mallory"
            && l["outcome"] != "ok"
            && l["project"] == "blue"),
        "mallory's refusals in blue are audited under blue"
    );

    // No byte of the secret reached the image store, a volume or a console log.
    let mut files = Vec::new();
    files_below(&data, &mut files);
    files_below(&d.run_dir(), &mut files);
    let needle = marker.as_bytes();
    for file in &files {
        if file.ends_with("audit.log") {
            continue;
        }
        let Ok(bytes) = std::fs::read(file) else {
            continue;
        };
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "the secret is in {}",
            file.display()
        );
    }

    let families: Vec<String> = attacks
        .by_family
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    println!(
        "hostile tenant: {} attacks, all refused or bounded ({}); {refusals} audited refusals; \
         secret absent from {} files",
        attacks.total(),
        families.join(", "),
        files.len()
    );
    assert!(attacks.total() >= 40);
}
