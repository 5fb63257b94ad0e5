use super::*;
use crate::{Boot, Resource, VmSpec, pb};

#[test]
fn user_network_defaults_follow_qemu() {
    let spec: NetworkSpec = serde_json::from_str("{}").unwrap();
    assert_eq!(spec.mode, NetworkMode::User);
    assert_eq!(spec.cidr.to_string(), "10.0.2.0/24");
    assert_eq!(spec.gateway().to_string(), "10.0.2.2");
    assert_eq!(spec.dns().to_string(), "10.0.2.3");
    let bridge: NetworkSpec = serde_json::from_str(r#"{"mode": "bridge", "mtu": 1400}"#).unwrap();
    assert_eq!(bridge.gateway().to_string(), "10.88.0.1");
}

#[test]
fn bad_network_specs_name_the_field() {
    let cases = [
        (
            r#"{"cidr": "10.0.2.5/24"}"#,
            "spec.cidr: \"10.0.2.5/24\" has host bits set",
        ),
        (
            r#"{"cidr": "10.0.2.0"}"#,
            "spec.cidr: \"10.0.2.0\" is not an IPv4 subnet",
        ),
        (
            r#"{"gateway": "10.1.0.1"}"#,
            "spec.gateway: 10.1.0.1 is not a host address of 10.0.2.0/24",
        ),
        (r#"{"mtu": 1400}"#, "spec.mtu: is only for mode bridge"),
        (
            r#"{"mode": "bridge", "mtu": 100}"#,
            "spec.mtu: must be between 576 and 9000",
        ),
        (
            r#"{"mode": "vmnet-bridged"}"#,
            "spec.interface: required for mode vmnet-bridged",
        ),
        (
            r#"{"mode": "slirp"}"#,
            "spec.mode: \"slirp\" is not a valid network mode: use user, bridge",
        ),
        (r#"{"nope": 1}"#, "unknown field `nope`"),
        (
            r#"{"mode": "bridge", "cidr": "10.0.0.0/7"}"#,
            "spec.cidr: /7 is wider than /8, the widest subnet a network may have",
        ),
        (r#"{"cidr": "0.0.0.0/1"}"#, "spec.cidr: /1 is wider than /8"),
        (
            r#"{"mode": "bridge", "host_access": true}"#,
            "spec.host_access: is only for mode user",
        ),
        (
            r#"{"host_access": "yes"}"#,
            "spec.host_access: invalid type: string \"yes\", expected a boolean",
        ),
    ];
    for (json, want) in cases {
        let err = serde_json::from_str::<NetworkSpec>(json)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{json}: {err}");
    }
}

#[test]
fn mac_addresses_parse_strictly() {
    let mac: MacAddr = "02:C0:00:00:00:01".parse().unwrap();
    assert_eq!(mac.to_string(), "02:c0:00:00:00:01");
    assert!(
        "01:00:5e:00:00:01"
            .parse::<MacAddr>()
            .unwrap_err()
            .contains("multicast")
    );
    assert!("02:c0:00:00:00".parse::<MacAddr>().is_err());
    assert!("02:c0:00:00:00:01:02".parse::<MacAddr>().is_err());
    assert_eq!(
        MacAddr::generated([1, 2, 3, 4]).to_string(),
        "02:c0:01:02:03:04"
    );
}

#[test]
fn vm_attachments_are_checked() {
    let base = r#"{"boot": {"kernel": {"kernel": "/k"}}, "networks": NETS}"#;
    let cases = [
        (
            r#"[{"network": "a"}, {"network": "a"}]"#,
            "spec.networks[1].network: \"a\" is joined twice",
        ),
        (
            r#"[{"network": "a", "forwards": [{"guest_port": 0}]}]"#,
            "spec.networks[0].forwards[0].guest_port: must be between 1 and 65535",
        ),
        (
            r#"[{"network": "a", "forwards": [{"guest_port": 22}, {"guest_port": 22}]}]"#,
            "forwarded twice",
        ),
        (
            r#"[{"network": "a", "forwards": [{"guest_port": 22, "host_port": 0}]}]"#,
            "host_port: must be between 1 and 65535 (got 0)",
        ),
        (
            r#"[{"network": "a", "forwards": [{"guest_port": 22, "proto": "tcp"}]}]"#,
            "unknown field `proto`",
        ),
        (r#"[{"network": "a", "mac": "zz"}]"#, "not a MAC address"),
    ];
    for (nets, want) in cases {
        let json = base.replace("NETS", nets);
        let err = serde_json::from_str::<VmSpec>(&json)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{nets}: {err}");
    }
}

#[test]
fn network_and_vm_round_trip_through_protobuf() {
    let manifest = r#"{"kind": "Network", "metadata": {"name": "lan"},
        "spec": {"mode": "bridge", "cidr": "192.168.50.0/24", "mtu": 1400}}"#;
    let net = serde_json::from_str::<Resource>(manifest)
        .unwrap()
        .into_network()
        .unwrap();
    let back = Network::try_from(pb::Network::from(&net)).unwrap();
    assert_eq!(back, net);

    let spec = VmSpec::builder(Boot::kernel("/k"))
        .network(NetworkAttachment {
            network: "lan".parse().unwrap(),
            mac: Some("02:c0:00:00:00:09".parse().unwrap()),
            forwards: vec![PortForward {
                guest_port: 80,
                host_port: Some(8080),
                protocol: Protocol::Tcp,
                host_address: Some("0.0.0.0".parse().unwrap()),
            }],
        })
        .cloud_init(crate::CloudInit::ssh_user_data(None, &["k".into()], None))
        .build()
        .unwrap();
    let msg = pb::VmSpec::from(&spec);
    assert_eq!(VmSpec::try_from(msg.clone()).unwrap(), spec);
    let mut bad = msg;
    bad.networks[0].forwards[0].host_port = Some(70000);
    let err = VmSpec::try_from(bad).unwrap_err().to_string();
    assert_eq!(
        err,
        "spec.networks[0].forwards[0].host_port: must be between 1 and 65535 (got 70000)"
    );
}

#[test]
fn a_slash_8_is_the_widest_subnet() {
    let spec: NetworkSpec =
        serde_json::from_str(r#"{"mode": "bridge", "cidr": "10.0.0.0/8"}"#).unwrap();
    assert_eq!(spec.cidr.prefix(), MIN_PREFIX);
}

#[test]
fn host_access_is_off_unless_asked_for_and_survives_protobuf() {
    let off: NetworkSpec = serde_json::from_str("{}").unwrap();
    assert!(!off.host_access);
    assert!(!serde_json::to_string(&off).unwrap().contains("host_access"));
    let on: NetworkSpec = serde_json::from_str(r#"{"host_access": true}"#).unwrap();
    assert!(on.host_access);
    let back = NetworkSpec::try_from(pb::NetworkSpec::from(&on)).unwrap();
    assert_eq!(back, on);
}

#[test]
fn subnets_overlap_when_one_holds_the_other() {
    let c = |s: &str| s.parse::<Cidr>().unwrap();
    assert!(c("10.0.0.0/8").overlaps(&c("10.77.0.0/24")));
    assert!(c("10.77.0.0/24").overlaps(&c("10.0.0.0/8")));
    assert!(c("10.77.0.0/24").overlaps(&c("10.77.0.0/24")));
    assert!(!c("10.77.0.0/24").overlaps(&c("10.77.1.0/24")));
    assert!(!c("10.77.0.0/25").overlaps(&c("10.77.0.128/25")));
    let host = Cidr::containing("192.0.2.7".parse().unwrap(), 24).unwrap();
    assert_eq!(host, c("192.0.2.0/24"));
    assert!(Cidr::containing("192.0.2.7".parse().unwrap(), 0).is_none());
}
