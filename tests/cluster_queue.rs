//! Queue operations across the cluster: two nodes on one throwaway PostgreSQL relay
//! to a sink whose answers the test switches (defer, stall, accept). Whichever node
//! accepted a message, `tern queue` and the admin API of the other node list, hold,
//! release, flush, delete and bounce it; the status counts the cluster's queue.

mod common;

use common::outbound::{send_message, test_message, wait_for};
use common::postgres::Postgres;
use common::{NO_AUTH_CHECKS, Out, Tern, free_port, have_program, walk};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A relay target whose answer to RCPT follows the file `mode`: `defer` (451),
/// `accept` (250; each message is saved in `msgs/`), or `stall` (a line `STALL` in
/// `log`, then no answer until the mode changes, for at most a minute).
const SINK: &str = r#"
import os, socketserver, sys, threading, time
PORT, DIR = int(sys.argv[1]), sys.argv[2]
LOCK = threading.Lock()
COUNT = {"msg": 0}
def mode():
    try:
        return open(os.path.join(DIR, "mode")).read().strip()
    except OSError:
        return "defer"
def log(line):
    with LOCK:
        with open(os.path.join(DIR, "log"), "a") as f:
            f.write(line + "\n")
class Handler(socketserver.StreamRequestHandler):
    def say(self, text):
        self.wfile.write((text + "\r\n").encode())
        self.wfile.flush()
    def handle(self):
        self.say("220 sink.test ESMTP")
        rcpts = 0
        while True:
            line = self.rfile.readline()
            if not line:
                return
            verb = line.decode("latin-1").strip().split(" ")[0].upper()
            if verb in ("EHLO", "HELO"):
                self.say("250-sink.test\r\n250 8BITMIME")
            elif verb == "MAIL":
                rcpts = 0
                self.say("250 2.1.0 ok")
            elif verb == "RCPT":
                m = mode()
                if m == "stall":
                    log("STALL")
                    deadline = time.time() + 60
                    while mode() == "stall" and time.time() < deadline:
                        time.sleep(0.05)
                    m = mode()
                if m == "accept":
                    rcpts += 1
                    self.say("250 2.1.5 ok")
                else:
                    self.say("451 4.3.0 try again later")
            elif verb == "DATA" and rcpts:
                self.say("354 go ahead")
                data = b""
                while True:
                    chunk = self.rfile.readline()
                    if not chunk or chunk == b".\r\n":
                        break
                    data += chunk
                with LOCK:
                    COUNT["msg"] += 1
                    n = COUNT["msg"]
                with open(os.path.join(DIR, "msgs", "%d.eml" % n), "wb") as f:
                    f.write(data)
                self.say("250 2.0.0 saved")
            elif verb == "DATA":
                self.say("554 5.5.1 no valid recipients")
            elif verb == "QUIT":
                self.say("221 bye")
                return
            else:
                self.say("250 ok")
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
Server(("127.0.0.1", PORT), Handler).serve_forever()
"#;

struct Sink {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Sink {
    fn start() -> Sink {
        let dir = tempfile::Builder::new().prefix("tern-sink-").tempdir().unwrap();
        std::fs::create_dir(dir.path().join("msgs")).unwrap();
        std::fs::write(dir.path().join("sink.py"), SINK).unwrap();
        let port = free_port();
        let child = Command::new("python3")
            .arg(dir.path().join("sink.py"))
            .args([port.to_string(), dir.path().display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .expect("python3");
        let sink = Sink { port, dir, child };
        wait_for(
            Duration::from_secs(20),
            "the sink to listen",
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
            || std::fs::read_to_string(sink.dir.path().join("stderr")).unwrap_or_default(),
        );
        sink
    }

    fn set(&self, mode: &str) {
        let tmp = self.dir.path().join("mode.new");
        std::fs::write(&tmp, mode).unwrap();
        std::fs::rename(tmp, self.dir.path().join("mode")).unwrap();
    }

    /// Attempts that reached RCPT while stalling.
    fn stalls(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default().lines().count()
    }

    /// How many times each Message-ID arrived.
    fn received(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for file in std::fs::read_dir(self.dir.path().join("msgs")).unwrap().flatten() {
            if let Some(id) = message_id(&std::fs::read(file.path()).unwrap_or_default()) {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        counts
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn message_id(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes).lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("message-id").then(|| value.trim().to_string())
    })
}

/// A PostgreSQL, the sink, nodes `mx1` and `mx2`, and `idle`: a node's configuration
/// with no server running. Local mail (bounces to `alice@localhost`) goes to one
/// mail root that every node shares.
struct Rig {
    pg: Postgres,
    sink: Sink,
    mail: tempfile::TempDir,
    nodes: Vec<Tern>,
    idle: Tern,
}

impl Rig {
    /// None (after SKIPPED) without PostgreSQL, Python or curl.
    fn start(test: &str) -> Option<Rig> {
        for program in ["python3", "curl"] {
            if !have_program(program) {
                println!("SKIPPED: {test}: {program} is not installed");
                return None;
            }
        }
        let pg = Postgres::start(test)?;
        let sink = Sink::start();
        let mail = tempfile::Builder::new().prefix("tern-mail-").tempdir().unwrap();
        let toml = |node: &str| {
            format!(
                "\n[cluster]\ndatabase = \"{}\"\nnode = \"{node}\"\nlease = \"30s\"\n{NO_AUTH_CHECKS}\n\
                 [relay]\nsmarthost = \"127.0.0.1:{}\"\ntls = \"none\"\n\n[queue]\nretry = [\"1h\"]\n\n\
                 [local]\ndomains = [\"localhost\"]\naccept_unknown = true\nmail_root = \"{}\"\n",
                pg.url(),
                sink.port,
                mail.path().display()
            )
        };
        let mut nodes = vec![Tern::new_stopped(&toml("mx1"), &[]), Tern::new_stopped(&toml("mx2"), &[])];
        nodes[0].tern_cmd(&["cluster", "init"]).assert_success("cluster init");
        for t in &mut nodes {
            t.start_again();
        }
        let idle = Tern::new_stopped(&toml("idle"), &[]);
        Some(Rig { pg, sink, mail, nodes, idle })
    }

    fn logs(&self) -> String {
        let mut text: String = self.nodes.iter().map(|t| t.logs()).collect();
        text.push_str(&self.pg.psql("SELECT id, held, owner, due FROM messages").all());
        text
    }

    /// Sends one message through node `i`; its queue id.
    fn send(&self, i: usize, tag: &str) -> String {
        send_message(
            &self.nodes[i],
            "alice@localhost",
            &["bob@remote.test"],
            &test_message(tag, "bob@remote.test"),
            &[],
        )
    }

    fn value(&self, sql: &str) -> String {
        self.pg.value(sql)
    }

    /// The message `id` waits for a retry with no node holding it.
    fn deferred(&self, id: &str) -> bool {
        self.value(&format!(
            "SELECT count(*) FROM messages m WHERE id = '{id}' AND lease_until IS NULL
               AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
                           AND r.state::jsonb ->> 'state' = 'deferred')"
        )) == "1"
    }

    fn wait_deferred(&self, ids: &[&str]) {
        wait_for(
            Duration::from_secs(30),
            "messages deferred and handed back",
            || ids.iter().all(|id| self.deferred(id)).then_some(()),
            || self.logs(),
        );
    }

    fn held(&self, id: &str) -> String {
        self.value(&format!("SELECT held FROM messages WHERE id = '{id}'"))
    }

    fn in_db(&self, id: &str) -> bool {
        self.value(&format!("SELECT count(*) FROM messages WHERE id = '{id}'")) == "1"
    }

    /// Node `i`'s admin API: (status, body).
    fn api(&self, i: usize, method: &str, path: &str) -> (u16, String) {
        let t = &self.nodes[i];
        let url = format!("{}{path}", t.admin_url());
        let auth = format!("Authorization: Bearer {}", t.admin_token());
        let out = t.curl(&["-X", method, "-w", "\n%{http_code}", "-H", &auth, &url]);
        out.assert_success(&format!("curl {method} {path}"));
        let (body, status) = out.stdout.rsplit_once('\n').expect("status line");
        (status.trim().parse().expect("status code"), body.to_string())
    }

    /// Waits until the sink has `tag`'s message.
    fn wait_received(&self, tag: &str) {
        let want = format!("<{tag}@local.test>");
        wait_for(
            Duration::from_secs(20),
            &format!("{tag} at the sink"),
            || self.sink.received().contains_key(&want).then_some(()),
            || self.logs(),
        );
    }

    fn mailbox(&self, user: &str) -> Vec<PathBuf> {
        let mut files = Vec::new();
        walk(&self.mail.path().join("localhost").join(user).join("new"), &mut files, 1);
        files
    }
}

#[track_caller]
fn ok(out: &Out, what: &str) -> String {
    out.assert_success(what);
    out.stdout.clone()
}

/// `tern status`'s queue line counts `queued, deferred, held`.
fn status_counts(t: &Tern) -> Option<(usize, usize, usize)> {
    let out = t.tern_cmd(&["status"]);
    let line = out.stdout.lines().find(|l| l.starts_with("queue:"))?;
    let n: Vec<usize> = line.split_whitespace().filter_map(|w| w.trim_matches('(').parse().ok()).collect();
    Some((*n.first()?, *n.get(1)?, *n.get(2)?))
}

#[test]
fn operations_act_on_every_node() {
    let Some(mut rig) = Rig::start("operations_act_on_every_node") else { return };
    rig.sink.set("defer");
    let tags = ["hold-me", "flush-me", "delete-me", "bounce-me"];
    let ids: Vec<String> = tags.iter().map(|tag| rig.send(0, tag)).collect();
    let id = |i: usize| ids[i].as_str();
    rig.wait_deferred(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    let (a, b) = (&rig.nodes[0], &rig.nodes[1]);

    // Listed from the other node's configuration, and from one with no server.
    for t in [b, &rig.idle] {
        let list = ok(&t.queue_list(), "queue list");
        assert!(ids.iter().all(|id| list.contains(id.as_str())), "{list}");
        assert!(list.contains("4 message(s) in queue"), "{list}");
        let show = ok(&t.tern_cmd(&["queue", "show", id(1)]), "queue show");
        assert!(show.contains("deferred (attempts: 1") && show.contains("<alice@localhost>"), "{show}");
        let mailq = ok(&t.tern_cmd(&["sendmail", "-bp"]), "sendmail -bp");
        assert!(mailq.contains("in 4 Requests") && mailq.contains("try again later"), "{mailq}");
    }
    let missing = rig.idle.tern_cmd(&["queue", "show", "0000000000000001"]);
    assert!(!missing.success() && missing.stderr.contains("is not in the queue"), "{}", missing.all());

    // By filter, through either node.
    let held = ok(&b.tern_cmd(&["queue", "hold", "--domain", "remote.test"]), "hold by domain");
    assert!(held.contains("4 message(s) put on hold"), "{held}");
    assert_eq!(rig.value("SELECT count(*) FROM messages WHERE held"), "4");
    let released = ok(&a.tern_cmd(&["queue", "release", "--sender", "alice@localhost"]), "release by sender");
    assert!(released.contains("4 message(s) released"), "{released}");
    assert_eq!(rig.value("SELECT count(*) FROM messages WHERE held"), "0");
    rig.wait_deferred(&ids.iter().map(String::as_str).collect::<Vec<_>>());

    // Hold through the other node: kept across a restart of the node that accepted
    // it, not attempted when flushed, counted as held.
    assert!(ok(&b.tern_cmd(&["queue", "hold", id(0)]), "hold").contains("put on hold"));
    assert_eq!(rig.held(id(0)), "t");
    rig.nodes[0].restart();
    let (a, b) = (&rig.nodes[0], &rig.nodes[1]);
    assert_eq!(rig.held(id(0)), "t");
    let flush_held = b.tern_cmd(&["queue", "flush", id(0)]);
    assert!(!flush_held.success() && flush_held.stderr.contains("on hold"), "{}", flush_held.all());
    for t in [a, b] {
        wait_for(
            Duration::from_secs(10),
            "the status to count the cluster's queue",
            || (status_counts(t) == Some((0, 3, 1))).then_some(()),
            || format!("{}\n{}", t.tern_cmd(&["status"]).all(), rig.logs()),
        );
    }
    let metrics = rig.api(1, "GET", "/metrics").1;
    assert!(metrics.lines().any(|l| l.starts_with("tern_queue_messages{state=\"deferred\"} 3")), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("tern_queue_messages{state=\"held\"} 1")), "{metrics}");

    // A flush through the other node tries the message at once (its retry is an
    // hour away); the others stay as they were.
    rig.sink.set("accept");
    assert!(ok(&b.tern_cmd(&["queue", "flush", id(1)]), "flush").contains("scheduled for immediate delivery"));
    rig.wait_received("flush-me");
    wait_for(
        Duration::from_secs(10),
        "the flushed message to leave",
        || (!rig.in_db(id(1))).then_some(()),
        || rig.logs(),
    );
    assert!(rig.deferred(id(2)) && rig.deferred(id(3)));

    // Delete and bounce through the other node's admin API.
    assert_eq!(rig.api(1, "DELETE", &format!("/api/v1/queue/{}", id(2))), (200, "{\"affected\":1}".to_string()));
    assert!(!rig.in_db(id(2)));
    assert_eq!(rig.api(1, "POST", &format!("/api/v1/queue/{}/bounce", id(3))), (200, "{\"affected\":1}".to_string()));
    assert!(!rig.in_db(id(3)));
    let bounce = wait_for(
        Duration::from_secs(20),
        "the bounce at the sender",
        || rig.mailbox("alice").first().map(|f| std::fs::read_to_string(f).unwrap_or_default()),
        || rig.logs(),
    );
    assert!(bounce.contains("deleted by the mail administrator") && bounce.contains("bounce-me"), "{bounce}");
    let (status, body) = rig.api(1, "DELETE", &format!("/api/v1/queue/{}", id(2)));
    assert_eq!(status, 404, "{body}");

    // Released through the other node: delivered once flushed, the sink accepting.
    let attempts = format!("SELECT state::jsonb ->> 'attempts' FROM recipients WHERE message_id = '{}'", id(0));
    assert_eq!(rig.value(&attempts), "1", "held mail was attempted");
    assert!(ok(&b.tern_cmd(&["queue", "release", id(0)]), "release").contains("released"));
    assert_eq!(rig.held(id(0)), "f");
    assert!(ok(&b.tern_cmd(&["queue", "flush", "--state", "deferred"]), "flush by filter").contains("1 message(s)"));
    rig.wait_received("hold-me");

    // The database and the sink agree: every message once, the deleted ones never.
    wait_for(
        Duration::from_secs(20),
        "an empty queue",
        || (rig.value("SELECT count(*) FROM messages") == "0").then_some(()),
        || rig.logs(),
    );
    let received = rig.sink.received();
    assert_eq!(received.get("<hold-me@local.test>"), Some(&1), "{received:?}");
    assert_eq!(received.get("<flush-me@local.test>"), Some(&1), "{received:?}");
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(rig.mailbox("alice").len(), 1);
    assert!(ok(&rig.idle.queue_list(), "queue list").contains("queue is empty"));
}

#[test]
fn operations_on_a_message_being_attempted() {
    let Some(rig) = Rig::start("operations_on_a_message_being_attempted") else { return };
    rig.sink.set("stall");
    let id = rig.send(0, "busy");
    wait_for(
        Duration::from_secs(20),
        "the attempt to reach the sink",
        || (rig.sink.stalls() == 1).then_some(()),
        || rig.logs(),
    );

    // mx1 attempts it: mx2 may not take it away, but may hold it for after.
    let path = format!("/api/v1/queue/{id}");
    let (status, body) = rig.api(1, "DELETE", &path);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("being delivered right now"), "{body}");
    let (status, body) = rig.api(1, "POST", &format!("{path}/bounce"));
    assert_eq!(status, 409, "{body}");
    let (status, body) = rig.api(1, "POST", &format!("{path}/flush"));
    assert_eq!(status, 409, "{body}");
    assert_eq!(rig.api(1, "POST", &format!("{path}/hold")), (200, "{\"affected\":1}".to_string()));
    assert_eq!(rig.held(&id), "t");

    // The attempt ends in a deferral; the message stays held, and no node tries it.
    rig.sink.set("defer");
    rig.wait_deferred(&[&id]);
    assert_eq!(rig.held(&id), "t");
    let (status, body) = rig.api(0, "POST", &format!("{path}/flush"));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("on hold"), "{body}");
    let list = ok(&rig.idle.tern_cmd(&["queue", "list", "--json"]), "queue list --json");
    assert!(list.contains("\"held\""), "{list}");

    // Released and flushed from mx2, it is delivered once; then the queue is empty.
    rig.sink.set("accept");
    assert_eq!(rig.api(1, "POST", &format!("{path}/release")), (200, "{\"affected\":1}".to_string()));
    assert_eq!(rig.api(1, "POST", &format!("{path}/flush")), (200, "{\"affected\":1}".to_string()));
    rig.wait_received("busy");
    wait_for(
        Duration::from_secs(20),
        "an empty queue",
        || (rig.value("SELECT count(*) FROM messages") == "0").then_some(()),
        || rig.logs(),
    );
    assert_eq!(rig.sink.received().get("<busy@local.test>"), Some(&1));
    assert_eq!(rig.sink.stalls(), 1);
    assert!(Path::new(&rig.mail.path().join("localhost")).read_dir().is_err(), "no bounce expected");
}
