//! The fence deadline corrald hands the guard, and what the guard makes of it.
//!
//! Times are `CLOCK_BOOTTIME` readings: one clock for every process of the host, never set
//! back, and counting on while the host is suspended (the servers' clocks do too).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::GuardError;

/// The host's `CLOCK_BOOTTIME`: time since boot, suspended time included.
pub fn boottime() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        // Linux has had CLOCK_BOOTTIME since 2.6.39; this cannot fail on a kernel QEMU runs on.
        .unwrap_or_default()
}

/// What corrald writes after every successful report: the VMs of this node may run until
/// `deadline`, and not a moment longer unless a newer stamp comes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stamp {
    /// `CLOCK_BOOTTIME` in nanoseconds after which the guard kills the node's VMs.
    pub deadline_ns: u64,
    /// The node TTL the deadline was counted with, for people reading the file.
    pub ttl_ms: u64,
    /// Wall-clock time of the report, for people reading the file.
    pub reported_at: String,
    /// The corrald that wrote it.
    pub corrald_pid: u32,
}

impl Stamp {
    /// The stamp for a report *sent* at `sent` (a `CLOCK_BOOTTIME` reading) that succeeded:
    /// its VMs may run `ttl` from then. The servers receive it no earlier than it was sent
    /// and move the VMs only `ttl` plus a margin after receiving it, so this deadline always
    /// falls before theirs.
    pub fn after_report(sent: Duration, ttl: Duration) -> Stamp {
        Stamp {
            deadline_ns: u64::try_from((sent + ttl).as_nanos()).unwrap_or(u64::MAX),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            reported_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            corrald_pid: std::process::id(),
        }
    }

    /// The deadline as a `CLOCK_BOOTTIME` reading.
    pub fn deadline(&self) -> Duration {
        Duration::from_nanos(self.deadline_ns)
    }

    /// Writes the stamp to `path` through a temporary file and a rename: the guard reads the
    /// old stamp or the new one, never half of one.
    pub fn write(&self, path: &Path) -> Result<(), GuardError> {
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|source| GuardError::Io {
                what: format!("writing the fence deadline {}", path.display()),
                source,
            })
    }

    /// The stamp at `path`: `None` when there is none (no report yet, or fencing disarmed).
    pub fn read(path: &Path) -> Result<Option<Stamp>, GuardError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| GuardError::BadStamp {
                        path: path.to_owned(),
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(GuardError::Io {
                what: format!("reading the fence deadline {}", path.display()),
                source,
            }),
        }
    }
}

/// Where the node stands at `now`, given the last stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No deadline: the node never reported, or fencing was disarmed. Nothing is enforced.
    Unarmed,
    /// The VMs may run for `left` more.
    Armed {
        /// Until the deadline.
        left: Duration,
    },
    /// The deadline passed `ago`: the servers may move the VMs soon; none may run here.
    Expired {
        /// Since the deadline.
        ago: Duration,
    },
}

/// Judges `stamp` at `now` (both `CLOCK_BOOTTIME`). The deadline itself is already expired:
/// the guard acts at the deadline, not a tick after it.
pub fn verdict(stamp: Option<&Stamp>, now: Duration) -> Verdict {
    match stamp {
        None => Verdict::Unarmed,
        Some(stamp) if now < stamp.deadline() => Verdict::Armed {
            left: stamp.deadline() - now,
        },
        Some(stamp) => Verdict::Expired {
            ago: now - stamp.deadline(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_deadline_runs_from_when_the_report_was_sent_and_ends_exactly_there() {
        let stamp = Stamp::after_report(S(100), S(10));
        assert_eq!(stamp.deadline(), S(110));
        assert_eq!(
            verdict(Some(&stamp), S(100)),
            Verdict::Armed { left: S(10) }
        );
        assert_eq!(
            verdict(Some(&stamp), S(110) - MS(1)),
            Verdict::Armed { left: MS(1) }
        );
        assert_eq!(
            verdict(Some(&stamp), S(110)),
            Verdict::Expired { ago: S(0) }
        );
        assert_eq!(
            verdict(Some(&stamp), S(113)),
            Verdict::Expired { ago: S(3) }
        );
        assert_eq!(verdict(None, S(1_000_000)), Verdict::Unarmed);
    }

    #[test]
    fn the_guard_acts_before_any_server_may_move_a_vm() {
        // A server moves a VM `ttl + margin` after it *received* the report (never before it
        // was sent); whatever the delay in between, the guard's deadline comes first.
        let (ttl, margin) = (S(10), S(5));
        for (sent, delay) in [(S(50), MS(0)), (S(50), MS(900)), (S(7), S(9))] {
            let received = sent + delay;
            let server_moves_at = received + ttl + margin;
            let stamp = Stamp::after_report(sent, ttl);
            assert!(stamp.deadline() < server_moves_at);
            assert!(matches!(
                verdict(Some(&stamp), server_moves_at - MS(1)),
                Verdict::Expired { .. }
            ));
        }
    }

    #[test]
    fn a_newer_report_moves_the_deadline_and_a_late_one_is_expired_at_once() {
        let first = Stamp::after_report(S(100), S(10));
        let renewed = Stamp::after_report(S(108), S(10));
        assert_eq!(
            verdict(Some(&renewed), S(111)),
            Verdict::Armed { left: S(7) }
        );
        assert!(matches!(
            verdict(Some(&first), S(111)),
            Verdict::Expired { .. }
        ));
        // A report that took longer than the TTL to succeed buys no time.
        let late = Stamp::after_report(S(100), S(10));
        assert!(matches!(
            verdict(Some(&late), S(125)),
            Verdict::Expired { ago } if ago == S(15)
        ));
    }

    #[test]
    fn stamps_round_trip_through_the_file_and_a_missing_file_is_unarmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deadline");
        assert_eq!(Stamp::read(&path).unwrap(), None);
        let stamp = Stamp::after_report(S(42), S(10));
        stamp.write(&path).unwrap();
        assert_eq!(Stamp::read(&path).unwrap(), Some(stamp));
        assert!(!path.with_extension("tmp").exists());
        std::fs::write(&path, b"{\"deadline_ns\": \"soon\"}").unwrap();
        let err = Stamp::read(&path).unwrap_err().to_string();
        assert!(err.contains("deadline"), "{err}");
    }

    #[test]
    fn boottime_moves_forward() {
        let a = boottime();
        std::thread::sleep(MS(2));
        assert!(boottime() > a && a > Duration::ZERO);
    }
}
