//! Boot latency: raw `qemu-system-x86_64` against Corral's QEMU backend, same arguments, same
//! run, alternating so that machine noise hits both alike.
//!
//! `cargo run --release -p corral-bench --bin boot -- [--runs 7] [--machine q35|microvm]`
//!
//! Prints medians of spawn→QMP greeting and spawn→guest boot marker for each, and the ratios
//! backend/raw. The backend's "QMP-ready" is `start()` returning: monitor connected,
//! console attached, vCPUs running.

use std::time::{Duration, Instant};

use anyhow::Context;
use corral_bench::raw::{self, contains, uuid_like};
use corral_bench::{flag, median, ms, ratio};
use corral_contract::{Arch, Machine};
use corral_hypervisor::{Hypervisor, StopMode};
use corral_qemu::{QemuBackend, QemuBackendConfig};
use corral_testkit::{BOOT_MARKER, TestVm};

struct Sample {
    qmp: Duration,
    /// Raw only: monitor negotiated (the backend's `qmp` already includes that).
    negotiated: Duration,
    boot: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = flag("--runs", 7);
    let machine: Machine = flag("--machine", Machine::Q35);
    let builder = TestVm::builder(Arch::X86_64).machine(machine);

    let mut raw = Vec::new();
    let mut corral = Vec::new();
    println!("boot benchmark: {runs} runs each, x86_64 {machine}, TCG where KVM is unusable");
    for i in 0..runs {
        // Alternate which goes first so drift over the run hits both alike.
        if i % 2 == 0 {
            raw.push(raw_sample(&builder).await?);
            corral.push(run_backend(&builder).await?);
        } else {
            corral.push(run_backend(&builder).await?);
            raw.push(raw_sample(&builder).await?);
        }
        eprintln!(
            "  run {}: raw qmp {} boot {} | corral ready {} boot {}",
            i + 1,
            ms(raw[i].qmp),
            ms(raw[i].boot),
            ms(corral[i].qmp),
            ms(corral[i].boot)
        );
    }
    let med =
        |s: &[Sample], f: fn(&Sample) -> Duration| median(&s.iter().map(f).collect::<Vec<_>>());
    let (raw_qmp, raw_boot) = (med(&raw, |s| s.qmp), med(&raw, |s| s.boot));
    let raw_negotiated = med(&raw, |s| s.negotiated);
    let (c_qmp, c_boot) = (med(&corral, |s| s.qmp), med(&corral, |s| s.boot));
    println!();
    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        "median", "raw qemu", "corral", "ratio"
    );
    println!(
        "{:<28} {:>12} {:>12} {:>8.3}",
        "spawn -> QMP ready",
        ms(raw_qmp),
        ms(c_qmp),
        ratio(c_qmp, raw_qmp)
    );
    println!(
        "{:<28} {:>12} {:>12} {:>8.3}",
        "spawn -> QMP negotiated",
        ms(raw_negotiated),
        ms(c_qmp),
        ratio(c_qmp, raw_negotiated)
    );
    println!(
        "{:<28} {:>12} {:>12} {:>8.3}",
        "spawn -> guest boot marker",
        ms(raw_boot),
        ms(c_boot),
        ratio(c_boot, raw_boot)
    );
    println!();
    println!(
        "backend overhead to QMP-ready: {} over raw's greeting (target <= 20 ms), {} over raw's \
         negotiated monitor (both sides able to take commands)",
        ms(c_qmp.saturating_sub(raw_qmp)),
        ms(c_qmp.saturating_sub(raw_negotiated))
    );
    println!(
        "boot-marker ratio: {:.3} (target <= 1.05)",
        ratio(c_boot, raw_boot)
    );
    Ok(())
}

async fn run_backend(builder: &corral_testkit::TestVmBuilder) -> anyhow::Result<Sample> {
    let dir = tempfile::Builder::new()
        .prefix("corral-b")
        .tempdir_in("/tmp")?;
    let uid = uuid_like();
    let config = builder.config(dir.path(), &uid)?;
    let backend = QemuBackend::new(QemuBackendConfig::new(dir.path()))?;
    // Probe the emulator outside the timed region: a daemon does it once at start-up.
    backend.emulator(config.arch).await?;
    let t0 = Instant::now();
    backend.start(&config).await?;
    let qmp = t0.elapsed();
    let console = backend.console(&uid)?;
    let (scrollback, mut rx) = console.subscribe();
    let mut seen = scrollback;
    while !contains(&seen, BOOT_MARKER.as_bytes()) {
        let chunk = tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await
            .context("boot timed out")??;
        seen.extend_from_slice(&chunk);
    }
    let boot = t0.elapsed();
    backend.stop(&uid, StopMode::Force).await?;
    backend.cleanup(&uid).await?;
    Ok(Sample {
        qmp,
        negotiated: qmp,
        boot,
    })
}

async fn raw_sample(builder: &corral_testkit::TestVmBuilder) -> anyhow::Result<Sample> {
    let sample = raw::run(builder, true).await?;
    Ok(Sample {
        qmp: sample.qmp,
        negotiated: sample.negotiated,
        boot: sample.boot.unwrap_or_default(),
    })
}
