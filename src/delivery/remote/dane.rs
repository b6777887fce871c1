//! DANE for one destination (RFC 7672 §2.2): the MX hosts from a DNSSEC-checked MX
//! lookup, and the TLSA policy of each of them.

use super::route::{Hop, MAX_MX_HOSTS};
use crate::delivery::Failure;
use crate::dns::{Mx, mx_hosts};
use crate::dnssec::SecureDns;
use crate::tls_policy::dane::{DaneFailure, DaneResult, HostPolicy, Tlsa};
use hickory_resolver::proto::rr::{RData, RecordType};

/// The DANE policy of each hop, in the order of `hops`, which it replaces with the
/// hosts of the validated MX RRset (§2.2.1). `None` when DANE does not apply: the MX
/// RRset is insecure, or no host has TLSA records. A bogus or indeterminate MX lookup
/// defers the mail (4.7.5): it must not fall back to a weaker policy.
pub async fn plan(
    secure: &SecureDns,
    domain: &str,
    port: u16,
    hops: &mut Vec<Hop>,
) -> Result<Option<Vec<HostPolicy>>, Failure> {
    let answer = match secure.lookup(domain, RecordType::MX).await {
        Ok(answer) => answer,
        Err(e) => {
            DaneResult::Failed(DaneFailure::DnssecInvalid).count();
            tracing::warn!(domain, error = %e, result = "dnssec-invalid", "DANE: MX lookup failed; mail deferred");
            return Err(Failure::temporary((4, 7, 5), format!("DANE: MX lookup of {domain}: {e}")));
        }
    };
    if !answer.secure {
        return Ok(None);
    }
    let hosts = match mx_hosts(answer.records.iter()) {
        Mx::Hosts(hosts) => hosts.into_iter().take(MAX_MX_HOSTS).map(|(_, host)| host).collect(),
        // A securely denied MX RRset: the domain is its own MX host (RFC 5321 §5.1).
        Mx::None => vec![domain.to_string()],
        Mx::Null => return Ok(None),
    };
    *hops = hosts.into_iter().map(|host| Hop { host, port }).collect();
    let mut policies = Vec::with_capacity(hops.len());
    for hop in hops.iter() {
        let policy = host_policy(secure, hop).await;
        let decision = match &policy {
            HostPolicy::None => {
                DaneResult::NoTlsa.count();
                "no usable TLSA records: MTA-STS or opportunistic TLS"
            }
            HostPolicy::Verify(_) => "TLS required, certificate must match the TLSA records",
            HostPolicy::Encrypt(_) => {
                DaneResult::Failed(DaneFailure::TlsaInvalid).count();
                "TLSA records unusable: TLS required without authentication (RFC 7672 §2.2)"
            }
            HostPolicy::Unusable(_) => {
                DaneResult::Failed(DaneFailure::DnssecInvalid).count();
                "TLSA lookup failed: host not used"
            }
        };
        match &policy {
            HostPolicy::Unusable(why) => {
                tracing::warn!(domain, host = %hop.host, result = "dnssec-invalid", reason = %why, "DANE: {decision}")
            }
            _ => tracing::info!(domain, host = %hop.host, "DANE: {decision}"),
        }
        policies.push(policy);
    }
    Ok(policies.iter().any(HostPolicy::applies).then_some(policies))
}

/// The policy for one host of a secure MX RRset, from `_PORT._tcp.HOST` TLSA
/// (RFC 7672 §2.2.2; RFC 6698 §3 names the records by the port connected to).
async fn host_policy(secure: &SecureDns, hop: &Hop) -> HostPolicy {
    let name = format!("_{}._tcp.{}", hop.port, hop.host);
    match secure.lookup(&name, RecordType::TLSA).await {
        Ok(answer) if answer.secure && !answer.records.is_empty() => {
            HostPolicy::from_records(tlsa_records(&answer.records), vec![hop.host.clone()])
        }
        // Securely denied, or insecure: DANE does not apply (§2.2.2).
        Ok(_) => HostPolicy::None,
        Err(e) => HostPolicy::Unusable(format!("TLSA lookup of {name}: {e}")),
    }
}

fn tlsa_records(records: &[RData]) -> Vec<Tlsa> {
    records
        .iter()
        .filter_map(|r| match r {
            RData::TLSA(t) => Some(Tlsa {
                usage: t.cert_usage.into(),
                selector: t.selector.into(),
                matching: t.matching.into(),
                data: t.cert_data.clone(),
            }),
            _ => None,
        })
        .collect()
}
