//! Aggregate reports of a cluster, end to end: two `tern` nodes on one throwaway
//! PostgreSQL count TLS sessions (RFC 8460) and DMARC results (RFC 7489 §7.2) for the
//! same domains, and one report per domain goes out with the sum of their counts,
//! even when `tern reports send` runs on both nodes at once. A TLS-RPT report is
//! validated with the JSON Schema of tests/reports.rs, a DMARC report read with
//! parsedmarc. Counts made while the database is stopped are reported once it is back.

mod common;

use common::outbound::*;
use common::postgres::Postgres;
use common::reports::*;
use common::{NO_RELAY, Out, Tern};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const BOB: &str = "bob@remote.test";

/// `[cluster]` for node `node` on `pg`.
fn cluster_toml(pg: &Postgres, node: &str) -> String {
    format!("\n[cluster]\ndatabase = \"{}\"\nnode = \"{node}\"\nlease = \"10s\"\n", pg.url())
}

/// Nodes `mx1` and `mx2` on `pg`, asking `dns`, with `extra`; the schema is made by
/// the first one's `tern cluster init`.
fn nodes(pg: &Postgres, dns: &DnsServer, peer_port: u16, extra: &str) -> Vec<Tern> {
    let mut nodes = Vec::new();
    for i in 1..=2 {
        let extra = format!("{extra}{}", cluster_toml(pg, &format!("mx{i}")));
        let mut t = sender_stopped(&SenderSetup { extra: &extra, dns: Some(dns), peer_port, outbound: "" });
        if i == 1 {
            t.tern_cmd(&["cluster", "init"]).assert_success("cluster init");
        }
        t.start_again();
        nodes.push(t);
    }
    nodes
}

/// Waits (bounded) until `check` holds, saying what was awaited on failure.
#[track_caller]
fn wait_until(what: &str, limit: Duration, context: impl Fn() -> String, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}\n{}", context());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `tern reports show` on `t`.
fn shown(t: &Tern) -> String {
    let out = t.tern_cmd(&["reports", "show"]);
    out.assert_success("tern reports show");
    out.stdout
}

/// `tern reports send` on every node at the same moment; the number of reports each
/// sent.
fn send_on_all(nodes: &[Tern]) -> (Vec<usize>, Vec<Out>) {
    let outs: Vec<Out> = std::thread::scope(|s| {
        let sends: Vec<_> = nodes.iter().map(|n| s.spawn(move || n.tern_cmd(&["reports", "send"]))).collect();
        sends.into_iter().map(|h| h.join().expect("tern reports send")).collect()
    });
    let counts = outs
        .iter()
        .map(|out| {
            out.assert_success("tern reports send");
            let line = out.stdout.lines().find(|l| l.ends_with(" report(s) sent")).expect("a count of reports");
            line.split(' ').next().and_then(|n| n.parse().ok()).expect("a number")
        })
        .collect();
    (counts, outs)
}

/// The reports `peer` received about `domain`.
fn reports_about(peer: &FakePeer, domain: &str) -> usize {
    let prefix = format!("Report Domain: {domain} ");
    peer.messages().iter().filter(|m| subject_of(m).starts_with(&prefix)).count()
}

fn logs(nodes: &[Tern]) -> String {
    nodes.iter().map(Tern::logs).collect::<Vec<_>>().join("\n")
}

#[test]
fn one_tls_report_sums_the_sessions_of_both_nodes() {
    if missing_python(&["jsonschema"]) {
        return;
    }
    let Some(pg) = Postgres::start("one_tls_report_sums_the_sessions_of_both_nodes") else { return };
    let port = peer_port();
    // remote.test's only MX offers no STARTTLS: every session is a failure.
    let mut zone = mx_zone(&[(10, "127.0.0.82")]);
    let map = zone.as_object_mut().expect("zone object");
    map.insert("_smtp._tls.remote.test.".into(), json!([["TXT", "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test"]]));
    map.insert("reports.test.".into(), json!([["MX", 10, "mx.reports.test."]]));
    map.insert("mx.reports.test.".into(), json!([["A", "127.0.0.85"]]));
    let dns = DnsServer::start(&zone);
    let mx = FakePeer::start("127.0.0.82", port, &json!({}));
    let sink = FakePeer::start("127.0.0.85", port, &json!({}));
    let extra =
        format!("{}\n[reports]\nfrom = \"tls-reports@{LOCAL_DOMAIN}\"\nflush_interval = \"1s\"\n", sender_base(""));
    let nodes = nodes(&pg, &dns, port, &extra);
    for (i, node) in [0, 1, 0, 1, 1].into_iter().enumerate() {
        let msg = test_message(&format!("through mx{} {i}", node + 1), BOB);
        send_message(&nodes[node], SENDER, &[BOB], &msg, &[]);
    }
    wait_for(DELIVERY, "five messages at remote.test", || (mx.messages().len() >= 5).then_some(()), || logs(&nodes));
    for node in &nodes {
        wait_queue_empty(node, DELIVERY);
    }
    // Each node adds its sessions to the database; either shows the sum.
    let sql = "SELECT sum(failed) FROM report_tls WHERE domain = 'remote.test' AND failure IS NULL";
    wait_until("both nodes' counts in the database", DELIVERY, || logs(&nodes), || pg.value(sql) == "5");
    for node in &nodes {
        let show = shown(node);
        assert!(show.contains("no-policy-found: 0 successful, 5 failed"), "{show}");
    }

    let (counts, outs) = send_on_all(&nodes);
    assert_eq!(counts.iter().sum::<usize>(), 1, "{outs:?}");
    assert!(outs.iter().any(|o| o.stdout.contains("tls report about remote.test queued as")), "{outs:?}");
    let msg = wait_report(&sink, "Report Domain: remote.test", || logs(&nodes));
    for node in &nodes {
        wait_queue_empty(node, DELIVERY);
    }
    assert_eq!(reports_about(&sink, "remote.test"), 1, "{}", sink.logs());

    let dir = tempfile::tempdir().expect("tempdir");
    let report = &read_report("tls", &msg, dir.path())["report"];
    let policies = report["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 1, "{report}");
    let p = &policies[0];
    assert_eq!(p["policy"]["policy-type"], "no-policy-found", "{p}");
    assert_eq!(p["policy"]["policy-domain"], "remote.test", "{p}");
    assert_eq!(p["summary"]["total-successful-session-count"], 0, "{p}");
    assert_eq!(p["summary"]["total-failure-session-count"], 5, "{p}");
    let details = p["failure-details"].as_array().expect("failure details");
    assert!(details.iter().all(|d| d["result-type"] == "starttls-not-supported"), "{p}");
    assert_eq!(details.iter().map(|d| d["failed-session-count"].as_u64().unwrap()).sum::<u64>(), 5, "{p}");
    // Reported counts are gone from the database, and not sent again.
    assert_eq!(pg.value("SELECT count(*) FROM report_tls WHERE domain = 'remote.test'"), "0");
    let (again, outs) = send_on_all(&nodes);
    assert_eq!(again.iter().sum::<usize>(), 0, "{outs:?}");
}

/// A DMARC record asking for reports at reports.test, whose MX is `sink_ip`; mail of
/// shop.reports.test passes SPF from 127.0.0.91 only.
fn dmarc_zone(sink_ip: &str) -> Value {
    json!({
        "shop.reports.test.": [["TXT", "v=spf1 ip4:127.0.0.91 -all"]],
        "_dmarc.shop.reports.test.": [["TXT", "v=DMARC1; p=none; rua=mailto:dmarc@reports.test"]],
        "reports.test.": [["MX", 10, "mx.reports.test."]],
        "mx.reports.test.": [["A", sink_ip]],
    })
}

/// Strangers' mail for b.test, checked, with DMARC reports.
fn dmarc_config() -> String {
    format!(
        "{NO_RELAY}\n[local]\ndomains = [\"b.test\"]\naccept_unknown = true\n\n[queue]\nretry = [\"1s\"]\n\n\
         [auth_checks]\n\n[reports]\ndmarc = true\nfrom = \"dmarc-reports@b.test\"\nflush_interval = \"1s\"\n"
    )
}

/// One message from news@shop.reports.test, sent from `ip` through `t`; the reply to
/// its DATA (any: it is counted when it is checked).
fn send_from(t: &Tern, ip: &str, subject: &str) -> String {
    let script = format!(
        "import os, smtplib\n\
         s = smtplib.SMTP('127.0.0.1', int(os.environ['TERN_PORT']), source_address=('{ip}', 0), timeout=60)\n\
         s.ehlo('client.test')\n\
         s.mail('news@shop.reports.test')\n\
         print('RCPT', *s.rcpt('bob@b.test'))\n\
         try:\n    code, text = s.data(b'From: <news@shop.reports.test>\\r\\nTo: <bob@b.test>\\r\\nSubject: {subject}\\r\\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\\r\\nMessage-ID: <{id}@shop.reports.test>\\r\\n\\r\\nHello.\\r\\n')\n\
         except smtplib.SMTPResponseException as e:\n    code, text = e.smtp_code, e.smtp_error\n\
         print('DATA', code, text.decode())\n\
         s.quit()\n",
        id = subject.replace(' ', "-")
    );
    let out = t.python_within(&script, Duration::from_secs(60));
    out.assert_success("smtplib client");
    out.stdout
}

/// The records of a DMARC report read by parsedmarc: (source, count, spf, dkim).
fn dmarc_rows(report: &Value) -> Vec<(String, u64, String, String)> {
    let mut rows: Vec<_> = report["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                s(&r["source"]["ip_address"]),
                r["count"].as_u64().unwrap_or_default(),
                s(&r["policy_evaluated"]["spf"]),
                s(&r["policy_evaluated"]["dkim"]),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn row(ip: &str, n: u64, spf: &str, dkim: &str) -> (String, u64, String, String) {
    (ip.into(), n, spf.into(), dkim.into())
}

#[test]
fn one_dmarc_report_sums_the_messages_of_both_nodes() {
    if missing_python(&["parsedmarc"]) {
        return;
    }
    let Some(pg) = Postgres::start("one_dmarc_report_sums_the_messages_of_both_nodes") else { return };
    let port = peer_port();
    let dns = DnsServer::start(&dmarc_zone("127.0.0.94"));
    let sink = FakePeer::start("127.0.0.94", port, &json!({}));
    let nodes = nodes(&pg, &dns, port, &dmarc_config());
    for (node, ip) in [(0, "127.0.0.91"), (1, "127.0.0.91"), (0, "127.0.0.91"), (1, "127.0.0.93")] {
        let reply = send_from(&nodes[node], ip, &format!("from {ip} through mx{}", node + 1));
        assert!(reply.contains("DATA 250"), "{reply}\n{}", logs(&nodes));
    }
    let sql = "SELECT coalesce(sum(messages), 0) FROM report_dmarc WHERE domain = 'shop.reports.test'";
    wait_until("both nodes' counts in the database", DELIVERY, || logs(&nodes), || pg.value(sql) == "4");
    let show = shown(&nodes[0]);
    assert!(show.contains("127.0.0.91: 3 message(s)") && show.contains("127.0.0.93: 1 message(s)"), "{show}");

    let (counts, outs) = send_on_all(&nodes);
    assert_eq!(counts.iter().sum::<usize>(), 1, "{outs:?}");
    let msg = wait_report(&sink, "Report Domain: shop.reports.test", || logs(&nodes));
    for node in &nodes {
        wait_queue_empty(node, DELIVERY);
    }
    assert_eq!(reports_about(&sink, "shop.reports.test"), 1, "{}", sink.logs());
    let dir = tempfile::tempdir().expect("tempdir");
    let report = &read_report("dmarc", &msg, dir.path())["report"];
    assert_eq!(report["policy_published"]["domain"], "shop.reports.test", "{report}");
    assert_eq!(
        dmarc_rows(report),
        [row("127.0.0.91", 3, "pass", "fail"), row("127.0.0.93", 1, "fail", "fail")],
        "{report}"
    );
    assert_eq!(pg.value("SELECT count(*) FROM report_dmarc"), "0");
}

#[test]
fn counts_made_while_the_database_is_stopped_are_reported_after_it_returns() {
    if missing_python(&["parsedmarc"]) {
        return;
    }
    let Some(pg) = Postgres::start("counts_made_while_the_database_is_stopped_are_reported_after_it_returns") else {
        return;
    };
    let port = peer_port();
    let dns = DnsServer::start(&dmarc_zone("127.0.0.95"));
    let sink = FakePeer::start("127.0.0.95", port, &json!({}));
    let mut nodes = nodes(&pg, &dns, port, &dmarc_config());
    let reply = send_from(&nodes[0], "127.0.0.91", "before the outage");
    assert!(reply.contains("DATA 250"), "{reply}");
    let sql = "SELECT coalesce(sum(messages), 0) FROM report_dmarc";
    wait_until("the first count in the database", DELIVERY, || logs(&nodes), || pg.value(sql) == "1");

    pg.stop();
    // Without the database no message is accepted, but each was checked and counted.
    send_from(&nodes[0], "127.0.0.91", "during the outage on mx1");
    send_from(&nodes[1], "127.0.0.93", "during the outage on mx2");
    let out = nodes[1].tern_cmd(&["reports", "show"]);
    out.assert_success("tern reports show");
    assert!(out.stderr.contains("only this node's counts"), "{}", out.all());
    assert!(out.stdout.contains("127.0.0.93: 1 message(s)"), "{}", out.all());
    let send = nodes[1].tern_cmd(&["reports", "send"]);
    assert!(!send.success() && send.stderr.contains("counts kept"), "{}", send.all());
    // mx1 stops meanwhile: its counts go to its local files.
    nodes[0].sigterm().expect("mx1 stops");
    let file = nodes[0].data_dir.join("reports/dmarc.json");
    assert!(file.exists(), "{}", nodes[0].logs());

    pg.start_again();
    nodes[0].start_again();
    let context = || format!("{}\n{}", pg.psql("SELECT * FROM report_dmarc").all(), logs(&nodes));
    wait_until("every count in the database", DELIVERY, context, || pg.value(sql) == "3");
    assert!(!file.exists(), "the local file is emptied into the database");
    let sent = nodes[1].tern_cmd(&["reports", "send"]);
    sent.assert_success("tern reports send");
    assert!(sent.stdout.contains("1 report(s) sent"), "{}", sent.all());
    let msg = wait_report(&sink, "Report Domain: shop.reports.test", || logs(&nodes));
    let dir = tempfile::tempdir().expect("tempdir");
    let report = &read_report("dmarc", &msg, dir.path())["report"];
    let rows = dmarc_rows(report);
    assert_eq!(rows.len(), 2, "{report}");
    assert_eq!((rows[0].0.as_str(), rows[0].1), ("127.0.0.91", 2), "{report}");
    assert_eq!((rows[1].0.as_str(), rows[1].1), ("127.0.0.93", 1), "{report}");
}

/// A schema without the report tables is refused with the command that adds them.
#[test]
fn an_older_schema_is_refused_until_init_adds_the_report_tables() {
    let Some(pg) = Postgres::start("an_older_schema_is_refused_until_init_adds_the_report_tables") else { return };
    let mut t = Tern::new_stopped(&cluster_toml(&pg, "mx1"), &[]);
    t.tern_cmd(&["cluster", "init"]).assert_success("cluster init");
    pg.psql("DROP TABLE report_tls, report_dmarc; DELETE FROM schema_version WHERE version = 3")
        .assert_success("back to schema 2");
    let serve = t.tern_cmd(&["serve"]);
    assert!(!serve.success(), "{}", serve.all());
    assert!(serve.stderr.contains("version 2, older than this Tern's 3: run `tern cluster init`"), "{}", serve.all());
    let init = t.tern_cmd(&["cluster", "init"]);
    init.assert_success("cluster init");
    assert!(init.stdout.contains("migrated from version 2 to 3"), "{}", init.all());
    assert_eq!(pg.value("SELECT count(*) FROM report_tls"), "0");
    t.start_again();
}
