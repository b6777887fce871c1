//! `tern dkim keygen` and `tern dns check`: the real binary, a test DNS server on
//! loopback, and the records a served domain should publish.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Datelike;
use common::outbound::*;
use common::*;
use serde_json::json;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const DOMAIN: &str = "example.test";

const SERVED: &str = "\n[local]\ndomains = [\"example.test\"]\naccept_unknown = true\n";

/// A stopped Tern serving example.test whose `[dns]` asks `dns` (or a port where
/// nothing answers).
fn tern(dns: Option<&DnsServer>) -> Tern {
    sender_stopped(&SenderSetup { extra: SERVED, dns, peer_port: free_port(), outbound: "" })
}

/// What `tern dkim keygen` printed: the quoted strings of its one TXT line.
struct Published {
    name: String,
    strings: Vec<String>,
}

impl Published {
    #[track_caller]
    fn parse(stdout: &str) -> Published {
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "stdout must be the record line alone:\n{stdout}");
        let line = lines[0];
        let (name, rest) = line.split_once(" IN TXT ( ").unwrap_or_else(|| panic!("not a TXT line: {line}"));
        let inner = rest.strip_suffix(" )").unwrap_or_else(|| panic!("no closing parenthesis: {line}"));
        let mut strings = Vec::new();
        let mut rest = inner.trim();
        while !rest.is_empty() {
            let body = rest.strip_prefix('"').unwrap_or_else(|| panic!("not a quoted string at {rest:?}"));
            let end = body.find('"').unwrap_or_else(|| panic!("unterminated string in {line}"));
            strings.push(body[..end].to_string());
            rest = body[end + 1..].trim_start();
        }
        for s in &strings {
            assert!(s.len() <= 255, "a TXT string is longer than 255 bytes: {s}");
        }
        Published { name: name.to_string(), strings }
    }

    fn record(&self) -> String {
        self.strings.concat()
    }

    /// The decoded `p=` of a `v=DKIM1; k=KIND; p=…` record.
    #[track_caller]
    fn public_key(&self, kind: &str) -> Vec<u8> {
        let record = self.record();
        let prefix = format!("v=DKIM1; k={kind}; p=");
        let b64 = record.strip_prefix(&prefix).unwrap_or_else(|| panic!("record does not start {prefix:?}: {record}"));
        STANDARD.decode(b64).unwrap_or_else(|e| panic!("p= is not base64 ({e}): {b64}"))
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// `tern dkim keygen` with `args`; must succeed.
#[track_caller]
fn keygen(t: &Tern, args: &[&str]) -> (Published, String) {
    let mut all = vec!["dkim", "keygen"];
    all.extend_from_slice(args);
    let out = t.tern_cmd(&all);
    out.assert_success("tern dkim keygen");
    (Published::parse(&out.stdout), out.stderr)
}

/// Appends the `[[dkim]]` snippet keygen printed on stderr to the config.
fn add_snippet(t: &Tern, stderr: &str) {
    let snippet = &stderr[stderr.find("[[dkim]]").unwrap_or_else(|| panic!("no [[dkim]] snippet:\n{stderr}"))..];
    let mut config = fs::read_to_string(&t.config_path).expect("read config");
    config.push('\n');
    config.push_str(snippet);
    fs::write(&t.config_path, config).expect("write config");
    t.tern_cmd(&["config", "check"]).assert_success("config check with the printed [[dkim]] snippet");
}

/// The block of `tern dns check` output for one record: its line and the notes below.
#[track_caller]
fn block<'a>(stdout: &'a str, kind: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = stdout.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.split_whitespace().next() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} line:\n{stdout}"));
    let mut block = vec![lines[start]];
    block.extend(lines[start + 1..].iter().take_while(|l| l.starts_with(' ')));
    block
}

/// The block of the `kind` record published at `name` (its line and the notes below).
#[track_caller]
fn named<'a>(stdout: &'a str, kind: &str, name: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = stdout.lines().collect();
    let start = lines
        .iter()
        .position(|l| {
            let mut words = l.split_whitespace();
            words.next() == Some(kind) && words.next() == Some(name)
        })
        .unwrap_or_else(|| panic!("no {kind} line for {name}:\n{stdout}"));
    let mut block = vec![lines[start]];
    block.extend(lines[start + 1..].iter().take_while(|l| l.starts_with(' ')));
    block
}

/// The status word of a record's line.
#[track_caller]
fn status<'a>(stdout: &'a str, kind: &str) -> &'a str {
    block(stdout, kind)[0].split_whitespace().nth(2).unwrap_or_else(|| panic!("no status for {kind}:\n{stdout}"))
}

#[test]
fn keygen_rsa_writes_a_private_key_and_prints_its_record() {
    let t = tern(None);
    let key = t.path().join("rsa.pem");
    let (published, stderr) = keygen(&t, &[DOMAIN, "--selector", "sel1", "--out", key.to_str().unwrap()]);
    assert_eq!(published.name, "sel1._domainkey.example.test.");
    assert_eq!(published.strings[0], "v=DKIM1; k=rsa; ");
    let spki = published.public_key("rsa");
    assert!(spki.len() > 256 && spki[0] == 0x30, "not an RSA 2048 SubjectPublicKeyInfo: {} bytes", spki.len());
    assert!(published.strings.len() >= 3, "a 2048-bit key needs two strings: {:?}", published.strings);
    assert_eq!(mode(&key), 0o600);
    let pem = fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    assert!(pem.trim_end().ends_with("-----END PRIVATE KEY-----"), "{pem}");
    for line in ["[[dkim]]", "domain = \"example.test\"", "selector = \"sel1\"", "algorithm = \"rsa-sha256\""] {
        assert!(stderr.lines().any(|l| l == line), "no {line:?} in:\n{stderr}");
    }
    assert!(stderr.contains(&format!("key = \"{}\"", key.display())), "{stderr}");
}

#[test]
fn keygen_ed25519_publishes_the_raw_public_key() {
    let t = tern(None);
    let key = t.path().join("ed.pem");
    let (published, stderr) =
        keygen(&t, &[DOMAIN, "--algorithm", "ed25519", "--selector", "ed", "--out", key.to_str().unwrap()]);
    assert_eq!(published.name, "ed._domainkey.example.test.");
    assert_eq!(published.public_key("ed25519").len(), 32);
    assert_eq!(mode(&key), 0o600);
    assert!(fs::read_to_string(&key).unwrap().starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(stderr.lines().any(|l| l == "algorithm = \"ed25519-sha256\""), "{stderr}");
}

#[test]
fn keygen_never_overwrites_a_key() {
    let t = tern(None);
    let key = t.path().join("k.pem");
    keygen(&t, &[DOMAIN, "--out", key.to_str().unwrap()]);
    let before = fs::read(&key).unwrap();
    let out = t.tern_cmd(&["dkim", "keygen", DOMAIN, "--algorithm", "ed25519", "--out", key.to_str().unwrap()]);
    assert!(!out.success(), "a second keygen to the same file succeeded:\n{}", out.all());
    assert!(out.stdout.is_empty(), "a refused keygen printed a record: {}", out.stdout);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    assert_eq!(fs::read(&key).unwrap(), before, "the key changed");
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn keygen_defaults_to_this_year_and_the_data_dir() {
    let t = tern(None);
    let (published, stderr) = keygen(&t, &["Example.TEST"]);
    let selector = format!("s{}", chrono::Utc::now().year());
    assert_eq!(published.name, format!("{selector}._domainkey.example.test."));
    published.public_key("rsa");
    let dir = t.data_dir.join("dkim");
    let key = dir.join(format!("example.test.{selector}.pem"));
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&key), 0o600);
    assert!(stderr.contains(&format!("key = \"{}\"", key.display())), "{stderr}");
    let out = t.tern_cmd(&["dkim", "keygen", DOMAIN]);
    assert!(!out.success() && out.stderr.contains("already exists"), "{}", out.all());
}

#[test]
fn dns_check_passes_when_every_record_is_published() {
    let dns = DnsServer::start(&json!({}));
    let t = tern(Some(&dns));
    let (published, stderr) = keygen(&t, &[DOMAIN, "--selector", "s1"]);
    add_snippet(&t, &stderr);
    let dmarc = "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.test";
    dns.set_zone(&json!({
        "example.test.": [["MX", 20, "backup.example.test."], ["MX", 10, "TERN.test."],
                          ["TXT", "google-site-verification=abc"], ["TXT", "v=spf1 mx -all"]],
        "s1._domainkey.example.test.": [["TXT", published.record()]],
        "_dmarc.example.test.": [["TXT", dmarc]],
        "tern.test.": [["A", "198.51.100.7"], ["TXT", "v=spf1 a -all"]],
        "7.100.51.198.in-addr.arpa.": [["PTR", "tern.test."]],
    }));
    let out = t.tern_cmd(&["dns", "check", DOMAIN]);
    assert_eq!(out.code(), Some(0), "{}", out.all());
    let kinds = ["MX", "SPF", "DKIM", "DMARC", "A", "PTR"];
    let lines: Vec<&str> =
        out.stdout.lines().filter(|l| l.split_whitespace().next().is_some_and(|k| kinds.contains(&k))).collect();
    assert_eq!(lines.len(), 7, "one line per record:\n{}", out.stdout);
    assert!(named(&out.stdout, "SPF", "tern.test.")[0].contains(" ok "), "{}", out.stdout);
    for kind in ["MX", "SPF", "DKIM", "DMARC", "A", "PTR"] {
        assert_eq!(status(&out.stdout, kind), "ok", "{}", out.stdout);
    }
    assert!(block(&out.stdout, "MX")[0].contains("10 tern.test."), "{}", out.stdout);
    assert!(block(&out.stdout, "DKIM")[0].contains("s1._domainkey.example.test."), "{}", out.stdout);
    assert!(block(&out.stdout, "DMARC")[0].ends_with(dmarc), "{}", out.stdout);
    // The status column is aligned.
    let at: Vec<usize> = lines.iter().map(|l| l.find(" ok ").unwrap()).collect();
    assert!(at.iter().all(|&a| a == at[0]), "columns not aligned:\n{}", out.stdout);
}

#[test]
fn dns_check_marks_missing_and_wrong_records() {
    let dns = DnsServer::start(&json!({}));
    let t = tern(Some(&dns));
    let (_, stderr) = keygen(&t, &[DOMAIN, "--selector", "s1"]);
    add_snippet(&t, &stderr);
    // Another key's record at the configured selector.
    let (other, _) = keygen(&t, &[DOMAIN, "--selector", "other"]);
    dns.set_zone(&json!({
        "example.test.": [["MX", 10, "mx.elsewhere.test."], ["TXT", "v=spf1 +all"]],
        "s1._domainkey.example.test.": [["TXT", other.record()]],
    }));
    let out = t.tern_cmd(&["dns", "check", DOMAIN]);
    assert_eq!(out.code(), Some(1), "{}", out.all());
    let s = &out.stdout;
    assert_eq!(status(s, "MX"), "wrong", "{s}");
    assert!(block(s, "MX").iter().any(|l| l.contains("expected:") && l.contains("tern.test.")), "{s}");
    assert_eq!(status(s, "SPF"), "wrong", "{s}");
    assert!(block(s, "SPF")[0].contains("v=spf1 +all"), "{s}");
    assert_eq!(status(s, "DKIM"), "wrong", "{s}");
    assert!(block(s, "DKIM")[0].contains("public key differs"), "{s}");
    let key = t.data_dir.join("dkim/example.test.s1.pem");
    let publish = block(s, "DKIM").iter().find(|l| l.contains("publish:")).map(|l| l.to_string()).unwrap();
    let expected = Published::parse(publish.split_once("publish:").unwrap().1.trim());
    let key_record = expected.record();
    assert_ne!(key_record, other.record());
    assert!(key_record.starts_with("v=DKIM1; k=rsa; p="), "{publish}");
    assert!(fs::metadata(&key).is_ok());
    assert_eq!(status(s, "DMARC"), "missing", "{s}");
    assert!(
        block(s, "DMARC").iter().any(|l| l
            .contains("_dmarc.example.test. IN TXT \"v=DMARC1; p=quarantine; rua=mailto:postmaster@example.test\"")),
        "{s}"
    );

    // Nothing for the domain; two SPF records; a DMARC record that does not parse.
    dns.set_zone(&json!({
        "example.test.": [["TXT", "v=spf1 mx -all"], ["TXT", "v=spf1 -all"]],
        "_dmarc.example.test.": [["TXT", "v=DMARC1; p=bogus"]],
    }));
    let out = t.tern_cmd(&["dns", "check", DOMAIN]);
    assert_eq!(out.code(), Some(1), "{}", out.all());
    let s = &out.stdout;
    assert_eq!(status(s, "MX"), "missing", "{s}");
    assert!(block(s, "MX").iter().any(|l| l.contains("example.test. IN MX 10 tern.test.")), "{s}");
    assert_eq!(status(s, "SPF"), "wrong", "{s}");
    assert!(block(s, "SPF").iter().any(|l| l.contains("example.test. IN TXT \"v=spf1 mx -all\"")), "{s}");
    assert_eq!(status(s, "DKIM"), "missing", "{s}");
    assert!(block(s, "DKIM").iter().any(|l| l.contains(&format!("publish:  {}", publish_of(&key_record)))), "{s}");
    assert_eq!(status(s, "DMARC"), "wrong", "{s}");

    // No SPF at all.
    dns.set_zone(&json!({ "example.test.": [["MX", 10, "tern.test."]] }));
    let out = t.tern_cmd(&["dns", "check", DOMAIN]);
    assert_eq!(out.code(), Some(1), "{}", out.all());
    assert_eq!(status(&out.stdout, "MX"), "ok", "{}", out.stdout);
    assert_eq!(status(&out.stdout, "SPF"), "missing", "{}", out.stdout);
}

/// The zone line `tern dns check` suggests for a DKIM record.
fn publish_of(record: &str) -> String {
    let (head, key) = record.split_at(record.find("p=").unwrap());
    let mut strings = vec![format!("\"{head}\"")];
    strings.extend(key.as_bytes().chunks(255).map(|c| format!("\"{}\"", std::str::from_utf8(c).unwrap())));
    format!("s1._domainkey.example.test. IN TXT ( {} )", strings.join(" "))
}

#[test]
fn dns_check_shows_a_failing_server_as_an_error() {
    let dns = DnsServer::start(&json!({
        "example.test.": [["SERVFAIL"]],
        "_dmarc.example.test.": [["SERVFAIL"]],
    }));
    let t = tern(Some(&dns));
    let out = t.tern_cmd(&["dns", "check", DOMAIN]);
    assert_eq!(out.code(), Some(1), "{}", out.all());
    let s = &out.stdout;
    for kind in ["MX", "SPF", "DMARC"] {
        assert_eq!(status(s, kind), "error", "{s}");
        assert!(!block(s, kind).iter().any(|l| l.contains("publish:")), "{s}");
    }
    // No key configured: keygen is suggested.
    assert_eq!(status(s, "DKIM"), "missing", "{s}");
    assert!(block(s, "DKIM").iter().any(|l| l.contains("tern dkim keygen example.test")), "{s}");
}

#[test]
fn dns_check_refuses_a_domain_tern_does_not_serve() {
    let t = tern(None);
    let out = t.tern_cmd(&["dns", "check", "other.test"]);
    assert_eq!(out.code(), Some(2), "{}", out.all());
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.contains("other.test is not a domain Tern serves"), "{}", out.stderr);
}

/// SPF is evaluated as receivers do (includes and redirects followed), for the domain
/// and for the HELO name; reverse DNS of the server's address is checked; a lower-case
/// DMARC version and a DKIM key in testing mode are flagged.
#[test]
fn dns_check_evaluates_spf_and_checks_the_server_itself() {
    let dns = DnsServer::start(&json!({}));
    let t = tern(Some(&dns));
    let (published, stderr) = keygen(&t, &[DOMAIN, "--selector", "s1"]);
    add_snippet(&t, &stderr);
    let testing = format!("{}; t=y", published.record());
    dns.set_zone(&json!({
        "example.test.": [["MX", 10, "tern.test."], ["TXT", "v=spf1 redirect=_spf.example.test"]],
        "_spf.example.test.": [["TXT", "v=spf1 +all"]],
        "s1._domainkey.example.test.": [["TXT", testing]],
        "_dmarc.example.test.": [["TXT", "v=dmarc1; p=reject"]],
        "tern.test.": [["A", "198.51.100.7"]],
        "7.100.51.198.in-addr.arpa.": [["PTR", "other.test."]],
    }));
    let out = t.tern_cmd(&["dns", "check", DOMAIN]);
    assert_eq!(out.code(), Some(1), "{}", out.all());
    let s = &out.stdout;
    let spf = named(s, "SPF", "example.test.");
    assert!(spf[0].contains("wrong") && spf[0].contains("lets any host send"), "{s}");
    assert!(block(s, "DKIM")[0].contains("wrong") && block(s, "DKIM")[0].contains("t=y"), "{s}");
    assert!(block(s, "DMARC")[0].contains("wrong") && block(s, "DMARC")[0].contains("v=DMARC1 exactly"), "{s}");
    assert_eq!(status(s, "A"), "ok", "{s}");
    let helo = named(s, "SPF", "tern.test.");
    assert!(helo[0].contains("missing"), "{s}");
    assert!(helo.iter().any(|l| l.contains("tern.test. IN TXT \"v=spf1 a -all\"")), "{s}");
    let ptr = named(s, "PTR", "7.100.51.198.in-addr.arpa.");
    assert!(ptr[0].contains("wrong") && ptr[0].contains("other.test."), "{s}");
    assert!(ptr.iter().any(|l| l.contains("ask for:") && l.contains("IN PTR tern.test.")), "{s}");

    // An include that leaves out the server's own address; no PTR at all.
    dns.set_zone(&json!({
        "example.test.": [["MX", 10, "tern.test."], ["TXT", "v=spf1 include:_spf.example.test -all"]],
        "_spf.example.test.": [["TXT", "v=spf1 ip4:10.0.0.1 -all"]],
        "tern.test.": [["A", "198.51.100.7"], ["TXT", "v=spf1 a -all"]],
    }));
    let out = t.tern_cmd(&["dns", "check", DOMAIN]);
    let s = &out.stdout;
    let spf = named(s, "SPF", "example.test.");
    assert!(spf[0].contains("wrong") && spf[0].contains("does not authorize 198.51.100.7"), "{s}");
    assert!(named(s, "SPF", "tern.test.")[0].contains(" ok "), "{s}");
    assert!(named(s, "PTR", "7.100.51.198.in-addr.arpa.")[0].contains("missing"), "{s}");
}

/// `remote.test` served by a stopped Tern named tern.test that trusts the test CA.
fn tern_for_remote(dns: &DnsServer, ca: &common::sts::Ca) -> Tern {
    let served = "\n[local]\ndomains = [\"remote.test\"]\naccept_unknown = true\n";
    let outbound = format!("ca_file = \"{}\"\n", ca.ca_file().display());
    sender_stopped(&SenderSetup { extra: served, dns: Some(dns), peer_port: free_port(), outbound: &outbound })
}

/// The line of the bulk sender block that starts with `text`, and its verdict.
#[track_caller]
fn bulk<'a>(stdout: &'a str, text: &str) -> (&'a str, &'a str) {
    let at = stdout.find("Bulk sender requirements (Gmail, Yahoo, Microsoft)\n").expect("a bulk sender block");
    stdout[at..]
        .lines()
        .skip(1)
        .filter_map(|l| l.trim_start().split_once(' '))
        .map(|(verdict, rest)| (verdict, rest.trim_start()))
        .find(|(_, rest)| rest.starts_with(text))
        .unwrap_or_else(|| panic!("no bulk line {text:?}:\n{stdout}"))
}

#[test]
fn dns_check_reports_mta_sts_tls_rpt_tlsa_and_bulk_sender_requirements() {
    let ca = common::sts::Ca::new();
    let policy = "version: STSv1\r\nmode: enforce\r\nmx: tern.test\r\nmax_age: 86400\r\n";
    let Some(_sts) = common::sts::PolicyServer::start(&ca, "127.0.1.41", policy) else { return };
    let dns = DnsServer::start(&json!({}));
    let t = tern_for_remote(&dns, &ca);
    let (published, stderr) = keygen(&t, &["remote.test", "--selector", "s1"]);
    add_snippet(&t, &stderr);
    let spki = "8cb0fc6c527506a053f4f14c8464bebbd6dede2738d11468dd953d7d6a3021f1";
    dns.set_zone(&json!({
        "remote.test.": [["MX", 10, "tern.test."], ["TXT", "v=spf1 mx -all"]],
        "s1._domainkey.remote.test.": [["TXT", published.record()]],
        "_dmarc.remote.test.": [["TXT", "v=DMARC1; p=none"]],
        "_mta-sts.remote.test.": [["TXT", "v=STSv1; id=20261207;"]],
        "mta-sts.remote.test.": [["A", "127.0.1.41"]],
        "_smtp._tls.remote.test.": [["TXT", "v=TLSRPTv1; rua=mailto:tls@remote.test"]],
        "_25._tcp.tern.test.": [["TLSA", 3, 1, 1, spki]],
        "tern.test.": [["A", "198.51.100.7"], ["TXT", "v=spf1 a -all"]],
        "7.100.51.198.in-addr.arpa.": [["PTR", "tern.test."]],
    }));
    let out = t.tern_cmd(&["dns", "check", "remote.test"]);
    let s = &out.stdout;
    assert_eq!(out.code(), Some(0), "{}", out.all());
    let sts = named(s, "MTA-STS", "_mta-sts.remote.test.");
    assert!(sts[0].contains(" ok ") && sts[0].contains("mode=enforce"), "{s}");
    assert!(named(s, "TLS-RPT", "_smtp._tls.remote.test.")[0].contains(" ok "), "{s}");
    let tlsa = named(s, "TLSA", "_25._tcp.tern.test.");
    assert!(tlsa[0].contains("3 1 1 (DANE-EE, SPKI, SHA-256)"), "{s}");
    assert!(tlsa.iter().any(|l| l.contains("DNSSEC is not validated")), "{s}");
    for requirement in ["SPF passes", "DKIM key published", "DMARC record", "PTR and forward-confirmed"] {
        assert_eq!(bulk(s, requirement).0, "pass", "{requirement}:\n{s}");
    }
    assert_eq!(bulk(s, "TLS offered with a self-signed").0, "warn", "{s}");
    assert_eq!(bulk(s, "one-click unsubscribe").0, "note", "{s}");
}

#[test]
fn dns_check_fails_bad_tls_records_and_unconfirmed_reverse_dns() {
    let ca = common::sts::Ca::new();
    let dns = DnsServer::start(&json!({}));
    let t = tern_for_remote(&dns, &ca);
    dns.set_zone(&json!({
        "remote.test.": [["MX", 10, "tern.test."], ["TXT", "v=spf1 mx -all"]],
        "_mta-sts.remote.test.": [["TXT", "v=STSv1; id=not valid!;"]],
        "_smtp._tls.remote.test.": [["TXT", "v=TLSRPTv1"]],
        "tern.test.": [["A", "198.51.100.7"], ["TXT", "v=spf1 a -all"]],
        "9.100.51.198.in-addr.arpa.": [["PTR", "tern.test."]],
    }));
    // An outbound address whose PTR names the host, which does not resolve back to it.
    let out = t.tern_cmd(&["dns", "check", "remote.test", "--address", "198.51.100.9"]);
    let s = &out.stdout;
    assert_eq!(out.code(), Some(1), "{}", out.all());
    assert!(named(s, "MTA-STS", "_mta-sts.remote.test.")[0].contains("wrong"), "{s}");
    assert!(named(s, "TLS-RPT", "_smtp._tls.remote.test.")[0].contains("wrong"), "{s}");
    let tlsa = named(s, "TLSA", "_25._tcp.tern.test.");
    assert!(tlsa[0].contains("warn") && tlsa[0].contains("none"), "{s}");
    let ptr = named(s, "PTR", "9.100.51.198.in-addr.arpa.");
    assert!(ptr[0].contains("wrong") && ptr[0].contains("not forward-confirmed"), "{s}");
    assert_eq!(bulk(s, "PTR and forward-confirmed").0, "fail", "{s}");
    assert_eq!(bulk(s, "DKIM key published").0, "fail", "{s}");
    assert_eq!(bulk(s, "SPF passes").0, "fail", "SPF must authorize 198.51.100.9:\n{s}");
}
