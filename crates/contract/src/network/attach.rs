use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{MacAddr, NetworkMode, Protocol};
use crate::{ResourceName, ValidationError};

/// A VM's place on a network, in `spec.networks`: `{"network": "default", "forwards":
/// [{"guest_port": 22}]}`.
///
/// `mac` and each forward's `host_port` may be left out: the server then picks them once, on
/// create, and writes them into the spec, so they stay the same for the VM's whole life (as
/// Kubernetes allocates a Service's node ports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkAttachment {
    /// The [`Network`](super::Network) to join.
    pub network: ResourceName,
    /// The guest NIC's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::mac_or_null, required = false)]
    pub mac: Option<MacAddr>,
    /// Host ports forwarded to guest ports (user networks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<PortForward>,
}

impl NetworkAttachment {
    /// An attachment to `network` with no forwards and a MAC the server picks.
    pub fn new(network: ResourceName) -> Self {
        NetworkAttachment {
            network,
            mac: None,
            forwards: Vec::new(),
        }
    }

    /// Adds a TCP forward to `guest_port` from a host port the server picks.
    pub fn forward(mut self, guest_port: u16) -> Self {
        self.forwards.push(PortForward::tcp(guest_port));
        self
    }

    /// The host port forwarded to `guest_port` over TCP, once the server has picked it.
    pub fn host_port_of(&self, guest_port: u16) -> Option<u16> {
        self.forwards
            .iter()
            .find(|f| f.protocol == Protocol::Tcp && f.guest_port == guest_port)
            .and_then(|f| f.host_port)
    }
}

/// A host port forwarded to a guest port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    /// The port in the guest, 1-65535.
    #[schema(schema_with = crate::schema::port)]
    pub guest_port: u16,
    /// The port on the host, 1-65535; picked from the server's range when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::port_or_null, required = false)]
    pub host_port: Option<u16>,
    /// tcp (default) or udp.
    #[serde(default)]
    pub protocol: Protocol,
    /// The host address to listen on (default 127.0.0.1: only this host can connect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::listen_ipv4_or_null, required = false)]
    pub host_address: Option<Ipv4Addr>,
}

impl PortForward {
    /// Where forwards listen when no address is given.
    pub const DEFAULT_HOST_ADDRESS: Ipv4Addr = Ipv4Addr::LOCALHOST;

    /// A TCP forward to `guest_port` from a host port the server picks.
    pub fn tcp(guest_port: u16) -> Self {
        PortForward {
            guest_port,
            host_port: None,
            protocol: Protocol::Tcp,
            host_address: None,
        }
    }

    /// The address in effect.
    pub fn host_address(&self) -> Ipv4Addr {
        self.host_address.unwrap_or(Self::DEFAULT_HOST_ADDRESS)
    }
}

/// The most networks a VM may join.
pub(crate) const MAX_NETWORKS: usize = 8;

/// Checks `spec.networks`.
pub(crate) fn validate_attachments(networks: &[NetworkAttachment]) -> Result<(), ValidationError> {
    if networks.len() > MAX_NETWORKS {
        return Err(ValidationError::new(
            "spec.networks",
            format!(
                "a VM joins at most {MAX_NETWORKS} networks (got {})",
                networks.len()
            ),
        ));
    }
    let mut names = HashSet::new();
    let mut macs = HashSet::new();
    let mut host_ports = HashSet::new();
    for (i, net) in networks.iter().enumerate() {
        if !names.insert(net.network.as_str()) {
            return Err(ValidationError::new(
                format!("spec.networks[{i}].network"),
                format!(
                    "{:?} is joined twice: join each network once",
                    net.network.as_str()
                ),
            ));
        }
        if let Some(mac) = net.mac {
            if !macs.insert(mac) {
                return Err(ValidationError::new(
                    format!("spec.networks[{i}].mac"),
                    format!("{mac} is used by another NIC of this VM"),
                ));
            }
        }
        let mut guest_ports = HashSet::new();
        for (j, fwd) in net.forwards.iter().enumerate() {
            let field = |f: &str| format!("spec.networks[{i}].forwards[{j}].{f}");
            if fwd.guest_port == 0 {
                return Err(ValidationError::new(
                    field("guest_port"),
                    "must be between 1 and 65535 (got 0)",
                ));
            }
            if !guest_ports.insert((fwd.protocol, fwd.guest_port)) {
                return Err(ValidationError::new(
                    field("guest_port"),
                    format!(
                        "{}/{} is forwarded twice on this network",
                        fwd.guest_port, fwd.protocol
                    ),
                ));
            }
            match fwd.host_port {
                Some(0) => {
                    return Err(ValidationError::new(
                        field("host_port"),
                        "must be between 1 and 65535 (got 0); leave it out to have one picked",
                    ));
                }
                Some(port) if !host_ports.insert((fwd.protocol, port)) => {
                    return Err(ValidationError::new(
                        field("host_port"),
                        format!(
                            "{port}/{} is used by another forward of this VM",
                            fwd.protocol
                        ),
                    ));
                }
                _ => {}
            }
            if let Some(addr) = fwd.host_address {
                if addr.is_multicast() || addr.is_broadcast() {
                    return Err(ValidationError::new(
                        field("host_address"),
                        format!("{addr} is not a host address to listen on"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A VM's place on a network as it is now (`status.networks[]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct NetworkAttachmentStatus {
    /// The network's name.
    pub network: String,
    /// The network's mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<NetworkMode>,
    /// The guest NIC's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Forwards in effect, with their actual host ports.
    pub forwards: Vec<ForwardStatus>,
}

/// A forward in effect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct ForwardStatus {
    /// The guest port.
    pub guest_port: u16,
    /// The host port it is reached on.
    pub host_port: u16,
    /// tcp or udp.
    pub protocol: Protocol,
    /// The host address it listens on.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::ipv4_or_null)]
    pub host_address: Option<Ipv4Addr>,
}

impl crate::VmSpec {
    /// Takes the MACs and host ports the server allocated in `current` (the stored spec) for
    /// the same network and forward where this spec leaves them out: what a manifest without
    /// them means. Explicit values are kept.
    pub fn keep_allocations(&mut self, current: &crate::VmSpec) {
        for att in &mut self.networks {
            let Some(old) = current.networks.iter().find(|o| o.network == att.network) else {
                continue;
            };
            if att.mac.is_none() {
                att.mac = old.mac;
            }
            for fwd in &mut att.forwards {
                if fwd.host_port.is_none() {
                    fwd.host_port = old
                        .forwards
                        .iter()
                        .find(|o| o.guest_port == fwd.guest_port && o.protocol == fwd.protocol)
                        .and_then(|o| o.host_port);
                }
            }
        }
    }
}
