//! Network devices on the QEMU command line: one `-netdev` and one virtio-net device per NIC.

use corral_contract::Machine;
use corral_hypervisor::{NetBackend, VmConfig};

use crate::cmdline::{OptList, QemuCommand};

/// The descriptor QEMU inherits the first TAP at (after its monitor and console sockets); the
/// next TAP NIC's is one higher.
pub(crate) const FIRST_TAP_FD: i32 = crate::launch::CONSOLE_FD + 1;

/// The TAP devices of `config`'s NICs, in the order their descriptors follow `FIRST_TAP_FD`.
pub(crate) fn taps(config: &VmConfig) -> impl Iterator<Item = &str> {
    config.nics.iter().filter_map(|nic| match &nic.backend {
        NetBackend::Tap { ifname } => Some(ifname.as_str()),
        _ => None,
    })
}

/// Appends `-netdev`/`-device` pairs for every NIC of `config`.
pub(crate) fn add_nics(cmd: &mut QemuCommand, config: &VmConfig) {
    let device = if config.machine == Machine::Microvm {
        "virtio-net-device"
    } else {
        "virtio-net-pci"
    };
    let mut tap_fd = FIRST_TAP_FD;
    for (i, nic) in config.nics.iter().enumerate() {
        let id = format!("net{i}");
        let netdev = match &nic.backend {
            NetBackend::User {
                cidr,
                gateway,
                dns,
                hostname,
                forwards,
                host_access,
            } => {
                let mut list = OptList::new("user")
                    .set("id", &id)
                    .set("net", cidr.to_string())
                    .set("host", gateway.to_string())
                    .set("dns", dns.to_string())
                    // The guest address DHCP hands out first: .15, as QEMU's default.
                    .set("dhcpstart", cidr.host(15).to_string());
                if let Some(hostname) = hostname {
                    list = list.set("hostname", hostname);
                }
                if !host_access {
                    // The guest's own connections never leave slirp, so none reaches the
                    // host's loopback; DHCP and hostfwd still work.
                    list = list.set("restrict", "on");
                }
                for f in forwards {
                    // hostfwd=PROTO:HOSTADDR:HOSTPORT-GUESTADDR:GUESTPORT; an empty guest address
                    // is the first DHCP address.
                    list = list.set(
                        "hostfwd",
                        format!(
                            "{}:{}:{}-:{}",
                            f.protocol, f.host_address, f.host_port, f.guest_port
                        ),
                    );
                }
                list
            }
            // Attached by the backend and inherited: an unprivileged QEMU could not open
            // /dev/net/tun, and never runs a script.
            NetBackend::Tap { .. } => {
                let list = OptList::new("tap")
                    .set("id", &id)
                    .set("fd", tap_fd.to_string());
                tap_fd += 1;
                list
            }
            NetBackend::VmnetShared => OptList::new("vmnet-shared").set("id", &id),
            NetBackend::VmnetBridged { ifname } => OptList::new("vmnet-bridged")
                .set("id", &id)
                .set("ifname", ifname),
        };
        cmd.opts("-netdev", netdev);
        let mut dev = OptList::new(device)
            .set("netdev", &id)
            .set("mac", nic.mac.to_string());
        if device == "virtio-net-pci" {
            // No PXE option ROM: Corral boots kernels and disks, never the network, and the
            // ROM costs boot time and a file QEMU must find.
            dev = dev.set("romfile", "");
        }
        cmd.opts("-device", dev);
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use corral_contract::{Accel, Arch, Protocol};
    use corral_hypervisor::{BootSource, HostForward, NicConfig};

    use super::*;

    fn config(backend: NetBackend, machine: Machine) -> VmConfig {
        VmConfig {
            uid: "u".into(),
            name: "n".into(),
            arch: Arch::X86_64,
            machine,
            accel: Accel::Tcg,
            cpus: 1,
            memory_bytes: 64 << 20,
            boot: BootSource::Firmware,
            disks: vec![],
            memory_file: None,
            start_paused: false,
            incoming: false,
            restore: Default::default(),
            nics: vec![NicConfig {
                mac: "02:c0:00:00:00:01".parse().unwrap(),
                backend,
            }],
            files: Default::default(),
            shares: Vec::new(),
        }
    }

    fn args(config: &VmConfig) -> Vec<String> {
        let mut cmd = QemuCommand::new("qemu");
        add_nics(&mut cmd, config);
        cmd.args()
            .iter()
            .map(|a: &OsString| a.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn user_networks_forward_ports_and_escape_the_hostname() {
        let backend = NetBackend::User {
            cidr: "10.0.2.0/24".parse().unwrap(),
            gateway: "10.0.2.2".parse().unwrap(),
            dns: "10.0.2.3".parse().unwrap(),
            hostname: Some("a,hostfwd=tcp::1-:1".into()),
            host_access: true,
            forwards: vec![
                HostForward {
                    protocol: Protocol::Tcp,
                    host_address: "127.0.0.1".parse().unwrap(),
                    host_port: 20000,
                    guest_port: 22,
                },
                HostForward {
                    protocol: Protocol::Udp,
                    host_address: "0.0.0.0".parse().unwrap(),
                    host_port: 20001,
                    guest_port: 53,
                },
            ],
        };
        assert_eq!(
            args(&config(backend, Machine::Q35)),
            [
                "-netdev",
                "user,id=net0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,dhcpstart=10.0.2.15,\
                 hostname=a,,hostfwd=tcp::1-:1,hostfwd=tcp:127.0.0.1:20000-:22,hostfwd=udp:0.0.0.0:20001-:53",
                "-device",
                "virtio-net-pci,netdev=net0,mac=02:c0:00:00:00:01,romfile=",
            ]
        );
    }

    #[test]
    fn user_networks_without_host_access_are_restricted() {
        let backend = |host_access| NetBackend::User {
            cidr: "10.0.2.0/24".parse().unwrap(),
            gateway: "10.0.2.2".parse().unwrap(),
            dns: "10.0.2.3".parse().unwrap(),
            hostname: None,
            forwards: vec![],
            host_access,
        };
        let sealed = args(&config(backend(false), Machine::Q35));
        assert!(
            sealed[1].ends_with(",dhcpstart=10.0.2.15,restrict=on"),
            "{}",
            sealed[1]
        );
        let open = args(&config(backend(true), Machine::Q35));
        assert!(!open[1].contains("restrict"), "{}", open[1]);
    }

    #[test]
    fn tap_and_vmnet_backends() {
        let mut tap = config(
            NetBackend::Tap {
                ifname: "crl-t0".into(),
            },
            Machine::Microvm,
        );
        tap.nics.push(NicConfig {
            mac: "02:c0:00:00:00:02".parse().unwrap(),
            backend: NetBackend::Tap {
                ifname: "crl-t1".into(),
            },
        });
        assert_eq!(
            args(&tap),
            [
                "-netdev",
                "tap,id=net0,fd=5",
                "-device",
                "virtio-net-device,netdev=net0,mac=02:c0:00:00:00:01",
                "-netdev",
                "tap,id=net1,fd=6",
                "-device",
                "virtio-net-device,netdev=net1,mac=02:c0:00:00:00:02",
            ]
        );
        assert_eq!(taps(&tap).collect::<Vec<_>>(), ["crl-t0", "crl-t1"]);
        assert_eq!(
            args(&config(NetBackend::VmnetShared, Machine::Q35))[1],
            "vmnet-shared,id=net0"
        );
        assert_eq!(
            args(&config(
                NetBackend::VmnetBridged {
                    ifname: "en0".into()
                },
                Machine::Q35
            ))[1],
            "vmnet-bridged,id=net0,ifname=en0"
        );
    }
}
