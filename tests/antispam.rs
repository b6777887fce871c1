//! `[antispam]` end to end: DNS block and allow lists asked at connect (through the
//! test DNS server) and greylisting at RCPT, with the real binary. Clients take
//! different loopback addresses (127.0.0.x) to be listed or not; the harness's own
//! probes come from 127.0.0.1, which no list names.

mod common;

use common::outbound::*;
use common::*;
use serde_json::json;
use std::fs;
use std::time::{Duration, Instant};

/// Strangers (no relay networks), open local delivery to `localhost`, and no
/// SPF/DKIM/DMARC checks, so that only the anti-abuse layers decide.
const BASE: &str = "\n[relay]\nnetworks = []\n\n[local]\ndomains = [\"localhost\"]\naccept_unknown = true\n\n[auth_checks]\nenabled = false\n";

const LISTS: &str = "\n[antispam]\ndnsbl = [\"bl.test\", \"other-bl.test\"]\ndnswl = [\"wl.test\"]\n";

/// 127.0.0.2 is block-listed (with an explanation), 127.0.0.3 is on both an allow
/// and a block list; the others show how odd answers count.
fn zone() -> serde_json::Value {
    json!({
        "2.0.0.127.bl.test.": [["A", "127.0.0.2"], ["TXT", "Listed for spam, see https://bl.test/127.0.0.2"]],
        "3.0.0.127.other-bl.test.": [["A", "127.0.0.4"]],
        "3.0.0.127.wl.test.": [["A", "127.0.10.1"]],
        "4.0.0.127.bl.test.": [["SERVFAIL"]],
        "4.0.0.127.wl.test.": [["SERVFAIL"]],
        "5.0.0.127.bl.test.": [["TIMEOUT"]],
        "6.0.0.127.bl.test.": [["A", "127.255.255.254"]],
        "7.0.0.127.bl.test.": [["A", "10.0.0.2"]],
    })
}

/// A Tern asking `dns` (the harness otherwise points DNS at a dead port).
fn start_with_dns(extra: &str, dns: &DnsServer) -> Tern {
    let mut t = sender_stopped(&SenderSetup { extra, dns: Some(dns), peer_port: free_port(), outbound: "" });
    t.start_again();
    t
}

/// Connects from `source` and returns the first reply line and whether the server
/// closed the connection right after it.
fn greeting_from(t: &Tern, source: &str) -> (String, bool) {
    let script = format!(
        r#"
s = socket.create_connection(("127.0.0.1", PORT), timeout=20, source_address=({source:?}, 0))
data = b""
while b"\n" not in data:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
s.settimeout(1)
try:
    closed = s.recv(4096) == b""
except socket.timeout:
    closed = False
print(data.decode().strip())
print("CLOSED" if closed else "OPEN")
"#
    );
    let out = t.py_within(&script, Duration::from_secs(30));
    out.assert_success("connecting");
    let mut lines = out.stdout.lines();
    let greeting = lines.next().unwrap_or_default().to_string();
    (greeting, lines.next() == Some("CLOSED"))
}

/// Sends one message from `source` to `rcpt`; prints each reply as `CMD code text`.
/// Stops at the first refusal; returns the printed lines.
fn send_from(t: &Tern, source: &str, sender: &str, rcpt: &str, subject: &str) -> String {
    let script = format!(
        r#"
s = smtplib.SMTP("127.0.0.1", PORT, timeout=30, source_address=({source:?}, 0))
s.ehlo("client.test")
code, text = s.mail({sender:?})
print("MAIL", code, text.decode())
code, text = s.rcpt({rcpt:?})
print("RCPT", code, text.decode())
if code == 250:
    code, text = s.data(b"Subject: {subject}\r\n\r\nHello.\r\n")
    print("DATA", code, text.decode())
s.quit()
"#
    );
    let out = t.py_within(&script, Duration::from_secs(30));
    out.assert_success("sending with smtplib");
    out.stdout
}

#[track_caller]
fn assert_delivered_from(t: &Tern, source: &str, user: &str) {
    let out = send_from(t, source, "alice@sender.test", &format!("{user}@localhost"), user);
    assert!(out.contains("DATA 250"), "client {source} not served:\n{out}\n{}", t.logs());
    let mail = t.wait_one("localhost", user);
    assert!(contains(&mail, format!("Subject: {user}").as_bytes()), "{}", show(&mail));
}

#[test]
fn a_listed_client_is_refused_at_connect() {
    let dns = DnsServer::start(&zone());
    let t = start_with_dns(&format!("{BASE}{LISTS}"), &dns);
    let (greeting, closed) = greeting_from(&t, "127.0.0.2");
    assert_eq!(greeting, "554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test");
    assert!(closed, "the connection stays open after the refusal");
    let logs = t.logs();
    assert!(logs.contains("Listed for spam, see https://bl.test/127.0.0.2"), "TXT not logged:\n{logs}");
    assert!(logs.contains("bl.test"), "{logs}");
    // Nothing got through.
    assert!(t.all_delivered().is_empty());
}

#[test]
fn unlisted_clients_and_odd_answers_are_served() {
    let dns = DnsServer::start(&zone());
    let t = start_with_dns(&format!("{BASE}{LISTS}"), &dns);
    // Not in any list, SERVFAIL from the lists, a "query refused" code, and an
    // answer outside 127/8: all served.
    for (source, user) in [("127.0.0.9", "nine"), ("127.0.0.4", "four"), ("127.0.0.6", "six"), ("127.0.0.7", "seven")] {
        let (greeting, _) = greeting_from(&t, source);
        assert!(greeting.starts_with("220 "), "{source}: {greeting}");
        assert_delivered_from(&t, source, user);
    }
    let logs = t.logs();
    assert!(logs.contains("refused the query"), "refusal code not logged:\n{logs}");
}

#[test]
fn an_unanswered_list_means_not_listed() {
    let dns = DnsServer::start(&zone());
    let t = start_with_dns(&format!("{BASE}{LISTS}"), &dns);
    let started = Instant::now();
    let (greeting, closed) = greeting_from(&t, "127.0.0.5");
    let waited = started.elapsed();
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(!closed);
    // The lists get a bounded time, then the client is greeted.
    assert!(waited < Duration::from_secs(10), "greeting took {waited:?}");
    assert!(t.logs().contains("did not answer in time"), "{}", t.logs());
}

#[test]
fn an_allow_list_wins_over_block_lists_and_greylisting() {
    let dns = DnsServer::start(&zone());
    let grey = "\n[antispam.greylisting]\nenabled = true\ndelay = \"60s\"\n";
    let t = start_with_dns(&format!("{BASE}{LISTS}{grey}"), &dns);
    // On wl.test and on other-bl.test: served, and not greylisted.
    assert_delivered_from(&t, "127.0.0.3", "allowed");
    // Greylisting is on: a client on no list is deferred.
    let out = send_from(&t, "127.0.0.9", "alice@sender.test", "bob@localhost", "grey");
    assert!(out.contains("RCPT 451 4.7.1 Greylisted, try again in 60 seconds"), "{out}");
}

#[test]
fn greylisting_defers_a_new_triplet_and_remembers_it_across_a_restart() {
    let grey = "\n[antispam.greylisting]\nenabled = true\ndelay = \"2s\"\n";
    let mut t = Tern::start(&format!("{BASE}{grey}"));
    let first = send_from(&t, "127.0.0.1", "Alice@Sender.test", "bob@localhost", "first");
    assert!(first.contains("RCPT 451 4.7.1 Greylisted, try again in 2 seconds"), "{first}");
    let again = send_from(&t, "127.0.0.1", "alice@sender.test", "bob@localhost", "again");
    assert!(again.contains("RCPT 451 4.7.1 Greylisted"), "an immediate retry is deferred too: {again}");
    assert!(t.all_delivered().is_empty());
    std::thread::sleep(Duration::from_millis(2300));
    // A retry after the delay, from another host of the same /24 and in other case.
    let retry = send_from(&t, "127.0.0.77", "ALICE@sender.test", "Bob@localhost", "retry");
    assert!(retry.contains("RCPT 250") && retry.contains("DATA 250"), "{retry}\n{}", t.logs());
    t.wait_one("localhost", "bob");
    assert!(t.data_dir.join("greylist").is_file());

    t.restart();
    let after = send_from(&t, "127.0.0.1", "alice@sender.test", "bob@localhost", "after");
    assert!(after.contains("DATA 250"), "passed triplet forgotten by the restart: {after}");
    t.wait_mail("localhost", "bob", 2);
    // Another recipient is a new triplet.
    let other = send_from(&t, "127.0.0.1", "alice@sender.test", "carol@localhost", "other");
    assert!(other.contains("RCPT 451 4.7.1"), "{other}");
    let text = fs::read_to_string(t.data_dir.join("greylist")).expect("greylist file");
    assert!(!text.contains("alice") && !text.contains("localhost"), "addresses kept in clear: {text}");
}

#[test]
fn greylisting_is_off_by_default() {
    let t = Tern::start(BASE);
    assert_delivered_from(&t, "127.0.0.1", "bob");
    assert!(!t.data_dir.join("greylist").exists());
}
