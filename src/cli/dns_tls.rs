//! The transport security rows of `tern dns check`: MTA-STS (RFC 8461), TLS-RPT
//! (RFC 8460) and the TLSA records of the MX hosts (RFC 7672).

use super::dns::{Row, Status};
use crate::config::Config;
use crate::delivery::remote::TlsClient;
use crate::dns::{Dns, DnsError, Mx};
use crate::tls_policy::{fetch, mta_sts};
use hickory_resolver::proto::rr::{RData, RecordType};

/// The MX host names of `domain`, lower-case without the final dot.
pub async fn mx_hosts(dns: &Dns, domain: &str) -> Vec<String> {
    match dns.mx(domain).await {
        Ok(Mx::Hosts(hosts)) => hosts.into_iter().map(|(_, h)| h).collect(),
        _ => Vec::new(),
    }
}

/// `_mta-sts.DOMAIN` TXT well-formed, the policy fetched over HTTPS with a verified
/// certificate and parsed, and every MX host covered. A domain without MTA-STS only
/// gets a warning: the policy is optional.
pub async fn mta_sts_row(config: &Config, dns: &Dns, domain: &str, mx: &[String]) -> Row {
    let name = format!("_mta-sts.{domain}.");
    let records = match dns.txt(&name).await {
        Ok(r) => r,
        Err(DnsError::NoSuchDomain | DnsError::NoRecords) => Vec::new(),
        Err(DnsError::Temporary(e)) => {
            return Row::new("MTA-STS", name, Status::Error).reason(format!("no answer: {e}"));
        }
    };
    let publish = |row: Row| {
        row.note("publish:", format!("{name} IN TXT \"v=STSv1; id=<date-time>\""))
            .note("serve:", format!("https://mta-sts.{domain}/.well-known/mta-sts.txt (mode: enforce, mx: …)"))
    };
    let id = match mta_sts::policy_id(&records) {
        Ok(Some(id)) => id,
        Ok(None) => {
            return publish(
                Row::new("MTA-STS", name.clone(), Status::Warn)
                    .reason("no policy: TLS to the MX hosts can be downgraded"),
            );
        }
        Err(e) => return Row::new("MTA-STS", name, Status::Wrong).reason(format!("TXT record: {e}")),
    };
    let tls = match TlsClient::new(config.outbound.ca_file.as_deref()) {
        Ok(t) => t,
        Err(e) => return Row::new("MTA-STS", name, Status::Error).reason(e),
    };
    let text = match fetch::fetch(&tls, dns, config.outbound.allow_loopback_mx, domain).await {
        Ok(t) => t,
        Err(e) => {
            return Row::new("MTA-STS", name, Status::Wrong)
                .found(&format!("id={id}"))
                .reason(format!("policy not fetched: {}", e.detail));
        }
    };
    let policy = match mta_sts::parse_policy(&text) {
        Ok(p) => p,
        Err(e) => {
            return Row::new("MTA-STS", name, Status::Wrong)
                .found(&format!("id={id}"))
                .reason(format!("policy invalid: {e}"));
        }
    };
    let found = format!("id={id} mode={} max_age={}", policy.mode, policy.max_age);
    let outside: Vec<&str> = mx.iter().filter(|h| !policy.allows_mx(h)).map(String::as_str).collect();
    if !outside.is_empty() {
        return Row::new("MTA-STS", name, Status::Wrong)
            .found(&found)
            .reason(format!("MX hosts not in the policy: {}", outside.join(", ")));
    }
    match policy.mode {
        mta_sts::Mode::Enforce => Row::new("MTA-STS", name, Status::Ok).found(&found),
        _ => Row::new("MTA-STS", name, Status::Warn).found(&found).reason("not enforced: senders only report failures"),
    }
}

/// `_smtp._tls.DOMAIN` TXT: `v=TLSRPTv1; rua=…` (RFC 8460 §3).
pub async fn tlsrpt_row(dns: &Dns, domain: &str) -> Row {
    let name = format!("_smtp._tls.{domain}.");
    let publish = format!("{name} IN TXT \"v=TLSRPTv1; rua=mailto:tls-reports@{domain}\"");
    let records = match dns.txt(&name).await {
        Ok(r) => r,
        Err(DnsError::NoSuchDomain | DnsError::NoRecords) => Vec::new(),
        Err(DnsError::Temporary(e)) => {
            return Row::new("TLS-RPT", name, Status::Error).reason(format!("no answer: {e}"));
        }
    };
    let reports: Vec<&String> = records.iter().filter(|r| r.trim_start().starts_with("v=TLSRPTv1")).collect();
    match reports.as_slice() {
        [] => Row::new("TLS-RPT", name, Status::Warn)
            .reason("no reports of TLS failures will reach you")
            .note("publish:", publish),
        [one] if tlsrpt_ok(one) => Row::new("TLS-RPT", name, Status::Ok).found(one),
        [one] => Row::new("TLS-RPT", name, Status::Wrong)
            .found(one)
            .reason("needs rua=mailto:… or rua=https://…")
            .note("publish:", publish),
        several => Row::new("TLS-RPT", name, Status::Wrong)
            .reason(format!("{} v=TLSRPTv1 records; there must be one", several.len()))
            .note("publish:", publish),
    }
}

/// RFC 8460 §3: `v=TLSRPTv1` first, then `rua=` with mailto: or https: URIs.
fn tlsrpt_ok(record: &str) -> bool {
    let mut fields = record.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next() != Some("v=TLSRPTv1") {
        return false;
    }
    fields.filter_map(|f| f.split_once('=')).any(|(k, v)| {
        k.trim() == "rua" && v.split(',').all(|u| u.trim().starts_with("mailto:") || u.trim().starts_with("https:"))
    })
}

/// `_25._tcp.MX` TLSA records of each MX host, summarized. They are shown, not
/// validated: without DNSSEC validation nothing here says they are authentic.
pub async fn tlsa_rows(dns: &Dns, mx: &[String]) -> Vec<Row> {
    let mut rows = Vec::new();
    for host in mx {
        let name = format!("_25._tcp.{host}.");
        let row = match dns.records(&name, RecordType::TLSA).await {
            Ok(records) => {
                let shown: Vec<String> = records
                    .iter()
                    .filter_map(|r| match r {
                        RData::TLSA(t) => {
                            Some(tlsa_summary(u8::from(t.cert_usage), u8::from(t.selector), u8::from(t.matching)))
                        }
                        _ => None,
                    })
                    .collect();
                if shown.is_empty() {
                    Row::new("TLSA", name, Status::Warn).reason("none: no DANE for this MX host")
                } else {
                    Row::new("TLSA", name, Status::Ok).found(&shown.join(", "))
                }
            }
            Err(DnsError::NoSuchDomain) => {
                Row::new("TLSA", name, Status::Warn).reason("none: no DANE for this MX host")
            }
            Err(e) => Row::new("TLSA", name, Status::Error).reason(format!("no answer: {e:?}")),
        };
        rows.push(row.note("note:", "DNSSEC is not validated by this command; the records are shown as found"));
    }
    rows
}

/// `3 1 1 (DANE-EE, SPKI, SHA-256)`.
fn tlsa_summary(usage: u8, selector: u8, matching: u8) -> String {
    let usage_name = match usage {
        0 => "PKIX-TA",
        1 => "PKIX-EE",
        2 => "DANE-TA",
        3 => "DANE-EE",
        _ => "unknown usage",
    };
    let selector_name = match selector {
        0 => "full certificate",
        1 => "SPKI",
        _ => "unknown selector",
    };
    let matching_name = match matching {
        0 => "exact",
        1 => "SHA-256",
        2 => "SHA-512",
        _ => "unknown matching",
    };
    format!("{usage} {selector} {matching} ({usage_name}, {selector_name}, {matching_name})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlsrpt_records() {
        assert!(tlsrpt_ok("v=TLSRPTv1; rua=mailto:tls@example.test"));
        assert!(tlsrpt_ok("v=TLSRPTv1;rua=https://r.example.test/v1,mailto:a@b.test"));
        assert!(!tlsrpt_ok("v=TLSRPTv1"));
        assert!(!tlsrpt_ok("v=TLSRPTv1; rua=ftp://x"));
        assert!(!tlsrpt_ok("rua=mailto:a@b.test; v=TLSRPTv1"));
    }

    #[test]
    fn tlsa_summaries() {
        assert_eq!(tlsa_summary(3, 1, 1), "3 1 1 (DANE-EE, SPKI, SHA-256)");
        assert_eq!(tlsa_summary(2, 0, 2), "2 0 2 (DANE-TA, full certificate, SHA-512)");
    }
}
