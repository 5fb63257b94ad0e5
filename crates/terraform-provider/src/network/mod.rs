//! `corral_network`: a network VMs join. corrald's NetworkService has no update (a network's
//! addresses are baked into the VMs on it), so every argument replaces the network; corrald
//! refuses to delete one a VM still joins.

use std::time::Duration;

use async_trait::async_trait;
use corral_client::contract::{Network, NetworkPhase};
use serde_json::json;

use crate::diag::Diagnostic;
use crate::schema::{Attr, Schema};
use crate::stored::{self, Kind, Managed, Progress, known, opt};
use crate::value::Value;

/// The `corral_network` kind.
#[derive(Debug)]
pub struct NetworkKind;

/// The `corral_network` resource.
pub type NetworkResource = Managed<NetworkKind>;

#[async_trait]
impl Kind for NetworkKind {
    type Obj = Network;
    const TYPE: &'static str = "corral_network";
    const WHAT: &'static str = "network";
    const CREATE_TIMEOUT: Duration = Duration::from_secs(120);

    fn schema() -> Schema {
        let schema = stored::base_schema(
            "A network VMs join: QEMU's user-mode stack, or a Linux bridge with TAPs. corrald \
             cannot change a network in place, so changing any argument replaces it (VMs on it \
             must leave first).",
            "Unique name (lowercase letters, digits, '-'). Changing it replaces the network.",
        )
        .attr(
            Attr::string_map("labels")
                .replace()
                .describe("Key/value labels. Changing them replaces the network."),
        )
        .attr(
            Attr::string("mode")
                .default(Value::string("user"))
                .replace()
                .describe(
                    "`user` (default: QEMU's user-mode stack, no privileges), `bridge`, \
                     `vmnet-shared` or `vmnet-bridged` (macOS).",
                ),
        )
        .attr(Attr::string("cidr").optional_computed().replace().describe(
            "The guests' IPv4 subnet (default 10.0.2.0/24 for user, 10.88.0.0/24-style for bridge).",
        ))
        .attr(
            Attr::string("gateway")
                .optional_computed()
                .replace()
                .describe("The guests' default gateway (default: .2 for user, .1 for bridge)."),
        )
        .attr(
            Attr::string("dns")
                .optional_computed()
                .replace()
                .describe("The DNS server guests are given (default: .3 for user, .1 for bridge)."),
        )
        .attr(
            Attr::number("mtu")
                .replace()
                .describe("MTU of the bridge and its TAPs (bridge mode only), 576-9000."),
        )
        .attr(Attr::string("bridge").optional_computed().replace().describe(
            "Name of the Linux bridge (bridge mode; a link that does not exist yet, which corrald creates; default `crl` and 12 hex digits of a hash of the uid).",
        ))
        .attr(
            Attr::string("interface")
                .replace()
                .describe("Host interface to bridge onto (vmnet-bridged only, required there)."),
        )
        .attr(
            Attr::bool("host_access")
                .default(Value::Bool(false))
                .replace()
                .describe(
                    "Let guests open connections of their own: outbound NAT and the host's loopback \
                     through the gateway (user mode only). Without it (default) a guest reaches \
                     only the ports forwarded to it.",
                ),
        )
        .attr(
            Attr::bool("shared")
                .default(Value::Bool(false))
                .replace()
                .describe(
                    "VMs of every project may join it (default false). Only an admin may \
                     share, and only a network of project `default`.",
                ),
        );
        let schema = stored::identity(schema, "When corrald created the network (RFC 3339).")
            .attr(
                Attr::string("phase")
                    .computed()
                    .describe("Pending, Ready or Failed."),
            )
            .attr(
                Attr::string("message")
                    .computed()
                    .describe("Why the network is where it is."),
            );
        stored::timeouts(schema, "For the network to be Ready (default 2m).", None)
    }

    fn attribute_for(field: &str) -> Option<&'static str> {
        Some(match field {
            "metadata.name" => "name",
            "metadata.labels" => "labels",
            "spec.mode" => "mode",
            "spec.cidr" => "cidr",
            "spec.gateway" => "gateway",
            "spec.dns" => "dns",
            "spec.mtu" => "mtu",
            "spec.bridge" => "bridge",
            "spec.interface" => "interface",
            "spec.host_access" => "host_access",
            "spec.shared" => "shared",
            _ => return None,
        })
    }

    fn manifest(config: &Value) -> Result<serde_json::Value, Vec<Diagnostic>> {
        let mut spec = serde_json::Map::new();
        for name in [
            "mode",
            "cidr",
            "gateway",
            "dns",
            "mtu",
            "bridge",
            "interface",
            "host_access",
            "shared",
        ] {
            if let Some(v) = known(config, name) {
                spec.insert(name.into(), v);
            }
        }
        Ok(json!({ "metadata": stored::metadata(config), "spec": spec }))
    }

    fn to_state(net: &Network, _: &Value, state: &mut Value) {
        let spec = &net.spec;
        state.set("mode", Value::string(spec.mode.as_str()));
        state.set("cidr", Value::string(spec.cidr.to_string()));
        state.set("gateway", Value::string(spec.gateway().to_string()));
        state.set("dns", Value::string(spec.dns().to_string()));
        state.set(
            "mtu",
            spec.mtu
                .map_or(Value::Null, |m| Value::Number(f64::from(m))),
        );
        state.set("bridge", opt(spec.bridge.as_deref()));
        state.set("interface", opt(spec.interface.as_deref()));
        state.set("host_access", Value::Bool(spec.host_access));
        state.set("shared", Value::Bool(spec.shared));
        state.set("phase", Value::string(net.status.phase.as_str()));
        state.set("message", opt(net.status.message.as_deref()));
    }

    fn progress(net: &Network) -> Progress {
        match net.status.phase {
            NetworkPhase::Ready => Progress::Ready,
            NetworkPhase::Pending => Progress::Pending,
            NetworkPhase::Failed => Progress::failed(net.status.message.as_deref()),
        }
    }

    stored::client_calls!(create_network, get_network, delete_network);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use crate::stored::{object_from, validate};

    fn config(pairs: &[(&str, Value)]) -> Value {
        Value::object(&[("name", Value::string("lan"))]).with(pairs)
    }

    #[test]
    fn defaults_are_read_back_and_changes_replace() {
        let net = object_from::<NetworkKind>(&config(&[("mode", Value::string("user"))])).unwrap();
        let state = stored::state_of::<NetworkKind>(&net, &Value::Null);
        assert_eq!(state.get("cidr").as_str(), Some("10.0.2.0/24"));
        assert_eq!(state.get("gateway").as_str(), Some("10.0.2.2"));
        assert_eq!(state.get("dns").as_str(), Some("10.0.2.3"));
        // The state maps back to the same network.
        let back = object_from::<NetworkKind>(&state).unwrap().spec;
        assert_eq!(
            (back.cidr, back.gateway(), back.dns()),
            (net.spec.cidr, net.spec.gateway(), net.spec.dns())
        );
        let r = NetworkResource::default();
        let same = config(&[("mode", Value::string("user"))]);
        let p = plan(&r, state.clone(), state.clone(), same);
        assert_eq!(p.planned, state);
        let other = config(&[("cidr", Value::string("10.9.0.0/24"))]);
        let p = plan(&r, state.clone(), state, other);
        assert_eq!(p.requires_replace, ["cidr"]);
    }

    #[test]
    fn errors_land_on_the_attribute() {
        let d = validate::<NetworkKind>(&config(&[("mode", Value::string("nat"))]));
        assert_eq!(d[0].path, ["mode"], "{d:?}");
        let d = validate::<NetworkKind>(&config(&[("cidr", Value::string("10.0.0.0/33"))]));
        assert_eq!(d[0].path, ["cidr"], "{d:?}");
    }
}
