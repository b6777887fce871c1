//! SPF, DKIM, ARC and DMARC checks on received mail, end to end: a Tern
//! (with `[relay] networks = []`, so loopback clients are strangers) asks a
//! test DNS server about the sender's domains, and clients bound to other
//! loopback addresses play senders the records allow (127.0.0.5) or do not
//! (127.0.0.6). The verdicts are read from the `Authentication-Results` and
//! `Received-SPF` headers of the delivered messages, or from the refusal.

mod common;

use base64::Engine;
use common::auth_results::*;
use common::outbound::*;
use common::*;
use serde_json::{Value, json};
use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

/// Tern's local domain in these tests.
const LOCAL: &str = "b.test";
const BOB: &str = "bob@b.test";
/// A client address the sender's SPF records allow.
const GOOD_IP: &str = "127.0.0.5";
/// A client address they do not allow.
const BAD_IP: &str = "127.0.0.6";
/// The SPF record allowing exactly `GOOD_IP`.
const SPF_GOOD_ONLY: &str = "v=spf1 ip4:127.0.0.5 -all";

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A zone for `DnsServer::start`; a final dot is added to names without one.
fn zone(entries: &[(&str, Value)]) -> Value {
    let mut map = serde_json::Map::new();
    for (name, records) in entries {
        let name = if name.ends_with('.') { name.to_string() } else { format!("{name}.") };
        map.insert(name, records.clone());
    }
    Value::Object(map)
}

fn txt(value: &str) -> Value {
    json!([["TXT", value]])
}

/// Starts a Tern asking `dns`, with `extra` appended to the harness config as is.
fn start_tern_raw(dns: &DnsServer, extra: &str) -> Tern {
    let mut t = Tern::new_stopped(extra, &[]);
    let text = fs::read_to_string(&t.config_path).expect("read config");
    let mut out = String::new();
    let mut section = String::new();
    let mut replaced = false;
    for line in text.lines() {
        if line.starts_with('[') {
            section = line.trim().to_string();
        }
        if section == "[dns]" && line.starts_with("nameservers = ") {
            out.push_str(&format!("nameservers = [\"127.0.0.1:{}\"]\n", dns.port));
            replaced = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(replaced, "harness config has no [dns] nameservers:\n{text}");
    fs::write(&t.config_path, out).expect("write config");
    t.start_again();
    t
}

/// Starts a Tern for local domain `b.test` that treats every client as a
/// stranger; `auth_checks` holds lines for the `[auth_checks]` table.
fn start_tern(dns: &DnsServer, auth_checks: &str) -> Tern {
    start_tern_raw(
        dns,
        &format!(
            "{NO_RELAY}\n[local]\ndomains = [\"{LOCAL}\"]\naccept_unknown = true\n\n[auth_checks]\n{auth_checks}\n"
        ),
    )
}

/// A DNS server with `entries` and a Tern asking it.
fn setup(entries: &[(&str, Value)], auth_checks: &str) -> (DnsServer, Tern) {
    let dns = DnsServer::start(&zone(entries));
    let t = start_tern(&dns, auth_checks);
    (dns, t)
}

/// A small message with CRLF line ends; `extra_headers` (each line ending
/// in CRLF) come first.
fn message(from: &str, subject: &str, extra_headers: &str) -> String {
    let id: String = subject.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    format!(
        "{extra_headers}From: {from}\r\nTo: {BOB}\r\nSubject: {subject}\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{id}@sender.test>\r\n\r\n\
         Body of {subject}.\r\n"
    )
}

/// How one SMTP transaction ended.
#[derive(Debug, Clone)]
struct Sent {
    /// `mail`, `rcpt`, `data` (the reply to DATA), `end` (the reply after the
    /// final dot), `ehlo`, or `error` (the client failed; `text` says why).
    stage: String,
    code: u16,
    text: String,
    /// From sending MAIL to the last reply read.
    secs: f64,
    /// From sending MAIL to its reply.
    mail_secs: f64,
    /// From sending DATA to the reply after the final dot.
    data_secs: f64,
}

impl Sent {
    fn accepted(&self) -> bool {
        self.stage == "end" && self.code == 250
    }
}

const SEND_PY: &str = r#"
import base64, json, os, smtplib, sys, time
P = json.loads(base64.b64decode(os.environ["SEND_PARAMS"]))
PORT = int(os.environ["TERN_PORT"])
out = {"stage": "connect", "code": 0, "text": "", "secs": 0.0, "mail_secs": 0.0, "data_secs": 0.0}
t0 = None
def done(stage, code, text):
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out.update(stage=stage, code=code, text=text)
    if t0 is not None:
        out["secs"] = time.monotonic() - t0
    print(json.dumps(out))
    sys.exit(0)
try:
    s = smtplib.SMTP("127.0.0.1", PORT, timeout=60, source_address=(P["ip"], 0))
    code, text = s.ehlo(P["helo"])
    if code != 250:
        done("ehlo", code, text)
    t0 = time.monotonic()
    code, text = s.mail(P["from"])
    out["mail_secs"] = time.monotonic() - t0
    if code != 250:
        done("mail", code, text)
    for r in P["rcpts"]:
        code, text = s.rcpt(r)
        if code not in (250, 251):
            done("rcpt", code, text)
    try:
        t1 = time.monotonic()
        code, text = s.data(P["msg"].encode("utf-8"))
        out["data_secs"] = time.monotonic() - t1
    except smtplib.SMTPDataError as e:
        done("data", e.smtp_code, e.smtp_error)
    try:
        s.quit()
    except Exception:
        pass
    done("end", code, text)
except SystemExit:
    raise
except Exception as e:
    done("error", 0, repr(e))
"#;

/// One transaction from client address `ip` with Python's smtplib: EHLO
/// `helo`, MAIL FROM `mail_from` (empty for `<>`), RCPT TO each of `rcpts`,
/// then `msg`. Stops at the first refusal.
fn send_full(t: &Tern, ip: &str, helo: &str, mail_from: &str, rcpts: &[&str], msg: &str) -> Sent {
    send_to_port(t, t.port, ip, helo, mail_from, rcpts, msg)
}

/// `send_full` to Tern's listener on 127.0.0.1:`port`.
fn send_to_port(t: &Tern, port: u16, ip: &str, helo: &str, mail_from: &str, rcpts: &[&str], msg: &str) -> Sent {
    let params = json!({ "ip": ip, "helo": helo, "from": mail_from, "rcpts": rcpts, "msg": msg });
    let encoded = base64::engine::general_purpose::STANDARD.encode(params.to_string());
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-")
        .env("TERN_PORT", port.to_string())
        .env("SEND_PARAMS", encoded)
        .env("PYTHONIOENCODING", "utf-8")
        .current_dir(t.path());
    let out = run_with_input(cmd, Some(SEND_PY.as_bytes()), Duration::from_secs(90));
    out.assert_success("smtplib client");
    let line = out.stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("client output {line:?}: {e}\n{}", out.all()));
    Sent {
        stage: v["stage"].as_str().unwrap_or_default().to_string(),
        code: v["code"].as_u64().unwrap_or(0) as u16,
        text: v["text"].as_str().unwrap_or_default().to_string(),
        secs: v["secs"].as_f64().unwrap_or(0.0),
        mail_secs: v["mail_secs"].as_f64().unwrap_or(0.0),
        data_secs: v["data_secs"].as_f64().unwrap_or(0.0),
    }
}

/// One message to bob@b.test from client address `ip` (HELO `client.test`) with
/// envelope sender `mail_from` and `From: from_header`.
fn send(t: &Tern, ip: &str, mail_from: &str, from_header: &str, subject: &str) -> Sent {
    send_full(t, ip, "client.test", mail_from, &[BOB], &message(from_header, subject, ""))
}

#[track_caller]
fn assert_accepted(t: &Tern, sent: &Sent) {
    assert!(sent.accepted(), "message not accepted: {sent:?}\n{}", t.logs());
}

/// Asserts a refusal with `code` whose text holds the enhanced status `status`.
#[track_caller]
fn assert_refused(t: &Tern, sent: &Sent, code: u16, status: &str) {
    assert!(sent.code == code && sent.text.contains(status), "expected {code} {status}, got {sent:?}\n{}", t.logs());
}

/// Asserts a refusal after the final dot.
#[track_caller]
fn assert_refused_at_end(t: &Tern, sent: &Sent, code: u16, status: &str) {
    assert_eq!(sent.stage, "end", "refusal expected at the end of DATA: {sent:?}");
    assert_refused(t, sent, code, status);
}

/// A temporary refusal (451 4.7.x): never a permanent one.
#[track_caller]
fn assert_deferred(t: &Tern, sent: &Sent) {
    assert!(sent.code == 451 && sent.text.contains("4.7."), "expected 451 4.7.x, got {sent:?}\n{}", t.logs());
}

/// Sends one message that passes every check (`ok.test` allows GOOD_IP and
/// has no DMARC record) and waits for it: the server is still alive. The
/// zone must hold `ok.test` with `SPF_GOOD_ONLY`.
#[track_caller]
fn assert_alive(t: &Tern, before: usize) {
    let sent = send(t, GOOD_IP, "alice@ok.test", "alice@ok.test", "still alive");
    assert_accepted(t, &sent);
    t.wait_mail(LOCAL, "bob", before + 1);
}

fn ok_test() -> (&'static str, Value) {
    ("ok.test", txt(SPF_GOOD_ONLY))
}

/// `<maildir>/.Junk/new` of a local user.
fn junk_dir(t: &Tern, user: &str) -> PathBuf {
    t.maildir(LOCAL, user).join(".Junk").join("new")
}

/// Waits (15 s) for `n` messages in a user's Junk folder; returns them.
#[track_caller]
fn wait_junk(t: &Tern, user: &str, n: usize) -> Vec<Vec<u8>> {
    t.wait_files_within(&junk_dir(t, user), n, Duration::from_secs(15))
}

#[track_caller]
fn assert_nothing_delivered(t: &Tern) {
    thread::sleep(Duration::from_millis(500));
    let all = t.all_delivered();
    assert!(all.is_empty(), "nothing should have been delivered: {all:?}");
}

// ---------------------------------------------------------------------------
// Reading the headers
// ---------------------------------------------------------------------------

/// The Received-SPF header, unfolded and trimmed, if any; at most one.
#[track_caller]
fn received_spf(stored: &[u8]) -> Option<String> {
    let mut values = fields_named(stored, "Received-SPF");
    assert!(values.len() <= 1, "more than one Received-SPF header:\n{}", show(stored));
    values.pop().map(|v| v.trim().to_string())
}

/// Checks the Received-SPF header: it starts with `result` and names the client.
#[track_caller]
fn assert_received_spf(stored: &[u8], result: &str, ip: &str) {
    let value = received_spf(stored).unwrap_or_else(|| panic!("no Received-SPF header:\n{}", show(stored)));
    let first = value.split_whitespace().next().unwrap_or_default().trim_end_matches(';').to_ascii_lowercase();
    assert_eq!(first, result, "Received-SPF result in {value:?}");
    assert!(value.contains(&format!("client-ip={ip}")), "Received-SPF does not name client-ip={ip}: {value:?}");
}

/// Delivers one message from `ip` and returns Tern's A-R header and the stored message.
#[track_caller]
fn deliver(t: &Tern, ip: &str, mail_from: &str, from_header: &str, subject: &str, n: usize) -> (AuthResults, Vec<u8>) {
    let sent = send(t, ip, mail_from, from_header, subject);
    assert_accepted(t, &sent);
    let mut mails = t.wait_mail(LOCAL, "bob", n);
    assert_eq!(mails.len(), n, "expected {n} message(s) for bob");
    let stored = mails
        .drain(..)
        .find(|m| contains(m, format!("Subject: {subject}\r\n").as_bytes()))
        .unwrap_or_else(|| panic!("message {subject:?} not found"));
    (tern_ar(&stored), stored)
}

/// Sends one message from GOOD_IP and one from BAD_IP for `alice@a.test` and
/// checks that the first passes SPF and the second is refused (`-all`).
#[track_caller]
fn pass_from_good_refused_from_bad(entries: &[(&str, Value)]) {
    let (_dns, t) = setup(entries, "");
    let (ar, stored) = deliver(&t, GOOD_IP, "alice@a.test", "alice@a.test", "allowed client", 1);
    ar.assert("spf", "pass");
    assert_received_spf(&stored, "pass", GOOD_IP);
    let sent = send(&t, BAD_IP, "alice@a.test", "alice@a.test", "other client");
    assert_refused(&t, &sent, 550, "5.7.23");
    assert_eq!(t.settled_count(LOCAL, "bob"), 1, "the refused message was delivered");
}

// ---------------------------------------------------------------------------
// SPF results
// ---------------------------------------------------------------------------

#[test]
fn spf_pass_is_recorded_in_the_headers() {
    let (_dns, t) = setup(&[("a.test", txt(SPF_GOOD_ONLY))], "");
    let msg = message("alice@a.test", "spf pass", "");
    let sent = send_full(&t, GOOD_IP, "client.test", "alice@a.test", &[BOB], &msg);
    assert_accepted(&t, &sent);
    let stored = t.wait_one(LOCAL, "bob");
    assert!(stored.ends_with(msg.as_bytes()), "message content changed:\n{}", show(&stored));
    let ar = tern_ar(&stored);
    assert_eq!(ar.authserv_id, HOSTNAME);
    ar.assert("spf", "pass");
    let mailfrom = ar.prop("spf", "smtp.mailfrom").unwrap_or_default();
    assert!(mailfrom == "alice@a.test" || mailfrom == "a.test", "smtp.mailfrom in {:?}", ar.raw);
    ar.assert("dkim", "none");
    ar.assert("arc", "none");
    ar.assert("dmarc", "none");
    assert_eq!(ar.prop("dmarc", "policy.dmarc"), None, "no DMARC record, no policy: {:?}", ar.raw);
    // The header is folded.
    let (headers, _) = split_message(&stored);
    let headers = String::from_utf8_lossy(headers);
    let start = headers.find("Authentication-Results:").expect("Authentication-Results header");
    let rest = &headers[start..];
    let end = rest.match_indices("\r\n").map(|(i, _)| i).find(|&i| !rest[i + 2..].starts_with([' ', '\t']));
    let raw = &rest[..end.unwrap_or(rest.len())];
    assert!(raw.contains("\r\n"), "Authentication-Results is not folded: {raw:?}");
    assert!(raw.lines().all(|l| l.len() <= 998), "overlong line in {raw:?}");
    assert_received_spf(&stored, "pass", GOOD_IP);
}

#[test]
fn spf_fail_without_dmarc_is_refused_with_5_7_23() {
    let (_dns, t) = setup(&[("a.test", txt(SPF_GOOD_ONLY)), ok_test()], "");
    let sent = send(&t, BAD_IP, "alice@a.test", "alice@a.test", "spf fail");
    assert_refused(&t, &sent, 550, "5.7.23");
    assert_nothing_delivered(&t);
    assert_alive(&t, 0);
}

#[test]
fn spf_fail_is_delivered_when_spf_fail_is_accept() {
    let (_dns, t) = setup(&[("a.test", txt(SPF_GOOD_ONLY))], "spf_fail = \"accept\"");
    let (ar, stored) = deliver(&t, BAD_IP, "alice@a.test", "alice@a.test", "spf fail accepted", 1);
    ar.assert("spf", "fail");
    ar.assert("dmarc", "none");
    assert_received_spf(&stored, "fail", BAD_IP);
}

#[test]
fn spf_softfail_is_delivered() {
    let (_dns, t) = setup(&[("a.test", txt("v=spf1 ip4:127.0.0.5 ~all"))], "");
    let (ar, stored) = deliver(&t, BAD_IP, "alice@a.test", "alice@a.test", "softfail", 1);
    ar.assert("spf", "softfail");
    assert_received_spf(&stored, "softfail", BAD_IP);
}

#[test]
fn spf_neutral_is_delivered() {
    let (_dns, t) = setup(&[("a.test", txt("v=spf1 ip4:127.0.0.5 ?all"))], "");
    let (ar, stored) = deliver(&t, BAD_IP, "alice@a.test", "alice@a.test", "neutral", 1);
    ar.assert("spf", "neutral");
    assert_received_spf(&stored, "neutral", BAD_IP);
}

#[test]
fn spf_none_without_a_record() {
    let (_dns, t) = setup(
        &[("a.test", json!([["A", "127.0.0.2"], ["TXT", "site-verification=abc123"], ["MX", 10, "mx.a.test."]]))],
        "",
    );
    let (ar, stored) = deliver(&t, BAD_IP, "alice@a.test", "alice@a.test", "no spf record", 1);
    ar.assert("spf", "none");
    assert_received_spf(&stored, "none", BAD_IP);
}

#[test]
fn spf_permerror_for_an_invalid_address() {
    let (_dns, t) = setup(&[("a.test", txt("v=spf1 ip4:300.1.1.1 -all")), ok_test()], "");
    let (ar, stored) = deliver(&t, GOOD_IP, "alice@a.test", "alice@a.test", "bad spf record", 1);
    ar.assert("spf", "permerror");
    assert_received_spf(&stored, "permerror", GOOD_IP);
    assert_alive(&t, 1);
}

#[test]
fn spf_permerror_for_an_unknown_mechanism() {
    let (_dns, t) = setup(&[("a.test", txt("v=spf1 ip4:127.0.0.5 frobnicate:x.test -all")), ok_test()], "");
    let (ar, stored) = deliver(&t, BAD_IP, "alice@a.test", "alice@a.test", "unknown mechanism", 1);
    ar.assert("spf", "permerror");
    assert_received_spf(&stored, "permerror", BAD_IP);
    assert_alive(&t, 1);
}

#[test]
fn spf_permerror_for_two_spf_records() {
    // RFC 7208 §4.5: more than one record is a permanent error.
    let records = json!([["TXT", "v=spf1 ip4:127.0.0.5 -all"], ["TXT", "v=spf1 ip4:127.0.0.6 -all"]]);
    let (_dns, t) = setup(&[("a.test", records), ok_test()], "");
    let (ar, _) = deliver(&t, BAD_IP, "alice@a.test", "alice@a.test", "two records", 1);
    ar.assert("spf", "permerror");
    assert_alive(&t, 1);
}

/// `<prefix>.test` → i1.<prefix>.test → … → i<n>.<prefix>.test, the last allowing GOOD_IP.
fn include_chain(domain: &str, n: usize) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let name = |i: usize| if i == 0 { domain.to_string() } else { format!("i{i}.{domain}") };
    for i in 0..n {
        out.push((name(i), txt(&format!("v=spf1 include:{} -all", name(i + 1)))));
    }
    out.push((name(n), txt(SPF_GOOD_ONLY)));
    out
}

#[test]
fn spf_permerror_after_more_than_ten_dns_lookups() {
    let mut entries = include_chain("a.test", 12);
    entries.extend(include_chain("short.test", 8));
    entries.push(("ok.test".to_string(), txt(SPF_GOOD_ONLY)));
    let refs: Vec<(&str, Value)> = entries.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    let (_dns, t) = setup(&refs, "");
    // Eight nested includes are within the limit …
    let (ar, _) = deliver(&t, GOOD_IP, "alice@short.test", "alice@short.test", "eight includes", 1);
    ar.assert("spf", "pass");
    // … twelve are not.
    let (ar, _) = deliver(&t, GOOD_IP, "alice@a.test", "alice@a.test", "twelve includes", 2);
    ar.assert("spf", "permerror");
    assert_alive(&t, 2);
}

#[test]
fn spf_temperror_is_deferred_with_451() {
    let (_dns, t) = setup(&[("a.test", json!([["SERVFAIL"]])), ok_test()], "");
    let sent = send(&t, GOOD_IP, "alice@a.test", "alice@a.test", "servfail");
    assert_deferred(&t, &sent);
    assert_nothing_delivered(&t);
    assert_alive(&t, 0);
}

#[test]
fn spf_temperror_is_delivered_when_temp_error_is_accept() {
    let (_dns, t) = setup(&[("a.test", json!([["SERVFAIL"]]))], "temp_error = \"accept\"");
    let (ar, stored) = deliver(&t, GOOD_IP, "alice@a.test", "alice@a.test", "servfail accepted", 1);
    ar.assert("spf", "temperror");
    assert_received_spf(&stored, "temperror", GOOD_IP);
}

#[test]
fn spf_timeout_and_servfail_on_the_record_are_deferred_with_4_7_24() {
    let entries = [("slow.test", json!([["TIMEOUT"]])), ("broken.test", json!([["SERVFAIL"]])), ok_test()];
    let (_dns, t) = setup(&entries, "timeout = \"2s\"");
    for domain in ["slow.test", "broken.test"] {
        let sent = send(&t, GOOD_IP, &format!("alice@{domain}"), &format!("alice@{domain}"), domain);
        // RFC 7372 §3.3: the SPF lookup failed for now (RFC 7208 §8.6).
        assert!(
            sent.code == 451 && sent.text.contains("4.7.24"),
            "{domain}: expected 451 4.7.24, got {sent:?}\n{}",
            t.logs()
        );
    }
    assert_nothing_delivered(&t);
    assert_alive(&t, 0);
}

#[test]
fn spf_permerror_for_an_invalid_domain_is_not_deferred() {
    // RFC 7208 §7.1: the domain-spec must end in a toplabel, and "com:8080" is
    // none: a permanent error in the record, never a temporary one.
    let entries = [("a.test", json!([["TXT", "v=spf1 a:a.test:8080 -all"], ["A", GOOD_IP]])), ok_test()];
    let (_dns, t) = setup(&entries, "");
    let sent = send(&t, BAD_IP, "alice@a.test", "alice@a.test", "port in the record");
    assert!(sent.code != 451, "a permerror must not be deferred: {sent:?}\n{}", t.logs());
    assert_accepted(&t, &sent);
    let ar = tern_ar(&t.wait_one(LOCAL, "bob"));
    ar.assert("spf", "permerror");
    assert_alive(&t, 1);
}

/// A port free right now for a dual-stack `[::]` listener, if this machine has IPv6.
fn dual_stack_port() -> Option<u16> {
    let Ok(l) = std::net::TcpListener::bind("[::]:0") else {
        eprintln!("skipped: no IPv6 on this machine");
        return None;
    };
    Some(l.local_addr().expect("local addr").port())
}

#[test]
fn spf_for_an_ipv4_client_of_a_dual_stack_listener() {
    let Some(port) = dual_stack_port() else { return };
    let entries =
        [("ip.test", txt(SPF_GOOD_ONLY)), ("a.test", json!([["TXT", "v=spf1 a -all"], ["A", GOOD_IP]])), ok_test()];
    let dns = DnsServer::start(&zone(&entries));
    let t = start_tern_raw(
        &dns,
        &format!(
            "{NO_RELAY}\n[local]\ndomains = [\"{LOCAL}\"]\naccept_unknown = true\n\n\
             [[listen]]\naddr = \"[::]:{port}\"\nmode = \"smtp\"\n"
        ),
    );
    if let Err(e) = wait_greeting("127.0.0.1", port, Duration::from_secs(15)) {
        panic!("no greeting on the [::] listener: {e}\n{}", t.logs());
    }
    // The client is 127.0.0.5 (not ::ffff:127.0.0.5) to ip4: and to a.
    for (n, domain) in ["ip.test", "a.test"].into_iter().enumerate() {
        let from = format!("alice@{domain}");
        let sent = send_to_port(&t, port, GOOD_IP, "client.test", &from, &[BOB], &message(&from, domain, ""));
        assert_accepted(&t, &sent);
        let mails = t.wait_mail(LOCAL, "bob", n + 1);
        let stored = mails
            .iter()
            .find(|m| contains(m, format!("Subject: {domain}\r\n").as_bytes()))
            .unwrap_or_else(|| panic!("message {domain} not found"));
        tern_ar(stored).assert("spf", "pass");
        assert_received_spf(stored, "pass", GOOD_IP);
        // Another IPv4 client over the same listener fails, and is refused.
        let sent = send_to_port(&t, port, BAD_IP, "client.test", &from, &[BOB], &message(&from, "other client", ""));
        assert_refused(&t, &sent, 550, "5.7.23");
    }
    assert_eq!(t.settled_count(LOCAL, "bob"), 2);
}

// ---------------------------------------------------------------------------
// SPF mechanisms
// ---------------------------------------------------------------------------

#[test]
fn spf_ip4_with_a_prefix_length() {
    // 127.0.0.4/31 holds .4 and .5, not .6.
    pass_from_good_refused_from_bad(&[("a.test", txt("v=spf1 ip4:127.0.0.4/31 -all"))]);
}

#[test]
fn spf_record_in_several_strings_is_joined() {
    // RFC 7208 §3.3: the strings of one TXT record are joined without spaces.
    pass_from_good_refused_from_bad(&[("a.test", json!([["TXT", ["v=spf1 ip4:127.0", ".0.5 -", "all"]]]))]);
}

#[test]
fn spf_include_mechanism() {
    pass_from_good_refused_from_bad(&[
        ("a.test", txt("v=spf1 include:_spf.provider.test -all")),
        ("_spf.provider.test", txt("v=spf1 ip4:127.0.0.5 -all")),
    ]);
}

#[test]
fn spf_redirect_modifier() {
    pass_from_good_refused_from_bad(&[
        ("a.test", txt("v=spf1 redirect=_spf.provider.test")),
        ("_spf.provider.test", txt(SPF_GOOD_ONLY)),
    ]);
}

#[test]
fn spf_a_mechanism() {
    pass_from_good_refused_from_bad(&[("a.test", json!([["TXT", "v=spf1 a -all"], ["A", "127.0.0.5"]]))]);
}

#[test]
fn spf_a_mechanism_with_a_domain() {
    pass_from_good_refused_from_bad(&[
        ("a.test", txt("v=spf1 a:out.provider.test/32 -all")),
        ("out.provider.test", json!([["A", "127.0.0.5"], ["A", "192.0.2.1"]])),
    ]);
}

#[test]
fn spf_mx_mechanism() {
    pass_from_good_refused_from_bad(&[
        ("a.test", json!([["TXT", "v=spf1 mx -all"], ["MX", 10, "mx1.a.test."], ["MX", 20, "mx2.a.test."]])),
        ("mx1.a.test", json!([["A", "192.0.2.1"]])),
        ("mx2.a.test", json!([["A", "127.0.0.5"]])),
    ]);
}

#[test]
fn spf_exists_mechanism() {
    pass_from_good_refused_from_bad(&[
        ("a.test", txt("v=spf1 exists:%{i}._allow.a.test -all")),
        ("127.0.0.5._allow.a.test", json!([["A", "127.0.0.2"]])),
    ]);
}

#[test]
fn spf_ip6_does_not_match_an_ipv4_client() {
    let (_dns, t) = setup(&[("a.test", txt("v=spf1 ip6:2001:db8::/32 ip6:::1 ip4:127.0.0.5 ~all"))], "");
    // The ip6 mechanisms fall through to ip4 …
    let (ar, _) = deliver(&t, GOOD_IP, "alice@a.test", "alice@a.test", "ip4 after ip6", 1);
    ar.assert("spf", "pass");
    // … and to ~all.
    let (ar, _) = deliver(&t, BAD_IP, "alice@a.test", "alice@a.test", "all after ip6", 2);
    ar.assert("spf", "softfail");
}

#[test]
fn null_sender_is_checked_by_the_helo_name() {
    let (_dns, t) = setup(&[("helo.a.test", txt(SPF_GOOD_ONLY)), ("a.test", txt("v=spf1 -all"))], "");
    let msg = message("mailer-daemon@a.test", "bounce from allowed host", "");
    let sent = send_full(&t, GOOD_IP, "helo.a.test", "", &[BOB], &msg);
    assert_accepted(&t, &sent);
    let stored = t.wait_one(LOCAL, "bob");
    let ar = tern_ar(&stored);
    ar.assert("spf", "pass");
    assert_eq!(ar.prop("spf", "smtp.helo").as_deref(), Some("helo.a.test"), "smtp.helo in {:?}", ar.raw);
    assert_eq!(ar.prop("spf", "smtp.mailfrom"), None, "no smtp.mailfrom for <>: {:?}", ar.raw);
    assert_received_spf(&stored, "pass", GOOD_IP);

    let msg = message("mailer-daemon@a.test", "bounce from other host", "");
    let sent = send_full(&t, BAD_IP, "helo.a.test", "", &[BOB], &msg);
    assert_refused(&t, &sent, 550, "5.7.23");
    assert_eq!(t.settled_count(LOCAL, "bob"), 1);
}

#[test]
fn null_sender_with_an_address_literal_helo_is_delivered() {
    let (_dns, t) = setup(&[("a.test", txt("v=spf1 -all")), ok_test()], "");
    let msg = message("mailer-daemon@a.test", "literal helo", "");
    let sent = send_full(&t, BAD_IP, "[127.0.0.6]", "", &[BOB], &msg);
    assert_accepted(&t, &sent);
    let ar = tern_ar(&t.wait_one(LOCAL, "bob"));
    let spf = ar.result("spf");
    // RFC 7208 §4.3: a HELO identity that is not a domain name gives "none".
    assert_eq!(spf, "none", "spf= for an address literal HELO: {:?}", ar.raw);
    assert_alive(&t, 1);
}

// ---------------------------------------------------------------------------
// DMARC
// ---------------------------------------------------------------------------

/// `a.test` and `other.test` allow GOOD_IP; `_dmarc.a.test` holds `dmarc`.
fn dmarc_zone(dmarc: &str) -> Vec<(&'static str, Value)> {
    dmarc_zone_records(txt(dmarc))
}

/// Like `dmarc_zone`, with `records` for `_dmarc.a.test`.
fn dmarc_zone_records(records: Value) -> Vec<(&'static str, Value)> {
    vec![("a.test", txt(SPF_GOOD_ONLY)), ("other.test", txt(SPF_GOOD_ONLY)), ("_dmarc.a.test", records), ok_test()]
}

#[test]
fn dmarc_pass_with_an_aligned_spf_domain() {
    let (_dns, t) = setup(&dmarc_zone("v=DMARC1; p=reject"), "");
    let (ar, _) = deliver(&t, GOOD_IP, "alice@a.test", "Alice <alice@a.test>", "aligned", 1);
    ar.assert("spf", "pass");
    ar.assert("dmarc", "pass");
    assert_eq!(ar.prop("dmarc", "header.from").as_deref(), Some("a.test"), "{:?}", ar.raw);
    assert_eq!(ar.prop("dmarc", "policy.dmarc").as_deref(), Some("reject"), "{:?}", ar.raw);
}

#[test]
fn dmarc_reject_refuses_misaligned_mail_with_5_7_1() {
    let (_dns, t) = setup(&dmarc_zone("v=DMARC1; p=reject"), "");
    // SPF passes for other.test, which is not the From domain.
    let sent = send(&t, GOOD_IP, "bounce@other.test", "alice@a.test", "misaligned");
    assert_refused_at_end(&t, &sent, 550, "5.7.1");
    // SPF fails for a.test and a DMARC record exists: DMARC decides.
    let sent = send(&t, BAD_IP, "alice@a.test", "alice@a.test", "spf fail under dmarc");
    assert_refused_at_end(&t, &sent, 550, "5.7.1");
    assert_nothing_delivered(&t);
    assert_alive(&t, 0);
}

/// Sends `msg` (any size) from `ip` to bob@b.test; returns the reply to its end.
fn send_large(t: &Tern, ip: &str, mail_from: &str, msg: &[u8]) -> (u16, String) {
    fs::write(t.path().join("large.eml"), msg).expect("write the message");
    let script = format!(
        "import os, smtplib\n\
         s = smtplib.SMTP('127.0.0.1', int(os.environ['TERN_PORT']), source_address=('{ip}', 0), timeout=60)\n\
         s.ehlo('client.test')\ns.mail('{mail_from}')\ns.rcpt('{BOB}')\n\
         code, text = s.data(open(os.path.join(os.environ['TERN_DIR'], 'large.eml'), 'rb').read())\n\
         print(code, text.decode())\ns.quit()\n"
    );
    let out = t.python_within(&script, Duration::from_secs(90));
    out.assert_success("smtplib client");
    let (code, text) = out.stdout.trim().split_once(' ').expect("code and text");
    (code.parse().expect("a reply code"), text.to_string())
}

/// `message` with its body grown to about `size` bytes.
fn large_message(from: &str, subject: &str, size: usize) -> Vec<u8> {
    let mut msg = message(from, subject, "").into_bytes();
    let mut i = 0;
    while msg.len() < size {
        msg.extend_from_slice(format!("line {i} of a large message\r\n").as_bytes());
        i += 1;
    }
    msg
}

#[test]
fn large_mail_is_checked_within_the_in_flight_budget() {
    let dns = DnsServer::start(&zone(&dmarc_zone("v=DMARC1; p=reject")));
    let t = start_tern_raw(
        &dns,
        &format!(
            "{NO_RELAY}\n[local]\ndomains = [\"{LOCAL}\"]\naccept_unknown = true\n\n\
             [limits]\nmax_inflight_bytes = 1500000\n"
        ),
    );
    let msg = large_message("alice@a.test", "large aligned", 600_000);
    assert_eq!(send_large(&t, GOOD_IP, "alice@a.test", &msg).0, 250);
    let stored = t.wait_one(LOCAL, "bob");
    assert_delivered(&stored, "alice@a.test", &msg);
    let ar = tern_ar(&stored);
    ar.assert("spf", "pass");
    ar.assert("dmarc", "pass");
    // Refused by DMARC at the end of the data: nothing of it stays.
    let msg = large_message("alice@a.test", "large misaligned", 600_000);
    let (code, text) = send_large(&t, GOOD_IP, "bounce@other.test", &msg);
    assert_eq!((code, text.contains("5.7.1")), (550, true), "{code} {text}");
    assert_eq!(t.spilled(), 0, "a refused message kept its content");
    assert_eq!(fs::read_dir(t.data_dir.join("tmp")).unwrap().count(), 0);
    // Twice the whole budget: checked all the same, since the checks hold only the
    // header block and the body hashes made as the content arrived.
    let msg = large_message("alice@a.test", "larger than the budget", 3_000_000);
    assert_eq!(send_large(&t, GOOD_IP, "alice@a.test", &msg).0, 250);
    let mails = t.wait_mail(LOCAL, "bob", 2);
    assert_eq!(mails.len(), 2, "the refused message was delivered");
    let stored = mails.iter().find(|m| contains(m, b"larger than the budget")).expect("the large message");
    assert_delivered(stored, "alice@a.test", &msg);
    tern_ar(stored).assert("dmarc", "pass");
}

#[test]
fn dmarc_quarantine_delivers_to_the_junk_folder() {
    let (_dns, t) = setup(&dmarc_zone("v=DMARC1; p=quarantine"), "");
    let msg = message("alice@a.test", "quarantined", "");
    let sent = send_full(&t, GOOD_IP, "client.test", "bounce@other.test", &[BOB, "carol@b.test"], &msg);
    assert_accepted(&t, &sent);
    for user in ["bob", "carol"] {
        let junk = wait_junk(&t, user, 1);
        assert_eq!(junk.len(), 1, "one message in {user}'s Junk folder");
        let ar = tern_ar(&junk[0]);
        ar.assert("dmarc", "fail");
        assert_eq!(ar.prop("dmarc", "policy.dmarc").as_deref(), Some("quarantine"), "{:?}", ar.raw);
        assert!(t.new_files(LOCAL, user).is_empty(), "quarantined mail also in {user}'s INBOX");
    }
    // Aligned mail from the same domain goes to the INBOX.
    let (ar, _) = deliver(&t, GOOD_IP, "alice@a.test", "alice@a.test", "aligned", 1);
    ar.assert("dmarc", "pass");
    assert_eq!(list_files(&junk_dir(&t, "bob")).len(), 1, "aligned mail went to Junk");
}

#[test]
fn dmarc_none_policy_failure_is_delivered_to_the_inbox() {
    let (_dns, t) = setup(&dmarc_zone("v=DMARC1; p=none"), "");
    let (ar, _) = deliver(&t, GOOD_IP, "bounce@other.test", "alice@a.test", "monitored", 1);
    ar.assert("spf", "pass");
    ar.assert("dmarc", "fail");
    assert_eq!(ar.prop("dmarc", "policy.dmarc").as_deref(), Some("none"), "{:?}", ar.raw);
    assert!(list_files(&junk_dir(&t, "bob")).is_empty(), "p=none failure went to Junk");
}

#[test]
fn dmarc_strict_spf_alignment_refuses_a_subdomain_bounce_address() {
    let mut entries = dmarc_zone("v=DMARC1; p=reject; aspf=s");
    entries.push(("bounce.a.test", txt(SPF_GOOD_ONLY)));
    let (_dns, t) = setup(&entries, "");
    let sent = send(&t, GOOD_IP, "bounce@bounce.a.test", "alice@a.test", "strict");
    assert_refused_at_end(&t, &sent, 550, "5.7.1");
    // The exact domain still aligns.
    let (ar, _) = deliver(&t, GOOD_IP, "alice@a.test", "alice@a.test", "strict exact", 1);
    ar.assert("dmarc", "pass");
}

#[test]
fn dmarc_relaxed_spf_alignment_accepts_a_subdomain_bounce_address() {
    let mut entries = dmarc_zone("v=DMARC1; p=reject; aspf=r");
    entries.push(("bounce.a.test", txt(SPF_GOOD_ONLY)));
    let (_dns, t) = setup(&entries, "");
    let (ar, _) = deliver(&t, GOOD_IP, "bounce@bounce.a.test", "alice@a.test", "relaxed", 1);
    ar.assert("spf", "pass");
    ar.assert("dmarc", "pass");
    assert_eq!(ar.prop("dmarc", "header.from").as_deref(), Some("a.test"), "{:?}", ar.raw);
}

#[test]
fn dmarc_relaxed_alignment_is_the_default() {
    let mut entries = dmarc_zone("v=DMARC1; p=reject");
    entries.push(("bounce.a.test", txt(SPF_GOOD_ONLY)));
    let (_dns, t) = setup(&entries, "");
    let (ar, _) = deliver(&t, GOOD_IP, "bounce@bounce.a.test", "alice@a.test", "relaxed by default", 1);
    ar.assert("dmarc", "pass");
}

#[test]
fn dmarc_subdomain_policy_applies_to_subdomains() {
    let mut entries = dmarc_zone("v=DMARC1; p=none; sp=reject");
    entries.push(("sub.a.test", json!([["A", "127.0.0.2"], ["MX", 10, "mx.a.test."]])));
    let (_dns, t) = setup(&entries, "");
    // sub.a.test has no record of its own: the organizational domain's sp= applies.
    let sent = send(&t, GOOD_IP, "bounce@other.test", "alice@sub.a.test", "subdomain");
    assert_refused_at_end(&t, &sent, 550, "5.7.1");
    // The organizational domain itself gets p=none.
    let (ar, _) = deliver(&t, GOOD_IP, "bounce@other.test", "alice@a.test", "org domain", 1);
    ar.assert("dmarc", "fail");
    assert_eq!(ar.prop("dmarc", "policy.dmarc").as_deref(), Some("none"), "{:?}", ar.raw);
}

#[test]
fn dmarc_not_enforced_delivers_a_reject_policy_failure() {
    let (_dns, t) = setup(&dmarc_zone("v=DMARC1; p=reject"), "enforce_dmarc = false");
    let (ar, _) = deliver(&t, GOOD_IP, "bounce@other.test", "alice@a.test", "not enforced", 1);
    ar.assert("dmarc", "fail");
    assert!(list_files(&junk_dir(&t, "bob")).is_empty(), "went to Junk");
}

#[test]
fn dmarc_temperror_is_deferred_with_451() {
    let entries = dmarc_zone_records(json!([["SERVFAIL"]]));
    let (_dns, t) = setup(&entries, "");
    let sent = send(&t, GOOD_IP, "alice@a.test", "alice@a.test", "dmarc servfail");
    assert_deferred(&t, &sent);
    assert_nothing_delivered(&t);
    assert_alive(&t, 0);
}

#[test]
fn dmarc_temperror_is_delivered_when_temp_error_is_accept() {
    let entries = dmarc_zone_records(json!([["SERVFAIL"]]));
    let (_dns, t) = setup(&entries, "temp_error = \"accept\"");
    let (ar, _) = deliver(&t, GOOD_IP, "alice@a.test", "alice@a.test", "dmarc servfail accepted", 1);
    ar.assert("spf", "pass");
    ar.assert("dmarc", "temperror");
}

#[test]
fn dmarc_pct_zero_softens_reject_to_quarantine() {
    // pct=0: no failing message is in the sample (RFC 7489 §6.6.4).
    let (_dns, t) = setup(&dmarc_zone("v=DMARC1; p=reject; pct=0"), "");
    let sent = send(&t, GOOD_IP, "bounce@other.test", "alice@a.test", "outside the sample");
    assert_accepted(&t, &sent);
    let junk = wait_junk(&t, "bob", 1);
    let ar = tern_ar(&junk[0]);
    ar.assert("dmarc", "fail");
    assert_eq!(ar.prop("dmarc", "policy.dmarc").as_deref(), Some("quarantine"), "{:?}", ar.raw);
}

#[test]
fn dmarc_pct_zero_softens_quarantine_to_none() {
    let (_dns, t) = setup(&dmarc_zone("v=DMARC1; p=quarantine; pct=0"), "");
    let (ar, _) = deliver(&t, GOOD_IP, "bounce@other.test", "alice@a.test", "outside the sample", 1);
    ar.assert("dmarc", "fail");
    assert_eq!(ar.prop("dmarc", "policy.dmarc").as_deref(), Some("none"), "{:?}", ar.raw);
    assert!(list_files(&junk_dir(&t, "bob")).is_empty(), "went to Junk");
}

#[test]
fn dmarc_two_records_mean_no_policy_in_either_order() {
    // RFC 7489 §6.6.3: several v=DMARC1 records end policy discovery.
    let reject = "v=DMARC1; p=reject";
    let none = "v=DMARC1; p=none";
    for (n, records) in
        [json!([["TXT", reject], ["TXT", none]]), json!([["TXT", none], ["TXT", reject]])].into_iter().enumerate()
    {
        let (_dns, t) = setup(&dmarc_zone_records(records), "");
        let (ar, _) = deliver(&t, GOOD_IP, "bounce@other.test", "alice@a.test", "two records", 1);
        ar.assert("spf", "pass");
        ar.assert("dmarc", "none");
        assert!(list_files(&junk_dir(&t, "bob")).is_empty(), "order {n}: went to Junk");
    }
    // A TXT record that is not DMARC's does not count.
    let records = json!([["TXT", "v=spf1 -all"], ["TXT", reject]]);
    let (_dns, t) = setup(&dmarc_zone_records(records), "");
    let sent = send(&t, GOOD_IP, "bounce@other.test", "alice@a.test", "one record and another");
    assert_refused_at_end(&t, &sent, 550, "5.7.1");
}

#[test]
fn dmarc_invalid_policy_with_a_report_address_acts_as_none() {
    // RFC 7489 §6.6.3 step 6.
    let (_dns, t) = setup(&dmarc_zone("v=DMARC1; p=bogus; rua=mailto:dmarc@a.test"), "");
    let (ar, _) = deliver(&t, GOOD_IP, "bounce@other.test", "alice@a.test", "invalid policy", 1);
    ar.assert("dmarc", "fail");
    assert_eq!(ar.prop("dmarc", "policy.dmarc").as_deref(), Some("none"), "{:?}", ar.raw);
    // Without a report address there is no DMARC at all.
    let (_dns, t) = setup(&dmarc_zone("v=DMARC1; p=bogus"), "");
    let (ar, _) = deliver(&t, GOOD_IP, "bounce@other.test", "alice@a.test", "invalid policy", 1);
    ar.assert("dmarc", "none");
}

#[test]
fn forged_authentication_results_are_removed_and_foreign_ones_kept() {
    let (_dns, t) = setup(&[("a.test", txt(SPF_GOOD_ONLY))], "");
    let forged = "Authentication-Results: tern.test; spf=pass smtp.mailfrom=forged1@a.test; dmarc=pass\r\n\
                  Authentication-Results:\r\n\tTERN.Test;\r\n\tdkim=pass header.d=forged2.test\r\n\
                  Authentication-Results: tern.test (forged3); arc=pass\r\n\
                  authentication-results: tern.test; dkim=pass header.d=forged4.test\r\n\
                  Authentication-Results: \"tern.test\"; spf=pass smtp.mailfrom=forged5@a.test\r\n\
                  Authentication-Results : tern.test; dkim=pass header.d=forged6.test\r\n\
                  Authentication-Results: mx.other.test; spf=fail smtp.mailfrom=foreign1@other.test\r\n\
                  Authentication-Results: tern.test.example; dkim=pass header.d=foreign2.test\r\n";
    let msg = message("alice@a.test", "forged results", forged);
    let sent = send_full(&t, GOOD_IP, "client.test", "alice@a.test", &[BOB], &msg);
    assert_accepted(&t, &sent);
    let stored = t.wait_one(LOCAL, "bob");
    let ar = tern_ar(&stored);
    ar.assert("spf", "pass");
    for forged in ["forged1", "forged2", "forged3", "forged4", "forged5", "forged6"] {
        assert!(!contains(&stored, forged.as_bytes()), "{forged} kept:\n{}", show(&stored));
    }
    let ids: Vec<String> = all_ar(&stored).iter().map(|a| a.authserv_id.to_ascii_lowercase()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ["mx.other.test", "tern.test", "tern.test.example"], "A-R headers kept: {ids:?}");
    for foreign in ["foreign1@other.test", "foreign2.test"] {
        assert_eq!(count(&stored, foreign.as_bytes()), 1, "{foreign} not kept once:\n{}", show(&stored));
    }
    let (_, body) = split_message(&stored);
    assert_eq!(body, b"Body of forged results.\r\n");
}

// ---------------------------------------------------------------------------
// DKIM
// ---------------------------------------------------------------------------

/// An Ed25519 key: (signing key, DNS key record).
fn dkim_key() -> (mail_auth::common::crypto::Ed25519Key, String) {
    use mail_auth::common::crypto::Ed25519Key;
    let der = Ed25519Key::generate_pkcs8().expect("generate key");
    let key = Ed25519Key::from_pkcs8_der(&der).expect("load key");
    let record =
        format!("v=DKIM1; k=ed25519; p={}", base64::engine::general_purpose::STANDARD.encode(key.public_key()));
    (key, record)
}

/// `msg` with a DKIM-Signature for `domain` (selector `sel`) prepended.
fn dkim_sign(key: mail_auth::common::crypto::Ed25519Key, domain: &str, msg: &str) -> String {
    use mail_auth::common::headers::HeaderWriter;
    let signature = mail_auth::dkim::DkimSigner::from_key(key)
        .domain(domain)
        .selector("sel")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(msg.as_bytes())
        .expect("sign");
    format!("{}{msg}", signature.to_header())
}

#[test]
fn dkim_pass_aligns_dmarc_when_spf_fails() {
    let (key, record) = dkim_key();
    let mut entries = dmarc_zone("v=DMARC1; p=reject");
    entries.push(("sel._domainkey.a.test", txt(&record)));
    let (_dns, t) = setup(&entries, "");
    // A second, broken signature (its key does not exist) is reported too.
    let broken = "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=other.test; s=nokey;\r\n\
                  \th=from:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\r\n";
    let signed = dkim_sign(key, "a.test", &message("alice@a.test", "signed", broken));
    let sent = send_full(&t, BAD_IP, "client.test", "alice@a.test", &[BOB], &signed);
    assert_accepted(&t, &sent);
    let stored = t.wait_one(LOCAL, "bob");
    let ar = tern_ar(&stored);
    ar.assert("spf", "fail");
    ar.assert("dmarc", "pass");
    let dkim = ar.results("dkim");
    assert_eq!(dkim.len(), 2, "one dkim= result per signature: {:?}", ar.raw);
    assert!(dkim.contains(&"pass".to_string()), "{:?}", ar.raw);
    assert!(
        dkim.iter().any(|r| ["permerror", "fail", "neutral"].contains(&r.as_str())),
        "the broken signature's result: {:?}",
        ar.raw
    );
    let pass = ar.parts.iter().find(|p| p.method == "dkim" && p.result == "pass").unwrap();
    let d = pass.props.iter().find(|(k, _)| k == "header.d").map(|(_, v)| v.as_str());
    assert_eq!(d, Some("a.test"), "{:?}", ar.raw);
    assert_received_spf(&stored, "fail", BAD_IP);
}

#[test]
fn dkim_signature_broken_in_transit_fails_dmarc() {
    let (key, record) = dkim_key();
    let mut entries = dmarc_zone("v=DMARC1; p=reject");
    entries.push(("sel._domainkey.a.test", txt(&record)));
    let (_dns, t) = setup(&entries, "");
    let signed = dkim_sign(key, "a.test", &message("alice@a.test", "tampered", ""));
    let tampered = signed.replace("Body of tampered.", "Body of something else.");
    let sent = send_full(&t, BAD_IP, "client.test", "alice@a.test", &[BOB], &tampered);
    assert_refused_at_end(&t, &sent, 550, "5.7.1");
    assert_nothing_delivered(&t);
}

#[test]
fn spf_temperror_with_a_dkim_dmarc_pass_is_delivered() {
    let (key, record) = dkim_key();
    let entries = vec![
        ("a.test", json!([["SERVFAIL"]])),
        ("_dmarc.a.test", txt("v=DMARC1; p=reject")),
        ("sel._domainkey.a.test", txt(&record)),
    ];
    let (_dns, t) = setup(&entries, "");
    let signed = dkim_sign(key, "a.test", &message("alice@a.test", "dkim saves it", ""));
    let sent = send_full(&t, GOOD_IP, "client.test", "alice@a.test", &[BOB], &signed);
    assert_accepted(&t, &sent);
    let ar = tern_ar(&t.wait_one(LOCAL, "bob"));
    ar.assert("spf", "temperror");
    ar.assert("dkim", "pass");
    ar.assert("dmarc", "pass");
}

#[test]
fn garbage_dkim_signatures_do_not_stop_delivery() {
    let mut entries = dmarc_zone("v=DMARC1; p=reject");
    entries.push(("sel._domainkey.a.test", txt("v=DKIM1; k=rsa; p=!!!this-is-not-base64!!!")));
    let (_dns, t) = setup(&entries, "");
    let long_bh: String = "QUFB".repeat(1000);
    let folded: Vec<&str> = long_bh.as_bytes().chunks(72).map(|c| std::str::from_utf8(c).unwrap()).collect();
    let garbage = format!(
        "DKIM-Signature: v=1; a=rsa-sha256; d=a.test; s=sel; c=relaxed/relaxed; h=from:to;\r\n\
         \tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=dGhpcyBpcyBub3QgYSBzaWduYXR1cmU=\r\n\
         DKIM-Signature: ;;==;; v=9; a=none; b=; ===; d=\r\n\
         DKIM-Signature: v=1; a=rsa-sha256; d=a.test; s=sel; h=from; bh=\r\n\t{}; b=%%%%\r\n\
         DKIM-Signature:\r\n",
        folded.join("\r\n\t")
    );
    let msg = message("alice@a.test", "garbage signatures", &garbage);
    let sent = send_full(&t, GOOD_IP, "client.test", "alice@a.test", &[BOB], &msg);
    assert_accepted(&t, &sent);
    let stored = t.wait_one(LOCAL, "bob");
    let ar = tern_ar(&stored);
    let dkim = ar.results("dkim");
    assert!(!dkim.is_empty(), "no dkim= result: {:?}", ar.raw);
    assert!(
        dkim.iter().all(|r| ["permerror", "neutral", "fail"].contains(&r.as_str())),
        "dkim results for garbage signatures: {:?}",
        ar.raw
    );
    ar.assert("spf", "pass");
    ar.assert("dmarc", "pass");
    assert_alive(&t, 1);
}

// ---------------------------------------------------------------------------
// Bad DNS data and slow DNS
// ---------------------------------------------------------------------------

#[test]
fn huge_spf_record_is_read_over_tcp() {
    // About 4000 bytes: far more than a UDP answer holds.
    let mut record = String::from("v=spf1");
    let mut i = 0u32;
    while record.len() < 4000 {
        record.push_str(&format!(" ip4:10.{}.{}.0/24", i / 250, i % 250));
        i += 1;
    }
    record.push_str(" ip4:127.0.0.5 -all");
    assert!(record.len() > 4000);
    let (_dns, t) = setup(&[("a.test", txt(&record)), ok_test()], "");
    let (ar, _) = deliver(&t, GOOD_IP, "alice@a.test", "alice@a.test", "huge record", 1);
    ar.assert("spf", "pass");
    let sent = send(&t, BAD_IP, "alice@a.test", "alice@a.test", "huge record other client");
    assert_refused(&t, &sent, 550, "5.7.23");
    assert_alive(&t, 1);
}

#[test]
fn malformed_dmarc_record_does_not_refuse() {
    let (_dns, t) = setup(&dmarc_zone("v=DMARC1; p=bogus; sp=; adkim=x;; pct=abc; rua=not a uri"), "");
    let (ar, _) = deliver(&t, GOOD_IP, "bounce@other.test", "alice@a.test", "malformed dmarc", 1);
    ar.assert("spf", "pass");
    let dmarc = ar.result("dmarc");
    assert!(dmarc == "none" || dmarc == "permerror", "dmarc= for a malformed record: {:?}", ar.raw);
    assert!(list_files(&junk_dir(&t, "bob")).is_empty(), "went to Junk");
    assert_alive(&t, 1);
}

#[test]
fn unanswered_dns_is_bounded_by_the_timeout() {
    let silent = json!([["TIMEOUT"]]);
    let entries = vec![
        ("a.test", silent.clone()),
        ("_dmarc.a.test", silent.clone()),
        ("s1._domainkey.a.test", silent.clone()),
        ("s2._domainkey.a.test", silent.clone()),
        ok_test(),
    ];
    let (_dns, t) = setup(&entries, "timeout = \"3s\"");
    let sigs = "DKIM-Signature: v=1; a=rsa-sha256; d=a.test; s=s1; h=from; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\r\n\
                DKIM-Signature: v=1; a=rsa-sha256; d=a.test; s=s2; h=from; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\r\n";
    let started = Instant::now();
    let sent =
        send_full(&t, GOOD_IP, "client.test", "alice@a.test", &[BOB], &message("alice@a.test", "silent dns", sigs));
    let elapsed = started.elapsed();
    eprintln!(
        "MAIL reply {:.1} s, DATA to the end reply {:.1} s, in all {:.1} s",
        sent.mail_secs, sent.data_secs, sent.secs
    );
    assert_deferred(&t, &sent);
    assert!(sent.data_secs < 15.0, "the end of DATA took {:.1} s (budget 3 s)", sent.data_secs);
    assert!(sent.secs < 15.0, "checks took {:.1} s from MAIL to the last reply (budget 3 s)", sent.secs);
    assert!(elapsed < Duration::from_secs(20), "the whole transaction took {elapsed:?}");
    assert_nothing_delivered(&t);
    assert_alive(&t, 0);
}

#[test]
fn unanswered_dmarc_lookup_is_deferred_within_the_timeout() {
    let entries = dmarc_zone_records(json!([["TIMEOUT"]]));
    let (_dns, t) = setup(&entries, "timeout = \"3s\"");
    let sent = send(&t, GOOD_IP, "alice@a.test", "alice@a.test", "silent dmarc");
    eprintln!(
        "MAIL reply {:.1} s, DATA to the end reply {:.1} s, in all {:.1} s",
        sent.mail_secs, sent.data_secs, sent.secs
    );
    assert_deferred(&t, &sent);
    assert!(sent.data_secs < 15.0, "the end of DATA took {:.1} s (budget 3 s)", sent.data_secs);
    assert!(sent.secs < 15.0, "checks took {:.1} s from MAIL to the last reply (budget 3 s)", sent.secs);
    assert_alive(&t, 0);
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

#[test]
fn disabled_checks_add_no_headers_and_refuse_nothing() {
    let (_dns, t) = setup(&dmarc_zone("v=DMARC1; p=reject"), "enabled = false");
    let sent = send(&t, BAD_IP, "bounce@other.test", "alice@a.test", "unchecked");
    assert_accepted(&t, &sent);
    let stored = t.wait_one(LOCAL, "bob");
    assert!(all_ar(&stored).is_empty(), "Authentication-Results added:\n{}", show(&stored));
    assert_eq!(received_spf(&stored), None, "Received-SPF added:\n{}", show(&stored));
}

#[test]
fn received_spf_can_be_turned_off() {
    let (_dns, t) = setup(&[("a.test", txt(SPF_GOOD_ONLY))], "received_spf = false");
    let (ar, stored) = deliver(&t, GOOD_IP, "alice@a.test", "alice@a.test", "no received-spf", 1);
    ar.assert("spf", "pass");
    assert_eq!(received_spf(&stored), None, "Received-SPF added:\n{}", show(&stored));
}

#[test]
fn clients_in_relay_networks_are_not_checked() {
    let dns = DnsServer::start(&zone(&dmarc_zone("v=DMARC1; p=reject")));
    let t = start_tern_raw(
        &dns,
        &format!(
            "\n[relay]\nnetworks = [\"127.0.0.6/32\"]\n\n[local]\ndomains = [\"{LOCAL}\"]\naccept_unknown = true\n"
        ),
    );
    // 127.0.0.6 is trusted: SPF -all and DMARC p=reject do not apply to it.
    let sent = send(&t, BAD_IP, "alice@a.test", "alice@a.test", "trusted client");
    assert_accepted(&t, &sent);
    let stored = t.wait_one(LOCAL, "bob");
    assert!(tern_ars(&stored).is_empty(), "trusted client's mail was checked:\n{}", show(&stored));
    assert_eq!(received_spf(&stored), None, "Received-SPF added:\n{}", show(&stored));
    // 127.0.0.5 is a stranger: checked.
    let (ar, _) = deliver(&t, GOOD_IP, "alice@a.test", "alice@a.test", "stranger", 2);
    ar.assert("spf", "pass");
    ar.assert("dmarc", "pass");
}
