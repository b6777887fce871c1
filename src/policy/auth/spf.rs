//! SPF (RFC 7208) through mail-auth, with the checks of a domain's own record that
//! mail-auth 0.13 leaves out: a name that is no domain (§4.3), more than one record
//! (§4.5), unknown mechanisms and malformed addresses (§4.6, §5.6).

use super::Checker;
use super::results::{self, SpfIdentity};
use crate::smtp::address::Mailbox;
use mail_auth::SpfResult;
use mail_auth::spf::verify::SpfParameters;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use tokio::time::{Instant, timeout_at};

/// The SPF verdict reached at MAIL, kept for the end of the message.
#[derive(Debug, Clone)]
pub struct SpfCheck {
    pub result: SpfResult,
    pub identity: SpfIdentity,
    /// The domain SPF was about, which DMARC aligns with the From domain.
    pub domain: String,
    pub ip: IpAddr,
    pub helo: String,
}

impl Checker {
    /// SPF for the MAIL FROM domain, or for the HELO name when the sender is `<>`.
    pub async fn spf(&self, ip: IpAddr, helo: &str, from: Option<&Mailbox>) -> SpfCheck {
        let sender = from.map(Mailbox::to_string);
        let (params, identity, domain) = match (&sender, from) {
            (Some(sender), Some(from)) => (
                SpfParameters::verify_mail_from(ip, helo, &self.hostname, sender),
                SpfIdentity::MailFrom(sender.clone()),
                from.domain.clone(),
            ),
            _ => {
                (SpfParameters::verify_ehlo(ip, helo, &self.hostname), SpfIdentity::Helo(helo.to_string()), helo.into())
            }
        };
        let check =
            |result| SpfCheck { result, identity: identity.clone(), domain: domain.clone(), ip, helo: helo.into() };
        // §4.3: an address literal or a one-label name has no SPF record to ask for.
        if !is_domain_name(&domain) {
            return check(SpfResult::None);
        }
        let deadline = Instant::now() + self.config.timeout;
        let (verdict, records) = tokio::join!(
            timeout_at(deadline, self.resolver.verify_spf(self.caches.with(params))),
            timeout_at(deadline, self.dns.txt(&domain)),
        );
        let mut result = verdict.map_or(SpfResult::TempError, |o| o.result());
        if !matches!(result, SpfResult::TempError | SpfResult::None)
            && let Ok(Ok(records)) = records
            && let Some(problem) = record_error(&records)
        {
            tracing::info!(%ip, %domain, problem, "SPF record is invalid");
            result = SpfResult::PermError;
        }
        if matches!(result, SpfResult::TempError | SpfResult::PermError) {
            tracing::info!(%ip, %domain, result = results::spf_word(result), "SPF check did not conclude");
        }
        check(result)
    }
}

/// A multi-label domain name, as SPF can look up (RFC 7208 §4.3).
fn is_domain_name(name: &str) -> bool {
    !name.starts_with('[')
        && crate::smtp::address::canonical_domain(name).is_some_and(|d| d.trim_end_matches('.').contains('.'))
}

/// True for an SPF record: `v=spf1` alone or followed by a space (§4.5).
pub fn is_spf(record: &str) -> bool {
    let r = record.as_bytes();
    r.len() >= 6 && r[..6].eq_ignore_ascii_case(b"v=spf1") && (r.len() == 6 || r[6] == b' ')
}

/// What makes a domain's published SPF records a permanent error, if anything.
pub fn record_error(records: &[String]) -> Option<String> {
    let spf: Vec<&String> = records.iter().filter(|r| is_spf(r)).collect();
    if spf.len() > 1 {
        return Some(format!("{} SPF records", spf.len()));
    }
    for term in spf.first()?.split_ascii_whitespace().skip(1) {
        let t = term.strip_prefix(['+', '-', '~', '?']).unwrap_or(term);
        let (name, rest) = t.split_at(t.find([':', '/', '=']).unwrap_or(t.len()));
        if rest.starts_with('=') && term.len() == t.len() {
            continue; // a modifier (§6)
        }
        let valid = match name.to_ascii_lowercase().as_str() {
            "all" => rest.is_empty(),
            "include" | "exists" => rest.len() > 1 && rest.starts_with(':'),
            "a" | "mx" | "ptr" => true,
            "ip4" => network::<Ipv4Addr>(rest, 32),
            "ip6" => network::<Ipv6Addr>(rest, 128),
            _ => false,
        };
        if !valid {
            return Some(format!("bad term {term:?}"));
        }
    }
    None
}

/// `:address` with an optional `/prefix` of at most `max` bits (§5.6).
fn network<A: std::str::FromStr>(rest: &str, max: u8) -> bool {
    let Some(value) = rest.strip_prefix(':') else { return false };
    let (addr, prefix) = value.split_once('/').map_or((value, None), |(a, p)| (a, Some(p)));
    addr.parse::<A>().is_ok() && prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|n| n <= max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(records: &[&str]) -> Option<String> {
        record_error(&records.iter().map(|r| r.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn valid_records_pass() {
        assert_eq!(err(&["v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx:mx.test include:x.test ~all"]), None);
        assert_eq!(err(&["v=spf1 redirect=_spf.x.test", "google-site-verification=abc"]), None);
        assert_eq!(err(&["v=spf1 -all exp=explain.x.test"]), None);
        assert_eq!(err(&["v=spf10 whatever", "v=spf1"]), None);
        assert_eq!(err(&[]), None);
    }

    #[test]
    fn broken_records_are_permanent_errors() {
        assert!(err(&["v=spf1 -all", "v=SPF1 +all"]).unwrap().contains("2 SPF records"));
        assert!(err(&["v=spf1 ip4:300.1.1.1 -all"]).is_some());
        assert!(err(&["v=spf1 ip4:10.0.0.0/33 -all"]).is_some());
        assert!(err(&["v=spf1 ip6:zz::1 -all"]).is_some());
        assert!(err(&["v=spf1 frobnicate:x.test -all"]).is_some());
        assert!(err(&["v=spf1 include -all"]).is_some());
        assert!(err(&["v=spf1 -redirect=x.test"]).is_some());
    }

    #[test]
    fn only_domain_names_are_looked_up() {
        assert!(is_domain_name("mail.example.test"));
        assert!(!is_domain_name("[127.0.0.6]"));
        assert!(!is_domain_name("localhost"));
        assert!(!is_domain_name(""));
    }
}
