//! Where mail for a domain goes: a configured route, the smarthost, or the MX hosts
//! (RFC 5321 §5.1), with the checks that keep Tern from sending to itself.

use super::RemoteConfig;
use crate::delivery::Failure;
use crate::dns::{Dns, DnsError, Mx};
use std::net::{IpAddr, SocketAddr};

/// At most this many MX hosts are tried in one attempt.
pub const MAX_MX_HOSTS: usize = 5;

/// A host to try: its name (for logs and TLS) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub host: String,
    pub port: u16,
}

impl Hop {
    /// Parses `host:port` (`[v6]:port` for IPv6).
    pub fn parse(text: &str) -> Option<Hop> {
        let (host, port) = text.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Some(Hop { host: host.to_lowercase(), port: port.parse().ok()? })
    }
}

/// The hosts to try for `domain`, best first.
pub async fn hops(config: &RemoteConfig, dns: &Dns, domain: &str) -> Result<Vec<Hop>, Failure> {
    if let Some(hop) = config.routes.get(domain) {
        return Ok(vec![hop.clone()]);
    }
    if let Some(hop) = &config.smarthost {
        return Ok(vec![hop.clone()]);
    }
    // An address literal names the host itself.
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let ip = literal.strip_prefix("ipv6:").unwrap_or(literal);
        return Ok(vec![Hop { host: ip.to_string(), port: config.port }]);
    }
    let hosts = match dns.mx(domain).await {
        Ok(Mx::Hosts(hosts)) => hosts.into_iter().take(MAX_MX_HOSTS).map(|(_, h)| h).collect(),
        Ok(Mx::None) => vec![domain.to_string()],
        Ok(Mx::Null) => {
            return Err(Failure::permanent((5, 1, 10), format!("domain {domain} accepts no mail (null MX, RFC 7505)")));
        }
        Err(DnsError::NoSuchDomain) => {
            return Err(Failure::permanent((5, 1, 2), format!("domain {domain} does not exist")));
        }
        Err(DnsError::NoRecords) => vec![domain.to_string()],
        Err(DnsError::Temporary(e)) => {
            return Err(Failure::temporary((4, 4, 3), format!("DNS lookup of MX for {domain} failed: {e}")));
        }
    };
    Ok(hosts.into_iter().map(|host| Hop { host, port: config.port }).collect())
}

/// The addresses of a hop, or why none may be used.
pub async fn addresses(config: &RemoteConfig, dns: &Dns, hop: &Hop) -> Result<Vec<SocketAddr>, Failure> {
    if hop.host == config.hostname.to_lowercase() {
        return Err(Failure::permanent((5, 4, 6), format!("mail for {} loops back to myself", hop.host)));
    }
    let ips = match hop.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match dns.addresses(&hop.host).await {
            Ok(ips) => ips,
            Err(DnsError::Temporary(e)) => {
                return Err(Failure::temporary((4, 4, 3), format!("DNS lookup of {} failed: {e}", hop.host)));
            }
            Err(_) => return Err(Failure::temporary((4, 4, 4), format!("host {} has no address", hop.host))),
        },
    };
    let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, hop.port)).collect();
    if addrs.iter().any(|a| config.own_addrs.iter().any(|own| is_same_listener(own, a))) {
        return Err(Failure::permanent((5, 4, 6), format!("mail for {} loops back to myself", hop.host)));
    }
    // A next hop from the configuration (a local filter on 127.0.0.1, say) is trusted;
    // one that came from DNS may not point at this machine.
    let configured = config.smarthost.as_ref() == Some(hop) || config.routes.values().any(|h| h == hop);
    let usable: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| configured || config.allow_loopback || !(a.ip().is_loopback() || a.ip().is_unspecified()))
        .collect();
    if usable.is_empty() {
        let text = format!("{} points to a loopback or unspecified address (misconfigured DNS)", hop.host);
        return Err(Failure::temporary((4, 4, 4), text));
    }
    Ok(usable)
}

/// True when connecting to `target` would reach the listener `own`.
fn is_same_listener(own: &SocketAddr, target: &SocketAddr) -> bool {
    own.port() == target.port()
        && (own.ip() == target.ip()
            || (own.ip().is_unspecified() && (target.ip().is_loopback() || target.ip().is_unspecified())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_syntax_and_self_detection() {
        assert_eq!(Hop::parse("Smtp.Provider.test:587"), Some(Hop { host: "smtp.provider.test".into(), port: 587 }));
        assert_eq!(Hop::parse("[::1]:25").unwrap().host, "::1");
        assert!(Hop::parse("host").is_none());
        let own: SocketAddr = "0.0.0.0:25".parse().unwrap();
        assert!(is_same_listener(&own, &"127.0.0.1:25".parse().unwrap()));
        assert!(!is_same_listener(&own, &"127.0.0.1:2525".parse().unwrap()));
        assert!(is_same_listener(&"127.0.0.2:2525".parse().unwrap(), &"127.0.0.2:2525".parse().unwrap()));
    }
}
