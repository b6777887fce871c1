//! The evaluator against an in-memory zone; the RFC 7208 test suite, the table
//! of cases and the comparison with pyspf run against a DNS server in `tests/`.

use super::*;
use mail_auth::SpfResult;
use std::collections::HashMap;

/// Records by name: `("A", "192.0.2.1")`, `("TXT", "v=spf1 …")`, `("MX", "mx.x.test")`,
/// `("PTR", "1.2.0.192.in-addr.arpa", "name")` is written as name `1.2.0.192.in-addr.arpa`.
/// `("TEMP", "")` makes every lookup of the name fail.
#[derive(Default)]
struct Zone(HashMap<String, Vec<(&'static str, String)>>);

impl Zone {
    fn with(mut self, name: &str, kind: &'static str, value: &str) -> Zone {
        self.0.entry(name.to_ascii_lowercase()).or_default().push((kind, value.to_string()));
        self
    }

    fn get(&self, name: &str, kind: &str) -> Result<Vec<String>, DnsError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let records = self.0.get(&name).ok_or(DnsError::NoSuchDomain)?;
        if records.iter().any(|(k, _)| *k == "TEMP") {
            return Err(DnsError::Temporary("timed out".into()));
        }
        Ok(records.iter().filter(|(k, _)| *k == kind).map(|(_, v)| v.clone()).collect())
    }
}

impl Resolve for Zone {
    async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        self.get(name, "TXT")
    }
    async fn addresses(&self, name: &str, v6: bool) -> Result<Vec<IpAddr>, DnsError> {
        Ok(self.get(name, if v6 { "AAAA" } else { "A" })?.iter().map(|a| a.parse().unwrap()).collect())
    }
    async fn mx(&self, name: &str) -> Result<Vec<String>, DnsError> {
        self.get(name, "MX")
    }
    async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        let name = match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                format!("{d}.{c}.{b}.{a}.in-addr.arpa")
            }
            IpAddr::V6(_) => format!("{}.ip6.arpa", macros::dotted(ip).split('.').rev().collect::<Vec<_>>().join(".")),
        };
        self.get(&name, "PTR")
    }
}

fn run(zone: &Zone, ip: &str, sender: &str) -> Verdict {
    let domain = sender.rsplit_once('@').unwrap().1;
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(check_host(zone, ip.parse().unwrap(), domain, sender, "helo.test", "mx.test"))
}

fn result(zone: &Zone, ip: &str, sender: &str) -> SpfResult {
    run(zone, ip, sender).result
}

#[test]
fn mechanisms_match() {
    let zone = Zone::default()
        .with("x.test", "TXT", "v=spf1 ip4:192.0.2.0/24 a:h.x.test mx ptr -all")
        .with("x.test", "MX", "mx.x.test")
        .with("mx.x.test", "A", "198.51.100.7")
        .with("h.x.test", "A", "203.0.113.9")
        .with("h.x.test", "AAAA", "2001:db8::9")
        .with("9.0.113.203.in-addr.arpa", "PTR", "h.x.test");
    assert_eq!(result(&zone, "192.0.2.200", "a@x.test"), SpfResult::Pass);
    assert_eq!(result(&zone, "203.0.113.9", "a@x.test"), SpfResult::Pass);
    assert_eq!(result(&zone, "198.51.100.7", "a@x.test"), SpfResult::Pass);
    assert_eq!(result(&zone, "198.51.100.8", "a@x.test"), SpfResult::Fail);
    assert_eq!(result(&zone, "2001:db8::9", "a@x.test"), SpfResult::Pass);
    assert_eq!(result(&zone, "::ffff:192.0.2.1", "a@x.test"), SpfResult::Pass);
}

#[test]
fn ip6_never_matches_ipv4_clients() {
    let zone = Zone::default().with("x.test", "TXT", "v=spf1 ip6:::/0 a//0 -all").with("x.test", "A", "192.0.2.1");
    assert_eq!(result(&zone, "198.51.100.1", "a@x.test"), SpfResult::Fail);
}

#[test]
fn include_redirect_and_explanation() {
    let zone = Zone::default()
        .with("x.test", "TXT", "v=spf1 include:i.x.test redirect=r.x.test exp=e.x.test")
        .with("i.x.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
        .with("r.x.test", "TXT", "v=spf1 ip4:192.0.2.2 -all exp=e2.x.test")
        .with("e2.x.test", "TXT", "%{i} may not send for %{d} (%{l})")
        .with("none.test", "TXT", "v=spf1 include:nothing.test")
        .with("temp.test", "TXT", "v=spf1 include:t.test")
        .with("t.test", "TEMP", "");
    assert_eq!(result(&zone, "192.0.2.1", "a@x.test"), SpfResult::Pass);
    assert_eq!(result(&zone, "192.0.2.2", "a@x.test"), SpfResult::Pass);
    let fail = run(&zone, "192.0.2.3", "@x.test");
    assert_eq!(fail.result, SpfResult::Fail);
    // §6.2: after a redirect, the explanation is the target's.
    assert_eq!(fail.explanation.as_deref(), Some("192.0.2.3 may not send for r.x.test (postmaster)"));
    assert_eq!(result(&zone, "192.0.2.1", "a@none.test"), SpfResult::PermError);
    assert_eq!(result(&zone, "192.0.2.1", "a@temp.test"), SpfResult::TempError);
}

#[test]
fn limits() {
    let mut zone = Zone::default().with("x.test", "TXT", &format!("v=spf1 {}-all", "a:nx.test ".repeat(3)));
    // §4.6.4: the third lookup that finds nothing is a permanent error.
    assert_eq!(result(&zone, "192.0.2.1", "a@x.test"), SpfResult::PermError);
    zone = zone.with("y.test", "TXT", &format!("v=spf1 {}-all", "exists:e.test ".repeat(11))).with(
        "e.test",
        "A",
        "127.0.0.2",
    );
    assert_eq!(result(&zone, "192.0.2.1", "a@y.test"), SpfResult::Pass);
    zone = zone.with("z.test", "TXT", &format!("v=spf1 {}-all", "a:e.test ".repeat(11)));
    assert_eq!(result(&zone, "192.0.2.1", "a@z.test"), SpfResult::PermError);
    zone = zone.with("loop.test", "TXT", "v=spf1 include:loop.test -all");
    assert_eq!(result(&zone, "192.0.2.1", "a@loop.test"), SpfResult::PermError);
}

#[test]
fn names_that_cannot_exist() {
    let zone = Zone::default()
        .with("x.test", "TXT", "v=spf1 a:%{l}.x.test -all")
        .with("two.test", "TXT", "v=spf1 -all")
        .with("two.test", "TXT", "v=spf1 +all");
    // An empty label from the macro: no match, never a temporary error.
    assert_eq!(result(&zone, "192.0.2.1", "a.@x.test"), SpfResult::Fail);
    assert_eq!(result(&zone, "192.0.2.1", "a@two.test"), SpfResult::PermError);
    assert_eq!(result(&zone, "192.0.2.1", "a@nothing.test"), SpfResult::None);
    assert_eq!(result(&zone, "192.0.2.1", "a@localhost"), SpfResult::None);
}

/// Every name answers with the same record, addresses, an MX and a PTR name, and
/// the lookups are counted.
struct Echo {
    record: String,
    lookups: std::sync::atomic::AtomicUsize,
}

impl Echo {
    fn answer<T>(&self, value: T) -> Result<Vec<T>, DnsError> {
        self.lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(vec![value])
    }
}

impl Resolve for Echo {
    async fn txt(&self, _: &str) -> Result<Vec<String>, DnsError> {
        self.answer(self.record.clone())
    }
    async fn addresses(&self, _: &str, v6: bool) -> Result<Vec<IpAddr>, DnsError> {
        self.answer(if v6 { "2001:db8::1".parse().unwrap() } else { "192.0.2.1".parse().unwrap() })
    }
    async fn mx(&self, _: &str) -> Result<Vec<String>, DnsError> {
        self.answer("mx.x.test".into())
    }
    async fn ptr(&self, _: IpAddr) -> Result<Vec<String>, DnsError> {
        self.answer("x.test".into())
    }
}

proptest::proptest! {
    /// Any record evaluates to a result within a bounded number of lookups, and a
    /// record that does not parse is a permanent error.
    #[test]
    fn any_record_evaluates(
        terms in "( [-+~?]?(a|mx|ptr|all|exists|include|ip4|ip6|redirect=|exp=|x=)[a-z0-9:./%{}=_-]{0,12}){0,8}",
        v6 in proptest::bool::ANY,
    ) {
        let record = format!("v=spf1{terms}");
        let echo = Echo { record: record.clone(), lookups: Default::default() };
        let ip: IpAddr = if v6 { "2001:db8::2".parse().unwrap() } else { "192.0.2.2".parse().unwrap() };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let verdict = rt.block_on(check_host(&echo, ip, "x.test", "a@x.test", "helo.test", "mx.test"));
        let lookups = echo.lookups.into_inner();
        proptest::prop_assert!(lookups <= 250, "{lookups} lookups for {record:?}");
        proptest::prop_assert!(verdict.result != SpfResult::None);
        if Record::parse(&record).is_err() {
            proptest::prop_assert_eq!(verdict.result, SpfResult::PermError);
        }
    }
}
