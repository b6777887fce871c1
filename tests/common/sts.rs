//! A test CA made with openssl, and an MTA-STS policy server (Python HTTPS on
//! `ip:443`, certificate from that CA) for the outbound TLS policy tests.
#![allow(dead_code)]

use super::*;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A test CA and certificates it signs, in a temp dir.
pub struct Ca {
    pub dir: tempfile::TempDir,
}

impl Ca {
    pub fn new() -> Ca {
        let dir = tempfile::Builder::new().prefix("tern-sts-ca-").tempdir().expect("tempdir");
        let mut cmd = Command::new("openssl");
        cmd.current_dir(dir.path()).args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Tern MTA-STS test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        run(cmd, Duration::from_secs(60)).assert_success("openssl req (CA)");
        Ca { dir }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `name` signed by the CA: (cert, key).
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        let (key, csr, cert, ext) = (
            d.join(format!("{name}.key")),
            d.join(format!("{name}.csr")),
            d.join(format!("{name}.pem")),
            d.join(format!("{name}.ext")),
        );
        fs::write(&ext, format!("subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"))
            .expect("write ext");
        let mut cmd = Command::new("openssl");
        cmd.current_dir(d).args(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj"]);
        cmd.arg(format!("/CN={name}")).arg("-keyout").arg(&key).arg("-out").arg(&csr);
        run(cmd, Duration::from_secs(60)).assert_success("openssl req (leaf)");
        let mut cmd = Command::new("openssl");
        cmd.current_dir(d).args(["x509", "-req", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"]);
        cmd.arg("-in").arg(&csr).arg("-out").arg(&cert).arg("-extfile").arg(&ext);
        run(cmd, Duration::from_secs(60)).assert_success("openssl x509 -req");
        (cert, key)
    }
}

const HTTPS_SERVER: &str = r#"
import http.server, ssl, sys
ip, cert, key, body = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/.well-known/mta-sts.txt":
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        sys.stderr.write("GET\n")
try:
    server = http.server.HTTPServer((ip, 443), H)
except OSError as e:
    print("bind failed: %s" % e, flush=True)
    sys.exit(0)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"#;

/// The policy server on `ip:443`; `None` when port 443 cannot be bound (not root).
pub struct PolicyServer(Child);

impl PolicyServer {
    pub fn start(ca: &Ca, ip: &str, policy: &str) -> Option<PolicyServer> {
        let (cert, key) = ca.issue("mta-sts.remote.test");
        let script = ca.dir.path().join("https.py");
        fs::write(&script, HTTPS_SERVER).expect("write script");
        let mut child = Command::new("python3")
            .arg(&script)
            .args([ip])
            .arg(&cert)
            .arg(&key)
            .arg(policy)
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
