//! Tunnels: a byte stream to a TCP port a VM forwards (`spec.networks[].forwards`), opened on
//! the node that runs the VM. `corral vm ssh` rides one when the forward is on another host
//! than the caller's: through a server, then the VM's agent, to the forward's host port there.
//!
//! Only ports the VM itself forwards can be reached, and only on its node's loopback or the
//! forward's own address: a tunnel never names a host or port of its own, so no caller reaches
//! anything of the host that the VM's forwards do not already expose.

use std::net::{Ipv4Addr, SocketAddr};

use corral_contract::{Protocol, Vm};
use tokio::io::DuplexStream;

use crate::{NodeRoute, ServiceError, Stored, VmService};

/// How many bytes a tunnel buffers each way.
const BUFFER: usize = 64 << 10;

/// Opens tunnels to VMs' forwarded ports.
#[derive(Debug, Clone)]
pub struct TunnelService {
    vms: VmService,
    route: Option<NodeRoute>,
}

impl TunnelService {
    /// Tunnels to the forwards of VMs this node runs.
    pub fn new(vms: VmService) -> Self {
        TunnelService { vms, route: None }
    }

    /// Reaches VMs that other nodes run over `route` (a server's).
    #[must_use]
    pub fn with_route(mut self, route: NodeRoute) -> Self {
        self.route = Some(route);
        self
    }

    /// A stream to guest TCP port `port` of VM `name`, through the host port its forward
    /// has; closed when the connection or the returned end is.
    pub async fn open(&self, name: &str, port: u16) -> Result<DuplexStream, ServiceError> {
        let vm = self.vms.get(name).await?;
        let target = forward(&vm, name, port)?;
        if let Some(route) = &self.route {
            if let Some(node) = route.elsewhere(&vm) {
                return route.link().tunnel(node, name, port).await;
            }
        }
        let mut tcp =
            tokio::net::TcpStream::connect(target)
                .await
                .map_err(|e| ServiceError::WrongState {
                    kind: Vm::NOUN,
                    name: name.to_owned(),
                    state: format!("not answering on guest port {port} (host {target}: {e})"),
                    rule: "wait until the guest's service is up".into(),
                })?;
        let _ = tcp.set_nodelay(true);
        let (mut near, far) = tokio::io::duplex(BUFFER);
        tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut near, &mut tcp).await;
        });
        Ok(far)
    }
}

/// Where VM `vm` forwards guest TCP port `port` on its node: the forward's address, or
/// loopback for one on every address.
fn forward(vm: &Vm, name: &str, port: u16) -> Result<SocketAddr, ServiceError> {
    let found = vm
        .status
        .networks
        .iter()
        .flat_map(|n| &n.forwards)
        .find(|f| f.guest_port == port && f.protocol == Protocol::Tcp);
    match found {
        Some(f) => {
            let ip = f
                .host_address
                .filter(|a| !a.is_unspecified())
                .unwrap_or(Ipv4Addr::LOCALHOST);
            Ok(SocketAddr::from((ip, f.host_port)))
        }
        None => {
            let declared = vm
                .spec
                .networks
                .iter()
                .flat_map(|n| &n.forwards)
                .any(|f| f.guest_port == port && f.protocol == Protocol::Tcp);
            Err(ServiceError::WrongState {
                kind: Vm::NOUN,
                name: name.to_owned(),
                state: if declared {
                    format!("{} (its forward of port {port} is not up)", vm.status.phase)
                } else {
                    format!("forwarding no TCP port {port}")
                },
                rule: if declared {
                    "start it first".into()
                } else {
                    format!("declare a forward of guest port {port} in spec.networks[].forwards")
                },
            })
        }
    }
}
