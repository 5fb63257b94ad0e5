//! What to do with a VM whose process is gone: start it, restart it by policy after a backoff,
//! or leave it stopped (as Stopped or as Failed). A pure function of what the controller
//! knows, so that every combination can be read off one table (see the tests).

use std::time::Duration;

use corral_contract::{Phase, Power, RestartPolicy};
use corral_hypervisor::Exit;

/// How the VM's last process ended, as far as the controller knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// There is no process and no exit to go by (it was never seen ending).
    NoProcess,
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// Neither code nor signal is known: an adopted QEMU that vanished without announcing a
    /// shutdown, or one that ended while corrald was away.
    AdoptedUnknown,
}

impl Ended {
    pub(crate) fn of(exit: Option<&Exit>) -> Ended {
        match exit {
            None => Ended::NoProcess,
            Some(Exit {
                signal: Some(s), ..
            }) => Ended::Signal(*s),
            Some(Exit { code: Some(c), .. }) => Ended::Code(*c),
            Some(_) => Ended::AdoptedUnknown,
        }
    }

    /// Whether this end counts as a failure (for `on-failure` and for the Failed phase).
    fn failed(self) -> bool {
        match self {
            Ended::NoProcess | Ended::Signal(_) => true,
            Ended::Code(c) => c != 0,
            // Orderly ends are announced (QEMU's SHUTDOWN event, exit 0); an end nobody saw
            // the cause of is a kill or a crash, as for a child of ours.
            Ended::AdoptedUnknown => true,
        }
    }
}

/// Everything the decision depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Situation {
    /// The declared power state.
    pub power: Power,
    /// The phase recorded in the VM's status.
    pub phase: Phase,
    /// The declared restart policy.
    pub policy: RestartPolicy,
    /// How the last process ended.
    pub ended: Ended,
    /// The spec changed since the status was written.
    pub new_intent: bool,
    /// A restart was asked for (annotation) and not yet done.
    pub restart_pending: bool,
    /// Policy restarts done in a row so far.
    pub attempts: u32,
    /// How long until the next policy restart is allowed (zero: now).
    pub hold: Duration,
    /// The first backoff; it doubles per restart in a row.
    pub backoff_base: Duration,
    /// The longest backoff.
    pub backoff_max: Duration,
}

/// What the controller does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Start now and forget the backoff: the user asked for it (new spec, restart) or it
    /// never ran.
    Start,
    /// Restart by policy once `after` has passed (zero: now); a restart now holds the next
    /// one back for `next_hold`.
    Restart {
        after: Duration,
        next_hold: Duration,
    },
    /// Leave it stopped, phase Stopped.
    StayStopped,
    /// Leave it stopped, phase Failed.
    MarkFailed,
}

/// The decision for a VM whose process is not running.
pub(crate) fn decide(s: &Situation) -> Decision {
    if s.power == Power::Stopped {
        return Decision::StayStopped;
    }
    let never_started = matches!(s.phase, Phase::Pending | Phase::Starting);
    if s.new_intent || s.restart_pending || never_started {
        return Decision::Start;
    }
    let failed = s.ended.failed();
    let by_policy = match s.policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => failed,
        RestartPolicy::Never => false,
    };
    if by_policy && s.phase != Phase::Stopped {
        return Decision::Restart {
            after: s.hold,
            next_hold: backoff(s.backoff_base, s.backoff_max, s.attempts),
        };
    }
    if failed {
        Decision::MarkFailed
    } else {
        Decision::StayStopped
    }
}

/// The hold after the restart numbered `attempts` (from 0): `base` doubled per attempt, at
/// most `max`.
pub(crate) fn backoff(base: Duration, max: Duration, attempts: u32) -> Duration {
    base.saturating_mul(1 << attempts.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::{MarkFailed as Fail, Start, StayStopped as Stay};

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn situation(power: Power, phase: Phase, policy: RestartPolicy, ended: Ended) -> Situation {
        Situation {
            power,
            phase,
            policy,
            ended,
            new_intent: false,
            restart_pending: false,
            attempts: 0,
            hold: Duration::ZERO,
            backoff_base: S(1),
            backoff_max: S(60),
        }
    }

    /// A restart now, at the first attempt.
    const R: Decision = Decision::Restart {
        after: Duration::ZERO,
        next_hold: Duration::from_secs(1),
    };

    const ENDS: [Ended; 5] = [
        Ended::Code(0),
        Ended::Code(1),
        Ended::Signal(9),
        Ended::AdoptedUnknown,
        Ended::NoProcess,
    ];
    const POWERS: [Power; 3] = [Power::Running, Power::Paused, Power::Stopped];
    const POLICIES: [RestartPolicy; 3] = [
        RestartPolicy::Never,
        RestartPolicy::OnFailure,
        RestartPolicy::Always,
    ];
    const PHASES: [Phase; 7] = [
        Phase::Pending,
        Phase::Starting,
        Phase::Running,
        Phase::Paused,
        Phase::Stopping,
        Phase::Stopped,
        Phase::Failed,
    ];

    #[test]
    fn a_running_vm_whose_process_ended_by_power_policy_and_exit() {
        use Power::{Paused, Running, Stopped};
        use RestartPolicy::{Always, Never, OnFailure};
        // Columns: exit 0, exit 1, SIGKILL, an adopted VM that ended with neither code nor
        // signal known (judged a failure, as a child's kill is), no process at all.
        #[rustfmt::skip]
        let table = [
            (Running, Never,     [Stay, Fail, Fail, Fail, Fail]),
            (Running, OnFailure, [Stay, R,    R,    R,    R   ]),
            (Running, Always,    [R,    R,    R,    R,    R   ]),
            (Paused,  Never,     [Stay, Fail, Fail, Fail, Fail]),
            (Paused,  OnFailure, [Stay, R,    R,    R,    R   ]),
            (Paused,  Always,    [R,    R,    R,    R,    R   ]),
            (Stopped, Never,     [Stay, Stay, Stay, Stay, Stay]),
            (Stopped, OnFailure, [Stay, Stay, Stay, Stay, Stay]),
            (Stopped, Always,    [Stay, Stay, Stay, Stay, Stay]),
        ];
        for (power, policy, row) in table {
            for (ended, want) in ENDS.into_iter().zip(row) {
                let got = decide(&situation(power, Phase::Running, policy, ended));
                assert_eq!(got, want, "{power} {policy} {ended:?}");
            }
        }
    }

    #[test]
    fn the_recorded_phase_decides_between_start_restart_and_staying_down() {
        use RestartPolicy::{Always, Never, OnFailure};
        // Declared running, exit 1.
        #[rustfmt::skip]
        let table = [
            (Phase::Pending,  [Start, Start, Start]),
            (Phase::Starting, [Start, Start, Start]),
            (Phase::Running,  [Fail,  R,     R    ]),
            (Phase::Paused,   [Fail,  R,     R    ]),
            (Phase::Stopping, [Fail,  R,     R    ]),
            // Stopped by the user: no policy brings it back, but the failure is recorded.
            (Phase::Stopped,  [Fail,  Fail,  Fail ]),
            (Phase::Failed,   [Fail,  R,     R    ]),
        ];
        for (phase, row) in table {
            for (policy, want) in [Never, OnFailure, Always].into_iter().zip(row) {
                let got = decide(&situation(Power::Running, phase, policy, Ended::Code(1)));
                assert_eq!(got, want, "{phase} {policy}");
            }
        }
        let clean = situation(Power::Running, Phase::Stopped, Always, Ended::Code(0));
        assert_eq!(decide(&clean), Stay);
    }

    #[test]
    fn a_new_spec_or_an_asked_restart_starts_at_once_unless_declared_stopped() {
        for power in POWERS {
            for phase in PHASES {
                for policy in POLICIES {
                    for ended in ENDS {
                        for (new_intent, restart_pending) in [(true, false), (false, true)] {
                            let s = Situation {
                                new_intent,
                                restart_pending,
                                attempts: 7,
                                hold: S(30),
                                ..situation(power, phase, policy, ended)
                            };
                            let want = if power == Power::Stopped { Stay } else { Start };
                            assert_eq!(decide(&s), want, "{s:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn policy_restarts_back_off_doubling_up_to_the_cap() {
        #[rustfmt::skip]
        let table = [
            // (attempts so far, hold left) → (after, next hold)
            (0,  S(0),  S(0),  S(1)),
            (1,  S(0),  S(0),  S(2)),
            (2,  S(0),  S(0),  S(4)),
            (5,  S(0),  S(0),  S(32)),
            (6,  S(0),  S(0),  S(60)),
            (16, S(0),  S(0),  S(60)),
            (40, S(0),  S(0),  S(60)),
            (3,  S(5),  S(5),  S(8)),
        ];
        for (attempts, hold, after, next_hold) in table {
            let s = Situation {
                attempts,
                hold,
                ..situation(
                    Power::Running,
                    Phase::Running,
                    RestartPolicy::Always,
                    Ended::Signal(9),
                )
            };
            assert_eq!(
                decide(&s),
                Decision::Restart { after, next_hold },
                "{attempts} attempts, {hold:?} held"
            );
        }
        // Past 2^16 the doubling stops, whatever the cap.
        assert_eq!(backoff(S(1), S(1 << 20), 30), S(1 << 16));
    }

    #[test]
    fn exits_are_read_as_the_hypervisor_reports_them() {
        let exit = |code, signal| Exit {
            code,
            signal,
            reason: String::new(),
        };
        assert_eq!(Ended::of(None), Ended::NoProcess);
        assert_eq!(Ended::of(Some(&exit(Some(0), None))), Ended::Code(0));
        assert_eq!(Ended::of(Some(&exit(Some(3), None))), Ended::Code(3));
        assert_eq!(Ended::of(Some(&exit(None, Some(9)))), Ended::Signal(9));
        assert_eq!(Ended::of(Some(&exit(Some(1), Some(9)))), Ended::Signal(9));
        assert_eq!(Ended::of(Some(&exit(None, None))), Ended::AdoptedUnknown);
        // The same verdict as the hypervisor's own.
        for e in [
            exit(Some(0), None),
            exit(Some(2), None),
            exit(None, Some(15)),
            exit(None, None),
        ] {
            assert_eq!(Ended::of(Some(&e)).failed(), e.is_failure(), "{e}");
        }
    }
}
