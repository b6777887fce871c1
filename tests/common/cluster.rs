//! What the cluster tests share: a sink that counts Message-IDs, a load of Python
//! smtplib clients, and waiting until acknowledged mail has arrived.

use super::outbound::{SmtpSink, wait_for};
use super::postgres::Postgres;
use super::{free_port, walk};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// smtp-sink on 127.0.0.1, writing every message to a file of its own.
pub struct DumpSink {
    pub sink: SmtpSink,
    pub port: u16,
    pub dumps: tempfile::TempDir,
}

impl DumpSink {
    pub fn start() -> DumpSink {
        let dumps = tempfile::Builder::new().prefix("tern-dumps-").tempdir().unwrap();
        // smtp-sink drops its privileges to nobody when started as root.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dumps.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let template = format!("{}/%H%M%S.", dumps.path().display());
        let port = free_port();
        let sink = SmtpSink::start("127.0.0.1", port, &["-c", "-d", &template]);
        DumpSink { sink, port, dumps }
    }

    /// How many times each Message-ID arrived.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut files = Vec::new();
        walk(self.dumps.path(), &mut files, 2);
        let mut counts = HashMap::new();
        for file in files {
            let Ok(bytes) = std::fs::read(&file) else { continue };
            let text = String::from_utf8_lossy(&bytes);
            let id = text.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("message-id").then(|| value.trim().to_string())
            });
            if let Some(id) = id {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// Python smtplib in threads, each with its own connection to one node (thread `i`
/// to node `i % nodes`), sending messages with Message-IDs `<TAG.N@cluster.test>`.
/// It prints `OK ID` for every 250 to DATA, and `FAIL ID CODE` otherwise; after a
/// failed connection the thread goes on with the next node.
const LOAD: &str = r#"
import smtplib, sys, threading, time
ports = [int(p) for p in sys.argv[1].split(",")]
n, nthreads, tag = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lock = threading.Lock()
state = {"next": 0}
def take():
    with lock:
        i = state["next"]
        if i >= n:
            return None
        state["next"] = i + 1
        return i
def say(line):
    with lock:
        print(line, flush=True)
def worker(w):
    node, s = w % len(ports), None
    deadline = time.time() + 240
    while time.time() < deadline:
        i = take()
        if i is None:
            break
        mid = "<%s.%d@cluster.test>" % (tag, i)
        msg = ("Message-ID: %s\r\nFrom: a@client.test\r\nTo: b@remote.test\r\nSubject: load %d\r\n\r\n" % (mid, i)
               + ("line %d of the body\r\n" % i) * 20)
        try:
            if s is None:
                s = smtplib.SMTP("127.0.0.1", ports[node], timeout=20)
                s.ehlo("client.test")
            code, resp = s.mail("a@client.test")
            if code == 250:
                code, resp = s.rcpt("b@remote.test")
            if code == 250:
                code, resp = s.data(msg.encode())
            if code == 250:
                say("OK %s" % mid)
            else:
                say("FAIL %s %d" % (mid, code))
                s.rset()
        except Exception as e:
            say("FAIL %s %s" % (mid, type(e).__name__))
            try:
                s.close()
            except Exception:
                pass
            s, node = None, (node + 1) % len(ports)
            time.sleep(0.05)
    if s is not None:
        try:
            s.quit()
        except Exception:
            pass
threads = [threading.Thread(target=worker, args=(w,)) for w in range(nthreads)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"#;

/// A running load (see [`LOAD`]); killed if dropped early.
pub struct Load {
    child: Option<Child>,
    out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Load {
    pub fn start(ports: &[u16], n: usize, threads: usize, tag: &str) -> Load {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("load.out");
        let script = dir.path().join("load.py");
        std::fs::write(&script, LOAD).unwrap();
        let ports: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
        let child = Command::new("python3")
            .arg(&script)
            .args([ports.join(","), n.to_string(), threads.to_string(), tag.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        Load { child: Some(child), out, _dir: dir }
    }

    /// Lines written so far.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out).unwrap_or_default().lines().map(str::to_string).collect()
    }

    pub fn answered(&self) -> usize {
        self.lines().len()
    }

    /// Waits (bounded) until `n` more messages were answered, or the load ended.
    #[track_caller]
    pub fn wait_answered(&mut self, n: usize) {
        let target = self.answered() + n;
        let child = self.child.as_mut().expect("running");
        let mut ended = || child.try_wait().ok().flatten().is_some();
        let out = &self.out;
        let answered = || std::fs::read_to_string(out).unwrap_or_default().lines().count();
        wait_for(
            Duration::from_secs(120),
            "the load to go on",
            || (answered() >= target || ended()).then_some(()),
            String::new,
        );
    }

    /// Waits for the end (bounded); the Message-IDs acknowledged, and the failures.
    pub fn finish(mut self, timeout: Duration) -> (Vec<String>, Vec<String>) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the load did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let lines = self.lines();
        let acked = lines.iter().filter_map(|l| l.strip_prefix("OK ")).map(str::to_string).collect();
        let failed = lines.iter().filter(|l| l.starts_with("FAIL ")).cloned().collect();
        (acked, failed)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `pg`'s queue is empty and every acknowledged message reached `sink`;
/// returns the sink's counts.
#[track_caller]
pub fn wait_delivered(
    sink: &DumpSink,
    pg: &Postgres,
    acked: &[String],
    timeout: Duration,
    logs: impl Fn() -> String,
) -> HashMap<String, usize> {
    let queued = || pg.value("SELECT count(*) FROM messages").parse().unwrap_or(usize::MAX);
    wait_for(
        timeout,
        "every acknowledged message at the sink and an empty queue",
        || {
            let counts = sink.counts();
            (acked.iter().all(|id| counts.contains_key(id)) && queued() == 0).then_some(counts)
        },
        || {
            let counts = sink.counts();
            let missing = acked.iter().filter(|id| !counts.contains_key(*id)).count();
            format!("{missing} missing, {} queued\n{}", queued(), logs())
        },
    )
}

/// Deliveries beyond the first, over all messages.
pub fn duplicates(counts: &HashMap<String, usize>) -> usize {
    counts.values().map(|n| n.saturating_sub(1)).sum()
}
