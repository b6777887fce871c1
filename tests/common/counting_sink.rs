//! A slow SMTP server for the cluster tests, in Python: it counts the connections
//! and transactions open at once, in all and per Tern node (found by the process
//! that owns the connection's other end), and logs every reply to the end of DATA
//! with the Message-ID, so that tests can tell what was delivered how often.
//!
//! Its state directory holds `stats.json` (rewritten at each change), `replies.log`
//! (`<unix time> <code> <node> <message-id>` per message), and `pids` (written by
//! the test: `<node> <pid>` per line). SIGUSR1 starts the maxima again from the
//! counts open now. While the file `stall` exists, replies to the end of DATA wait;
//! a stalled transaction is then answered 451.

use super::outbound::wait_for;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SINK: &str = r#"
import json, os, signal, socket, struct, sys, threading, time
ip, port, delay, state, defer_first = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
lock = threading.Lock()
stats = {"conns": 0, "max_conns": 0, "txs": 0, "max_txs": 0, "node_conns": {}, "node_max_conns": {},
         "node_txs": {}, "node_max_txs": {}}
tried = set()

def save():
    tmp = os.path.join(state, "stats.json.tmp")
    with open(tmp, "w") as f:
        json.dump(stats, f)
    os.replace(tmp, os.path.join(state, "stats.json"))

def count(kind, node, step):
    with lock:
        stats[kind] += step
        stats["max_" + kind] = max(stats["max_" + kind], stats[kind])
        per = stats["node_" + kind]
        per[node] = per.get(node, 0) + step
        most = stats["node_max_" + kind]
        most[node] = max(most.get(node, 0), per[node])
        save()

def reset(signum, frame):
    with lock:
        for kind in ("conns", "txs"):
            stats["max_" + kind] = stats[kind]
            stats["node_max_" + kind] = dict(stats["node_" + kind])
        save()

def hexaddr(addr):
    return "%08X:%04X" % (struct.unpack("<I", socket.inet_aton(addr[0]))[0], addr[1])

def node_of(peer):
    # The socket inode of the client's end, then the node process holding it.
    want, inode = hexaddr(peer), None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want:
                inode = fields[9]
    try:
        pids = [l.split() for l in open(os.path.join(state, "pids")).read().splitlines() if l.strip()]
    except OSError:
        pids = []
    for name, pid in pids:
        try:
            for fd in os.listdir("/proc/%s/fd" % pid):
                if os.readlink("/proc/%s/fd/%s" % (pid, fd)) == "socket:[%s]" % inode:
                    return name
        except OSError:
            pass
    return "?"

def log_reply(code, node, mid):
    with lock:
        with open(os.path.join(state, "replies.log"), "a") as f:
            f.write("%.3f %d %s %s\n" % (time.time(), code, node, mid))

def serve(conn, peer):
    node = node_of(peer)
    count("conns", node, 1)
    f = conn.makefile("rb")
    intx = False
    def say(text):
        conn.sendall(text.encode() + b"\r\n")
    try:
        say("220 sink.test ESMTP")
        while True:
            line = f.readline(4096)
            if not line:
                break
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                say("250 sink.test")
            elif verb == b"MAIL":
                intx = True
                count("txs", node, 1)
                say("250 2.1.0 ok")
            elif verb == b"RCPT":
                say("250 2.1.5 ok")
            elif verb == b"DATA":
                say("354 go on")
                mid = "-"
                while True:
                    l = f.readline(65536)
                    if not l or l in (b".\r\n", b".\n"):
                        break
                    if mid == "-" and l.lower().startswith(b"message-id:"):
                        mid = l.split(b":", 1)[1].strip().decode()
                if not l:
                    break
                time.sleep(delay)
                stalled = False
                deadline = time.time() + 60
                while os.path.exists(os.path.join(state, "stall")) and time.time() < deadline:
                    stalled = True
                    time.sleep(0.05)
                code = 451 if stalled or (defer_first and mid not in tried) else 250
                tried.add(mid)
                say("%d %s" % (code, "2.0.0 queued" if code == 250 else "4.3.0 try again"))
                log_reply(code, node, mid)
                intx = False
                count("txs", node, -1)
            elif verb == b"RSET":
                if intx:
                    intx = False
                    count("txs", node, -1)
                say("250 2.0.0 ok")
            elif verb == b"QUIT":
                say("221 2.0.0 bye")
                break
            else:
                say("502 5.5.2 no")
    except OSError:
        pass
    finally:
        if intx:
            count("txs", node, -1)
        count("conns", node, -1)
        conn.close()

signal.signal(signal.SIGUSR1, reset)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((ip, port))
server.listen(100)
save()
open(os.path.join(state, "ready"), "w").close()
deadline = time.time() + 900
while time.time() < deadline:
    conn, peer = server.accept()
    threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
"#;

/// The sink's counts (see the module's doc).
#[derive(Debug, Default, serde::Deserialize)]
pub struct Stats {
    pub conns: usize,
    pub max_conns: usize,
    pub txs: usize,
    pub max_txs: usize,
    pub node_conns: HashMap<String, usize>,
    pub node_max_conns: HashMap<String, usize>,
    pub node_txs: HashMap<String, usize>,
    pub node_max_txs: HashMap<String, usize>,
}

/// One reply to the end of DATA.
#[derive(Debug, Clone)]
pub struct Reply {
    pub at: f64,
    pub code: u16,
    pub node: String,
    pub message_id: String,
}

pub struct CountingSink {
    pub port: u16,
    state: tempfile::TempDir,
    child: Option<Child>,
}

impl CountingSink {
    /// Listens on 127.0.0.1; each message is answered `delay` after its end; with
    /// `defer_first`, the first try of each Message-ID is answered 451.
    pub fn start(delay: Duration, defer_first: bool) -> CountingSink {
        let state = tempfile::Builder::new().prefix("tern-csink-").tempdir().unwrap();
        let script = state.path().join("sink.py");
        std::fs::write(&script, SINK).unwrap();
        let port = super::free_port();
        let child = Command::new("python3")
            .arg(&script)
            .args(["127.0.0.1", &port.to_string(), &delay.as_secs_f64().to_string()])
            .arg(state.path())
            .arg(if defer_first { "1" } else { "0" })
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(state.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(state.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("python3");
        let sink = CountingSink { port, state, child: Some(child) };
        let ready = sink.state.path().join("ready");
        wait_for(
            Duration::from_secs(20),
            "the counting sink to listen",
            || ready.exists().then_some(()),
            || sink.logs(),
        );
        sink
    }

    fn file(&self, name: &str) -> PathBuf {
        self.state.path().join(name)
    }

    /// Names the processes of the nodes, for per-node counts.
    pub fn set_pids(&self, nodes: &[(&str, Option<u32>)]) {
        let text: String = nodes.iter().filter_map(|(name, pid)| Some(format!("{name} {}\n", (*pid)?))).collect();
        std::fs::write(self.file("pids.tmp"), text).unwrap();
        std::fs::rename(self.file("pids.tmp"), self.file("pids")).unwrap();
    }

    pub fn stats(&self) -> Stats {
        std::fs::read_to_string(self.file("stats.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// Starts the maxima again from what is open now (bounded wait for the sink to do it).
    pub fn reset_maxima(&self) {
        let before = std::fs::metadata(self.file("stats.json")).and_then(|m| m.modified()).ok();
        let pid = self.child.as_ref().expect("running").id();
        let out = Command::new("kill").args(["-USR1", &pid.to_string()]).output().expect("kill");
        assert!(out.status.success());
        wait_for(
            Duration::from_secs(10),
            "the sink to start its maxima again",
            || (std::fs::metadata(self.file("stats.json")).and_then(|m| m.modified()).ok() != before).then_some(()),
            || self.logs(),
        );
    }

    /// While stalled, the ends of DATA wait for an answer (451 when it comes).
    pub fn stall(&self, on: bool) {
        if on {
            std::fs::write(self.file("stall"), "").unwrap();
        } else {
            let _ = std::fs::remove_file(self.file("stall"));
        }
    }

    pub fn replies(&self) -> Vec<Reply> {
        let text = std::fs::read_to_string(self.file("replies.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut f = l.splitn(4, ' ');
                Some(Reply {
                    at: f.next()?.parse().ok()?,
                    code: f.next()?.parse().ok()?,
                    node: f.next()?.to_string(),
                    message_id: f.next()?.to_string(),
                })
            })
            .collect()
    }

    /// How many times each Message-ID was answered 250.
    pub fn delivered(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for r in self.replies().into_iter().filter(|r| r.code == 250) {
            *counts.entry(r.message_id).or_insert(0) += 1;
        }
        counts
    }

    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.file(n)).unwrap_or_default();
        format!("--- counting sink stderr ---\n{}\n--- stats ---\n{}\n", read("stderr.log"), read("stats.json"))
    }
}

impl Drop for CountingSink {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
