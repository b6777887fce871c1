//! SPF (RFC 7208) for received mail, through Tern's evaluator (`policy::spf`).

use super::Checker;
use super::results::{self, SpfIdentity};
use crate::dns::Dns;
use crate::policy::spf;
use crate::smtp::address::{Mailbox, canonical_domain};
use mail_auth::SpfResult;
use std::net::IpAddr;
use std::time::Duration;
use tokio::time::Instant;

/// The SPF verdict reached at MAIL, kept for the end of the message.
#[derive(Debug, Clone)]
pub struct SpfCheck {
    pub result: SpfResult,
    /// For `fail`: the explanation the domain publishes (RFC 7208 §6.2).
    pub explanation: Option<String>,
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
        let (sender, domain) = identity(helo, sender.as_deref());
        let verdict = evaluate(&self.dns, self.config.timeout, ip, helo, &sender, &domain, &self.hostname).await;
        let identity = match from {
            Some(_) => SpfIdentity::MailFrom(sender),
            None => SpfIdentity::Helo(helo.to_string()),
        };
        SpfCheck { result: verdict.result, explanation: verdict.explanation, identity, domain, ip, helo: helo.into() }
    }
}

/// The sender and domain SPF checks (RFC 7208 §2.3, §2.4): the MAIL FROM address, or
/// `postmaster@` the HELO name when the reverse path is null.
pub fn identity(helo: &str, mail_from: Option<&str>) -> (String, String) {
    match mail_from.filter(|m| !m.is_empty()) {
        Some(from) => (from.to_string(), from.rsplit_once('@').map_or(from, |(_, d)| d).to_string()),
        None => (format!("postmaster@{helo}"), helo.to_string()),
    }
}

/// `check_host()` within `timeout`; a domain SPF cannot be about gives `none`
/// (§4.3), running out of time `temperror`.
pub async fn evaluate(
    dns: &Dns,
    timeout: Duration,
    ip: IpAddr,
    helo: &str,
    sender: &str,
    domain: &str,
    hostname: &str,
) -> spf::Verdict {
    // A U-label domain is looked up as its A-label.
    let domain = match canonical_domain(domain) {
        Some(ascii) if !domain.starts_with('[') && ascii.contains('.') => {
            if domain.is_ascii() {
                domain.to_string()
            } else {
                ascii
            }
        }
        _ => return spf::Verdict { result: SpfResult::None, explanation: None, problem: None },
    };
    // The explanation of a fail is given up early enough for the fail to stand.
    let evaluation = spf::Evaluation::new(dns, ip, sender, helo, hostname)
        .explain_by(Instant::now() + timeout * 3 / 4)
        .check_host(&domain);
    let evaluation = tokio::time::timeout(timeout, evaluation);
    let verdict = evaluation.await.unwrap_or_else(|_| spf::Verdict {
        result: SpfResult::TempError,
        explanation: None,
        problem: Some("time budget for the checks used up".into()),
    });
    if let Some(problem) = &verdict.problem {
        tracing::info!(%ip, %domain, result = results::spf_word(verdict.result), problem, "SPF check did not conclude");
    }
    verdict
}
