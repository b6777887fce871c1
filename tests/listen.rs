//! Listeners on IPv6 and IPv4 side by side: an IPv4 client of a dual-stack
//! listener is known by its IPv4 address, and IPv4 and IPv6 wildcards share a port.
//! Clients connect over loopback only.

mod common;

use common::*;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// False (and the test is skipped) on a machine without IPv6 loopback.
fn have_ipv6() -> bool {
    let ok = TcpListener::bind("[::1]:0").is_ok();
    if !ok {
        eprintln!("skipped: no IPv6 loopback on this machine");
    }
    ok
}

/// A port free right now for IPv6 and IPv4 alike (a dual-stack wildcard binds it).
fn dual_stack_port() -> u16 {
    TcpListener::bind("[::]:0").expect("bind [::]:0").local_addr().expect("local addr").port()
}

/// An SMTP connection to `addr`, greeted.
#[track_caller]
fn greeted(addr: SocketAddr) -> Raw {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
    stream.set_write_timeout(Some(Duration::from_secs(20))).expect("write timeout");
    let mut r = Raw::over(stream, Duration::from_secs(10));
    let g = r.reply();
    assert_eq!(g.code, 220, "greeting on {addr}: {g:?}");
    r
}

#[test]
fn ipv4_client_of_an_ipv6_listener_is_known_by_its_ipv4_address() {
    if !have_ipv6() {
        return;
    }
    let port = dual_stack_port();
    let t = Tern::start(&format!(
        "{LOCAL_OPEN}\n[relay]\nnetworks = [\"127.0.0.0/8\"]\n\n[[listen]]\naddr = \"[::]:{port}\"\nmode = \"smtp\"\n"
    ));
    let mut c = greeted(SocketAddr::from(([127, 0, 0, 1], port)));
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").code, 250);
    // In the relay network as 127.0.0.1, not as ::ffff:127.0.0.1.
    let r = c.cmd("RCPT TO:<bob@remote.test>");
    assert_eq!(r.code, 250, "a client of 127.0.0.0/8 may relay: {r:?}");
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: dual stack\r\n\r\nhello\r\n.\r\n").unwrap();
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.cmd("QUIT").code, 221);
    let stored = t.wait_one("localhost", "alice");
    let (headers, _) = split_message(&stored);
    let headers = String::from_utf8_lossy(headers);
    assert!(headers.contains("([127.0.0.1])"), "{headers}");
    assert!(!headers.contains("ffff"), "{headers}");
    let logs = t.logs();
    assert!(logs.contains("client=127.0.0.1:"), "{logs}");
    assert!(!logs.contains("::ffff:"), "{logs}");
}

#[test]
fn ipv4_and_ipv6_wildcards_share_a_port() {
    if !have_ipv6() {
        return;
    }
    let port = dual_stack_port();
    let t = Tern::start(&format!(
        "{LOCAL_OPEN}\n[[listen]]\naddr = \"0.0.0.0:{port}\"\nmode = \"smtp\"\n\n[[listen]]\naddr = \"[::]:{port}\"\nmode = \"smtp\"\n"
    ));
    for (n, (addr, client)) in [("127.0.0.1", "[127.0.0.1]"), ("[::1]", "[IPv6:::1]")].into_iter().enumerate() {
        let mut c = greeted(format!("{addr}:{port}").parse().unwrap());
        c.ehlo();
        assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").code, 250);
        assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
        assert_eq!(c.cmd("DATA").code, 354);
        c.send(format!("Subject: over {addr}\r\n\r\nhello\r\n.\r\n").as_bytes()).unwrap();
        assert_eq!(c.reply().code, 250);
        assert_eq!(c.cmd("QUIT").code, 221);
        let stored = t.wait_mail("localhost", "alice", n + 1);
        assert!(stored.iter().any(|m| contains(m, format!("({client})").as_bytes())), "no message from {client}");
    }
    assert_eq!(t.wait_mail("localhost", "alice", 2).len(), 2);
}
