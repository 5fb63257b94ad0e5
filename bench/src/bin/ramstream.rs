//! RAM maps streamed end to end: corrald's CPU while real WebSocket clients each take one VM's
//! live Hilbert map at 60 fps (the memory-bridge promise: three VMs for under 5 % of a core).
//!
//! `cargo run --release -p corral-bench --bin ramstream -- [--vms 3] [--fps 60] [--side 128]
//! [--seconds 20]`
//!
//! A release corrald boots `--vms` guest-kit VMs of 256 MiB with introspection (TCG); once each
//! has booted, one client per VM opens `GET /v1/vms/{name}/memory/stream` over corrald's unix
//! socket (a WebSocket, as the web console's RAM map does) and reads every message. After a
//! warm-up, corrald's user + system time from /proc/<pid>/stat over `--seconds` of wall time is
//! its share of one core; the QEMU processes are not counted. It prints that share, the
//! frames each client received per second and the bytes per second. Informational: it exits 0
//! whether or not the target is met.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use corral_bench::flag;
use corral_client::{Client, Endpoint};
use corral_testkit::{Corrald, kit_vm, release_build, wait_console};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// What one client counted.
#[derive(Default)]
struct Counts {
    frames: AtomicU64,
    bytes: AtomicU64,
}

/// CPU seconds (user + system) process `pid` used so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("a /proc stat line")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(ticks as f64 / hz)
}

async fn watch(socket: std::path::PathBuf, name: String, side: u32, fps: u32, counts: Arc<Counts>) {
    let run = async {
        let stream = tokio::net::UnixStream::connect(&socket).await?;
        let url = format!("ws://corral/v1/vms/{name}/memory/stream?side={side}&fps={fps}");
        let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
        while let Some(msg) = ws.next().await {
            if let Message::Binary(frame) = msg? {
                counts.frames.fetch_add(1, Ordering::Relaxed);
                counts
                    .bytes
                    .fetch_add(frame.len() as u64, Ordering::Relaxed);
            }
        }
        anyhow::Ok(())
    };
    if let Err(e) = run.await {
        eprintln!("stream of {name} ended: {e}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let vms: usize = flag("--vms", 3);
    let fps: u32 = flag("--fps", 60);
    let side: u32 = flag("--side", 128);
    let seconds: u64 = flag("--seconds", 20);
    let bin = release_build(&["corral-daemon"])?;
    let d = Corrald::start(bin.join("corrald"))?;
    let pid = d.pid().context("corrald's pid")?;
    let client = Client::connect(Endpoint::Unix(d.socket())).await?;
    let names: Vec<String> = (0..vms).map(|i| format!("ram-{i}")).collect();
    for name in &names {
        client
            .create_vm(&kit_vm(name, |b| b.introspection(true)))
            .await?;
    }
    for name in &names {
        wait_console(&client, &d, name, "CORRAL_BOOT_OK", 0).await?;
    }
    let counts: Vec<Arc<Counts>> = names.iter().map(|_| Arc::default()).collect();
    for (name, c) in names.iter().zip(&counts) {
        tokio::spawn(watch(d.socket(), name.clone(), side, fps, c.clone()));
    }
    // Warm-up: the first passes map the guests' pages into corrald.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu0, wall0) = (cpu_seconds(pid)?, Instant::now());
    let before: Vec<(u64, u64)> = counts
        .iter()
        .map(|c| {
            (
                c.frames.load(Ordering::Relaxed),
                c.bytes.load(Ordering::Relaxed),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu = cpu_seconds(pid)? - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    let mut frames = Vec::new();
    let mut bytes = 0;
    for (c, (f0, b0)) in counts.iter().zip(before) {
        frames.push((c.frames.load(Ordering::Relaxed) - f0) as f64 / wall);
        bytes += c.bytes.load(Ordering::Relaxed) - b0;
    }
    if frames.contains(&0.0) {
        bail!("a stream sent nothing:\n{}", d.log());
    }
    let share = 100.0 * cpu / wall;
    println!(
        "{vms} RAM-map streams ({side}x{side}, {fps} fps asked) over {wall:.1} s: corrald used \
         {share:.2} % of one core (target < 5 %: {})",
        if share < 5.0 { "met" } else { "missed" }
    );
    println!(
        "frames received per second per stream: {}; {:.2} MB/s in all",
        frames
            .iter()
            .map(|f| format!("{f:.1}"))
            .collect::<Vec<_>>()
            .join(", "),
        bytes as f64 / wall / 1e6
    );
    Ok(())
}
