//! A host that runs VMs: what it has ([`NodeStatus`], reported by its agent) and whether new
//! VMs may go there ([`NodeSpec`], written by people: cordon).

use serde::{Deserialize, Serialize};

use crate::{Accel, Arch, ByteSize, Condition, Kind, Object, ObjectMeta, ResourceName};
use crate::{ValidationError, set_condition};

/// The condition an agent's heartbeat keeps true: `Ready`.
pub const NODE_READY: &str = "Ready";

/// A node: `{"kind": "Node", "metadata": {"name": "host-a", "labels": {"zone": "a"}},
/// "spec": {"unschedulable": true}}`. Nodes belong to no project; each agent registers its own.
// Deserialize and the schema (with `kind`): `strict_object!` in resource.rs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Name (the host's, unless the agent was given one) and labels the scheduler matches.
    pub metadata: ObjectMeta,
    /// What people decide about the node.
    pub spec: NodeSpec,
    /// What its agent reports.
    #[serde(default)]
    pub status: NodeStatus,
}

impl Node {
    /// A node named `name`, schedulable, with an empty status.
    pub fn new(name: ResourceName) -> Self {
        Node {
            metadata: ObjectMeta::new(name),
            spec: NodeSpec::default(),
            status: NodeStatus::default(),
        }
    }

    /// Whether the `Ready` condition holds.
    pub fn ready(&self) -> bool {
        self.status
            .conditions
            .iter()
            .any(|c| c.type_ == NODE_READY && c.status)
    }

    /// Sets the `Ready` condition.
    pub fn set_ready(&mut self, ready: bool, reason: &str, message: &str, at: &str) {
        let mut c = Condition::new(NODE_READY, ready, reason, message);
        c.last_transition = Some(at.to_owned());
        set_condition(&mut self.status.conditions, c);
    }
}

impl Object for Node {
    const KIND: Kind = Kind::Node;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Result<(), ValidationError> {
        self.metadata.validate()
    }
}

/// What people decide about a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Cordoned: the scheduler places no new VM here; VMs already here stay (default false).
    #[serde(default)]
    pub unschedulable: bool,
}

/// What a node has: the host's totals (`capacity`) or what VMs may use of them
/// (`allocatable`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct NodeResources {
    /// vCPUs.
    pub cpus: u32,
    /// RAM.
    #[schema(value_type = String)]
    pub memory: ByteSize,
    /// Disk space in the data directory.
    #[schema(value_type = String)]
    pub disk: ByteSize,
}

/// What is true of a node now, as its agent reports it. Every field has a default and unknown
/// fields are accepted (status is output).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct NodeStatus {
    /// The host's totals.
    pub capacity: NodeResources,
    /// What VMs may use (capacity less what the host keeps for itself).
    pub allocatable: NodeResources,
    /// The guest architectures QEMU runs there, the host's own first.
    pub arches: Vec<Arch>,
    /// Accelerators QEMU can use there (`kvm`, `tcg` …), best first.
    pub accelerators: Vec<Accel>,
    /// `Ready` while the agent heartbeats.
    pub conditions: Vec<Condition>,
    /// When the agent last reported, in RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,
    /// The agent's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The storage pools this node mounts (`corrald --storage-pool`), by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<NodePool>,
    /// `IP:port` where servers reach this node's own streams (console, memory,
    /// attestation): `corrald --node-listen`. Servers check there the node certificate of
    /// this node's name, so an address pointing elsewhere reaches nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub address: Option<std::net::SocketAddr>,
}

/// A storage pool as a node has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct NodePool {
    /// Its name, as volumes' `spec.pool` give it.
    pub name: String,
    /// Mounted on every node at the same path (NFS, CephFS …): volumes in it are not
    /// pinned to a node.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

impl NodeStatus {
    /// Whether this node mounts pool `name`.
    pub fn has_pool(&self, name: &str) -> bool {
        self.pools.iter().any(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_parses_strictly_and_reports_ready() {
        let json = r#"{"kind": "Node", "metadata": {"name": "host-a", "labels": {"zone": "a"}},
            "spec": {"unschedulable": true},
            "status": {"allocatable": {"cpus": 4, "memory": "8G"}, "arches": ["x86_64"],
                       "accelerators": ["tcg"]}}"#;
        let crate::Resource::Node(mut node) = serde_json::from_str(json).unwrap() else {
            panic!("not a node")
        };
        assert!(node.spec.unschedulable);
        assert_eq!(node.status.allocatable.memory, ByteSize::from_gib(8));
        assert_eq!(node.status.arches, [Arch::X86_64]);
        assert!(!node.ready());
        node.set_ready(true, "Heartbeat", "agent reports", "t1");
        assert!(node.ready());
        let err = serde_json::from_str::<crate::Resource>(&json.replace("unschedulable", "cordon"))
            .unwrap_err();
        assert!(err.to_string().contains("cordon"), "{err}");
    }
}
