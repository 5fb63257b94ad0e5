//! Prometheus metrics at `/metrics`: VMs by phase, reconcile durations, and per-VM QEMU CPU
//! seconds and resident memory read from /proc at scrape time.

use std::sync::Mutex;
use std::time::Duration;

use corral_controller::ReconcileObserver;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::state::Daemon;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmLabel {
    vm: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The daemon's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    vms: Family<PhaseLabel, Gauge>,
    reconcile: Family<ResultLabel, Histogram>,
    cpu: Family<VmLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    rss: Family<VmLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("corral");
        let vms = Family::<PhaseLabel, Gauge>::default();
        registry.register("vms", "VMs by phase", vms.clone());
        let reconcile = Family::<ResultLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time of one VM reconcile",
            reconcile.clone(),
        );
        let cpu = Family::<VmLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "vm_qemu_cpu_seconds",
            "CPU time used by the VM's QEMU process",
            cpu.clone(),
        );
        let rss = Family::<VmLabel, Gauge>::default();
        registry.register(
            "vm_qemu_rss_bytes",
            "Resident memory of the VM's QEMU process",
            rss.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            vms,
            reconcile,
            cpu,
            rss,
        }
    }

    /// The text exposition, refreshed from the store and /proc.
    pub async fn render(&self, daemon: &Daemon) -> String {
        if let Ok((vms, _)) = daemon.vms.list("").await {
            self.vms.clear();
            self.cpu.clear();
            self.rss.clear();
            for vm in &vms {
                self.vms
                    .get_or_create(&PhaseLabel {
                        phase: vm.status.phase.to_string(),
                    })
                    .inc();
                if let Some((cpu, rss)) = vm.status.pid.and_then(process_figures) {
                    let label = VmLabel {
                        vm: vm.metadata.name.to_string(),
                    };
                    self.cpu.get_or_create(&label).set(cpu);
                    self.rss.get_or_create(&label).set(rss as i64);
                }
            }
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

impl ReconcileObserver for Metrics {
    fn reconciled(&self, elapsed: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconcile
            .get_or_create(&ResultLabel { result })
            .observe(elapsed.as_secs_f64());
    }
}

/// CPU seconds (user + system) and RSS bytes of `pid`.
fn process_figures(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks as f64 / hz, rss_kib * 1024))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_our_own_figures() {
        let (cpu, rss) = super::process_figures(std::process::id()).unwrap();
        assert!(cpu >= 0.0 && rss > 0);
    }
}
