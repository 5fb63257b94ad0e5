//! Where a VM goes: the scheduler's pure decision. Filter the nodes that can take the VM,
//! score the rest, break ties by name. No I/O: the [`Scheduler`](crate::Scheduler) loop reads
//! the store, calls [`place`] and binds by compare-and-swap.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use corral_contract::{Accel, Node, Power, Vm};

/// How the scheduler weighs nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleConfig {
    /// vCPUs the VMs of a node may have together, per allocatable vCPU.
    pub cpu_overcommit: f64,
    /// Guest RAM the VMs of a node may have together, per allocatable byte.
    pub memory_overcommit: f64,
    /// Spread VMs over nodes (the least used first) or pack them (the most used first).
    pub spread: bool,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        // vCPUs are time-shared: a 2-core developer machine (or CI runner) runs a dozen
        // small VMs, as it did before there was a scheduler. RAM is not: a guest that touches
        // its memory is an OOM kill away.
        ScheduleConfig {
            cpu_overcommit: 16.0,
            memory_overcommit: 1.5,
            spread: true,
        }
    }
}

/// Why a node cannot take a VM; one per node, the first that applies in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Misfit {
    /// Its agent does not heartbeat.
    NotReady,
    /// Cordoned.
    Cordoned,
    /// It lacks a label `spec.placement.node_selector` asks for.
    Selector,
    /// The VM's node-local volumes are on another node.
    Pinned,
    /// It lacks a storage pool the VM's volumes are in.
    Pool,
    /// QEMU there does not run the VM's architecture.
    Arch,
    /// It lacks the accelerator the VM asks for.
    Accelerator,
    /// Its VMs' vCPUs leave too few for this one.
    Cpus,
    /// Its VMs' RAM leaves too little for this one.
    Memory,
}

impl Misfit {
    fn as_str(self) -> &'static str {
        match self {
            Misfit::NotReady => "not ready",
            Misfit::Cordoned => "cordoned",
            Misfit::Selector => "not matching spec.placement.node_selector",
            Misfit::Pinned => "not holding its volumes",
            Misfit::Pool => "without its volumes' storage pool",
            Misfit::Arch => "without its architecture",
            Misfit::Accelerator => "without its accelerator",
            Misfit::Cpus => "insufficient cpus",
            Misfit::Memory => "insufficient memory",
        }
    }
}

/// No node can take the VM: how many nodes there are and why each one cannot. Displays as
/// `0/3 nodes: 2 insufficient memory, 1 cordoned` (most common reason first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    /// Nodes looked at.
    pub nodes: usize,
    /// How many nodes fail for each reason.
    pub misfits: BTreeMap<Misfit, usize>,
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return f.write_str("0/0 nodes: no node is registered");
        }
        let mut reasons: Vec<_> = self.misfits.iter().collect();
        // Most common first; equal counts in the enum's order.
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let reasons: Vec<String> = reasons
            .iter()
            .map(|(m, n)| format!("{n} {}", m.as_str()))
            .collect();
        write!(f, "0/{} nodes: {}", self.nodes, reasons.join(", "))
    }
}

/// What a VM's volumes ask of the node it runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeNeeds {
    /// The node its node-local volumes are on (made there, or made on the node of another VM
    /// that uses them).
    pub pinned: Option<String>,
    /// The storage pools its volumes are in (`spec.pool`): the node must have each.
    pub pools: Vec<String>,
}

impl VolumeNeeds {
    /// Nothing: a VM without volumes, or one whose volumes can be anywhere.
    pub const NONE: VolumeNeeds = VolumeNeeds {
        pinned: None,
        pools: Vec::new(),
    };

    /// Asks for pool `pool` too (once).
    pub fn add_pool(&mut self, pool: &str) {
        if !self.pools.iter().any(|p| p == pool) {
            self.pools.push(pool.to_owned());
        }
    }

    /// Only a pin to `node`.
    pub fn pinned(node: &str) -> VolumeNeeds {
        VolumeNeeds {
            pinned: Some(node.to_owned()),
            pools: Vec::new(),
        }
    }
}

/// What the VMs bound to one node hold.
#[derive(Debug, Default, Clone)]
struct Load {
    cpus: u64,
    memory: u64,
    vms: usize,
    /// VMs per `spec.placement.anti_affinity` group.
    groups: HashMap<String, usize>,
}

/// What the VMs bound to each node hold: built once from the bound VMs and kept up to date
/// with [`Loads::add`] as a pass binds more, so that placing a VM costs one look at each
/// node, not one at every bound VM.
#[derive(Debug, Default, Clone)]
pub struct Loads {
    by_node: HashMap<String, Load>,
}

impl Loads {
    /// The loads of the VMs in `bound` (those without a `status.node` are skipped).
    pub fn of<'a>(bound: impl IntoIterator<Item = &'a Vm>) -> Loads {
        let mut loads = Loads::default();
        for vm in bound {
            if let Some(node) = vm.status.node.as_deref() {
                loads.add(vm, node);
            }
        }
        loads
    }

    /// Counts `vm` on `node`.
    pub fn add(&mut self, vm: &Vm, node: &str) {
        self.by_node.entry(node.to_owned()).or_default().add(vm);
    }
}

impl Load {
    fn add(&mut self, vm: &Vm) {
        // A stopped VM keeps its place but holds nothing.
        if vm.spec.power != Power::Stopped {
            self.cpus += u64::from(vm.spec.cpus);
            self.memory += vm.spec.memory.as_u64();
        }
        self.vms += 1;
        if let Some(group) = vm.spec.placement.anti_affinity.as_deref() {
            *self.groups.entry(group.to_owned()).or_default() += 1;
        }
    }
}

/// The nodes one scheduling pass places VMs on, with what their VMs hold: built once per
/// pass and kept up to date with [`Fleet::add`] as the pass binds more. Placing a VM looks at
/// each node once, by position: what rules a node out for every VM (not ready, cordoned) is
/// judged once, and its load is beside it, not looked up by name.
#[derive(Debug)]
pub struct Fleet<'a> {
    nodes: &'a [Node],
    /// Per node, in `nodes`' order: why it takes no VM at all, if so.
    closed: Vec<Option<Misfit>>,
    loads: Vec<Load>,
}

impl<'a> Fleet<'a> {
    /// `nodes` with `loads`, the loads of the VMs bound to them.
    pub fn new(nodes: &'a [Node], mut loads: Loads) -> Fleet<'a> {
        let closed = nodes
            .iter()
            .map(|node| {
                if !node.ready() {
                    Some(Misfit::NotReady)
                } else if node.spec.unschedulable {
                    Some(Misfit::Cordoned)
                } else {
                    None
                }
            })
            .collect();
        let loads = nodes
            .iter()
            .map(|node| {
                loads
                    .by_node
                    .remove(node.metadata.name.as_str())
                    .unwrap_or_default()
            })
            .collect();
        Fleet {
            nodes,
            closed,
            loads,
        }
    }

    /// The node `vm` should go to (its position in the fleet), given what its volumes ask of
    /// a node. The same inputs always give the same answer.
    pub fn place(
        &self,
        vm: &Vm,
        needs: &VolumeNeeds,
        config: &ScheduleConfig,
    ) -> Result<usize, Unschedulable> {
        let group = vm.spec.placement.anti_affinity.as_deref();
        let mut misfits = BTreeMap::new();
        let mut best: Option<((usize, i64), &str, usize)> = None;
        for (i, node) in self.nodes.iter().enumerate() {
            let load = &self.loads[i];
            let fits = match self.closed[i] {
                Some(misfit) => Err(misfit),
                None => fit(vm, node, load, needs, config),
            };
            match fits {
                Err(misfit) => *misfits.entry(misfit).or_insert(0) += 1,
                Ok(used) => {
                    // Lower is better: fewer VMs of the group, then the least (spread) or
                    // most (pack) used, then the name.
                    let name = node.metadata.name.as_str();
                    let in_group = group.map_or(0, |g| load.groups.get(g).copied().unwrap_or(0));
                    let key = (in_group, if config.spread { used } else { -used });
                    if best.is_none_or(|(k, n, _)| (key, name) < (k, n)) {
                        best = Some((key, name, i));
                    }
                }
            }
        }
        match best {
            Some((_, _, i)) => Ok(i),
            None => Err(Unschedulable {
                nodes: self.nodes.len(),
                misfits,
            }),
        }
    }

    /// The name of the node at `index`.
    pub fn name(&self, index: usize) -> &'a str {
        self.nodes[index].metadata.name.as_str()
    }

    /// Counts `vm` on the node at `index`.
    pub fn add(&mut self, vm: &Vm, index: usize) {
        self.loads[index].add(vm);
    }
}

/// The node `vm` should go to, among `nodes`, given the VMs already `bound` (every VM with a
/// `status.node`; the VM itself is skipped) and what its volumes ask of a node (`needs`).
/// The same inputs always give the same answer.
pub fn place(
    vm: &Vm,
    nodes: &[Node],
    bound: &[Vm],
    needs: &VolumeNeeds,
    config: &ScheduleConfig,
) -> Result<String, Unschedulable> {
    let others = bound
        .iter()
        .filter(|other| other.metadata.uid != vm.metadata.uid || vm.metadata.uid.is_empty());
    place_with(vm, nodes, &Loads::of(others), needs, config)
}

/// [`place`] with the loads of the bound VMs counted already (`vm` itself not among them).
pub fn place_with(
    vm: &Vm,
    nodes: &[Node],
    loads: &Loads,
    needs: &VolumeNeeds,
    config: &ScheduleConfig,
) -> Result<String, Unschedulable> {
    let fleet = Fleet::new(nodes, loads.clone());
    fleet
        .place(vm, needs, config)
        .map(|i| fleet.name(i).to_owned())
}

/// Whether `node` (ready and not cordoned: [`Fleet`] judges that once) with `load` can take
/// `vm`; if so, how used it would be after, in thousandths of its (overcommitted) capacity,
/// CPU and memory averaged.
fn fit(
    vm: &Vm,
    node: &Node,
    load: &Load,
    needs: &VolumeNeeds,
    config: &ScheduleConfig,
) -> Result<i64, Misfit> {
    let name = node.metadata.name.as_str();
    let selector = &vm.spec.placement.node_selector;
    if selector
        .iter()
        .any(|(k, v)| node.metadata.labels.get(k) != Some(v))
    {
        return Err(Misfit::Selector);
    }
    if needs.pinned.as_deref().is_some_and(|p| p != name) {
        return Err(Misfit::Pinned);
    }
    if needs.pools.iter().any(|p| !node.status.has_pool(p)) {
        return Err(Misfit::Pool);
    }
    if !node.status.arches.contains(&vm.spec.arch) {
        return Err(Misfit::Arch);
    }
    if vm.spec.accel != Accel::Auto && !node.status.accelerators.contains(&vm.spec.accel) {
        return Err(Misfit::Accelerator);
    }
    let alloc = &node.status.allocatable;
    let cpu_cap = f64::from(alloc.cpus) * config.cpu_overcommit;
    let mem_cap = alloc.memory.as_u64() as f64 * config.memory_overcommit;
    let (cpus, memory) = if vm.spec.power == Power::Stopped {
        (0, 0)
    } else {
        (u64::from(vm.spec.cpus), vm.spec.memory.as_u64())
    };
    let cpus_after = (load.cpus + cpus) as f64;
    let memory_after = (load.memory + memory) as f64;
    if cpus_after > cpu_cap {
        return Err(Misfit::Cpus);
    }
    if memory_after > mem_cap {
        return Err(Misfit::Memory);
    }
    let share = |used: f64, cap: f64| if cap > 0.0 { used / cap } else { 1.0 };
    Ok(((share(cpus_after, cpu_cap) + share(memory_after, mem_cap)) * 500.0) as i64)
}

#[cfg(test)]
mod tests {
    use corral_contract::{Arch, Boot, ByteSize, NodeResources, Placement, VmSpec};

    use super::*;

    fn node(name: &str, cpus: u32, gib: u64) -> Node {
        let mut n = Node::new(name.parse().unwrap());
        n.status.allocatable = NodeResources {
            cpus,
            memory: ByteSize::from_gib(gib),
            disk: ByteSize::from_gib(100),
        };
        n.status.capacity = n.status.allocatable.clone();
        n.status.arches = vec![Arch::X86_64];
        n.status.accelerators = vec![Accel::Tcg];
        n.set_ready(true, "Heartbeat", "", "t0");
        n
    }

    fn vm(name: &str, cpus: u32, gib: u64) -> Vm {
        let spec = VmSpec::builder(Boot::kernel("/k"))
            .cpus(cpus)
            .memory(ByteSize::from_gib(gib))
            .build()
            .unwrap();
        let mut vm = Vm::new(name.parse().unwrap(), spec);
        vm.metadata.uid = format!("uid-{name}");
        vm
    }

    fn on(mut vm: Vm, node: &str) -> Vm {
        vm.status.node = Some(node.into());
        vm
    }

    fn cfg() -> ScheduleConfig {
        ScheduleConfig {
            cpu_overcommit: 1.0,
            memory_overcommit: 1.0,
            spread: true,
        }
    }

    #[test]
    fn spread_takes_the_least_used_node_and_pack_the_most_used() {
        let nodes = [node("a", 4, 8), node("b", 4, 8)];
        let bound = [on(vm("x", 1, 2), "a")];
        assert_eq!(
            place(&vm("new", 1, 1), &nodes, &bound, &VolumeNeeds::NONE, &cfg()).unwrap(),
            "b"
        );
        let pack = ScheduleConfig {
            spread: false,
            ..cfg()
        };
        assert_eq!(
            place(&vm("new", 1, 1), &nodes, &bound, &VolumeNeeds::NONE, &pack).unwrap(),
            "a"
        );
    }

    #[test]
    fn ties_break_by_name_whatever_the_order_of_nodes() {
        let nodes = [node("c", 4, 8), node("a", 4, 8), node("b", 4, 8)];
        assert_eq!(
            place(&vm("v", 1, 1), &nodes, &[], &VolumeNeeds::NONE, &cfg()).unwrap(),
            "a"
        );
        let mut reversed = nodes.clone();
        reversed.reverse();
        assert_eq!(
            place(&vm("v", 1, 1), &reversed, &[], &VolumeNeeds::NONE, &cfg()).unwrap(),
            "a"
        );
    }

    #[test]
    fn unschedulable_counts_each_class_of_node() {
        let mut cordoned = node("c", 8, 64);
        cordoned.spec.unschedulable = true;
        let nodes = [node("a", 8, 1), node("b", 8, 1), cordoned];
        let err = place(&vm("big", 1, 2), &nodes, &[], &VolumeNeeds::NONE, &cfg()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes: 2 insufficient memory, 1 cordoned"
        );
        let err = place(&vm("v", 1, 1), &[], &[], &VolumeNeeds::NONE, &cfg()).unwrap_err();
        assert_eq!(err.to_string(), "0/0 nodes: no node is registered");
    }

    #[test]
    fn capacity_counts_bound_running_vms_and_the_overcommit_ratio() {
        let nodes = [node("a", 2, 4)];
        let bound = [on(vm("x", 2, 3), "a")];
        let err = place(&vm("v", 1, 1), &nodes, &bound, &VolumeNeeds::NONE, &cfg()).unwrap_err();
        assert_eq!(err.to_string(), "0/1 nodes: 1 insufficient cpus");
        let over = ScheduleConfig {
            cpu_overcommit: 2.0,
            ..cfg()
        };
        assert_eq!(
            place(&vm("v", 1, 1), &nodes, &bound, &VolumeNeeds::NONE, &over).unwrap(),
            "a"
        );
        let err = place(&vm("v", 1, 2), &nodes, &bound, &VolumeNeeds::NONE, &over).unwrap_err();
        assert_eq!(err.to_string(), "0/1 nodes: 1 insufficient memory");
        // A stopped VM keeps its binding but holds nothing.
        let mut stopped = on(vm("x", 2, 3), "a");
        stopped.spec.power = Power::Stopped;
        assert_eq!(
            place(
                &vm("v", 2, 4),
                &nodes,
                &[stopped],
                &VolumeNeeds::NONE,
                &cfg()
            )
            .unwrap(),
            "a"
        );
        // The VM itself, already bound, does not count against its own place.
        let me = on(vm("v", 2, 4), "a");
        assert_eq!(
            place(
                &me,
                &nodes,
                std::slice::from_ref(&me),
                &VolumeNeeds::NONE,
                &cfg()
            )
            .unwrap(),
            "a"
        );
    }

    #[test]
    fn selector_arch_accelerator_readiness_and_pins_filter() {
        let mut zoned = node("z", 4, 8);
        zoned.metadata.labels.insert("zone".into(), "a".into());
        let mut lost = node("l", 4, 8);
        lost.set_ready(false, "NodeLost", "", "t1");
        let nodes = [node("a", 4, 8), zoned, lost];
        let mut v = vm("v", 1, 1);
        v.spec.placement = Placement {
            node_selector: [("zone".to_owned(), "a".to_owned())].into(),
            anti_affinity: None,
        };
        assert_eq!(
            place(&v, &nodes, &[], &VolumeNeeds::NONE, &cfg()).unwrap(),
            "z"
        );
        let err = place(&v, &nodes, &[], &VolumeNeeds::pinned("a"), &cfg()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes: 1 not ready, 1 not matching spec.placement.node_selector, 1 not holding its volumes"
        );
        assert_eq!(
            place(
                &vm("w", 1, 1),
                &nodes,
                &[],
                &VolumeNeeds::pinned("z"),
                &cfg()
            )
            .unwrap(),
            "z"
        );
        // Pools: only nodes with every pool the VM's volumes are in.
        let mut pooled = nodes.clone();
        pooled[0].status.pools = vec![corral_contract::NodePool {
            name: "nfs".into(),
            shared: true,
        }];
        let needs = VolumeNeeds {
            pinned: None,
            pools: vec!["nfs".into()],
        };
        assert_eq!(
            place(&vm("p", 1, 1), &pooled, &[], &needs, &cfg()).unwrap(),
            "a"
        );
        let err = place(&vm("p", 1, 1), &nodes, &[], &needs, &cfg()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes: 2 without its volumes' storage pool, 1 not ready"
        );
        let mut arm = vm("arm", 1, 1);
        arm.spec.arch = Arch::Aarch64;
        let err = place(&arm, &nodes, &[], &VolumeNeeds::NONE, &cfg()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes: 2 without its architecture, 1 not ready"
        );
        let mut kvm = vm("kvm", 1, 1);
        kvm.spec.accel = Accel::Kvm;
        let err = place(&kvm, &nodes, &[], &VolumeNeeds::NONE, &cfg()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes: 2 without its accelerator, 1 not ready"
        );
    }

    #[test]
    fn anti_affinity_keeps_a_group_apart_before_it_weighs_load() {
        let nodes = [node("a", 8, 16), node("b", 8, 16)];
        let grouped = |name: &str| {
            let mut v = vm(name, 1, 1);
            v.spec.placement.anti_affinity = Some("web".into());
            v
        };
        // b is busier, but a already holds a VM of the group.
        let bound = [on(grouped("web-1"), "a"), on(vm("big", 4, 8), "b")];
        assert_eq!(
            place(
                &grouped("web-2"),
                &nodes,
                &bound,
                &VolumeNeeds::NONE,
                &cfg()
            )
            .unwrap(),
            "b"
        );
        // Only preferred: with every node holding one, the least used wins.
        let bound = [on(grouped("web-1"), "a"), on(grouped("web-2"), "b")];
        let mut busy = bound.to_vec();
        busy.push(on(vm("big", 4, 8), "a"));
        assert_eq!(
            place(&grouped("web-3"), &nodes, &busy, &VolumeNeeds::NONE, &cfg()).unwrap(),
            "b"
        );
    }

    #[test]
    fn loads_kept_up_to_date_decide_as_a_recount_does() {
        // A pass counts the bound VMs once and adds each VM it places; every decision must
        // be the one `place` makes from the full list, groups and stopped VMs included.
        let nodes = [node("a", 24, 16), node("b", 16, 12), node("c", 24, 16)];
        let mut bound = vec![on(vm("old", 2, 4), "c")];
        let mut loads = Loads::of(&bound);
        for i in 0..30 {
            let mut v = vm(&format!("vm-{i}"), 1 + i % 2, 1);
            if i % 3 == 0 {
                v.spec.placement.anti_affinity = Some("web".into());
            }
            if i % 7 == 0 {
                v.spec.power = Power::Stopped;
            }
            let recounted = place(&v, &nodes, &bound, &VolumeNeeds::NONE, &cfg());
            let kept = place_with(&v, &nodes, &loads, &VolumeNeeds::NONE, &cfg());
            assert_eq!(kept, recounted, "VM {i}");
            let Ok(n) = kept else { break };
            loads.add(&v, &n);
            bound.push(on(v, &n));
        }
        assert_eq!(bound.len(), 31, "every VM placed");
    }

    #[test]
    fn twelve_vms_spread_evenly_over_three_nodes() {
        let nodes = [node("a", 4, 8), node("b", 4, 8), node("c", 4, 8)];
        let mut bound = Vec::new();
        for i in 0..12 {
            let v = vm(&format!("vm-{i}"), 1, 1);
            let n = place(&v, &nodes, &bound, &VolumeNeeds::NONE, &cfg()).unwrap();
            bound.push(on(v, &n));
        }
        for n in ["a", "b", "c"] {
            let count = bound
                .iter()
                .filter(|v| v.status.node.as_deref() == Some(n))
                .count();
            assert_eq!(count, 4, "node {n}");
        }
    }
}
