//! `tern dns check DOMAIN`: the MX, SPF, DKIM and DMARC records a domain Tern serves
//! should publish, its MTA-STS, TLS-RPT and TLSA records, the reverse DNS of the
//! server's addresses, next to what DNS returns now (asked through `[dns]`); then
//! what the big mailbox providers ask of bulk senders.

use super::dkim::{dkim_zone_line, txt_value};
use crate::config::{Config, DkimKey};
use crate::dns::{Dns, DnsError, Mx};
use crate::policy::auth::results::spf_word;
use crate::policy::dkim::key::KeyFile;
use crate::policy::spf::{self, Mechanism, Record, is_spf};
use crate::smtp::address::canonical_domain;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_auth::SpfResult;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::{Dmarc, Policy};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;

/// Record text longer than this is cut in the table.
const SHOWN_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Ok,
    Missing,
    Wrong,
    Error,
    /// Worth publishing, but optional: does not fail the check.
    Warn,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::Wrong => "wrong",
            Status::Error => "error",
            Status::Warn => "warn",
        }
    }
}

/// One record: what DNS holds now and, when that is not right, what to publish.
pub(super) struct Row {
    pub(super) kind: &'static str,
    pub(super) name: String,
    pub(super) status: Status,
    /// The record as DNS returns it now (shortened).
    found: Option<String>,
    /// Why the status is not ok.
    reason: Option<String>,
    /// Lines below the row: `(label, text)`.
    notes: Vec<(&'static str, String)>,
}

impl Row {
    pub(super) fn new(kind: &'static str, name: String, status: Status) -> Row {
        Row { kind, name, status, found: None, reason: None, notes: Vec::new() }
    }

    pub(super) fn found(mut self, text: &str) -> Row {
        self.found = Some(shorten(text));
        self
    }

    pub(super) fn reason(mut self, text: impl Into<String>) -> Row {
        self.reason = Some(text.into());
        self
    }

    pub(super) fn note(mut self, label: &'static str, text: impl Into<String>) -> Row {
        self.notes.push((label, text.into()));
        self
    }

    /// Turns an ok row wrong, with the reason and the record to publish instead.
    fn wrong(mut self, reason: impl Into<String>, publish: &str) -> Row {
        self.status = Status::Wrong;
        self.reason(reason).note("publish:", publish)
    }
}

/// `addresses`: the server's outbound addresses to check (PTR, forward-confirmed
/// reverse DNS, SPF); when empty, those of its host name.
pub fn check(config: &Config, domain: &str, addresses: &[IpAddr]) -> ExitCode {
    let Some(domain) = canonical_domain(domain) else {
        eprintln!("tern: {domain:?} is not a domain name");
        return ExitCode::from(2);
    };
    let same = |d: &str| canonical_domain(d).as_deref() == Some(domain.as_str());
    let keys: Vec<&DkimKey> = config.dkim.iter().filter(|k| same(&k.domain)).collect();
    if keys.is_empty() && !config.local.domains.iter().any(|d| same(d)) {
        eprintln!("tern: {domain} is not a domain Tern serves: it is not in [local] domains and has no [[dkim]] key");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows = runtime.block_on(async {
        let dns = Dns::new(&config.dns)?;
        let hostname = canonical_domain(&config.hostname)
            .unwrap_or_else(|| config.hostname.trim_end_matches('.').to_ascii_lowercase());
        let (mut outbound, mut a_row) = outbound_addresses(&dns, &hostname).await;
        if addresses.is_empty() {
            a_row = a_row.note("note:", "outbound addresses taken to be these; check others with --address IP");
        } else {
            outbound = addresses.to_vec();
        }
        let mx_hosts = super::dns_tls::mx_hosts(&dns, &domain).await;
        let (mx, spf, dkim, dmarc, helo_spf) = tokio::join!(
            mx_row(&dns, &domain, &hostname),
            spf_row(&dns, Identity::MailFrom(&domain), &hostname, &outbound),
            async {
                let mut rows = Vec::new();
                for key in &keys {
                    rows.push(dkim_row(&dns, &domain, key).await);
                }
                rows
            },
            dmarc_row(&dns, &domain),
            spf_row(&dns, Identity::Helo, &hostname, &outbound),
        );
        let mut rows = vec![mx, spf];
        if dkim.is_empty() {
            rows.push(
                Row::new("DKIM", format!("_domainkey.{domain}."), Status::Missing)
                    .reason(format!("no [[dkim]] key for {domain} in the configuration"))
                    .note("run:", format!("tern dkim keygen {domain}")),
            );
        }
        rows.extend(dkim);
        rows.push(dmarc);
        rows.push(super::dns_tls::mta_sts_row(config, &dns, &domain, &mx_hosts).await);
        rows.push(super::dns_tls::tlsrpt_row(&dns, &domain).await);
        rows.extend(super::dns_tls::tlsa_rows(&dns, &mx_hosts).await);
        // What receivers check of the server itself: its name, the SPF record of the
        // HELO name (bounces are sent from <>), and reverse DNS.
        rows.push(a_row);
        rows.push(helo_spf);
        for ip in &outbound {
            rows.push(ptr_row(&dns, *ip, &hostname).await);
        }
        Ok::<_, String>(rows)
    });
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tern: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bulk = super::dns_bulk::lines(config, &domain, &rows);
    print!("{}", table(&rows));
    // With [mta_sts], the records that announce the published policy.
    for (name, value) in crate::tls_policy::publish::records(config, &domain) {
        println!("publish: {name}. TXT \"{value}\"");
    }
    print!("\n{}", super::dns_bulk::render(&bulk));
    let rows_ok = rows.iter().all(|r| matches!(r.status, Status::Ok | Status::Warn));
    if rows_ok && super::dns_bulk::passed(&bulk) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The rows as an aligned table, one block per record.
fn table(rows: &[Row]) -> String {
    const STATUS: usize = 9;
    let kind_width = rows.iter().map(|r| r.kind.len()).max().unwrap_or(0).max(5) + 2;
    let name_width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for row in rows {
        let detail = [row.found.clone(), row.reason.as_ref().map(|r| format!("({r})"))]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let line = format!("{:kind_width$}{:name_width$}{:STATUS$}{detail}", row.kind, row.name, row.status.label());
        let _ = writeln!(out, "{}", line.trim_end());
        for (label, text) in &row.notes {
            let _ = writeln!(out, "{:kind_width$}{label:10}{text}", "");
        }
    }
    out
}

/// TXT records of `name`; a name that does not exist has none.
async fn txt(dns: &Dns, name: &str) -> Result<Vec<String>, String> {
    match dns.txt(name).await {
        Ok(records) => Ok(records),
        Err(DnsError::NoSuchDomain | DnsError::NoRecords) => Ok(Vec::new()),
        Err(DnsError::Temporary(e)) => Err(e),
    }
}

async fn mx_row(dns: &Dns, domain: &str, hostname: &str) -> Row {
    let name = format!("{domain}.");
    let publish = format!("{domain}. IN MX 10 {hostname}.");
    match dns.mx(domain).await {
        Ok(Mx::Hosts(mut hosts)) => {
            hosts.sort();
            let shown = hosts.iter().map(|(pref, host)| format!("{pref} {host}.")).collect::<Vec<_>>().join(", ");
            if hosts.iter().any(|(_, host)| host == hostname) {
                Row::new("MX", name, Status::Ok).found(&shown)
            } else {
                Row::new("MX", name, Status::Wrong)
                    .found(&shown)
                    .reason(format!("none is {hostname}"))
                    .note("expected:", format!("an MX pointing at {hostname}."))
                    .note("publish:", publish)
            }
        }
        Ok(Mx::Null) => Row::new("MX", name, Status::Wrong)
            .found("0 .")
            .reason("null MX: the domain takes no mail")
            .note("expected:", format!("an MX pointing at {hostname}."))
            .note("publish:", publish),
        Ok(Mx::None) | Err(DnsError::NoSuchDomain | DnsError::NoRecords) => {
            Row::new("MX", name, Status::Missing).note("publish:", publish)
        }
        Err(DnsError::Temporary(e)) => Row::new("MX", name, Status::Error).reason(format!("no answer: {e}")),
    }
}

/// Whose SPF record a row is about.
#[derive(Clone, Copy)]
enum Identity<'a> {
    /// The domain of the envelope senders (RFC 7208 §2.4).
    MailFrom(&'a str),
    /// The HELO name, checked for mail from `<>` (§2.3).
    Helo,
}

/// The addresses Tern sends from, taken to be those of its host name; with the row
/// that shows them.
async fn outbound_addresses(dns: &Dns, hostname: &str) -> (Vec<IpAddr>, Row) {
    let name = format!("{hostname}.");
    match dns.addresses(hostname).await {
        Ok(ips) => {
            let shown = ips.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ");
            (ips, Row::new("A", name, Status::Ok).found(&shown))
        }
        Err(DnsError::Temporary(e)) => {
            (Vec::new(), Row::new("A", name, Status::Error).reason(format!("no answer: {e}")))
        }
        Err(_) => (
            Vec::new(),
            Row::new("A", name.clone(), Status::Missing)
                .reason("the host name has no address, so the checks of the server's addresses are skipped")
                .note("publish:", format!("{name} IN A <this server's address>")),
        ),
    }
}

async fn spf_row(dns: &Dns, identity: Identity<'_>, hostname: &str, outbound: &[IpAddr]) -> Row {
    let (domain, wanted) = match identity {
        Identity::MailFrom(domain) => (domain, "v=spf1 mx -all"),
        Identity::Helo => (hostname, "v=spf1 a -all"),
    };
    let name = format!("{domain}.");
    let publish = format!("{domain}. IN TXT {}", txt_value(wanted));
    let records = match txt(dns, domain).await {
        Ok(r) => r,
        Err(e) => return Row::new("SPF", name, Status::Error).reason(format!("no answer: {e}")),
    };
    let spf: Vec<&String> = records.iter().filter(|r| is_spf(r)).collect();
    let row = match spf.as_slice() {
        [] => Row::new("SPF", name, Status::Missing).note("publish:", publish.clone()),
        // What receivers would call a permanent error (RFC 7208 §4.6).
        [one] => match Record::parse(one) {
            Err(e) => Row::new("SPF", name, Status::Wrong)
                .found(one)
                .reason(format!("does not parse: {e}"))
                .note("publish:", publish.clone()),
            Ok(parsed) => {
                // Evaluation stops at the first `all` (RFC 7208 §5.1).
                let all = parsed.directives.iter().find(|d| d.mechanism == Mechanism::All);
                match all.map(|d| d.qualifier) {
                    Some(q @ (SpfResult::Pass | SpfResult::Neutral)) => Row::new("SPF", name, Status::Wrong)
                        .found(one)
                        .reason(format!(
                            "{}all lets any host send as {domain}",
                            if q == SpfResult::Pass { "+" } else { "?" }
                        ))
                        .note("publish:", publish.clone()),
                    _ => Row::new("SPF", name, Status::Ok).found(one),
                }
            }
        },
        several => several
            .iter()
            .fold(
                Row::new("SPF", name, Status::Wrong)
                    .reason(format!("{} v=spf1 records; there must be one", several.len())),
                |row, r| row.note("found:", shorten(r)),
            )
            .note("publish:", publish.clone()),
    };
    if row.status != Status::Ok {
        return row;
    }
    // Evaluated as receivers do, includes and redirects followed: a stranger must not
    // pass, and this server's addresses must.
    let verdict = |ip: IpAddr| async move {
        let sender = format!("postmaster@{domain}");
        spf::check_host(dns, ip, domain, &sender, hostname, hostname).await.result
    };
    // A documentation address (RFC 5737) stands for any host on the Internet.
    let stranger = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    if verdict(stranger).await == SpfResult::Pass {
        return row.wrong(format!("lets any host send as {domain}: {stranger} passes"), &publish);
    }
    for &ip in outbound {
        let result = verdict(ip).await;
        if result != SpfResult::Pass {
            let why = format!("does not authorize {ip}, this server's address ({})", spf_word(result));
            return row.wrong(why, &publish);
        }
    }
    row
}

/// The name a PTR record for `ip` is published at (RFC 1035 §3.5, RFC 3596 §2.5).
fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa.")
        }
        IpAddr::V6(v6) => {
            let hex: String = v6.octets().iter().map(|o| format!("{o:02x}")).collect();
            let nibbles: Vec<String> = hex.chars().rev().map(String::from).collect();
            format!("{}.ip6.arpa.", nibbles.join("."))
        }
    }
}

/// Reverse DNS of one of the server's addresses: it must name the host, whose
/// addresses include it (forward-confirmed, as many receivers require).
async fn ptr_row(dns: &Dns, ip: IpAddr, hostname: &str) -> Row {
    let name = reverse_name(ip);
    let ask = format!("{name} IN PTR {hostname}.");
    match dns.ptr(ip).await {
        // Forward-confirmed: the name the PTR gives resolves back to the address.
        Ok(names) if names.iter().any(|n| n == hostname) => match dns.addresses(hostname).await {
            Ok(ips) if ips.contains(&ip) => Row::new("PTR", name, Status::Ok).found(&format!("{hostname}.")),
            Err(DnsError::Temporary(e)) => Row::new("PTR", name, Status::Error).reason(format!("no answer: {e}")),
            _ => Row::new("PTR", name, Status::Wrong)
                .found(&format!("{hostname}."))
                .reason(format!("not forward-confirmed: {hostname} does not resolve to {ip}"))
                .note("publish:", format!("{hostname}. IN {} {ip}", if ip.is_ipv4() { "A" } else { "AAAA" })),
        },
        Ok(names) if !names.is_empty() => Row::new("PTR", name, Status::Wrong)
            .found(&names.iter().map(|n| format!("{n}.")).collect::<Vec<_>>().join(", "))
            .reason(format!("does not name {hostname}"))
            .note("ask for:", format!("{ask}  (from whoever runs {ip}: the hosting provider)")),
        Err(DnsError::Temporary(e)) => Row::new("PTR", name, Status::Error).reason(format!("no answer: {e}")),
        _ => Row::new("PTR", name, Status::Missing)
            .note("ask for:", format!("{ask}  (from whoever runs {ip}: the hosting provider)")),
    }
}

/// The tags of a DKIM key record (RFC 6376 §3.6.1), names lower-cased.
fn dkim_tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

async fn dkim_row(dns: &Dns, domain: &str, key: &DkimKey) -> Row {
    let selector = canonical_domain(&key.selector).unwrap_or_else(|| key.selector.clone());
    let name = format!("{selector}._domainkey.{domain}.");
    let path = key.key.display();
    let read = std::fs::read(&key.key)
        .map_err(|e| e.to_string())
        .and_then(|pem| KeyFile::parse_pem(&pem, key.algorithm))
        .and_then(|k| Ok((k.dns_record()?, STANDARD.encode(k.public_key()?))));
    let (record, public) = match read {
        Ok(r) => r,
        Err(e) => return Row::new("DKIM", name, Status::Error).reason(format!("cannot read the key {path}: {e}")),
    };
    let publish = dkim_zone_line(&name, &record);
    let found = match txt(dns, &name).await {
        Ok(r) => r,
        Err(e) => return Row::new("DKIM", name, Status::Error).reason(format!("no answer: {e}")),
    };
    let wrong = |text: &str, reason: String| {
        Row::new("DKIM", name.clone(), Status::Wrong).found(text).reason(reason).note("publish:", publish.clone())
    };
    let text = match found.as_slice() {
        [] => return Row::new("DKIM", name.clone(), Status::Missing).note("publish:", publish.clone()),
        [one] => one,
        several => {
            return several
                .iter()
                .fold(
                    Row::new("DKIM", name.clone(), Status::Wrong)
                        .reason(format!("{} TXT records; there must be one", several.len())),
                    |row, r| row.note("found:", shorten(r)),
                )
                .note("publish:", publish.clone());
        }
    };
    let tags = dkim_tags(text);
    let tag = |t: &str| tags.iter().find(|(k, _)| k == t).map(|(_, v)| v.as_str());
    let published: String = match tag("p") {
        None => return wrong(text, "no p= tag".into()),
        Some(p) => p.chars().filter(|c| !c.is_ascii_whitespace()).collect(),
    };
    if published.is_empty() {
        return wrong(text, "the key is revoked: p= is empty".into());
    }
    if published != public {
        return wrong(text, format!("public key differs from {path}"));
    }
    let kind = tag("k").unwrap_or("rsa").to_ascii_lowercase();
    let want = key.algorithm.name().trim_end_matches("-sha256");
    if kind != want {
        return wrong(text, format!("k={kind}, but {path} is an {want} key"));
    }
    if let Err(e) = DomainKey::parse(text.as_bytes()) {
        return wrong(text, format!("does not parse: {e}"));
    }
    // RFC 6376 §3.6.1: in testing mode verifiers treat signatures as unsigned mail.
    if tag("t").is_some_and(|t| t.split(':').any(|f| f.trim().eq_ignore_ascii_case("y"))) {
        return wrong(text, "t=y: the domain is testing DKIM, so receivers ignore the signatures".into());
    }
    Row::new("DKIM", name.clone(), Status::Ok).found(text)
}

/// `v=DMARC1` first (RFC 7489 §6.6.3), spaces around `=` allowed.
fn is_dmarc(text: &str) -> bool {
    let start: String = text.chars().filter(|c| !c.is_ascii_whitespace()).take(8).collect();
    start.eq_ignore_ascii_case("v=DMARC1")
}

/// RFC 7489 §6.4: `DMARC1` is case-sensitive (`%x44 %x4d …` in the grammar), while
/// the tag name and the spaces around `=` are free.
fn exact_dmarc_version(text: &str) -> bool {
    let start: String = text.chars().filter(|c| !c.is_ascii_whitespace()).take(8).collect();
    start.len() == 8 && start[..2].eq_ignore_ascii_case("v=") && &start[2..] == "DMARC1"
}

async fn dmarc_row(dns: &Dns, domain: &str) -> Row {
    let name = format!("_dmarc.{domain}.");
    let publish =
        format!("{name} IN TXT {}", txt_value(&format!("v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}")));
    let records = match txt(dns, &name).await {
        Ok(r) => r,
        Err(e) => return Row::new("DMARC", name, Status::Error).reason(format!("no answer: {e}")),
    };
    let dmarc: Vec<&String> = records.iter().filter(|r| is_dmarc(r)).collect();
    match dmarc.as_slice() {
        [] => Row::new("DMARC", name, Status::Missing).note("publish:", publish),
        [one] => match Dmarc::parse(one.as_bytes()) {
            // RFC 7489 §6.3: p= is required.
            Ok(d) if d.p == Policy::Unspecified => {
                Row::new("DMARC", name, Status::Wrong).found(one).reason("no p= tag").note("publish:", publish)
            }
            // §6.4: the version must be exactly "DMARC1"; receivers ignore the record otherwise.
            Ok(_) if !exact_dmarc_version(one) => Row::new("DMARC", name, Status::Wrong)
                .found(one)
                .reason("the version must be written v=DMARC1 exactly; receivers ignore this record")
                .note("publish:", publish),
            Ok(_) => Row::new("DMARC", name, Status::Ok).found(one),
            Err(e) => Row::new("DMARC", name, Status::Wrong)
                .found(one)
                .reason(format!("does not parse: {e}"))
                .note("publish:", publish),
        },
        several => several
            .iter()
            .fold(
                Row::new("DMARC", name, Status::Wrong)
                    .reason(format!("{} v=DMARC1 records; there must be one", several.len())),
                |row, r| row.note("found:", shorten(r)),
            )
            .note("publish:", publish),
    }
}

/// Record text cut to a width that fits a terminal line.
fn shorten(text: &str) -> String {
    if text.chars().count() <= SHOWN_MAX {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(SHOWN_MAX - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_kinds_are_recognized() {
        assert!(is_dmarc("v=DMARC1; p=none"));
        assert!(is_dmarc("v = DMARC1;p=none"));
        assert!(!is_dmarc("v=spf1 -all"));
        assert!(exact_dmarc_version("V = DMARC1; p=none"));
        assert!(!exact_dmarc_version("v=dmarc1; p=none"));
        assert_eq!(reverse_name("192.0.2.7".parse().unwrap()), "7.2.0.192.in-addr.arpa.");
        assert_eq!(
            reverse_name("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
        );
        let tags = dkim_tags("v=DKIM1; k=ed25519; p=ab cd\t ef");
        assert_eq!(tags[2], ("p".to_string(), "ab cd\t ef".to_string()));
    }

    #[test]
    fn table_aligns_columns() {
        let rows = [
            Row::new("MX", "example.test.".into(), Status::Ok).found("10 mx.example.test."),
            Row::new("DMARC", "_dmarc.example.test.".into(), Status::Missing).note("publish:", "x"),
        ];
        assert_eq!(
            table(&rows),
            "MX     example.test.         ok       10 mx.example.test.\n\
             DMARC  _dmarc.example.test.  missing\n       publish:  x\n"
        );
    }
}
