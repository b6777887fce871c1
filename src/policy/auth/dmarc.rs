//! DMARC (RFC 7489): policy discovery with the organizational domain taken from the
//! public suffix list (§3.2), identifier alignment (§3.1), the result (§6.6) and
//! sampling (`pct=`, §6.6.4). Tern finds the record itself (mail-auth 0.13 takes the
//! first of several and knows no `pct=`); mail-auth parses it.

use crate::dns::{Dns, DnsError};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::dmarc::{Alignment, Dmarc, Policy};
use mail_auth::{DkimResult, SpfResult};

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
    /// The record and what aligned, for aggregate reports; when a record was found.
    pub published: Option<Box<Published>>,
}

/// A domain's DMARC record and the results of the aligned identifiers under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub record: Dmarc,
    /// SPF passed for a domain aligned with the From domain.
    pub spf_pass: bool,
    /// A DKIM signature of a domain aligned with the From domain passed.
    pub dkim_pass: bool,
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

/// A DMARC record as Tern applies it.
#[derive(Debug)]
struct Record {
    dmarc: Dmarc,
    /// `pct=`: the percentage of failing mail the policy is applied to.
    pct: u8,
}

#[derive(Debug)]
enum Lookup {
    Found(Record),
    /// Several records (§6.6.3 step 3), or a record without a valid policy that
    /// asks for no reports (§6.6.3 step 6): no DMARC for the message.
    Missing,
    /// No record: the organizational domain is asked next (§6.6.3 step 4).
    Absent,
    Temp,
    Perm,
}

/// True for a record that starts with `v=DMARC1`; others are discarded (§6.6.3 step 2).
fn is_dmarc(text: &str) -> bool {
    let first = text.split(';').next().and_then(|t| t.split_once('='));
    first.is_some_and(|(name, value)| name.trim() == "v" && value.trim() == "DMARC1")
}

/// Reads one record. An invalid `p=` or `sp=` makes it `p=none` when it names a
/// valid report address, and no record otherwise (§6.6.3 step 6).
fn parse(text: &str) -> Lookup {
    let valid = |v: &str| ["none", "quarantine", "reject"].iter().any(|p| v.eq_ignore_ascii_case(p));
    let mut policy_valid = false;
    let mut invalid = false;
    let mut pct = 100;
    let mut kept = Vec::new();
    for tag in text.split(';') {
        match tag.split_once('=').map(|(n, v)| (n.trim(), v.trim())) {
            Some(("p", v)) if valid(v) => policy_valid = true,
            Some(("p" | "sp", v)) if !valid(v) => {
                invalid = true;
                continue;
            }
            Some(("pct", v)) => {
                pct = v.parse::<u8>().ok().filter(|p| *p <= 100).unwrap_or(100);
                continue;
            }
            _ => {}
        }
        kept.push(tag);
    }
    match Dmarc::parse(kept.join(";").as_bytes()) {
        Ok(mut dmarc) if invalid || !policy_valid => {
            if dmarc.rua.is_empty() {
                return Lookup::Missing;
            }
            (dmarc.p, dmarc.sp) = (Policy::None, Policy::None);
            Lookup::Found(Record { dmarc, pct })
        }
        Ok(dmarc) => Lookup::Found(Record { dmarc, pct }),
        Err(_) if invalid || !policy_valid => Lookup::Missing,
        Err(e) => {
            tracing::info!(record = text, error = %e, "DMARC record is malformed");
            Lookup::Perm
        }
    }
}

async fn lookup(dns: &Dns, domain: &str) -> Lookup {
    let records = match dns.txt(&format!("_dmarc.{domain}")).await {
        Ok(records) => records,
        Err(DnsError::NoSuchDomain | DnsError::NoRecords) => return Lookup::Absent,
        Err(DnsError::Temporary(e)) => {
            tracing::info!(domain, error = %e, "DMARC record lookup failed");
            return Lookup::Temp;
        }
    };
    choose(&records)
}

/// The record among the TXT records at `_dmarc`: none, or several, is no policy.
fn choose(records: &[String]) -> Lookup {
    let records: Vec<&String> = records.iter().filter(|r| is_dmarc(r)).collect();
    match records.as_slice() {
        [] => Lookup::Absent,
        [one] => parse(one),
        _ => {
            tracing::info!(records = ?records, "several DMARC records: no policy");
            Lookup::Missing
        }
    }
}

/// §6.6.4: mail outside the `pct=` sample gets the next gentler policy; `draw` is a
/// random number below 100.
fn sampled(policy: Policy, pct: u8, draw: u8) -> Policy {
    match policy {
        _ if draw < pct => policy,
        Policy::Reject => Policy::Quarantine,
        Policy::Quarantine => Policy::None,
        other => other,
    }
}

/// The DMARC verdict for a message whose From header names `from_domains`.
/// `draw`: a random number below 100, for `pct=`.
pub async fn evaluate(dns: &Dns, from_domains: &[String], ids: &Identifiers<'_>, draw: u8) -> Verdict {
    let mut worst: Option<Verdict> = None;
    let mut seen = Vec::new();
    for domain in from_domains {
        if seen.contains(&domain) {
            continue;
        }
        seen.push(domain);
        let verdict = evaluate_one(dns, domain, ids, draw).await;
        if worst.as_ref().is_none_or(|w| verdict.severity() > w.severity()) {
            worst = Some(verdict);
        }
    }
    worst.unwrap_or(Verdict { outcome: Outcome::None, domain: String::new(), policy: None, published: None })
}

async fn evaluate_one(dns: &Dns, domain: &str, ids: &Identifiers<'_>, draw: u8) -> Verdict {
    let verdict = |outcome, policy| Verdict { outcome, domain: domain.to_string(), policy, published: None };
    // §6.6.3: the author domain's record, else the organizational domain's.
    let org = organizational_domain(domain);
    let mut found = lookup(dns, domain).await;
    let mut at_org = false;
    if matches!(found, Lookup::Absent) && org != domain {
        found = lookup(dns, org).await;
        at_org = true;
    }
    let Record { dmarc: record, pct } = match found {
        Lookup::Found(r) => r,
        Lookup::Absent | Lookup::Missing => return verdict(Outcome::None, None),
        Lookup::Temp => return verdict(Outcome::TempError, None),
        Lookup::Perm => return verdict(Outcome::PermError, None),
    };
    let mut policy = if at_org { record.sp } else { record.p };
    if policy == Policy::Unspecified {
        // No p= at all: a valid record needs one (§6.3).
        return verdict(Outcome::None, None);
    }
    policy = sampled(policy, pct, draw);
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
    let spf_pass = spf_aligned && spf_result == SpfResult::Pass;
    let dkim_pass = dkim_aligned().any(|(r, _)| **r == DkimResult::Pass);
    let outcome = if spf_pass || dkim_pass {
        Outcome::Pass
    } else if (spf_aligned && spf_result == SpfResult::TempError)
        || dkim_aligned().any(|(r, _)| matches!(r, DkimResult::TempError(_)))
    {
        // A lookup that might still have passed: ask again later (§6.6.2).
        Outcome::TempError
    } else {
        Outcome::Fail
    };
    let published = Published { record, spf_pass, dkim_pass };
    Verdict { published: Some(Box::new(published)), ..verdict(outcome, Some(policy)) }
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
        let v = |outcome, policy| Verdict { outcome, domain: String::new(), policy, published: None };
        assert!(v(Outcome::Fail, Some(Policy::Reject)).severity() > v(Outcome::Pass, Some(Policy::Reject)).severity());
        assert!(v(Outcome::TempError, None).severity() > v(Outcome::Fail, Some(Policy::None)).severity());
    }

    fn found(text: &str) -> (Policy, Policy, u8) {
        match parse(text) {
            Lookup::Found(r) => (r.dmarc.p, r.dmarc.sp, r.pct),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn records_and_their_policies() {
        assert!(is_dmarc("v=DMARC1; p=none") && is_dmarc(" v = DMARC1 ;p=reject") && is_dmarc("v=DMARC1"));
        assert!(!is_dmarc("p=reject; v=DMARC1") && !is_dmarc("v=spf1 -all") && !is_dmarc("v=DMARC10; p=none"));
        assert_eq!(found("v=DMARC1; p=reject"), (Policy::Reject, Policy::Reject, 100));
        assert_eq!(found("v=DMARC1; p=quarantine; sp=none; pct=25"), (Policy::Quarantine, Policy::None, 25));
        assert_eq!(found("v=DMARC1; p=reject; pct=x"), (Policy::Reject, Policy::Reject, 100));
        assert_eq!(found("v=DMARC1; p=reject; pct=101"), (Policy::Reject, Policy::Reject, 100));
        // §6.6.3 step 6: no valid policy, but a valid report address: p=none.
        let rua = "rua=mailto:dmarc@a.test";
        assert_eq!(found(&format!("v=DMARC1; p=bogus; {rua}")), (Policy::None, Policy::None, 100));
        assert_eq!(found(&format!("v=DMARC1; p=reject; sp=bogus; {rua}")), (Policy::None, Policy::None, 100));
        assert_eq!(found(&format!("v=DMARC1; {rua}")), (Policy::None, Policy::None, 100));
        assert!(matches!(parse("v=DMARC1; p=bogus"), Lookup::Missing));
        assert!(matches!(parse("v=DMARC1; p=bogus; rua=bogus"), Lookup::Missing));
        assert!(matches!(parse("v=DMARC1; p=reject; adkim=x"), Lookup::Perm));
    }

    #[test]
    fn several_records_are_no_policy_in_any_order() {
        let strings = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (reject, none, spf) = ("v=DMARC1; p=reject", "v=DMARC1; p=none", "v=spf1 -all");
        assert!(matches!(choose(&strings(&[reject, none])), Lookup::Missing));
        assert!(matches!(choose(&strings(&[none, reject])), Lookup::Missing));
        assert!(matches!(choose(&strings(&[spf])), Lookup::Absent));
        assert!(matches!(choose(&[]), Lookup::Absent));
        for records in [[spf, reject], [reject, spf]] {
            assert!(matches!(choose(&strings(&records)), Lookup::Found(r) if r.dmarc.p == Policy::Reject));
        }
    }

    #[test]
    fn mail_outside_the_sample_gets_the_next_gentler_policy() {
        for draw in 0..100 {
            let inside = draw < 30;
            let reject = sampled(Policy::Reject, 30, draw);
            assert_eq!(reject, if inside { Policy::Reject } else { Policy::Quarantine }, "draw {draw}");
            let quarantine = sampled(Policy::Quarantine, 30, draw);
            assert_eq!(quarantine, if inside { Policy::Quarantine } else { Policy::None }, "draw {draw}");
            assert_eq!(sampled(Policy::None, 30, draw), Policy::None);
            assert_eq!(sampled(Policy::Reject, 100, draw), Policy::Reject);
            assert_eq!(sampled(Policy::Reject, 0, draw), Policy::Quarantine);
        }
    }
}
