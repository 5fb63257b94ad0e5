use std::net::Ipv4Addr;

use corral_contract::{Cidr, MacAddr, Protocol};
use serde::{Deserialize, Serialize};

/// One guest NIC and what backs it on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicConfig {
    /// The guest's MAC address.
    pub mac: MacAddr,
    /// What carries its traffic.
    pub backend: NetBackend,
}

/// What carries a NIC's traffic on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetBackend {
    /// QEMU's user-mode stack (SLIRP), with host port forwards.
    User {
        /// Guest subnet.
        cidr: Cidr,
        /// Gateway address (the host as the guest sees it).
        gateway: Ipv4Addr,
        /// DNS server address.
        dns: Ipv4Addr,
        /// Host name handed out by the built-in DHCP server.
        hostname: Option<String>,
        /// Host ports forwarded to the guest.
        forwards: Vec<HostForward>,
        /// Whether the guest may open connections of its own (outbound NAT, and the host's
        /// loopback through the gateway and the subnet's other addresses). Without it the
        /// guest reaches only what is forwarded to it: QEMU's user stack (libslirp) maps every
        /// subnet address but the DNS server to the host's 127.0.0.1, and QEMU 7.2 offers no
        /// switch that cuts only that, so `restrict=on` isolates the guest.
        #[serde(default)]
        host_access: bool,
    },
    /// A TAP device that already exists (made and bridged by the controller).
    Tap {
        /// Its interface name.
        ifname: String,
    },
    /// macOS vmnet, shared mode.
    VmnetShared,
    /// macOS vmnet, bridged onto a host interface.
    VmnetBridged {
        /// The host interface.
        ifname: String,
    },
}

/// A host port forwarded to a guest port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostForward {
    /// tcp or udp.
    pub protocol: Protocol,
    /// The host address to listen on.
    pub host_address: Ipv4Addr,
    /// The host port.
    pub host_port: u16,
    /// The guest port.
    pub guest_port: u16,
}
