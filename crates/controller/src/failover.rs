//! What happens to a VM whose node stopped heartbeating: the pure decision. The node's
//! agent fences itself (stops its VMs) once it cannot report for `ttl`; the servers move a
//! VM only after `ttl + margin`, so that it never runs twice.

use std::time::Duration;

use corral_contract::{RestartPolicy, Vm};

/// What to do with one VM of a lost node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failover {
    /// Too early: the node may still be fencing itself.
    Wait(Duration),
    /// Unbind it, for the scheduler to place elsewhere.
    Reschedule,
    /// It cannot move (restart policy `never`, or node-local volumes): say so.
    Lost(String),
}

/// Decides for `vm`, whose node has been silent for `silent`. `on_node` names one of its
/// volumes whose file is on that node's own disk, if any (volumes of a shared pool, and
/// volumes not made yet, are not).
pub fn failover(
    vm: &Vm,
    on_node: Option<&str>,
    silent: Duration,
    ttl: Duration,
    margin: Duration,
) -> Failover {
    let deadline = ttl + margin;
    if silent < deadline {
        return Failover::Wait(deadline - silent);
    }
    if vm.spec.restart_policy == RestartPolicy::Never {
        return Failover::Lost(
            "its node is lost and its restart policy is never: it is not started elsewhere".into(),
        );
    }
    if let Some(volume) = on_node {
        return Failover::Lost(format!(
            "its node is lost and volume {volume} is on that node: it waits for the node"
        ));
    }
    Failover::Reschedule
}

#[cfg(test)]
mod tests {
    use corral_contract::{Boot, VmSpec};

    use super::*;

    fn vm(policy: RestartPolicy) -> Vm {
        let spec = VmSpec::builder(Boot::kernel("/k"))
            .restart_policy(policy)
            .build()
            .unwrap();
        Vm::new("v".parse().unwrap(), spec)
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn moves_only_after_the_fence_deadline_and_only_what_may_move() {
        let always = vm(RestartPolicy::Always);
        assert_eq!(
            failover(&always, None, S(12), S(10), S(5)),
            Failover::Wait(S(3))
        );
        assert_eq!(
            failover(&always, None, S(15), S(10), S(5)),
            Failover::Reschedule
        );
        assert!(matches!(
            failover(&vm(RestartPolicy::Never), None, S(60), S(10), S(5)),
            Failover::Lost(m) if m.contains("restart policy is never")
        ));
        let with_volume = vm(RestartPolicy::OnFailure);
        assert!(matches!(
            failover(&with_volume, Some("data"), S(60), S(10), S(5)),
            Failover::Lost(m) if m.contains("volume data")
        ));
        // Its volumes are in a shared pool (or not made): it moves.
        assert_eq!(
            failover(&with_volume, None, S(60), S(10), S(5)),
            Failover::Reschedule
        );
    }
}
