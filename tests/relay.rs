//! Relaying between two Tern servers on loopback: a route sends mail for
//! `remote.test` to a second instance.

mod common;

use common::*;
use std::time::Duration;

fn receiver(extra: &str) -> Tern {
    Tern::start(&format!("\n[local]\ndomains = [\"remote.test\"]\n{extra}"))
}

fn relay_to(port: u16) -> String {
    format!(
        "{LOCAL_OPEN}\n[queue]\nretry = [\"1s\"]\n\n[relay]\nnetworks = [\"127.0.0.0/8\"]\n\n[relay.routes]\n\"remote.test\" = \"127.0.0.1:{port}\"\n"
    )
}

#[test]
fn mail_is_relayed_to_the_routed_server() {
    let b = receiver("accept_unknown = true\n");
    let a = Tern::start(&relay_to(b.port));
    let out = a.swaks(&["-f", "sender@localhost", "-t", "bob@remote.test"]);
    out.assert_success("swaks to a relayed domain");
    let id = queue_id(&out.stdout).expect("queue id");
    let stored = b.wait_mail_within("remote.test", "bob", 1, Duration::from_secs(30));
    assert_eq!(stored.len(), 1);
    let m = &stored[0];
    assert!(m.starts_with(b"Return-Path: <sender@localhost>\r\n"), "{}", show(m));
    assert!(contains(m, b"This is a test mailing"), "{}", show(m));
    // Both servers left a Received header; the first server's names its id.
    assert!(count(m, b"Received: ") >= 2, "{}", show(m));
    assert!(contains(m, format!("id {id}").as_bytes()), "{}", show(m));
    assert!(a.all_delivered().is_empty(), "relayed mail delivered locally too");
}

#[test]
fn unreachable_route_defers_the_message() {
    // A listener that accepts and stays silent: the connection is made but no
    // greeting comes, so the attempt times out (outbound greeting_timeout, 2 s in
    // the harness config).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = Tern::start(&relay_to(silent.local_addr().unwrap().port()));
    let out = a.swaks(&["-f", "sender@localhost", "-t", "bob@remote.test"]);
    out.assert_success("swaks");
    let id = queue_id(&out.stdout).expect("queue id");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = a.queue_list().all();
        if text.contains(&id) && text.contains("deferred") {
            let line = text.lines().find(|l| l.contains("bob@remote.test")).unwrap_or_default();
            assert!(line.contains("reading the greeting: timeout after 2s"), "the reason names the greeting: {text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never deferred:\n{text}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // No bounce while it is only deferred.
    assert!(a.all_delivered().is_empty());
    drop(silent);
}

#[test]
fn refused_recipient_bounces_to_a_local_sender() {
    let b = receiver("accept_unknown = false\nusers = [\"bob@remote.test\"]\n");
    let a = Tern::start(&relay_to(b.port));
    let out = a.swaks(&["-f", "sender@localhost", "-t", "nobody@remote.test", "--header", "Subject: will bounce"]);
    out.assert_success("swaks");
    let dsn = a.wait_mail_within("localhost", "sender", 1, Duration::from_secs(30));
    assert_eq!(dsn.len(), 1);
    let m = &dsn[0];
    assert!(m.starts_with(b"Return-Path: <>\r\n"), "a DSN has a null sender: {}", show(m));
    assert!(contains(m, b"nobody@remote.test"), "{}", show(m));
    assert!(contains(m, b"5.1.1"), "{}", show(m));
    assert!(contains(m, b"multipart/report"), "{}", show(m));
    assert_eq!(b.all_delivered().len(), 0);
}
