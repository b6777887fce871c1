//! The row a checked message adds to a DMARC aggregate report (RFC 7489 §7.2,
//! appendix C `record`), made with mail-auth's report types.

use super::dmarc::Published;
use super::results::SpfIdentity;
use super::{Action, SpfCheck};
use mail_auth::DkimOutput;
use mail_auth::report::{ActionDisposition, DmarcResult, Record, SPFAuthResult, SPFDomainScope, SpfResult};

fn spf_result(result: mail_auth::SpfResult) -> SpfResult {
    match result {
        mail_auth::SpfResult::Pass => SpfResult::Pass,
        mail_auth::SpfResult::Fail => SpfResult::Fail,
        mail_auth::SpfResult::SoftFail => SpfResult::SoftFail,
        mail_auth::SpfResult::Neutral => SpfResult::Neutral,
        mail_auth::SpfResult::TempError => SpfResult::TempError,
        mail_auth::SpfResult::PermError => SpfResult::PermError,
        mail_auth::SpfResult::None => SpfResult::None,
    }
}

fn dmarc_result(pass: bool) -> DmarcResult {
    if pass { DmarcResult::Pass } else { DmarcResult::Fail }
}

/// The row for a message whose From domain is `header_from`, or `None` for one refused for now (4xx): it will be
/// checked again when the client retries, and counted then.
pub fn row(
    spf: &SpfCheck,
    dkim: &[DkimOutput],
    header_from: &str,
    published: &Published,
    action: &Action,
) -> Option<Record> {
    // §7.2.1: the policy actually applied.
    let disposition = match action {
        Action::Accept => ActionDisposition::None,
        Action::Quarantine => ActionDisposition::Quarantine,
        Action::Refuse(reply) if reply.code >= 500 => ActionDisposition::Reject,
        Action::Refuse(_) => return None,
    };
    let (envelope_from, scope) = match &spf.identity {
        SpfIdentity::MailFrom(_) => (spf.domain.as_str(), SPFDomainScope::MailFrom),
        SpfIdentity::Helo(_) => ("", SPFDomainScope::Helo),
    };
    let mut row = Record::new()
        .with_source_ip(spf.ip)
        .with_action_disposition(disposition)
        .with_dmarc_dkim_result(dmarc_result(published.dkim_pass))
        .with_dmarc_spf_result(dmarc_result(published.spf_pass))
        .with_envelope_from(envelope_from)
        .with_header_from(header_from)
        .with_dkim_output(dkim);
    for d in &mut row.auth_results.dkim {
        // Error texts differ from message to message; the result is what counts.
        d.human_result = None;
    }
    Some(row.with_spf_auth_result(SPFAuthResult {
        domain: spf.domain.clone(),
        scope,
        result: spf_result(spf.result),
        human_result: None,
    }))
}
