//! Development environments: `corral up` of a one-VM project on a built Debian image against
//! a `multipass launch`-like flow (`corral vm create --image debian-12 --ssh --wait-ssh`), the
//! image build (a build-cache hit, and optionally a cold mmdebstrap build), and unpacking a
//! source tree into the shared project folder against the guest's own disk. One run, one
//! corrald, medians and ratios.
//!
//! `cargo run -p corral-bench --bin devenv -- [--runs 3] [--unpack-runs 5] [--cold-build]
//! [--bin-dir target/debug]`
//!
//! The Debian build is taken from the build cache the tests fill
//! (`$CORRAL_TEST_CACHE/image-builds`, default /var/tmp/corral-test-cache); on a cold cache the
//! first build takes minutes and needs Debian's mirror. `--cold-build` also times a build into
//! an empty cache. Template starts: the booted VM saved once (`corral template create`), then
//! `vm create --template --wait-ssh` against the cold `vm create --image --wait-ssh` (target:
//! ≤ 0.15×).
//!
//! The unpack is a tar of this repository's files and Rust crate sources from the cargo
//! registry (thousands of small files), extracted in the guest and followed by `sync`, timed
//! by the guest's clock; target: the share at ≥ 0.5× the disk's speed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use corral_bench::{flag, median, ratio};
use corral_testkit::{Cli, Corrald};

/// The files the unpack benchmark's tree holds, at least.
const TREE_FILES: usize = 3000;

fn main() -> anyhow::Result<()> {
    let runs: usize = flag("--runs", 3);
    let unpack_runs: usize = flag("--unpack-runs", 5);
    let cold_build = std::env::args().any(|a| a == "--cold-build");
    if runs == 0 || unpack_runs == 0 {
        bail!("--runs and --unpack-runs must be at least 1");
    }
    let bin_dir: PathBuf = flag(
        "--bin-dir",
        std::env::current_exe()?
            .parent()
            .context("the benchmark's own folder")?
            .to_owned(),
    );
    let (corrald, corral) = (bin_dir.join("corrald"), bin_dir.join("corral"));
    for bin in [&corrald, &corral] {
        if !bin.is_file() {
            bail!(
                "{} is missing: cargo build -p corral-daemon -p corral-cli",
                bin.display()
            );
        }
    }
    let cache = std::env::var_os("CORRAL_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/corral-test-cache"))
        .join("image-builds");
    let d = Corrald::builder(&corrald)
        .args(&[
            "--build-cache",
            cache.to_str().context("a UTF-8 cache path")?,
            "--port-range",
            "42000-42099",
        ])
        .quiet()
        .start()?;
    let keys = tempfile::tempdir()?;
    let cli = Cli::new(&corral, &d).env("CORRAL_SSH_DIR", keys.path());
    println!(
        "devenv benchmark: {runs} runs of each start, {unpack_runs} unpacks, x86_64, TCG where \
         KVM is unusable, binaries from {}",
        bin_dir.display()
    );

    // Image build: a hit in the build cache (the first build of a cold cache is also shown).
    let started = Instant::now();
    cli.ok(&["image", "build", "debian-12"]);
    let first_build = started.elapsed();
    let started = Instant::now();
    cli.ok(&["image", "build", "debian-12", "--name", "debian-12-again"]);
    let cached_build = started.elapsed();
    let cold = if cold_build {
        let empty = tempfile::tempdir()?;
        let cold_d = Corrald::builder(&corrald)
            .args(&["--build-cache", empty.path().to_str().context("UTF-8")?])
            .quiet()
            .start()?;
        let cold_cli = Cli::new(&corral, &cold_d);
        let started = Instant::now();
        cold_cli.ok(&["image", "build", "debian-12"]);
        Some(started.elapsed())
    } else {
        None
    };

    // The project: one VM, the default folder (the project at /project), the tree's tarball
    // in it.
    let root = tempfile::Builder::new()
        .prefix("cdb")
        .tempdir_in("/var/tmp")?;
    let project = root.path().join("bench");
    std::fs::create_dir(&project)?;
    let file = project.join("corral.yaml");
    std::fs::write(
        &file,
        "vms:\n  dev:\n    image: debian-12\n    memory: 1G\n",
    )?;
    let files = make_tree(&project.join("src.tar"))?;
    let file_arg = file.to_str().context("UTF-8")?;

    let (mut up, mut create) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let mut one = |which: bool| -> anyhow::Result<()> {
            let started = Instant::now();
            if which {
                cli.ok(&["up", "-f", file_arg, "--timeout", "900"]);
                up.push(started.elapsed());
                if i + 1 < runs {
                    cli.ok(&["destroy", "-f", file_arg]);
                    cli.wait_gone("vm", "bench-dev");
                }
            } else {
                cli.ok(&[
                    "vm",
                    "create",
                    "plain",
                    "--image",
                    "debian-12",
                    "--memory",
                    "1G",
                    "--ssh",
                    "--wait-ssh",
                    "--ssh-timeout",
                    "900",
                ]);
                create.push(started.elapsed());
            }
            Ok(())
        };
        // The project's VM goes last, so the unpack runs in it.
        one(false)?;
        if i + 1 < runs {
            cli.ok(&["vm", "delete", "plain", "--force", "--wait"]);
        }
        one(true)?;
        eprintln!(
            "  run {}: up {:.1} s | vm create --image --wait-ssh {:.1} s",
            i + 1,
            up[i].as_secs_f64(),
            create[i].as_secs_f64()
        );
    }

    // Template starts: the last booted `plain` VM saved once, then VMs started from it,
    // timed from `vm create` to ssh answering, like the cold boots above.
    let started = Instant::now();
    cli.ok(&["template", "create", "tpl", "--from", "plain"]);
    let save = started.elapsed();
    cli.ok(&["vm", "delete", "plain", "--force", "--wait"]);
    let mut from_template = Vec::new();
    for i in 0..runs {
        let started = Instant::now();
        cli.ok(&[
            "vm",
            "create",
            "warm",
            "--template",
            "tpl",
            "--wait-ssh",
            "--ssh-timeout",
            "900",
        ]);
        from_template.push(started.elapsed());
        cli.ok(&["vm", "delete", "warm", "--force", "--wait"]);
        eprintln!(
            "  template start {}: {:.1} s",
            i + 1,
            from_template[i].as_secs_f64()
        );
    }
    cli.ok(&["template", "delete", "tpl"]);

    let ssh = |cmd: &str| cli.ok(&["ssh", "-f", file_arg, "--", cmd]);
    ssh("cat /project/src.tar > /dev/null");
    let (mut disk, mut share) = (Vec::new(), Vec::new());
    // The final `sync`'s part of each: on the share it is a syncfs() of the host's file
    // system (virtiofsd's FUSE_SYNCFS), on the disk a flush of the VM's one image file.
    let (mut disk_sync, mut share_sync) = (Vec::new(), Vec::new());
    for i in 0..unpack_runs {
        // Alternating which goes first.
        let order = if i % 2 == 0 {
            ["/root/u", "/project/u"]
        } else {
            ["/project/u", "/root/u"]
        };
        for dir in order {
            let out = ssh(&format!(
                "rm -rf {dir} && mkdir {dir} && sync && s=$(date +%s%N) && \
                 tar -xf /project/src.tar -C {dir} && t=$(date +%s%N) && sync && \
                 e=$(date +%s%N) && echo $((e - s)) $((e - t)) && find {dir} -type f | wc -l"
            ));
            let mut lines = out.lines();
            let (nanos, sync_nanos): (u64, u64) = lines
                .next()
                .and_then(|l| {
                    let (all, sync) = l.trim().split_once(' ')?;
                    Some((all.parse().ok()?, sync.parse().ok()?))
                })
                .context(format!("the guest's timing in {out:?}"))?;
            let found: usize = lines
                .next()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0);
            if found != files {
                bail!("{dir}: {found} files unpacked, {files} in the tarball");
            }
            let took = Duration::from_nanos(nanos);
            let synced = Duration::from_nanos(sync_nanos);
            if dir.starts_with("/project") {
                share.push(took);
                share_sync.push(synced);
            } else {
                disk.push(took);
                disk_sync.push(synced);
            }
        }
        eprintln!(
            "  unpack {}: disk {:.2} s (sync {:.2} s) | shared folder {:.2} s (sync {:.2} s)",
            i + 1,
            disk[i].as_secs_f64(),
            disk_sync[i].as_secs_f64(),
            share[i].as_secs_f64(),
            share_sync[i].as_secs_f64()
        );
    }
    ssh("rm -rf /project/u /root/u");
    cli.ok(&["destroy", "-f", file_arg]);

    let (up_m, create_m) = (median(&up), median(&create));
    let (disk_m, share_m) = (median(&disk), median(&share));
    println!();
    println!("{:<52} {:>10} {:>8}", "median", "time", "ratio");
    println!(
        "{:<52} {:>8.1} s {:>8}",
        "vm create --image --wait-ssh (multipass-like)",
        create_m.as_secs_f64(),
        "1.000"
    );
    println!(
        "{:<52} {:>8.1} s {:>8.3}",
        "corral up, cold boot (vs multipass-like)",
        up_m.as_secs_f64(),
        ratio(up_m, create_m)
    );
    let warm_m = median(&from_template);
    println!(
        "{:<52} {:>8.1} s {:>8.3}",
        "vm create --template --wait-ssh (vs cold boot)",
        warm_m.as_secs_f64(),
        ratio(warm_m, create_m)
    );
    println!(
        "{:<52} {:>8.1} s",
        "template create (guest paused, RAM + disk saved)",
        save.as_secs_f64()
    );
    println!(
        "{:<52} {:>8.1} s",
        "image build debian-12, first in this run",
        first_build.as_secs_f64()
    );
    println!(
        "{:<52} {:>8.1} s",
        "image build, build-cache hit",
        cached_build.as_secs_f64()
    );
    match cold {
        Some(cold) => println!(
            "{:<52} {:>8.1} s {:>8.3}",
            "image build, cold (mmdebstrap; cached/cold)",
            cold.as_secs_f64(),
            ratio(cached_build, cold)
        ),
        None => println!(
            "{:<52} {:>10}",
            "image build, cold (--cold-build)", "skipped"
        ),
    }
    println!(
        "{:<52} {:>8.2} s",
        format!("unpack {files} files into the guest's disk"),
        disk_m.as_secs_f64()
    );
    println!(
        "{:<52} {:>8.2} s {:>8.3}",
        "unpack into the shared folder (speed vs disk)",
        share_m.as_secs_f64(),
        ratio(disk_m, share_m)
    );
    let (disk_s, share_s) = (median(&disk_sync), median(&share_sync));
    println!(
        "{:<52} {:>8.2} s",
        "  of which the final sync, disk",
        disk_s.as_secs_f64()
    );
    println!(
        "{:<52} {:>8.2} s",
        "  of which the final sync, shared folder",
        share_s.as_secs_f64()
    );
    Ok(())
}

/// Writes a tar of this repository's tracked files and enough crate sources from the cargo
/// registry to hold at least [`TREE_FILES`] files; returns how many files it holds.
fn make_tree(tar: &Path) -> anyhow::Result<usize> {
    let repo = corral_testkit::workspace_root();
    let staging = tempfile::tempdir()?;
    let out = Command::new("git")
        .args(["archive", "--format=tar", "--prefix=corral/", "HEAD"])
        .current_dir(&repo)
        .output()
        .context("git archive")?;
    if !out.status.success() {
        bail!("git archive: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::write(staging.path().join("corral.tar"), &out.stdout)?;
    let untar = |archive: &Path, into: &Path| -> anyhow::Result<()> {
        let ok = Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(into)
            .status()?
            .success();
        if !ok {
            bail!("tar -xf {}", archive.display());
        }
        Ok(())
    };
    let tree = staging.path().join("tree");
    std::fs::create_dir(&tree)?;
    untar(&staging.path().join("corral.tar"), &tree)?;
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("CARGO_HOME or HOME")?;
    let mut registries: Vec<PathBuf> = std::fs::read_dir(home.join("registry/src"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    registries.sort();
    let mut crates: Vec<PathBuf> = registries
        .iter()
        .flat_map(|r| std::fs::read_dir(r).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect();
    crates.sort();
    let mut count = count_files(&tree);
    let deps = tree.join("deps");
    std::fs::create_dir(&deps)?;
    for krate in crates {
        if count >= TREE_FILES {
            break;
        }
        let ok = Command::new("cp")
            .arg("-r")
            .arg(&krate)
            .arg(&deps)
            .status()?
            .success();
        if !ok {
            bail!("copying {}", krate.display());
        }
        count = count_files(&tree);
    }
    if count < TREE_FILES {
        bail!("only {count} files found for the unpack tree (want {TREE_FILES})");
    }
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(tar)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()?
        .success();
    if !ok {
        bail!("tar -cf {}", tar.display());
    }
    Ok(count)
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}
