//! What the host's network looks like, read with `ip -j` (iproute2's JSON output, an argument
//! vector, never a shell): links with their alias, IPv4 addresses and IPv4 routes. Bridge
//! networks are admitted against it, and the network controller checks it again before it
//! changes anything.

use std::net::Ipv4Addr;

use corral_contract::Cidr;
use serde::Deserialize;

/// The alias Corral gives every link it creates: `corral:<uid of the network>`.
pub fn link_alias(uid: &str) -> String {
    format!("corral:{uid}")
}

/// A network interface of the host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HostLink {
    /// Its name.
    #[serde(rename = "ifname")]
    pub name: String,
    /// Its alias (`ip link set dev X alias …`), where Corral marks the links it made.
    #[serde(default, rename = "ifalias")]
    pub alias: Option<String>,
}

/// An IPv4 address on a host interface, with its prefix: `192.0.2.2/24 on eth0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddr {
    /// The interface.
    pub link: String,
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length it was added with.
    pub prefix: u8,
}

/// An IPv4 unicast route of the host other than a default route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    /// Where it leads.
    pub dst: Cidr,
    /// Through which interface.
    pub link: Option<String>,
}

/// The host's links, addresses and routes at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNet {
    /// Every link.
    pub links: Vec<HostLink>,
    /// Every IPv4 address.
    pub addrs: Vec<HostAddr>,
    /// Every IPv4 unicast route, of every table, except default routes.
    pub routes: Vec<HostRoute>,
}

/// Why the host's network could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    /// `ip` could not be run.
    #[error("cannot run `ip {args}`: {source} (install iproute2)")]
    Run {
        /// Its arguments.
        args: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `ip` failed.
    #[error("`ip {args}` failed: {stderr}")]
    Failed {
        /// Its arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
    /// `ip` printed something that is not the JSON expected.
    #[error("`ip {args}` printed unexpected JSON: {source}")]
    Json {
        /// Its arguments.
        args: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Deserialize)]
struct AddrLink {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    #[serde(default)]
    family: String,
    local: Option<Ipv4Addr>,
    prefixlen: Option<u8>,
}

#[derive(Deserialize)]
struct Route {
    dst: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    dev: Option<String>,
}

async fn ip_json<T: serde::de::DeserializeOwned>(args: &[&str]) -> Result<T, HostNetError> {
    let shown = args.join(" ");
    let out = tokio::process::Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .await
        .map_err(|source| HostNetError::Run {
            args: shown.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(HostNetError::Failed {
            args: shown,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    // `ip -j` prints nothing at all for an empty list on some versions.
    let text = String::from_utf8_lossy(&out.stdout);
    let text = if text.trim().is_empty() { "[]" } else { &text };
    serde_json::from_str(text).map_err(|source| HostNetError::Json {
        args: shown,
        source,
    })
}

impl HostNet {
    /// Reads the network namespace corrald runs in.
    pub async fn read() -> Result<HostNet, HostNetError> {
        let links: Vec<HostLink> = ip_json(&["link", "show"]).await?;
        let addr_links: Vec<AddrLink> = ip_json(&["-4", "addr", "show"]).await?;
        let routes: Vec<Route> = ip_json(&["-4", "route", "show", "table", "all"]).await?;
        Ok(HostNet {
            links,
            addrs: addr_links
                .into_iter()
                .flat_map(|l| {
                    let link = l.ifname;
                    l.addr_info.into_iter().filter_map(move |a| {
                        Some(HostAddr {
                            link: link.clone(),
                            addr: a.local.filter(|_| a.family == "inet")?,
                            prefix: a.prefixlen?,
                        })
                    })
                })
                .collect(),
            routes: routes
                .into_iter()
                // Local and broadcast entries repeat the addresses; default routes cover
                // everything and say nothing about which subnets are in use.
                .filter(|r| r.kind.as_deref().is_none_or(|k| k == "unicast"))
                .filter_map(|r| {
                    let dst = match r.dst.split_once('/') {
                        Some((a, p)) => Cidr::containing(a.parse().ok()?, p.parse().ok()?)?,
                        None => Cidr::containing(r.dst.parse().ok()?, 32)?,
                    };
                    Some(HostRoute { dst, link: r.dev })
                })
                .collect(),
        })
    }

    /// The link called `name`, if the host has one.
    pub fn link(&self, name: &str) -> Option<&HostLink> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The first address or route of the host that `cidr` overlaps, leaving out those on
    /// `own_link` (the network's own bridge, once it exists): a sentence naming it.
    pub fn overlap(&self, cidr: &Cidr, own_link: Option<&str>) -> Option<String> {
        let foreign = |link: Option<&str>| link.is_none() || link != own_link;
        for a in &self.addrs {
            let Some(subnet) = Cidr::containing(a.addr, a.prefix) else {
                continue;
            };
            if foreign(Some(&a.link)) && subnet.overlaps(cidr) {
                return Some(format!(
                    "the host's address {}/{} on {}",
                    a.addr, a.prefix, a.link
                ));
            }
        }
        for r in &self.routes {
            if foreign(r.link.as_deref()) && r.dst.overlaps(cidr) {
                let via = r
                    .link
                    .as_deref()
                    .map(|l| format!(" via {l}"))
                    .unwrap_or_default();
                return Some(format!("the host's route to {}{via}", r.dst));
            }
        }
        None
    }
}
