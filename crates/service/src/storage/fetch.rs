//! Fetching an image's URL without becoming a way into the host's network.
//!
//! A URL import makes corrald connect where the caller says, from inside the host's network:
//! loopback services, the cloud metadata address, private ranges. So every address corrald
//! connects to is checked at connect time, by the resolver it uses (a name that resolves to a
//! refused address on the second lookup — DNS rebinding — is refused then), and IP literals
//! are checked in the URL and in every redirect. Ranges the operator allows with
//! `--import-allow-net` pass. No proxy is used unless one is configured (`*_PROXY` variables
//! are ignored), connect and total time are bounded, and the size is capped both by the
//! announced Content-Length and while the bytes stream.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

/// How URL imports may reach out.
#[derive(Debug, Clone)]
pub struct ImportPolicy {
    /// Ranges allowed even though they are loopback, private, link-local …
    pub allow_nets: Vec<IpNet>,
    /// The proxy every fetch goes through, if any (`http://…`).
    pub proxy: Option<String>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long a whole fetch may take.
    pub timeout: Duration,
    /// The most bytes an import (URL or host path) may bring in.
    pub max_size: u64,
}

impl Default for ImportPolicy {
    fn default() -> Self {
        ImportPolicy {
            allow_nets: Vec::new(),
            proxy: None,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(3600),
            max_size: 50 << 30,
        }
    }
}

/// What a refused address is.
fn refused_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return refused_v4(v4);
            }
            let seg = v6.segments();
            // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address to reach.
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return refused_v4(Ipv4Addr::from(u32::from(seg[6]) << 16 | u32::from(seg[7])));
            }
            if seg[0] == 0x2002 {
                return refused_v4(Ipv4Addr::from(u32::from(seg[1]) << 16 | u32::from(seg[2])));
            }
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() || seg[..6] == [0; 6] {
                Some("an unspecified or IPv4-compatible address")
            } else if v6.is_unicast_link_local() || seg[0] & 0xffc0 == 0xfec0 {
                Some("a link-local address")
            } else if v6.is_unique_local() {
                Some("a private (unique local) address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else {
                None
            }
        }
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_link_local() {
        Some("a link-local address (cloud metadata lives at 169.254.169.254)")
    } else if ip.is_private() {
        Some("a private address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a carrier-grade NAT address")
    } else if a == 0 || ip.is_unspecified() {
        Some("an unspecified address")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("a multicast, broadcast or reserved address")
    } else if (a == 192 && b == 0 && ip.octets()[2] == 0) || (a == 198 && (18..20).contains(&b)) {
        Some("a special-purpose address")
    } else {
        None
    }
}

/// A connection corrald refused to make.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{what} {ip} is {range}: corrald does not fetch from it (an operator allows ranges with corrald --import-allow-net CIDR)"
)]
pub struct BlockedAddress {
    /// Where the address came from (`the URL's host`, `example.org resolves to` …).
    pub what: String,
    /// The address.
    pub ip: IpAddr,
    /// What kind of address it is.
    pub range: &'static str,
}

impl ImportPolicy {
    /// Refuses `ip` unless it is public or allowed.
    pub fn check(&self, what: &str, ip: IpAddr) -> Result<(), BlockedAddress> {
        if self.allow_nets.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match refused_range(ip) {
            Some(range) => Err(BlockedAddress {
                what: what.to_owned(),
                ip,
                range,
            }),
            None => Ok(()),
        }
    }

    /// Refuses a URL whose host is a refused IP literal (names are checked when resolved).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), BlockedAddress> {
        let host = url.host_str().unwrap_or_default();
        // The URL parser has already turned `0x7f.1` and `2130706433` into dotted quads.
        match host.trim_start_matches('[').trim_end_matches(']').parse() {
            Ok(ip) => self.check("the address", ip),
            Err(_) => Ok(()),
        }
    }

    /// The HTTP client that enforces this policy.
    pub fn client(&self) -> Result<reqwest::Client, reqwest::Error> {
        let policy = Arc::new(self.clone());
        let redirects = policy.clone();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("corral/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .dns_resolver(Arc::new(CheckedResolver(policy)))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 10 {
                    return attempt.error("more than 10 redirects");
                }
                let scheme = attempt.url().scheme().to_owned();
                if scheme != "http" && scheme != "https" {
                    return attempt.error(format!("a redirect to a {scheme}: URL"));
                }
                match redirects.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(e) => attempt.error(e),
                }
            }));
        if let Some(proxy) = &self.proxy {
            builder = builder.proxy(reqwest::Proxy::all(proxy)?);
        }
        builder.build()
    }
}

/// Resolves names with the system resolver and keeps only addresses the policy allows, so the
/// address connected to is one that was checked.
struct CheckedResolver(Arc<ImportPolicy>);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(
                    |a| match policy.check(&format!("{host} resolves to"), a.ip()) {
                        Ok(()) => true,
                        Err(e) => {
                            refused.get_or_insert(e);
                            false
                        }
                    },
                )
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(e)) => Err(e.into()),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The refusal in an error's chain, if the error is one.
pub fn blocked_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BlockedAddress> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(b) = e.downcast_ref::<BlockedAddress>() {
            return Some(b);
        }
        cur = e.source();
    }
    None
}

/// An error and its causes on one line (reqwest's own message hides why a connect failed).
pub fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges_are_refused_unless_allowed() {
        let policy = ImportPolicy::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(policy.check("x", ip).is_err(), "{ip} passed");
        }
        for ip in ["93.184.215.14", "2606:4700::1111", "1.1.1.1"] {
            policy.check("x", ip.parse().unwrap()).unwrap();
        }
        let open = ImportPolicy {
            allow_nets: vec!["127.0.0.0/8".parse().unwrap()],
            ..ImportPolicy::default()
        };
        open.check("x", "127.0.0.1".parse().unwrap()).unwrap();
        let err = open.check("x", "10.0.0.1".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("--import-allow-net"), "{err}");
    }
}
