//! Networks and the port registry, on the real SQLite store.

use std::sync::Arc;

use corral_contract::{
    Boot, Network, NetworkAttachment, NetworkSpec, PortForward, Protocol, Vm, VmSpec,
};
use corral_service::{NetworkService, ServiceError, VmService};
use corral_store::SqliteStore;

async fn services(range: &str) -> (VmService, NetworkService, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(dir.path().join("state.db"))
            .await
            .unwrap(),
    );
    let vms = VmService::new(store.clone()).with_port_range(range.parse().unwrap());
    let nets = NetworkService::new(store);
    nets.ensure_default().await.unwrap();
    (vms, nets, dir)
}

fn vm(name: &str, forwards: Vec<PortForward>) -> Vm {
    let mut att = NetworkAttachment::new("default".parse().unwrap());
    att.forwards = forwards;
    let spec = VmSpec::builder(Boot::kernel("/k"))
        .network(att)
        .build()
        .unwrap();
    Vm::new(name.parse().unwrap(), spec)
}

fn free_range(len: u16) -> String {
    // A range the OS considers free now: start from an ephemeral port it hands out.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = l
        .local_addr()
        .unwrap()
        .port()
        .saturating_sub(len + 1)
        .max(1025);
    format!("{p}-{}", p + len - 1)
}

#[tokio::test]
async fn ports_and_macs_are_picked_once_and_never_shared() {
    let (vms, _nets, _dir) = services(&free_range(50)).await;
    let a = vms
        .create(vm("a", vec![PortForward::tcp(22), PortForward::tcp(80)]))
        .await
        .unwrap();
    let b = vms
        .create(vm("b", vec![PortForward::tcp(22)]))
        .await
        .unwrap();
    let pa: Vec<u16> = a.spec.networks[0]
        .forwards
        .iter()
        .map(|f| f.host_port.unwrap())
        .collect();
    let pb = b.spec.networks[0].host_port_of(22).unwrap();
    assert_ne!(pa[0], pa[1]);
    assert!(!pa.contains(&pb), "{pa:?} {pb}");
    let (ma, mb) = (
        a.spec.networks[0].mac.unwrap(),
        b.spec.networks[0].mac.unwrap(),
    );
    assert_ne!(ma, mb);
    assert!(ma.to_string().starts_with("02:c0:"), "{ma}");

    // Re-applying the original manifest (no ports, no MAC) keeps what was picked.
    let mut again = vm("a", vec![PortForward::tcp(22), PortForward::tcp(80)]);
    again.metadata.labels.insert("x".into(), "y".into());
    let updated = vms.update(again).await.unwrap();
    assert_eq!(updated.spec.networks, a.spec.networks);
    assert_eq!(updated.metadata.generation, a.metadata.generation);
}

#[tokio::test]
async fn an_explicit_port_another_vm_holds_names_that_vm() {
    let (vms, _nets, _dir) = services(&free_range(20)).await;
    let a = vms
        .create(vm("holder", vec![PortForward::tcp(22)]))
        .await
        .unwrap();
    let port = a.spec.networks[0].host_port_of(22).unwrap();
    let mut fwd = PortForward::tcp(22);
    fwd.host_port = Some(port);
    let err = vms.create(vm("late", vec![fwd])).await.unwrap_err();
    assert!(matches!(err, ServiceError::Invalid(_)));
    assert_eq!(
        err.to_string(),
        format!(
            "spec.networks[0].forwards[0].host_port: {port}/tcp is already forwarded to VM \"holder\": pick another port or leave it out"
        )
    );
    assert!(vms.get("late").await.is_err(), "nothing was created");
    // UDP on the same number is another port.
    let mut udp = PortForward::tcp(22);
    udp.protocol = Protocol::Udp;
    udp.host_port = Some(port);
    vms.create(vm("udp", vec![udp])).await.unwrap();
}

#[tokio::test]
async fn a_port_something_else_listens_on_is_refused_or_skipped() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let (vms, _nets, _dir) = services(&format!("{port}-{}", port + 3)).await;
    let mut fwd = PortForward::tcp(22);
    fwd.host_port = Some(port);
    let err = vms
        .create(vm("a", vec![fwd]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{port}/tcp is in use on this host")),
        "{err}"
    );
    let b = vms
        .create(vm("b", vec![PortForward::tcp(22)]))
        .await
        .unwrap();
    assert_ne!(
        b.spec.networks[0].host_port_of(22),
        Some(port),
        "the busy port is skipped"
    );
}

/// A cluster's server: the VMs' forwards listen on the nodes, so what listens on the server's
/// own host neither refuses a port nor is skipped; other VMs' ports still are.
#[tokio::test]
async fn a_cluster_server_does_not_judge_ports_by_its_own_host() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let (vms, _nets, _dir) = services(&format!("{port}-{}", port + 3)).await;
    let vms = vms.with_ports_elsewhere();
    let mut fwd = PortForward::tcp(22);
    fwd.host_port = Some(port);
    let a = vms.create(vm("a", vec![fwd.clone()])).await.unwrap();
    assert_eq!(a.spec.networks[0].host_port_of(22), Some(port));
    let b = vms
        .create(vm("b", vec![PortForward::tcp(22)]))
        .await
        .unwrap();
    assert_eq!(
        b.spec.networks[0].host_port_of(22),
        Some(port + 1),
        "the first port no VM holds"
    );
    let err = vms
        .create(vm("c", vec![fwd]))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already forwarded to VM \"a\""), "{err}");
}

#[tokio::test]
async fn a_full_range_is_a_clear_error() {
    let (vms, _nets, _dir) = services(&free_range(1)).await;
    vms.create(vm("a", vec![PortForward::tcp(22)]))
        .await
        .unwrap();
    let err = vms
        .create(vm("b", vec![PortForward::tcp(22)]))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no free tcp port left in"), "{err}");
}

#[tokio::test]
async fn missing_networks_are_waited_for_and_joined_ones_cannot_go() {
    let (vms, nets, _dir) = services(&free_range(10)).await;
    let mut v = vm("a", vec![PortForward::tcp(22)]);
    v.spec.networks[0].network = "lan".parse().unwrap();
    // Not there yet: the VM is accepted with its allocations and waits for the network.
    let made = vms.create(v).await.unwrap();
    assert!(made.spec.networks[0].mac.is_some());
    assert!(made.spec.networks[0].forwards[0].host_port.is_some());
    nets.create(Network::new("lan".parse().unwrap(), NetworkSpec::default()))
        .await
        .unwrap();
    let err = nets.delete("lan", None).await.unwrap_err();
    assert!(
        matches!(&err, ServiceError::InUse { by, .. } if by == &["a"]),
        "{err}"
    );
    assert!(err.to_string().contains("is used by VM \"a\""), "{err}");
    assert_eq!(nets.list("").await.unwrap().0.len(), 2);
}
