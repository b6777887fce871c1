//! TLS-RPT (RFC 8460): what outbound TLS sessions to each recipient domain did, per
//! policy, and the JSON report made of it (§4). Remote delivery (MTA-STS, DANE and
//! opportunistic TLS) calls [`record`] once per session.

use mail_auth::report::tlsrpt as rpt;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The result types of RFC 8460 §4.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

impl ResultType {
    pub const ALL: [ResultType; 11] = [
        ResultType::StarttlsNotSupported,
        ResultType::CertificateHostMismatch,
        ResultType::CertificateExpired,
        ResultType::CertificateNotTrusted,
        ResultType::ValidationFailure,
        ResultType::TlsaInvalid,
        ResultType::DnssecInvalid,
        ResultType::DaneRequired,
        ResultType::StsPolicyFetchError,
        ResultType::StsPolicyInvalid,
        ResultType::StsWebpkiInvalid,
    ];

    /// The name the report uses (`starttls-not-supported`, …).
    pub fn name(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }

    fn to_rpt(self) -> rpt::ResultType {
        match self {
            ResultType::StarttlsNotSupported => rpt::ResultType::StartTlsNotSupported,
            ResultType::CertificateHostMismatch => rpt::ResultType::CertificateHostMismatch,
            ResultType::CertificateExpired => rpt::ResultType::CertificateExpired,
            ResultType::CertificateNotTrusted => rpt::ResultType::CertificateNotTrusted,
            ResultType::ValidationFailure => rpt::ResultType::ValidationFailure,
            ResultType::TlsaInvalid => rpt::ResultType::TlsaInvalid,
            ResultType::DnssecInvalid => rpt::ResultType::DnssecInvalid,
            ResultType::DaneRequired => rpt::ResultType::DaneRequired,
            ResultType::StsPolicyFetchError => rpt::ResultType::StsPolicyFetchError,
            ResultType::StsPolicyInvalid => rpt::ResultType::StsPolicyInvalid,
            ResultType::StsWebpkiInvalid => rpt::ResultType::StsWebpkiInvalid,
        }
    }

    /// The type of a certificate that did not verify (RFC 8460 §4.3.2).
    pub fn of_certificate_error(error: &rustls::Error) -> ResultType {
        use rustls::CertificateError as C;
        match error {
            rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                ResultType::CertificateHostMismatch
            }
            rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => ResultType::CertificateExpired,
            rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature | C::NotValidYet) => {
                ResultType::CertificateNotTrusted
            }
            _ => ResultType::ValidationFailure,
        }
    }
}

impl From<crate::tls_policy::dane::DaneFailure> for ResultType {
    fn from(failure: crate::tls_policy::dane::DaneFailure) -> ResultType {
        use crate::tls_policy::dane::DaneFailure as D;
        match failure {
            D::TlsaInvalid => ResultType::TlsaInvalid,
            D::DnssecInvalid => ResultType::DnssecInvalid,
            D::DaneRequired => ResultType::DaneRequired,
            D::CertificateHostMismatch => ResultType::CertificateHostMismatch,
            D::CertificateExpired => ResultType::CertificateExpired,
            D::ValidationFailure => ResultType::ValidationFailure,
            D::StarttlsNotSupported => ResultType::StarttlsNotSupported,
        }
    }
}

/// The policy a session was held to (RFC 8460 §4.4 `policy`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum PolicyRecord {
    /// MTA-STS: the policy file's lines and its `mx` patterns.
    Sts {
        policy_string: Vec<String>,
        mx_host: Vec<String>,
    },
    /// DANE: the TLSA records, and the MX host they are for.
    Tlsa {
        policy_string: Vec<String>,
        mx_host: Vec<String>,
    },
    NoPolicyFound,
}

impl PolicyRecord {
    fn details(&self, domain: &str) -> rpt::PolicyDetails {
        let (policy_type, strings, mx) = match self {
            PolicyRecord::Sts { policy_string, mx_host } => (rpt::PolicyType::Sts, policy_string, mx_host),
            PolicyRecord::Tlsa { policy_string, mx_host } => (rpt::PolicyType::Tlsa, policy_string, mx_host),
            PolicyRecord::NoPolicyFound => (rpt::PolicyType::NoPolicyFound, &Vec::new(), &Vec::new()),
        };
        rpt::PolicyDetails {
            policy_type,
            policy_string: strings.clone(),
            policy_domain: domain.to_string(),
            mx_host: mx.clone(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            PolicyRecord::Sts { .. } => "sts",
            PolicyRecord::Tlsa { .. } => "tlsa",
            PolicyRecord::NoPolicyFound => "no-policy-found",
        }
    }
}

/// Where and why a session failed (RFC 8460 §4.4 `failure-details`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Failure {
    pub result: ResultType,
    pub sending_mta_ip: Option<IpAddr>,
    pub receiving_mx_hostname: Option<String>,
    pub receiving_ip: Option<IpAddr>,
    /// A short text (`additional-information`), such as the error.
    pub additional_information: Option<String>,
}

impl Failure {
    /// A failure of `result` with no detail yet.
    pub fn new(result: ResultType) -> Failure {
        Failure {
            result,
            sending_mta_ip: None,
            receiving_mx_hostname: None,
            receiving_ip: None,
            additional_information: None,
        }
    }
}

/// How one session went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(Failure),
}

/// Records one session to `domain` under `policy` (a no-op unless `[reports] tls`).
pub fn record(domain: &str, policy: PolicyRecord, outcome: Outcome) {
    super::record_tls(domain, policy, outcome);
}

/// Distinct failure details kept per policy; further failures still count in the
/// summary.
const MAX_DETAILS: usize = 100;

/// The counts of one policy of one domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub success: u64,
    pub failure: u64,
    pub details: Vec<(Failure, u64)>,
}

/// Everything counted for one domain: one entry per policy seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainTls {
    pub policies: Vec<(PolicyRecord, Counts)>,
}

impl DomainTls {
    pub fn add(&mut self, policy: PolicyRecord, outcome: Outcome) {
        let i = match self.policies.iter().position(|(p, _)| *p == policy) {
            Some(i) => i,
            None => {
                self.policies.push((policy, Counts::default()));
                self.policies.len() - 1
            }
        };
        let counts = &mut self.policies[i].1;
        match outcome {
            Outcome::Success => counts.success += 1,
            Outcome::Failure(failure) => {
                counts.failure += 1;
                match counts.details.iter().position(|(f, _)| *f == failure) {
                    Some(i) => counts.details[i].1 += 1,
                    None if counts.details.len() < MAX_DETAILS => counts.details.push((failure, 1)),
                    None => {}
                }
            }
        }
    }

    /// Adds what `other` counted (aggregates of the same domain and day).
    pub fn merge(&mut self, other: DomainTls) {
        for (policy, counts) in other.policies {
            match self.policies.iter_mut().find(|(p, _)| *p == policy) {
                Some((_, mine)) => {
                    mine.success += counts.success;
                    mine.failure += counts.failure;
                    for (f, n) in counts.details {
                        match mine.details.iter_mut().find(|(g, _)| *g == f) {
                            Some((_, m)) => *m += n,
                            None => mine.details.push((f, n)),
                        }
                    }
                }
                None => self.policies.push((policy, counts)),
            }
        }
    }

    /// One line per policy, for `tern reports show`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (policy, counts) in &self.policies {
            lines.push(format!("{}: {} successful, {} failed", policy.kind(), counts.success, counts.failure));
            for (f, n) in &counts.details {
                let host = f.receiving_mx_hostname.as_deref().unwrap_or("-");
                let ip = f.receiving_ip.map_or("-".to_string(), |ip| ip.to_string());
                lines.push(format!("  {} {host} [{ip}]: {n}", f.result.name()));
            }
        }
        lines
    }
}

/// What a report says beside the counts.
pub struct Header<'a> {
    pub organization: &'a str,
    pub contact: &'a str,
    pub report_id: &'a str,
    /// Unix seconds: the start and end of the period.
    pub begin: i64,
    pub end: i64,
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The report (RFC 8460 §4.4) for `domain` as JSON, built with mail-auth's types.
/// Absent optional fields are left out rather than written as `null`.
pub fn report_json(domain: &str, counts: &DomainTls, header: &Header<'_>) -> String {
    let report = rpt::TlsReport {
        organization_name: Some(header.organization.to_string()),
        date_range: rpt::DateRange {
            start_datetime: mail_parser::DateTime::from_timestamp(header.begin),
            end_datetime: mail_parser::DateTime::from_timestamp(header.end),
        },
        contact_info: Some(header.contact.to_string()),
        report_id: header.report_id.to_string(),
        policies: counts
            .policies
            .iter()
            .map(|(policy, c)| rpt::Policy {
                policy: policy.details(domain),
                summary: rpt::Summary { total_success: saturate(c.success), total_failure: saturate(c.failure) },
                failure_details: c
                    .details
                    .iter()
                    .map(|(f, n)| rpt::FailureDetails {
                        result_type: f.result.to_rpt(),
                        sending_mta_ip: f.sending_mta_ip,
                        receiving_mx_hostname: f.receiving_mx_hostname.clone(),
                        receiving_mx_helo: None,
                        receiving_ip: f.receiving_ip,
                        failed_session_count: saturate(*n),
                        additional_information: f.additional_information.clone(),
                        failure_reason_code: None,
                    })
                    .collect(),
            })
            .collect(),
    };
    let mut value = serde_json::to_value(&report).expect("reports serialize");
    drop_nulls(&mut value);
    value.to_string()
}

fn drop_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// The `rua` addresses of a `_smtp._tls` TXT record set (RFC 8460 §3): the `mailto:`
/// ones, and the number of `https:` ones (not supported here). `None` when no record
/// starts with `v=TLSRPTv1`, or more than one does.
pub fn rua(records: &[String]) -> Option<(Vec<String>, usize)> {
    let ours: Vec<&String> = records.iter().filter(|r| r.trim_start().starts_with("v=TLSRPTv1")).collect();
    let [record] = ours.as_slice() else {
        return None;
    };
    let mut fields = record.split(';').map(str::trim);
    if fields.next() != Some("v=TLSRPTv1") {
        return None;
    }
    let value = fields.find_map(|f| f.strip_prefix("rua=").or_else(|| f.strip_prefix("rua ="))).map(str::trim)?;
    let (mut mailto, mut https) = (Vec::new(), 0);
    for uri in value.split(',').map(str::trim) {
        if let Some(address) = uri.strip_prefix("mailto:") {
            let address = percent_decode(address);
            if address.contains('@') {
                mailto.push(address);
            }
        } else if uri.starts_with("https:") {
            https += 1;
        }
    }
    Some((mailto, https))
}

/// `%XX` escapes of a URI (RFC 3986 §2.1).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts() -> PolicyRecord {
        PolicyRecord::Sts {
            policy_string: vec!["version: STSv1".into(), "mode: enforce".into(), "mx: mx.a.test".into()],
            mx_host: vec!["mx.a.test".into()],
        }
    }

    fn failure(result: ResultType, host: &str) -> Outcome {
        let mut f = Failure::new(result);
        f.receiving_mx_hostname = Some(host.into());
        f.receiving_ip = Some("192.0.2.1".parse().unwrap());
        Outcome::Failure(f)
    }

    #[test]
    fn sessions_are_counted_per_policy_and_failure() {
        let mut d = DomainTls::default();
        d.add(sts(), Outcome::Success);
        d.add(sts(), Outcome::Success);
        d.add(sts(), failure(ResultType::StarttlsNotSupported, "mx.a.test"));
        d.add(sts(), failure(ResultType::StarttlsNotSupported, "mx.a.test"));
        d.add(sts(), failure(ResultType::CertificateHostMismatch, "mx2.a.test"));
        d.add(PolicyRecord::NoPolicyFound, Outcome::Success);
        assert_eq!(d.policies.len(), 2);
        let c = &d.policies[0].1;
        assert_eq!((c.success, c.failure, c.details.len()), (2, 3, 2));
        assert_eq!(c.details[0].1, 2);
        let mut other = DomainTls::default();
        other.add(sts(), failure(ResultType::CertificateHostMismatch, "mx2.a.test"));
        d.merge(other);
        assert_eq!(d.policies[0].1.failure, 4);
        assert_eq!(d.policies[0].1.details[1].1, 2);
    }

    #[test]
    fn failure_details_are_bounded_but_still_counted() {
        let mut d = DomainTls::default();
        for i in 0..(MAX_DETAILS + 20) {
            d.add(PolicyRecord::NoPolicyFound, failure(ResultType::ValidationFailure, &format!("mx{i}.a.test")));
        }
        let c = &d.policies[0].1;
        assert_eq!((c.failure, c.details.len()), ((MAX_DETAILS + 20) as u64, MAX_DETAILS));
    }

    #[test]
    fn the_report_is_rfc8460_json_without_nulls() {
        let mut d = DomainTls::default();
        d.add(sts(), Outcome::Success);
        d.add(sts(), failure(ResultType::CertificateExpired, "mx.a.test"));
        let header = Header {
            organization: "mx.example",
            contact: "tls-reports@mx.example",
            report_id: "r1",
            begin: 1_700_000_000,
            end: 1_700_086_400,
        };
        let json = report_json("a.test", &d, &header);
        assert!(!json.contains("null"), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["organization-name"], "mx.example");
        assert_eq!(v["date-range"]["start-datetime"], "2023-11-14T22:13:20Z");
        let p = &v["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "sts");
        assert_eq!(p["policy"]["policy-domain"], "a.test");
        assert_eq!(p["policy"]["mx-host"][0], "mx.a.test");
        assert_eq!(p["summary"]["total-successful-session-count"], 1);
        assert_eq!(p["summary"]["total-failure-session-count"], 1);
        assert_eq!(p["failure-details"][0]["result-type"], "certificate-expired");
        assert_eq!(p["failure-details"][0]["receiving-ip"], "192.0.2.1");
        assert_eq!(p["failure-details"][0]["failed-session-count"], 1);
        // mail-auth reads it back.
        let parsed = rpt::TlsReport::parse_json(json.as_bytes()).unwrap();
        assert_eq!(parsed.policies[0].failure_details[0].result_type, rpt::ResultType::CertificateExpired);
    }

    #[test]
    fn report_addresses_come_from_the_one_tlsrpt_record() {
        let r = |s: &[&str]| rua(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(r(&["v=TLSRPTv1; rua=mailto:tls@a.test"]), Some((vec!["tls@a.test".into()], 0)));
        assert_eq!(
            r(&["v=spf1 -all", "v=TLSRPTv1;rua=mailto:a%40b@c.test,https://r.test/x"]),
            Some((vec!["a@b@c.test".into()], 1))
        );
        assert_eq!(r(&["v=TLSRPTv1; rua=mailto:a@a.test", "v=TLSRPTv1; rua=mailto:b@a.test"]), None);
        assert_eq!(r(&["v=spf1 -all"]), None);
        assert_eq!(r(&["v=TLSRPTv1"]), None);
    }

    #[test]
    fn every_rfc8460_result_type_has_its_name() {
        for t in ResultType::ALL {
            let json = serde_json::to_value(t).unwrap();
            assert_eq!(json, t.name());
            assert_eq!(serde_json::to_value(t.to_rpt()).unwrap(), t.name());
        }
    }
}
