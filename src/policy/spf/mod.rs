//! Tern's SPF evaluator (RFC 7208): record syntax (§4.6, §12), mechanisms and
//! modifiers (§5, §6), macros (§7), the DNS limits (§4.6.4) and results (§8).
//! DNS answers come through the resolver, whose cache keeps them for their TTL.

mod eval;
mod macros;
mod record;
#[cfg(test)]
mod tests;

pub use eval::{Evaluation, Verdict};
pub use record::{Mechanism, Record, is_spf};

use crate::dns::{Dns, DnsError};
use hickory_resolver::proto::rr::{RData, RecordType};
use std::future::Future;
use std::net::IpAddr;

/// The lookups SPF makes. Ok with nothing: the name exists without such records;
/// `Err(NoSuchDomain)`: NXDOMAIN; `Err(Temporary)`: no answer.
pub trait Resolve: Sync {
    /// TXT records, each one's strings joined (§3.3).
    fn txt(&self, name: &str) -> impl Future<Output = Result<Vec<String>, DnsError>> + Send;
    /// AAAA records when `v6`, else A records.
    fn addresses(&self, name: &str, v6: bool) -> impl Future<Output = Result<Vec<IpAddr>, DnsError>> + Send;
    /// The exchanges of the MX records.
    fn mx(&self, name: &str) -> impl Future<Output = Result<Vec<String>, DnsError>> + Send;
    /// The names of the PTR records of an address.
    fn ptr(&self, ip: IpAddr) -> impl Future<Output = Result<Vec<String>, DnsError>> + Send;
}

impl Resolve for Dns {
    async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        Dns::txt(self, name).await
    }

    async fn addresses(&self, name: &str, v6: bool) -> Result<Vec<IpAddr>, DnsError> {
        let kind = if v6 { RecordType::AAAA } else { RecordType::A };
        Ok(self
            .records(name, kind)
            .await?
            .into_iter()
            .filter_map(|r| match r {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect())
    }

    async fn mx(&self, name: &str) -> Result<Vec<String>, DnsError> {
        Ok(self
            .records(name, RecordType::MX)
            .await?
            .into_iter()
            .filter_map(|r| match r {
                RData::MX(mx) => Some(crate::dns::name_text(&mx.exchange)),
                _ => None,
            })
            .collect())
    }

    async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        match Dns::ptr(self, ip).await {
            Err(DnsError::NoRecords) => Ok(Vec::new()),
            other => other,
        }
    }
}

/// `check_host()` for a sender's domain (RFC 7208 §4): `sender` is the MAIL FROM
/// address, or `postmaster@` the HELO name for the HELO identity (§2.3).
pub async fn check_host<R: Resolve>(
    dns: &R,
    ip: IpAddr,
    domain: &str,
    sender: &str,
    helo: &str,
    receiver: &str,
) -> Verdict {
    Evaluation::new(dns, ip, sender, helo, receiver).check_host(domain).await
}
