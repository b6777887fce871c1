//! Outbound MTA-STS (RFC 8461): a sending Tern learns the policy of `remote.test` from
//! the test DNS server (`_mta-sts.remote.test` TXT) and a Python HTTPS server on
//! `mta-sts.remote.test` port 443, whose certificate (like the MX host's) comes from a
//! test CA made with openssl and trusted through `[outbound] ca_file`. The MX host is a
//! second Tern offering STARTTLS. Everything stays on loopback.

mod common;

use common::outbound::*;
use common::sts::*;
use common::*;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

const BOB: &str = "bob@remote.test";
const DELIVERY: Duration = Duration::from_secs(30);
const MX_HOST: &str = "mx1.remote.test";

fn sender(dns: &DnsServer, port: u16, outbound: &str, base: &str) -> Tern {
    start_sender(&SenderSetup { extra: base, dns: Some(dns), peer_port: port, outbound })
}

/// Waits until the queue shows the recipient deferred with 4.7.5 naming the policy.
#[track_caller]
fn wait_sts_deferral(a: &Tern) -> String {
    wait_queue(a, DELIVERY, "a 4.7.5 MTA-STS deferral", |q| {
        q.contains("4.7.5") && q.contains("MTA-STS policy of remote.test")
    })
}

fn cache_file(t: &Tern) -> PathBuf {
    t.data_dir.join("mta-sts/remote.test.json")
}

#[test]
fn enforce_with_a_matching_mx_and_a_valid_certificate_delivers() {
    let ca = Ca::new();
    let Some(_sts) = PolicyServer::start(&ca, "127.0.0.51", &policy("enforce", MX_HOST)) else { return };
    let port = peer_port();
    let dns = DnsServer::start(&zone("127.0.0.52", "127.0.0.51", "one"));
    let mx = start_mx(&ca, "127.0.0.52", port, MX_HOST);
    let base = sender_base("");
    let a = sender(&dns, port, &sts_outbound(&ca), &base);
    let msg = test_message("sts enforce", BOB);
    send_message(&a, SENDER, &[BOB], &msg, &[]);
    let stored = mx.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY);
    assert_eq!(stored.len(), 1);
    wait_queue_empty(&a, DELIVERY);
    let cached: serde_json::Value = serde_json::from_slice(&fs::read(cache_file(&a)).expect("cache file")).unwrap();
    assert_eq!(cached["id"], "one", "{cached}");
    assert!(cached["expires"].as_u64().unwrap() >= cached["fetched_at"].as_u64().unwrap() + 86400, "{cached}");
    assert!(a.logs().contains("MTA-STS policy fetched"), "{}", a.logs());
}

#[test]
fn enforce_with_a_certificate_of_another_name_defers_with_4_7_5() {
    let ca = Ca::new();
    let Some(_sts) = PolicyServer::start(&ca, "127.0.0.53", &policy("enforce", MX_HOST)) else { return };
    let port = peer_port();
    let dns = DnsServer::start(&zone("127.0.0.54", "127.0.0.53", "one"));
    let mx = start_mx(&ca, "127.0.0.54", port, "other.remote.test");
    let base = sender_base("");
    let a = sender(&dns, port, &sts_outbound(&ca), &base);
    send_message(&a, SENDER, &[BOB], &test_message("sts wrong name", BOB), &[]);
    wait_sts_deferral(&a);
    assert_eq!(mx.settled_count(REMOTE_DOMAIN, "bob"), 0, "delivered despite the policy");
}

#[test]
fn enforce_with_an_mx_outside_the_policy_defers() {
    let ca = Ca::new();
    let Some(_sts) = PolicyServer::start(&ca, "127.0.0.55", &policy("enforce", "*.elsewhere.test")) else { return };
    let port = peer_port();
    let dns = DnsServer::start(&zone("127.0.0.56", "127.0.0.55", "one"));
    let mx = start_mx(&ca, "127.0.0.56", port, MX_HOST);
    let base = sender_base("");
    let a = sender(&dns, port, &sts_outbound(&ca), &base);
    send_message(&a, SENDER, &[BOB], &test_message("sts mx outside", BOB), &[]);
    let q = wait_sts_deferral(&a);
    assert!(q.contains("no MX host matches"), "{q}");
    assert_eq!(mx.settled_count(REMOTE_DOMAIN, "bob"), 0, "delivered despite the policy");
}

#[test]
fn testing_mode_delivers_and_logs_what_would_have_failed() {
    let ca = Ca::new();
    let Some(_sts) = PolicyServer::start(&ca, "127.0.0.57", &policy("testing", MX_HOST)) else { return };
    let port = peer_port();
    let dns = DnsServer::start(&zone("127.0.0.58", "127.0.0.57", "one"));
    let mx = start_mx(&ca, "127.0.0.58", port, "other.remote.test");
    let base = sender_base("");
    let a = sender(&dns, port, &sts_outbound(&ca), &base);
    send_message(&a, SENDER, &[BOB], &test_message("sts testing", BOB), &[]);
    assert_eq!(mx.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY).len(), 1);
    wait_queue_empty(&a, DELIVERY);
    let logs = a.logs();
    assert!(logs.contains("MTA-STS policy (testing) would have failed"), "{logs}");
    assert!(logs.contains("no TLS with a verified certificate"), "{logs}");
}

/// RFC 8461 §5.1: with the policy host down and a new id in DNS, the unexpired cached
/// policy still holds. No HTTPS server is needed: the cache is written beforehand.
#[test]
fn a_cached_policy_is_enforced_while_the_policy_host_is_down() {
    let ca = Ca::new();
    let port = peer_port();
    // Nothing listens on 127.0.0.59:443.
    let dns = DnsServer::start(&zone("127.0.0.60", "127.0.0.59", "two"));
    let mx = start_mx(&ca, "127.0.0.60", port, "other.remote.test");
    let base = sender_base("");
    let out = sts_outbound(&ca);
    let mut a = sender_stopped(&SenderSetup { extra: &base, dns: Some(&dns), peer_port: port, outbound: &out });
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    write_cache(&a.data_dir, &policy("enforce", MX_HOST), now);
    a.start_again();
    send_message(&a, SENDER, &[BOB], &test_message("sts cached", BOB), &[]);
    wait_sts_deferral(&a);
    assert_eq!(mx.settled_count(REMOTE_DOMAIN, "bob"), 0, "delivered despite the cached policy");
    assert!(a.logs().contains("MTA-STS policy fetch failed"), "{}", a.logs());
}

/// With `[cluster]` the cache is the cluster's table: a policy another node fetched
/// (a row of `mta_sts`) is enforced by a node that never fetched it, while the
/// policy host is down; and nothing is cached in the node's data directory.
#[test]
fn a_policy_cached_by_another_cluster_node_is_enforced() {
    let Some(pg) = common::postgres::Postgres::start("a_policy_cached_by_another_cluster_node_is_enforced") else {
        return;
    };
    let ca = Ca::new();
    let port = peer_port();
    // Nothing listens on 127.0.0.61:443.
    let dns = DnsServer::start(&zone("127.0.0.62", "127.0.0.61", "two"));
    let mx = start_mx(&ca, "127.0.0.62", port, "other.remote.test");
    let base = format!("{}\n[cluster]\ndatabase = \"{}\"\nnode = \"mx2\"\n", sender_base(""), pg.url());
    let out = sts_outbound(&ca);
    let mut a = sender_stopped(&SenderSetup { extra: &base, dns: Some(&dns), peer_port: port, outbound: &out });
    a.tern_cmd(&["cluster", "init"]).assert_success("cluster init");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let entry = serde_json::json!({"id": "one", "policy": policy("enforce", MX_HOST), "fetched_at": now, "expires": now + 86400});
    let sql = format!("INSERT INTO mta_sts (domain, entry) VALUES ('remote.test', '{entry}')");
    pg.psql(&sql).assert_success("store the policy as another node would");
    a.start_again();
    send_message(&a, SENDER, &[BOB], &test_message("sts cluster cached", BOB), &[]);
    // The queue is the cluster's: the deferral is read from the delivery log.
    let start = std::time::Instant::now();
    while !a.logs().contains("dsn=4.7.5 status=deferred") {
        assert!(start.elapsed() < DELIVERY, "no 4.7.5 deferral within {DELIVERY:?}:\n{}", a.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(a.logs().contains("4.7.5 MTA-STS policy of remote.test"), "{}", a.logs());
    assert_eq!(mx.settled_count(REMOTE_DOMAIN, "bob"), 0, "delivered despite the cluster's cached policy");
    assert!(a.logs().contains("MTA-STS policy fetch failed"), "{}", a.logs());
    assert!(!cache_file(&a).exists(), "a cluster node keeps no cache file");
}
