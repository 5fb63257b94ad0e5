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

/// Decides for `vm`, whose node has been silent for `silent`.
pub fn failover(vm: &Vm, silent: Duration, ttl: Duration, margin: Duration) -> Failover {
    let deadline = ttl + margin;
    if silent < deadline {
        return Failover::Wait(deadline - silent);
    }
    if vm.spec.restart_policy == RestartPolicy::Never {
        return Failover::Lost(
            "its node is lost and its restart policy is never: it is not started elsewhere".into(),
        );
    }
    if let Some(volume) = vm.spec.volume_names().next() {
        return Failover::Lost(format!(
            "its node is lost and volume {volume} is on that node: it waits for the node"
        ));
    }
    Failover::Reschedule
}

#[cfg(test)]
mod tests {
    use corral_contract::{Boot, VmSpec, VolumeAttachment};

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
        assert_eq!(failover(&always, S(12), S(10), S(5)), Failover::Wait(S(3)));
        assert_eq!(failover(&always, S(15), S(10), S(5)), Failover::Reschedule);
        assert!(matches!(
            failover(&vm(RestartPolicy::Never), S(60), S(10), S(5)),
            Failover::Lost(m) if m.contains("restart policy is never")
        ));
        let mut with_volume = vm(RestartPolicy::OnFailure);
        with_volume.spec.volumes.push(VolumeAttachment {
            volume: "data".parse().unwrap(),
            readonly: false,
            serial: None,
        });
        assert!(matches!(
            failover(&with_volume, S(60), S(10), S(5)),
            Failover::Lost(m) if m.contains("volume data")
        ));
    }
}
