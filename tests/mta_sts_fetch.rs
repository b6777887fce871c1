//! MTA-STS policy hosts that misbehave (RFC 8461 §3.3): a redirect, a wrong content
//! type, a huge body, a slow body, a malformed policy. None crashes Tern; each is
//! logged, counted in `tern_mta_sts_fetch_total{result}` and noted in the message's
//! trace. With nothing cached the domain has no policy (mail goes with opportunistic
//! TLS, here to an MX whose certificate names another host); with a cached policy,
//! that policy stays in force (here: enforce, so the same MX is refused with 4.7.5).

mod common;

use common::outbound::*;
use common::sts::*;
use common::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BOB: &str = "bob@remote.test";
const DELIVERY: Duration = Duration::from_secs(30);
const MX_HOST: &str = "mx1.remote.test";

/// A sending Tern for `remote.test`; with `cached`, a cached enforce policy (id `one`,
/// while DNS says `two`, so that a fetch is tried) is written before it starts.
fn sender(ca: &Ca, dns: &DnsServer, port: u16, cached: bool) -> Tern {
    let (base, outbound) = (sender_base(""), sts_outbound(ca));
    let mut a = sender_stopped(&SenderSetup { extra: &base, dns: Some(dns), peer_port: port, outbound: &outbound });
    if cached {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        write_cache(&a.data_dir, &policy("enforce", MX_HOST), now);
    }
    a.start_again();
    a
}

fn trace(t: &Tern, id: &str) -> String {
    let out = t.tern_cmd(&["queue", "trace", id]);
    out.assert_success("tern queue trace");
    out.stdout
}

/// Serves the policy of `remote.test` from `sts_ip` the way `how` says, to a sender
/// with or without a cached policy; the MX at `mx_ip` has a certificate for another
/// name. Checks the log line, the metric and the trace event, then that the mail went
/// (nothing cached) or was deferred with 4.7.5 (cached enforce policy). Returns the
/// sender's logs.
fn misbehaving(sts_ip: &str, mx_ip: &str, how: &str, body: &str, cached: bool, result: &str, why: &str) -> String {
    let ca = Ca::new();
    let Some(_sts) = PolicyServer::serving(&ca, sts_ip, body, how) else { return String::new() };
    let port = peer_port();
    let dns = DnsServer::start(&zone(mx_ip, sts_ip, "two"));
    let mx = start_mx(&ca, mx_ip, port, "other.remote.test");
    let a = sender(&ca, &dns, port, cached);
    let id = send_message(&a, SENDER, &[BOB], &test_message(&format!("sts {how}"), BOB), &[]);
    if cached {
        wait_queue(&a, DELIVERY, "a 4.7.5 MTA-STS deferral", |q| q.contains("4.7.5"));
        assert_eq!(mx.settled_count(REMOTE_DOMAIN, "bob"), 0, "delivered despite the cached policy");
    } else {
        assert_eq!(mx.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY).len(), 1);
        wait_queue_empty(&a, DELIVERY);
    }
    let logs = a.logs();
    assert!(logs.contains(why), "no {why:?} in\n{logs}");
    let fallback = if cached { "the cached policy stays in force" } else { "no policy cached" };
    assert!(logs.contains(fallback), "no {fallback:?} in\n{logs}");
    // Each retry of a deferred message tries the fetch again.
    let fetches = metric(&a, &format!("tern_mta_sts_fetch_total{{result=\"{result}\"}}"));
    assert!(fetches >= 1.0, "{result}: {fetches}\n{logs}");
    let trace = trace(&a, &id);
    assert!(trace.contains("TLS policy of remote.test: MTA-STS policy"), "{trace}");
    logs
}

#[test]
fn a_redirect_is_not_followed() {
    let logs =
        misbehaving("127.0.1.21", "127.0.1.22", "redirect", &policy("enforce", MX_HOST), false, "http_status", "301");
    if !logs.is_empty() {
        assert!(logs.contains("not followed"), "{logs}");
    }
}

#[test]
fn a_policy_not_served_as_text_plain_is_refused() {
    misbehaving("127.0.1.23", "127.0.1.24", "html", &policy("enforce", MX_HOST), false, "content_type", "text/html");
}

#[test]
fn a_huge_policy_is_refused_without_reading_it_all() {
    misbehaving("127.0.1.25", "127.0.1.26", "huge", "", false, "too_big", "larger than 65536 bytes");
}

#[test]
fn a_malformed_policy_leaves_the_cached_one_in_force() {
    misbehaving(
        "127.0.1.27",
        "127.0.1.28",
        "ok",
        "version: STSv1\r\nmode: sometimes\r\n",
        true,
        "invalid",
        "policy invalid",
    );
}

/// A policy host whose certificate does not verify gives no policy (RFC 8461 §3.3):
/// with nothing cached the mail goes opportunistically, and the fetch is counted as
/// `certificate` (TLS-RPT's `sts-webpki-invalid`).
#[test]
fn a_policy_host_with_an_untrusted_certificate_gives_no_policy() {
    let (ca, rogue) = (Ca::new(), Ca::new());
    let Some(_sts) = PolicyServer::start(&rogue, "127.0.1.37", &policy("enforce", MX_HOST)) else { return };
    let port = peer_port();
    let dns = DnsServer::start(&zone("127.0.1.38", "127.0.1.37", "two"));
    let mx = start_mx(&ca, "127.0.1.38", port, "other.remote.test");
    let a = sender(&ca, &dns, port, false);
    send_message(&a, SENDER, &[BOB], &test_message("sts untrusted", BOB), &[]);
    assert_eq!(mx.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY).len(), 1);
    wait_queue_empty(&a, DELIVERY);
    let logs = a.logs();
    assert!(logs.contains("certificate not verified for mta-sts.remote.test"), "{logs}");
    assert!(metric(&a, "tern_mta_sts_fetch_total{result=\"certificate\"}") >= 1.0, "{logs}");
}

/// The fetch gives up within its limit (10 s) however slowly the body comes.
#[test]
fn a_slow_policy_times_out_and_the_cached_one_stays() {
    misbehaving("127.0.1.29", "127.0.1.30", "slow", &policy("testing", MX_HOST), true, "timeout", "not fetched within");
}

/// Mode testing with no MX host in the policy: the mail goes as usual, and the log and
/// the trace say that enforcing would have stopped it (RFC 8461 §5).
#[test]
fn testing_mode_with_every_mx_outside_the_policy_still_delivers() {
    let ca = Ca::new();
    let Some(_sts) = PolicyServer::start(&ca, "127.0.1.31", &policy("testing", "*.elsewhere.test")) else { return };
    let port = peer_port();
    let dns = DnsServer::start(&zone("127.0.1.32", "127.0.1.31", "one"));
    let mx = start_mx(&ca, "127.0.1.32", port, MX_HOST);
    let a = sender(&ca, &dns, port, false);
    let id = send_message(&a, SENDER, &[BOB], &test_message("sts testing outside", BOB), &[]);
    assert_eq!(mx.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY).len(), 1);
    wait_queue_empty(&a, DELIVERY);
    let logs = a.logs();
    assert!(logs.contains("would have failed") && logs.contains("MX host not in the policy"), "{logs}");
    assert!(trace(&a, &id).contains("would have failed this delivery"), "{}", trace(&a, &id));
    assert_eq!(metric(&a, "tern_mta_sts_fetch_total{result=\"ok\"}"), 1.0);
}

/// RFC 8461 §5.1: a cached policy fetched two days ago and expiring within the hour is
/// used at once, and fetched again in the background.
#[test]
fn a_policy_nearing_expiry_is_refreshed_in_the_background() {
    let ca = Ca::new();
    let Some(_sts) = PolicyServer::start(&ca, "127.0.1.33", &policy("enforce", MX_HOST)) else { return };
    let port = peer_port();
    let dns = DnsServer::start(&zone("127.0.1.34", "127.0.1.33", "one"));
    let mx = start_mx(&ca, "127.0.1.34", port, MX_HOST);
    let (base, outbound) = (sender_base(""), sts_outbound(&ca));
    let mut a = sender_stopped(&SenderSetup { extra: &base, dns: Some(&dns), peer_port: port, outbound: &outbound });
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let dir = a.data_dir.join("mta-sts");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let old = serde_json::json!({"id": "one", "policy": policy("enforce", MX_HOST), "fetched_at": now - 2 * 86400, "expires": now + 3600});
    std::fs::write(dir.join("remote.test.json"), old.to_string()).expect("write cache");
    a.start_again();
    send_message(&a, SENDER, &[BOB], &test_message("sts refresh", BOB), &[]);
    assert_eq!(mx.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY).len(), 1);
    wait_for(
        DELIVERY,
        "the refreshed policy in the cache",
        || {
            let text = std::fs::read(dir.join("remote.test.json")).ok()?;
            let cached: serde_json::Value = serde_json::from_slice(&text).ok()?;
            (cached["fetched_at"].as_u64()? >= now && cached["expires"].as_u64()? >= now + 86400).then_some(())
        },
        || a.logs(),
    );
    assert!(a.logs().contains("MTA-STS policy refreshed"), "{}", a.logs());
}
