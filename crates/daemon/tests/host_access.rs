//! Host access against a real corrald: a tenant (a token without the `admin` scope) names only
//! regular files below `--host-path-allow` directories, checked again when a VM starts; boot
//! disks given by path are read-only inside the guest; URL imports never reach loopback,
//! link-local or metadata addresses unless allowed, and stop at the size cap; qcow2 images
//! that name host files (backing chain, data file) are refused. Evidence of what works comes
//! from inside the guests' serial consoles.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use corral_client::{Client, ClientError, Endpoint};
use corral_contract::{Boot, DiskFormat, Image, ImageFormat, ImageSource, ImageSpec, Phase, Vm};
use corral_testkit::http::TlsSetup;
use corral_testkit::{Corrald, GuestKit, kit_vm, wait_console, wait_phase};

type Result = anyhow::Result<()>;

const CORRALD: &str = env!("CARGO_BIN_EXE_corrald");

/// The token file: `tenant` may manage VMs, `root` is an admin.
fn tokens(tls: &TlsSetup) {
    let line = |token: &str, scopes: &str| {
        format!(
            "blake3:{} scopes={scopes}\n",
            blake3::hash(token.as_bytes()).to_hex()
        )
    };
    let lines = line("tenant", "vms") + &line("root", "vms,admin");
    std::fs::write(tls.token_file(), lines).unwrap();
}

async fn over_tls(tls: &TlsSetup, port: u16, token: &str) -> anyhow::Result<Client> {
    let url = format!("https://localhost:{port}");
    for _ in 0..600 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Client::connect(Endpoint::Https {
        url,
        token: Some(token.into()),
        ca_file: Some(tls.ca_file()),
    })
    .await?)
}

fn path_image(name: &str, path: &Path) -> Image {
    Image::new(
        name.parse().unwrap(),
        ImageSpec {
            source: ImageSource::Path(path.to_owned()),
            format: Some(ImageFormat::Raw),
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

fn kernel_vm(name: &str, kernel: &Path, initrd: &Path) -> Vm {
    let kit = GuestKit::get(corral_contract::Arch::X86_64).unwrap();
    kit_vm(name, |b| b).with_boot(Boot::Kernel {
        kernel: kernel.to_owned(),
        initrd: Some(initrd.to_owned()),
        cmdline: Some(format!("console={} quiet panic=-1", kit.console())),
    })
}

trait WithBoot {
    fn with_boot(self, boot: Boot) -> Vm;
}

impl WithBoot for Vm {
    fn with_boot(mut self, boot: Boot) -> Vm {
        self.spec.boot = boot;
        self.spec.validate().expect("a valid spec");
        self
    }
}

/// Asserts that `result` is a refusal of the request (InvalidArgument) whose message names
/// `field` and contains `says`.
#[track_caller]
fn refused<T: std::fmt::Debug>(
    result: std::result::Result<T, ClientError>,
    field: &str,
    says: &str,
) {
    match result {
        Err(ClientError::Invalid { message }) => {
            assert!(
                message.starts_with(field),
                "{message:?} does not name {field}"
            );
            assert!(message.contains(says), "{message:?} does not say {says:?}");
        }
        other => panic!("expected a refusal naming {field} ({says}), got {other:?}"),
    }
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

fn copy(from: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(from, &to).unwrap();
    to
}

#[tokio::test]
async fn a_tenant_names_only_regular_files_below_allowed_dirs_and_they_boot() -> Result {
    let kit = GuestKit::get(corral_contract::Arch::X86_64)?;
    let allowed = tempfile::Builder::new()
        .prefix("crl-allow")
        .tempdir_in("/tmp")?;
    let a = allowed.path();
    let kernel = copy(&kit.kernel(), a, "vmlinuz");
    let initrd = copy(&kit.initrd(), a, "initrd.img");
    std::os::unix::fs::symlink("/etc/shadow", a.join("shadow-link"))?;
    mkfifo(&a.join("fifo"));
    std::fs::create_dir(a.join("sub"))?;

    let tls = TlsSetup::new();
    tokens(&tls);
    let (d, port) = tls.start_with(CORRALD, &["--host-path-allow", a.to_str().unwrap()]);
    let tenant = over_tls(&tls, port, "tenant").await?;
    let root = over_tls(&tls, port, "root").await?;

    // Allowed files work: a tenant's VM boots from them, with its RAM in /dev/shm.
    let mut good = kernel_vm("good", &kernel, &initrd);
    good.spec.introspection = true;
    tenant.create_vm(&good).await?;
    wait_phase(&tenant, &d, "good", Phase::Running).await?;
    wait_console(&tenant, &d, "good", "CORRAL_BOOT_OK", 0).await?;
    let good = tenant.get_vm("good").await?;
    let uid = good.metadata.uid.clone();
    let ram = corral_testkit::guest_ram_file(&good);
    assert!(ram.exists(), "{} is the guest's RAM", ram.display());

    // Every other host file is refused to the tenant, naming the field and why.
    let escape = a.join("sub/../../../etc/shadow");
    let data = d.data_dir();
    std::fs::hard_link(data.join("keys/node.key"), a.join("hard-link"))?;
    let tenant_attacks: Vec<(PathBuf, &str)> = vec![
        (a.join("hard-link"), "other hard links"),
        ("/etc/shadow".into(), "only an admin may name host files"),
        (a.join("shadow-link"), "symbolic link"),
        (escape.clone(), "leaves the allowed directory"),
        ("/proc/self/environ".into(), "only an admin"),
        ("/dev/zero".into(), "only an admin"),
        (a.join("fifo"), "is a FIFO, not a regular file"),
        (a.join("sub"), "is a directory"),
        (ram.clone(), "only an admin"),
        (data.join("state.db"), "only an admin"),
        (data.join("keys/node.key"), "only an admin"),
    ];
    for (i, (path, says)) in tenant_attacks.iter().enumerate() {
        let image = path_image(&format!("steal-{i}"), path);
        refused(tenant.create_image(&image).await, "spec.source.path", says);
        let vm = kernel_vm(&format!("steal-{i}"), path, &initrd);
        refused(tenant.create_vm(&vm).await, "spec.boot.kernel.kernel", says);
        let vm = kernel_vm(&format!("steal-i{i}"), &kernel, path);
        refused(tenant.create_vm(&vm).await, "spec.boot.kernel.initrd", says);
        let vm = kit_vm(&format!("steal-d{i}"), |b| b).with_boot(Boot::Disk {
            path: path.clone(),
            format: Some(DiskFormat::Raw),
        });
        refused(tenant.create_vm(&vm).await, "spec.boot.disk.path", says);
    }
    // Shared folders follow the same rules: never `/` or `/etc` for a tenant, nothing leaving
    // the allowed directory or through a link, only directories.
    let share_attacks: Vec<(PathBuf, &str)> = vec![
        ("/etc".into(), "only an admin may name host files"),
        ("/".into(), "only an admin may name host files"),
        (a.join("sub/../.."), "leaves the allowed directory"),
        (a.join("shadow-link"), "symbolic link"),
        (a.join("vmlinuz"), "is a regular file, not a directory"),
    ];
    for (i, (path, says)) in share_attacks.iter().enumerate() {
        let mut vm = kernel_vm(&format!("share-{i}"), &kernel, &initrd);
        vm.spec
            .shares
            .push(corral_contract::Share::new(path.clone(), "project"));
        refused(
            tenant.create_vm(&vm).await,
            "spec.shares[0].host_path",
            says,
        );
    }
    // REST is the same service: 400, the field named.
    let rest = corral_testkit::http::Api::tls(port, tls.ca()).token(Some("tenant"));
    let body = serde_json::json!({
        "kind": "Image",
        "metadata": {"name": "rest-steal"},
        "spec": {"source": {"path": "/etc/shadow"}, "format": "raw"}
    });
    let message = rest
        .post("/v1/images", &body)
        .await
        .expect_error(400, "InvalidArgument");
    assert!(
        message.starts_with("spec.source.path: /etc/shadow: only an admin"),
        "{message}"
    );
    // A qcow2 disk by path would let its header name further host files.
    let vm = kit_vm("qcow", |b| b).with_boot(Boot::Disk {
        path: kernel.clone(),
        format: Some(DiskFormat::Qcow2),
    });
    refused(
        tenant.create_vm(&vm).await,
        "spec.boot.disk.format",
        "must be raw",
    );

    // What no caller may name, an admin neither.
    let admin_attacks: Vec<(PathBuf, &str)> = vec![
        (ram.clone(), "a VM's guest RAM"),
        (data.join("state.db"), "corrald's own state"),
        (data.join("keys/node.key"), "corrald's own state"),
        (
            d.run_dir().join(format!("vms/{uid}/qemu.pid")),
            "corrald's own state",
        ),
        ("/proc/self/environ".into(), "kernel interface"),
        ("/dev/zero".into(), "character device"),
        (a.join("shadow-link"), "symbolic link"),
    ];
    for (i, (path, says)) in admin_attacks.iter().enumerate() {
        let image = path_image(&format!("root-{i}"), path);
        refused(root.create_image(&image).await, "spec.source.path", says);
    }
    assert!(
        tenant.list_images("").await?.is_empty(),
        "no image was made"
    );
    let names: Vec<String> = tenant
        .list_vms("")
        .await?
        .into_iter()
        .map(|vm| vm.metadata.name.to_string())
        .collect();
    assert_eq!(names, ["good"]);

    // The check holds at use: a file swapped for a symlink after admission is not followed
    // when the VM starts, though the symlink leads to a kernel that would boot.
    let swapped = copy(&kit.kernel(), a, "swapped");
    let mut later = kernel_vm("later", &swapped, &initrd);
    later.spec.power = corral_contract::Power::Stopped;
    tenant.create_vm(&later).await?;
    std::fs::remove_file(&swapped)?;
    std::os::unix::fs::symlink(kit.kernel(), &swapped)?;
    tenant.start_vm("later").await?;
    let vm = tenant
        .wait_for(
            "later",
            |vm| {
                vm.is_some_and(|vm| {
                    vm.status
                        .message
                        .as_deref()
                        .is_some_and(|m| m.contains("symbolic link"))
                })
            },
            Duration::from_secs(60),
        )
        .await?
        .expect("the VM");
    assert!(vm.status.pid.is_none(), "no QEMU started: {:?}", vm.status);
    let message = vm.status.message.unwrap_or_default();
    assert!(message.starts_with("spec.boot.kernel.kernel"), "{message}");
    Ok(())
}

#[tokio::test]
async fn a_boot_disk_given_by_path_is_read_only_in_the_guest() -> Result {
    let kit = GuestKit::get(corral_contract::Arch::X86_64)?;
    let dir = tempfile::Builder::new()
        .prefix("crl-disk")
        .tempdir_in("/tmp")?;
    let disk = copy(&kit.boot_disk(), dir.path(), "boot.qcow2");
    let before = std::fs::read(&disk)?;
    let d = Corrald::start(CORRALD)?;
    let c = Client::connect(Endpoint::Unix(d.socket())).await?;
    let vm = kit_vm("ro", |b| b).with_boot(Boot::Disk {
        path: disk.clone(),
        format: Some(DiskFormat::Qcow2),
    });
    c.create_vm(&vm).await?;
    wait_phase(&c, &d, "ro", Phase::Running).await?;
    wait_console(&c, &d, "ro", "CORRAL_BOOT_OK", 0).await?;

    // The guest tries to overwrite its boot disk's first sector.
    let console = c.attach_console("ro", true, false).await?;
    let probe = "echo RO=$(cat /sys/block/vda/ro); \
                 dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null; \
                 echo DD_RC=$?\n";
    // The shell may not read its console yet: ask again until it answers.
    let mut log = String::new();
    for _ in 0..60 {
        console.input.send(probe.as_bytes().to_vec()).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        log = String::from_utf8_lossy(&c.console_log("ro", 0).await?).into_owned();
        if log.contains("DD_RC=") {
            break;
        }
    }
    let line = log
        .lines()
        .find(|l| l.contains("DD_RC="))
        .unwrap_or_else(|| panic!("the guest never answered:\n{log}"))
        .to_owned();
    assert!(
        log.contains("RO=1"),
        "the guest sees a read-only disk:\n{log}"
    );
    assert_ne!(line.trim(), "DD_RC=0", "the guest's write failed: {line}");
    c.delete_vm_with("ro", Some(0)).await?;
    assert!(
        std::fs::read(&disk)? == before,
        "the host file is unchanged"
    );
    Ok(())
}

/// A plain HTTP server on `addr` (`127.0.0.1:0`, `127.0.0.2:0`) until the test ends:
/// `/small` (512 KiB), `/big` (2 MiB, announced), `/stream` (2 MiB, not announced) and
/// `/redirect` (to `target`).
fn http_server(addr: &str, target: Option<String>) -> (String, Vec<u8>) {
    let listener = TcpListener::bind(addr).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let small = vec![0x5au8; 512 << 10];
    let served = small.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let small = small.clone();
            let target = target.clone();
            std::thread::spawn(move || {
                let mut request = String::new();
                let _ = BufReader::new(&stream).read_line(&mut request);
                let path = request.split(' ').nth(1).unwrap_or("/").to_owned();
                let head = |status: &str, extra: &str| {
                    format!("HTTP/1.1 {status}\r\n{extra}Connection: close\r\n\r\n")
                };
                let _ = match path.as_str() {
                    "/small" => stream
                        .write_all(
                            head("200 OK", &format!("Content-Length: {}\r\n", small.len()))
                                .as_bytes(),
                        )
                        .and_then(|()| stream.write_all(&small)),
                    "/big" => stream
                        .write_all(head("200 OK", "Content-Length: 2097152\r\n").as_bytes())
                        .and_then(|()| stream.write_all(&vec![1u8; 2 << 20])),
                    "/stream" => {
                        let mut r = stream.write_all(head("200 OK", "").as_bytes());
                        for _ in 0..32 {
                            r = r.and_then(|()| stream.write_all(&[2u8; 64 << 10]));
                        }
                        r
                    }
                    "/redirect" => stream.write_all(
                        head(
                            "302 Found",
                            &format!(
                                "Location: {}\r\nContent-Length: 0\r\n",
                                target.unwrap_or_default()
                            ),
                        )
                        .as_bytes(),
                    ),
                    _ => {
                        stream.write_all(head("404 Not Found", "Content-Length: 0\r\n").as_bytes())
                    }
                };
            });
        }
    });
    (base, served)
}

#[tokio::test]
async fn url_imports_reach_only_allowed_internal_addresses_and_stop_at_the_cap() -> Result {
    let (internal, _) = http_server("127.0.0.1:0", None);
    let port = internal.rsplit(':').next().unwrap().to_owned();
    let (allowed, small) = http_server("127.0.0.2:0", Some(format!("{internal}/small")));
    // The allowed range is 127.0.0.2 alone: the same machine's 127.0.0.1 stays out of reach.
    let d = Corrald::builder(CORRALD)
        .import_allow_net("127.0.0.2/32")
        .args(&["--import-max-size", "1M"])
        .start()?;
    let c = Client::connect(Endpoint::Unix(d.socket())).await?;

    for (i, url) in [
        format!("{internal}/small"),
        format!("http://localhost:{port}/small"),
        format!("http://[::ffff:127.0.0.1]:{port}/small"),
        format!("http://2130706433:{port}/small"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("{allowed}/redirect"),
    ]
    .iter()
    .enumerate()
    {
        let says = if url.contains("169.254") {
            "link-local"
        } else {
            "loopback"
        };
        refused(
            c.create_image(&url_image(&format!("ssrf-{i}"), url)).await,
            "spec.source.url",
            says,
        );
    }

    // Allowed, and within the cap: the bytes are the server's.
    let image = c
        .create_image(&url_image("ok", &format!("{allowed}/small")))
        .await?;
    let digest = format!("blake3:{}", blake3::hash(&small).to_hex());
    assert_eq!(image.status.digest.as_deref(), Some(digest.as_str()));

    for (name, path) in [("big", "/big"), ("stream", "/stream")] {
        let err = c
            .create_image(&url_image(name, &format!("{allowed}{path}")))
            .await
            .expect_err("over the cap");
        assert!(err.to_string().contains("--import-max-size"), "{err}");
    }
    let names: Vec<String> = c
        .list_images("")
        .await?
        .into_iter()
        .map(|i| i.metadata.name.to_string())
        .collect();
    assert_eq!(names, ["ok"]);
    let tmp = std::fs::read_dir(d.data_dir().join("images/tmp"))?.count();
    assert_eq!(tmp, 0, "nothing half-made is left");
    Ok(())
}

#[tokio::test]
async fn qcow2_images_that_name_host_files_are_refused() -> Result {
    let dir = tempfile::Builder::new()
        .prefix("crl-qcow")
        .tempdir_in("/tmp")?;
    let secret = dir.path().join("secret.raw");
    std::fs::write(&secret, vec![0x5a; 1 << 20])?;
    let qemu_img = |args: &[&str]| {
        let out = Command::new("qemu-img").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let chained = dir.path().join("chained.qcow2");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        &s(&secret),
        "-F",
        "raw",
        &s(&chained),
    ]);
    let with_data = dir.path().join("data.qcow2");
    let data_file = format!("data_file={}", s(&secret));
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &data_file,
        &s(&with_data),
        "1M",
    ]);

    let d = Corrald::start(CORRALD)?;
    let c = Client::connect(Endpoint::Unix(d.socket())).await?;
    let image = |name: &str, path: &Path, format| {
        Image::new(
            name.parse().unwrap(),
            ImageSpec {
                source: ImageSource::Path(path.to_owned()),
                format,
                shared: false,
                checksum: None,
            },
        )
    };
    // Even an admin's import: the image's content is what is judged.
    refused(
        c.create_image(&image("chained", &chained, None)).await,
        "spec.source",
        "outside the image store",
    );
    refused(
        c.create_image(&image("data", &with_data, None)).await,
        "spec.source",
        "external file",
    );
    refused(
        c.create_image(&image("kernel", &with_data, Some(ImageFormat::Kernel)))
            .await,
        "spec.source",
        "declared kernel, but the bytes are a qcow2 disk image",
    );
    // A chain through a stored kernel blob is refused too.
    let blob_kernel = c
        .create_image(&image("k", &secret, Some(ImageFormat::Kernel)))
        .await?;
    let blob = d.data_dir().join("images/blake3").join(
        blob_kernel
            .status
            .digest
            .unwrap()
            .trim_start_matches("blake3:"),
    );
    let on_kernel = dir.path().join("on-kernel.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        &s(&blob),
        "-F",
        "raw",
        &s(&on_kernel),
    ]);
    refused(
        c.create_image(&image("on-kernel", &on_kernel, None)).await,
        "spec.source",
        "not a disk image",
    );
    let names: Vec<String> = c
        .list_images("")
        .await?
        .into_iter()
        .map(|i| i.metadata.name.to_string())
        .collect();
    assert_eq!(names, ["k"]);
    Ok(())
}
