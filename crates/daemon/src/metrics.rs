//! Prometheus metrics at `/metrics`: VMs by phase, reconcile durations, and per-VM QEMU CPU
//! seconds and resident memory read from /proc at scrape time.
//!
//! Names follow Prometheus conventions, checked by `promtool check metrics` in the daemon's
//! tests: base units in the name (`_seconds`, `_bytes`), cumulative values as counters
//! (`_total`). The exposition is OpenMetrics, or the Prometheus text format 0.0.4 for a client
//! whose `Accept` asks for `text/plain` and not OpenMetrics (promtool, older scrapers).

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::http::HeaderValue;
use corral_controller::ReconcileObserver;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

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
    cpu: Family<VmLabel, Counter<f64, AtomicU64>>,
    rss: Family<VmLabel, Gauge>,
}

/// The content type of the OpenMetrics exposition.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text exposition.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

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
        registry.register_with_unit(
            "reconcile_duration",
            "Time of one VM reconcile",
            Unit::Seconds,
            reconcile.clone(),
        );
        // Cumulative since the QEMU process started: a counter, which resets when the VM's
        // QEMU is replaced (restart), as rate() expects of counters.
        let cpu = Family::<VmLabel, Counter<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "vm_qemu_cpu",
            "CPU time (user and system) used by the VM's QEMU process",
            Unit::Seconds,
            cpu.clone(),
        );
        let rss = Family::<VmLabel, Gauge>::default();
        registry.register_with_unit(
            "vm_qemu_rss",
            "Resident memory of the VM's QEMU process",
            Unit::Bytes,
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
                    // The family was cleared above: the fresh counter starts at 0.
                    self.cpu.get_or_create(&label).inc_by(cpu);
                    self.rss.get_or_create(&label).set(rss as i64);
                }
            }
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// The exposition in the format `accept` asks for, with its content type.
    pub async fn scrape(
        &self,
        daemon: &Daemon,
        accept: Option<&HeaderValue>,
    ) -> (&'static str, String) {
        let openmetrics = self.render(daemon).await;
        let accept = accept.and_then(|a| a.to_str().ok()).unwrap_or("");
        if accept.contains("text/plain") && !accept.contains("application/openmetrics-text") {
            (PROMETHEUS_TEXT, prometheus_text(&openmetrics))
        } else {
            (OPENMETRICS, openmetrics)
        }
    }
}

/// An OpenMetrics exposition in the Prometheus text format 0.0.4: counters are declared under
/// their sample name (`…_total`), and the `# UNIT` and `# EOF` lines, which 0.0.4 lacks, go.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|tag| Some((tag, line.strip_prefix(tag)?.split_once(' ')?)));
        match descriptor {
            Some((tag, (name, rest))) if counters.contains(name) => {
                out.push_str(&format!("{tag}{name}_total {rest}"));
            }
            Some((tag, (name, "unknown"))) if tag == "# TYPE " => {
                out.push_str(&format!("{tag}{name} untyped"));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
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
    crate::vms::history::read(pid).map(|r| (r.cpu_seconds, r.rss))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_our_own_figures() {
        let (cpu, rss) = super::process_figures(std::process::id()).unwrap();
        assert!(cpu >= 0.0 && rss > 0);
    }

    #[test]
    fn the_text_format_declares_counters_by_their_sample_name() {
        let openmetrics = "\
# HELP corral_vm_qemu_cpu_seconds CPU time.
# TYPE corral_vm_qemu_cpu_seconds counter
# UNIT corral_vm_qemu_cpu_seconds seconds
corral_vm_qemu_cpu_seconds_total{vm=\"a\"} 1.5
# HELP corral_vms VMs by phase.
# TYPE corral_vms gauge
corral_vms{phase=\"Running\"} 1
# HELP corral_other Something.
# TYPE corral_other unknown
corral_other 2
# EOF
";
        assert_eq!(
            super::prometheus_text(openmetrics),
            "\
# HELP corral_vm_qemu_cpu_seconds_total CPU time.
# TYPE corral_vm_qemu_cpu_seconds_total counter
corral_vm_qemu_cpu_seconds_total{vm=\"a\"} 1.5
# HELP corral_vms VMs by phase.
# TYPE corral_vms gauge
corral_vms{phase=\"Running\"} 1
# HELP corral_other Something.
# TYPE corral_other untyped
corral_other 2
"
        );
    }
}
