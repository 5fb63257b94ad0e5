//! Process hardening end to end: a real corrald as root runs its QEMU as the unprivileged
//! `corral-qemu` (created by scripts/setup.sh) under a seccomp sandbox; every VM file is
//! private; the guest still boots from a volume cloned on an image, reads its cloud-init
//! seed, and its RAM and disk snapshots still work. corrald refuses directories others could
//! tamper with.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use corral_client::{Client, Endpoint};
use corral_contract::{ByteSize, Phase, Snapshot, StoragePhase, Vm};
use corral_testkit::{Corrald, GuestKit, wait_console, wait_phase};

type Result = anyhow::Result<()>;

const CORRALD: &str = env!("CARGO_BIN_EXE_corrald");
const WAIT: Duration = Duration::from_secs(180);

/// `corral-qemu`'s uid and gid; scripts/setup.sh creates the user.
fn qemu_user() -> anyhow::Result<(u32, u32)> {
    let user = nix::unistd::User::from_name("corral-qemu")?
        .context("user corral-qemu is missing: run scripts/setup.sh")?;
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

/// (permission bits, uid, gid) of `path`, not following a symlink.
fn mode_owner(path: &Path) -> anyhow::Result<(u32, u32, u32)> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok((meta.mode() & 0o7777, meta.uid(), meta.gid()))
}

/// The values of a `Key:` line of /proc/<pid>/status, as numbers.
fn proc_status(pid: u32, key: &str) -> anyhow::Result<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .with_context(|| format!("no {key}: in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()?)
}

#[tokio::test]
async fn qemu_runs_as_corral_qemu_in_a_sandbox_and_every_vm_file_is_private() -> Result {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "this test runs corrald as root"
    );
    let (quid, qgid) = qemu_user()?;
    let d = Corrald::start(CORRALD)?;
    // The API socket, right after start: root's, 0600.
    let socket = std::fs::symlink_metadata(d.socket())?;
    assert!(socket.file_type().is_socket());
    assert_eq!(mode_owner(&d.socket())?, (0o600, 0, 0));
    // corrald's own directories: QEMU's group may pass through, nobody else may enter.
    for dir in [d.data_dir(), d.run_dir()] {
        assert_eq!(mode_owner(&dir)?, (0o710, 0, qgid), "{}", dir.display());
    }

    let c = Client::connect(Endpoint::Unix(d.socket())).await?;
    let kit = GuestKit::get(corral_contract::Arch::X86_64)?;
    let marker = format!("PROCHARDENING{}x{}", std::process::id(), rand_suffix());
    c.create_image(&serde_json::from_value(serde_json::json!({
        "metadata": {"name": "rootfs"},
        "spec": {"source": {"path": kit.rootfs_qcow2()}, "format": "qcow2"},
    }))?)
    .await?;
    c.create_volume(&serde_json::from_value(serde_json::json!({
        "metadata": {"name": "root"},
        "spec": {"image": "rootfs"},
    }))?)
    .await?;
    let vm: Vm = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "hard"},
        "spec": {
            "memory": "256M",
            "introspection": true,
            "boot": {"kernel": {
                "kernel": kit.kernel(),
                "initrd": kit.initrd(),
                "cmdline": format!(
                    "console={} quiet panic=-1 corral.root=/dev/vda corral.diskcount=1 corral.marker={marker}",
                    kit.console()
                ),
            }},
            "volumes": [{"volume": "root"}],
            "cloud_init": {"user_data": "#cloud-config\n", "meta_data": "local-hostname: sealed\n"},
        },
    }))?;
    c.create_vm(&vm).await?;
    let running = wait_phase(&c, &d, "hard", Phase::Running).await?;
    // Evidence from inside: it booted from the volume (a qcow2 whose backing file is the
    // image blob), wrote to it, and read its seed.
    let boot = wait_console(&c, &d, "hard", "CORRAL_BOOT_OK", 0).await?;
    assert!(boot.contains("root=disk"), "{boot}");
    wait_console(&c, &d, "hard", "CORRAL_DISKCOUNT 0", 0).await?;
    let seeded = wait_console(&c, &d, "hard", "CORRAL_CLOUDINIT", 0).await?;
    assert!(seeded.contains("hostname=sealed"), "{seeded}");

    // The QEMU process: corral-qemu's ids only, no root anywhere, seccomp filter mode.
    let pid = running.status.pid.context("a pid")?;
    assert_eq!(proc_status(pid, "Uid")?, [quid; 4]);
    assert_eq!(proc_status(pid, "Gid")?, [qgid; 4]);
    assert_eq!(proc_status(pid, "Groups")?, [qgid]);
    assert_eq!(proc_status(pid, "Seccomp")?, [2]);
    assert_eq!(proc_status(pid, "NoNewPrivs")?, [1]);

    // Its files: what QEMU opens itself is corral-qemu's and 0600; the rest is root's, 0600;
    // the directories on the way are 0710 with corral-qemu's group.
    let uid = &running.metadata.uid;
    let volume = c.get_volume("root").await?;
    let volume_path = PathBuf::from(volume.status.path.context("a volume path")?);
    assert_eq!(mode_owner(&volume_path)?, (0o600, quid, qgid));
    let seed = d.data_dir().join("seeds").join(format!("{uid}.iso"));
    assert_eq!(mode_owner(&seed)?, (0o600, quid, qgid));
    let ram = corral_testkit::guest_ram_file(&running);
    assert_eq!(mode_owner(&ram)?, (0o600, quid, qgid));
    let vm_dir = d.run_dir().join("vms").join(uid);
    assert_eq!(mode_owner(&vm_dir.join("qemu.pid"))?, (0o600, quid, qgid));
    for file in [
        "qmp.sock",
        "console.sock",
        "launch.json",
        "serial.log",
        "qemu.log",
    ] {
        assert_eq!(mode_owner(&vm_dir.join(file))?, (0o600, 0, 0), "{file}");
    }
    for dir in [
        vm_dir.clone(),
        d.run_dir().join("vms"),
        d.data_dir().join("volumes"),
        d.data_dir().join("seeds"),
        d.data_dir().join("images/blake3"),
    ] {
        assert_eq!(mode_owner(&dir)?, (0o710, 0, qgid), "{}", dir.display());
    }
    for entry in std::fs::read_dir(d.data_dir().join("images/blake3"))? {
        let (mode, owner, _) = mode_owner(&entry?.path())?;
        assert_eq!(
            (mode & 0o222, owner),
            (0, 0),
            "image blobs are read-only, root's"
        );
    }

    // Nothing below corrald's directories is open to others, nor to QEMU's group beyond
    // passing through; image blobs are read-only; the node's public key is public.
    for top in [d.data_dir(), d.run_dir()] {
        for (path, mode) in walk(&top)? {
            if path == d.data_dir().join("keys/node.pub") {
                continue;
            }
            let blob = path.starts_with(d.data_dir().join("images/blake3"));
            let open = match mode & 0o170000 {
                0o040000 => mode & 0o067,
                _ if blob => mode & 0o222,
                _ => mode & 0o077,
            };
            assert_eq!(open, 0, "{} has mode {:o}", path.display(), mode & 0o7777);
        }
    }

    // The memory bridge reads the RAM file QEMU shares: the marker from the guest's kernel
    // command line is there.
    let (found, _) = c.find_in_memory("hard", marker.as_bytes(), 1).await?;
    let addr = *found.first().context("the marker in guest RAM")?;
    let read = c.read_memory("hard", addr, marker.len() as u64).await?;
    assert_eq!(read, marker.as_bytes());

    // A hot resize: QEMU grows the file it holds open (it could not reopen it as root's),
    // and the guest sees the new size.
    let grown = volume.status.size.context("a volume size")? + (64 << 20);
    c.resize_volume("root", ByteSize::new(grown)).await?;
    let deadline = Instant::now() + WAIT;
    while c.get_volume("root").await?.status.size != Some(grown) {
        ensure!(
            Instant::now() < deadline,
            "the volume did not grow\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let console = c.attach_console("hard", true, false).await?;
    console
        .input
        .send(b"echo CORRAL_VDA_SECTORS $(cat /sys/block/vda/size)\n".to_vec())
        .await?;
    wait_console(
        &c,
        &d,
        "hard",
        &format!("CORRAL_VDA_SECTORS {}", grown / 512),
        0,
    )
    .await?;
    drop(console);

    // A disk+memory snapshot: QEMU writes RAM and disk state into the volume it holds open.
    let snapshot: Snapshot = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "s1"},
        "spec": {"vm": "hard", "memory": true},
    }))?;
    c.create_snapshot(&snapshot).await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let s = c.get_snapshot("s1").await?;
        match s.status.phase {
            StoragePhase::Ready => break,
            StoragePhase::Failed => anyhow::bail!("snapshot failed: {:?}", s.status.message),
            _ if Instant::now() > deadline => {
                anyhow::bail!("snapshot not ready: {:?}\n{}", s.status, d.log())
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    // The guest lives on through it: its heartbeat (the first may come after the snapshot,
    // which can be taken within a second of boot) goes on counting.
    wait_console(&c, &d, "hard", "CORRAL_HEARTBEAT ", 0).await?;
    let beat = corral_testkit::last_heartbeat(&c, "hard")
        .await?
        .context("heartbeats")?;
    wait_console(&c, &d, "hard", &format!("CORRAL_HEARTBEAT {}", beat + 1), 0).await?;

    c.delete_vm("hard").await?;
    c.wait_for("hard", |vm| vm.is_none(), WAIT).await?;
    assert!(!ram.exists(), "the RAM file goes with the VM");
    assert!(!vm_dir.exists(), "the VM directory goes with the VM");
    Ok(())
}

/// Every path below `dir` with its `st_mode`.
fn walk(dir: &Path) -> anyhow::Result<Vec<(PathBuf, u32)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            out.extend(walk(&path)?);
        }
        out.push((path, meta.mode()));
    }
    Ok(out)
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
}

/// corrald with `--data-dir data` and, when given, `--run-dir run`, taking nothing from the
/// caller's `CORRAL_*` environment.
fn corrald(data: &Path, run: Option<&Path>) -> Command {
    let mut cmd = Command::new(CORRALD);
    cmd.arg("--data-dir").arg(data);
    if let Some(run) = run {
        cmd.arg("--run-dir").arg(run);
    }
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CORRAL_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs `cmd` (a corrald) and returns its stderr; it must exit (refusing) on its own.
fn refused_start(cmd: &mut Command) -> anyhow::Result<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            anyhow::bail!("corrald started: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut stderr)?;
    ensure!(!status.success(), "corrald exited 0: {stderr}");
    Ok(stderr)
}

#[test]
fn corrald_refuses_a_world_writable_data_dir_and_a_run_dir_another_user_owns() -> Result {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::Builder::new()
        .prefix("crl-h")
        .tempdir_in("/tmp")?;
    let (data, run) = (tmp.path().join("d"), tmp.path().join("r"));
    std::fs::create_dir(&data)?;
    std::fs::create_dir(&run)?;

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777))?;
    let err = refused_start(&mut corrald(&data, Some(&run)))?;
    assert!(
        err.contains(&format!(
            "refusing data directory {}: its mode 0777 lets group or others write into it; \
             make it private (chmod 0700 {})",
            data.display(),
            data.display()
        )),
        "{err}"
    );
    assert!(!data.join("state.db").exists(), "nothing is made in it");

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
    let nobody = nix::unistd::User::from_name("nobody")?.context("user nobody")?;
    std::os::unix::fs::chown(&run, Some(nobody.uid.as_raw()), None)?;
    let err = refused_start(&mut corrald(&data, Some(&run)))?;
    assert!(
        err.contains(&format!(
            "refusing run directory {}: it is owned by uid {}, not by corrald's uid 0",
            run.display(),
            nobody.uid
        )) && err.contains("--run-dir"),
        "{err}"
    );
    assert!(!run.join("corral.sock").exists(), "no socket in it");
    Ok(())
}

/// Without `$XDG_RUNTIME_DIR` a non-root corrald runs in `/tmp/corral-<uid>`, in a directory
/// everyone can write: one that another user made first is refused, and so is one its own
/// user left open.
#[test]
fn the_tmp_run_dir_fallback_is_refused_when_another_user_made_it_or_it_is_open() -> Result {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let nobody = nix::unistd::User::from_name("nobody")?.context("user nobody")?;
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let tmp = tempfile::Builder::new()
        .prefix("crl-f")
        .tempdir_in("/tmp")?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711))?;
    let data = tmp.path().join("d");
    std::fs::create_dir(&data)?;
    std::os::unix::fs::chown(&data, Some(uid), Some(gid))?;
    let as_nobody = || {
        let mut cmd = corrald(&data, None);
        cmd.env_remove("XDG_RUNTIME_DIR")
            .env_remove("TMPDIR")
            .env("HOME", "/nonexistent")
            .uid(uid)
            .gid(gid);
        cmd
    };
    // Made by root, as an attacker would make it before the user's first start.
    let fallback = PathBuf::from(format!("/tmp/corral-{uid}"));
    let _ = std::fs::remove_dir_all(&fallback);
    std::fs::create_dir(&fallback)?;
    let result = (|| {
        std::fs::set_permissions(&fallback, std::fs::Permissions::from_mode(0o700))?;
        let err = refused_start(&mut as_nobody())?;
        ensure!(
            err.contains(&format!(
                "refusing run directory {}: it is owned by uid 0, not by corrald's uid {uid}",
                fallback.display()
            )),
            "{err}"
        );
        std::os::unix::fs::chown(&fallback, Some(uid), Some(gid))?;
        std::fs::set_permissions(&fallback, std::fs::Permissions::from_mode(0o755))?;
        let err = refused_start(&mut as_nobody())?;
        ensure!(
            err.contains(&format!(
                "refusing run directory {}: its mode 0755 lets group or others in",
                fallback.display()
            )),
            "{err}"
        );
        ensure!(
            !fallback.join("corral.sock").exists(),
            "no socket in a refused directory"
        );
        Ok(())
    })();
    std::fs::remove_dir_all(&fallback)?;
    result
}
