//! The delivery log line: one per recipient and attempt, with the fields Postfix
//! administrators grep for (`relay`, `delay`, `delays=a/b/c/d`, `dsn`, `status`,
//! `tls`), for local delivery and for each outcome of a delivery to another server.

mod common;

use common::outbound::wait_for;
use common::service::log_lines;
use common::*;
use std::time::Duration;

/// The value of `name=` in a log line (up to the next space).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..].split(' ').next()
}

/// Waits for the delivery line of `to`, then checks the fields every line has.
#[track_caller]
fn delivery_line(t: &Tern, to: &str) -> String {
    let line = wait_for(
        Duration::from_secs(30),
        &format!("the delivery line of {to}"),
        || log_lines(t, " delivery ").into_iter().find(|l| field(l, "to") == Some(to)),
        || t.logs(),
    );
    assert!(field(&line, "id").is_some_and(is_queue_id), "{line}");
    let delay: f64 = field(&line, "delay").and_then(|d| d.parse().ok()).unwrap_or_else(|| panic!("delay: {line}"));
    let delays: Vec<f64> = field(&line, "delays")
        .unwrap_or_else(|| panic!("delays: {line}"))
        .split('/')
        .map(|d| d.parse().unwrap_or_else(|_| panic!("delays: {line}")))
        .collect();
    assert_eq!(delays.len(), 4, "delays=a/b/c/d: {line}");
    // Each part is rounded to hundredths; their sum cannot exceed the whole by more.
    assert!(delays.iter().sum::<f64>() <= delay + 0.05, "the parts exceed the delay: {line}");
    let dsn = field(&line, "dsn").unwrap_or_else(|| panic!("dsn: {line}"));
    assert_eq!(dsn.split('.').count(), 3, "{line}");
    assert!(field(&line, "tls").is_some(), "{line}");
    line
}

#[test]
fn local_delivery_line() {
    let t = Tern::start(LOCAL_OPEN);
    t.swaks(&["-f", "sender@localhost", "-t", "alice@localhost"]).assert_success("swaks");
    let line = delivery_line(&t, "alice@localhost");
    assert_eq!(field(&line, "relay"), Some("local"), "{line}");
    assert_eq!(field(&line, "status"), Some("sent"), "{line}");
    assert_eq!(field(&line, "dsn"), Some("2.0.0"), "{line}");
    assert_eq!(field(&line, "tls"), Some("none"), "{line}");
    assert_eq!(field(&line, "delays").map(|d| d.split('/').nth(2)), Some(Some("0")), "no connection: {line}");
}

#[test]
fn remote_delivery_lines_for_sent_bounced_and_deferred() {
    // The next hop: a second Tern (STARTTLS with its self-signed certificate) that
    // knows bob only.
    let peer = Tern::start("\n[local]\ndomains = [\"remote.test\"]\nusers = [\"bob@remote.test\"]\n");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let a = Tern::start(&format!(
        "{LOCAL_OPEN}\n[queue]\nretry = [\"1h\"]\n\n[relay]\nnetworks = [\"127.0.0.0/8\"]\n\n[relay.routes]\n\
         \"remote.test\" = \"127.0.0.1:{}\"\n\"silent.test\" = \"127.0.0.1:{silent_port}\"\n",
        peer.port
    ));
    for to in ["bob@remote.test", "nobody@remote.test", "carol@silent.test"] {
        a.swaks(&["-f", "sender@localhost", "-t", to]).assert_success("swaks");
    }

    let sent = delivery_line(&a, "bob@remote.test");
    assert_eq!(field(&sent, "relay"), Some(format!("127.0.0.1[127.0.0.1]:{}", peer.port).as_str()), "{sent}");
    assert_eq!(field(&sent, "status"), Some("sent"), "{sent}");
    assert_eq!(field(&sent, "dsn"), Some("2.0.0"), "{sent}");
    let tls = field(&sent, "tls").unwrap();
    assert!(tls.starts_with("TLSv1.3/TLS13_") || tls.starts_with("TLSv1.2/"), "version/cipher: {sent}");

    let bounced = delivery_line(&a, "nobody@remote.test");
    assert_eq!(field(&bounced, "status"), Some("bounced"), "{bounced}");
    assert_eq!(field(&bounced, "dsn"), Some("5.1.1"), "{bounced}");
    assert_eq!(field(&bounced, "relay"), field(&sent, "relay"), "{bounced}");

    // The silent server never greets: deferred after the greeting timeout (2 s here).
    let deferred = delivery_line(&a, "carol@silent.test");
    assert_eq!(field(&deferred, "status"), Some("deferred"), "{deferred}");
    assert_eq!(field(&deferred, "dsn"), Some("4.4.1"), "{deferred}");
    assert_eq!(field(&deferred, "relay"), Some(format!("127.0.0.1[127.0.0.1]:{silent_port}").as_str()));
    assert_eq!(field(&deferred, "tls"), Some("none"), "{deferred}");
    let setup: f64 = field(&deferred, "delays").and_then(|d| d.split('/').nth(2)?.parse().ok()).unwrap();
    assert!(setup >= 1.9, "the wait for the greeting is connection setup: {deferred}");
    drop(silent);
}
