//! The resolver (hickory), configured from `[dns]`: MX and address lookups for
//! outbound delivery, TXT lookups for SPF and `tern dns check`.

use crate::config;
use crate::metrics::{DnsResult, DnsType};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use std::net::IpAddr;

/// A name as its labels' octets joined by dots, lower-case, without the final dot:
/// unlike `to_ascii`, nothing is escaped.
/// The configured nameservers (`ip:port`), asked over UDP and TCP on their port.
pub fn name_servers(nameservers: &[std::net::SocketAddr]) -> ResolverConfig {
    let servers = nameservers
        .iter()
        .map(|addr| {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
        })
        .collect();
    ResolverConfig::from_name_servers(servers)
}

pub fn name_text(name: &Name) -> String {
    let labels: Vec<String> = name.iter().map(|l| String::from_utf8_lossy(l).to_ascii_lowercase()).collect();
    labels.join(".")
}

/// A lookup that did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN): permanent.
    NoSuchDomain,
    /// The name exists but has no record of the type asked.
    NoRecords,
    /// Timeout, SERVFAIL, network trouble: worth trying later.
    Temporary(String),
}

/// The answer to an MX query (RFC 5321 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mx {
    /// Exchanges by preference, lowest first.
    Hosts(Vec<(u16, String)>),
    /// `0 .`: the domain accepts no mail (RFC 7505).
    Null,
    /// No MX records: the domain itself is the implicit MX.
    None,
}

/// The exchanges of an MX RRset, best first (RFC 5321 §5.1).
pub fn mx_hosts<'a>(records: impl Iterator<Item = &'a RData>) -> Mx {
    let mut hosts: Vec<(u16, String)> = records
        .filter_map(|r| match r {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii().trim_end_matches('.').to_lowercase())),
            _ => None,
        })
        .collect();
    if hosts.is_empty() {
        return Mx::None;
    }
    if hosts.iter().any(|(_, h)| h.is_empty()) {
        // RFC 7505 §3: a null MX is the only MX record of its domain.
        return Mx::Null;
    }
    // §5.1: equal preferences are tried in random order.
    fastrand::shuffle(&mut hosts);
    hosts.sort_by_key(|(pref, _)| *pref);
    Mx::Hosts(hosts)
}

#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
}

/// Runs a lookup and counts its outcome in the metrics; one its caller gave up on
/// (the checks' deadline) counts as an error.
async fn counted<T>(kind: DnsType, lookup: impl Future<Output = Result<T, NetError>>) -> Result<T, NetError> {
    struct Pending(Option<DnsType>);
    impl Drop for Pending {
        fn drop(&mut self) {
            if let Some(kind) = self.0 {
                crate::metrics::get().dns(kind, DnsResult::Error);
            }
        }
    }
    let mut pending = Pending(Some(kind));
    let result = lookup.await;
    pending.0 = None;
    let outcome = match &result {
        Ok(_) => DnsResult::Ok,
        Err(e) if e.is_nx_domain() => DnsResult::NxDomain,
        Err(e) if e.is_no_records_found() => DnsResult::NoData,
        Err(_) => DnsResult::Error,
    };
    crate::metrics::get().dns(kind, outcome);
    result
}

fn record_type(kind: RecordType) -> DnsType {
    match kind {
        RecordType::A => DnsType::A,
        RecordType::AAAA => DnsType::Aaaa,
        RecordType::MX => DnsType::Mx,
        RecordType::TXT => DnsType::Txt,
        RecordType::PTR => DnsType::Ptr,
        _ => DnsType::Other,
    }
}

fn classify(e: NetError) -> DnsError {
    if e.is_nx_domain() {
        DnsError::NoSuchDomain
    } else if e.is_no_records_found() {
        DnsError::NoRecords
    } else {
        DnsError::Temporary(e.to_string())
    }
}

impl Dns {
    /// A resolver using `[dns] nameservers`, or the system's when none are given.
    pub fn new(config: &config::Dns) -> Result<Dns, String> {
        let mut options = ResolverOpts::default();
        options.timeout = config.timeout;
        options.attempts = 2;
        let builder = if config.nameservers.is_empty() {
            Resolver::builder(TokioRuntimeProvider::default()).unwrap_or_else(|e| {
                // Local delivery still works; remote mail waits until DNS is configured.
                tracing::warn!(error = %e, "cannot read /etc/resolv.conf; set [dns] nameservers for remote delivery");
                Resolver::builder_with_config(
                    ResolverConfig::from_name_servers(Vec::new()),
                    TokioRuntimeProvider::default(),
                )
            })
        } else {
            Resolver::builder_with_config(name_servers(&config.nameservers), TokioRuntimeProvider::default())
        };
        let resolver = builder.with_options(options).build().map_err(|e| format!("cannot start resolver: {e}"))?;
        Ok(Dns { resolver })
    }

    /// Absolute form of a name, so no search domain is ever appended.
    fn fqdn(name: &str) -> String {
        if name.ends_with('.') { name.to_string() } else { format!("{name}.") }
    }

    pub async fn mx(&self, domain: &str) -> Result<Mx, DnsError> {
        let lookup = match counted(DnsType::Mx, self.resolver.mx_lookup(Self::fqdn(domain))).await {
            Ok(l) => l,
            Err(e) => {
                return match classify(e) {
                    DnsError::NoRecords => Ok(Mx::None),
                    other => Err(other),
                };
            }
        };
        Ok(mx_hosts(lookup.answers().iter().map(|r| &r.data)))
    }

    /// A mail-auth authenticator (SPF, DKIM, DMARC) asking the same nameservers.
    pub fn authenticator(&self) -> mail_auth::MessageAuthenticator {
        mail_auth::MessageAuthenticator(self.resolver.clone())
    }

    /// The TXT records of a name, each one's strings joined (RFC 7208 §3.3); empty
    /// when the name exists without TXT records.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        Ok(self
            .records(name, RecordType::TXT)
            .await?
            .into_iter()
            .filter_map(|r| match r {
                RData::TXT(txt) => Some(String::from_utf8_lossy(&txt.txt_data.concat()).into_owned()),
                _ => None,
            })
            .collect())
    }

    /// IPv6 and IPv4 addresses of a host (IPv6 first).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let lookup = counted(DnsType::Ip, self.resolver.lookup_ip(Self::fqdn(host))).await.map_err(classify)?;
        let mut ips: Vec<IpAddr> = lookup.iter().collect();
        ips.sort_by_key(|ip| ip.is_ipv4());
        ips.dedup();
        if ips.is_empty() { Err(DnsError::NoRecords) } else { Ok(ips) }
    }

    /// The names an address points back to (PTR records), lower-case, without the
    /// final dot.
    pub async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        let lookup = counted(DnsType::Ptr, self.resolver.reverse_lookup(ip)).await.map_err(classify)?;
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(ptr) => Some(name_text(&ptr.0)),
                _ => None,
            })
            .collect())
    }

    /// The records of one type at a name, CNAMEs followed; empty when the name
    /// exists without such records. Labels may hold any octets but dots (RFC 2181
    /// §11), as names built by SPF macros do.
    pub async fn records(&self, name: &str, kind: RecordType) -> Result<Vec<RData>, DnsError> {
        let labels = name.strip_suffix('.').unwrap_or(name).split('.').map(str::as_bytes);
        let Ok(mut name) = Name::from_labels(labels) else { return Err(DnsError::NoSuchDomain) };
        name.set_fqdn(true);
        match counted(record_type(kind), self.resolver.lookup(name, kind)).await {
            Ok(lookup) => {
                Ok(lookup.answers().iter().filter(|r| r.record_type() == kind).map(|r| r.data.clone()).collect())
            }
            Err(e) => match classify(e) {
                DnsError::NoRecords => Ok(Vec::new()),
                other => Err(other),
            },
        }
    }

    /// The IPv4 addresses (A records) of a name, as they are: no sorting, no
    /// search domain, CNAMEs followed. For DNS list queries (RFC 5782 §2.1).
    pub async fn a_records(&self, name: &str) -> Result<Vec<std::net::Ipv4Addr>, DnsError> {
        let lookup = counted(DnsType::A, self.resolver.ipv4_lookup(Self::fqdn(name))).await.map_err(classify)?;
        let ips: Vec<std::net::Ipv4Addr> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        if ips.is_empty() { Err(DnsError::NoRecords) } else { Ok(ips) }
    }
}
