//! Aggregate reports end to end. TLS-RPT (RFC 8460): a sending Tern delivers to
//! `remote.test` under an MTA-STS enforce policy whose first MX offers no STARTTLS
//! (a fake peer), whose second shows a certificate of another name and whose third is
//! right (two Terns with certificates from a test CA); `tern reports send` then mails
//! the report to the MX of `reports.test` (a fake peer), where it is checked with a JSON
//! Schema written from RFC 8460 §4.4 (Python `jsonschema`). DMARC (RFC 7489 §7.2): a
//! receiving Tern checks mail from several loopback addresses for domains whose DMARC
//! records ask for reports; its report is read with parsedmarc. Every report's DKIM
//! signature is checked with dkimpy. Everything stays on loopback.

mod common;

use common::dkim::{Alg, Key, keygen};
use common::outbound::*;
use common::reports::*;
use common::sts::*;
use common::*;
use serde_json::{Value, json};
use std::fs;
use std::time::Duration;

const BOB: &str = "bob@remote.test";

#[test]
fn tls_reports_count_successes_and_failures_under_an_enforced_policy() {
    if missing_python(&["jsonschema", "dkim"]) {
        return;
    }
    let ca = Ca::new();
    let policy = "version: STSv1\r\nmode: enforce\r\nmx: *.remote.test\r\nmax_age: 86400\r\n";
    let Some(_sts) = PolicyServer::start(&ca, "127.0.0.81", policy) else { return };
    let port = peer_port();
    let mut zone = mx_zone(&[(10, "127.0.0.82"), (20, "127.0.0.83"), (30, "127.0.0.84")]);
    let map = zone.as_object_mut().expect("zone object");
    map.insert("_mta-sts.remote.test.".into(), json!([["TXT", "v=STSv1; id=one;"]]));
    map.insert("mta-sts.remote.test.".into(), json!([["A", "127.0.0.81"]]));
    map.insert("_smtp._tls.remote.test.".into(), json!([["TXT", "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test"]]));
    map.insert("reports.test.".into(), json!([["MX", 10, "mx.reports.test."]]));
    map.insert("mx.reports.test.".into(), json!([["A", "127.0.0.85"]]));
    let dns = DnsServer::start(&zone);
    // mx1 offers no STARTTLS; mx2's certificate names another host; mx3 is right.
    let _mx1 = FakePeer::start("127.0.0.82", port, &json!({}));
    let (cert2, key2) = ca.issue("other.remote.test");
    let tls2 = format!("\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert2.display(), key2.display());
    let _mx2 = start_receiver("127.0.0.83", port, &tls2);
    let (cert3, key3) = ca.issue("mx3.remote.test");
    let tls3 = format!("\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert3.display(), key3.display());
    let mx3 = start_receiver("127.0.0.84", port, &tls3);
    let sink = FakePeer::start("127.0.0.85", port, &json!({}));
    let key = keygen(LOCAL_DOMAIN, "rpt", Alg::Rsa);
    let extra = format!("{}\n[reports]\nfrom = \"tls-reports@{LOCAL_DOMAIN}\"\n{}", sender_base(""), key.config());
    let outbound = format!("mta_sts = true\nca_file = \"{}\"\n", ca.ca_file().display());
    let mut a = start_sender(&SenderSetup { extra: &extra, dns: Some(&dns), peer_port: port, outbound: &outbound });

    for i in 0..3 {
        send_message(&a, SENDER, &[BOB], &test_message(&format!("tls report {i}"), BOB), &[]);
    }
    // reports.test publishes no `_smtp._tls` record: its sessions are counted, never reported.
    send_message(&a, SENDER, &["postmaster@reports.test"], &test_message("plain", "postmaster@reports.test"), &[]);
    assert_eq!(mx3.wait_mail_within(REMOTE_DOMAIN, "bob", 3, DELIVERY).len(), 3);
    wait_queue_empty(&a, DELIVERY);

    // The counts outlive a restart (written at shutdown, read at start).
    a.restart();
    let shown = a.tern_cmd(&["reports", "show"]);
    shown.assert_success("tern reports show");
    assert!(shown.stdout.contains("remote.test") && shown.stdout.contains("reports.test"), "{}", shown.all());
    assert!(shown.stdout.contains("sts: 3 successful, 6 failed"), "{}", shown.all());
    assert!(shown.stdout.contains("no-policy-found: 0 successful, 1 failed"), "{}", shown.all());

    let sent = a.tern_cmd(&["reports", "send"]);
    sent.assert_success("tern reports send");
    assert!(sent.stdout.contains("tls report about remote.test queued as"), "{}", sent.all());
    assert!(sent.stdout.contains("1 report(s) sent"), "{}", sent.all());
    let id = sent.stdout.split("queued as ").nth(1).and_then(|r| r.split(' ').next()).expect("queue id").to_string();
    let msg = wait_report(&sink, "Report Domain: remote.test", || a.logs());
    assert!(a.logs().contains("TLS-RPT: the domain asks for no reports"), "{}", a.logs());

    let dir = tempfile::tempdir().expect("tempdir");
    let r = read_report("tls", &msg, dir.path());
    let subject = r["subject"].as_str().unwrap();
    assert!(subject.starts_with(&format!("Report Domain: remote.test Submitter: {HOSTNAME} Report-ID: <")), "{r}");
    assert_eq!((r["content_type"].as_str(), r["report_type"].as_str()), (Some("multipart/report"), Some("tlsrpt")));
    assert_eq!((r["tls_domain"].as_str(), r["tls_submitter"].as_str()), (Some("remote.test"), Some(HOSTNAME)));
    assert_eq!(r["part_type"], "application/tlsrpt+gzip");
    let name: Vec<&str> = r["filename"].as_str().unwrap().split('!').collect();
    assert_eq!((name.len(), name[0], name[1]), (5, HOSTNAME, "remote.test"), "{r}");
    assert!(name[4].ends_with(".json.gz"), "{r}");
    let report = &r["report"];
    let policies = report["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1, "{report}");
    let p = &policies[0];
    assert_eq!(p["policy"]["policy-type"], "sts");
    assert_eq!(p["policy"]["policy-domain"], "remote.test");
    assert_eq!(p["policy"]["mx-host"], json!(["*.remote.test"]));
    assert!(p["policy"]["policy-string"].as_array().unwrap().contains(&json!("mode: enforce")), "{p}");
    assert_eq!(p["summary"]["total-successful-session-count"], 3, "{p}");
    assert_eq!(p["summary"]["total-failure-session-count"], 6, "{p}");
    let mut details: Vec<(String, String, String, u64)> = p["failure-details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert!(d["sending-mta-ip"].is_string(), "{d}");
            let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
            (
                s("result-type"),
                s("receiving-mx-hostname"),
                s("receiving-ip"),
                d["failed-session-count"].as_u64().unwrap(),
            )
        })
        .collect();
    details.sort();
    assert_eq!(
        details,
        [
            ("certificate-host-mismatch".into(), "mx2.remote.test".into(), "127.0.0.83".into(), 3),
            ("starttls-not-supported".into(), "mx1.remote.test".into(), "127.0.0.82".into(), 3),
        ]
    );
    // RFC 8460 §3: signed with the key of the From domain.
    assert_eq!(dkim_verdict(dir.path(), &msg, &key), "pass");
    let trace = a.tern_cmd(&["queue", "trace", &id]);
    assert!(trace.stdout.contains("report sent: tls report about remote.test"), "{}", trace.all());
    // Sent reports are forgotten.
    let shown = a.tern_cmd(&["reports", "show"]);
    assert!(!shown.stdout.contains("sts: 3 successful"), "{}", shown.all());
}

const SENDER_SPF: &str = "v=spf1 ip4:127.0.0.91 ip4:127.0.0.92 -all";

/// One message from `ip` with MAIL FROM `from` (and the same From header), signed by
/// `key` when given (dkimpy).
fn send_from(t: &Tern, dir: &std::path::Path, ip: &str, from: &str, subject: &str, key: Option<&Key>) {
    let mut msg = format!(
        "From: <{from}>\r\nTo: <bob@b.test>\r\nSubject: {subject}\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
         Message-ID: <{}@sender.test>\r\n\r\nBody of {subject}.\r\n",
        subject.replace(' ', "-")
    )
    .into_bytes();
    if let Some(key) = key {
        msg = common::dkim::dkimpy_sign(dir, &msg, key, "relaxed/relaxed");
    }
    let path = t.path().join("dmarc-in.eml");
    fs::write(&path, &msg).expect("write message");
    let script = format!(
        "import os, smtplib\n\
         s = smtplib.SMTP('127.0.0.1', int(os.environ['TERN_PORT']), source_address=('{ip}', 0), timeout=60)\n\
         s.ehlo('client.test')\ns.sendmail('{from}', ['bob@b.test'], open({path:?}, 'rb').read())\ns.quit()\n",
        path = path.display().to_string()
    );
    t.python_within(&script, Duration::from_secs(60)).assert_success("smtplib client");
}

#[test]
fn dmarc_reports_aggregate_received_mail_and_respect_external_destinations() {
    if missing_python(&["parsedmarc", "dkim"]) {
        return;
    }
    let port = peer_port();
    let sender_key = keygen("shop.reports.test", "s1", Alg::Rsa);
    let report_key = keygen("b.test", "rpt", Alg::Rsa);
    let loopback = "v=spf1 ip4:127.0.0.0/8 -all";
    let rua = "v=DMARC1; p=none; rua=mailto:dmarc@reports.test";
    let mut zone = json!({
        "shop.reports.test.": [["TXT", SENDER_SPF]],
        "_dmarc.shop.reports.test.": [["TXT", rua]],
        // Another organization: reports go to reports.test only with its consent (§7.1).
        "ext-yes.test.": [["TXT", loopback]],
        "_dmarc.ext-yes.test.": [["TXT", rua]],
        "ext-yes.test._report._dmarc.reports.test.": [["TXT", "v=DMARC1"]],
        "ext-no.test.": [["TXT", loopback]],
        "_dmarc.ext-no.test.": [["TXT", rua]],
        "reports.test.": [["MX", 10, "mx.reports.test."]],
        "mx.reports.test.": [["A", "127.0.0.94"]],
    });
    zone[sender_key.dns_name()] = json!([["TXT", sender_key.record]]);
    let dns = DnsServer::start(&zone);
    let sink = FakePeer::start("127.0.0.94", port, &json!({}));
    let extra = format!(
        "{NO_RELAY}\n[local]\ndomains = [\"b.test\"]\naccept_unknown = true\n\n[auth_checks]\n\n[reports]\n\
         dmarc = true\nfrom = \"dmarc-reports@b.test\"\norg_name = \"Tern Test\"\n{}",
        report_key.config()
    );
    let t = start_sender(&SenderSetup { extra: &extra, dns: Some(&dns), peer_port: port, outbound: "" });
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = "news@shop.reports.test";
    send_from(&t, dir.path(), "127.0.0.91", shop, "signed one", Some(&sender_key));
    send_from(&t, dir.path(), "127.0.0.91", shop, "signed two", Some(&sender_key));
    send_from(&t, dir.path(), "127.0.0.92", shop, "unsigned", None);
    send_from(&t, dir.path(), "127.0.0.93", shop, "spf fails", None);
    send_from(&t, dir.path(), "127.0.0.91", "a@ext-yes.test", "allowed elsewhere", None);
    send_from(&t, dir.path(), "127.0.0.91", "a@ext-no.test", "not allowed elsewhere", None);
    t.wait_mail_within("b.test", "bob", 6, DELIVERY);
    let shown = t.tern_cmd(&["reports", "show"]);
    assert!(shown.stdout.contains("dmarc") && shown.stdout.contains("shop.reports.test"), "{}", shown.all());

    let sent = t.tern_cmd(&["reports", "send"]);
    sent.assert_success("tern reports send");
    assert!(sent.stdout.contains("2 report(s) sent"), "{}", sent.all());
    let shop_msg = wait_report(&sink, "Report Domain: shop.reports.test", || t.logs());
    let ext_msg = wait_report(&sink, "Report Domain: ext-yes.test", || t.logs());
    assert!(t.logs().contains("ext-no.test._report._dmarc.reports.test"), "{}", t.logs());
    assert!(!sink.messages().iter().any(|m| subject_of(m).contains("ext-no.test")), "{}", sink.logs());

    let r = read_report("dmarc", &shop_msg, dir.path());
    assert!(
        r["subject"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Report Domain: shop.reports.test Submitter: {HOSTNAME} Report-ID: ")),
        "{r}"
    );
    let name: Vec<&str> = r["filename"].as_str().unwrap().split('!').collect();
    assert_eq!((name.len(), name[0], name[1]), (4, HOSTNAME, "shop.reports.test"), "{r}");
    assert!(name[3].ends_with(".xml.gz"), "{r}");
    let report = &r["report"];
    assert_eq!(report["report_metadata"]["org_name"], "Tern Test", "{report}");
    assert_eq!(report["policy_published"]["domain"], "shop.reports.test", "{report}");
    let mut rows: Vec<(String, u64, String, String, String, String)> = report["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rec| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let spf = &rec["auth_results"]["spf"][0];
            let dkim = rec["auth_results"]["dkim"]
                .as_array()
                .map(|d| d.iter().map(|d| s(&d["result"])).collect::<Vec<_>>().join(","));
            (
                s(&rec["source"]["ip_address"]),
                rec["count"].as_u64().unwrap(),
                s(&rec["policy_evaluated"]["spf"]),
                s(&rec["policy_evaluated"]["dkim"]),
                format!("{}:{}", s(&spf["domain"]), s(&spf["result"])),
                dkim.unwrap_or_default(),
            )
        })
        .collect();
    rows.sort();
    let row = |ip: &str, n: u64, spf: &str, dkim: &str, spf_auth: &str, dkim_auth: &str| {
        (ip.to_string(), n, spf.to_string(), dkim.to_string(), spf_auth.to_string(), dkim_auth.to_string())
    };
    assert_eq!(
        rows,
        [
            row("127.0.0.91", 2, "pass", "pass", "shop.reports.test:pass", "pass"),
            row("127.0.0.92", 1, "pass", "fail", "shop.reports.test:pass", ""),
            row("127.0.0.93", 1, "fail", "fail", "shop.reports.test:fail", ""),
        ],
        "{report}"
    );
    let signed = report["records"].as_array().unwrap().iter().find(|r| r["count"] == 2).unwrap();
    assert_eq!(signed["auth_results"]["dkim"][0]["domain"], "shop.reports.test");
    assert_eq!(signed["auth_results"]["dkim"][0]["selector"], "s1");
    assert_eq!(dkim_verdict(dir.path(), &shop_msg, &report_key), "pass");
    let ext = read_report("dmarc", &ext_msg, dir.path());
    assert_eq!(ext["report"]["records"][0]["count"], 1, "{ext}");
}
