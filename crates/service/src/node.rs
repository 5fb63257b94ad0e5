//! Nodes as objects: the strategy of kind `Node` and its verbs (register, heartbeat, cordon,
//! drain). Agents register and heartbeat their own node; people cordon and drain.

use corral_contract::{Condition, Node, NodeStatus, Phase, Power, Vm, set_condition};

use crate::resources::now;
use crate::{Resources, ServiceError, Strategy, VmService};

/// The condition a drain sets on a VM: its node's agent stops it and gives it back to the
/// scheduler (`status.node` cleared) — the VM is never started elsewhere while it still runs.
pub const EVICTING: &str = "Evicting";

/// The strategy of kind `Node`: people change only `spec.unschedulable` and labels; the
/// status is the agent's.
#[derive(Debug, Default)]
pub struct NodeKind;

impl Strategy for NodeKind {
    type Object = Node;

    fn check_update(&self, _current: &Node, _desired: &Node) -> Result<(), ServiceError> {
        Ok(())
    }
}

/// Nodes.
pub type NodeService = Resources<NodeKind>;

impl Resources<NodeKind> {
    /// Creates the node `node` names, or takes it over (labels and status from `node`; the
    /// stored cordon stays): what an agent does when it starts. The stored liveness — last
    /// heartbeat and conditions — stays too: only heartbeats and the scheduler change it. A
    /// restarted agent must not look like a node that never reported (the scheduler would
    /// move its VMs at once, while their QEMUs still run there).
    pub async fn register(&self, node: Node) -> Result<Node, ServiceError> {
        let name = node.metadata.name.to_string();
        match self.create(node.clone()).await {
            Err(ServiceError::AlreadyExists { .. }) => {}
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        let labels = node.metadata.labels.clone();
        let status = node.status;
        self.modify(&name, 0, |stored| {
            stored.metadata.labels.clone_from(&labels);
            let heartbeat = stored.status.heartbeat.take();
            let conditions = std::mem::take(&mut stored.status.conditions);
            stored.status = NodeStatus {
                heartbeat,
                conditions,
                ..status.clone()
            };
            Ok(true)
        })
        .await
    }

    /// Records a heartbeat of the node's agent: `Ready`, the time, and what it has.
    pub async fn heartbeat(
        &self,
        name: &str,
        status: NodeStatus,
        seen: Option<Node>,
    ) -> Result<Node, ServiceError> {
        let at = now();
        let beat = |s: &mut NodeStatus| {
            let conditions = std::mem::take(&mut s.conditions);
            *s = NodeStatus {
                conditions,
                heartbeat: Some(at.clone()),
                ..status.clone()
            };
            let mut ready = Condition::new(
                corral_contract::NODE_READY,
                true,
                "Heartbeat",
                "the agent reports",
            );
            ready.last_transition = Some(at.clone());
            set_condition(&mut s.conditions, ready);
        };
        match seen {
            // One write, no read: a compare-and-swap on the node as last written (read
            // again only if someone else wrote it since, e.g. a cordon).
            Some(seen) => {
                self.modify_seen(name, seen, |node| {
                    beat(&mut node.status);
                    Ok(true)
                })
                .await
            }
            None => {
                self.update_status(name, |_, s| {
                    beat(s);
                    true
                })
                .await
            }
        }
    }

    /// Marks the node not `Ready` (its heartbeats stopped), saying why.
    pub async fn mark_lost(&self, name: &str, message: &str) -> Result<Node, ServiceError> {
        let at = now();
        self.update_status(name, |node, s| {
            if !node.ready() {
                return false;
            }
            let mut c = Condition::new(corral_contract::NODE_READY, false, "NodeLost", message);
            c.last_transition = Some(at.clone());
            set_condition(&mut s.conditions, c);
            true
        })
        .await
    }

    /// Cordons (`true`) or uncordons a node: whether the scheduler may place new VMs there.
    pub async fn cordon(&self, name: &str, cordoned: bool) -> Result<Node, ServiceError> {
        self.modify_live(name, |node| {
            let changed = node.spec.unschedulable != cordoned;
            node.spec.unschedulable = cordoned;
            if changed {
                node.metadata.generation += 1;
            }
            Ok(changed)
        })
        .await
    }

    /// Cordons a node and asks its agent to give back every VM bound to it (they are stopped
    /// there, then placed elsewhere). Returns the node and the VMs asked to move.
    pub async fn drain(
        &self,
        name: &str,
        vms: &VmService,
    ) -> Result<(Node, Vec<Vm>), ServiceError> {
        let node = self.cordon(name, true).await?;
        let (all, _) = vms.list("").await?;
        let mut moved = Vec::new();
        for vm in all
            .into_iter()
            .filter(|vm| vm.status.node.as_deref() == Some(name))
        {
            let key = vm.metadata.key();
            // Moved live where it can be (its node-local disks mirrored along); where the
            // move fails, the node's controller falls back to stopping it there (the request
            // says it is a drain's).
            let live = matches!(vm.status.phase, Phase::Running | Phase::Paused)
                && vm.spec.power != Power::Stopped
                && vm.spec.shares.is_empty();
            if live {
                match vms.migrate_for_drain(&key).await {
                    Ok(vm) => {
                        moved.push(vm);
                        continue;
                    }
                    Err(ServiceError::WrongState { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            let vm = vms
                .update_status(&key, |vm, s| {
                    if vm.status.node.as_deref() != Some(name)
                        || vm.status.condition(EVICTING).is_some()
                    {
                        return false;
                    }
                    let mut c = Condition::new(
                        EVICTING,
                        true,
                        "NodeDrained",
                        format!("node {name} is drained: the VM stops there and is placed again"),
                    );
                    c.last_transition = Some(now());
                    set_condition(&mut s.conditions, c);
                    true
                })
                .await?;
            moved.push(vm);
        }
        Ok((node, moved))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_node_registering_again_keeps_its_liveness_until_its_next_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let store = corral_store::SqliteStore::open(dir.path().join("state.db"))
            .await
            .unwrap();
        let nodes = NodeService::new(Arc::new(store));
        let node = Node::new("host-a".parse().unwrap());
        let first = nodes.register(node.clone()).await.unwrap();
        assert!(!first.ready(), "a new node is not Ready before it reports");
        let reported = nodes
            .heartbeat("host-a", NodeStatus::default(), None)
            .await
            .unwrap();
        assert!(reported.ready());
        // Its agent restarts: registered again, it still shows its last report.
        let again = nodes.register(node).await.unwrap();
        assert!(again.ready());
        assert_eq!(again.status.heartbeat, reported.status.heartbeat);
    }
}
