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
//! Prints medians and p99s, and the ratios Corral ÷ by hand (target ≤ 1.1× for both).

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
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn report(label: &str, moves: &[Move]) -> (f64, f64) {
    let col = |f: fn(&Move) -> f64| moves.iter().map(f).collect::<Vec<_>>();
    let (wall, total, down) = (col(|m| m.wall), col(|m| m.total), col(|m| m.downtime));
    println!(
        "{label:<18} wall p50 {:>6.0} ms p99 {:>6.0} | QEMU total p50 {:>6.0} ms p99 {:>6.0} | \
         downtime p50 {:>4.0} ms p99 {:>4.0}",
        quantile(wall.clone(), 0.5),
        quantile(wall.clone(), 0.99),
        quantile(total.clone(), 0.5),
        quantile(total, 0.99),
        quantile(down.clone(), 0.5),
        quantile(down.clone(), 0.99),
    );
    (quantile(wall, 0.5), quantile(down, 0.5))
}

/// Moves `name` to the other node `runs` times through Corral.
async fn through_corral(c: &Client, name: &str, runs: u64) -> anyhow::Result<Vec<Move>> {
    let mut moves = Vec::new();
    for _ in 0..runs {
        let from = c.get_vm(name).await?.status.node.unwrap_or_default();
        let to = if from == "node-a" { "node-b" } else { "node-a" };
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
        let m = vm.status.migration.unwrap_or_default();
        moves.push(Move {
            wall,
            total: m.total_time_ms.unwrap_or_default() as f64,
            downtime: m.downtime_ms.unwrap_or_default() as f64,
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
    if churn {
        vm.send_line(CHURN).await?;
        vm.wait_for_line(CHURNING).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut moves = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let target = vm.start_incoming().await?;
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
        moves.push(Move {
            wall: t0.elapsed().as_secs_f64() * 1e3,
            total: info.total_time_ms as f64,
            downtime: info.downtime_ms.unwrap_or_default() as f64,
        });
        vm = target;
    }
    Ok(moves)
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

    println!(
        "{runs} migrations each, 256 MiB guest, TCG, downtime limit {} ms",
        corral_controller::DOWNTIME_LIMIT_MS
    );
    let idle_corral = through_corral(&c, "bench", runs).await?;
    let idle_hand = by_hand(runs, false).await?;
    // Churn in the guest, wherever it now runs.
    let node = c.get_vm("bench").await?.status.node.unwrap_or_default();
    let owner = if node == "node-a" {
        &c
    } else {
        &Client::connect(Endpoint::Unix(b.socket())).await?
    };
    let mut console = owner.attach_console("bench", true, false).await?;
    console
        .input
        .send(format!("{CHURN}\n").into_bytes())
        .await?;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.contains(CHURNING) {
        anyhow::ensure!(Instant::now() < deadline, "the churn did not start: {seen}");
        if let Ok(Some(Ok(bytes))) =
            tokio::time::timeout(Duration::from_secs(1), console.output.recv()).await
        {
            seen.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    drop(console);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let churn_corral = through_corral(&c, "bench", runs).await?;
    let churn_hand = by_hand(runs, true).await?;

    let (iw, id) = report("idle, Corral", &idle_corral);
    let (hw, hd) = report("idle, by hand", &idle_hand);
    let (cw, cd) = report("churn, Corral", &churn_corral);
    let (bw, bd) = report("churn, by hand", &churn_hand);
    let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
    println!(
        "ratio Corral ÷ by hand (p50): idle total {:.2}x downtime {:.2}x; churn total {:.2}x \
         downtime {:.2}x (target ≤ 1.1x)",
        ratio(iw, hw),
        ratio(id, hd),
        ratio(cw, bw),
        ratio(cd, bd)
    );
    drop((a, b, etcd));
    Ok(())
}
