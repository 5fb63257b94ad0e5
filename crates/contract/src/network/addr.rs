use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 subnet, `10.0.2.0/24`: a network address and a prefix length of 1–32. The address
/// must be the network's own (no host bits set), so that `10.0.2.5/24` is refused rather than
/// silently read as `10.0.2.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Cidr {
    /// QEMU's user-mode default subnet.
    pub const DEFAULT_USER: Cidr = Cidr {
        addr: Ipv4Addr::new(10, 0, 2, 0),
        prefix: 24,
    };
    /// The default subnet of a bridge network.
    pub const DEFAULT_BRIDGE: Cidr = Cidr {
        addr: Ipv4Addr::new(10, 88, 0, 0),
        prefix: 24,
    };

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// The `n`th address of the subnet (`host(1)` of 10.0.2.0/24 is 10.0.2.1).
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | (n & !self.mask()))
    }

    /// The netmask, e.g. 255.255.255.0.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// The last address (broadcast).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether the two subnets share an address (one contains the other's network address).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let mask = self.mask() & other.mask();
        u32::from(self.addr) & mask == u32::from(other.addr) & mask
    }

    /// The subnet of prefix `prefix` that holds `addr` (host bits cleared), as a host's
    /// `192.0.2.7/24` names `192.0.2.0/24`. `None` for a prefix outside 1–32.
    pub fn containing(addr: Ipv4Addr, prefix: u8) -> Option<Cidr> {
        if !(1..=32).contains(&prefix) {
            return None;
        }
        let mut cidr = Cidr { addr, prefix };
        cidr.addr = Ipv4Addr::from(u32::from(addr) & cidr.mask());
        Some(cidr)
    }

    /// Whether `ip` is in the subnet and neither its network nor broadcast address.
    pub fn contains_host(&self, ip: Ipv4Addr) -> bool {
        (u32::from(ip) & self.mask()) == u32::from(self.addr)
            && ip != self.addr
            && ip != self.broadcast()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("{s:?} is not an IPv4 subnet: write it as ADDRESS/PREFIX, e.g. 10.0.2.0/24");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        // Plain decimal only: `u8::from_str` would also take "+24" and "024".
        let plain = !prefix.is_empty()
            && prefix.bytes().all(|b| b.is_ascii_digit())
            && (prefix == "0" || !prefix.starts_with('0'));
        if !plain {
            return Err(bad());
        }
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(1..=32).contains(&prefix) {
            return Err(format!("{s:?}: the prefix must be between 1 and 32"));
        }
        let cidr = Cidr { addr, prefix };
        let network = Ipv4Addr::from(u32::from(addr) & cidr.mask());
        if network != addr {
            return Err(format!(
                "{s:?} has host bits set: the subnet is {network}/{prefix}"
            ));
        }
        Ok(cidr)
    }
}

impl utoipa::PartialSchema for Cidr {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::schema::cidr(1, 32).into()
    }
}

impl utoipa::ToSchema for Cidr {}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> Self {
        c.to_string()
    }
}

/// An Ethernet address, `02:c0:12:34:56:78`, written as six lower- or upper-case hex pairs
/// joined by `:`. It must be unicast (the lowest bit of the first octet clear).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// First two octets of the addresses Corral generates: `02` marks a locally administered
    /// unicast address (no vendor owns it; QEMU's own default `52:54:00` is avoided so a
    /// Corral-made address is recognisable), `c0` for Corral.
    pub const GENERATED_PREFIX: [u8; 2] = [0x02, 0xc0];

    /// An address with the Corral prefix and `tail` as its last four octets.
    pub fn generated(tail: [u8; 4]) -> Self {
        let [a, b] = Self::GENERATED_PREFIX;
        MacAddr([a, b, tail[0], tail[1], tail[2], tail[3]])
    }

    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "{s:?} is not a MAC address: write six hex pairs joined by ':', e.g. 02:c0:00:00:00:01"
            )
        };
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(bad)?;
            // Two hex digits: `from_str_radix` would also take "+f".
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if octets[0] & 1 == 1 {
            return Err(format!(
                "{s:?} is a multicast address: a NIC needs a unicast one (even first octet)"
            ));
        }
        Ok(MacAddr(octets))
    }
}

impl utoipa::PartialSchema for MacAddr {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::schema::mac().into()
    }
}

impl utoipa::ToSchema for MacAddr {}

impl TryFrom<String> for MacAddr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> Self {
        m.to_string()
    }
}
