//! Live migration through Corral against the same migration driven by hand over QMP, in one
//! run: a 256 MiB guest, idle and with its memory churning, moved back and forth.
//!
//! `cargo run --release -p corral-bench --bin migrate -- [--runs 5]`
//!
//! Corral: two nodes (`corrald --role all`, release build) on a real etcd; each run asks
//! `migrate` and polls until the VM runs on the other node (total, as the caller sees it) and
//! reads QEMU's own downtime and total from `status.migration`. By hand: the guest kit's VM in
//! one QEMU through the backend, a second QEMU started with `-incoming`, `migrate-incoming`,
//! `migrate` and `query-migrate` until completed, then `cont` — the same steps without the
//! store, the controllers and the status writes. Churn: the guest rewrites 32 MiB of its RAM
//! with random bytes in a loop (`dd` into its RAM-backed root), so pages are dirtied while
//! they are sent; each side waits for the guest to say the churn runs.
//! Guest-side downtime: the guest prints a tick every 10 ms on its console (both ways, idle
//! and churning); the bench watches the serial logs of the source and the target grow, every
//! millisecond, and takes the gap from the last tick that left the source to the first that
//! arrived from the target — what the guest's users see, switch of owner and resume included.
//! Prints medians and p99s, and the ratios Corral ÷ by hand (target ≤ 1.1× for both).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corral_client::{Client, Endpoint};
use corral_contract::names::annotations;
use corral_contract::{Arch, ByteSize, MigrationPhase, Phase, Vm};
use corral_hypervisor::Hypervisor;
use corral_testkit::{Corrald, EtcdCluster, TestVm, kit_vm, release_build};

/// The guest's memory churn: 32 MiB of random bytes rewritten again and again (random, so
/// QEMU's zero-page shortcut does not apply), and a line saying it started.
const CHURN: &str = "while :; do dd if=/dev/urandom of=/churn bs=1M count=32 2>/dev/null; done & echo CHURN_$((6*7))";

/// What the guest prints once the churn runs.
const CHURNING: &str = "CHURN_42";

/// The guest's ticks: a line every 10 ms, and a line saying they started.
const TICKS: &str = "while :; do echo .; usleep 10000; done & echo TICK_$((6*7))";

/// What the guest prints once it ticks.
const TICKING: &str = "TICK_42";

/// Watches files grow from a thread, every millisecond: the instants each one grew at.
struct Growth {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Vec<Instant>>>,
}

impl Growth {
    fn start(files: Vec<PathBuf>) -> Growth {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let len = |f: &Path| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            let mut last: Vec<u64> = files.iter().map(|f| len(f)).collect();
            let mut grew = vec![Vec::new(); files.len()];
            while !flag.load(Ordering::Relaxed) {
                let now = Instant::now();
                for (i, f) in files.iter().enumerate() {
                    let l = len(f);
                    // A log started afresh (or rotated) is a new baseline, not a tick.
                    if l > last[i] {
                        grew[i].push(now);
                    }
                    last[i] = l;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            grew
        });
        Growth { stop, thread }
    }

    fn stop(self) -> Vec<Vec<Instant>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The gap the guest saw: from the last tick out of the source before the first one out of
/// the target, to that one; in milliseconds.
fn guest_gap(grew: &[Vec<Instant>]) -> f64 {
    let [source, target] = grew else {
        return f64::NAN;
    };
    let Some(first) = target.first() else {
        return f64::NAN;
    };
    source
        .iter()
        .rev()
        .find(|t| *t < first)
        .map_or(f64::NAN, |last| (*first - *last).as_secs_f64() * 1e3)
}

fn flag(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

/// One migration's figures, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Move {
    /// From the request to the guest running on the target, as the caller sees it.
    wall: f64,
    /// QEMU's total migration time.
    total: f64,
    /// QEMU's downtime.
    downtime: f64,
    /// The gap in the guest's ticks across the switch.
    guest: f64,
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn report(label: &str, moves: &[Move]) -> (f64, f64, f64) {
    let col = |f: fn(&Move) -> f64| moves.iter().map(f).collect::<Vec<_>>();
    let (wall, total, down) = (col(|m| m.wall), col(|m| m.total), col(|m| m.downtime));
    let guest = col(|m| m.guest);
    println!(
        "{label:<18} wall p50 {:>6.0} ms p99 {:>6.0} | QEMU total p50 {:>6.0} ms p99 {:>6.0} | \
         downtime p50 {:>4.0} ms p99 {:>4.0} | guest gap p50 {:>5.0} ms p99 {:>5.0}",
        quantile(wall.clone(), 0.5),
        quantile(wall.clone(), 0.99),
        quantile(total.clone(), 0.5),
        quantile(total, 0.99),
        quantile(down.clone(), 0.5),
        quantile(down.clone(), 0.99),
        quantile(guest.clone(), 0.5),
        quantile(guest.clone(), 0.99),
    );
    (
        quantile(wall, 0.5),
        quantile(down, 0.5),
        quantile(guest, 0.5),
    )
}

/// The serial log of VM `uid` under a run directory.
fn serial_log(run_dir: &Path, uid: &str) -> PathBuf {
    run_dir.join("vms").join(uid).join("serial.log")
}

/// Moves `name` to the other node `runs` times through Corral (nodes `node-a` and `node-b`,
/// whose run directories are `runs_dirs`).
async fn through_corral(
    c: &Client,
    name: &str,
    runs: u64,
    run_dirs: [&Path; 2],
) -> anyhow::Result<Vec<Move>> {
    let mut moves = Vec::new();
    for _ in 0..runs {
        let vm = c.get_vm(name).await?;
        let from = vm.status.node.unwrap_or_default();
        let (to, logs) = if from == "node-a" {
            ("node-b", [run_dirs[0], run_dirs[1]])
        } else {
            ("node-a", [run_dirs[1], run_dirs[0]])
        };
        let growth = Growth::start(
            logs.iter()
                .map(|d| serial_log(d, &vm.metadata.uid))
                .collect(),
        );
        let t0 = Instant::now();
        let asked = c.migrate_vm(name, Some(to)).await?;
        let request = asked.metadata.annotations[annotations::MIGRATE_TO].clone();
        let vm = loop {
            let vm: Vm = c.get_vm(name).await?;
            let m = vm.status.migration.clone().unwrap_or_default();
            if m.request == request {
                anyhow::ensure!(
                    !matches!(m.phase, MigrationPhase::Failed | MigrationPhase::Cancelled),
                    "migration {:?}: {:?}",
                    m.phase,
                    m.message
                );
                if m.phase == MigrationPhase::Completed
                    && vm.status.node.as_deref() == Some(to)
                    && vm.status.phase == Phase::Running
                    && vm.status.pid.is_some()
                {
                    break vm;
                }
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(120), "no move");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let wall = t0.elapsed().as_secs_f64() * 1e3;
        // Ticks from the target show the guest runs there.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let m = vm.status.migration.unwrap_or_default();
        moves.push(Move {
            wall,
            total: m.total_time_ms.unwrap_or_default() as f64,
            downtime: m.downtime_ms.unwrap_or_default() as f64,
            guest: guest_gap(&growth.stop()),
        });
    }
    Ok(moves)
}

/// Moves a guest-kit VM between two QEMUs by hand `runs` times.
async fn by_hand(runs: u64, churn: bool) -> anyhow::Result<Vec<Move>> {
    let mut vm = TestVm::builder(Arch::X86_64)
        .memory_mib(256)
        .start()
        .await?;
    vm.wait_for_boot().await?;
    vm.send_line(TICKS).await?;
    vm.wait_for_line(TICKING).await?;
    if churn {
        vm.send_line(CHURN).await?;
        vm.wait_for_line(CHURNING).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut moves = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let target = vm.start_incoming().await?;
        let growth = Growth::start(vec![
            serial_log(vm.run_dir(), vm.uid()),
            serial_log(target.run_dir(), target.uid()),
        ]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let uri = format!("tcp:127.0.0.1:{port}");
        target
            .backend()
            .migrate_incoming(target.uid(), &uri)
            .await?;
        let limits = corral_hypervisor::MigrationLimits {
            downtime_ms: corral_controller::DOWNTIME_LIMIT_MS,
            bandwidth: None,
        };
        vm.backend().migrate(vm.uid(), &uri, limits).await?;
        let info = loop {
            let info = vm.backend().migration(vm.uid()).await?;
            anyhow::ensure!(!info.failed(), "{info:?}");
            if info.completed() {
                break info;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        target.backend().resume(target.uid()).await?;
        let wall = t0.elapsed().as_secs_f64() * 1e3;
        tokio::time::sleep(Duration::from_millis(300)).await;
        moves.push(Move {
            wall,
            total: info.total_time_ms as f64,
            downtime: info.downtime_ms.unwrap_or_default() as f64,
            guest: guest_gap(&growth.stop()),
        });
        vm = target;
    }
    Ok(moves)
}

/// Types `line` on VM `name`'s console and waits for `answer`.
async fn type_in(c: &Client, name: &str, line: &str, answer: &str) -> anyhow::Result<()> {
    let mut console = c.attach_console(name, true, false).await?;
    console.input.send(format!("{line}\n").into_bytes()).await?;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.contains(answer) {
        anyhow::ensure!(Instant::now() < deadline, "no {answer}: {seen}");
        if let Ok(Some(Ok(bytes))) =
            tokio::time::timeout(Duration::from_secs(1), console.output.recv()).await
        {
            seen.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs = flag("--runs", 5);
    let bin = release_build(&["corral-daemon"])?;
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??;
    let endpoint = etcd.endpoint(0);
    let start = |name: &str| {
        Corrald::builder(bin.join("corrald"))
            .args(&["--store", "etcd", "--etcd-endpoints", &endpoint])
            .args(&["--node-name", name])
            .start()
    };
    let (a, b) = (start("node-a")?, start("node-b")?);
    let c = Client::connect(Endpoint::Unix(a.socket())).await?;
    let cb = Client::connect(Endpoint::Unix(b.socket())).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.cordon_node("node-b", true).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "node-b never registered");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.create_vm(&kit_vm("bench", |s| s.memory(ByteSize::from_mib(256))))
        .await?;
    corral_testkit::wait_phase(&c, &a, "bench", Phase::Running).await?;
    corral_testkit::wait_console(&c, &a, "bench", corral_testkit::BOOT_MARKER, 0).await?;
    c.cordon_node("node-b", false).await?;
    type_in(&c, "bench", TICKS, TICKING).await?;
    let run_dirs = [a.run_dir(), b.run_dir()];
    let run_dirs = [run_dirs[0].as_path(), run_dirs[1].as_path()];

    println!(
        "{runs} migrations each, 256 MiB guest, TCG, downtime limit {} ms",
        corral_controller::DOWNTIME_LIMIT_MS
    );
    let idle_corral = through_corral(&c, "bench", runs, run_dirs).await?;
    let idle_hand = by_hand(runs, false).await?;
    // Churn in the guest, wherever it now runs.
    let node = c.get_vm("bench").await?.status.node.unwrap_or_default();
    let owner = if node == "node-a" { &c } else { &cb };
    type_in(owner, "bench", CHURN, CHURNING).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let churn_corral = through_corral(&c, "bench", runs, run_dirs).await?;
    let churn_hand = by_hand(runs, true).await?;

    let (iw, id, ig) = report("idle, Corral", &idle_corral);
    let (hw, hd, hg) = report("idle, by hand", &idle_hand);
    let (cw, cd, cg) = report("churn, Corral", &churn_corral);
    let (bw, bd, bg) = report("churn, by hand", &churn_hand);
    let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
    println!(
        "ratio Corral ÷ by hand (p50): idle total {:.2}x downtime {:.2}x guest gap {:.2}x; \
         churn total {:.2}x downtime {:.2}x guest gap {:.2}x (target ≤ 1.1x)",
        ratio(iw, hw),
        ratio(id, hd),
        ratio(ig, hg),
        ratio(cw, bw),
        ratio(cd, bd),
        ratio(cg, bg)
    );
    drop((a, b, etcd));
    Ok(())
}
