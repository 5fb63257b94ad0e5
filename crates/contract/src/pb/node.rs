//! Nodes to protobuf and back (see `convert.rs` for the rules). Status is output: read
//! leniently.

use super::convert::{decode_lenient, enum_value, required};
use crate::pb;
use crate::{
    ByteSize, Condition, Node, NodePool, NodeResources, NodeSpec, NodeStatus, ValidationError,
};

fn resources(r: &NodeResources) -> pb::NodeResources {
    pb::NodeResources {
        cpus: r.cpus,
        memory_bytes: r.memory.as_u64(),
        disk_bytes: r.disk.as_u64(),
    }
}

fn from_resources(r: Option<pb::NodeResources>) -> NodeResources {
    let r = r.unwrap_or_default();
    NodeResources {
        cpus: r.cpus,
        memory: ByteSize::new(r.memory_bytes),
        disk: ByteSize::new(r.disk_bytes),
    }
}

impl From<&Node> for pb::Node {
    fn from(n: &Node) -> Self {
        let s = &n.status;
        pb::Node {
            metadata: Some((&n.metadata).into()),
            spec: Some(pb::NodeSpec {
                unschedulable: n.spec.unschedulable,
            }),
            status: Some(pb::NodeStatus {
                capacity: Some(resources(&s.capacity)),
                allocatable: Some(resources(&s.allocatable)),
                arches: s.arches.iter().map(|a| enum_value(*a)).collect(),
                accelerators: s.accelerators.iter().map(|a| enum_value(*a)).collect(),
                conditions: s.conditions.iter().map(pb::Condition::from).collect(),
                heartbeat: s.heartbeat.clone(),
                version: s.version.clone(),
                pools: s
                    .pools
                    .iter()
                    .map(|p| pb::NodePool {
                        name: p.name.clone(),
                        shared: p.shared,
                    })
                    .collect(),
                address: s.address.map(|a| a.to_string()),
            }),
        }
    }
}

impl TryFrom<pb::Node> for Node {
    type Error = ValidationError;

    fn try_from(n: pb::Node) -> Result<Self, Self::Error> {
        let s = n.status.unwrap_or_default();
        Ok(Node {
            metadata: n.metadata.ok_or_else(|| required("metadata"))?.try_into()?,
            spec: NodeSpec {
                unschedulable: n.spec.is_some_and(|s| s.unschedulable),
            },
            status: NodeStatus {
                capacity: from_resources(s.capacity),
                allocatable: from_resources(s.allocatable),
                arches: s.arches.into_iter().filter_map(decode_lenient).collect(),
                accelerators: s
                    .accelerators
                    .into_iter()
                    .filter_map(decode_lenient)
                    .collect(),
                conditions: s.conditions.into_iter().map(Condition::from).collect(),
                heartbeat: s.heartbeat,
                version: s.version,
                pools: s
                    .pools
                    .into_iter()
                    .map(|p| NodePool {
                        name: p.name,
                        shared: p.shared,
                    })
                    .collect(),
                address: s
                    .address
                    .map(|a| {
                        a.parse().map_err(|_| {
                            ValidationError::new(
                                "status.address",
                                "must be an IP:port, e.g. 10.0.0.5:7444",
                            )
                        })
                    })
                    .transpose()?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Accel, Arch};

    #[test]
    fn a_node_survives_the_round_trip() {
        let mut node = Node::new("host-a".parse().unwrap());
        node.metadata.labels.insert("zone".into(), "a".into());
        node.spec.unschedulable = true;
        node.status.allocatable.memory = ByteSize::from_gib(8);
        node.status.arches = vec![Arch::X86_64, Arch::Aarch64];
        node.status.accelerators = vec![Accel::Tcg];
        node.set_ready(true, "Heartbeat", "ok", "2026-01-01T00:00:00Z");
        node.status.heartbeat = Some("2026-01-01T00:00:00Z".into());
        assert_eq!(Node::try_from(pb::Node::from(&node)).unwrap(), node);
    }
}
