//! ACME (RFC 8555) against Pebble, Let's Encrypt's test server, on loopback: Tern
//! obtains a certificate over tls-alpn-01 (its HTTPS listener) or http-01 (its HTTP
//! listener), serves it on SMTP STARTTLS and HTTPS (checked with `openssl s_client`
//! and curl trusting Pebble's root), reuses it at restart, renews it, copes with an
//! ACME server that is down, answers garbage or dies mid-order; and testssl.sh finds
//! nothing wrong in its TLS. Pebble resolves the names through the test DNS server.

mod common;

use common::outbound::{DnsServer, wait_for};
use common::pki::TestCa;
use common::*;
use serde_json::json;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MX: &str = "mx.example.test";
const POLICY_HOST: &str = "mta-sts.example.test";
/// Time for an order, validation included.
const ISSUE: Duration = Duration::from_secs(90);
const OBTAINED: &str = "ACME: certificate obtained";
const FAILED: &str = "ACME: order failed";

/// Pebble with its own TLS certificate (from a test CA), validating against Tern's
/// HTTP and HTTPS ports, resolving through the test DNS server.
struct Pebble {
    ca: TestCa,
    config: PathBuf,
    dns_port: u16,
    port: u16,
    mgmt: u16,
    child: Option<Child>,
}

impl Pebble {
    fn new(dns_port: u16, http_port: u16, tls_port: u16) -> Pebble {
        let ca = TestCa::new("Pebble front test CA");
        let (cert, key) = ca.issue("pebble", &["DNS:localhost", "IP:127.0.0.1"]);
        let (port, mgmt) = (free_port(), free_port());
        let config = ca.dir.path().join("pebble.json");
        let text = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        fs::write(&config, text.to_string()).expect("write pebble config");
        Pebble { ca, config, dns_port, port, mgmt, child: None }
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    fn start(&mut self) {
        let log = fs::File::create(self.ca.dir.path().join("pebble.log")).expect("pebble log");
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&self.config)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{}", self.dns_port))
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .current_dir(self.ca.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("run pebble");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.mgmt)).is_err()
            || TcpStream::connect(("127.0.0.1", self.port)).is_err()
        {
            assert!(Instant::now() < deadline, "pebble did not listen within 20 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.ca.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// The root Pebble issues under (made at its start), from its management interface.
    fn root(&self) -> PathBuf {
        let path = self.ca.dir.path().join("issuer-root.pem");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "--fail", "--cacert"]).arg(self.ca.ca_file());
        cmd.arg(format!("https://127.0.0.1:{}/roots/0", self.mgmt)).arg("-o").arg(&path);
        run(cmd, CLIENT_TIMEOUT).assert_success("fetch pebble root");
        path
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Setup {
    tern: Tern,
    pebble: Pebble,
    https: u16,
    _dns: DnsServer,
}

fn have_tools() -> bool {
    for prog in ["pebble", "openssl", "curl"] {
        if !have_program(prog) {
            eprintln!("SKIPPED: {prog} is not installed");
            return false;
        }
    }
    true
}

/// Tern with HTTPS and HTTP listeners, `[mta_sts]` for example.test and `[acme]`
/// ordering mx.example.test and mta-sts.example.test from Pebble (started now when
/// `pebble_up`).
fn setup(challenge: &str, acme_extra: &str, pebble_up: bool) -> Setup {
    let dns = DnsServer::start(&json!({
        "mx.example.test.": [["A", "127.0.0.1"]],
        "mta-sts.example.test.": [["A", "127.0.0.1"]],
    }));
    let (https, http) = (free_port(), free_port());
    let mut pebble = Pebble::new(dns.port, http, https);
    if pebble_up {
        pebble.start();
    }
    let toml = format!(
        r#"
[[listen]]
addr = "127.0.0.1:{https}"
mode = "https"

[[listen]]
addr = "127.0.0.1:{http}"
mode = "http"

[local]
domains = ["example.test"]

[mta_sts]
mode = "enforce"
max_age = "1d"
mx = ["{MX}"]

[acme]
directory = "{}"
contact = "mailto:admin@example.test"
names = ["{MX}", "{POLICY_HOST}"]
challenge = "{challenge}"
ca_file = "{}"
{acme_extra}
"#,
        pebble.directory(),
        pebble.ca.ca_file().display()
    );
    let tern = Tern::start(&toml);
    Setup { tern, pebble, https, _dns: dns }
}

fn stderr(t: &Tern) -> String {
    fs::read_to_string(t.stderr_log()).unwrap_or_default()
}

/// Waits until the server's log holds `needle` `n` times.
fn wait_count(s: &Setup, needle: &str, n: usize) {
    wait_for(
        ISSUE,
        &format!("{n} × {needle:?} in the log"),
        || (stderr(&s.tern).matches(needle).count() >= n).then_some(()),
        || format!("{}\n--- pebble ---\n{}", s.tern.logs(), s.pebble.log()),
    );
}

/// `openssl s_client -starttls smtp` against Tern: its output (with the certificate
/// served, as PEM), verified against `ca` when given.
fn s_client(t: &Tern, ca: Option<&Path>) -> Out {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{}", t.port), "-starttls", "smtp", "-servername", MX]);
    if let Some(ca) = ca {
        cmd.args(["-verify_return_error", "-verify_hostname", MX, "-CAfile"]).arg(ca);
    }
    run_with_input(cmd, Some(b"QUIT\r\n"), CLIENT_TIMEOUT)
}

/// The certificate in an s_client output.
fn served_cert(out: &Out) -> String {
    let text = out.all();
    let start = text.find("-----BEGIN CERTIFICATE-----").unwrap_or_else(|| panic!("no certificate in:\n{text}"));
    let end = text[start..].find("-----END CERTIFICATE-----").expect("end of certificate") + start;
    text[start..end].to_string()
}

fn assert_verified(t: &Tern, ca: &Path) -> String {
    let out = s_client(t, Some(ca));
    assert!(out.all().contains("Verify return code: 0 (ok)"), "not verified:\n{}\n{}", out.all(), t.logs());
    served_cert(&out)
}

fn metrics(t: &Tern) -> String {
    let out =
        t.curl(&["-H", &format!("Authorization: Bearer {}", t.admin_token()), &format!("{}/metrics", t.admin_url())]);
    out.assert_success("GET /metrics");
    out.stdout.clone()
}

fn policy_over_https(s: &Setup, ca: &Path) -> Out {
    let url = format!("https://{POLICY_HOST}:{}/.well-known/mta-sts.txt", s.https);
    let resolve = format!("{POLICY_HOST}:{}:127.0.0.1", s.https);
    s.tern.curl(&["--fail", "--cacert", ca.to_str().unwrap(), "--resolve", &resolve, "-D", "-", &url])
}

#[test]
fn tls_alpn_01_issues_reuses_at_restart_and_renews() {
    if !have_tools() {
        return;
    }
    let mut s = setup("tls-alpn-01", "", true);
    wait_count(&s, OBTAINED, 1);
    let root = s.pebble.root();
    let first = assert_verified(&s.tern, &root);
    let policy = policy_over_https(&s, &root);
    policy.assert_success("curl the policy with Pebble's root");
    let text = policy.stdout.clone();
    assert!(text.contains("version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 86400\r\n"), "{text}");
    assert!(text.to_ascii_lowercase().contains("content-type: text/plain"), "{text}");
    assert!(stderr(&s.tern).contains("tls-alpn-01 validation handshake"), "{}", s.tern.logs());
    // Stored owner-only.
    for f in ["account.json", "cert.pem", "key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(s.tern.data_dir.join("acme").join(f)).expect(f).permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let m = metrics(&s.tern);
    assert!(m.contains("tern_acme_orders_total{result=\"issued\"} 1"), "{m}");
    assert!(m.contains("tern_acme_orders_total{result=\"failed\"} 0"), "{m}");
    let expiry = m
        .lines()
        .find_map(|l| l.strip_prefix("tern_tls_certificate_expiry_seconds{source=\"acme\"} "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or_else(|| panic!("no acme expiry in\n{m}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(expiry > now + 86_400, "expiry {expiry}");
    let status = s.tern.tern_cmd(&["status"]);
    status.assert_success("tern status");
    let st = status.stdout.clone();
    assert!(st.contains("mx.example.test, mta-sts.example.test (acme, in use)"), "{st}");
    assert!(st.contains("(self-signed, standing by)"), "{st}");
    assert!(st.contains("last order issued"), "{st}");

    // `tern dane tlsa` pins the ACME certificate's key.
    let tlsa = |t: &Tern| {
        let out = t.tern_cmd(&["dane", "tlsa"]);
        out.assert_success("tern dane tlsa");
        out.stdout
    };
    let pinned = tlsa(&s.tern);
    assert!(pinned.starts_with("_25._tcp.") && pinned.contains(" IN TLSA 3 1 1 "), "{pinned}");

    // A restart serves the stored certificate at once, without a new order.
    s.tern.restart();
    let again = assert_verified(&s.tern, &root);
    assert_eq!(first, again, "the stored certificate is served after a restart");
    assert!(stderr(&s.tern).contains("ACME: using the stored certificate"), "{}", s.tern.logs());
    assert_eq!(stderr(&s.tern).matches("ACME: ordering").count(), 1, "{}", s.tern.logs());

    // renew_before longer than the certificate lives: renewed at the next start,
    // and the new certificate is served without a restart.
    let config = fs::read_to_string(&s.tern.config_path).unwrap();
    let config =
        config.replace("challenge = \"tls-alpn-01\"", "challenge = \"tls-alpn-01\"\nrenew_before = \"36500d\"");
    fs::write(&s.tern.config_path, config).unwrap();
    s.tern.restart();
    wait_count(&s, OBTAINED, 2);
    let renewed = assert_verified(&s.tern, &root);
    assert_ne!(first, renewed, "a renewed certificate is served");
    // The key is kept, so a published 3 1 1 record stays true (RFC 7671 §8.1).
    assert_eq!(tlsa(&s.tern), pinned, "the renewed certificate keeps its key");
    policy_over_https(&s, &root).assert_success("the policy over the renewed certificate");
}

#[test]
fn http_01_issues_a_certificate() {
    if !have_tools() {
        return;
    }
    let s = setup("http-01", "", true);
    wait_count(&s, OBTAINED, 1);
    assert!(stderr(&s.tern).contains("ACME: http-01 token served"), "{}", s.tern.logs());
    let root = s.pebble.root();
    assert_verified(&s.tern, &root);
    policy_over_https(&s, &root).assert_success("curl the policy with Pebble's root");
}

#[test]
fn acme_server_down_at_start_then_up() {
    if !have_tools() {
        return;
    }
    let mut s = setup("tls-alpn-01", "", false);
    wait_count(&s, FAILED, 1);
    // Meanwhile SMTP serves the self-signed certificate.
    let out = s_client(&s.tern, None);
    let issuer = out.all().lines().find(|l| l.starts_with("issuer=")).map(str::to_string).unwrap_or_default();
    assert!(issuer.contains("tern.test"), "self-signed expected: {issuer}\n{}", out.all());
    let st = s.tern.tern_cmd(&["status"]).stdout.clone();
    assert!(st.contains("last order failed"), "{st}");
    assert!(metrics(&s.tern).contains("tern_acme_orders_total{result=\"failed\"}"));
    s.pebble.start();
    wait_count(&s, OBTAINED, 1);
    let root = s.pebble.root();
    assert_verified(&s.tern, &root);
}

/// A fake ACME server: `garbage` answers the directory with HTML; `die` gives a
/// directory and nonces, then exits at the first POST (the account request).
const FAKE_ACME: &str = r#"
import http.server, ssl, sys, json, os
ip, port, cert, key, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
base = "https://%s:%d" % (ip, port)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, code, ctype, body, extra=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Replay-Nonce", "bm9uY2U")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        sys.stderr.write("GET %s\n" % self.path); sys.stderr.flush()
        if mode == "garbage":
            self.reply(200, "text/html", b"<html>\x00\xffnot an ACME directory")
        else:
            d = {"newNonce": base + "/nonce", "newAccount": base + "/account", "newOrder": base + "/order"}
            self.reply(200, "application/json", json.dumps(d).encode())
    def do_HEAD(self):
        self.reply(200, "text/plain", b"")
    def do_POST(self):
        sys.stderr.write("POST %s\n" % self.path); sys.stderr.flush()
        os._exit(0)
    def log_message(self, *a):
        pass
server = http.server.HTTPServer((ip, port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"#;

#[test]
fn a_failing_acme_server_leaves_the_old_certificate_in_place() {
    if !have_tools() {
        return;
    }
    let ca = TestCa::new("Tern ACME failure test CA");
    let (server_cert, server_key) = ca.issue("fake-acme", &["IP:127.0.0.1"]);
    let (cert, key) = ca.issue(MX, &[&format!("DNS:{MX}")]);
    fs::write(ca.dir.path().join("fake_acme.py"), FAKE_ACME).unwrap();
    for mode in ["garbage", "die"] {
        let port = free_port();
        let log = ca.dir.path().join(format!("{mode}.log"));
        let mut fake = Command::new("python3")
            .arg(ca.dir.path().join("fake_acme.py"))
            .args(["127.0.0.1", &port.to_string()])
            .arg(&server_cert)
            .arg(&server_key)
            .arg(mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(fake.stdout.take().unwrap()), &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "fake ACME server: {}", fs::read_to_string(&log).unwrap_or_default());
        let https = free_port();
        let t = Tern::start(&format!(
            "[[listen]]\naddr = \"127.0.0.1:{https}\"\nmode = \"https\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n\
             [acme]\ndirectory = \"https://127.0.0.1:{port}/dir\"\nnames = [\"{MX}\"]\nca_file = \"{}\"\n",
            cert.display(),
            key.display(),
            ca.ca_file().display()
        ));
        wait_for(ISSUE, "a failed order", || stderr(&t).contains(FAILED).then_some(()), || t.logs());
        if mode == "die" {
            let seen = fs::read_to_string(&log).unwrap_or_default();
            assert!(seen.contains("POST /account"), "the server died at the account request: {seen}");
        }
        // The configured certificate is still served; SMTP works; the failure is counted.
        assert_verified(&t, &ca.ca_file());
        let mut raw = t.raw();
        assert!(raw.ehlo().has("250"), "EHLO after a failed order");
        let m = metrics(&t);
        assert!(!m.contains("tern_acme_orders_total{result=\"failed\"} 0"), "{m}");
        assert!(m.contains("tern_acme_orders_total{result=\"issued\"} 0"), "{m}");
        let st = t.tern_cmd(&["status"]).stdout.clone();
        assert!(st.contains("last order failed") && st.contains("(file, in use)"), "{st}");
        let _ = fake.kill();
        let _ = fake.wait();
    }
}

/// testssl.sh against SMTP STARTTLS with a certificate from a test CA: the protocols,
/// cipher categories, forward secrecy and known vulnerabilities; no finding may be
/// rated MEDIUM, HIGH or CRITICAL.
#[test]
fn testssl_finds_no_weakness_in_starttls() {
    if !have_program("testssl") || !have_program("openssl") {
        eprintln!("SKIPPED: testssl (Debian testssl.sh) is not installed");
        return;
    }
    let ca = TestCa::new("Tern testssl CA");
    let (cert, key) = ca.issue(MX, &[&format!("DNS:{MX}")]);
    let t = Tern::start(&format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display()));
    let json_path = t.path().join("testssl.json");
    let mut cmd = Command::new("testssl");
    cmd.args(["--quiet", "--warnings", "off", "--color", "0", "--nodns", "none", "--ip", "127.0.0.1"]);
    cmd.args(["--connect-timeout", "5", "--openssl-timeout", "5", "--add-ca"]).arg(ca.ca_file());
    cmd.args(["-p", "-s", "-f", "-U", "--jsonfile"]).arg(&json_path);
    cmd.args(["--starttls", "smtp", &format!("{MX}:{}", t.port)]);
    let started = Instant::now();
    let out = run(cmd, Duration::from_secs(240));
    eprintln!("testssl took {:?}", started.elapsed());
    let text = fs::read_to_string(&json_path).unwrap_or_else(|e| panic!("no testssl JSON ({e}):\n{}", out.all()));
    let findings: Vec<serde_json::Value> = serde_json::from_str(&text).expect("testssl JSON");
    assert!(findings.iter().any(|f| f["id"] == "TLS1_3"), "no protocol findings:\n{text}");
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("MEDIUM" | "HIGH" | "CRITICAL" | "FATAL")))
        .map(|f| format!("{} [{}]: {}", f["id"], f["severity"], f["finding"]))
        .collect();
    assert!(bad.is_empty(), "testssl findings:\n{}\n{}", bad.join("\n"), out.all());
}
