//! Outbound DANE (RFC 7672): the zone `remote.test` (MX mx1.remote.test, its address,
//! and `_PORT._tcp.mx1.remote.test` TLSA records computed from the receiving server's
//! certificate) is signed with `ldns-keygen` / `ldns-signzone` and served by `nsd` on
//! a loopback port. With `[dns] dnssec = "trust-resolver"` the sending Tern asks
//! `unbound`, validating from the zone's key; with `"validate"` it asks nsd and
//! validates itself from `[dns] trust_anchor`. The MX host is a second Tern with a
//! certificate from a test CA made with openssl, or a fake peer without STARTTLS.

mod common;

use common::outbound::*;
use common::*;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BOB: &str = "bob@remote.test";
const DELIVERY: Duration = Duration::from_secs(30);
const MX_HOST: &str = "mx1.remote.test";

/// The programs these tests run; a missing one skips the test.
fn have_tools() -> bool {
    for prog in ["nsd", "unbound", "ldns-keygen", "ldns-signzone", "openssl"] {
        if !have_program(prog) && !have_program(&format!("/usr/sbin/{prog}")) {
            eprintln!("SKIPPED: {prog} is not installed (Debian nsd, unbound, ldnsutils, openssl)");
            return false;
        }
    }
    true
}

fn sbin(prog: &str) -> String {
    if have_program(prog) { prog.to_string() } else { format!("/usr/sbin/{prog}") }
}

/// A test CA whose certificates come with the CA after them in the same file (the
/// chain the server sends).
struct Ca(common::pki::TestCa);

impl Ca {
    fn new() -> Ca {
        Ca(common::pki::TestCa::new("Tern DANE test CA"))
    }

    fn ca_file(&self) -> PathBuf {
        self.0.ca_file()
    }

    /// A certificate for `name` signed by the CA, then the CA's: (chain, key).
    fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.0.issue(name, &[&format!("DNS:{name}")]);
        let mut chain = fs::read(&cert).expect("read cert");
        chain.extend(fs::read(self.ca_file()).expect("read CA"));
        fs::write(&cert, chain).expect("write chain");
        (cert, key)
    }
}

/// `usage 1 1 HEX`: the SHA-256 of the public key of the first certificate in `pem`.
fn tlsa_spki(usage: u8, pem: &Path) -> String {
    let der = CertificateDer::pem_file_iter(pem).expect("pem").next().expect("a certificate").expect("pem");
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.tbs_certificate.subject_pki.raw);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{usage} 1 1 {hex}")
}

/// A port free for both UDP and TCP on 127.0.0.1.
fn dns_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port for a DNS server");
}

/// Waits until a DNS server on `port` answers a query for `remote.test. SOA`.
fn wait_dns(port: u16, what: &str, log: &Path) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["remote", "test"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 6, 0, 1]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let _ = socket.send_to(&query, ("127.0.0.1", port));
        let mut buf = [0u8; 512];
        if let Ok((n, _)) = socket.recv_from(&mut buf)
            && n > 4
            && buf[..2] == [0x12, 0x34]
            && buf[3] & 0x0f == 0
        {
            return;
        }
    }
    panic!("{what} on port {port} does not answer: {}", fs::read_to_string(log).unwrap_or_default());
}

/// A daemon started by a test, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Daemon {
    let log = fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    let err = log.try_clone().expect("log file");
    Daemon(cmd.stdin(Stdio::null()).stdout(log).stderr(err).spawn().unwrap_or_else(|e| panic!("run {name}: {e}")))
}

/// What to spoil in the signed zone.
#[derive(Clone, Copy, PartialEq)]
enum Sign {
    /// Signed with the key of the trust anchor.
    Good,
    /// The TLSA record's data changed after signing: its signature no longer
    /// validates.
    TamperedTlsa,
}

/// The signed zone `remote.test` in nsd, and (for trust-resolver) unbound before it.
struct SignedDns {
    dir: tempfile::TempDir,
    /// The file holding the zone's DNSKEY: the trust anchor.
    anchor: PathBuf,
    /// The file holding the zone's DS record: the same anchor by digest.
    ds_anchor: PathBuf,
    nsd_port: u16,
    unbound_port: Option<u16>,
    _daemons: Vec<Daemon>,
}

impl SignedDns {
    /// `records`: zone-file lines relative to `remote.test.`.
    fn start(records: &[String], sign: Sign, with_unbound: bool) -> SignedDns {
        let dir = tempfile::Builder::new().prefix("tern-dane-dns-").tempdir().expect("tempdir");
        let d = dir.path();
        let mut cmd = Command::new("ldns-keygen");
        cmd.current_dir(d).args(["-a", "ECDSAP256SHA256", "-k", "remote.test"]);
        let out = run(cmd, Duration::from_secs(30));
        out.assert_success("ldns-keygen");
        let key = out.stdout.trim().to_string();
        let mut zone = String::from(
            "$ORIGIN remote.test.\n$TTL 3600\n@ IN SOA ns.remote.test. hostmaster.remote.test. 1 3600 600 86400 300\n\
             @ IN NS ns.remote.test.\nns IN A 127.0.0.1\n",
        );
        for r in records {
            zone.push_str(r);
            zone.push('\n');
        }
        fs::write(d.join("remote.test.zone"), zone).expect("write zone");
        let mut cmd = Command::new("ldns-signzone");
        cmd.current_dir(d).args(["-o", "remote.test", "remote.test.zone", &key]);
        run(cmd, Duration::from_secs(30)).assert_success("ldns-signzone");
        let signed = d.join("remote.test.zone.signed");
        if sign == Sign::TamperedTlsa {
            // One hex digit of the TLSA data flipped: the RRSIG no longer matches.
            let text = fs::read_to_string(&signed).expect("read signed zone");
            let tampered: Vec<String> = text
                .lines()
                .map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    if fields.get(3) == Some(&"TLSA") {
                        let mut line = line.to_string();
                        let last = line.pop().expect("data");
                        line.push(if last == '0' { '1' } else { '0' });
                        line
                    } else {
                        line.to_string()
                    }
                })
                .collect();
            assert!(tampered.join("\n") != text.trim_end(), "no TLSA record to tamper with");
            fs::write(&signed, tampered.join("\n") + "\n").expect("write tampered zone");
        }
        let anchor = d.join("anchor.key");
        fs::copy(d.join(format!("{key}.key")), &anchor).expect("copy key");
        let ds_anchor = d.join("anchor.ds");
        fs::copy(d.join(format!("{key}.ds")), &ds_anchor).expect("copy DS");
        let nsd_port = dns_port();
        let p = d.display();
        fs::write(
            d.join("nsd.conf"),
            format!(
                "server:\n  ip-address: 127.0.0.1@{nsd_port}\n  username: \"\"\n  pidfile: \"{p}/nsd.pid\"\n  \
                 zonesdir: \"{p}\"\n  database: \"\"\n  zonelistfile: \"{p}/zone.list\"\n  xfrdfile: \"{p}/xfrd.state\"\n  \
                 xfrdir: \"{p}\"\n  verbosity: 1\n  server-count: 1\nremote-control:\n  control-enable: no\n\
                 zone:\n  name: remote.test\n  zonefile: remote.test.zone.signed\n"
            ),
        )
        .expect("write nsd.conf");
        let mut daemons = vec![spawn(d, "nsd", Command::new(sbin("nsd")).arg("-d").arg("-c").arg(d.join("nsd.conf")))];
        wait_dns(nsd_port, "nsd", &d.join("nsd.log"));
        let mut unbound_port = None;
        if with_unbound {
            let port = dns_port();
            fs::write(
                d.join("unbound.conf"),
                format!(
                    "server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n  \
                     chroot: \"\"\n  directory: \"{p}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  \
                     verbosity: 1\n  do-ip6: no\n  do-not-query-localhost: no\n  \
                     module-config: \"validator iterator\"\n  trust-anchor-file: \"{}\"\n  \
                     local-zone: \"test.\" nodefault\n  access-control: 127.0.0.0/8 allow\n\
                     stub-zone:\n  name: \"remote.test\"\n  stub-addr: 127.0.0.1@{nsd_port}\n\
                     remote-control:\n  control-enable: no\n",
                    anchor.display()
                ),
            )
            .expect("write unbound.conf");
            daemons.push(spawn(
                d,
                "unbound",
                Command::new(sbin("unbound")).arg("-d").arg("-c").arg(d.join("unbound.conf")),
            ));
            wait_dns(port, "unbound", &d.join("unbound.log"));
            unbound_port = Some(port);
        }
        SignedDns { dir, anchor, ds_anchor, nsd_port, unbound_port, _daemons: daemons }
    }

    /// `[dns]` lines for the sending Tern.
    fn dns_config(&self, mode: &str) -> String {
        match mode {
            "trust-resolver" => format!(
                "nameservers = [\"127.0.0.1:{}\"]\ndnssec = \"trust-resolver\"\n",
                self.unbound_port.expect("unbound started")
            ),
            _ => format!(
                "nameservers = [\"127.0.0.1:{}\"]\ndnssec = \"validate\"\ntrust_anchor = \"{}\"\n",
                self.nsd_port,
                if mode == "validate-ds" { &self.ds_anchor } else { &self.anchor }.display()
            ),
        }
    }

    fn logs(&self) -> String {
        let read = |n: &str| fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("nsd:\n{}\nunbound:\n{}", read("nsd.log"), read("unbound.log"))
    }
}

/// The zone lines for mx1.remote.test at `ip`, with TLSA `tlsa` (if any) for `port`.
fn records(ip: &str, port: u16, tlsa: Option<&str>) -> Vec<String> {
    let mut r = vec!["@ IN MX 10 mx1.remote.test.".to_string(), format!("mx1 IN A {ip}")];
    if let Some(tlsa) = tlsa {
        r.push(format!("_{port}._tcp.mx1 IN TLSA {tlsa}"));
    }
    r
}

/// The MX host: a Tern presenting `cert_name`'s certificate and the CA's.
fn start_mx(ca: &Ca, ip: &str, port: u16, cert_name: &str) -> (Tern, PathBuf) {
    let (cert, key) = ca.issue(cert_name);
    let t = start_receiver(ip, port, &format!("\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display()));
    (t, cert)
}

/// The sending Tern, asking `dns` in `mode`; `outbound` adds `[outbound]` lines.
fn sender(dns: &SignedDns, mode: &str, port: u16, outbound: &str, before: impl FnOnce(&Tern)) -> Tern {
    let base = sender_base("");
    let mut t = sender_stopped(&SenderSetup { extra: &base, dns: None, peer_port: port, outbound });
    let text = fs::read_to_string(&t.config_path).expect("read config");
    let mut out = String::new();
    let mut section = String::new();
    for line in text.lines() {
        if line.starts_with('[') {
            section = line.trim().to_string();
        }
        if section == "[dns]" && line.starts_with("nameservers = ") {
            out.push_str(&dns.dns_config(mode));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    fs::write(&t.config_path, out).expect("write config");
    before(&t);
    t.start_again();
    t
}

#[track_caller]
fn wait_dane_deferral(a: &Tern) -> String {
    wait_queue(a, DELIVERY, "a 4.7.5 DANE deferral", |q| q.contains("4.7.5") && q.contains("DANE"))
}

/// Delivers one message through a DANE-verified connection and checks the logs.
fn matching_tlsa_delivers(mode: &str, ip: &str) {
    if !have_tools() {
        return;
    }
    let ca = Ca::new();
    let port = peer_port();
    let (mx, cert) = start_mx(&ca, ip, port, MX_HOST);
    let dns = SignedDns::start(&records(ip, port, Some(&tlsa_spki(3, &cert))), Sign::Good, mode == "trust-resolver");
    let a = sender(&dns, mode, port, "", |_| {});
    send_message(&a, SENDER, &[BOB], &test_message(&format!("dane {mode}"), BOB), &[]);
    let stored = mx.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY);
    assert_eq!(stored.len(), 1);
    wait_queue_empty(&a, DELIVERY);
    let logs = a.logs();
    assert!(logs.contains("DANE verified"), "{logs}\n{}", dns.logs());
    assert!(logs.contains("tls=dane/TLSv1.3"), "{logs}");
    let auth = format!("Authorization: Bearer {}", a.admin_token());
    let metrics = a.curl(&["-H", &auth, &format!("{}/metrics", a.admin_url())]);
    assert!(metrics.stdout.contains("tern_dane_results_total{result=\"verified\"} 1"), "{}", metrics.all());
}

#[test]
fn trust_resolver_with_a_matching_3_1_1_record_delivers() {
    matching_tlsa_delivers("trust-resolver", "127.0.0.71");
}

#[test]
fn validate_with_a_matching_3_1_1_record_delivers() {
    matching_tlsa_delivers("validate", "127.0.0.72");
}

/// The trust anchor given as the zone's DS record: its DNSKEY is fetched and trusted.
#[test]
fn validate_from_a_ds_trust_anchor_delivers() {
    matching_tlsa_delivers("validate-ds", "127.0.0.85");
}

/// A TLSA record for another key: the certificate does not match; 4.7.5, nothing sent.
fn mismatching_tlsa_defers(mode: &str, ip: &str) {
    if !have_tools() {
        return;
    }
    let ca = Ca::new();
    let port = peer_port();
    let (mx, _) = start_mx(&ca, ip, port, MX_HOST);
    let (other, _) = ca.issue("other.remote.test");
    let dns = SignedDns::start(&records(ip, port, Some(&tlsa_spki(3, &other))), Sign::Good, mode == "trust-resolver");
    let a = sender(&dns, mode, port, "", |_| {});
    send_message(&a, SENDER, &[BOB], &test_message("dane mismatch", BOB), &[]);
    let q = wait_dane_deferral(&a);
    assert!(q.contains("validation-failure"), "{q}");
    assert_eq!(mx.settled_count(REMOTE_DOMAIN, "bob"), 0, "delivered despite the TLSA mismatch");
    assert!(a.logs().contains("DANE failure"), "{}", a.logs());
}

#[test]
fn validate_with_a_mismatching_record_defers_with_4_7_5() {
    mismatching_tlsa_defers("validate", "127.0.0.73");
}

#[test]
fn trust_resolver_with_a_mismatching_record_defers_with_4_7_5() {
    mismatching_tlsa_defers("trust-resolver", "127.0.0.74");
}

/// No TLSA record, securely denied: opportunistic TLS, delivered, not by DANE.
fn denied_tlsa_falls_back(mode: &str, ip: &str) {
    if !have_tools() {
        return;
    }
    let ca = Ca::new();
    let port = peer_port();
    let (mx, _) = start_mx(&ca, ip, port, "other.remote.test");
    let dns = SignedDns::start(&records(ip, port, None), Sign::Good, mode == "trust-resolver");
    let a = sender(&dns, mode, port, "", |_| {});
    send_message(&a, SENDER, &[BOB], &test_message("dane none", BOB), &[]);
    assert_eq!(mx.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY).len(), 1);
    wait_queue_empty(&a, DELIVERY);
    let logs = a.logs();
    assert!(logs.contains("DANE: no usable TLSA records"), "{logs}\n{}", dns.logs());
    assert!(!logs.contains("tls=dane"), "{logs}");
}

#[test]
fn trust_resolver_without_tlsa_falls_back_to_opportunistic_tls() {
    denied_tlsa_falls_back("trust-resolver", "127.0.0.75");
}

#[test]
fn validate_without_tlsa_falls_back_to_opportunistic_tls() {
    denied_tlsa_falls_back("validate", "127.0.0.76");
}

/// The TLSA record was changed after signing: bogus, so the mail waits.
fn bogus_tlsa_defers(mode: &str, ip: &str) {
    if !have_tools() {
        return;
    }
    let ca = Ca::new();
    let port = peer_port();
    let (mx, cert) = start_mx(&ca, ip, port, MX_HOST);
    let dns =
        SignedDns::start(&records(ip, port, Some(&tlsa_spki(3, &cert))), Sign::TamperedTlsa, mode == "trust-resolver");
    let a = sender(&dns, mode, port, "", |_| {});
    send_message(&a, SENDER, &[BOB], &test_message("dane bogus", BOB), &[]);
    let q = wait_dane_deferral(&a);
    assert!(q.contains("TLSA lookup"), "{q}");
    assert_eq!(mx.settled_count(REMOTE_DOMAIN, "bob"), 0, "delivered despite a bogus TLSA answer");
}

#[test]
fn validate_with_a_bogus_tlsa_signature_defers() {
    bogus_tlsa_defers("validate", "127.0.0.77");
}

#[test]
fn trust_resolver_with_a_bogus_tlsa_signature_defers() {
    bogus_tlsa_defers("trust-resolver", "127.0.0.78");
}

/// DANE-TA: the record pins the test CA, which the server sends after its own
/// certificate for mx1.remote.test.
#[test]
fn dane_ta_2_1_1_with_the_test_ca_delivers() {
    if !have_tools() {
        return;
    }
    let ca = Ca::new();
    let (ip, port) = ("127.0.0.79", peer_port());
    let (mx, _) = start_mx(&ca, ip, port, MX_HOST);
    let dns = SignedDns::start(&records(ip, port, Some(&tlsa_spki(2, &ca.ca_file()))), Sign::Good, false);
    let a = sender(&dns, "validate", port, "", |_| {});
    send_message(&a, SENDER, &[BOB], &test_message("dane ta", BOB), &[]);
    assert_eq!(mx.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY).len(), 1);
    wait_queue_empty(&a, DELIVERY);
    assert!(a.logs().contains("DANE verified"), "{}", a.logs());
}

/// A DANE host that offers no STARTTLS gets nothing in plain text.
#[test]
fn a_dane_host_without_starttls_defers() {
    if !have_tools() || !python_has("json") {
        return;
    }
    let ca = Ca::new();
    let (ip, port) = ("127.0.0.80", peer_port());
    let (cert, _) = ca.issue(MX_HOST);
    let peer = FakePeer::start(ip, port, &json!({}));
    let dns = SignedDns::start(&records(ip, port, Some(&tlsa_spki(3, &cert))), Sign::Good, true);
    let a = sender(&dns, "trust-resolver", port, "", |_| {});
    send_message(&a, SENDER, &[BOB], &test_message("dane no starttls", BOB), &[]);
    let q = wait_dane_deferral(&a);
    assert!(q.contains("starttls-not-supported"), "{q}");
    assert!(peer.messages().is_empty(), "sent in plain text to a DANE host");
    assert!(!peer.commands().iter().any(|c| c.starts_with("MAIL")), "{:?}", peer.commands());
}

/// An MTA-STS policy (cached, enforcing, naming other MX hosts) that would stop this
/// delivery: with matching TLSA records DANE decides, and the mail goes.
#[test]
fn dane_takes_precedence_over_mta_sts() {
    if !have_tools() {
        return;
    }
    let ca = Ca::new();
    let (ip, port) = ("127.0.0.81", peer_port());
    let (mx, cert) = start_mx(&ca, ip, port, MX_HOST);
    let mut zone = records(ip, port, Some(&tlsa_spki(3, &cert)));
    zone.extend(sts_records("127.0.0.82"));
    let dns = SignedDns::start(&zone, Sign::Good, true);
    let a = sender(&dns, "trust-resolver", port, "mta_sts = true\n", write_sts_cache);
    send_message(&a, SENDER, &[BOB], &test_message("dane over sts", BOB), &[]);
    assert_eq!(mx.wait_mail_within(REMOTE_DOMAIN, "bob", 1, DELIVERY).len(), 1);
    wait_queue_empty(&a, DELIVERY);
    let logs = a.logs();
    assert!(logs.contains("DANE verified"), "{logs}");
    assert!(!logs.contains("MTA-STS policy"), "{logs}");
}

/// Without TLSA records the domain's MTA-STS policy applies: the cached enforcing
/// policy names other MX hosts, so the mail waits with MTA-STS's 4.7.5.
#[test]
fn without_tlsa_the_mta_sts_policy_applies() {
    if !have_tools() {
        return;
    }
    let ca = Ca::new();
    let (ip, port) = ("127.0.0.83", peer_port());
    let (mx, _) = start_mx(&ca, ip, port, MX_HOST);
    let mut zone = records(ip, port, None);
    zone.extend(sts_records("127.0.0.84"));
    let dns = SignedDns::start(&zone, Sign::Good, true);
    let a = sender(&dns, "trust-resolver", port, "mta_sts = true\n", write_sts_cache);
    send_message(&a, SENDER, &[BOB], &test_message("sts without dane", BOB), &[]);
    let q = wait_queue(&a, DELIVERY, "an MTA-STS deferral", |q| q.contains("MTA-STS policy of remote.test"));
    assert!(q.contains("4.7.5") && q.contains("no MX host matches"), "{q}");
    assert_eq!(mx.settled_count(REMOTE_DOMAIN, "bob"), 0, "delivered despite the MTA-STS policy");
}

/// `_mta-sts` with a new id, and a policy host where nothing listens: the cached
/// policy stays in force (RFC 8461 §5.1).
fn sts_records(sts_ip: &str) -> Vec<String> {
    vec!["_mta-sts IN TXT \"v=STSv1; id=two;\"".to_string(), format!("mta-sts IN A {sts_ip}")]
}

fn write_sts_cache(t: &Tern) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let policy = "version: STSv1\r\nmode: enforce\r\nmx: *.elsewhere.test\r\nmax_age: 86400\r\n";
    let dir = t.data_dir.join("mta-sts");
    fs::create_dir_all(&dir).expect("mkdir");
    let entry = json!({"id": "one", "policy": policy, "fetched_at": now, "expires": now + 86400});
    fs::write(dir.join("remote.test.json"), entry.to_string()).expect("write cache");
}

/// `trust-resolver` believes the AD bit: a nameserver off this machine is refused.
#[test]
fn trust_resolver_refuses_a_nameserver_off_loopback() {
    let t = Tern::new_stopped("", &[]);
    let text = fs::read_to_string(&t.config_path).expect("config");
    let text = text.replace("[dns]\n", "[dns]\ndnssec = \"trust-resolver\"\n");
    let text: String = text
        .lines()
        .map(|l| if l.starts_with("nameservers = ") { "nameservers = [\"192.0.2.53:53\"]" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(&t.config_path, text).expect("write config");
    let out = t.tern_cmd(&["config", "check"]);
    assert!(!out.success(), "{}", out.all());
    assert!(out.all().contains("192.0.2.53:53 is not on loopback"), "{}", out.all());
}
