//! Checks of received mail — SPF (RFC 7208), DKIM (RFC 6376), ARC (RFC 8617) and
//! DMARC (RFC 7489) — through mail-auth and Tern's resolver (DKIM with Tern's own
//! canonicalization, see `dkim`), and what the verdict means for the message.

pub mod body;
pub mod cache;
pub mod dkim;
pub mod dmarc;
pub mod report;
pub mod results;
pub mod spf;

use crate::config::{AuthChecks, FailAction, TempErrorAction};
use crate::dns::Dns;
use crate::smtp::Reply;
use body::Hashed;
use cache::Caches;
use dmarc::{Identifiers, Outcome};
use mail_auth::dmarc::Policy;
use mail_auth::{AuthenticatedMessage, DkimOutput, DkimResult, DnsError, Error, MessageAuthenticator, SpfResult};
use results::Results;
pub use spf::SpfCheck;
use tokio::time::{Instant, timeout_at};

/// The results of a checked message in the metrics (`none` for DKIM when unsigned).
fn count(spf: SpfResult, dkim: &[DkimOutput], arc: &DkimResult, dmarc: Outcome) {
    use crate::metrics::AuthMethod;
    let metrics = crate::metrics::get();
    metrics.auth_result(AuthMethod::Spf, results::spf_word(spf));
    for d in dkim {
        metrics.auth_result(AuthMethod::Dkim, results::dkim_word(d.result()));
    }
    if dkim.is_empty() {
        metrics.auth_result(AuthMethod::Dkim, "none");
    }
    metrics.auth_result(AuthMethod::Arc, results::arc_word(arc));
    metrics.auth_result(AuthMethod::Dmarc, results::dmarc_word(dmarc));
}

/// What becomes of a checked message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Accept,
    /// Accepted into the recipients' Junk folders.
    Quarantine,
    Refuse(Reply),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Accept => f.write_str("accept"),
            Action::Quarantine => f.write_str("quarantine"),
            Action::Refuse(reply) => write!(f, "refuse: {reply}"),
        }
    }
}

#[derive(Debug)]
pub struct Verdict {
    /// `Authentication-Results` (and `Received-SPF`) lines to put on top.
    pub headers: String,
    pub action: Action,
    /// One line for the log.
    pub summary: String,
}

pub struct Checker {
    /// Tern's resolver, and mail-auth's view of the same one.
    dns: Dns,
    resolver: MessageAuthenticator,
    caches: Caches,
    hostname: String,
    config: AuthChecks,
}

fn timed_out() -> Error {
    Error::Dns(DnsError::Resolver("time budget for the checks used up".into()))
}

impl Checker {
    pub fn new(hostname: &str, config: &AuthChecks, dns: &Dns) -> Checker {
        Checker {
            dns: dns.clone(),
            resolver: dns.authenticator(),
            caches: Caches::default(),
            hostname: hostname.to_string(),
            config: config.clone(),
        }
    }

    /// DKIM, ARC and DMARC for the message, run together within the time budget, and
    /// the decision they lead to with the SPF verdict. The message is its header block
    /// (up to the CRLF before the empty line) and the body hashes its signatures need,
    /// computed as the body arrived ([`body::BodyHashes`]).
    pub async fn message(&self, spf: &SpfCheck, header: &[u8], body: &Hashed) -> Verdict {
        let deadline = Instant::now() + self.config.timeout;
        let header = body::header_message(header);
        let mut message = AuthenticatedMessage::parse(&header).unwrap_or_default();
        body.inject(&mut message);
        let (dkim, arc) = tokio::join!(
            timeout_at(deadline, dkim::verify(&self.resolver, &self.caches, &message)),
            timeout_at(deadline, self.resolver.verify_arc(self.caches.with(&message))),
        );
        let dkim: Vec<DkimOutput> = dkim.unwrap_or_else(|_| {
            message.dkim_headers.iter().map(|h| DkimOutput::temp_err(timed_out()).with_signature(&h.header)).collect()
        });
        // The domain that sealed a passing ARC chain last, if it is one we trust.
        let trusted_sealer = arc.as_ref().ok().filter(|a| *a.result() == DkimResult::Pass).and_then(|a| {
            let newest = a.sets().iter().max_by_key(|set| set.seal.header.i)?;
            let sealer = newest.seal.header.d.to_ascii_lowercase();
            self.config.trusted_arc_sealers.iter().any(|t| t.eq_ignore_ascii_case(&sealer)).then_some(sealer)
        });
        let arc = arc.map(|a| a.result().clone()).unwrap_or_else(|_| DkimResult::TempError(timed_out()));
        let ids = Identifiers {
            spf: (spf.result, &spf.domain),
            dkim: dkim.iter().filter_map(|o| o.signature().map(|s| (o.result(), s.d.to_ascii_lowercase()))).collect(),
        };
        let from_domains: Vec<String> =
            message.from.iter().filter_map(|a| a.rsplit_once('@')).map(|(_, d)| d.to_ascii_lowercase()).collect();
        let draw = fastrand::u8(0..100);
        let dmarc =
            timeout_at(deadline, dmarc::evaluate(&self.dns, &from_domains, &ids, draw)).await.unwrap_or_else(|_| {
                dmarc::Verdict {
                    outcome: Outcome::TempError,
                    domain: from_domains.first().cloned().unwrap_or_default(),
                    policy: None,
                    published: None,
                }
            });
        count(spf.result, &dkim, &arc, dmarc.outcome);
        let results = Results {
            hostname: &self.hostname,
            spf: spf.result,
            identity: &spf.identity,
            dkim: &dkim,
            arc: &arc,
            dmarc: &dmarc,
            arc_override: trusted_sealer.as_deref().filter(|_| dmarc.outcome == Outcome::Fail),
        };
        let mut headers = results.header();
        if self.config.received_spf {
            headers.push_str(&results::received_spf(&self.hostname, spf.result, &spf.identity, spf.ip, &spf.helo));
        }
        let summary = headers
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with('\t'))
            .map(|l| l.trim().trim_end_matches(';'))
            .collect::<Vec<_>>()
            .join("; ");
        let action = self.decide(spf, &dmarc, trusted_sealer.is_some());
        if let Some(published) = dmarc.published.as_deref().filter(|_| crate::reports::dmarc_enabled())
            && let Some(row) = report::row(spf, &dkim, &dmarc.domain, published, &action)
        {
            crate::reports::record_dmarc(&dmarc.domain, &published.record, row);
        }
        Verdict { headers, action, summary }
    }

    /// The action for the verdicts; `trusted_arc`: a trusted forwarder sealed a passing
    /// ARC chain, which vouches for the message as it was before forwarding broke it.
    fn decide(&self, spf: &SpfCheck, dmarc: &dmarc::Verdict, trusted_arc: bool) -> Action {
        let c = &self.config;
        let defer = c.temp_error == TempErrorAction::Defer;
        match dmarc.outcome {
            Outcome::Fail if trusted_arc => Action::Accept,
            // RFC 7489 §6.3, §6.7: the domain owner's policy decides.
            Outcome::Fail if c.enforce_dmarc => match dmarc.policy {
                Some(Policy::Reject) => Action::Refuse(Reply::new(
                    550,
                    (5, 7, 1),
                    format!("Message rejected: it fails the DMARC policy of {}", dmarc.domain),
                )),
                Some(Policy::Quarantine) => Action::Quarantine,
                _ => Action::Accept,
            },
            Outcome::Fail | Outcome::Pass => Action::Accept,
            // Never a permanent refusal for what may be a passing DNS problem. The text
            // names the lookup that failed: the policy itself, or (a policy was found)
            // the SPF record or a DKIM key it needed (RFC 7372 §3.3 for SPF's 4.7.24).
            Outcome::TempError if defer => {
                let (status, what) = match (dmarc.policy, spf.result) {
                    (None, _) => ((4, 7, 1), format!("the DMARC policy of {}", dmarc.domain)),
                    (Some(_), SpfResult::TempError) => ((4, 7, 24), format!("the SPF record of {}", spf.domain)),
                    (Some(_), _) => ((4, 7, 1), format!("a DKIM key for mail from {}", dmarc.domain)),
                };
                Action::Refuse(Reply::new(451, status, format!("Temporary DNS error checking {what}, try again later")))
            }
            Outcome::TempError => Action::Accept,
            // Without a DMARC policy, SPF has the say.
            Outcome::None | Outcome::PermError => match spf.result {
                SpfResult::Fail if c.spf_fail == FailAction::Reject => {
                    // RFC 7208 §8.4: the domain's explanation, when it gives one.
                    let explanation: String = match &spf.explanation {
                        Some(e) => format!(": {}", e.chars().take(200).collect::<String>()),
                        None => String::new(),
                    };
                    Action::Refuse(Reply::new(
                        550,
                        (5, 7, 23),
                        format!(
                            "SPF check failed: {} is not allowed to send mail for {}{explanation}",
                            spf.ip, spf.domain
                        ),
                    ))
                }
                SpfResult::TempError if defer => Action::Refuse(Reply::new(
                    451,
                    (4, 7, 24),
                    format!("Temporary DNS error checking the SPF record of {}, try again later", spf.domain),
                )),
                _ => Action::Accept,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use results::SpfIdentity;

    fn checker(config: AuthChecks) -> Checker {
        let nameservers = vec!["127.0.0.1:9".parse().unwrap()];
        let dns = Dns::new(&crate::config::Dns { nameservers, ..Default::default() }).unwrap();
        Checker::new("mx.test", &config, &dns)
    }

    fn spf(result: SpfResult) -> SpfCheck {
        SpfCheck {
            result,
            explanation: None,
            identity: SpfIdentity::MailFrom("a@a.test".into()),
            domain: "a.test".into(),
            ip: "192.0.2.1".parse().unwrap(),
            helo: "client.test".into(),
        }
    }

    fn dmarc(outcome: Outcome, policy: Option<Policy>) -> dmarc::Verdict {
        dmarc::Verdict { outcome, domain: "a.test".into(), policy, published: None }
    }

    impl Checker {
        fn decide_for(&self, spf: &SpfCheck, dmarc: &dmarc::Verdict) -> Action {
            self.decide(spf, dmarc, false)
        }
    }

    fn code(action: Action) -> Option<(u16, String)> {
        match action {
            Action::Refuse(r) => Some((r.code, r.to_string().split_whitespace().nth(1).unwrap_or("").to_string())),
            _ => None,
        }
    }

    #[tokio::test]
    async fn the_domain_owner_decides_then_spf() {
        let c = checker(AuthChecks::default());
        let reject = Some(Policy::Reject);
        let fail = |p| c.decide_for(&spf(SpfResult::Fail), &dmarc(Outcome::Fail, p));
        assert_eq!(code(fail(reject)), Some((550, "5.7.1".into())));
        assert_eq!(fail(Some(Policy::Quarantine)), Action::Quarantine);
        assert_eq!(fail(Some(Policy::None)), Action::Accept);
        // A passing DMARC check outweighs an SPF failure (a forwarded, signed message).
        assert_eq!(c.decide_for(&spf(SpfResult::Fail), &dmarc(Outcome::Pass, reject)), Action::Accept);
        // So does a passing ARC chain sealed by a trusted forwarder (RFC 8617 §7.2.1).
        assert_eq!(c.decide(&spf(SpfResult::Fail), &dmarc(Outcome::Fail, reject), true), Action::Accept);
        // No policy: SPF fail is refused, temporary errors deferred, the rest accepted.
        let none = dmarc(Outcome::None, None);
        assert_eq!(code(c.decide_for(&spf(SpfResult::Fail), &none)), Some((550, "5.7.23".into())));
        assert_eq!(code(c.decide_for(&spf(SpfResult::TempError), &none)), Some((451, "4.7.24".into())));
        for r in [SpfResult::SoftFail, SpfResult::Neutral, SpfResult::None, SpfResult::PermError, SpfResult::Pass] {
            assert_eq!(c.decide_for(&spf(r), &none), Action::Accept, "{r:?}");
        }
        assert_eq!(
            code(c.decide_for(&spf(SpfResult::Pass), &dmarc(Outcome::TempError, None))),
            Some((451, "4.7.1".into()))
        );
        // With a policy found, the text names the lookup that failed.
        let text = |spf_result| match c.decide_for(&spf(spf_result), &dmarc(Outcome::TempError, reject)) {
            Action::Refuse(r) => r.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(text(SpfResult::TempError).contains("4.7.24") && text(SpfResult::TempError).contains("SPF record"));
        assert!(text(SpfResult::Fail).contains("4.7.1") && text(SpfResult::Fail).contains("DKIM key"));
        assert!(!text(SpfResult::Fail).contains("DMARC policy"));
    }

    #[tokio::test]
    async fn the_operator_can_soften_every_refusal() {
        let c = checker(AuthChecks {
            enforce_dmarc: false,
            spf_fail: FailAction::Accept,
            temp_error: TempErrorAction::Accept,
            ..AuthChecks::default()
        });
        let none = dmarc(Outcome::None, None);
        assert_eq!(c.decide_for(&spf(SpfResult::Fail), &dmarc(Outcome::Fail, Some(Policy::Reject))), Action::Accept);
        assert_eq!(c.decide_for(&spf(SpfResult::Fail), &none), Action::Accept);
        assert_eq!(c.decide_for(&spf(SpfResult::TempError), &none), Action::Accept);
        assert_eq!(c.decide_for(&spf(SpfResult::Pass), &dmarc(Outcome::TempError, None)), Action::Accept);
    }
}
