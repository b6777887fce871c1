//! What each delivery attempt to a recipient domain's MX hosts tells TLS-RPT
//! (RFC 8460): one session per attempt that reached TLS negotiation, under the
//! MX host's DANE records, the domain's MTA-STS policy, or none.

use super::Hop;
use super::HostTls;
use crate::delivery::{Failure, Via};
use crate::reports::tls::{self, Outcome, PolicyRecord, ResultType};
use crate::tls_policy::dane::{DaneFailure, HostPolicy};
use crate::tls_policy::mta_sts::{Mode, Policy};
use std::net::SocketAddr;

/// The policy as a report names it: the lines of an MTA-STS policy file and its
/// `mx` patterns (RFC 8460 §4.4), or none.
pub fn policy_record(sts: Option<&Policy>) -> PolicyRecord {
    match sts {
        Some(p) => {
            let mx: Vec<String> = p.mx.iter().map(ToString::to_string).collect();
            let mut lines = vec!["version: STSv1".to_string(), format!("mode: {}", p.mode)];
            lines.extend(mx.iter().map(|m| format!("mx: {m}")));
            lines.push(format!("max_age: {}", p.max_age));
            PolicyRecord::Sts { policy_string: lines, mx_host: mx }
        }
        None => PolicyRecord::NoPolicyFound,
    }
}

/// DANE's policy for one MX host: its TLSA records (RFC 8460 §4.4).
fn tlsa_record(records: Vec<String>, hop: &Hop) -> PolicyRecord {
    PolicyRecord::Tlsa { policy_string: records, mx_host: vec![hop.host.trim_end_matches('.').to_ascii_lowercase()] }
}

/// An MX host left out because its TLSA lookup was bogus or indeterminate.
pub fn record_unusable(domain: &str, hop: &Hop) {
    let mut failure = tls::Failure::new(DaneFailure::DnssecInvalid.into());
    failure.receiving_mx_hostname = Some(hop.host.trim_end_matches('.').to_ascii_lowercase());
    tls::record(domain, tlsa_record(Vec::new(), hop), Outcome::Failure(failure));
}

/// Records the session of one attempt at `hop` (`addr`): `connected` is whether the
/// attempt got as far as a transaction. An attempt that failed before TLS (no
/// connection, a refused greeting) is no TLS session and is not counted. Where DANE
/// applies to the host, its records are the policy and its failures the results.
pub fn record(
    domain: &str,
    sts: Option<&Policy>,
    hop: &Hop,
    addr: SocketAddr,
    via: &Via,
    host_tls: &HostTls<'_>,
    connected: Result<(), &Failure>,
) {
    if let Some((policy, outcome)) = session(sts, hop, addr, via, host_tls, connected) {
        tls::record(domain, policy, outcome);
    }
}

/// The policy and result [`record`] counts, if the attempt was a TLS session.
fn session(
    sts: Option<&Policy>,
    hop: &Hop,
    addr: SocketAddr,
    via: &Via,
    host_tls: &HostTls<'_>,
    connected: Result<(), &Failure>,
) -> Option<(PolicyRecord, Outcome)> {
    let HostTls { dane, probe, .. } = host_tls;
    let check = dane.check();
    let result = match connected {
        Err(_) => match check.and_then(|c| c.failure()).map(ResultType::from).or(*probe.failure.lock().unwrap()) {
            Some(result) => Some(result),
            None => return None,
        },
        Ok(()) if via.tls == "none" => Some(ResultType::StarttlsNotSupported),
        // RFC 7672 §2.2: records exist but none is usable; the session was encrypted
        // without authentication.
        Ok(()) if matches!(dane, HostPolicy::Encrypt(_)) => Some(ResultType::TlsaInvalid),
        Ok(()) if via.tls_verified => None,
        // Opportunistic TLS (RFC 7435) takes any certificate; a policy in testing mode
        // reports what enforcing it would have failed on.
        Ok(()) if sts.is_some_and(|p| p.mode == Mode::Testing) => {
            Some(via.tls_problem.unwrap_or(ResultType::ValidationFailure))
        }
        Ok(()) => None,
    };
    let outcome = match result {
        None => Outcome::Success,
        Some(result) => {
            let mut failure = tls::Failure::new(result);
            // A reused connection was opened by an earlier attempt's probe.
            failure.sending_mta_ip = via.local_ip.or(*probe.local_ip.lock().unwrap());
            failure.receiving_mx_hostname = Some(hop.host.trim_end_matches('.').to_ascii_lowercase());
            failure.receiving_ip = Some(addr.ip());
            Outcome::Failure(failure)
        }
    };
    let policy = match check {
        Some(c) => tlsa_record(c.records.iter().map(ToString::to_string).collect(), hop),
        None => policy_record(sts),
    };
    Some((policy, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls_policy::mta_sts::MxPattern;

    fn dane_session(dane: &HostPolicy, via: &Via, connected: Result<(), &Failure>) -> (PolicyRecord, Outcome) {
        let hop = Hop { host: "MX.a.test.".into(), port: 25 };
        let host_tls = HostTls { sts_enforce: false, dane, probe: Default::default() };
        session(None, &hop, "192.0.2.1:25".parse().unwrap(), via, &host_tls, connected).expect("a session")
    }

    fn result_of(outcome: &Outcome) -> Option<ResultType> {
        match outcome {
            Outcome::Success => None,
            Outcome::Failure(f) => Some(f.result),
        }
    }

    #[test]
    fn a_dane_host_is_reported_under_its_tlsa_records() {
        let tlsa = crate::tls_policy::dane::Tlsa { usage: 3, selector: 1, matching: 1, data: vec![0xab; 32] };
        let verify = HostPolicy::from_records(vec![tlsa], vec!["mx.a.test".into()]);
        let mut via = Via::starting("none");
        (via.tls, via.tls_verified) = ("dane/TLSv1.3".into(), true);
        let (policy, outcome) = dane_session(&verify, &via, Ok(()));
        let PolicyRecord::Tlsa { policy_string, mx_host } = &policy else { panic!("{policy:?}") };
        assert_eq!(policy_string, &[format!("3 1 1 {}", "ab".repeat(32))]);
        assert_eq!(mx_host, &["mx.a.test"]);
        assert_eq!(result_of(&outcome), None);
        // A mismatch noted by the DANE check is the session's result.
        verify.check().unwrap().fail(DaneFailure::CertificateHostMismatch);
        let failed = Failure::temporary((4, 7, 5), "DANE");
        let (_, outcome) = dane_session(&verify, &Via::starting("none"), Err(&failed));
        assert_eq!(result_of(&outcome), Some(ResultType::CertificateHostMismatch));
        // Records without a usable one: encrypted, not authenticated (RFC 7672 §2.2).
        let pkix = crate::tls_policy::dane::Tlsa { usage: 1, selector: 1, matching: 1, data: vec![1; 32] };
        let encrypt = HostPolicy::from_records(vec![pkix], vec!["mx.a.test".into()]);
        via.tls_verified = false;
        let (_, outcome) = dane_session(&encrypt, &via, Ok(()));
        assert_eq!(result_of(&outcome), Some(ResultType::TlsaInvalid));
    }

    #[test]
    fn a_failure_on_a_reused_connection_names_the_sending_address() {
        // A reused connection was not opened by this attempt: its probe saw no address.
        let mut via = Via::starting("none");
        via.local_ip = Some("192.0.2.9".parse().unwrap());
        let (_, outcome) = dane_session(&HostPolicy::None, &via, Ok(()));
        let Outcome::Failure(failure) = outcome else { panic!("{outcome:?}") };
        assert_eq!(failure.result, ResultType::StarttlsNotSupported);
        assert_eq!(failure.sending_mta_ip, via.local_ip);
    }

    #[test]
    fn an_sts_policy_is_reported_as_its_lines() {
        let p = Policy {
            mode: Mode::Enforce,
            mx: vec![MxPattern::Exact("mx.a.test".into()), MxPattern::Wildcard("a.test".into())],
            max_age: 86400,
        };
        let PolicyRecord::Sts { policy_string, mx_host } = policy_record(Some(&p)) else { panic!() };
        assert_eq!(
            policy_string,
            ["version: STSv1", "mode: enforce", "mx: mx.a.test", "mx: *.a.test", "max_age: 86400"]
        );
        assert_eq!(mx_host, ["mx.a.test", "*.a.test"]);
        assert_eq!(policy_record(None), PolicyRecord::NoPolicyFound);
    }
}
