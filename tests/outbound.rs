//! Outbound delivery end to end: a sending Tern finds the next hop through a
//! test DNS server and hands mail to fake remote servers (Postfix's
//! smtp-sink, a scriptable Python server, or a second Tern) listening on
//! 127.0.0.2, 127.0.0.3, … at one port. Everything stays on loopback.

mod common;

use common::outbound::*;
use common::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::fs;
use std::thread;
use std::time::Duration;

const BOB: &str = "bob@remote.test";

/// Long enough for a few one-second retries and a Tern start-up.
const DELIVERY: Duration = Duration::from_secs(30);

fn setup<'a>(extra: &'a str, dns: Option<&'a DnsServer>, peer_port: u16) -> SenderSetup<'a> {
    SenderSetup { extra, dns, peer_port, outbound: "" }
}

/// The single notice that lands in the sender's Maildir, as text.
#[track_caller]
fn wait_notice(a: &Tern) -> String {
    let mails = a.wait_mail_within(LOCAL_DOMAIN, "sender", 1, DELIVERY);
    assert_eq!(mails.len(), 1, "expected one notice for {SENDER}");
    let text = String::from_utf8_lossy(&mails[0]).into_owned();
    assert!(text.starts_with("Return-Path: <>\r\n"), "a notice has a null sender:\n{text}");
    assert!(text.contains("multipart/report; report-type=delivery-status"), "not an RFC 3464 report:\n{text}");
    text
}

/// Checks the RFC 3464 fields of a failure report for `rcpt`; returns the
/// Diagnostic-Code value.
#[track_caller]
fn assert_failed(dsn: &str, rcpt: &str, status: &str) -> String {
    assert_eq!(fields(dsn, "Reporting-MTA"), [format!("dns; {HOSTNAME}")], "{dsn}");
    assert_eq!(fields(dsn, "Final-Recipient"), [format!("rfc822; {rcpt}")], "{dsn}");
    assert_eq!(fields(dsn, "Action"), ["failed"], "{dsn}");
    assert_eq!(fields(dsn, "Status"), [status], "{dsn}");
    let diag = fields(dsn, "Diagnostic-Code");
    assert_eq!(diag.len(), 1, "one Diagnostic-Code expected:\n{dsn}");
    diag[0].clone()
}

/// Checks that `stored` (at the receiving Tern) is `sent` with exactly two
/// Received headers: the receiving Tern's, then the sending Tern's naming
/// queue id `id`.
#[track_caller]
fn assert_relayed_intact(stored: &[u8], sent: &[u8], id: &str) {
    assert_delivered(stored, SENDER, sent);
    let received = received_headers(stored);
    assert_eq!(received.len(), 2, "one Received header from each Tern expected: {received:#?}");
    assert!(received[0].contains("from tern.test"), "receiving Tern's header names the sending Tern: {received:#?}");
    assert!(received[1].contains(&format!("id {id}")), "sending Tern's header names its queue id {id}: {received:#?}");
    assert!(received[1].contains("from client.test"), "{received:#?}");
}

#[test]
fn delivers_to_the_most_preferred_mx() {
    let port = peer_port();
    // The less preferred host is listed first: order in DNS must not matter.
    let dns = DnsServer::start(&mx_zone(&[(20, "127.0.0.3"), (10, "127.0.0.2")]));
    let best = start_receiver("127.0.0.2", port, "");
    let backup = start_receiver("127.0.0.3", port, "");
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));
    let msg = test_message("best mx", BOB);
    let id = send_message(&a, SENDER, &[BOB], &msg, &[]);
    let stored = best.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY);
    assert_eq!(stored.len(), 1);
    assert_relayed_intact(&stored[0], &msg, &id);
    wait_queue_empty(&a, DELIVERY);
    assert_eq!(backup.settled_count(REMOTE_DOMAIN, "bob"), 0, "the backup MX got a copy");
    assert!(a.all_delivered().is_empty(), "delivered locally as well: {:?}", a.all_delivered());
}

#[test]
fn falls_back_to_the_next_mx_when_the_first_refuses_connections() {
    let port = peer_port();
    // Nothing listens on 127.0.0.2: connections there are refused.
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2"), (20, "127.0.0.3")]));
    let second = start_receiver("127.0.0.3", port, "");
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));
    let msg = test_message("second mx", BOB);
    let id = send_message(&a, SENDER, &[BOB], &msg, &[]);
    let stored = second.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY);
    assert_eq!(stored.len(), 1);
    assert_relayed_intact(&stored[0], &msg, &id);
    wait_queue_empty(&a, DELIVERY);
    assert!(a.all_delivered().is_empty(), "a notice was sent: {:?}", a.all_delivered());
}

#[test]
fn without_mx_records_the_address_record_is_used() {
    let port = peer_port();
    let dns = DnsServer::start(&json!({ "remote.test.": [["A", "127.0.0.2"]] }));
    let b = start_receiver("127.0.0.2", port, "");
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));
    let msg = test_message("implicit mx", BOB);
    let id = send_message(&a, SENDER, &[BOB], &msg, &[]);
    let stored = b.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY);
    assert_eq!(stored.len(), 1);
    assert_relayed_intact(&stored[0], &msg, &id);
    wait_queue_empty(&a, DELIVERY);
}

#[test]
fn null_mx_bounces_with_5_1_10() {
    let port = peer_port();
    let dns = DnsServer::start(&json!({ "remote.test.": [["MX", 0, "."]] }));
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));
    let msg = test_message("null mx", BOB);
    let id = send_message(&a, SENDER, &[BOB], &msg, &[]);
    let dsn = wait_notice(&a);
    let diag = assert_failed(&dsn, BOB, "5.1.10");
    assert!(diag.to_lowercase().contains("null mx"), "{diag}");
    assert!(fields(&dsn, "X-Tern-Queue-ID").contains(&id), "{dsn}");
    assert!(dsn.contains("Subject: null mx"), "the original message is returned:\n{dsn}");
    wait_queue_empty(&a, DELIVERY);
}

#[test]
fn nonexistent_domain_bounces_with_5_1_2() {
    let port = peer_port();
    let dns = DnsServer::start(&json!({ "other.test.": [["A", "127.0.0.9"]] }));
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));
    let rcpt = "bob@nowhere.test";
    let msg = test_message("nxdomain", rcpt);
    send_message(&a, SENDER, &[rcpt], &msg, &[]);
    let dsn = wait_notice(&a);
    let diag = assert_failed(&dsn, rcpt, "5.1.2");
    assert!(diag.contains("nowhere.test"), "{diag}");
    wait_queue_empty(&a, DELIVERY);
}

#[test]
fn dns_failure_defers_without_a_notice() {
    let port = peer_port();
    let dns = DnsServer::start(&json!({ "remote.test.": [["SERVFAIL"]] }));
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));
    let id = send_message(&a, SENDER, &[BOB], &test_message("servfail", BOB), &[]);
    let q = wait_queue(&a, DELIVERY, "a deferral after SERVFAIL", |q| q.contains(&id) && q.contains("deferred"));
    assert!(q.contains("4.4.3"), "the reason names the DNS failure:\n{q}");
    assert!(a.all_delivered().is_empty(), "a temporary DNS failure must not bounce: {:?}", a.all_delivered());
}

#[test]
fn temporary_failure_is_retried_until_delivered() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    let mut sink = SmtpSink::start("127.0.0.2", port, &["-r", "RCPT", "-b", "451 4.7.1 Try again later"]);
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));
    let msg = test_message("retried", BOB);
    let id = send_message(&a, SENDER, &[BOB], &msg, &[]);
    let q = wait_queue(&a, DELIVERY, "a deferral", |q| q.contains(&id) && q.contains("deferred"));
    assert!(q.contains("451 4.7.1 Try again later"), "the reason quotes the remote server:\n{q}\n{}", sink.logs());
    assert!(a.all_delivered().is_empty(), "a 4xx must not bounce");
    // The remote server recovers.
    sink.stop();
    let b = start_receiver("127.0.0.2", port, "");
    let stored = b.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY);
    assert_eq!(stored.len(), 1);
    assert_relayed_intact(&stored[0], &msg, &id);
    wait_queue_empty(&a, DELIVERY);
    assert!(a.all_delivered().is_empty(), "no notice expected (delay notices are off)");
}

#[test]
fn permanent_failure_at_rcpt_bounces_with_the_remote_reply() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    let sink = SmtpSink::start("127.0.0.2", port, &["-f", "RCPT", "-B", "550 5.1.1 No such user here"]);
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));
    let rcpt = "nobody@remote.test";
    let msg = test_message("rejected at rcpt", rcpt);
    let id = send_message(&a, SENDER, &[rcpt], &msg, &[]);
    let dsn = wait_notice(&a);
    let diag = assert_failed(&dsn, rcpt, "5.1.1");
    assert!(diag.starts_with("smtp; 550 5.1.1 No such user here"), "Diagnostic-Code: {diag}\n{}", sink.logs());
    assert!(fields(&dsn, "X-Tern-Queue-ID").contains(&id), "{dsn}");
    assert!(dsn.contains("Content-Type: message/rfc822"), "{dsn}");
    assert!(dsn.contains("Subject: rejected at rcpt"), "{dsn}");
    wait_queue_empty(&a, DELIVERY);
}

#[test]
fn message_from_the_null_sender_gets_no_notice() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    let _sink = SmtpSink::start("127.0.0.2", port, &["-f", "RCPT"]);
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));
    send_message(&a, "", &[BOB], &test_message("from null sender", BOB), &[]);
    wait_queue_empty(&a, DELIVERY);
    assert_eq!(a.settled_count(LOCAL_DOMAIN, "sender"), 0);
    assert!(a.all_delivered().is_empty(), "{:?}", a.all_delivered());
}

#[test]
fn expired_message_bounces_with_5_4_7() {
    let port = peer_port();
    // Nothing listens at the MX.
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    let base = sender_base("max_age = \"2s\"\n");
    let a = start_sender(&setup(&base, Some(&dns), port));
    send_message(&a, SENDER, &[BOB], &test_message("expires", BOB), &[]);
    let dsn = wait_notice(&a);
    let diag = assert_failed(&dsn, BOB, "5.4.7");
    assert!(diag.contains("expired"), "{diag}");
    assert!(diag.contains("127.0.0.2"), "the last error is named: {diag}");
    wait_queue_empty(&a, DELIVERY);
}

#[test]
fn deferred_message_survives_a_restart() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    let base = sender_base("");
    let mut a = start_sender(&setup(&base, Some(&dns), port));
    let msg = test_message("across a restart", BOB);
    let id = send_message(&a, SENDER, &[BOB], &msg, &[]);
    wait_queue(&a, DELIVERY, "a deferral", |q| q.contains(&id) && q.contains("deferred"));
    let status = a.sigterm();
    assert!(status.is_some(), "tern did not stop on SIGTERM");
    // The queue is still there while the server is down.
    let q = a.queue_list().all();
    assert!(q.contains(&id) && q.contains("deferred"), "{q}");
    let b = start_receiver("127.0.0.2", port, "");
    a.start_again();
    let stored = b.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY);
    assert_eq!(stored.len(), 1);
    assert_relayed_intact(&stored[0], &msg, &id);
    wait_queue_empty(&a, DELIVERY);
    assert_eq!(b.settled_count(REMOTE_DOMAIN, "bob"), 1, "delivered twice");
}

fn smarthost_config(port: u16, password: &str) -> String {
    format!(
        "{}\n[relay]\nsmarthost = \"127.0.0.2:{port}\"\ntls = \"none\"\nusername = \"relayuser\"\npassword = \"{password}\"\n",
        sender_base("")
    )
}

#[test]
fn smarthost_with_auth_gets_mail_for_every_remote_domain() {
    let port = peer_port();
    let peer = FakePeer::start("127.0.0.2", port, &json!({ "auth": ["relayuser", "s3cret"] }));
    let config = smarthost_config(port, "s3cret");
    // No DNS server at all: the smarthost is an address.
    let a = start_sender(&setup(&config, None, 1));
    let rcpts = ["anyone@far.example", "someone@other.test", "carol@local.test"];
    let msg = test_message("via smarthost", rcpts[0]);
    let id = send_message(&a, SENDER, &rcpts, &msg, &[]);
    wait_queue_empty(&a, DELIVERY);
    let messages = peer.messages();
    assert_eq!(messages.len(), 2, "one transaction per remote domain\n{}", peer.logs());
    for m in &messages {
        assert!(m.ends_with(&msg), "content changed:\n{}", show(m));
        let received = received_headers(m);
        assert_eq!(received.len(), 1, "{received:#?}");
        assert!(received[0].contains(&format!("id {id}")), "{received:#?}");
    }
    let auth = peer.events("AUTH");
    assert!(!auth.is_empty() && auth.iter().all(|l| l.ends_with(" ok relayuser")), "{}", peer.logs());
    let commands = peer.commands();
    for rcpt in &rcpts[..2] {
        assert!(commands.contains(&format!("RCPT TO:<{rcpt}>")), "{rcpt} not relayed:\n{}", peer.logs());
    }
    assert!(!commands.iter().any(|c| c.contains("carol@")), "a local recipient went out:\n{}", peer.logs());
    // The local recipient is delivered here, and there is no notice.
    let local = a.wait_one(LOCAL_DOMAIN, "carol");
    assert!(local.ends_with(&msg), "{}", show(&local));
    assert_eq!(a.settled_count(LOCAL_DOMAIN, "sender"), 0);
}

#[test]
fn smarthost_refusing_the_credentials_defers() {
    let port = peer_port();
    let peer = FakePeer::start("127.0.0.2", port, &json!({ "auth": ["relayuser", "s3cret"] }));
    let config = smarthost_config(port, "wrong");
    let a = start_sender(&setup(&config, None, 1));
    let id = send_message(&a, SENDER, &["anyone@far.example"], &test_message("bad credentials", BOB), &[]);
    let q = wait_queue(&a, DELIVERY, "a deferral", |q| q.contains(&id) && q.contains("deferred"));
    assert!(q.contains("authentication failed"), "{q}");
    assert!(peer.events("AUTH").iter().all(|l| l.ends_with(" failed")), "{}", peer.logs());
    assert!(peer.messages().is_empty(), "{}", peer.logs());
    assert!(a.all_delivered().is_empty(), "refused credentials must not bounce");
}

#[test]
fn hundred_recipients_at_one_domain_share_one_transaction() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    let b = start_receiver("127.0.0.2", port, "");
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));
    let rcpts: Vec<String> = (0..100).map(|i| format!("user{i:03}@{REMOTE_DOMAIN}")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let msg = test_message("one hundred", refs[0]);
    let id = send_message(&a, SENDER, &refs, &msg, &[]);
    wait_for(
        Duration::from_secs(60),
        "100 deliveries at the receiving Tern",
        || (b.all_delivered().len() >= 100).then_some(()),
        || format!("delivered: {}\nsender queue:\n{}\n{}", b.all_delivered().len(), a.queue_list().all(), a.logs()),
    );
    let mut receiver_ids = BTreeSet::new();
    for i in 0..100 {
        let user = format!("user{i:03}");
        let files = b.new_files(REMOTE_DOMAIN, &user);
        assert_eq!(files.len(), 1, "{user} got {} copies", files.len());
        let stored = fs::read(&files[0]).expect("read");
        assert_relayed_intact(&stored, &msg, &id);
        receiver_ids.insert(received_id(&stored).expect("receiving Tern's queue id"));
    }
    // One transaction at the receiver means one queue id there for all copies.
    assert_eq!(receiver_ids.len(), 1, "the copies came in several transactions: {receiver_ids:?}");
    wait_queue_empty(&a, DELIVERY);
}

#[test]
fn smtputf8_message_to_a_server_without_it_bounces_with_5_6_7() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    // Offers PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES: no SMTPUTF8.
    let peer = FakePeer::start("127.0.0.2", port, &json!({}));
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));
    let rcpt = "jürgen@remote.test";
    let msg = "From: <sender@local.test>\r\nTo: <jürgen@remote.test>\r\nSubject: Grüße\r\n\r\nÄpfel und Birnen.\r\n"
        .as_bytes()
        .to_vec();
    send_message(&a, SENDER, &[rcpt], &msg, &["SMTPUTF8"]);
    let dsn = wait_notice(&a);
    let diag = assert_failed(&dsn, rcpt, "5.6.7");
    assert!(diag.contains("SMTPUTF8"), "{diag}");
    wait_queue_empty(&a, DELIVERY);
    assert!(
        !peer.commands().iter().any(|c| c.starts_with("MAIL")),
        "a transaction was started with a server lacking SMTPUTF8:\n{}",
        peer.logs()
    );
}

#[test]
fn strangers_cannot_relay_with_address_tricks() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    // Records any connection, for remote.test's MX and for [127.0.0.2].
    let peer = FakePeer::start("127.0.0.2", port, &json!({}));
    let config = format!("{}{NO_RELAY}", sender_base(""));
    let a = start_sender(&setup(&config, Some(&dns), port));
    let mut r = a.raw();
    r.ehlo();
    let mail = r.cmd("MAIL FROM:<stranger@example.org>");
    assert_eq!(mail.code, 250, "{mail:?}");
    let plain = r.cmd(&format!("RCPT TO:<{BOB}>"));
    assert_eq!(plain.code, 554, "{plain:?}");
    assert!(plain.has("5.7.1") && plain.has("Relay access denied"), "{plain:?}");
    assert_eq!(r.cmd("RSET").code, 250);

    let tricks = [
        "user%remote.test@local.test",
        "\"user@remote.test\"@local.test",
        "@local.test:user@remote.test",
        "user@remote.test@local.test",
        "remote.test!user@local.test",
        "user@[127.0.0.2]",
    ];
    let mut accepted = Vec::new();
    for trick in tricks {
        assert_eq!(r.cmd("MAIL FROM:<stranger@example.org>").code, 250);
        let reply = r.cmd(&format!("RCPT TO:<{trick}>"));
        eprintln!("RCPT TO:<{trick}> -> {}", reply.text());
        match reply.code {
            250 | 251 => {
                let data = r.cmd("DATA");
                assert_eq!(data.code, 354, "{trick}: {data:?}");
                r.send(format!("Subject: trick {trick}\r\n\r\nrelay me?\r\n.\r\n").as_bytes()).expect("send");
                let end = r.reply();
                assert_eq!(end.code, 250, "{trick}: {end:?}");
                accepted.push(trick);
            }
            500..=599 => {}
            _ => panic!("{trick}: unexpected reply {reply:?}"),
        }
        assert_eq!(r.cmd("RSET").code, 250);
    }
    let _ = r.cmd("QUIT");
    wait_queue_empty(&a, DELIVERY);
    thread::sleep(Duration::from_secs(2));
    let delivered = a.all_delivered();
    let local_root = a.mail_root().join(LOCAL_DOMAIN);
    let log = fs::read_to_string(a.stderr_log()).unwrap_or_default();
    let outcomes: Vec<&str> = log.lines().filter(|l| l.contains("status=")).collect();
    assert_eq!(
        delivered.len(),
        accepted.len(),
        "every recipient accepted at RCPT must land in the local mailbox it names\naccepted: {accepted:?}\ndelivered: {delivered:#?}\ndelivery log:\n{}",
        outcomes.join("\n")
    );
    for path in &delivered {
        assert!(path.starts_with(&local_root), "{} is not a local mailbox of {LOCAL_DOMAIN}", path.display());
    }
    assert!(peer.events("CONNECT").is_empty(), "the remote server was contacted:\n{}", peer.logs());
}

#[test]
fn queue_show_flush_and_delete_with_bounce() {
    let port = peer_port();
    let mut zone = mx_zone(&[(10, "127.0.0.2")]);
    zone["other.test."] = json!([["MX", 10, "mx.other.test."]]);
    zone["mx.other.test."] = json!([["A", "127.0.0.3"]]);
    let dns = DnsServer::start(&zone);
    // Retries far apart: only a flush brings the next attempt soon.
    let config =
        format!("\n[local]\ndomains = [\"{LOCAL_DOMAIN}\"]\naccept_unknown = true\n\n[queue]\nretry = [\"1h\"]\n");
    let a = start_sender(&setup(&config, Some(&dns), port));

    let msg = test_message("flushed", BOB);
    let id = send_message(&a, SENDER, &[BOB], &msg, &[]);
    wait_queue(&a, DELIVERY, "a deferral", |q| q.contains(&id) && q.contains("deferred"));
    let show = a.tern_cmd(&["queue", "show", &id]);
    show.assert_success("tern queue show");
    for needle in [
        format!("id:       {id}"),
        format!("from:     <{SENDER}>"),
        format!("to:       {BOB} (remote)"),
        "deferred (attempts: 1".to_string(),
        "[127.0.0.2]".to_string(),
    ] {
        assert!(show.stdout.contains(&needle), "{needle:?} missing:\n{}", show.stdout);
    }
    let unknown = a.tern_cmd(&["queue", "show", "0123456789ABCDEF"]);
    assert!(!unknown.success() && unknown.stderr.contains("not in the queue"), "{unknown:?}");

    let b = start_receiver("127.0.0.2", port, "");
    thread::sleep(Duration::from_secs(2));
    assert_eq!(b.new_files(REMOTE_DOMAIN, "bob").len(), 0, "retried before its time");
    let flush = a.tern_cmd(&["queue", "flush"]);
    flush.assert_success("tern queue flush");
    assert!(flush.stdout.contains("1 message(s) scheduled"), "{flush:?}");
    let stored = b.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY);
    assert_relayed_intact(&stored[0], &msg, &id);
    wait_queue(&a, DELIVERY, "the flushed message to leave", |q| !q.contains(&id));

    // Nothing listens for other.test: deferred until deleted.
    let carl = "carl@other.test";
    let id2 = send_message(&a, SENDER, &[carl], &test_message("deleted", carl), &[]);
    wait_queue(&a, DELIVERY, "a deferral", |q| q.contains(&id2) && q.contains("deferred"));
    let delete = a.tern_cmd(&["queue", "delete", &id2, "--bounce"]);
    delete.assert_success("tern queue delete --bounce");
    assert!(delete.stdout.contains(&format!("{id2} deleted")), "{delete:?}");
    wait_queue_empty(&a, DELIVERY);
    let dsn = wait_notice(&a);
    let diag = assert_failed(&dsn, carl, "5.0.0");
    assert!(diag.contains("deleted by the mail administrator"), "{diag}");
    assert!(fields(&dsn, "X-Tern-Queue-ID").contains(&id2), "{dsn}");
    let again = a.tern_cmd(&["queue", "delete", &id2]);
    assert!(!again.success(), "deleting twice succeeded: {again:?}");
}

#[test]
fn success_notice_when_asked_and_the_next_hop_cannot_pass_it_on() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    // No DSN extension at the peer.
    let peer = FakePeer::start("127.0.0.2", port, &json!({}));
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));
    let out = a.py(&format!(
        "s = connect()\ns.mail({SENDER:?})\nprint(s.rcpt({BOB:?}, ['NOTIFY=SUCCESS']))\nprint(s.data(b'Subject: tell me\\r\\n\\r\\nbody\\r\\n'))\ns.quit()\n"
    ));
    out.assert_success("smtplib with NOTIFY=SUCCESS");
    assert!(out.stdout.contains("(250"), "{}", out.stdout);
    let dsn = wait_notice(&a);
    assert_eq!(fields(&dsn, "Final-Recipient"), [format!("rfc822; {BOB}")], "{dsn}");
    assert_eq!(fields(&dsn, "Action"), ["relayed"], "{dsn}");
    assert!(fields(&dsn, "Status")[0].starts_with("2."), "{dsn}");
    assert_eq!(peer.messages().len(), 1, "{}", peer.logs());
}

#[test]
fn mail_loop_bounces_with_5_4_6() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    let peer = FakePeer::start("127.0.0.2", port, &json!({}));
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));
    let mut msg = String::new();
    for i in 0..50 {
        msg.push_str(&format!("Received: from hop{i}.test by hop{}.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n", i + 1));
    }
    msg.push_str("Subject: looping\r\n\r\nround and round\r\n");
    // With Tern's own header there are 51.
    send_message(&a, SENDER, &[BOB], msg.as_bytes(), &[]);
    let dsn = wait_notice(&a);
    let diag = assert_failed(&dsn, BOB, "5.4.6");
    assert!(diag.to_lowercase().contains("loop"), "{diag}");
    assert!(peer.events("CONNECT").is_empty(), "a looping message was sent on:\n{}", peer.logs());
}

/// Sends to a misbehaving peer; checks the message is deferred with a reason
/// containing one of `reasons`, that nothing bounced, and that Tern still
/// works.
fn misbehaving_peer_defers(conf: serde_json::Value, reasons: &[&str]) {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    let peer = FakePeer::start("127.0.0.2", port, &conf);
    let base = sender_base("");
    let mut a = start_sender(&setup(&base, Some(&dns), port));
    let id = send_message(&a, SENDER, &[BOB], &test_message("misbehaving peer", BOB), &[]);
    let q = wait_queue(&a, DELIVERY, "a deferral", |q| q.contains(&id) && q.contains("deferred"));
    let line = q.lines().find(|l| l.contains(BOB)).unwrap_or("").to_string();
    assert!(line.contains("[127.0.0.2]"), "the reason names the server: {line}");
    assert!(reasons.iter().any(|r| line.contains(r)), "reason is none of {reasons:?}: {line}\n{}", peer.logs());
    assert!(!peer.events("CONNECT").is_empty(), "the peer was never contacted");
    // Still alive: it keeps retrying and still takes and delivers mail.
    thread::sleep(Duration::from_secs(2));
    assert!(a.is_running(), "tern died\n{}", a.logs());
    assert!(peer.events("CONNECT").len() >= 2, "no retry:\n{}", peer.logs());
    let local = send_message(&a, SENDER, &["carol@local.test"], &test_message("still alive", "carol@local.test"), &[]);
    assert!(is_queue_id(&local));
    a.wait_one(LOCAL_DOMAIN, "carol");
    assert_eq!(a.settled_count(LOCAL_DOMAIN, "sender"), 0, "a connection problem must not bounce");
    assert!(a.sigterm().is_some(), "tern did not stop on SIGTERM");
}

#[test]
fn garbage_greeting_defers() {
    misbehaving_peer_defers(
        json!({ "act": { "GREETING": { "raw": "Hello? This is not an SMTP server.\r\n" } } }),
        &["malformed reply"],
    );
}

#[test]
fn garbage_reply_in_the_transaction_defers() {
    misbehaving_peer_defers(json!({ "act": { "MAIL": { "raw": "2x0 whatever\r\n" } } }), &["malformed reply"]);
}

#[test]
fn multiline_reply_with_mixed_codes_defers() {
    // RFC 5321 §4.2.1: one code per reply. "250-" then "550" is malformed, so the
    // recipient is deferred, never bounced on the strength of its last line.
    misbehaving_peer_defers(
        json!({ "act": { "RCPT": { "raw": "250-2.1.5 Ok\r\n550 5.1.1 No such user\r\n" } } }),
        &["malformed reply"],
    );
}

#[test]
fn ten_megabyte_reply_line_defers() {
    misbehaving_peer_defers(json!({ "act": { "EHLO": { "long": 10_000_000 } } }), &["too long"]);
}

#[test]
fn connection_closed_during_data_defers() {
    misbehaving_peer_defers(
        json!({ "close_mid_data": 20 }),
        &["connection closed", "reset", "read error", "write error", "broken pipe"],
    );
}

#[test]
fn quoted_local_part_is_sent_quoted() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    let peer = FakePeer::start("127.0.0.2", port, &json!({}));
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));
    let rcpt = "\"john smith\"@remote.test";
    send_message(&a, SENDER, &[rcpt], &test_message("quoted local part", rcpt), &[]);
    wait_for(
        DELIVERY,
        "a message at the peer",
        || (!peer.messages().is_empty()).then_some(()),
        || format!("{}\nqueue:\n{}\n{}", peer.logs(), a.queue_list().all(), a.logs()),
    );
    let commands = peer.commands();
    assert!(
        commands.iter().any(|c| c == &format!("RCPT TO:<{rcpt}>")),
        "the recipient must keep its quotes on the wire: {commands:#?}"
    );
}

/// The content received by the fake server on connection `n`, in order.
fn messages_on(peer: &FakePeer, n: usize) -> Vec<Vec<u8>> {
    let prefix = format!("MESSAGE {n} ");
    peer.events("MESSAGE")
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|path| fs::read(path).expect("read received message"))
        .collect()
}

#[test]
fn connection_left_in_data_by_a_broken_server_is_not_reused() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    // Pipelining (the default): MAIL, RCPT and DATA go out together, and this
    // server answers DATA with 354 although it refused the only recipient.
    let nobody = "nobody@remote.test";
    let peer = FakePeer::start("127.0.0.2", port, &json!({ "refuse_rcpt": [nobody], "data_without_rcpt": true }));
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));

    send_message(&a, SENDER, &[nobody], &test_message("refused everywhere", nobody), &[]);
    let dsn = wait_notice(&a);
    assert_failed(&dsn, nobody, "5.1.1");
    wait_queue_empty(&a, DELIVERY);
    // The empty content is ended with a lone dot and the connection closed at once,
    // not kept for the next message.
    wait_for(
        Duration::from_secs(10),
        "the first connection to be closed",
        || peer.events("CLOSE").iter().any(|l| l == "CLOSE 1").then_some(()),
        || peer.logs(),
    );
    assert_eq!(messages_on(&peer, 1), [Vec::<u8>::new()], "only the empty content on connection 1:\n{}", peer.logs());
    assert!(!peer.log().contains("CMD 1 RSET"), "{}", peer.logs());

    let msg = test_message("after the broken one", BOB);
    send_message(&a, SENDER, &[BOB], &msg, &[]);
    wait_for(
        DELIVERY,
        "the second message at the server",
        || (!messages_on(&peer, 2).is_empty()).then_some(()),
        || format!("{}\n{}", peer.logs(), a.logs()),
    );
    assert_eq!(peer.events("CONNECT").len(), 2, "{}", peer.logs());
    let received = messages_on(&peer, 2);
    assert_eq!(received.len(), 1, "{}", peer.logs());
    assert!(received[0].ends_with(&msg), "not intact:\n{}", show(&received[0]));
    wait_queue_empty(&a, DELIVERY);
}

#[test]
fn no_data_when_every_recipient_is_refused_without_pipelining() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    let nobody = "nobody@remote.test";
    let conf = json!({ "ehlo": ["8BITMIME", "ENHANCEDSTATUSCODES"], "refuse_rcpt": [nobody] });
    let peer = FakePeer::start("127.0.0.2", port, &conf);
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));

    send_message(&a, SENDER, &[nobody], &test_message("refused", nobody), &[]);
    let dsn = wait_notice(&a);
    assert_failed(&dsn, nobody, "5.1.1");
    wait_queue_empty(&a, DELIVERY);
    // The transaction is reset right away; no DATA.
    wait_for(
        Duration::from_secs(10),
        "RSET",
        || peer.commands().iter().any(|c| c == "RSET").then_some(()),
        || peer.logs(),
    );
    assert!(!peer.commands().iter().any(|c| c == "DATA"), "{}", peer.logs());

    let msg = test_message("after the refused one", BOB);
    send_message(&a, SENDER, &[BOB], &msg, &[]);
    wait_for(
        DELIVERY,
        "the second message at the server",
        || (!peer.messages().is_empty()).then_some(()),
        || format!("{}\n{}", peer.logs(), a.logs()),
    );
    let received = peer.messages();
    assert_eq!(received.len(), 1, "{}", peer.logs());
    assert!(received[0].ends_with(&msg), "not intact:\n{}", show(&received[0]));
}

/// A message with a 5,000-character body line and a 1,500-character header line.
fn long_line_message(to: &str) -> Vec<u8> {
    let body: String = (0..5000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let header: String = (0..1500).map(|i| char::from(b'0' + (i % 10) as u8)).collect();
    format!(
        "From: <{SENDER}>\r\nTo: <{to}>\r\nSubject: long lines\r\nX-Long: {header}\r\n\r\nbefore\r\n{body}\r\nafter\r\n"
    )
    .into_bytes()
}

/// `content` with every inserted CRLF SPACE removed.
fn unfold(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len());
    let mut i = 0;
    while i < content.len() {
        if content[i..].starts_with(b"\r\n ") {
            i += 3;
        } else {
            out.push(content[i]);
            i += 1;
        }
    }
    out
}

/// Checks that every line of `received` fits in 998 octets plus CRLF and that it is
/// `sent` once the breaks are removed.
#[track_caller]
fn assert_folded(received: &[u8], sent: &[u8]) {
    for line in received.split(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(text.len() <= 998, "a line of {} octets reached the next hop", text.len());
    }
    assert!(count(received, b"\r\n ") >= 5, "the long lines were not broken:\n{}", show(received));
    assert!(unfold(received).ends_with(sent), "content changed beyond the breaks:\n{}", show(received));
}

#[test]
fn long_lines_are_broken_when_relayed_with_data() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    let peer = FakePeer::start("127.0.0.2", port, &json!({}));
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));
    let carol = "carol@local.test";
    let msg = long_line_message(BOB);
    send_message(&a, SENDER, &[BOB, carol], &msg, &[]);
    wait_for(
        DELIVERY,
        "a message at the peer",
        || (!peer.messages().is_empty()).then_some(()),
        || format!("{}\nqueue:\n{}\n{}", peer.logs(), a.queue_list().all(), a.logs()),
    );
    assert!(peer.commands().iter().any(|c| c == "DATA"), "{}", peer.logs());
    assert_folded(&peer.messages()[0], &msg);
    // Local delivery keeps the lines as they came.
    let local = a.wait_one(LOCAL_DOMAIN, "carol");
    assert_delivered(&local, SENDER, &msg);
}

#[test]
fn long_lines_are_broken_when_relayed_with_bdat() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    // A second Tern offers CHUNKING, so the content goes with BDAT.
    let b = start_receiver("127.0.0.2", port, "");
    let base = sender_base("");
    let a = start_sender(&setup(&base, Some(&dns), port));
    let msg = long_line_message(BOB);
    send_message(&a, SENDER, &[BOB], &msg, &[]);
    let stored = b.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY);
    assert_eq!(stored.len(), 1);
    assert_folded(&stored[0], &msg);
    wait_queue_empty(&a, DELIVERY);
}
