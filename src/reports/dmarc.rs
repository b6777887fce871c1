//! DMARC aggregate reports (RFC 7489 §7.2, appendix C): the DMARC results of the mail
//! Tern received, per author domain whose record asks for reports (`rua=mailto:`),
//! counted by source IP, disposition, results and identifiers.

use super::book::Merge;
use crate::dns::{Dns, DnsError};
use mail_auth::dmarc::Dmarc;
use mail_auth::report::{PolicyPublished, Record, Report};
use serde::{Deserialize, Serialize};

/// Distinct rows kept per domain and day; further messages are not counted.
const MAX_ROWS: usize = 10_000;

/// One `rua` address and the report size it takes (`!10m`; 0: any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rua {
    pub address: String,
    pub max_size: usize,
}

/// What one domain's mail gave on one day.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DomainDmarc {
    /// The record as last seen.
    pub policy: PolicyPublished,
    pub rua: Vec<Rua>,
    /// Each distinct row (its count left at 0) and how many messages it stands for.
    pub rows: Vec<(Record, u64)>,
}

impl DomainDmarc {
    /// Counts one message of `domain`, evaluated under `record`, as `row` says.
    pub fn add(&mut self, domain: &str, record: &Dmarc, mut row: Record) {
        self.policy = PolicyPublished::from_record(domain, record);
        self.rua = record.rua.iter().map(|u| Rua { address: u.uri().to_string(), max_size: u.max_size() }).collect();
        row = row.with_count(0);
        match self.rows.iter().position(|(r, _)| *r == row) {
            Some(i) => self.rows[i].1 += 1,
            None if self.rows.len() < MAX_ROWS => self.rows.push((row, 1)),
            None => {}
        }
    }

    pub fn messages(&self) -> u64 {
        self.rows.iter().map(|(_, n)| n).sum()
    }

    /// One line per row, for `tern reports show`.
    pub fn describe(&self) -> Vec<String> {
        self.rows
            .iter()
            .map(|(r, n)| {
                let ip = r.source_ip().map_or("-".to_string(), |ip| ip.to_string());
                let e = &r.row.policy_evaluated;
                format!(
                    "{ip}: {n} message(s), disposition {:?}, dkim {:?}, spf {:?}, header-from {}, envelope-from {}",
                    e.disposition,
                    e.dkim,
                    e.spf,
                    r.header_from(),
                    r.envelope_from()
                )
                .to_lowercase()
            })
            .collect()
    }
}

impl Merge for DomainDmarc {
    fn merge(&mut self, other: DomainDmarc) {
        if self.rua.is_empty() {
            (self.policy, self.rua) = (other.policy, other.rua);
        }
        for (row, n) in other.rows {
            match self.rows.iter_mut().find(|(r, _)| *r == row) {
                Some((_, m)) => *m += n,
                None => self.rows.push((row, n)),
            }
        }
    }
}

/// What a report says beside the rows.
pub struct Header<'a> {
    pub org_name: &'a str,
    pub email: &'a str,
    pub report_id: &'a str,
    pub begin: u64,
    pub end: u64,
}

/// The XML report (RFC 7489 appendix C), built by mail-auth.
pub fn report_xml(domain: &DomainDmarc, header: &Header<'_>) -> String {
    let mut report = Report::new()
        .with_version(1.0)
        .with_org_name(header.org_name)
        .with_email(header.email)
        .with_report_id(header.report_id)
        .with_date_range_begin(header.begin)
        .with_date_range_end(header.end)
        .with_policy_published(domain.policy.clone());
    for (row, n) in &domain.rows {
        report.add_record(row.clone().with_count(u32::try_from(*n).unwrap_or(u32::MAX)));
    }
    report.to_xml()
}

/// Whether reports about `domain` may go to an address at `rua_domain` (RFC 7489
/// §7.1): yes within the same organizational domain; otherwise only when
/// `<domain>._report._dmarc.<rua_domain>` has a `v=DMARC1` TXT record.
pub async fn destination_allowed(dns: &Dns, domain: &str, rua_domain: &str) -> Result<bool, String> {
    use crate::policy::auth::dmarc::organizational_domain;
    let (d, r) = (domain.to_ascii_lowercase(), rua_domain.to_ascii_lowercase());
    if organizational_domain(&d) == organizational_domain(&r) {
        return Ok(true);
    }
    match dns.txt(&format!("{d}._report._dmarc.{r}")).await {
        Ok(records) => Ok(records.iter().any(|t| {
            t.split(';')
                .next()
                .and_then(|v| v.split_once('='))
                .is_some_and(|(n, v)| n.trim() == "v" && v.trim() == "DMARC1")
        })),
        Err(DnsError::NoSuchDomain | DnsError::NoRecords) => Ok(false),
        Err(DnsError::Temporary(e)) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::report::{ActionDisposition, DKIMAuthResult, DkimResult, DmarcResult, SPFAuthResult};
    use mail_auth::report::{SPFDomainScope, SpfResult};

    fn row(ip: &str, spf: SpfResult) -> Record {
        let mut r = Record::new()
            .with_source_ip(ip.parse().unwrap())
            .with_action_disposition(ActionDisposition::None)
            .with_dmarc_dkim_result(DmarcResult::Pass)
            .with_dmarc_spf_result(if spf == SpfResult::Pass { DmarcResult::Pass } else { DmarcResult::Fail })
            .with_header_from("a.test")
            .with_envelope_from("a.test");
        r = r.with_dkim_auth_result(DKIMAuthResult {
            domain: "a.test".into(),
            selector: "s1".into(),
            result: DkimResult::Pass,
            human_result: None,
        });
        r.with_spf_auth_result(SPFAuthResult {
            domain: "a.test".into(),
            scope: SPFDomainScope::MailFrom,
            result: spf,
            human_result: None,
        })
    }

    fn record() -> Dmarc {
        Dmarc::parse(b"v=DMARC1; p=none; rua=mailto:d@r.test!10m").unwrap()
    }

    #[test]
    fn messages_are_counted_per_row() {
        let mut d = DomainDmarc::default();
        d.add("a.test", &record(), row("192.0.2.1", SpfResult::Pass));
        d.add("a.test", &record(), row("192.0.2.1", SpfResult::Pass));
        d.add("a.test", &record(), row("192.0.2.2", SpfResult::Fail));
        assert_eq!(d.rows.len(), 2);
        assert_eq!((d.rows[0].1, d.rows[1].1, d.messages()), (2, 1, 3));
        assert_eq!(d.rua, vec![Rua { address: "d@r.test".into(), max_size: 10 * 1024 * 1024 }]);
        let mut other = DomainDmarc::default();
        other.add("a.test", &record(), row("192.0.2.2", SpfResult::Fail));
        d.merge(other);
        assert_eq!(d.rows[1].1, 2);
    }

    #[test]
    fn the_report_is_aggregate_xml_that_reads_back() {
        let mut d = DomainDmarc::default();
        for _ in 0..3 {
            d.add("a.test", &record(), row("192.0.2.1", SpfResult::Pass));
        }
        d.add("a.test", &record(), row("192.0.2.9", SpfResult::SoftFail));
        let header =
            Header { org_name: "mx.example", email: "noreply-dmarc@mx.example", report_id: "r1", begin: 10, end: 20 };
        let xml = report_xml(&d, &header);
        assert!(xml.contains("<source_ip>192.0.2.1</source_ip>"), "{xml}");
        let parsed = Report::parse_xml(xml.as_bytes()).unwrap();
        assert_eq!(parsed.domain(), "a.test");
        assert_eq!(parsed.org_name(), "mx.example");
        assert_eq!((parsed.date_range_begin(), parsed.date_range_end()), (10, 20));
        let counts: Vec<(String, u32)> =
            parsed.records().iter().map(|r| (r.source_ip().unwrap().to_string(), r.count())).collect();
        assert_eq!(counts, vec![("192.0.2.1".into(), 3), ("192.0.2.9".into(), 1)]);
        assert_eq!(parsed.records()[1].spf_auth_result()[0].result(), SpfResult::SoftFail);
    }

    #[test]
    fn aggregates_survive_serialization() {
        let mut d = DomainDmarc::default();
        d.add("a.test", &record(), row("2001:db8::1", SpfResult::Pass));
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<DomainDmarc>(&text).unwrap(), d);
    }
}
