//! Networks, attachments and cloud-init to protobuf and back (see `convert.rs` for the rules).

use std::net::Ipv4Addr;

use super::convert::{decode, decode_lenient, enum_value, non_empty, required};
use crate::pb;
use crate::{
    CloudInit, ForwardStatus, MacAddr, Network, NetworkAttachment, NetworkAttachmentStatus,
    NetworkSpec, NetworkStatus, PortForward, ResourceName, ValidationError,
};

impl From<&Network> for pb::Network {
    fn from(net: &Network) -> Self {
        pb::Network {
            metadata: Some((&net.metadata).into()),
            spec: Some((&net.spec).into()),
            status: Some((&net.status).into()),
        }
    }
}

impl TryFrom<pb::Network> for Network {
    type Error = ValidationError;

    fn try_from(net: pb::Network) -> Result<Self, Self::Error> {
        Ok(Network {
            metadata: net
                .metadata
                .ok_or_else(|| required("metadata"))?
                .try_into()?,
            spec: net.spec.ok_or_else(|| required("spec"))?.try_into()?,
            status: net.status.map(NetworkStatus::from).unwrap_or_default(),
        })
    }
}

impl From<&NetworkSpec> for pb::NetworkSpec {
    fn from(spec: &NetworkSpec) -> Self {
        pb::NetworkSpec {
            mode: enum_value(spec.mode),
            cidr: spec.cidr.to_string(),
            gateway: spec.gateway.map(|a| a.to_string()).unwrap_or_default(),
            dns: spec.dns.map(|a| a.to_string()).unwrap_or_default(),
            mtu: spec.mtu.unwrap_or(0),
            bridge: spec.bridge.clone().unwrap_or_default(),
            interface: spec.interface.clone().unwrap_or_default(),
            host_access: spec.host_access,
            shared: spec.shared,
        }
    }
}

fn ip(field: &str, value: String) -> Result<Option<Ipv4Addr>, ValidationError> {
    non_empty(value)
        .map(|v| {
            v.parse()
                .map_err(|_| ValidationError::new(field, format!("{v:?} is not an IPv4 address")))
        })
        .transpose()
}

/// Validates as a manifest's spec is validated (same defaults, same field paths).
impl TryFrom<pb::NetworkSpec> for NetworkSpec {
    type Error = ValidationError;

    fn try_from(spec: pb::NetworkSpec) -> Result<Self, Self::Error> {
        let mode = decode::<crate::NetworkMode>("spec.mode", spec.mode)?.unwrap_or_default();
        let mut json = serde_json::json!({ "mode": mode });
        if let Some(cidr) = non_empty(spec.cidr) {
            json["cidr"] = cidr.into();
        }
        let net = NetworkSpec {
            gateway: ip("spec.gateway", spec.gateway)?,
            dns: ip("spec.dns", spec.dns)?,
            mtu: (spec.mtu != 0).then_some(spec.mtu),
            bridge: non_empty(spec.bridge),
            interface: non_empty(spec.interface),
            host_access: spec.host_access,
            shared: spec.shared,
            ..serde_json::from_value::<NetworkSpec>(json)
                .map_err(|e| ValidationError::new("spec.cidr", e))?
        };
        net.validate()?;
        Ok(net)
    }
}

impl From<&NetworkStatus> for pb::NetworkStatus {
    fn from(status: &NetworkStatus) -> Self {
        pb::NetworkStatus {
            phase: enum_value(status.phase),
            observed_generation: status.observed_generation,
            message: status.message.clone(),
            bridge: status.bridge.clone(),
        }
    }
}

impl From<pb::NetworkStatus> for NetworkStatus {
    fn from(status: pb::NetworkStatus) -> Self {
        NetworkStatus {
            phase: decode_lenient(status.phase).unwrap_or_default(),
            observed_generation: status.observed_generation,
            message: status.message,
            bridge: status.bridge,
        }
    }
}

impl From<&NetworkAttachment> for pb::NetworkAttachment {
    fn from(a: &NetworkAttachment) -> Self {
        pb::NetworkAttachment {
            network: a.network.to_string(),
            mac: a.mac.map(|m| m.to_string()).unwrap_or_default(),
            forwards: a
                .forwards
                .iter()
                .map(|f| pb::PortForward {
                    guest_port: f.guest_port.into(),
                    host_port: f.host_port.map(u32::from),
                    protocol: enum_value(f.protocol),
                    host_address: f.host_address.map(|a| a.to_string()).unwrap_or_default(),
                })
                .collect(),
        }
    }
}

fn port(field: String, value: u32) -> Result<u16, ValidationError> {
    u16::try_from(value).map_err(|_| {
        ValidationError::new(field, format!("must be between 1 and 65535 (got {value})"))
    })
}

/// `spec.networks` from protobuf; the spec's own validation runs afterwards.
pub(super) fn attachments_from_pb(
    networks: Vec<pb::NetworkAttachment>,
) -> Result<Vec<NetworkAttachment>, ValidationError> {
    networks
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let at = |f: &str| format!("spec.networks[{i}].{f}");
            let network =
                ResourceName::new(a.network).map_err(|e| ValidationError::new(at("network"), e))?;
            let mac = non_empty(a.mac)
                .map(|m| m.parse::<MacAddr>())
                .transpose()
                .map_err(|e| ValidationError::new(at("mac"), e))?;
            let forwards = a
                .forwards
                .into_iter()
                .enumerate()
                .map(|(j, f)| {
                    let at = |k: &str| format!("spec.networks[{i}].forwards[{j}].{k}");
                    Ok(PortForward {
                        guest_port: port(at("guest_port"), f.guest_port)?,
                        host_port: f.host_port.map(|p| port(at("host_port"), p)).transpose()?,
                        protocol: decode(&at("protocol"), f.protocol)?.unwrap_or_default(),
                        host_address: ip(&at("host_address"), f.host_address)?,
                    })
                })
                .collect::<Result<_, ValidationError>>()?;
            Ok(NetworkAttachment {
                network,
                mac,
                forwards,
            })
        })
        .collect()
}

impl From<&NetworkAttachmentStatus> for pb::NetworkAttachmentStatus {
    fn from(s: &NetworkAttachmentStatus) -> Self {
        pb::NetworkAttachmentStatus {
            network: s.network.clone(),
            mode: s.mode.map_or(0, enum_value),
            mac: s.mac.map(|m| m.to_string()).unwrap_or_default(),
            forwards: s
                .forwards
                .iter()
                .map(|f| pb::ForwardStatus {
                    guest_port: f.guest_port.into(),
                    host_port: f.host_port.into(),
                    protocol: enum_value(f.protocol),
                    host_address: f.host_address.map(|a| a.to_string()).unwrap_or_default(),
                })
                .collect(),
        }
    }
}

impl From<pb::NetworkAttachmentStatus> for NetworkAttachmentStatus {
    fn from(s: pb::NetworkAttachmentStatus) -> Self {
        NetworkAttachmentStatus {
            network: s.network,
            mode: decode_lenient(s.mode),
            mac: s.mac.parse().ok(),
            forwards: s
                .forwards
                .into_iter()
                .map(|f| ForwardStatus {
                    guest_port: f.guest_port as u16,
                    host_port: f.host_port as u16,
                    protocol: decode_lenient(f.protocol).unwrap_or_default(),
                    host_address: f.host_address.parse().ok(),
                })
                .collect(),
        }
    }
}

impl From<&CloudInit> for pb::CloudInit {
    fn from(c: &CloudInit) -> Self {
        pb::CloudInit {
            user_data: c.user_data.clone(),
            meta_data: c.meta_data.clone(),
            network_config: c.network_config.clone(),
        }
    }
}

impl From<pb::CloudInit> for CloudInit {
    fn from(c: pb::CloudInit) -> Self {
        CloudInit {
            user_data: c.user_data,
            meta_data: c.meta_data,
            network_config: c.network_config,
        }
    }
}
