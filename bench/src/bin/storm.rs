//! Restart storms stay cheap: with many VMs crash-looping under restart policy `always`,
//! corrald's API must stay responsive.
//!
//! ```text
//! cargo run --release -p corral-bench --bin storm -- [--vms 100] [--seconds 60] [--samples 400]
//! ```
//!
//! One release corrald. Baseline: list latency over gRPC with `--vms` stopped VMs (idle). Storm:
//! every VM declared running with policy `always`, while this program SIGKILLs each QEMU the
//! moment it appears, so every VM crash-loops; list latency is measured again during the storm.
//! Prints p50/p99 of both and their ratio (target storm/idle ≤ 2×), QEMU starts per second
//! (bounded by the restart backoff) and corrald's CPU use during the storm.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corral_bench::{flag, ms, percentile, ratio};
use corral_client::{Client, Endpoint};
use corral_contract::{Arch, Vm};
use corral_testkit::{Corrald, GuestKit, release_build};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let vms: usize = flag("--vms", 100);
    let seconds: u64 = flag("--seconds", 60);
    let samples: usize = flag("--samples", 400);
    eprintln!("building corral-daemon (release)…");
    let corrald = release_build(&["corral-daemon"])?.join("corrald");
    let daemon = Corrald::builder(&corrald).quiet().start()?;
    let client = Client::connect(Endpoint::Unix(daemon.socket())).await?;
    let kit = GuestKit::get(Arch::X86_64)?;
    for i in 0..vms {
        let vm: Vm = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("storm-{i}")},
            "spec": {
                "memory": "128M",
                "power": "stopped",
                "restart_policy": "always",
                "boot": {"kernel": {
                    "kernel": kit.kernel(),
                    "initrd": kit.initrd(),
                    "cmdline": format!("console={} quiet panic=-1", kit.console()),
                }},
            },
        }))?;
        client.create_vm(&vm).await?;
    }
    let pace = Duration::from_millis(50);
    let idle = list_latencies(&client, samples, pace).await?;

    // The storm: every VM declared running; each QEMU killed as soon as it shows.
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        let run_dir = daemon.run_dir();
        tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                for pid in corral_testkit::qemu_pids_under(&run_dir) {
                    seen.insert(pid);
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen.len()
        })
    };
    let cpu_before = cpu_seconds(daemon.pid().unwrap_or(0));
    let storm_started = Instant::now();
    for i in 0..vms {
        client.start_vm(&format!("storm-{i}")).await?;
    }
    // Let the crash loop get going before measuring.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut storm = Vec::new();
    let until = storm_started + Duration::from_secs(seconds);
    while Instant::now() < until {
        storm.extend(list_latencies(&client, 50, pace).await?);
    }
    let elapsed = storm_started.elapsed();
    let cpu = cpu_seconds(daemon.pid().unwrap_or(0)) - cpu_before;
    stop.store(true, Ordering::Relaxed);
    let starts = killer.await?;
    for i in 0..vms {
        let _ = client.stop_vm(&format!("storm-{i}"), true).await;
    }

    let (idle50, idle99) = (percentile(&idle, 50.0), percentile(&idle, 99.0));
    let (storm50, storm99) = (percentile(&storm, 50.0), percentile(&storm, 99.0));
    println!("restart storm: {vms} VMs under policy always, every QEMU SIGKILLed on sight");
    println!(
        "list of {vms} VMs, idle:   p50 {} p99 {} ({} calls)",
        ms(idle50),
        ms(idle99),
        idle.len()
    );
    println!(
        "list of {vms} VMs, storm:  p50 {} p99 {} ({} calls)",
        ms(storm50),
        ms(storm99),
        storm.len()
    );
    println!(
        "ratio storm/idle: p50 {:.2}x, p99 {:.2}x (target <= 2x)",
        ratio(storm50, idle50),
        ratio(storm99, idle99)
    );
    println!(
        "QEMU starts: {starts} in {:.0} s = {:.1}/s ({:.2}/s per VM; the backoff bounds it)",
        elapsed.as_secs_f64(),
        starts as f64 / elapsed.as_secs_f64(),
        starts as f64 / elapsed.as_secs_f64() / vms as f64
    );
    println!(
        "corrald CPU during the storm: {:.1} % of one core",
        100.0 * cpu / elapsed.as_secs_f64()
    );
    Ok(())
}

/// Times `n` gRPC lists of every VM, `pace` apart.
async fn list_latencies(
    client: &Client,
    n: usize,
    pace: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        client.list_vms("").await?;
        out.push(t0.elapsed());
        tokio::time::sleep(pace).await;
    }
    Ok(out)
}

/// User + system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) are space-separated; utime and stime
    // are the 14th and 15th fields overall.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks / hz
}
