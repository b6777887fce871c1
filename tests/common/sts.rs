//! MTA-STS test fixtures: a test CA made with openssl, and a Python HTTPS server that
//! serves (or fails to serve, in chosen ways) the policy of `remote.test` on
//! `<ip>:443`, loopback only.
#![allow(dead_code)]

use super::outbound::{mx_zone, start_receiver};
use super::pki::TestCa;
use super::{Tern, run};
use serde_json::json;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The MTA-STS tests' CA: a certificate for one DNS name each.
pub struct Ca(pub TestCa);

impl Ca {
    pub fn new() -> Ca {
        Ca(TestCa::new("Tern MTA-STS test CA"))
    }

    pub fn ca_file(&self) -> PathBuf {
        self.0.ca_file()
    }

    /// A certificate for `name` signed by the CA: (cert, key).
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        self.0.issue(name, &[&format!("DNS:{name}")])
    }
}

const HTTPS_SERVER: &str = r#"
import http.server, ssl, sys, time
ip, cert, key, body, how = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        sys.stderr.write("GET\n")
        if self.path != "/.well-known/mta-sts.txt":
            self.send_error(404)
            return
        if how == "redirect":
            self.send_response(301)
            self.send_header("Location", "https://elsewhere.test/.well-known/mta-sts.txt")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if how == "html" else "text/plain")
        if how == "huge":
            # No length: the client must stop reading past its limit by itself.
            self.end_headers()
            try:
                for _ in range(4096):
                    self.wfile.write(b"x" * 1024)
            except OSError:
                pass
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if how == "slow":
            for b in data:
                self.wfile.write(bytes([b]))
                self.wfile.flush()
                time.sleep(1)
            return
        self.wfile.write(data)
    def log_message(self, *a):
        pass
try:
    server = http.server.ThreadingHTTPServer((ip, 443), H)
except OSError as e:
    print("bind failed: %s" % e, flush=True)
    sys.exit(0)
server.daemon_threads = True
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"#;

/// The policy server on `ip:443`; `None` when port 443 cannot be bound (not root).
pub struct PolicyServer(Child);

impl PolicyServer {
    /// Serves `policy` as it should be served.
    pub fn start(ca: &Ca, ip: &str, policy: &str) -> Option<PolicyServer> {
        PolicyServer::serving(ca, ip, policy, "ok")
    }

    /// Serves `policy` in the way `how` says: `ok`, `redirect` (301 elsewhere), `html`
    /// (as text/html), `huge` (4 MiB without a length) or `slow` (a byte a second).
    pub fn serving(ca: &Ca, ip: &str, policy: &str, how: &str) -> Option<PolicyServer> {
        let (cert, key) = ca.issue("mta-sts.remote.test");
        let script = ca.0.dir.path().join("https.py");
        fs::write(&script, HTTPS_SERVER).expect("write script");
        let mut child = Command::new("python3")
            .arg(&script)
            .args([ip])
            .arg(&cert)
            .arg(&key)
            .arg(policy)
            .arg(how)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run python3");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("read line");
        if line.trim() != "ready" {
            eprintln!("SKIPPED: cannot serve HTTPS on {ip}:443: {}", line.trim());
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(PolicyServer(child))
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

/// `remote.test` MX mx1.remote.test at `mx_ip`, the TXT record with `id`, and the
/// policy host at `sts_ip`.
pub fn zone(mx_ip: &str, sts_ip: &str, id: &str) -> serde_json::Value {
    let mut zone = mx_zone(&[(10, mx_ip)]);
    let map = zone.as_object_mut().expect("zone object");
    map.insert("_mta-sts.remote.test.".into(), json!([["TXT", format!("v=STSv1; id={id};")]]));
    map.insert("mta-sts.remote.test.".into(), json!([["A", sts_ip]]));
    zone
}

/// The value of one sample of the admin listener's `/metrics`, like
/// `tern_requiretls_total{result="bounced"}`; 0 when absent.
pub fn metric(t: &Tern, sample: &str) -> f64 {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-H"])
        .arg(format!("Authorization: Bearer {}", t.admin_token()))
        .arg(format!("{}/metrics", t.admin_url()));
    let out = run(cmd, Duration::from_secs(30));
    out.assert_success("GET /metrics");
    out.stdout.lines().find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// Writes a cached policy of `remote.test` with id `one`, fetched at `now`, into the
/// data dir of a stopped Tern.
pub fn write_cache(data_dir: &Path, text: &str, now: u64) {
    let dir = data_dir.join("mta-sts");
    fs::create_dir_all(&dir).expect("mkdir");
    let entry = json!({"id": "one", "policy": text, "fetched_at": now, "expires": now + 86400});
    fs::write(dir.join("remote.test.json"), entry.to_string()).expect("write cache");
}

/// An MX host: a Tern with a certificate from the CA for `cert_name`.
pub fn start_mx(ca: &Ca, ip: &str, port: u16, cert_name: &str) -> Tern {
    let (cert, key) = ca.issue(cert_name);
    start_receiver(ip, port, &format!("\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display()))
}

/// `[outbound]` lines: MTA-STS on, the test CA trusted.
pub fn sts_outbound(ca: &Ca) -> String {
    format!("mta_sts = true\nca_file = \"{}\"\n", ca.ca_file().display())
}
