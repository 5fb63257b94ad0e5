//! The hostile-tenant suite: a real corrald on TLS, an admin on its unix socket, and tenants
//! that are not admins — `mallory` (operator), `vic` (viewer), `peek` (operator with the
//! memory grant) — who try every way found to reach what only root on the host may reach:
//! host files through every path-taking field, another VM's RAM file, corrald's own state,
//! qcow2 images whose headers name host files, URL imports to loopback and metadata
//! addresses (directly, by name, in disguise, through a redirect), a bridge on the host,
//! escalation through the identity and audit APIs, guest RAM without the grant, a revoked
//! token on a live console, unbounded memory scans and a connection flood. Each attack must be
//! refused with a clear message, refusals are in the audit log, and at the end no byte of the
//! secret the test planted is in any image, volume or console log. The summary prints the
//! count.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use corral_client::{Client, ClientError, Endpoint};
use corral_contract::{
    Boot, Credential, DiskFormat, Identity, IdentitySpec, Image, ImageFormat, ImageSource,
    ImageSpec, Network, NetworkMode, NetworkSpec, Phase, Role, Vm,
};
use corral_testkit::http::{Api, TlsSetup};
use corral_testkit::{GuestKit, kit_vm, wait_phase};

const CORRALD: &str = env!("CARGO_BIN_EXE_corrald");

/// The attacks made so far, by family, and what each was told.
#[derive(Default)]
struct Attacks {
    by_family: BTreeMap<&'static str, usize>,
}

impl Attacks {
    /// Records an attack that must have been refused with a message containing `says`.
    #[track_caller]
    fn refused<T: std::fmt::Debug>(
        &mut self,
        family: &'static str,
        what: &str,
        result: Result<T, ClientError>,
        says: &str,
    ) {
        match result {
            Err(e) => {
                let message = e.to_string();
                println!("refused [{family}] {what}: {message}");
                assert!(
                    message.contains(says),
                    "{family}: {what}: refused, but the message {message:?} does not say {says:?}"
                );
            }
            Ok(got) => panic!("{family}: {what}: NOT refused: {got:?}"),
        }
        *self.by_family.entry(family).or_default() += 1;
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

async fn identity(admin: &Client, name: &str, role: Role, memory: bool) -> String {
    let spec = IdentitySpec {
        role,
        memory,
        projects: vec![],
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
    let mallory_token = identity(&admin, "mallory", Role::Operator, false).await;
    let vic_token = identity(&admin, "vic", Role::Viewer, false).await;
    let peek_token = identity(&admin, "peek", Role::Operator, true).await;
    let mallory = tls_client(&tls, port, &mallory_token).await;
    let vic = tls_client(&tls, port, &vic_token).await;
    let peek = tls_client(&tls, port, &peek_token).await;

    // The admin's VM: its RAM lives in /dev/shm, its console is a stream to attack.
    let mut victim = kit_vm("victim", |b| b);
    victim.spec.introspection = true;
    admin.create_vm(&victim).await.unwrap();
    wait_phase(&admin, &d, "victim", Phase::Running)
        .await
        .unwrap();
    corral_testkit::wait_console(&admin, &d, "victim", "CORRAL_BOOT_OK", 0)
        .await
        .unwrap();
    let uid = admin.get_vm("victim").await.unwrap().metadata.uid;
    let ram = PathBuf::from(format!("/dev/shm/corral-{uid}"));
    assert!(ram.exists());

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
        "image content",
        "qcow2 backed by the secret",
        mallory
            .create_image(&path_image("chained", &backing, ImageFormat::Qcow2))
            .await,
        "backing",
    );
    attacks.refused(
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
        "host network",
        "bridge network",
        mallory.create_network(&bridge).await,
        "spec.mode",
    );

    // 5. Escalation and reading what is not theirs.
    let escalate = IdentitySpec {
        role: Role::Admin,
        memory: true,
        projects: vec![],
        credential: Credential::Token { blake3: None },
    };
    attacks.refused(
        "escalation",
        "operator makes an admin identity",
        mallory
            .create_identity(&Identity::new("root2".parse().unwrap(), escalate))
            .await,
        "needs role admin",
    );
    attacks.refused(
        "escalation",
        "operator reads the audit log",
        mallory.audit(&Default::default()).await,
        "needs role admin",
    );
    attacks.refused(
        "escalation",
        "operator revokes the viewer",
        mallory.revoke_identity("vic").await,
        "needs role admin",
    );
    attacks.refused(
        "escalation",
        "viewer creates a VM",
        vic.create_vm(&kit_vm("vics", |b| b)).await,
        "may not write",
    );
    attacks.refused(
        "escalation",
        "viewer deletes the admin's VM",
        vic.delete_vm("victim").await,
        "may not write",
    );
    attacks.refused(
        "guest RAM",
        "operator without the grant reads RAM",
        mallory.read_memory("victim", 0, 4096).await,
        "memory",
    );
    attacks.refused(
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

    // 6. Exhaustion: a scan that would match every byte stops at its limit; a limit past the
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

    // 7. A revoked identity's live console stream ends.
    let console_token = identity(&admin, "mallory-console", Role::Operator, false).await;
    let watcher = tls_client(&tls, port, &console_token).await;
    let mut watch = watcher.watch_vms(None, 0).await.unwrap();
    admin.revoke_identity("mallory-console").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match watch.next().await {
                Some(Ok(_)) => continue,
                other => return other.map(|r| r.map(drop)),
            }
        }
    })
    .await
    .expect("the revoked identity's stream ends");
    assert!(matches!(ended, Some(Err(_)) | None), "{ended:?}");
    attacks.refused(
        "revocation",
        "a revoked token's next request",
        watcher.list_vms("").await,
        "revoked",
    );

    // Nothing was made for the attacker, and every refusal of mallory's is in the audit log.
    assert!(admin.list_images("").await.unwrap().is_empty());
    let vms: Vec<String> = admin
        .list_vms("")
        .await
        .unwrap()
        .into_iter()
        .map(|vm| vm.metadata.name.to_string())
        .collect();
    assert_eq!(vms, ["victim"]);
    let audit: Vec<serde_json::Value> = std::fs::read_to_string(data.join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refusals = audit
        .iter()
        .filter(|l| l["identity"] == "identity:mallory" && l["outcome"] != "ok")
        .count();
    let mallory_attacks = attacks.total()
        - attacks.by_family.get("exhaustion").copied().unwrap_or(0)
        - attacks
            .by_family
            .get("unauthenticated")
            .copied()
            .unwrap_or(0)
        - attacks.by_family.get("revocation").copied().unwrap_or(0)
        - 2; // the viewer's
    assert!(
        refusals >= mallory_attacks,
        "{refusals} audited refusals of mallory's for {mallory_attacks} attacks"
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
