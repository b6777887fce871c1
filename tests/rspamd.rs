//! rspamd end to end: the real rspamd from Debian (a private configuration in a temp
//! dir, no Redis, one worker on a loopback port) judges GTUBE, clean mail, a scored
//! test word and rspamd's test patterns; a fake rspamd in Python gives the answers a
//! real one gives rarely (soft reject, greylist, header edits) and the broken ones
//! (garbage, too slow, too large, HTTP 500); and rspamd down meets each `on_error`.
//! The trace (`GET /api/v1/messages/{id}/trace`) and `/metrics` are checked too.

mod common;

use common::outbound::wait_for;
use common::*;
use serde_json::Value;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
/// The body of rspamd's standard GTUBE test message (reject); rspamd's test patterns
/// put another letter first: `Y` for add header, `Z` for rewrite subject.
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
/// A word the private configuration scores 7 (add header at 6, reject at 15).
const TEST_WORD: &str = "ternspamword";

/// The real rspamd, started in its own process group and stopped with it.
struct Rspamd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Rspamd {
    /// Starts rspamd with a private configuration, or `None` when it is not installed.
    fn start() -> Option<Rspamd> {
        if !have_program("/usr/bin/rspamd") {
            eprintln!("SKIPPED: rspamd is not installed (Debian package rspamd)");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("tern-rspamd-").tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display().to_string();
        fs::write(dir.path().join("words.map"), format!("/{TEST_WORD}/i\n")).unwrap();
        // What rspamd.lua sets up for the plugins, without the stock rules.
        fs::write(
            dir.path().join("init.lua"),
            "require \"global_functions\" ()\nconfig['regexp'] = {}\nrspamd_maps = {}\n",
        )
        .unwrap();
        // No Redis and no network: only GTUBE (in rspamd's core), one multimap rule and
        // the milter headers; DNS goes to a loopback port where nothing answers.
        let conf = format!(
            r#"options {{
  pidfile = "{d}/rspamd.pid";
  dbdir = "{d}";
  tempdir = "{d}";
  enable_test_patterns = true;
  disable_hyperscan = true;
  local_addrs = [];
  dns {{ nameserver = ["127.0.0.1:{dead}"]; timeout = 0.5s; retransmits = 1; }}
}}
logging {{ type = "file"; filename = "{d}/rspamd.log"; level = "info"; }}
worker "normal" {{ bind_socket = "127.0.0.1:{port}"; bind_socket = "{d}/normal.sock mode=0666"; count = 1; }}
actions {{ reject = 15; add_header = 6; greylist = 4; }}
lua = "{d}/init.lua";
modules {{ path = "/usr/share/rspamd/plugins/"; }}
multimap {{
  TERN_TEST_WORD {{ type = "content"; filter = "text"; regexp = true; map = "{d}/words.map"; score = 7.0; description = "Tern's test word"; }}
}}
milter_headers {{ use = ["x-spamd-result", "x-spam-status"]; skip_local = false; skip_authenticated = false; }}
"#,
            dead = free_port()
        );
        let config = dir.path().join("rspamd.conf");
        fs::write(&config, conf).unwrap();
        // As root rspamd needs --insecure to keep its workers as root.
        let root = unsafe { libc::geteuid() } == 0;
        let id = |flag: &str| {
            let mut cmd = Command::new("id");
            cmd.arg(flag);
            run(cmd, CLIENT_TIMEOUT).stdout.trim().to_string()
        };
        let mut cmd = Command::new("/usr/bin/rspamd");
        cmd.args(["-f", "-c"]).arg(&config).args(["-u", &id("-un"), "-g", &id("-gn")]);
        if root {
            cmd.arg("-i");
        }
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(fs::File::create(dir.path().join("stderr.log")).unwrap())
            .process_group(0);
        let child = cmd.spawn().expect("start rspamd");
        let rspamd = Rspamd { dir, port, child };
        // Ready once it scores the test word (its map is read at start).
        let probe = format!("Subject: probe\r\n\r\n{TEST_WORD}\r\n");
        wait_for(
            Duration::from_secs(60),
            "rspamd to start",
            || rspamd.check(probe.as_bytes()).filter(|a| a.contains("TERN_TEST_WORD")),
            || rspamd.logs(),
        );
        Some(rspamd)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// rspamd's answer to `message`, or `None` while it does not answer.
    fn check(&self, message: &[u8]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let head = format!("POST /checkv2 HTTP/1.0\r\nIP: 127.0.0.1\r\nContent-Length: {}\r\n\r\n", message.len());
        s.write_all(head.as_bytes()).ok()?;
        s.write_all(message).ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        answer.starts_with("HTTP/1.").then_some(answer)
    }

    fn logs(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let log = read("rspamd.log");
        let tail = &log[log.len().saturating_sub(10_000)..];
        format!("--- rspamd stderr ---\n{}\n--- rspamd.log (end) ---\n{tail}", read("stderr.log"))
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        // The main process and its workers: TERM, then KILL if they linger.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.wait();
    }
}

/// Tern on a loopback port with local mail for `localhost` and `[rspamd]` as given.
fn tern(rspamd: &str) -> Tern {
    Tern::start(&format!("{LOCAL_OPEN}{NO_AUTH_CHECKS}\n[rspamd]\n{rspamd}\n"))
}

/// Sends `message` to alice@localhost (and `more` recipients): the reply to DATA.
fn send(t: &Tern, message: &str, more: &[&str]) -> (u16, String) {
    let mut rcpts = vec!["alice@localhost"];
    rcpts.extend_from_slice(more);
    let script = format!(
        "s = connect()\ncode, resp = s.mail('sender@example.test')\nfor r in {rcpts:?}:\n    s.rcpt(r)\n\
         code, resp = s.data({message:?})\nprint(code, resp.decode())\ns.quit()\n"
    );
    let out = t.py(&script);
    out.assert_success("send with smtplib");
    let (code, text) = out.stdout.trim().split_once(' ').expect("code and text");
    (code.parse().expect("code"), text.to_string())
}

/// A message with `subject`, the `extra` header lines and `body`.
fn message(subject: &str, extra: &str, body: &str) -> String {
    format!(
        "From: Sender <sender@example.test>\r\nTo: Alice <alice@localhost>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.test>\r\nDate: Sun, 06 Dec 2026 21:00:00 +0000\r\n{extra}\r\n{body}\r\n"
    )
}

/// The delivered message of alice@localhost whose Subject is `subject`, as stored
/// (without the Return-Path and Delivered-To of the delivery).
fn delivered(t: &Tern, subject: &str) -> String {
    let line = format!("\r\nSubject: {subject}\r\n");
    wait_for(
        WAIT,
        &format!("delivery of {subject:?}"),
        || {
            t.new_files("localhost", "alice")
                .iter()
                .map(|p| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned())
                .find(|m| header_block(m).contains(&line))
                .map(|m| m.splitn(3, "\r\n").nth(2).unwrap_or_default().to_string())
        },
        || t.logs(),
    )
}

fn header_block(message: &str) -> &str {
    message.split("\r\n\r\n").next().unwrap_or_default()
}

/// `GET path` on the admin listener with the token: (status, body).
fn admin_get(t: &Tern, path: &str) -> (u16, String) {
    let auth = format!("Authorization: Bearer {}", t.admin_token());
    let out = t.curl(&["-H", &auth, "-w", "\n%{http_code}", &format!("{}{path}", t.admin_url())]);
    out.assert_success(&format!("GET {path}"));
    let (body, status) = out.stdout.rsplit_once('\n').expect("status line");
    (status.trim().parse().expect("status"), body.to_string())
}

/// The `scanned` event of message `id`, once traced.
fn scanned(t: &Tern, id: &str) -> Value {
    wait_for(
        WAIT,
        "the scanned event in the trace",
        || {
            let (status, body) = admin_get(t, &format!("/api/v1/messages/{id}/trace"));
            let trace: Value = serde_json::from_str(&body).ok()?;
            let events = trace["events"].as_array()?.clone();
            (status == 200).then_some(())?;
            events.into_iter().find(|e| e["event"] == "scanned")
        },
        || t.logs(),
    )
}

/// The value of `tern_spam_results_total{action="…"}`.
fn spam_count(t: &Tern, action: &str) -> f64 {
    let (status, body) = admin_get(t, "/metrics");
    assert_eq!(status, 200, "{body}");
    let series = format!("tern_spam_results_total{{action=\"{action}\"}} ");
    let line = body.lines().find(|l| l.starts_with(&series)).unwrap_or_else(|| panic!("no {series} in\n{body}"));
    line[series.len()..].trim().parse().expect("count")
}

#[test]
fn real_rspamd_judges_gtube_clean_mail_and_scores() {
    let Some(rspamd) = Rspamd::start() else { return };
    let t = tern(&format!("url = \"{}\"\ntimeout = \"10s\"\n", rspamd.url()));

    // GTUBE: refused at the end of DATA with rspamd's text.
    let (code, text) = send(&t, &message("gtube", "", GTUBE), &[]);
    assert_eq!(code, 550, "{text}\n{}", rspamd.logs());
    assert!(text.starts_with("5.7.1") && text.contains("Gtube pattern"), "{text}");

    // Clean mail: delivered with rspamd's headers, the client's X-Spam verdict gone.
    let (code, text) = send(&t, &message("clean", "X-Spam: Yes\r\nX-Spam-Score: 99\r\n", "Hello Alice."), &[]);
    assert_eq!(code, 250, "{text}");
    let clean = delivered(&t, "clean");
    let head = header_block(&clean);
    assert!(head.contains("X-Spamd-Result: default: False [0.00 / 15.00]"), "{head}");
    assert!(head.contains("X-Spam-Status: No, score=0.00"), "{head}");
    assert!(!head.contains("X-Spam: Yes") && !head.contains("X-Spam-Score"), "{head}");
    assert!(clean.ends_with("\r\n\r\nHello Alice.\r\n"), "{clean}");

    // The test word scores 7: add header, marked by rspamd's X-Spam-Status and Tern's
    // X-Spam and X-Spam-Score. The message is large (its body spilled to a file on
    // the way in) with the word at its end: the whole content reached rspamd.
    let filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n".repeat(8000);
    let (code, text) = send(&t, &message("scored", "", &format!("{filler}{TEST_WORD}")), &[]);
    assert_eq!(code, 250, "{text}");
    let id = queue_id(&text).expect("queue id");
    let scored = delivered(&t, "scored");
    let head = header_block(&scored);
    for field in
        ["X-Spam: Yes\r\n", "X-Spam-Score: 7.00\r\n", "X-Spam-Status: Yes, score=7.00\r\n", "TERN_TEST_WORD(7.00)"]
    {
        assert!(head.contains(field), "{field:?} not in\n{head}");
    }
    assert!(scored.len() > filler.len(), "content lost: {} bytes", scored.len());
    let event = scanned(&t, &id);
    assert_eq!(event["action"], "add header", "{event}");
    assert_eq!(event["score"], 7.0, "{event}");
    assert_eq!(event["required_score"], 15.0, "{event}");
    assert!(event["symbols"].as_array().unwrap().iter().any(|s| s["name"] == "TERN_TEST_WORD" && s["score"] == 7.0));
    let shown = t.tern_cmd(&["queue", "trace", &id]);
    assert!(shown.stdout.contains("scanned by rspamd: add header, score 7.00 / 15.00"), "{}", shown.all());

    // rspamd's test pattern for rewrite subject.
    let (code, text) = send(&t, &message("rewrite-me", "", &format!("Z{}", &GTUBE[1..])), &[]);
    assert_eq!(code, 250, "{text}");
    let rewritten = delivered(&t, "*** SPAM *** rewrite-me");
    assert!(header_block(&rewritten).contains("X-Spam: Yes\r\n"), "{rewritten}");

    for (action, at_least) in [("reject", 1.0), ("no_action", 1.0), ("add_header", 1.0), ("rewrite_subject", 1.0)] {
        assert!(spam_count(&t, action) >= at_least, "{action}");
    }
    assert_eq!(spam_count(&t, "error"), 0.0);

    // Over rspamd's unix socket.
    let socket = rspamd.dir.path().join("normal.sock");
    let t = tern(&format!("url = \"unix:{}\"\ntimeout = \"10s\"\n", socket.display()));
    let (code, text) = send(&t, &message("gtube-unix", "", GTUBE), &[]);
    assert_eq!((code, text.as_str()), (550, "5.7.1 Gtube pattern"), "{}", rspamd.logs());
}

/// The fake rspamd: answers by the Subject of the message, and writes each request
/// (its headers, body size and SHA-256) as a JSON line to `requests.jsonl`.
const FAKE: &str = r#"
import hashlib, http.server, json, os, re, sys, time
DIR = sys.argv[1]
ANSWERS = {
    "plain": (200, {"action": "no action", "score": 0.5, "required_score": 15, "symbols": {"X": {"score": 0.5}}}),
    "rewrite": (200, {"action": "rewrite subject", "score": 9, "required_score": 15, "subject": "[SPAM] rewrite"}),
    "soft": (200, {"action": "soft reject", "score": 9, "required_score": 15, "messages": {"smtp_message": "Rate limited, later"}}),
    "greylist": (200, {"action": "greylist", "score": 5, "required_score": 15}),
    "edits": (200, {"action": "no action", "score": 1, "required_score": 15,
                    "milter": {"add_headers": {"X-Added": "yes", "DKIM-Signature": {"value": "v=1; a=rsa-sha256; d=example.test", "order": 0}},
                               "remove_headers": {"X-Remove-Me": 0}}}),
    "discard": (200, {"action": "discard", "score": 30, "required_score": 15}),
    "garbage": (200, "<html>this is not rspamd</html>"),
    "status": (500, {"error": "internal trouble"}),
}
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        subject = re.search(rb"(?m)^Subject: ([\w-]+)", body).group(1).decode()
        with open(os.path.join(DIR, "requests.jsonl"), "a") as log:
            log.write(json.dumps({"path": self.path, "subject": subject, "headers": self.headers.items(),
                                  "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}) + "\n")
        if subject == "slow":
            time.sleep(8)
        if subject == "huge":
            out = b"{\"action\": \"no action\", \"score\": 0, \"pad\": \"" + b"x" * (3 << 20) + b"\"}"
            status = 200
        else:
            status, answer = ANSWERS.get(subject, ANSWERS["plain"])
            out = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        try:
            self.wfile.write(out)
        except OSError:
            pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// The fake rspamd, ended on drop.
struct Fake {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Fake {
    fn start() -> Fake {
        let dir = tempfile::Builder::new().prefix("tern-fake-rspamd-").tempdir().expect("tempdir");
        let script = dir.path().join("fake.py");
        fs::write(&script, FAKE).unwrap();
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("start the fake rspamd");
        let mut stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while stdout.read(&mut byte).is_ok_and(|n| n == 1) && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            let _ = tx.send(String::from_utf8_lossy(&line).trim().parse::<u16>().ok());
        });
        let port = rx.recv_timeout(WAIT).ok().flatten();
        let mut fake = Fake { dir, port: 0, child };
        fake.port = port.unwrap_or_else(|| panic!("the fake rspamd did not start: {}", fake.logs()));
        fake
    }

    fn requests(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.dir.path().join("requests.jsonl")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The request for the message with `subject`.
    fn request(&self, subject: &str) -> Value {
        self.requests()
            .into_iter()
            .find(|r| r["subject"] == subject)
            .unwrap_or_else(|| panic!("no request for {subject}"))
    }

    fn logs(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The values of request header `name` (any case) of a logged request.
fn header_values(request: &Value, name: &str) -> Vec<String> {
    request["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn verdicts_of_a_fake_rspamd_are_applied() {
    let fake = Fake::start();
    let config = format!(
        "url = \"http://127.0.0.1:{}/\"\napplies_to = [\"smtp\", \"local\"]\nsettings_id = \"tern-inbound\"\n",
        fake.port
    );
    let t = tern(&config);

    // The request: rspamd's protocol headers, the message as stored but for the edits.
    let (code, text) = send(&t, &message("plain", "", "plain body"), &["bob@localhost"]);
    assert_eq!(code, 250, "{text}");
    let id = queue_id(&text).unwrap();
    let request = fake.request("plain");
    assert_eq!(request["path"], "/checkv2");
    let one = |name: &str| header_values(&request, name).join("|");
    assert_eq!(one("IP"), "127.0.0.1");
    assert_eq!(one("Helo"), "client.test");
    assert_eq!(one("From"), "sender@example.test");
    assert_eq!(header_values(&request, "Rcpt"), ["alice@localhost", "bob@localhost"]);
    assert_eq!(one("Queue-Id"), id);
    assert_eq!(one("Settings-ID"), "tern-inbound");
    assert_eq!(one("User"), "", "no user without AUTH");
    let plain = delivered(&t, "plain");
    assert!(!header_block(&plain).contains("X-Spam"), "clean mail is not marked: {plain}");
    assert_eq!(request["size"].as_u64().unwrap() as usize, plain.len(), "rspamd saw what was stored");
    assert_eq!(request["sha256"], sha256(plain.as_bytes()));

    // rewrite subject.
    assert_eq!(send(&t, &message("rewrite", "", "x"), &[]).0, 250);
    let rewritten = delivered(&t, "[SPAM] rewrite");
    assert!(header_block(&rewritten).contains("X-Spam-Score: 9.00\r\n"), "{rewritten}");

    // soft reject and greylist: 451 4.7.1, with rspamd's text when it gives one.
    let (code, text) = send(&t, &message("soft", "", "x"), &[]);
    assert_eq!((code, text.as_str()), (451, "4.7.1 Rate limited, later"));
    let (code, text) = send(&t, &message("greylist", "", "x"), &[]);
    assert_eq!((code, text.as_str()), (451, "4.7.1 Greylisted, try again later"));
    // discard: refused rather than dropped.
    assert_eq!(send(&t, &message("discard", "", "x"), &[]).0, 550);

    // milter.add_headers (one at the top) and milter.remove_headers.
    let (code, text) = send(&t, &message("edits", "X-Remove-Me: 1\r\nX-Remove-Me: 2\r\nX-Kept: 3\r\n", "x"), &[]);
    assert_eq!(code, 250, "{text}");
    let edited = delivered(&t, "edits");
    let head = header_block(&edited);
    assert!(head.starts_with("DKIM-Signature: v=1; a=rsa-sha256; d=example.test\r\nReceived: "), "{head}");
    assert!(head.ends_with("X-Kept: 3\r\nX-Added: yes"), "{head}");
    assert!(!head.contains("X-Remove-Me"), "{head}");

    // The local submission socket is scanned too, and names its user.
    let out =
        t.tern_cmd_with_input(&["sendmail", "alice@localhost"], Some(b"Subject: from-socket\n\nfrom the socket\n"));
    out.assert_success("tern sendmail");
    delivered(&t, "from-socket");
    let user = header_values(&fake.request("from-socket"), "User");
    assert_eq!(user.len(), 1, "{user:?}");
    assert!(!user[0].is_empty());

    assert_eq!(spam_count(&t, "soft_reject"), 1.0);
    assert_eq!(spam_count(&t, "greylist"), 1.0);
    assert_eq!(spam_count(&t, "rewrite_subject"), 1.0);
    assert_eq!(spam_count(&t, "reject"), 1.0);
}

#[test]
fn terns_signature_covers_the_subject_rspamd_rewrote() {
    use common::dkim::{Alg, dkimpy_verify, keygen, require_dkimpy};
    require_dkimpy();
    let fake = Fake::start();
    let key = keygen("a.test", "s1", Alg::Rsa);
    // Loopback may relay: its mail is Tern's to sign, and rspamd scans it too.
    let config = format!("url = \"http://127.0.0.1:{}/\"\n{}", fake.port, key.config());
    let t = tern(&config);
    let message = "From: Alice <alice@a.test>\r\nTo: <alice@localhost>\r\nSubject: rewrite\r\n\
                   Date: Sun, 06 Dec 2026 21:00:00 +0000\r\nMessage-ID: <signed@a.test>\r\n\r\nsigned body\r\n";
    let script = format!(
        "s = connect()\ns.mail('alice@a.test')\ns.rcpt('alice@localhost')\n\
         code, resp = s.data({message:?})\nprint(code, resp.decode())\ns.quit()\n"
    );
    let out = t.py(&script);
    out.assert_success("send with smtplib");
    assert!(out.stdout.starts_with("250 "), "{}", out.stdout);
    let got = delivered(&t, "[SPAM] rewrite");
    assert_eq!(got.matches("DKIM-Signature:").count(), 1, "one signature, made again: {got}");
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(dkimpy_verify(dir.path(), got.as_bytes(), &key), "pass", "{got}");
}

/// SHA-256 through Python's hashlib (no hashing crate in the tests).
fn sha256(bytes: &[u8]) -> String {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"]);
    run_with_input(cmd, Some(bytes), CLIENT_TIMEOUT).stdout.trim().to_string()
}

#[test]
fn broken_answers_meet_on_error() {
    let fake = Fake::start();
    let url = format!("url = \"http://127.0.0.1:{}\"\ntimeout = \"2s\"\n", fake.port);
    let accept = tern(&format!("{url}on_error = \"accept\"\n"));
    for subject in ["garbage", "status", "huge", "slow"] {
        let started = Instant::now();
        let (code, text) = send(&accept, &message(subject, "X-Spam: Yes\r\n", "x"), &[]);
        assert_eq!(code, 250, "{subject}: {text}");
        assert!(started.elapsed() < Duration::from_secs(6), "{subject}: the client waited {:?}", started.elapsed());
        let mail = delivered(&accept, subject);
        assert!(header_block(&mail).contains("X-Spam: Yes"), "delivered untouched, unmarked: {mail}");
        let event = scanned(&accept, &queue_id(&text).unwrap());
        assert_eq!(event["action"], "error", "{event}");
        let error = event["error"].as_str().unwrap();
        let expected = match subject {
            "garbage" => "not JSON",
            "status" => "HTTP status 500",
            "huge" => "answer larger than",
            _ => "no answer within 2s",
        };
        assert!(error.contains(expected), "{subject}: {error}");
    }
    assert_eq!(spam_count(&accept, "error"), 4.0);
    // Logged once per period (10 s), not once per message.
    let warnings = fs::read_to_string(accept.stderr_log()).unwrap().matches("rspamd gave no verdict").count();
    assert!((1..4).contains(&warnings), "{warnings} warnings\n{}", accept.logs());

    let tempfail = tern(&format!("{url}on_error = \"tempfail\"\n"));
    let (code, text) = send(&tempfail, &message("garbage", "", "x"), &[]);
    assert_eq!((code, text.as_str()), (451, "4.7.1 Spam filter unavailable, try again later"));
}

#[test]
fn rspamd_down_meets_each_on_error() {
    let dead = free_port();
    let url = format!("url = \"http://127.0.0.1:{dead}\"\n");
    for (on_error, code, reply) in [
        ("accept", 250, ""),
        ("tempfail", 451, "4.7.1 Spam filter unavailable, try again later"),
        ("reject", 550, "5.7.1 Spam filter unavailable, message refused"),
    ] {
        let t = tern(&format!("{url}on_error = \"{on_error}\"\n"));
        let (got, text) = send(&t, &message("down", "", "x"), &[]);
        assert_eq!(got, code, "{on_error}: {text}\n{}", t.logs());
        if code == 250 {
            let mail = delivered(&t, "down");
            assert!(!header_block(&mail).contains("X-Spam"), "{mail}");
            let event = scanned(&t, &queue_id(&text).unwrap());
            assert!(event["error"].as_str().unwrap().contains("cannot connect"), "{event}");
            assert_eq!(event["outcome"], "delivered unmarked (on_error = accept)");
        } else {
            assert_eq!(text, reply);
            assert!(t.new_files("localhost", "alice").is_empty());
        }
        assert_eq!(spam_count(&t, "error"), 1.0);
        let (_, metrics) = admin_get(&t, "/metrics");
        let refused = if code == 250 { 0 } else { 1 };
        assert!(metrics.contains(&format!("tern_messages_refused_total{{reason=\"spam\"}} {refused}")), "{metrics}");
    }
}

/// Only the listener modes of `applies_to` are scanned; a reload changes them.
#[test]
fn only_the_listed_origins_are_scanned() {
    let fake = Fake::start();
    let t = tern(&format!("url = \"http://127.0.0.1:{}\"\napplies_to = [\"submission\"]\n", fake.port));
    assert_eq!(send(&t, &message("plain", "", "x"), &[]).0, 250);
    delivered(&t, "plain");
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    assert_eq!(spam_count(&t, "no_action") + spam_count(&t, "error"), 0.0);

    common::service::edit_config(&t, "applies_to = [\"submission\"]", "applies_to = [\"submission\", \"smtp\"]");
    let line = common::service::sighup(&t, true);
    assert!(line.contains("rspamd"), "{line}");
    assert_eq!(send(&t, &message("rewrite", "", "x"), &[]).0, 250);
    delivered(&t, "[SPAM] rewrite");
    assert_eq!(fake.requests().len(), 1);
}
