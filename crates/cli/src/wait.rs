//! `--wait`: follow a VM until it gets where a command sent it, with a spinner on a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use corral_client::{Client, is_observed};
use corral_contract::names::annotations;
use corral_contract::{MigrationPhase, Phase, Power, Vm};
use indicatif::{ProgressBar, ProgressStyle};

use crate::CliError;

/// Where a command sent a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// In this phase, for the spec as written (generation) by the command.
    Phase(Phase),
    /// Running in a new QEMU process: not this pid.
    Restarted(Option<u32>),
    /// Moved by the migration its `corral.dev/migrate-to` annotation asks for.
    Migrated,
    /// Deleted.
    Gone,
}

impl Goal {
    /// The phase `power` leads to.
    pub fn for_power(power: Power) -> Goal {
        Goal::Phase(match power {
            Power::Running => Phase::Running,
            Power::Stopped => Phase::Stopped,
            Power::Paused => Phase::Paused,
        })
    }

    fn describe(self) -> String {
        match self {
            Goal::Phase(phase) => phase.to_string(),
            Goal::Restarted(_) => "Running in a new process".into(),
            Goal::Migrated => "the migration to end".into(),
            Goal::Gone => "deleted".into(),
        }
    }
}

/// What the wait saw last.
#[derive(Debug)]
pub enum Outcome {
    /// The VM got there.
    Reached(Option<Vm>),
    /// The VM ended `Failed` for the current spec.
    Failed(Vm),
    /// The VM disappeared while something else was waited for.
    Deleted,
}

/// Whether `vm` (`None`: gone) is where `goal` wants it, or somewhere the wait should stop.
pub fn judge(goal: Goal, vm: Option<&Vm>) -> Option<Outcome> {
    let Some(vm) = vm else {
        return Some(if goal == Goal::Gone {
            Outcome::Reached(None)
        } else {
            Outcome::Deleted
        });
    };
    if goal == Goal::Migrated {
        return judge_migration(vm);
    }
    if goal == Goal::Gone || !is_observed(vm) {
        return None;
    }
    let phase = vm.status.phase;
    let reached = match goal {
        Goal::Phase(want) => phase == want,
        Goal::Restarted(old) => {
            phase == Phase::Running && vm.status.pid.is_some() && vm.status.pid != old
        }
        Goal::Gone | Goal::Migrated => false,
    };
    if reached {
        Some(Outcome::Reached(Some(vm.clone())))
    } else if phase == Phase::Failed {
        Some(Outcome::Failed(vm.clone()))
    } else {
        None
    }
}

/// Whether the migration `vm`'s annotation asks for has ended: moved (and running or paused
/// on its new node), or failed or cancelled.
fn judge_migration(vm: &Vm) -> Option<Outcome> {
    let request = vm.metadata.annotations.get(annotations::MIGRATE_TO);
    let m = vm
        .status
        .migration
        .as_ref()
        .filter(|m| Some(&m.request) == request)?;
    match m.phase {
        MigrationPhase::Completed
            if vm.status.node.as_deref() == Some(m.target.as_str())
                && matches!(vm.status.phase, Phase::Running | Phase::Paused) =>
        {
            Some(Outcome::Reached(Some(vm.clone())))
        }
        MigrationPhase::Failed | MigrationPhase::Cancelled => Some(Outcome::Failed(vm.clone())),
        _ => None,
    }
}

/// Waits for `name` to reach `goal`; fails when it ends Failed, is deleted meanwhile, or the
/// time runs out.
pub async fn wait(
    client: &Client,
    name: &str,
    goal: Goal,
    timeout: Duration,
) -> Result<Option<Vm>, CliError> {
    let spinner = spinner(name, goal);
    let mut outcome = None;
    let waited = client
        .wait_for(
            name,
            |vm| {
                if let Some(vm) = vm {
                    let what = if vm.metadata.deleting {
                        "Deleting".to_owned()
                    } else {
                        vm.status.phase.to_string()
                    };
                    spinner.set_message(format!(
                        "vm/{name}: {what}, waiting for {}",
                        goal.describe()
                    ));
                }
                outcome = judge(goal, vm);
                outcome.is_some()
            },
            timeout,
        )
        .await;
    spinner.finish_and_clear();
    waited?;
    match outcome {
        Some(Outcome::Reached(vm)) => Ok(vm),
        Some(Outcome::Failed(vm)) if goal == Goal::Migrated => {
            let m = vm.status.migration.unwrap_or_default();
            Err(CliError::Failed(format!(
                "vm/{name}: migration to node {} {}: {}",
                m.target,
                m.phase.as_str().to_lowercase(),
                m.message.as_deref().unwrap_or("no reason given")
            )))
        }
        Some(Outcome::Failed(vm)) => Err(CliError::Failed(format!(
            "vm/{name} failed: {}",
            vm.status
                .message
                .as_deref()
                .unwrap_or("no reason given; see `corral vm get`")
        ))),
        Some(Outcome::Deleted) => Err(CliError::Failed(format!(
            "vm/{name} was deleted while waiting for it to be {}",
            goal.describe()
        ))),
        None => Err(CliError::Failed(format!(
            "vm/{name}: the wait ended without an answer"
        ))),
    }
}

/// A spinner on standard error when it is a terminal; a hidden one otherwise.
fn spinner(name: &str, goal: Goal) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let spinner = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        spinner.set_style(style);
    }
    spinner.set_message(format!("vm/{name}: waiting for {}", goal.describe()));
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_contract::{Boot, VmSpec};

    fn vm(phase: Phase, generation: u64, observed: u64, pid: Option<u32>) -> Vm {
        let spec = VmSpec::builder(Boot::kernel("/k")).build().unwrap();
        let mut vm = Vm::new("a".parse().unwrap(), spec);
        vm.metadata.generation = generation;
        vm.status.observed_generation = observed;
        vm.status.phase = phase;
        vm.status.pid = pid;
        vm
    }

    #[test]
    fn a_status_older_than_the_spec_decides_nothing() {
        let running = Goal::Phase(Phase::Running);
        // Failed before `start`: the controller has not acted on the new generation yet.
        assert!(judge(running, Some(&vm(Phase::Failed, 3, 2, None))).is_none());
        assert!(matches!(
            judge(running, Some(&vm(Phase::Failed, 3, 3, None))),
            Some(Outcome::Failed(_))
        ));
        assert!(matches!(
            judge(running, Some(&vm(Phase::Running, 3, 3, Some(9)))),
            Some(Outcome::Reached(Some(_)))
        ));
        assert!(judge(running, Some(&vm(Phase::Starting, 3, 3, None))).is_none());
    }

    #[test]
    fn restart_waits_for_a_new_pid_and_delete_for_nothing() {
        let restarted = Goal::Restarted(Some(100));
        assert!(judge(restarted, Some(&vm(Phase::Running, 2, 2, Some(100)))).is_none());
        assert!(matches!(
            judge(restarted, Some(&vm(Phase::Running, 2, 2, Some(101)))),
            Some(Outcome::Reached(_))
        ));
        assert!(judge(Goal::Gone, Some(&vm(Phase::Stopped, 1, 1, None))).is_none());
        assert!(matches!(
            judge(Goal::Gone, None),
            Some(Outcome::Reached(None))
        ));
        assert!(matches!(judge(restarted, None), Some(Outcome::Deleted)));
    }
}
