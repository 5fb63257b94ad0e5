//! Per-VM CPU and memory history: one sample every 10 s, a day of them per VM in a bounded ring
//! that goes with its VM, served at `GET /v1/vms/{name}/metrics/history`.
//!
//! CPU is the QEMU process's user + system time from `/proc/<pid>/stat`, as the share of one
//! core used between two samples (every vCPU thread and the device emulation count: that is
//! what the VM costs the host). Memory is the process's resident set (`VmRSS` in
//! `/proc/<pid>/status`) rather than a QMP figure: QMP knows only the configured size, or the
//! guest's own view through a balloon driver the guest may not have; RSS is what the host pays,
//! needs no round trip to QEMU and works the same for a paused or wedged guest.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

use crate::state::Daemon;

/// Time between two samples.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept per VM: one day at [`INTERVAL`].
pub const CAPACITY: usize = 8_640;

/// One sample of a VM's QEMU process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// When, in seconds since the Unix epoch.
    pub time: u64,
    /// CPU used since the previous sample, in cores (1.0 = one core busy all the time).
    pub cpu: f32,
    /// Resident memory of the QEMU process, in bytes.
    pub memory_bytes: u64,
}

/// What the process's figures were at the previous sample: CPU is a difference.
#[derive(Debug, Clone, Copy)]
struct Baseline {
    pid: u32,
    time: SystemTime,
    cpu_seconds: f64,
}

#[derive(Debug, Default)]
struct Ring {
    samples: VecDeque<Sample>,
    last: Option<Baseline>,
}

/// Figures of a VM's QEMU process read at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// The process.
    pub pid: u32,
    /// Its CPU time so far (user + system), in seconds.
    pub cpu_seconds: f64,
    /// Its resident memory, in bytes.
    pub rss: u64,
}

/// The rings of every VM this node runs, keyed by VM uid (a VM deleted and created again under
/// its name starts afresh).
#[derive(Debug)]
pub struct History {
    rings: Mutex<HashMap<String, Ring>>,
    capacity: usize,
}

impl Default for History {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl History {
    /// Rings of at most `capacity` samples.
    pub fn with_capacity(capacity: usize) -> Self {
        History {
            rings: Mutex::default(),
            capacity,
        }
    }

    /// Records VM `uid`'s reading at `time`. The first reading of a process only sets the
    /// baseline its CPU share is measured from; a new pid (the VM restarted) starts a new one.
    pub fn record(&self, uid: &str, reading: Reading, time: SystemTime) {
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let ring = rings.entry(uid.to_owned()).or_default();
        if let Some(last) = ring.last.filter(|l| l.pid == reading.pid) {
            let elapsed = time.duration_since(last.time).unwrap_or_default();
            if !elapsed.is_zero() {
                let used = (reading.cpu_seconds - last.cpu_seconds).max(0.0);
                if ring.samples.len() == self.capacity {
                    ring.samples.pop_front();
                }
                ring.samples.push_back(Sample {
                    time: time
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs(),
                    cpu: (used / elapsed.as_secs_f64()) as f32,
                    memory_bytes: reading.rss,
                });
            }
        }
        ring.last = Some(Baseline {
            pid: reading.pid,
            time,
            cpu_seconds: reading.cpu_seconds,
        });
    }

    /// Drops the rings of VMs not in `live` (deleted ones).
    pub fn retain(&self, live: &HashSet<&str>) {
        self.rings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|uid, _| live.contains(uid.as_str()));
    }

    /// VM `uid`'s samples taken after `since` (seconds since the epoch), oldest first.
    pub fn samples(&self, uid: &str, since: u64) -> Vec<Sample> {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings.get(uid).map_or_else(Vec::new, |r| {
            r.samples
                .iter()
                .filter(|s| s.time > since)
                .copied()
                .collect()
        })
    }

    /// How many VMs have a ring.
    pub fn len(&self) -> usize {
        self.rings.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no VM has a ring.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Samples every VM whose QEMU runs on this node each [`INTERVAL`] until `stop`.
pub async fn sample(daemon: std::sync::Arc<Daemon>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Ok((vms, _)) = daemon.vms.list("").await else {
            continue;
        };
        let now = SystemTime::now();
        for vm in &vms {
            // A pid is only this host's when the VM runs here.
            if vm.status.node.as_deref().is_some_and(|n| n != daemon.node) {
                continue;
            }
            if let Some(reading) = vm.status.pid.and_then(read) {
                daemon.history.record(&vm.metadata.uid, reading, now);
            }
        }
        daemon
            .history
            .retain(&vms.iter().map(|v| v.metadata.uid.as_str()).collect());
    }
}

/// CPU time and resident memory of process `pid`, from /proc.
pub fn read(pid: u32) -> Option<Reading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: utime is field 14, stime 15.
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
    Some(Reading {
        pid,
        cpu_seconds: ticks as f64 / hz,
        rss: rss_kib * 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn reading(pid: u32, cpu_seconds: f64) -> Reading {
        Reading {
            pid,
            cpu_seconds,
            rss: 64 << 20,
        }
    }

    #[test]
    fn cpu_is_the_share_of_a_core_between_two_readings() {
        let h = History::default();
        h.record("a", reading(7, 100.0), at(1000));
        assert!(
            h.samples("a", 0).is_empty(),
            "one reading is only a baseline"
        );
        h.record("a", reading(7, 105.0), at(1010));
        assert_eq!(
            h.samples("a", 0),
            vec![Sample {
                time: 1010,
                cpu: 0.5,
                memory_bytes: 64 << 20
            }]
        );
        assert_eq!(h.samples("a", 1010), vec![], "since is exclusive");
    }

    #[test]
    fn a_new_process_starts_a_new_baseline() {
        let h = History::default();
        h.record("a", reading(7, 100.0), at(1000));
        // Restarted: its CPU time starts again from 0, which is no negative share.
        h.record("a", reading(8, 1.0), at(1010));
        assert!(h.samples("a", 0).is_empty());
        h.record("a", reading(8, 3.0), at(1020));
        assert_eq!(h.samples("a", 0)[0].cpu, 0.2);
    }

    #[test]
    fn the_ring_keeps_a_day_and_drops_the_oldest() {
        let h = History::default();
        for i in 0..=(CAPACITY as u64 + 100) {
            h.record("a", reading(7, i as f64), at(i * 10));
        }
        let kept = h.samples("a", 0);
        assert_eq!(kept.len(), CAPACITY);
        assert_eq!(kept.first().unwrap().time, 101 * 10);
        assert_eq!(kept.last().unwrap().time, (CAPACITY as u64 + 100) * 10);
        assert!(kept.windows(2).all(|w| w[0].time < w[1].time));
    }

    #[test]
    fn a_deleted_vm_loses_its_ring() {
        let h = History::default();
        for uid in ["a", "b"] {
            h.record(uid, reading(7, 1.0), at(0));
            h.record(uid, reading(7, 2.0), at(10));
        }
        h.retain(&HashSet::from(["b"]));
        assert_eq!(h.len(), 1);
        assert!(h.samples("a", 0).is_empty());
        assert_eq!(h.samples("b", 0).len(), 1);
    }

    #[test]
    fn reads_our_own_process() {
        let r = read(std::process::id()).unwrap();
        assert!(r.cpu_seconds >= 0.0 && r.rss > 0);
    }
}
