//! The admin HTTP listener against the real server: the token, health and readiness,
//! status, the queue API (filters, pages, hold and release, flush, bounce and delete
//! by filter), the CLI commands that reach the same code through the control socket,
//! and the metrics, read by the Prometheus project's own parser (Python
//! `prometheus_client`, its OpenMetrics parser: the format `prometheus-client` writes).

mod common;

use common::outbound::wait_for;
use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// An HTTP answer: status and body (JSON when it parses).
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `method path` against the server's admin listener with curl; `token` as bearer.
fn http(t: &Tern, method: &str, path: &str, token: Option<&str>) -> Answer {
    let url = format!("{}{path}", t.admin_url());
    let auth = token.map(|tok| format!("Authorization: Bearer {tok}"));
    let mut args = vec!["-X", method, "-w", "\n%{http_code}"];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    args.push(&url);
    let out = t.curl(&args);
    out.assert_success(&format!("curl {method} {path}"));
    let (body, status) = out.stdout.rsplit_once('\n').expect("status line");
    Answer { status: status.trim().parse().expect("status code"), body: body.to_string() }
}

/// With the server's own token.
fn api(t: &Tern, method: &str, path: &str) -> Answer {
    http(t, method, path, Some(&t.admin_token()))
}

/// `api`, expecting `status`; the JSON answer.
#[track_caller]
fn api_ok(t: &Tern, method: &str, path: &str, status: u16) -> Value {
    let a = api(t, method, path);
    assert_eq!(a.status, status, "{method} {path}: {}\n{}", a.body, t.logs());
    a.json()
}

fn affected(t: &Tern, method: &str, path: &str) -> u64 {
    api_ok(t, method, path, 200)["affected"].as_u64().expect("affected")
}

fn total(t: &Tern, query: &str) -> u64 {
    api_ok(t, "GET", &format!("/api/v1/queue?{query}"), 200)["total"].as_u64().expect("total")
}

/// Waits until `GET /api/v1/queue?query` counts `n` messages.
#[track_caller]
fn wait_total(t: &Tern, query: &str, n: u64) {
    wait_for(
        WAIT,
        &format!("{n} message(s) for {query}"),
        || (total(t, query) == n).then_some(()),
        || format!("{}\n{}", t.queue_list().all(), t.logs()),
    );
}

/// Waits until no delivery attempt runs.
fn wait_idle(t: &Tern) {
    wait_for(
        WAIT,
        "no attempt under way",
        || (api_ok(t, "GET", "/api/v1/status", 200)["queue"]["in_flight"] == 0).then_some(()),
        || t.logs(),
    );
}

/// Sends one message per recipient through one SMTP session; returns the queue ids.
fn send(t: &Tern, rcpts: &[&str]) -> Vec<String> {
    let list = rcpts.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(", ");
    let out = t.py(&format!(
        "s = connect()\nfor r in [{list}]:\n    print(send(s, 'sender@localhost', [r], 'Subject: admin test\\r\\n\\r\\nhello\\r\\n'))\ns.quit()\n"
    ));
    out.assert_success("send with smtplib");
    out.stdout.lines().map(|l| queue_id(l).expect("queue id")).collect()
}

/// A server whose mail for `hold.test`, `a.test` and `b.test` goes to `hop` (where
/// nothing may listen yet), retried every `retry`.
fn sender(hop: u16, retry: &str) -> Tern {
    Tern::start(&format!(
        "{LOCAL_OPEN}\n[queue]\nretry = [\"{retry}\"]\n\n[relay.routes]\n\"hold.test\" = \"127.0.0.1:{hop}\"\n\
         \"a.test\" = \"127.0.0.1:{hop}\"\n\"b.test\" = \"127.0.0.1:{hop}\"\n"
    ))
}

#[test]
fn the_api_needs_the_token_and_probes_do_not() {
    let t = Tern::start(LOCAL_OPEN);
    let token_file = t.data_dir.join("admin.token");
    let mode = std::fs::metadata(&token_file).expect("admin.token").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin.token is not private");
    let token = t.admin_token();
    assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");

    assert_eq!(http(&t, "GET", "/healthz", None).json()["status"], "ok");
    let ready = http(&t, "GET", "/readyz", None);
    assert_eq!((ready.status, ready.json()["status"].clone()), (200, Value::from("ready")), "{}", ready.body);
    for (method, path) in [
        ("GET", "/api/v1/status"),
        ("GET", "/api/v1/queue"),
        ("GET", "/api/v1/queue/0123456789ABCDEF"),
        ("POST", "/api/v1/queue/flush"),
        ("DELETE", "/api/v1/queue/0123456789ABCDEF"),
        ("POST", "/api/v1/reload"),
        ("GET", "/metrics"),
    ] {
        for token in [None, Some("wrong"), Some(&token[..63])] {
            let a = http(&t, method, path, token);
            assert_eq!(a.status, 401, "{method} {path} with {token:?}: {}", a.body);
            assert!(a.json()["error"].as_str().is_some_and(|e| e.contains("token")), "{}", a.body);
        }
    }
    let unknown = api(&t, "GET", "/api/v2/nothing");
    assert_eq!((unknown.status, unknown.json()["error"].is_string()), (404, true), "{}", unknown.body);
    let reload = api(&t, "POST", "/api/v1/reload");
    assert_eq!(reload.status, 200, "{}", reload.body);
    assert!(reload.json()["reloaded"].as_str().is_some_and(|r| r.starts_with("reloaded ")), "{}", reload.body);

    let status = api_ok(&t, "GET", "/api/v1/status", 200);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["listeners"][0]["addr"], format!("127.0.0.1:{}", t.port));
    assert_eq!(status["config_file"], t.config_path.display().to_string());
    assert!(status["uptime_seconds"].is_u64() && status["config_loaded_at"].is_u64(), "{status}");
    assert_eq!(status["queue"]["held"], 0);
    assert_eq!(format!("http://{}", status["admin"].as_str().unwrap()), t.admin_url());

    // The same through the control socket.
    let out = t.tern_cmd(&["status"]);
    out.assert_success("tern status");
    assert!(out.stdout.contains(&format!("127.0.0.1:{} (smtp)", t.port)), "{}", out.stdout);
    assert!(out.stdout.contains(&t.admin_url()), "{}", out.stdout);
    assert!(out.stdout.contains(&t.config_path.display().to_string()), "{}", out.stdout);
}

#[test]
fn bad_input_is_a_400_that_says_why() {
    let t = Tern::start(LOCAL_OPEN);
    for (method, path, says) in [
        ("GET", "/api/v1/queue?state=active", "state"),
        ("GET", "/api/v1/queue?older_than=soon", "older_than"),
        ("GET", "/api/v1/queue?limit=0", "limit"),
        ("GET", "/api/v1/queue?limit=many", "limit"),
        ("GET", "/api/v1/queue?cursor=xyz", "cursor"),
        ("GET", "/api/v1/queue?domain=not%20a%20domain", "domain"),
        ("GET", "/api/v1/queue?sender=nobody", "sender"),
        ("GET", "/api/v1/queue?colour=blue", "colour"),
        ("GET", "/api/v1/queue?state=held&state=queued", "twice"),
        ("GET", "/api/v1/queue/not-an-id", "queue id"),
        ("POST", "/api/v1/queue/delete", "filter"),
        ("POST", "/api/v1/queue/hold", "filter"),
        ("POST", "/api/v1/queue/hold?state=paused", "state"),
    ] {
        let a = api(&t, method, path);
        assert_eq!(a.status, 400, "{method} {path}: {}", a.body);
        let error = a.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(says), "{method} {path}: {error:?} does not say {says:?}");
    }
    let missing = api(&t, "GET", "/api/v1/queue/0123456789ABCDEF");
    assert_eq!(missing.status, 404, "{}", missing.body);
    let action = api(&t, "POST", "/api/v1/queue/0123456789ABCDEF/explode");
    assert_eq!(action.status, 404, "{}", action.body);
    let out = t.tern_cmd(&["queue", "hold"]);
    assert!(!out.success() && out.stderr.contains("give a queue id or a filter"), "{}", out.all());
}

#[test]
fn the_queue_comes_in_pages_in_id_order() {
    // Nothing answers at the next hop and retries are far apart: the mail stays.
    let t = sender(free_port(), "1h");
    let mut ids = send(&t, &["x@a.test", "y@a.test", "z@a.test", "x@b.test", "y@b.test"]);
    ids.sort();
    wait_total(&t, "state=deferred", 5);

    let mut seen = Vec::new();
    let mut cursor = String::new();
    for page in 0.. {
        assert!(page < 5, "too many pages");
        let query = if cursor.is_empty() { "limit=2".to_string() } else { format!("limit=2&cursor={cursor}") };
        let p = api_ok(&t, "GET", &format!("/api/v1/queue?{query}"), 200);
        assert_eq!(p["total"], 5);
        seen.extend(p["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()));
        match p["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    assert_eq!(total(&t, "domain=a.test"), 3);
    assert_eq!(total(&t, "domain=B.TEST&state=deferred"), 2);
    assert_eq!(total(&t, "sender=sender@localhost"), 5);
    assert_eq!(total(&t, "sender=@localhost&older_than=1h"), 0);
    assert_eq!(total(&t, "state=queued"), 0);

    let one = api_ok(&t, "GET", &format!("/api/v1/queue/{}", ids[0].to_lowercase()), 200);
    assert_eq!(one["id"], ids[0].as_str());
    assert_eq!(one["sender"], "sender@localhost");
    let rcpt = &one["recipients"][0];
    assert_eq!((rcpt["state"].as_str(), rcpt["attempts"].as_u64()), (Some("deferred"), Some(1)), "{one}");
    assert!(rcpt["next_attempt"].as_i64() > Some(0), "{one}");
    // The failure as typed fields: an enhanced status and Tern's own words.
    assert!(rcpt["detail"]["status"].as_str().is_some_and(|s| s.starts_with("4.")), "{one}");
    assert!(rcpt["detail"]["text"].is_string(), "{one}");

    // `tern queue list --json` is the same listing, read from the spool.
    let out = t.tern_cmd(&["queue", "list", "--json"]);
    out.assert_success("tern queue list --json");
    let listed: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(listed["total"], 5);
    assert_eq!(listed["messages"][0]["id"], ids[0].as_str());
}

#[test]
fn held_mail_waits_for_its_release_across_a_restart() {
    let hop = free_port();
    let mut t = sender(hop, "1s");
    let ids = send(&t, &["held@hold.test", "free@hold.test"]);
    let (held, free) = (&ids[0], &ids[1]);
    wait_total(&t, "state=deferred", 2);
    assert_eq!(affected(&t, "POST", &format!("/api/v1/queue/{held}/hold")), 1);
    let again = api(&t, "POST", &format!("/api/v1/queue/{held}/hold"));
    assert_eq!(again.status, 409, "{}", again.body);
    let shown = api_ok(&t, "GET", &format!("/api/v1/queue/{held}"), 200);
    assert_eq!((shown["state"].as_str(), shown["next_attempt"].is_null()), (Some("held"), true), "{shown}");

    t.restart();
    assert_eq!(api_ok(&t, "GET", &format!("/api/v1/queue/{held}"), 200)["state"], "held");
    assert_eq!(api_ok(&t, "GET", "/api/v1/status", 200)["queue"]["held"], 1);

    // The next hop comes up: the other message goes, the held one stays.
    let peer = Tern::start(&format!(
        "\n[local]\ndomains = [\"hold.test\"]\naccept_unknown = true\n\n[[listen]]\naddr = \"127.0.0.1:{hop}\"\nmode = \"smtp\"\n"
    ));
    t.tern_cmd(&["queue", "flush"]).assert_success("tern queue flush");
    let got = peer.wait_mail("hold.test", "free", 1);
    assert_eq!(got.len(), 1);
    wait_total(&t, "", 1);
    let flush = t.tern_cmd(&["queue", "flush", held]);
    assert!(!flush.success() && flush.stderr.contains("on hold"), "{}", flush.all());
    assert!(peer.new_files("hold.test", "held").is_empty(), "held mail was delivered");
    assert_eq!(api(&t, "GET", &format!("/api/v1/queue/{free}")).status, 404);

    let out = t.tern_cmd(&["queue", "release", held]);
    out.assert_success("tern queue release");
    assert_eq!(out.stdout.trim(), format!("{held} released"));
    peer.wait_mail("hold.test", "held", 1);
    wait_total(&t, "", 0);
}

#[test]
fn operations_by_filter_count_what_they_changed() {
    let t = sender(free_port(), "1h");
    let ids = send(&t, &["p@a.test", "q@a.test", "r@a.test", "p@b.test", "q@b.test"]);
    wait_total(&t, "state=deferred", 5);
    wait_idle(&t);

    assert_eq!(affected(&t, "POST", "/api/v1/queue/flush?domain=a.test"), 3);
    wait_for(
        WAIT,
        "the flushed messages tried again",
        || {
            let p = api_ok(&t, "GET", "/api/v1/queue?domain=a.test", 200);
            let tried = p["messages"].as_array().unwrap().iter().filter(|m| m["attempts"] == 2).count();
            (tried == 3).then_some(())
        },
        || t.logs(),
    );
    wait_idle(&t);

    assert_eq!(affected(&t, "POST", "/api/v1/queue/hold?domain=b.test"), 2);
    assert_eq!(total(&t, "state=held"), 2);
    assert_eq!(affected(&t, "POST", "/api/v1/queue/hold?domain=b.test"), 0, "held twice");
    let out = t.tern_cmd(&["queue", "release", "--domain", "b.test"]);
    out.assert_success("tern queue release --domain");
    assert_eq!(out.stdout.trim(), "2 message(s) released");
    let out = t.tern_cmd(&["queue", "hold", "--sender", "sender@localhost", "--state", "deferred"]);
    out.assert_success("tern queue hold --sender");
    assert_eq!(out.stdout.trim(), "5 message(s) put on hold");
    assert_eq!(affected(&t, "POST", "/api/v1/queue/release?older_than=0s"), 5);

    // Bounced to the local sender: one report per message.
    assert_eq!(affected(&t, "POST", "/api/v1/queue/bounce?domain=b.test"), 2);
    t.wait_mail("localhost", "sender", 2);
    assert_eq!(total(&t, "domain=b.test"), 0);

    let out = t.tern_cmd(&["queue", "flush", "--domain", "a.test"]);
    out.assert_success("tern queue flush --domain");
    assert_eq!(out.stdout.trim(), "3 message(s) scheduled for immediate delivery");
    wait_for(
        WAIT,
        "the second flush tried",
        || {
            let p = api_ok(&t, "GET", "/api/v1/queue?domain=a.test", 200);
            let tried = p["messages"].as_array().unwrap().iter().filter(|m| m["attempts"] == 3).count();
            (tried == 3).then_some(())
        },
        || t.logs(),
    );
    wait_idle(&t);
    assert_eq!(affected(&t, "DELETE", &format!("/api/v1/queue/{}", ids[0])), 1);
    assert_eq!(api(&t, "DELETE", &format!("/api/v1/queue/{}", ids[0])).status, 404);
    assert_eq!(affected(&t, "POST", "/api/v1/queue/delete?domain=a.test"), 2);
    // Deleted without a word: a notice would be stored before the answer, and so be
    // in the queue or already delivered; there are only the two bounces.
    assert_eq!(total(&t, ""), 0);
    assert_eq!(t.new_files("localhost", "sender").len(), 2);
}

#[test]
fn a_listen_address_off_loopback_is_refused() {
    let t = Tern::new_stopped(&format!("{LOCAL_OPEN}\n[admin]\nlisten = \"0.0.0.0:0\"\n"), &[]);
    let out = t.tern_cmd(&["serve"]);
    assert!(!out.success() && !out.timed_out, "{}", out.all());
    assert!(out.stderr.contains("not a loopback address") && out.stderr.contains("no TLS"), "{}", out.stderr);
    let check = t.tern_cmd(&["config", "check"]);
    assert!(!check.success() && check.stderr.contains("admin.listen"), "{}", check.all());
}

#[test]
fn an_empty_listen_address_turns_it_off() {
    let t = Tern::start(&format!("{LOCAL_OPEN}\n[admin]\nlisten = \"\"\n"));
    let out = std::fs::read_to_string(t.stdout_log()).unwrap();
    assert!(out.contains("admin API off"), "{out}");
    assert!(!t.data_dir.join("admin.token").exists());
    // The control socket does not need it.
    let status = t.tern_cmd(&["status"]);
    status.assert_success("tern status");
    assert!(status.stdout.contains("admin API:  off"), "{}", status.stdout);
}

/// Every sample of `/metrics` as `name{label="value",…}` (labels sorted) → value,
/// parsed by `prometheus_client`; the token sent when given.
fn scrape(t: &Tern, token: Option<&str>) -> HashMap<String, f64> {
    let script = format!(
        r#"
import json, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
headers = {{"Authorization": "Bearer {token}"}} if "{token}" else {{}}
request = urllib.request.Request("{url}/metrics", headers=headers)
with urllib.request.urlopen(request, timeout=20) as answer:
    assert answer.headers["Content-Type"].startswith("application/openmetrics-text"), answer.headers["Content-Type"]
    text = answer.read().decode()
samples = {{}}
for family in text_string_to_metric_families(text):
    for s in family.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        samples["%s{{%s}}" % (s.name, labels)] = s.value
print(json.dumps(samples))
"#,
        token = token.unwrap_or(""),
        url = t.admin_url()
    );
    let out = t.python(&script);
    out.assert_success("scrape /metrics with prometheus_client");
    serde_json::from_str(&out.stdout).expect("samples as JSON")
}

#[track_caller]
fn sample(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples.get(key).unwrap_or_else(|| {
        let mut keys: Vec<&String> = samples.keys().collect();
        keys.sort();
        panic!("no sample {key} among {keys:#?}")
    })
}

#[test]
fn metrics_move_with_real_traffic() {
    // A stranger (no relay networks) whose mail is checked; DNS trouble does not
    // hold the message back.
    let t = Tern::start(&format!("{LOCAL_OPEN}{NO_RELAY}\n[auth_checks]\ntemp_error = \"accept\"\ntimeout = \"2s\"\n"));
    let listener = format!("listener=\"127.0.0.1:{}\"", t.port);
    let before = scrape(&t, Some(&t.admin_token()));
    assert_eq!(sample(&before, &format!("tern_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), 1.0);
    for key in [
        "tern_queue_messages{state=\"held\"}",
        "tern_tls_handshakes_total{direction=\"outbound\",version=\"TLSv1.3\"}",
        "tern_deliveries_total{result=\"delivered\",transport=\"lmtp\"}",
        "tern_dns_lookups_total{result=\"nxdomain\",type=\"mx\"}",
    ] {
        assert_eq!(sample(&before, key), 0.0, "{key}");
    }

    let out = t.py("s = connect()\n\
         assert s.mail('someone@sender.test')[0] == 250\n\
         assert s.rcpt('alice@localhost')[0] == 250\n\
         code, text = s.rcpt('bob@elsewhere.test')\n\
         assert code == 554, (code, text)\n\
         code, text = s.data(b'Subject: metrics\\r\\n\\r\\nhello\\r\\n')\n\
         assert code == 250, (code, text)\n\
         s.quit()\n");
    out.assert_success("a message with a refused recipient");
    t.wait_one("localhost", "alice");
    let after = wait_for(
        WAIT,
        "the delivery counted",
        || {
            let now = scrape(&t, Some(&t.admin_token()));
            let key = "tern_deliveries_total{result=\"delivered\",transport=\"local\"}";
            (sample(&now, key) > sample(&before, key)).then_some(now)
        },
        || t.logs(),
    );
    let moved = |key: &str| sample(&after, key) - sample(&before, key);
    assert_eq!(moved(&format!("tern_connections_total{{{listener},result=\"accepted\"}}")), 1.0);
    assert_eq!(moved(&format!("tern_messages_received_total{{{listener}}}")), 1.0);
    assert_eq!(moved("tern_messages_refused_total{reason=\"relay_denied\"}"), 1.0);
    assert_eq!(moved("tern_deliveries_total{result=\"delivered\",transport=\"local\"}"), 1.0);
    // The nameserver does not answer: SPF could not be decided.
    assert_eq!(moved("tern_auth_results_total{method=\"spf\",result=\"temperror\"}"), 1.0);
    assert_eq!(moved("tern_auth_results_total{method=\"dkim\",result=\"none\"}"), 1.0);
    assert_eq!(moved("tern_receive_latency_seconds_count{}"), 1.0);
    assert_eq!(moved("tern_delivery_latency_seconds_count{}"), 1.0);
    assert!(moved("tern_spool_commit_batch_size_count{}") >= 2.0, "the message and its result");
    assert!(sample(&after, "tern_spool_bytes{}") > 0.0);
    assert_eq!(sample(&after, &format!("tern_connections_active{{{listener}}}")), 0.0);
    assert_eq!(sample(&after, "tern_queue_messages{state=\"queued\"}"), 0.0);
    // SPF asked Tern's resolver for the TXT records of sender.test, in vain.
    assert!(moved("tern_dns_lookups_total{result=\"error\",type=\"txt\"}") >= 1.0, "no DNS lookup counted");
}

#[test]
fn metrics_may_be_public_and_count_the_queue() {
    let t = Tern::start(&format!(
        "{LOCAL_OPEN}\n[admin]\nlisten = \"127.0.0.1:0\"\nmetrics_public = true\n\n[relay.routes]\n\"a.test\" = \"127.0.0.1:{}\"\n",
        free_port()
    ));
    send(&t, &["x@a.test", "y@a.test"]);
    wait_total(&t, "state=deferred", 2);
    assert_eq!(affected(&t, "POST", "/api/v1/queue/hold?sender=sender@localhost&older_than=0s"), 2);
    let samples = scrape(&t, None);
    assert_eq!(sample(&samples, "tern_queue_messages{state=\"held\"}"), 2.0);
    assert_eq!(sample(&samples, "tern_deliveries_total{result=\"deferred\",transport=\"remote\"}"), 2.0);
    assert!(sample(&samples, "tern_queue_oldest_seconds{}") >= 0.0);
    assert_eq!(http(&t, "GET", "/api/v1/status", None).status, 401, "only the metrics are public");
}

#[test]
fn refusals_in_sessions_are_counted_by_reason() {
    let t = Tern::start(&format!(
        "{LOCAL_OPEN}{NO_RELAY}{NO_AUTH_CHECKS}\n[limits]\nmax_message_size = 2000\nmax_recipients = 2\nmax_connections_per_ip = 1\n"
    ));
    let token = t.admin_token();
    let before = scrape(&t, Some(&token));
    let out = t.py(r#"
s = connect()
code, _ = s.docmd("FROB")
assert code == 500, code
assert s.mail("someone@sender.test")[0] == 250
code, _ = s.rcpt("bob@elsewhere.test")
assert code == 554, code
# The one connection a stranger may have is open: a second one is refused.
try:
    smtplib.SMTP("127.0.0.1", PORT, timeout=30)
    raise SystemExit("a second connection was served")
except smtplib.SMTPConnectError as e:
    assert e.smtp_code == 421, e
assert s.rcpt("alice@localhost")[0] == 250
assert s.rcpt("carol@localhost")[0] == 250
code, _ = s.rcpt("dave@localhost")
assert code == 452, code
code, _ = s.data(b"Subject: big\r\n\r\n" + b"x" * 4000 + b"\r\n")
assert code == 552, code
assert s.mail("someone@sender.test")[0] == 250
assert s.rcpt("alice@localhost")[0] == 250
# smtplib's data() would mend a bare CR: the content goes as it is.
assert s.docmd("DATA")[0] == 354
s.send(b"Subject: bare CR\r\n\r\nsmuggled\r.\rMAIL FROM:<x@y>\r\n.\r\n")
code, _ = s.getreply()
assert code == 550, code
s.quit()
"#);
    out.assert_success("refusals with smtplib");
    let after = scrape(&t, Some(&token));
    let moved = |key: &str| sample(&after, key) - sample(&before, key);
    for (reason, n) in [
        ("protocol", 1.0),
        ("relay_denied", 1.0),
        ("connection_limit", 1.0),
        ("too_many_recipients", 1.0),
        ("message_size", 1.0),
        ("content", 1.0),
        ("unknown_recipient", 0.0),
        ("other", 0.0),
    ] {
        assert_eq!(moved(&format!("tern_messages_refused_total{{reason=\"{reason}\"}}")), n, "{reason}\n{}", t.logs());
    }
    let listener = format!("listener=\"127.0.0.1:{}\"", t.port);
    assert_eq!(moved(&format!("tern_connections_total{{{listener},result=\"refused_limit\"}}")), 1.0);
    // The console counts the same.
    let activity = api_ok(&t, "GET", "/api/v1/activity", 200);
    assert_eq!(activity["since_start"]["refused"]["content"], 1, "{activity}");
}
