//! Networks, and how a VM attaches to them.
//!
//! A [`Network`] is a resource of its own (`kind: Network`); a VM names the networks it joins in
//! `spec.networks` ([`NetworkAttachment`]), each with the guest ports it wants forwarded from the
//! host ([`PortForward`]).

mod addr;
pub(crate) mod attach;

pub use addr::{Cidr, MacAddr};
pub use attach::{ForwardStatus, NetworkAttachment, NetworkAttachmentStatus, PortForward};

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::choice::choice;
use crate::de::field_paths;
use crate::{Kind, Object, ObjectMeta, ResourceName, ValidationError};

choice! {
    /// How a network reaches the guest.
    #[derive(Default)]
    pub enum NetworkMode ("network mode") {
        /// QEMU's user-mode stack (SLIRP): no privileges, outbound NAT, inbound through port
        /// forwards only (the default).
        #[default]
        User => "user",
        /// A Linux bridge with one TAP per VM, DHCP and DNS from a dnsmasq Corral runs, NAT
        /// through nftables.
        Bridge => "bridge",
        /// macOS vmnet, shared (NAT) mode.
        VmnetShared => "vmnet-shared",
        /// macOS vmnet, bridged onto a host interface.
        VmnetBridged => "vmnet-bridged",
    }
}

choice! {
    /// The transport protocol of a port forward.
    #[derive(Default)]
    pub enum Protocol ("protocol") {
        /// TCP (the default).
        #[default]
        Tcp => "tcp",
        /// UDP.
        Udp => "udp",
    }
}

/// A network that VMs join: `{"kind": "Network", "metadata": {"name": "lan"}, "spec": {"mode":
/// "user", "cidr": "10.0.2.0/24"}}`.
// Deserialize and the schema (with `kind`, as on the wire): `strict_object!` in resource.rs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Name, labels and server-managed fields.
    pub metadata: ObjectMeta,
    /// What the user wants.
    pub spec: NetworkSpec,
    /// What the server last observed.
    #[serde(default)]
    pub status: NetworkStatus,
}

impl Network {
    /// A network named `name` with `spec`, and an empty status.
    pub fn new(name: ResourceName, spec: NetworkSpec) -> Self {
        Network {
            metadata: ObjectMeta::new(name),
            spec,
            status: NetworkStatus::default(),
        }
    }
}

impl Object for Network {
    const KIND: Kind = Kind::Network;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Result<(), ValidationError> {
        self.metadata.validate()?;
        self.spec.validate()
    }

    fn shared(&self) -> bool {
        self.spec.shared
    }
}

/// What a network is. Valid by construction (deserialising checks it).
///
/// Unset addresses take the mode's defaults, as QEMU's user stack has them: gateway `.2`, DNS
/// `.3` of the CIDR for `user`; gateway (the bridge's own address) `.1` and DNS `.1` for
/// `bridge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "NetworkSpecInput", deny_unknown_fields)]
pub struct NetworkSpec {
    /// How the network reaches guests (default user).
    #[schema(nullable, required = false)]
    pub mode: NetworkMode,
    /// The guests' subnet (default 10.0.2.0/24).
    #[schema(schema_with = cidr_schema, required = false)]
    pub cidr: Cidr,
    /// The guests' default gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::ipv4_or_null, required = false)]
    pub gateway: Option<Ipv4Addr>,
    /// The DNS server guests are given.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::ipv4_or_null, required = false)]
    pub dns: Option<Ipv4Addr>,
    /// MTU of the bridge and its TAPs (bridge mode only), 576–9000.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = mtu_schema, required = false)]
    pub mtu: Option<u32>,
    /// Name of the Linux bridge (bridge mode), at most 15 bytes. Corral creates it and deletes
    /// it again: a link that already exists is refused. Default: `crl` and 12 hex digits of a
    /// hash of the network's uid (see `status.bridge`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::ifname_or_null, required = false)]
    pub bridge: Option<String>,
    /// Host interface to bridge onto (vmnet-bridged only, required there), e.g. `en0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::ifname_or_null, required = false)]
    pub interface: Option<String>,
    /// Whether guests may open connections of their own (user mode only; default false).
    /// With it they get outbound NAT and, as in QEMU's plain user networking, the host's
    /// 127.0.0.1 through the gateway (and every other subnet address but the DNS server).
    /// Without it a guest reaches only the ports forwarded to it: QEMU's user stack cannot let
    /// guests out without also letting them reach the host's loopback services.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schema(required = false)]
    pub host_access: bool,
    /// VMs of every project may join it (default false). Only an admin may share, and only a
    /// network of project `default`: a VM's `network: lan` names its own project's `lan`, or
    /// failing that a shared `lan` of `default`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schema(required = false)]
    pub shared: bool,
}

/// The widest subnet a network may have: /8. A wider one would cover a large share of the
/// address space that the host and its neighbours use.
pub const MIN_PREFIX: u8 = 8;

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            mode: NetworkMode::User,
            cidr: Cidr::DEFAULT_USER,
            gateway: None,
            dns: None,
            mtu: None,
            bridge: None,
            interface: None,
            host_access: false,
            shared: false,
        }
    }
}

impl NetworkSpec {
    /// The gateway in effect.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway.unwrap_or_else(|| match self.mode {
            NetworkMode::User => self.cidr.host(2),
            _ => self.cidr.host(1),
        })
    }

    /// The DNS server in effect.
    pub fn dns(&self) -> Ipv4Addr {
        self.dns.unwrap_or_else(|| match self.mode {
            NetworkMode::User => self.cidr.host(3),
            _ => self.cidr.host(1),
        })
    }

    /// Checks every field; the error names the first one that is not allowed.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.cidr.prefix() < MIN_PREFIX {
            return Err(ValidationError::new(
                "spec.cidr",
                format!(
                    "/{} is wider than /{MIN_PREFIX}, the widest subnet a network may have: use \
                     a prefix of /{MIN_PREFIX} to /29",
                    self.cidr.prefix()
                ),
            ));
        }
        if self.host_access && self.mode != NetworkMode::User {
            return Err(ValidationError::new(
                "spec.host_access",
                "is only for mode user: leave it out",
            ));
        }
        if self.cidr.prefix() > 29 {
            return Err(ValidationError::new(
                "spec.cidr",
                format!(
                    "/{} leaves no room for guests: use a prefix of /29 or shorter",
                    self.cidr.prefix()
                ),
            ));
        }
        for (field, addr) in [("spec.gateway", self.gateway), ("spec.dns", self.dns)] {
            if let Some(addr) = addr {
                if !self.cidr.contains_host(addr) {
                    return Err(ValidationError::new(
                        field,
                        format!("{addr} is not a host address of {}", self.cidr),
                    ));
                }
            }
        }
        if let Some(mtu) = self.mtu {
            if self.mode != NetworkMode::Bridge {
                return Err(ValidationError::new(
                    "spec.mtu",
                    "is only for mode bridge: leave it out",
                ));
            }
            if !(576..=9000).contains(&mtu) {
                return Err(ValidationError::new(
                    "spec.mtu",
                    format!("must be between 576 and 9000 (got {mtu})"),
                ));
            }
        }
        if let Some(bridge) = &self.bridge {
            if self.mode != NetworkMode::Bridge {
                return Err(ValidationError::new(
                    "spec.bridge",
                    "is only for mode bridge: leave it out",
                ));
            }
            check_ifname("spec.bridge", bridge)?;
        }
        match (&self.interface, self.mode) {
            (Some(name), NetworkMode::VmnetBridged) => check_ifname("spec.interface", name),
            (None, NetworkMode::VmnetBridged) => Err(ValidationError::new(
                "spec.interface",
                "required for mode vmnet-bridged: name the host interface, e.g. en0",
            )),
            (Some(_), _) => Err(ValidationError::new(
                "spec.interface",
                "is only for mode vmnet-bridged: leave it out",
            )),
            (None, _) => Ok(()),
        }
    }
}

/// A Linux interface name: 1–15 bytes of letters, digits, `-`, `_` and `.`.
fn cidr_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    crate::schema::or_null(crate::schema::cidr(MIN_PREFIX, 29))
}

fn mtu_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    crate::schema::or_null(crate::schema::integer(576, 9000))
}

fn check_ifname(field: &str, name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!("{name:?} is not an interface name: use 1-15 letters, digits, '-', '_' or '.'"),
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkSpecInput {
    #[serde(default, deserialize_with = "de_mode")]
    mode: Option<NetworkMode>,
    #[serde(default, deserialize_with = "de_cidr")]
    cidr: Option<Cidr>,
    #[serde(default, deserialize_with = "de_gateway")]
    gateway: Option<Ipv4Addr>,
    #[serde(default, deserialize_with = "de_dns")]
    dns: Option<Ipv4Addr>,
    #[serde(default, deserialize_with = "de_mtu")]
    mtu: Option<u32>,
    #[serde(default, deserialize_with = "de_bridge")]
    bridge: Option<String>,
    #[serde(default, deserialize_with = "de_interface")]
    interface: Option<String>,
    #[serde(default, deserialize_with = "de_host_access")]
    host_access: Option<bool>,
    #[serde(default, deserialize_with = "de_shared")]
    shared: Option<bool>,
}

field_paths! {
    de_mode => "spec.mode",
    de_cidr => "spec.cidr",
    de_gateway => "spec.gateway",
    de_dns => "spec.dns",
    de_mtu => "spec.mtu",
    de_bridge => "spec.bridge",
    de_interface => "spec.interface",
    de_host_access => "spec.host_access",
    de_shared => "spec.shared",
}

impl TryFrom<NetworkSpecInput> for NetworkSpec {
    type Error = ValidationError;

    fn try_from(input: NetworkSpecInput) -> Result<Self, Self::Error> {
        let mode = input.mode.unwrap_or_default();
        let spec = NetworkSpec {
            mode,
            cidr: input.cidr.unwrap_or(match mode {
                NetworkMode::User => Cidr::DEFAULT_USER,
                _ => Cidr::DEFAULT_BRIDGE,
            }),
            gateway: input.gateway,
            dns: input.dns,
            mtu: input.mtu,
            bridge: input.bridge,
            interface: input.interface,
            host_access: input.host_access.unwrap_or(false),
            shared: input.shared.unwrap_or(false),
        };
        spec.validate()?;
        Ok(spec)
    }
}

choice! {
    /// Whether a network is usable.
    #[derive(Default)]
    pub enum NetworkPhase ("network phase") {
        /// Accepted, not set up yet.
        #[default]
        Pending => "Pending",
        /// VMs can join it.
        Ready => "Ready",
        /// It could not be set up; see `status.message`.
        Failed => "Failed",
    }
}

/// What is true of a network now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct NetworkStatus {
    /// Whether VMs can join it.
    pub phase: NetworkPhase,
    /// The `metadata.generation` this status reflects.
    pub observed_generation: u64,
    /// A sentence for people, e.g. why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The Linux bridge Corral made for it (bridge mode): `spec.bridge`, or the name derived
    /// from the uid. Corral marks the link with the alias `corral:<uid>` and changes or
    /// deletes only a link that carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
}

#[cfg(test)]
mod tests;
