//! DMARC (RFC 7489): policy discovery with the organizational domain taken from the
//! public suffix list (§3.2), identifier alignment (§3.1) and the result (§6.6).

use super::cache::Caches;
use mail_auth::dmarc::{Alignment, Dmarc, Policy};
use mail_auth::{DkimResult, DnsError, Error, MessageAuthenticator, SpfResult};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// No policy published.
    None,
    TempError,
    PermError,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// The RFC 5322.From domain evaluated.
    pub domain: String,
    /// The policy that applies, when a record was found.
    pub policy: Option<Policy>,
}

impl Verdict {
    /// How much a verdict should worry the receiver; with several From domains the
    /// most worrying one is kept (RFC 7489 §6.6.1).
    fn severity(&self) -> u8 {
        match (self.outcome, self.policy) {
            (Outcome::Fail, Some(Policy::Reject)) => 5,
            (Outcome::Fail, Some(Policy::Quarantine)) => 4,
            (Outcome::TempError, _) => 3,
            (Outcome::Fail, _) => 2,
            (Outcome::PermError, _) => 1,
            _ => 0,
        }
    }
}

/// The authenticated identifiers DMARC looks at.
pub struct Identifiers<'a> {
    /// The SPF result and the domain it is about (MAIL FROM, or HELO for `<>`).
    pub spf: (SpfResult, &'a str),
    /// Each DKIM signature's result and its `d=`.
    pub dkim: Vec<(&'a DkimResult, String)>,
}

/// The organizational domain: one label below the public suffix (RFC 7489 §3.2).
pub fn organizational_domain(domain: &str) -> &str {
    psl::domain_str(domain).unwrap_or(domain)
}

fn aligned(a: &str, b: &str, mode: Alignment) -> bool {
    a.eq_ignore_ascii_case(b)
        || (mode == Alignment::Relaxed
            && organizational_domain(&a.to_ascii_lowercase()) == organizational_domain(&b.to_ascii_lowercase()))
}

enum Lookup {
    Found(Arc<Dmarc>),
    Missing,
    Temp,
    Perm,
}

async fn lookup(resolver: &MessageAuthenticator, caches: &Caches, domain: &str) -> Lookup {
    match resolver.txt_lookup::<Dmarc>(format!("_dmarc.{domain}."), Some(caches.txt())).await {
        Ok(record) => Lookup::Found(record),
        Err(Error::Dns(DnsError::RecordNotFound(_) | DnsError::InvalidRecordType)) => Lookup::Missing,
        Err(Error::Dns(DnsError::Resolver(e))) => {
            tracing::info!(domain, error = %e, "DMARC record lookup failed");
            Lookup::Temp
        }
        Err(e) => {
            tracing::info!(domain, error = %e, "DMARC record is malformed");
            Lookup::Perm
        }
    }
}

/// The DMARC verdict for a message whose From header names `from_domains`.
pub async fn evaluate(
    resolver: &MessageAuthenticator,
    caches: &Caches,
    from_domains: &[String],
    ids: &Identifiers<'_>,
) -> Verdict {
    let mut worst: Option<Verdict> = None;
    let mut seen = Vec::new();
    for domain in from_domains {
        if seen.contains(&domain) {
            continue;
        }
        seen.push(domain);
        let verdict = evaluate_one(resolver, caches, domain, ids).await;
        if worst.as_ref().is_none_or(|w| verdict.severity() > w.severity()) {
            worst = Some(verdict);
        }
    }
    worst.unwrap_or(Verdict { outcome: Outcome::None, domain: String::new(), policy: None })
}

async fn evaluate_one(
    resolver: &MessageAuthenticator,
    caches: &Caches,
    domain: &str,
    ids: &Identifiers<'_>,
) -> Verdict {
    let verdict = |outcome, policy| Verdict { outcome, domain: domain.to_string(), policy };
    // §6.6.3: the author domain's record, else the organizational domain's.
    let org = organizational_domain(domain);
    let (record, at_org) = match lookup(resolver, caches, domain).await {
        Lookup::Found(r) => (r, false),
        Lookup::Missing if org != domain => match lookup(resolver, caches, org).await {
            Lookup::Found(r) => (r, true),
            Lookup::Missing => return verdict(Outcome::None, None),
            Lookup::Temp => return verdict(Outcome::TempError, None),
            Lookup::Perm => return verdict(Outcome::PermError, None),
        },
        Lookup::Missing => return verdict(Outcome::None, None),
        Lookup::Temp => return verdict(Outcome::TempError, None),
        Lookup::Perm => return verdict(Outcome::PermError, None),
    };
    let mut policy = if at_org { record.sp } else { record.p };
    if policy == Policy::Unspecified {
        // A record without a valid p= still counts when it asks for reports (§6.6.3).
        if record.rua.is_empty() {
            return verdict(Outcome::None, None);
        }
        policy = Policy::None;
    }
    if record.t {
        // Testing mode: one step gentler.
        policy = match policy {
            Policy::Reject => Policy::Quarantine,
            _ => Policy::None,
        };
    }
    let (spf_result, spf_domain) = ids.spf;
    let spf_aligned = aligned(spf_domain, domain, record.aspf);
    let dkim_aligned = || ids.dkim.iter().filter(|(_, d)| aligned(d, domain, record.adkim));
    let outcome =
        if (spf_aligned && spf_result == SpfResult::Pass) || dkim_aligned().any(|(r, _)| **r == DkimResult::Pass) {
            Outcome::Pass
        } else if (spf_aligned && spf_result == SpfResult::TempError)
            || dkim_aligned().any(|(r, _)| matches!(r, DkimResult::TempError(_)))
        {
            // A lookup that might still have passed: ask again later (§6.6.2).
            Outcome::TempError
        } else {
            Outcome::Fail
        };
    verdict(outcome, Some(policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organizational_domains_come_from_the_suffix_list() {
        assert_eq!(organizational_domain("mail.example.com"), "example.com");
        assert_eq!(organizational_domain("a.b.example.co.uk"), "example.co.uk");
        assert_eq!(organizational_domain("bounce.a.test"), "a.test");
        assert_eq!(organizational_domain("com"), "com");
    }

    #[test]
    fn alignment_modes() {
        assert!(aligned("a.test", "A.test", Alignment::Strict));
        assert!(!aligned("bounce.a.test", "a.test", Alignment::Strict));
        assert!(aligned("bounce.a.test", "a.test", Alignment::Relaxed));
        assert!(!aligned("a.co.uk", "b.co.uk", Alignment::Relaxed));
        assert!(!aligned("other.test", "a.test", Alignment::Relaxed));
    }

    #[test]
    fn the_worst_of_several_from_domains_counts() {
        let v = |outcome, policy| Verdict { outcome, domain: String::new(), policy };
        assert!(v(Outcome::Fail, Some(Policy::Reject)).severity() > v(Outcome::Pass, Some(Policy::Reject)).severity());
        assert!(v(Outcome::TempError, None).severity() > v(Outcome::Fail, Some(Policy::None)).severity());
    }
}
