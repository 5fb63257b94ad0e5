//! Storage: image import throughput against `cp` of the same file, and clone-to-boot latency,
//! in one run.
//!
//! `cargo run --release -p corral-bench --bin storage -- [--runs 3] [--size-mib 1024] [--boots 5]`
//!
//! Import: the image store's one-pass import (read, BLAKE3, write, fsync, rename into
//! `blake3/<hex>`; what corrald runs for `corral image import --path`) against `cp` of the
//! same file to the same directory, and against `cp` plus `sync` of the copy (the import
//! makes its copy durable; plain `cp` leaves it in the page cache). Runs alternate; the
//! source is read once beforehand so both read from the page cache.
//!
//! Files go under `$TMPDIR` (default `/var/tmp`); `TMPDIR=/dev/shm` takes the disk (its
//! free-space fragmentation and other users' I/O) out of the comparison.
//!
//! Clone-to-boot: a thin qcow2 clone of the guest kit's root disk (`qemu-img create -b`), then a
//! QEMU boot with its root on the clone until the guest's boot marker, against the same boot
//! on a copy of the image made beforehand (no clone in the timed path).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use corral_bench::raw::uuid_like;
use corral_bench::{flag, median, ms, ratio};
use corral_contract::{Arch, DiskFormat};
use corral_hypervisor::{DiskConfig, Hypervisor, StopMode};
use corral_qemu::{QemuBackend, QemuBackendConfig};
use corral_storage::{Cas, QemuImg};
use corral_testkit::{BOOT_MARKER, GuestKit, TestVm};

fn write_source(path: &Path, bytes: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    // xorshift: bytes that neither compress nor dedupe, made fast.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..bytes / block.len() as u64 {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block)?;
    }
    f.flush()?;
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// One timed way of copying the file.
type Contender<'a> = Box<dyn Fn() -> anyhow::Result<Duration> + 'a>;

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1 << 20) as f64
}

fn import_bench(dir: &Path, runs: usize, size_mib: u64) -> anyhow::Result<()> {
    let bytes = size_mib << 20;
    let src = dir.join("source.raw");
    write_source(&src, bytes)?;
    // Warm the page cache so that every contender reads from memory.
    let t0 = Instant::now();
    let _ = corral_storage::hash_file(&src)?;
    eprintln!(
        "  read + blake3 of the source: {} ({:.0} MiB/s)",
        ms(t0.elapsed()),
        mib_s(bytes, t0.elapsed())
    );
    let t0 = Instant::now();
    let _ = blake3::hash(&std::fs::read(&src)?);
    eprintln!(
        "  blake3 of the source in memory (incl. read): {}",
        ms(t0.elapsed())
    );
    let (mut cp, mut cp_sync, mut import) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let mut round: Vec<(&str, Contender)> = vec![
            (
                "cp",
                Box::new(|| {
                    let dst = dir.join("cp.raw");
                    let t0 = Instant::now();
                    run(Command::new("cp").arg(&src).arg(&dst))?;
                    let d = t0.elapsed();
                    run(Command::new("sync").arg(&dst))?;
                    Ok(d)
                }),
            ),
            (
                "cp+sync",
                Box::new(|| {
                    let dst = dir.join("cps.raw");
                    let t0 = Instant::now();
                    run(Command::new("cp").arg(&src).arg(&dst))?;
                    run(Command::new("sync").arg(&dst))?;
                    Ok(t0.elapsed())
                }),
            ),
            (
                "import",
                Box::new(|| {
                    let cas = Cas::open(dir.join("images"))?;
                    let t0 = Instant::now();
                    let mut w = cas.writer()?;
                    w.copy_from(std::fs::File::open(&src)?, "source", |_| {})?;
                    let copied = t0.elapsed();
                    w.finish()?;
                    let synced = t0.elapsed();
                    let blob = w.commit()?;
                    let d = t0.elapsed();
                    if std::env::var_os("CORRAL_BENCH_PHASES").is_some() {
                        eprintln!(
                            "    import phases: copy+hash {} fsync {} commit {}",
                            ms(copied),
                            ms(synced - copied),
                            ms(d - synced)
                        );
                    }
                    anyhow::ensure!(
                        !blob.existed && blob.size == bytes,
                        "import stored {blob:?}"
                    );
                    Ok(d)
                }),
            ),
        ];
        if i % 2 == 1 {
            round.reverse();
        }
        for (name, f) in &round {
            // Start each from a quiet disk: the previous contender's writeback must not be
            // charged to the next one.
            run(&mut Command::new("sync"))?;
            let d = f()?;
            eprintln!(
                "  run {} {name}: {} ({:.0} MiB/s)",
                i + 1,
                ms(d),
                mib_s(bytes, d)
            );
            match *name {
                "cp" => cp.push(d),
                "cp+sync" => cp_sync.push(d),
                _ => import.push(d),
            }
        }
        // Outputs go after the round, so that freeing (and discarding) a copy's blocks is not
        // charged to whoever writes next.
        std::fs::remove_file(dir.join("cp.raw"))?;
        std::fs::remove_file(dir.join("cps.raw"))?;
        std::fs::remove_dir_all(dir.join("images"))?;
    }
    let (cp, cp_sync, import) = (median(&cp), median(&cp_sync), median(&import));
    println!("import of a {size_mib} MiB file, median of {runs} runs (page-cached source):");
    println!(
        "  cp                        {:>10}  {:>6.0} MiB/s",
        ms(cp),
        mib_s(bytes, cp)
    );
    println!(
        "  cp + sync                 {:>10}  {:>6.0} MiB/s",
        ms(cp_sync),
        mib_s(bytes, cp_sync)
    );
    println!(
        "  corral import (blake3)    {:>10}  {:>6.0} MiB/s",
        ms(import),
        mib_s(bytes, import)
    );
    println!(
        "  throughput ratio import/cp = {:.2}, import/(cp + sync) = {:.2} (target >= 0.8)",
        ratio(cp, import),
        ratio(cp_sync, import)
    );
    std::fs::remove_file(&src)?;
    Ok(())
}

async fn boot_on(backend: &QemuBackend, kit: &GuestKit, disk: &Path) -> anyhow::Result<Duration> {
    let _ = kit;
    let uid = uuid_like();
    let scratch = tempfile::Builder::new()
        .prefix("corral-b")
        .tempdir_in("/tmp")?;
    let mut config = TestVm::builder(Arch::X86_64)
        .cmdline("corral.root=/dev/vda")
        .config(scratch.path(), &uid)?;
    config.disks = vec![DiskConfig {
        path: disk.to_path_buf(),
        format: DiskFormat::Qcow2,
        readonly: false,
        serial: None,
    }];
    let t0 = Instant::now();
    backend.start(&config).await?;
    let console = backend.console(&config.uid)?;
    let (scrollback, mut rx) = console.subscribe();
    let mut seen = scrollback;
    let deadline = t0 + Duration::from_secs(120);
    while !String::from_utf8_lossy(&seen).contains(BOOT_MARKER) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(bytes)) => seen.extend_from_slice(&bytes),
            _ => bail!("no boot marker from the guest on {}", disk.display()),
        }
    }
    let d = t0.elapsed();
    backend.stop(&config.uid, StopMode::Force).await?;
    backend.cleanup(&config.uid).await?;
    Ok(d)
}

async fn clone_bench(dir: &Path, boots: usize) -> anyhow::Result<()> {
    if boots == 0 {
        return Ok(());
    }
    let kit = GuestKit::get(Arch::X86_64)?;
    let img = QemuImg::default();
    let cas = Cas::open(dir.join("images"))?;
    let base = cas.import_file(&kit.rootfs_qcow2(), |_| {})?;
    let run_dir = tempfile::Builder::new()
        .prefix("corral-b")
        .tempdir_in("/tmp")?;
    let backend = QemuBackend::new(QemuBackendConfig::new(run_dir.path()))?;
    backend.emulator(Arch::X86_64).await?;
    let (mut direct, mut cloned, mut clone_only) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..boots {
        let copy = dir.join(format!("copy-{i}.qcow2"));
        std::fs::copy(&base.path, &copy)?;
        let clone = dir.join(format!("clone-{i}.qcow2"));
        let run_direct = async { boot_on(&backend, &kit, &copy).await };
        let run_clone = async {
            let t0 = Instant::now();
            img.create(&clone, "qcow2", None, Some((&base.path, "qcow2")))?;
            let c = t0.elapsed();
            let boot = boot_on(&backend, &kit, &clone).await?;
            anyhow::Ok((c, c + boot))
        };
        let (d, (c, total)) = if i % 2 == 0 {
            let d = run_direct.await?;
            (d, run_clone.await?)
        } else {
            let r = run_clone.await?;
            (run_direct.await?, r)
        };
        eprintln!(
            "  boot {}: image copy {} | clone {} + boot = {}",
            i + 1,
            ms(d),
            ms(c),
            ms(total)
        );
        direct.push(d);
        cloned.push(total);
        clone_only.push(c);
        std::fs::remove_file(&copy)?;
        std::fs::remove_file(&clone)?;
    }
    let (direct, cloned, clone_only) = (median(&direct), median(&cloned), median(&clone_only));
    println!(
        "clone-to-boot, median of {boots} TCG boots (root on a virtio-blk qcow2, boot marker):"
    );
    println!("  thin clone (qemu-img create -b)  {:>10}", ms(clone_only));
    println!("  clone + boot                     {:>10}", ms(cloned));
    println!("  boot on a ready copy             {:>10}", ms(direct));
    println!(
        "  ratio (clone + boot)/(boot on a copy) = {:.2}",
        ratio(cloned, direct)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = flag("--runs", 3);
    let size_mib: u64 = flag("--size-mib", 1024);
    let boots: usize = flag("--boots", 5);
    let dir = tempfile::Builder::new()
        .prefix("corral-bench-storage")
        .tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| "/var/tmp".into()))?;
    println!("storage benchmark in {}", dir.path().display());
    import_bench(dir.path(), runs, size_mib)?;
    clone_bench(dir.path(), boots).await?;
    Ok(())
}
