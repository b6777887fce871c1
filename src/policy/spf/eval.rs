//! `check_host()` (RFC 7208 §4): the record of a domain evaluated for one client,
//! with the limits of §4.6.4.

use super::Resolve;
use super::macros::{MacroString, Values};
use super::record::{Mechanism, Record, is_spf};
use crate::dns::DnsError;
use mail_auth::SpfResult;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use tokio::time::Instant;

/// Terms that query DNS (`include`, `a`, `mx`, `ptr`, `exists`, `redirect`).
const MAX_TERMS: u32 = 10;
/// Lookups that find nothing (§4.6.4).
const MAX_VOID: u32 = 2;
/// MX names an `mx` term may look up; more is a permanent error.
const MAX_MX: usize = 10;
/// PTR names a `ptr` term or `%{p}` looks at; the rest are ignored.
const MAX_PTR: usize = 10;

/// Why an evaluation ended without a result of a record.
enum Stop {
    Temp(String),
    Perm(String),
}

type Step<T> = Result<T, Stop>;

/// A record's result, with the explanation of a `fail` (§6.2).
struct Outcome {
    result: SpfResult,
    explanation: Option<String>,
}

impl Outcome {
    fn of(result: SpfResult) -> Outcome {
        Outcome { result, explanation: None }
    }
}

/// The verdict of `check_host()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub result: SpfResult,
    /// For `fail`: the domain's explanation (`exp=`), when it has a usable one.
    pub explanation: Option<String>,
    /// For `permerror` and `temperror`: what went wrong, for the log.
    pub problem: Option<String>,
}

/// What one evaluation is about (§4.1), and its running counts.
pub struct Evaluation<'a, R> {
    dns: &'a R,
    ip: IpAddr,
    sender: String,
    local: String,
    sender_domain: String,
    helo: &'a str,
    receiver: &'a str,
    terms: u32,
    voids: u32,
    /// `%{p}` once found, per domain it was found for.
    validated: Option<(String, String)>,
    /// When the explanation lookup gives up, so a slow `exp=` cannot turn a
    /// `fail` into a timeout.
    explain_by: Option<Instant>,
}

impl<'a, R: Resolve> Evaluation<'a, R> {
    /// `sender` is the MAIL FROM address, or `postmaster@` the HELO name when
    /// checking the HELO identity; `receiver` names this host for `%{r}`.
    pub fn new(dns: &'a R, ip: IpAddr, sender: &str, helo: &'a str, receiver: &'a str) -> Self {
        // §4.3: a sender without a local part is "postmaster".
        let (local, domain) = sender.rsplit_once('@').unwrap_or(("", sender));
        let local = if local.is_empty() { "postmaster" } else { local };
        Evaluation {
            dns,
            ip: ip.to_canonical(),
            sender: format!("{local}@{domain}"),
            local: local.to_string(),
            sender_domain: domain.to_string(),
            helo,
            receiver,
            terms: 0,
            voids: 0,
            validated: None,
            explain_by: None,
        }
    }

    /// Gives up on an explanation not found by `deadline` (§6.2: any trouble with it
    /// means no explanation).
    pub fn explain_by(self, deadline: Instant) -> Self {
        Evaluation { explain_by: Some(deadline), ..self }
    }

    /// `check_host()` for `domain`.
    pub async fn check_host(mut self, domain: &str) -> Verdict {
        match self.check(domain.to_string()).await {
            Ok(o) => Verdict { result: o.result, explanation: o.explanation, problem: None },
            Err(Stop::Temp(why)) => Verdict { result: SpfResult::TempError, explanation: None, problem: Some(why) },
            Err(Stop::Perm(why)) => Verdict { result: SpfResult::PermError, explanation: None, problem: Some(why) },
        }
    }

    fn check(&mut self, domain: String) -> Pin<Box<dyn Future<Output = Step<Outcome>> + Send + '_>> {
        Box::pin(async move {
            // §4.3: a malformed or single-label name has no record.
            if !is_valid_name(&domain) || !domain.trim_end_matches('.').contains('.') {
                return Ok(Outcome::of(SpfResult::None));
            }
            // §4.4: the TXT records; a lookup that fails is a temporary error.
            let records = match self.dns.txt(&domain).await {
                Ok(records) => records,
                Err(DnsError::NoSuchDomain) => Vec::new(),
                Err(e) => return Err(Stop::Temp(format!("TXT lookup of {domain}: {}", describe(&e)))),
            };
            let spf: Vec<&String> = records.iter().filter(|r| is_spf(r)).collect();
            let record = match spf.as_slice() {
                [] => return Ok(Outcome::of(SpfResult::None)),
                [one] => Record::parse(one).map_err(|e| Stop::Perm(format!("record of {domain}: {e}")))?,
                several => return Err(Stop::Perm(format!("{domain} has {} SPF records", several.len()))),
            };
            for directive in &record.directives {
                if directive.mechanism.queries_dns() {
                    self.count_term()?;
                }
                if self.matches(&directive.mechanism, &domain).await? {
                    let explanation = match directive.qualifier {
                        SpfResult::Fail => self.explain(&record, &domain).await,
                        _ => None,
                    };
                    return Ok(Outcome { result: directive.qualifier, explanation });
                }
            }
            // §6.1: the redirect applies when no mechanism matched, wherever it stands.
            if let Some(redirect) = &record.redirect {
                self.count_term()?;
                let target = self.expand(redirect, &domain).await;
                let outcome = self.check(target.clone()).await?;
                if outcome.result == SpfResult::None {
                    return Err(Stop::Perm(format!("redirect to {target}, which has no SPF record")));
                }
                return Ok(outcome);
            }
            Ok(Outcome::of(SpfResult::Neutral))
        })
    }

    fn count_term(&mut self) -> Step<()> {
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(Stop::Perm(format!("more than {MAX_TERMS} DNS-querying terms")));
        }
        Ok(())
    }

    async fn matches(&mut self, mechanism: &Mechanism, domain: &str) -> Step<bool> {
        let ip = self.ip;
        Ok(match mechanism {
            Mechanism::All => true,
            Mechanism::Ip(net, prefix) => in_network(ip, *net, *prefix),
            // §5.2: the included record must pass; `none` there is a permanent error.
            Mechanism::Include(spec) => {
                let target = self.expand(spec, domain).await;
                match self.check(target.clone()).await?.result {
                    SpfResult::Pass => true,
                    SpfResult::None => return Err(Stop::Perm(format!("include of {target}, which has no SPF record"))),
                    _ => false,
                }
            }
            Mechanism::A(spec, v4, v6) => {
                let name = self.target(spec.as_ref(), domain).await;
                let prefix = if ip.is_ipv4() { *v4 } else { *v6 };
                self.addresses(&name, ip.is_ipv6()).await?.into_iter().any(|a| in_network(ip, a, prefix))
            }
            // §5.4: at most ten MX names, each looked up like `a`.
            Mechanism::Mx(spec, v4, v6) => {
                let name = self.target(spec.as_ref(), domain).await;
                let prefix = if ip.is_ipv4() { *v4 } else { *v6 };
                let exchanges = self.void_checked(&name, self.dns.mx(&name).await)?;
                if exchanges.len() > MAX_MX {
                    return Err(Stop::Perm(format!("{name} has more than {MAX_MX} MX records")));
                }
                for exchange in exchanges {
                    if self.addresses(&exchange, ip.is_ipv6()).await?.into_iter().any(|a| in_network(ip, a, prefix)) {
                        return Ok(true);
                    }
                }
                false
            }
            // §5.5: a validated name of the client that is the target or below it.
            Mechanism::Ptr(spec) => {
                let target = self.target(spec.as_ref(), domain).await.trim_end_matches('.').to_ascii_lowercase();
                let suffix = format!(".{target}");
                self.validated_names().await?.iter().any(|n| *n == target || n.ends_with(&suffix))
            }
            // §5.7: an A record, whatever the client's address family.
            Mechanism::Exists(spec) => {
                let name = self.expand(spec, domain).await;
                !self.addresses(&name, false).await?.is_empty()
            }
        })
    }

    /// A mechanism's target name: its own, expanded, or the current domain.
    async fn target(&mut self, spec: Option<&MacroString>, domain: &str) -> String {
        match spec {
            Some(spec) => self.expand(spec, domain).await,
            None => domain.to_string(),
        }
    }

    /// A macro string expanded as a domain name, shortened from the left to 253
    /// characters (§7.3).
    async fn expand(&mut self, spec: &MacroString, domain: &str) -> String {
        let validated = match spec.uses(b'p') {
            true => Some(self.validated_name(domain).await),
            false => None,
        };
        let values = self.values(domain, validated.as_deref());
        let mut name = spec.expand(&values);
        while name.trim_end_matches('.').len() > 253 {
            name = name.split_once('.').map_or(String::new(), |(_, rest)| rest.to_string());
        }
        name
    }

    fn values<'v>(&'v self, domain: &'v str, validated: Option<&'v str>) -> Values<'v> {
        Values {
            sender: &self.sender,
            local: &self.local,
            sender_domain: &self.sender_domain,
            domain,
            ip: self.ip,
            helo: self.helo,
            receiver: self.receiver,
            validated,
        }
    }

    /// The A or AAAA records of a name; a name that cannot exist has none.
    async fn addresses(&mut self, name: &str, v6: bool) -> Step<Vec<IpAddr>> {
        if !is_valid_name(name) {
            return Ok(Vec::new());
        }
        let answer = self.dns.addresses(name, v6).await;
        self.void_checked(name, answer)
    }

    /// An answer, counting it when it holds nothing (§4.6.4: at most two such).
    fn void_checked<T>(&mut self, name: &str, answer: Result<Vec<T>, DnsError>) -> Step<Vec<T>> {
        match answer {
            Ok(found) if !found.is_empty() => Ok(found),
            Ok(_) | Err(DnsError::NoSuchDomain | DnsError::NoRecords) => {
                self.voids += 1;
                if self.voids > MAX_VOID {
                    return Err(Stop::Perm(format!("more than {MAX_VOID} lookups found nothing (the last: {name})")));
                }
                Ok(Vec::new())
            }
            Err(e) => Err(Stop::Temp(format!("lookup of {name}: {}", describe(&e)))),
        }
    }

    /// The client's names that point back to its address (§5.5): of the first ten
    /// PTR names, those with an address record equal to the client's. DNS errors
    /// skip a name; lookups that find nothing count as void lookups.
    async fn validated_names(&mut self) -> Step<Vec<String>> {
        let ip = self.ip;
        let names = match self.dns.ptr(ip).await {
            Err(DnsError::Temporary(_)) => return Ok(Vec::new()),
            answer => self.void_checked("the client's PTR", answer)?,
        };
        let mut validated = Vec::new();
        for name in names.into_iter().take(MAX_PTR) {
            if !is_valid_name(&name) {
                continue;
            }
            match self.dns.addresses(&name, ip.is_ipv6()).await {
                Err(DnsError::Temporary(_)) => continue,
                answer => {
                    if self.void_checked(&name, answer)?.contains(&ip) {
                        validated.push(name.trim_end_matches('.').to_ascii_lowercase());
                    }
                }
            }
        }
        Ok(validated)
    }

    /// `%{p}` (§7.3): the validated name equal to the domain, else one below it,
    /// else any, else "unknown". Trouble finding it gives "unknown".
    async fn validated_name(&mut self, domain: &str) -> String {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some((for_domain, name)) = &self.validated
            && *for_domain == domain
        {
            return name.clone();
        }
        let names = self.validated_names().await.unwrap_or_default();
        let suffix = format!(".{domain}");
        let name = names
            .iter()
            .find(|n| **n == domain)
            .or_else(|| names.iter().find(|n| n.ends_with(&suffix)))
            .or(names.first())
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        self.validated = Some((domain, name.clone()));
        name
    }

    /// The explanation of a `fail` (§6.2): the TXT record named by `exp=`, expanded.
    /// Any trouble leaves the default explanation.
    async fn explain(&mut self, record: &Record, domain: &str) -> Option<String> {
        let name = self.expand(record.exp.as_ref()?, domain).await;
        if !is_valid_name(&name) {
            return None;
        }
        let lookup = self.dns.txt(&name);
        let texts = match self.explain_by {
            Some(deadline) => tokio::time::timeout_at(deadline, lookup).await.ok()?,
            None => lookup.await,
        }
        .ok()?;
        let [text] = texts.as_slice() else { return None };
        let text = MacroString::parse(text, super::macros::Context::Explanation).ok()?;
        let validated = match text.uses(b'p') {
            true => Some(self.validated_name(domain).await),
            false => None,
        };
        Some(text.expand(&self.values(domain, validated.as_deref())))
    }
}

/// A name DNS can be asked about: labels of 1 to 63 octets, 253 in all (RFC 1035).
fn is_valid_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty() && name.len() <= 253 && name.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

fn describe(e: &DnsError) -> String {
    match e {
        DnsError::NoSuchDomain => "no such domain".into(),
        DnsError::NoRecords => "no records".into(),
        DnsError::Temporary(why) => why.clone(),
    }
}
