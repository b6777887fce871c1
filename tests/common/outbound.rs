//! Outbound delivery fixtures: a test DNS server, fake remote mail servers
//! (Postfix's smtp-sink and a small scriptable Python server), a second Tern
//! as the receiving MX, and a sending Tern pointed at all of them.
//!
//! Everything listens on loopback only: the fake MX hosts on 127.0.0.2,
//! 127.0.0.3, … sharing one port, which the sending Tern uses as its
//! `[outbound] port`. Every process started here is ended when its owner is
//! dropped, and every wait is bounded.
#![allow(dead_code)]

use super::*;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

/// The local domain of the sending Tern.
pub const LOCAL_DOMAIN: &str = "local.test";
/// The remote domain (the domain of the receiving Tern).
pub const REMOTE_DOMAIN: &str = "remote.test";
/// Sender used by the tests: a local address, so notices land in its Maildir.
pub const SENDER: &str = "sender@local.test";

/// Postfix's SMTP test server.
pub const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

const DNS_SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/dns_server.py");

/// How long a fixture process may take to report that it listens.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Polls `cond` every 100 ms until it returns `Some`, or panics after
/// `timeout` with `what` and the text `context` gives at that moment.
#[track_caller]
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", context());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A port that is free for TCP on 127.0.0.2 … 127.0.0.5 right now.
pub fn peer_port() -> u16 {
    for _ in 0..50 {
        let Ok(l) = TcpListener::bind("127.0.0.2:0") else { continue };
        let port = l.local_addr().expect("local addr").port();
        let others_free = (3..=5).all(|last| TcpListener::bind(format!("127.0.0.{last}:{port}")).is_ok());
        if others_free {
            return port;
        }
    }
    panic!("no port free on 127.0.0.2-127.0.0.5");
}

/// A port free for both UDP and TCP on 127.0.0.1.
fn udp_tcp_port() -> u16 {
    for _ in 0..50 {
        let Ok(u) = UdpSocket::bind("127.0.0.1:0") else { continue };
        let port = u.local_addr().expect("local addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for UDP and TCP on 127.0.0.1");
}

/// Reads lines from `child`'s stdout until one equals `ready`, within
/// `timeout`. The rest of stdout is drained in the background.
fn wait_ready_line(child: &mut Child, ready: &str, timeout: Duration) -> Result<(), String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(_) => {
                    if tx.send(Some(line.trim().to_string())).is_err() {
                        // Nobody listens any more: keep draining.
                        let mut sink = Vec::new();
                        let _ = reader.read_to_end(&mut sink);
                        return;
                    }
                }
            }
        }
    });
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Some(line)) if line == ready => return Ok(()),
            Ok(Some(_)) => {}
            Ok(None) => return Err("the process closed its output before it was ready".into()),
            Err(_) => return Err(format!("not ready within {timeout:?}")),
        }
    }
}

fn end(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn read_lossy(p: &Path) -> String {
    fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// True when Python 3 can import `module`.
pub fn python_has(module: &str) -> bool {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &format!("import {module}")]);
    run(cmd, Duration::from_secs(20)).success()
}

/// The test DNS server (`tests/support/dns_server.py`) answering from a
/// JSON zone (see its docstring for the format).
pub struct DnsServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl DnsServer {
    pub fn start(zone: &serde_json::Value) -> DnsServer {
        assert!(
            python_has("dnslib"),
            "the Python package dnslib is missing (pip install dnslib); the test DNS server needs it"
        );
        let dir = tempfile::Builder::new().prefix("tern-dns-").tempdir().expect("tempdir");
        let zone_path = dir.path().join("zone.json");
        fs::write(&zone_path, serde_json::to_vec_pretty(zone).expect("zone json")).expect("write zone");
        let mut last = String::new();
        for _ in 0..3 {
            let port = udp_tcp_port();
            let mut child = Command::new("python3")
                .arg(DNS_SERVER)
                .arg(port.to_string())
                .arg(&zone_path)
                .arg("300")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(fs::File::create(dir.path().join("stderr.log")).expect("log file"))
                .spawn()
                .expect("run python3 dns_server.py");
            match wait_ready_line(&mut child, "ready", READY_TIMEOUT) {
                Ok(()) => return DnsServer { port, dir, child: Some(child) },
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = format!("{e}: {}", read_lossy(&dir.path().join("stderr.log")));
                }
            }
        }
        panic!("test DNS server did not start: {last}");
    }

    /// Replaces the zone; the server reads it again on its next query.
    pub fn set_zone(&self, zone: &serde_json::Value) {
        // The server reloads when the file's mtime changes: give every version its
        // own, so that two replacements within one clock tick are both seen.
        static VERSION: AtomicU64 = AtomicU64::new(0);
        let version = VERSION.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.path().join("zone.json.new");
        fs::write(&tmp, serde_json::to_vec_pretty(zone).expect("zone json")).expect("write zone");
        let mtime = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000) + Duration::from_micros(version);
        fs::File::options().write(true).open(&tmp).and_then(|f| f.set_modified(mtime)).expect("set zone mtime");
        fs::rename(&tmp, self.dir.path().join("zone.json")).expect("replace zone");
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        end(&mut self.child);
    }
}

/// Zone with `remote.test` served by the given MX hosts `(preference, ip)`,
/// named mx1.remote.test, mx2.remote.test, … in the order given.
pub fn mx_zone(mxs: &[(u16, &str)]) -> serde_json::Value {
    let mut zone = serde_json::Map::new();
    let mut records = Vec::new();
    for (n, (pref, ip)) in mxs.iter().enumerate() {
        let host = format!("mx{}.{REMOTE_DOMAIN}.", n + 1);
        records.push(serde_json::json!(["MX", pref, host]));
        zone.insert(host, serde_json::json!([["A", ip]]));
    }
    zone.insert(format!("{REMOTE_DOMAIN}."), serde_json::Value::Array(records));
    serde_json::Value::Object(zone)
}

/// Waits until something on `ip:port` answers with a 220 greeting.
pub fn wait_greeting(ip: &str, port: u16, timeout: Duration) -> Result<(), String> {
    let addr: SocketAddr = format!("{ip}:{port}").parse().expect("socket address");
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                let mut buf = [0u8; 512];
                match s.read(&mut buf) {
                    Ok(n) if buf[..n].starts_with(b"220") => {
                        let _ = s.write_all(b"QUIT\r\n");
                        return Ok(());
                    }
                    Ok(n) => last = format!("greeting {:?}", String::from_utf8_lossy(&buf[..n])),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing greets on {addr} within {timeout:?} ({last})"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Postfix's smtp-sink on `ip:port`; `flags` go before the address.
pub struct SmtpSink {
    pub addr: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SmtpSink {
    pub fn start(ip: &str, port: u16, flags: &[&str]) -> SmtpSink {
        assert!(have_program(SMTP_SINK), "{SMTP_SINK} missing: install the postfix package (scripts/test does)");
        let dir = tempfile::Builder::new().prefix("tern-sink-").tempdir().expect("tempdir");
        let addr = format!("{ip}:{port}");
        let mut cmd = Command::new(SMTP_SINK);
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        cmd.args(flags)
            .arg(&addr)
            .arg("100")
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.path().join("stdout.log")).expect("log file"))
            .stderr(fs::File::create(dir.path().join("stderr.log")).expect("log file"));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {SMTP_SINK}: {e}"));
        let mut sink = SmtpSink { addr, dir, child: Some(child) };
        if let Err(e) = wait_greeting(ip, port, READY_TIMEOUT) {
            let logs = sink.logs();
            end(&mut sink.child);
            panic!("smtp-sink did not start: {e}\n{logs}");
        }
        sink
    }

    pub fn logs(&self) -> String {
        format!(
            "--- smtp-sink {} stdout ---\n{}--- stderr ---\n{}",
            self.addr,
            read_lossy(&self.dir.path().join("stdout.log")),
            read_lossy(&self.dir.path().join("stderr.log"))
        )
    }

    /// Ends the server now.
    pub fn stop(&mut self) {
        end(&mut self.child);
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        end(&mut self.child);
    }
}

/// A scriptable SMTP server. Its log (`<dir>/log`) has one line per event:
/// `CONNECT n`, `CMD n <command line>`, `AUTH n ok <user>` or `AUTH n failed`,
/// `MESSAGE n <file>` (the content as received, dot-stuffing undone) and
/// `CLOSE n`, where n numbers the connections.
///
/// The configuration (JSON) may hold:
/// - `ehlo`: capability lines (default PIPELINING, 8BITMIME,
///   ENHANCEDSTATUSCODES; no SMTPUTF8);
/// - `auth`: `[user, password]`: AUTH PLAIN/LOGIN offered and required;
/// - `act`: stage → action, the stages being GREETING, EHLO, HELO, MAIL,
///   RCPT, DATA and BODY (the reply after the final dot); an action is
///   `{"reply": "550 …"}`, `{"raw": "bytes as they are"}`,
///   `{"long": N}` (a reply line of N bytes), each optionally with
///   `"close": true` (close the connection after it), or `{"close": true}`;
/// - `close_mid_data`: close the connection once this many bytes of
///   message content arrived;
/// - `refuse_rcpt`: addresses whose RCPT is refused with 550 5.1.1;
/// - `data_without_rcpt`: answer DATA with 354 even when no recipient was
///   accepted (a broken server; the content is then read and logged as ever);
/// - `tls`: `[cert, key]` (PEM files): STARTTLS offered until TLS is on; the
///   handshake is logged as `TLS n`.
const FAKE_SMTP: &str = r#"
import base64, json, os, socketserver, ssl, sys, threading, time

HOST, PORT, DIR = sys.argv[1], int(sys.argv[2]), sys.argv[3]
CONF = json.loads(sys.argv[4])
LOCK = threading.Lock()
COUNT = {"conn": 0, "msg": 0}


def log(line):
    with LOCK:
        with open(os.path.join(DIR, "log"), "a", encoding="utf-8") as f:
            f.write(line + "\n")


class Close(Exception):
    pass


class Handler(socketserver.StreamRequestHandler):
    def send(self, text):
        self.wfile.write(text.encode("utf-8"))
        self.wfile.flush()

    def act(self, stage, default):
        a = CONF.get("act", {}).get(stage)
        if a is None:
            self.send(default + "\r\n")
            return default[:3]
        code = ""
        if "reply" in a:
            self.send(a["reply"] + "\r\n")
            code = a["reply"][:3]
        elif "raw" in a:
            self.send(a["raw"])
            code = a["raw"][:3]
        elif "long" in a:
            self.send("250 " + "x" * int(a["long"]) + "\r\n")
            code = "250"
        if a.get("close"):
            raise Close()
        return code

    def readline(self):
        line = self.rfile.readline(1 << 20)
        if not line:
            raise Close()
        return line

    def handle(self):
        with LOCK:
            COUNT["conn"] += 1
            n = COUNT["conn"]
        log("CONNECT %d" % n)
        try:
            self.session(n)
        except (Close, OSError):
            pass
        log("CLOSE %d" % n)

    def check_auth(self, n, user, password):
        want = CONF.get("auth")
        if want and [user, password] == want:
            log("AUTH %d ok %s" % (n, user))
            self.send("235 2.7.0 Authentication successful\r\n")
            return True
        log("AUTH %d failed" % n)
        self.send("535 5.7.8 Authentication credentials invalid\r\n")
        return False

    def session(self, n):
        authed = not CONF.get("auth")
        rcpts = 0
        tls = False
        self.act("GREETING", "220 peer.test ESMTP fake")
        while True:
            text = self.readline().decode("utf-8", "replace").rstrip("\r\n")
            words = text.split(" ")
            verb = words[0].upper()
            log("CMD %d %s" % (n, text))
            if verb == "EHLO":
                caps = ["peer.test"] + CONF.get("ehlo", ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"])
                if CONF.get("tls") and not tls:
                    caps.append("STARTTLS")
                if CONF.get("auth"):
                    caps.append("AUTH PLAIN LOGIN")
                lines = ["250%s%s" % ("-" if i < len(caps) - 1 else " ", c) for i, c in enumerate(caps)]
                self.act("EHLO", "\r\n".join(lines))
            elif verb == "STARTTLS" and CONF.get("tls") and not tls:
                self.send("220 2.0.0 Ready to start TLS\r\n")
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(*CONF["tls"])
                self.request = ctx.wrap_socket(self.request, server_side=True)
                self.rfile = self.request.makefile("rb")
                self.wfile = self.request.makefile("wb")
                tls = True
                log("TLS %d" % n)
            elif verb == "HELO":
                self.act("HELO", "250 peer.test")
            elif verb == "AUTH" and CONF.get("auth"):
                mech = words[1].upper() if len(words) > 1 else ""
                if mech == "PLAIN":
                    if len(words) > 2:
                        token = words[2]
                    else:
                        self.send("334 \r\n")
                        token = self.readline().decode().strip()
                    try:
                        _, user, password = base64.b64decode(token).decode().split("\0")
                    except Exception:
                        user, password = None, None
                    authed = self.check_auth(n, user, password)
                elif mech == "LOGIN":
                    self.send("334 VXNlcm5hbWU6\r\n")
                    user = base64.b64decode(self.readline().strip()).decode()
                    self.send("334 UGFzc3dvcmQ6\r\n")
                    password = base64.b64decode(self.readline().strip()).decode()
                    authed = self.check_auth(n, user, password)
                else:
                    self.send("504 5.5.4 Unrecognized authentication type\r\n")
            elif verb == "MAIL":
                rcpts = 0
                if not authed:
                    self.send("530 5.7.0 Authentication required\r\n")
                elif "SMTPUTF8" in text.upper() and "SMTPUTF8" not in CONF.get("ehlo", []):
                    self.send("555 5.5.4 SMTPUTF8 not supported\r\n")
                else:
                    self.act("MAIL", "250 2.1.0 Ok")
            elif verb == "RCPT":
                addr = text[text.find("<") + 1:text.find(">")].lower()
                if addr in CONF.get("refuse_rcpt", []):
                    self.send("550 5.1.1 <%s>: Recipient address rejected\r\n" % addr)
                elif self.act("RCPT", "250 2.1.5 Ok").startswith("2"):
                    rcpts += 1
            elif verb == "DATA":
                if rcpts == 0 and not CONF.get("data_without_rcpt"):
                    self.send("554 5.5.1 Error: no valid recipients\r\n")
                    continue
                if not self.act("DATA", "354 End data with <CR><LF>.<CR><LF>").startswith("3"):
                    continue
                content = bytearray()
                limit = CONF.get("close_mid_data")
                while True:
                    line = self.readline()
                    if line == b".\r\n":
                        break
                    if line.startswith(b"."):
                        line = line[1:]
                    content += line
                    if limit is not None and len(content) >= limit:
                        log("CLOSED-MID-DATA %d %d" % (n, len(content)))
                        raise Close()
                with LOCK:
                    COUNT["msg"] += 1
                    path = os.path.join(DIR, "msg-%d.eml" % COUNT["msg"])
                with open(path, "wb") as f:
                    f.write(content)
                log("MESSAGE %d %s" % (n, path))
                self.act("BODY", "250 2.0.0 Ok: queued as FAKE%d" % COUNT["msg"])
                rcpts = 0
            elif verb in ("RSET", "NOOP"):
                rcpts = 0 if verb == "RSET" else rcpts
                self.send("250 2.0.0 Ok\r\n")
            elif verb == "QUIT":
                self.send("221 2.0.0 Bye\r\n")
                return
            else:
                self.send("502 5.5.2 Error: command not recognized\r\n")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


server = Server((HOST, PORT), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
time.sleep(float(sys.argv[5]) if len(sys.argv) > 5 else 300.0)
"#;

/// The scriptable Python SMTP server (see `FAKE_SMTP`) on `ip:port`.
pub struct FakePeer {
    pub addr: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl FakePeer {
    pub fn start(ip: &str, port: u16, conf: &serde_json::Value) -> FakePeer {
        let dir = tempfile::Builder::new().prefix("tern-peer-").tempdir().expect("tempdir");
        let script = dir.path().join("fake_smtp.py");
        fs::write(&script, FAKE_SMTP).expect("write script");
        fs::write(dir.path().join("log"), "").expect("create log");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(ip)
            .arg(port.to_string())
            .arg(dir.path())
            .arg(conf.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(dir.path().join("stderr.log")).expect("log file"))
            .spawn()
            .expect("run python3");
        if let Err(e) = wait_ready_line(&mut child, "ready", READY_TIMEOUT) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "fake SMTP server on {ip}:{port} did not start: {e}\n{}",
                read_lossy(&dir.path().join("stderr.log"))
            );
        }
        FakePeer { addr: format!("{ip}:{port}"), dir, child: Some(child) }
    }

    /// The event log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("log"))
    }

    /// Log lines whose first word is `kind` (CONNECT, CMD, AUTH, MESSAGE, …).
    pub fn events(&self, kind: &str) -> Vec<String> {
        self.log().lines().filter(|l| l.split(' ').next() == Some(kind)).map(String::from).collect()
    }

    /// The commands received, without the connection numbers.
    pub fn commands(&self) -> Vec<String> {
        self.events("CMD").iter().map(|l| l.splitn(3, ' ').nth(2).unwrap_or("").to_string()).collect()
    }

    /// The messages received, in order.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.events("MESSAGE")
            .iter()
            .filter_map(|l| l.splitn(3, ' ').nth(2))
            .map(|p| fs::read(p).expect("read received message"))
            .collect()
    }

    pub fn logs(&self) -> String {
        format!(
            "--- fake SMTP server {} log ---\n{}--- stderr ---\n{}",
            self.addr,
            self.log(),
            read_lossy(&self.dir.path().join("stderr.log"))
        )
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        end(&mut self.child);
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Settings of the sending Tern for one test.
pub struct SenderSetup<'a> {
    /// Config text appended as it is (sections other than [dns] and [outbound]).
    pub extra: &'a str,
    /// The test DNS server to ask, if any (else a port where nothing answers).
    pub dns: Option<&'a DnsServer>,
    /// `[outbound] port`: where the fake MX hosts listen.
    pub peer_port: u16,
    /// Extra lines for the `[outbound]` section.
    pub outbound: &'a str,
}

/// `[local]` and `[queue]` of a sending Tern with `local.test` as its domain
/// and a one-second retry.
pub fn sender_base(queue_extra: &str) -> String {
    format!(
        "\n[local]\ndomains = [\"{LOCAL_DOMAIN}\"]\naccept_unknown = true\n\n[queue]\nretry = [\"1s\"]\n{queue_extra}\n"
    )
}

/// Writes the sending Tern's config (the harness config with the DNS server
/// and the outbound port replaced) without starting it.
pub fn sender_stopped(setup: &SenderSetup<'_>) -> Tern {
    let t = Tern::new_stopped(setup.extra, &[]);
    let text = fs::read_to_string(&t.config_path).expect("read config");
    let mut out = String::new();
    let mut section = String::new();
    for line in text.lines() {
        if line.starts_with('[') {
            section = line.trim().to_string();
        }
        if let (true, Some(dns)) = (section == "[dns]" && line.starts_with("nameservers = "), setup.dns) {
            out.push_str(&format!("nameservers = [\"127.0.0.1:{}\"]\n", dns.port));
            continue;
        }
        if section == "[outbound]" && line.starts_with("port = ") {
            out.push_str(&format!("port = {}\n", setup.peer_port));
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.trim() == "[outbound]" {
            // Bounded waits on every remote server.
            out.push_str("command_timeout = \"10s\"\ndata_timeout = \"10s\"\n");
            out.push_str(setup.outbound);
            if !setup.outbound.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    assert!(out.contains(&format!("port = {}\n", setup.peer_port)), "harness config has no [outbound] port:\n{text}");
    fs::write(&t.config_path, out).expect("write config");
    t
}

/// Starts the sending Tern (see `sender_stopped`).
pub fn start_sender(setup: &SenderSetup<'_>) -> Tern {
    let mut t = sender_stopped(setup);
    t.start_again();
    t
}

/// A second Tern, the final destination for `remote.test`, listening on
/// `ip:port` beside its own harness port. `extra` may add config sections.
pub fn start_receiver(ip: &str, port: u16, extra: &str) -> Tern {
    let t = Tern::start(&format!(
        "\n[local]\ndomains = [\"{REMOTE_DOMAIN}\"]\naccept_unknown = true\n{extra}\n\n[[listen]]\naddr = \"{ip}:{port}\"\nmode = \"smtp\"\n"
    ));
    if let Err(e) = wait_greeting(ip, port, READY_TIMEOUT) {
        panic!("receiving tern does not listen on {ip}:{port}: {e}\n{}", t.logs());
    }
    t
}

/// Waits until `tern queue list` satisfies `pred`; returns that listing.
#[track_caller]
pub fn wait_queue(t: &Tern, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
    wait_for(
        timeout,
        what,
        || {
            let out = t.queue_list();
            let text = out.all();
            (out.success() && pred(&text)).then_some(text)
        },
        || format!("queue list:\n{}\n{}", t.queue_list().all(), t.logs()),
    )
}

/// Waits until the queue is empty.
#[track_caller]
pub fn wait_queue_empty(t: &Tern, timeout: Duration) {
    wait_queue(t, timeout, "an empty queue", |q| q.contains("queue is empty"));
}

/// The values of `Name: value` lines (the fields of a delivery-status part).
pub fn fields(text: &str, name: &str) -> Vec<String> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    text.lines()
        .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_string())
        .collect()
}

/// The message as sent by `send_message`.
pub fn test_message(subject: &str, to: &str) -> Vec<u8> {
    format!(
        "From: Sender <{SENDER}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{}@local.test>\r\n\r\nHello from Tern's outbound tests.\r\n.leading dot line\r\nLast line.\r\n",
        subject.replace(' ', "-")
    )
    .into_bytes()
}

/// Sends `msg` from `sender` to `rcpts` through `t` with smtplib; returns
/// the queue id. `mail_options` go on MAIL FROM.
#[track_caller]
pub fn send_message(t: &Tern, sender: &str, rcpts: &[&str], msg: &[u8], mail_options: &[&str]) -> String {
    let path = t.path().join(format!("outgoing-{}.eml", fastrand_name()));
    fs::write(&path, msg).expect("write message");
    let script = format!(
        "s = connect()\nmsg = open({path:?}, 'rb').read()\nprint(send(s, {sender:?}, {rcpts:?}, msg, {mail_options:?}))\ns.quit()\n",
        path = path.display().to_string(),
    );
    let out = t.py(&script);
    out.assert_success("sending with smtplib");
    queue_id(&out.stdout).unwrap_or_else(|| panic!("no queue id in {:?}", out.stdout))
}

fn fastrand_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Lines of the header block that start a `Received:` field.
pub fn received_headers(msg: &[u8]) -> Vec<String> {
    let (headers, _) = split_message(msg);
    let text = String::from_utf8_lossy(headers);
    let mut out: Vec<String> = Vec::new();
    let mut in_received = false;
    for line in text.split("\r\n") {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let (true, Some(last)) = (in_received, out.last_mut()) {
                last.push(' ');
                last.push_str(line.trim());
            }
            continue;
        }
        in_received = line.to_ascii_lowercase().starts_with("received:");
        if in_received {
            out.push(line.to_string());
        }
    }
    out
}
