//! Delivery streams message content from the spool: many large messages delivered at
//! once (to another server and to local Maildirs) hold a bounded amount of memory each,
//! and arrive byte for byte, long lines folded and dot-stuffing undone as it should be.

mod common;

use common::outbound::*;
use common::*;
use serde_json::json;
use std::fs;
use std::time::Duration;

const MIB: usize = 1 << 20;
const BOB: &str = "bob@remote.test";
const CAROL: &str = "carol@local.test";

/// Long enough to move 160 MiB through a Python SMTP server on two busy cores.
const DELIVERY: Duration = Duration::from_secs(240);

/// A message of about `size` bytes, different for each `n`: CRLF lines, some starting
/// with a dot, and every so often a line longer than the 998 octets another server may
/// be sent, so that folding happens across the pieces content is read in.
fn message(n: usize, size: usize) -> Vec<u8> {
    let mut content = format!("From: <{SENDER}>\r\nTo: <{BOB}>, <{CAROL}>\r\nSubject: large {n}\r\n\r\n").into_bytes();
    let mut i = 0u64;
    while content.len() < size {
        if i % 4099 == 17 {
            let long: String = (0..5000 + i % 1000).map(|k| (b'a' + ((k + i) % 26) as u8) as char).collect();
            content.extend_from_slice(format!("{long}\r\n").as_bytes());
        } else {
            let dot = if i.is_multiple_of(97) { "." } else { "" };
            content
                .extend_from_slice(format!("{dot}message {n} line {i:08} {}\r\n", "0123456789".repeat(7)).as_bytes());
        }
        i += 1;
    }
    content
}

/// `content` as another server must receive it: every line longer than 998 octets
/// broken by CRLF SPACE (RFC 5321 §4.5.3.1.6; the lines here are ASCII).
fn folded(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 300);
    for line in content.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\r\n").unwrap_or(line);
        let end = &line[text.len()..];
        let (mut rest, mut room) = (text, 998);
        while rest.len() > room {
            out.extend_from_slice(&rest[..room]);
            out.extend_from_slice(b"\r\n ");
            rest = &rest[room..];
            room = 997;
        }
        out.extend_from_slice(rest);
        out.extend_from_slice(end);
    }
    out
}

/// `content` dot-stuffed, without the terminator.
fn stuffed(content: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(content.len() + content.len() / 50);
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    wire
}

/// Sends `content` from SENDER to `rcpts` by DATA; returns the final reply's text.
fn send(t: &Tern, rcpts: &[&str], content: &[u8]) -> String {
    let mut c = t.raw();
    assert_eq!(c.cmd("EHLO client.test").code, 250);
    assert_eq!(c.cmd(&format!("MAIL FROM:<{SENDER}>")).code, 250);
    for rcpt in rcpts {
        assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")).code, 250);
    }
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(&stuffed(content)).expect("send the content");
    c.send(b".\r\n").expect("send the terminator");
    let reply = c.reply();
    assert_eq!(reply.code, 250, "{reply:?}");
    reply.text()
}

/// The sending Tern: `local.test` is local, `remote.test` goes to 127.0.0.2 by MX,
/// and a failed attempt waits an hour (the tests flush the queue themselves).
fn sender(dns: &DnsServer, port: u16) -> Tern {
    let extra = format!(
        "\n[local]\ndomains = [\"{LOCAL_DOMAIN}\"]\naccept_unknown = true\n\n[queue]\nretry = [\"1h\"]\n{NO_AUTH_CHECKS}"
    );
    start_sender(&SenderSetup { extra: &extra, dns: Some(dns), peer_port: port, outbound: "" })
}

/// Eight 20 MiB messages, each to another server (by DATA, to a slow Python server)
/// and to a local Maildir, all delivered at once: the server's peak RSS grows by far
/// less than the 160 MiB of content, and every copy arrives intact. An attempt holds
/// about 1 MiB of buffers (two pieces read, the stuffed piece, the folded piece): the
/// growth measured was about 8 MiB, against about 450 MiB when each attempt read its
/// message whole; the bound, 32 MiB, leaves room for the allocator.
#[test]
fn eight_large_messages_are_delivered_at_once_in_bounded_memory() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    let t = sender(&dns, port);
    // Until the test is ready, nothing listens at the MX and Carol's Maildir is
    // blocked by a file: every first attempt is deferred.
    fs::create_dir_all(t.mail_root().join(LOCAL_DOMAIN)).unwrap();
    fs::write(t.maildir(LOCAL_DOMAIN, "carol"), "in the way").unwrap();
    let messages: Vec<Vec<u8>> = (0..8).map(|n| message(n, 20 * MIB)).collect();
    for m in &messages {
        send(&t, &[BOB, CAROL], m);
    }
    wait_queue(&t, DELIVERY, "every first attempt deferred", |q| q.matches("deferred (attempts: 1").count() == 16);

    let pid = t.pid().unwrap();
    let before = reset_peak(pid);
    let peer = FakePeer::start("127.0.0.2", port, &json!({}));
    fs::remove_file(t.maildir(LOCAL_DOMAIN, "carol")).unwrap();
    t.tern_cmd(&["queue", "flush"]).assert_success("tern queue flush");
    wait_queue_empty(&t, DELIVERY);
    let growth = proc_status(pid, "VmHWM").saturating_sub(before);
    eprintln!("peak RSS growth while delivering 8 x 20 MiB at once: {} KiB", growth / 1024);

    let local = t.wait_mail_within(LOCAL_DOMAIN, "carol", 8, DELIVERY);
    let remote = peer.messages();
    assert_eq!((local.len(), remote.len()), (8, 8), "one copy of each message at each destination");
    for (n, m) in messages.iter().enumerate() {
        let subject = format!("Subject: large {n}\r\n");
        let mine = |copy: &&Vec<u8>| find(copy, subject.as_bytes()).is_some();
        let copy = local.iter().find(mine).unwrap_or_else(|| panic!("message {n} is not in the Maildir"));
        assert_delivered(copy, SENDER, m);
        let copy = remote.iter().find(mine).unwrap_or_else(|| panic!("message {n} did not reach the MX"));
        assert!(copy.starts_with(b"Received: "), "{}", show(copy));
        assert!(copy.ends_with(&folded(m)), "message {n} changed on its way to the MX:\n{}", show(copy));
        assert!(copy.split(|&b| b == b'\n').all(|l| l.len() <= 1000), "a line over 998 octets went out");
    }
    assert!(growth < 32 * MIB, "peak RSS grew by {} KiB delivering 8 x 20 MiB at once", growth / 1024);
}

/// A 20 MiB message to a server that offers CHUNKING (another Tern) goes by BDAT with
/// the size it has once folded, and arrives byte for byte.
#[test]
fn a_large_message_goes_by_bdat_intact() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    let receiver = start_receiver("127.0.0.2", port, NO_AUTH_CHECKS);
    let t = sender(&dns, port);
    let m = message(0, 20 * MIB);
    send(&t, &[BOB], &m);
    let copy = receiver.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY).pop().unwrap();
    assert!(copy.ends_with(&folded(&m)), "the message changed on its way:\n{}", show(&copy));
    assert_eq!(received_headers(&copy).len(), 2, "{}", show(&copy));
    wait_queue_empty(&t, DELIVERY);
}

/// A sending server killed while it streams a message to another server delivers it
/// again after the restart: one whole copy arrives, and one local copy.
#[test]
fn a_kill_during_a_streamed_delivery_loses_and_duplicates_nothing() {
    let port = peer_port();
    let dns = DnsServer::start(&mx_zone(&[(10, "127.0.0.2")]));
    let mut t = sender(&dns, port);
    fs::create_dir_all(t.mail_root().join(LOCAL_DOMAIN)).unwrap();
    fs::write(t.maildir(LOCAL_DOMAIN, "carol"), "in the way").unwrap();
    let m = message(0, 20 * MIB);
    send(&t, &[BOB, CAROL], &m);
    wait_queue(&t, DELIVERY, "the first attempt deferred", |q| q.matches("deferred (attempts: 1").count() == 2);
    let peer = FakePeer::start("127.0.0.2", port, &json!({}));
    fs::remove_file(t.maildir(LOCAL_DOMAIN, "carol")).unwrap();
    t.tern_cmd(&["queue", "flush"]).assert_success("tern queue flush");
    // Killed as soon as the content starts: the Python server takes a while to read it.
    let started = || peer.commands().iter().any(|c| c == "DATA").then_some(());
    wait_for(DELIVERY, "the content under way to the MX", started, || peer.logs());
    t.kill9();
    eprintln!("copies at the MX when the sender was killed: {}", peer.messages().len());
    t.start_again();
    t.tern_cmd(&["queue", "flush"]).assert_success("tern queue flush after the restart");
    wait_queue_empty(&t, DELIVERY);
    let remote = peer.messages();
    assert_eq!(remote.len(), 1, "{}", peer.logs());
    assert!(remote[0].ends_with(&folded(&m)), "the message changed on its way to the MX");
    let local = t.wait_mail_within(LOCAL_DOMAIN, "carol", 1, DELIVERY);
    assert_eq!(local.len(), 1);
    assert_delivered(&local[0], SENDER, &m);
}
