//! REQUIRETLS and `TLS-Required: No` (RFC 8689). A client submits with Python's
//! smtplib after STARTTLS; the sending Tern learns the MTA-STS policy of `remote.test`
//! from the test DNS server and a Python HTTPS server with a test CA, and relays to a
//! scripted peer (which records each command line, and offers STARTTLS and, when told
//! to, REQUIRETLS) or to a second Tern. Everything stays on loopback.

mod common;

use common::outbound::*;
use common::sts::*;
use common::*;
use serde_json::json;
use std::time::Duration;

const BOB: &str = "bob@remote.test";
const DELIVERY: Duration = Duration::from_secs(30);
const MX_HOST: &str = "mx1.remote.test";

/// The sending Tern: MTA-STS on, the CA trusted, and a certificate so that clients
/// can use STARTTLS.
fn sender(ca: &Ca, dns: &DnsServer, port: u16) -> Tern {
    let (cert, key) = ca.issue("mail.local.test");
    let base = format!("{}\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n", sender_base(""), cert.display(), key.display());
    let outbound = format!("mta_sts = true\nca_file = \"{}\"\n", ca.ca_file().display());
    start_sender(&SenderSetup { extra: &base, dns: Some(dns), peer_port: port, outbound: &outbound })
}

/// A scripted MX peer on `ip:port` with STARTTLS and a certificate for `MX_HOST`;
/// `requiretls` says whether it offers REQUIRETLS.
fn peer(ca: &Ca, ip: &str, port: u16, requiretls: bool) -> FakePeer {
    let (cert, key) = ca.issue(MX_HOST);
    let mut ehlo = vec!["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"];
    if requiretls {
        ehlo.push("REQUIRETLS");
    }
    FakePeer::start(ip, port, &json!({"ehlo": ehlo, "tls": [cert, key]}))
}

/// Submits `msg` after STARTTLS with `mail_options`; returns the queue id.
#[track_caller]
fn submit_tls(t: &Tern, msg: &[u8], mail_options: &[&str]) -> String {
    let path = t.path().join("requiretls.eml");
    std::fs::write(&path, msg).expect("write message");
    let script = format!(
        "s = connect()\ns.starttls()\ns.ehlo('client.test')\nassert s.has_extn('requiretls'), s.esmtp_features\n\
         print(send(s, {SENDER:?}, [{BOB:?}], open({path:?}, 'rb').read(), {mail_options:?}))\ns.quit()\n",
        path = path.display().to_string(),
    );
    let out = t.py(&script);
    out.assert_success("submitting after STARTTLS");
    queue_id(&out.stdout).unwrap_or_else(|| panic!("no queue id in {:?}", out.stdout))
}

/// The notice that came back to the sender's local mailbox.
#[track_caller]
fn bounce(t: &Tern) -> String {
    let dsn = t.wait_mail_within(LOCAL_DOMAIN, "sender", 1, DELIVERY);
    String::from_utf8_lossy(&dsn[0]).into_owned()
}

fn trace(t: &Tern, id: &str) -> String {
    let out = t.tern_cmd(&["queue", "trace", id]);
    out.assert_success("tern queue trace");
    out.stdout
}

#[test]
fn requiretls_relays_over_mta_sts_to_a_peer_that_offers_it() {
    let ca = Ca::new();
    let Some(_sts) = PolicyServer::start(&ca, "127.0.1.1", &policy("enforce", MX_HOST)) else { return };
    let port = peer_port();
    let dns = DnsServer::start(&zone("127.0.1.2", "127.0.1.1", "one"));
    let mx = peer(&ca, "127.0.1.2", port, true);
    let a = sender(&ca, &dns, port);
    let id = submit_tls(&a, &test_message("requiretls relayed", BOB), &["REQUIRETLS"]);
    wait_for(DELIVERY, "the message at the peer", || (!mx.messages().is_empty()).then_some(()), || mx.log());
    wait_queue_empty(&a, DELIVERY);
    let commands = mx.commands();
    let mail = commands.iter().find(|c| c.starts_with("MAIL FROM:")).expect("a MAIL command");
    assert!(mail.ends_with(" REQUIRETLS"), "{mail}");
    assert_eq!(mx.events("TLS").len(), 1, "{}", mx.log());
    assert!(a.logs().contains("requiretls=true"), "{}", a.logs());
    assert_eq!(metric(&a, "tern_requiretls_total{result=\"accepted\"}"), 1.0);
    assert_eq!(metric(&a, "tern_requiretls_total{result=\"relayed\"}"), 1.0);
    assert!(trace(&a, &id).contains("TLS: verified"), "{}", trace(&a, &id));
}

#[test]
fn requiretls_to_a_domain_without_a_policy_bounces_with_5_7_30() {
    let ca = Ca::new();
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.1.4")]));
    let mx = peer(&ca, "127.0.1.4", port, true);
    let a = sender(&ca, &dns, port);
    let id = submit_tls(&a, &test_message("requiretls no policy", BOB), &["REQUIRETLS"]);
    let dsn = bounce(&a);
    assert_eq!(fields(&dsn, "Status"), ["5.7.30"], "{dsn}");
    assert!(dsn.contains("REQUIRETLS support required"), "{dsn}");
    // RFC 8689 §5: the notice returns none of the content.
    assert!(!dsn.contains("Hello from Tern's outbound tests"), "content returned:\n{dsn}");
    assert!(!dsn.contains("Subject: requiretls no policy"), "subject returned:\n{dsn}");
    assert!(dsn.contains("Message-ID: <requiretls-no-policy@local.test>"), "{dsn}");
    assert!(mx.commands().is_empty(), "the peer was contacted: {}", mx.log());
    assert!(trace(&a, &id).contains("neither an MTA-STS policy nor DANE records"), "{}", trace(&a, &id));
    assert_eq!(metric(&a, "tern_requiretls_total{result=\"bounced\"}"), 1.0);
}

#[test]
fn requiretls_to_a_verified_peer_without_requiretls_bounces_with_5_7_30() {
    let ca = Ca::new();
    let Some(_sts) = PolicyServer::start(&ca, "127.0.1.5", &policy("enforce", MX_HOST)) else { return };
    let port = peer_port();
    let dns = DnsServer::start(&zone("127.0.1.6", "127.0.1.5", "one"));
    let mx = peer(&ca, "127.0.1.6", port, false);
    let a = sender(&ca, &dns, port);
    submit_tls(&a, &test_message("requiretls peer without", BOB), &["REQUIRETLS"]);
    let dsn = bounce(&a);
    assert_eq!(fields(&dsn, "Status"), ["5.7.30"], "{dsn}");
    assert!(dsn.contains("does not offer REQUIRETLS"), "{dsn}");
    assert_eq!(mx.events("TLS").len(), 1, "verified TLS was reached: {}", mx.log());
    assert!(!mx.commands().iter().any(|c| c.starts_with("MAIL")), "MAIL was sent: {}", mx.log());
    wait_queue_empty(&a, DELIVERY);
}

#[test]
fn requiretls_on_a_plaintext_session_is_refused() {
    let t = Tern::start(LOCAL_OPEN);
    let out = t.py("s = connect()\nprint(s.mail('a@local.test', ['REQUIRETLS']))\ns.quit()\n");
    out.assert_success("MAIL with REQUIRETLS in plaintext");
    assert!(out.stdout.contains("530") && out.stdout.contains("5.7.10"), "{}", out.stdout);
    assert!(!t.py("s = connect()\nprint(s.has_extn('requiretls'))\n").stdout.contains("True"));
    assert_eq!(metric(&t, "tern_requiretls_total{result=\"refused\"}"), 1.0);
    assert_eq!(metric(&t, "tern_messages_refused_total{reason=\"requiretls\"}"), 1.0);
}

#[test]
fn tls_required_no_delivers_despite_an_mta_sts_failure() {
    let ca = Ca::new();
    let Some(_sts) = PolicyServer::start(&ca, "127.0.1.7", &policy("enforce", MX_HOST)) else { return };
    let port = peer_port();
    let dns = DnsServer::start(&zone("127.0.1.8", "127.0.1.7", "one"));
    // The MX host's certificate names another host: enforce would defer with 4.7.5.
    let (cert, key) = ca.issue("other.remote.test");
    let mx = start_receiver(
        "127.0.1.8",
        port,
        &format!("\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display()),
    );
    let a = sender(&ca, &dns, port);
    let msg = String::from_utf8(test_message("tls required no", BOB)).unwrap().replacen(
        "\r\n",
        "\r\nTLS-Required: No\r\n",
        1,
    );
    let id = submit_tls(&a, msg.as_bytes(), &[]);
    let stored = mx.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY);
    // RFC 8689 §4.2.2: the header field stays on the relayed message.
    assert!(String::from_utf8_lossy(&stored[0]).contains("TLS-Required: No"));
    wait_queue_empty(&a, DELIVERY);
    assert!(trace(&a, &id).contains("TLS-Required: No"), "{}", trace(&a, &id));
    assert_eq!(metric(&a, "tern_requiretls_total{result=\"policy_ignored\"}"), 1.0);
}

#[test]
fn requiretls_wins_over_tls_required_no() {
    let ca = Ca::new();
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.1.9")]));
    let mx = peer(&ca, "127.0.1.9", port, true);
    let a = sender(&ca, &dns, port);
    let msg = String::from_utf8(test_message("both", BOB)).unwrap().replacen("\r\n", "\r\nTLS-Required: No\r\n", 1);
    submit_tls(&a, msg.as_bytes(), &["REQUIRETLS"]);
    let dsn = bounce(&a);
    assert_eq!(fields(&dsn, "Status"), ["5.7.30"], "{dsn}");
    assert!(mx.commands().is_empty(), "the peer was contacted: {}", mx.log());
}
