//! Publishing Tern's own MTA-STS policy (`[mta_sts]`, RFC 8461 §3.2): the HTTPS
//! listener serves it for `mta-sts.<domain>` of each local domain (curl with
//! `--resolve`), 404 for other hosts and paths; the HTTP listener serves only ACME
//! tokens; `tern dns check` prints the TXT records to publish.

mod common;

use common::outbound::{DnsServer, SenderSetup, sender_stopped};
use common::pki::TestCa;
use common::*;

const POLICY: &str = "/.well-known/mta-sts.txt";

struct Web {
    tern: Tern,
    https: u16,
    http: u16,
    ca: TestCa,
}

/// Tern with HTTPS and HTTP listeners, local domains a.test and b.test, a
/// certificate for their policy hosts from a test CA, and `sts` as `[mta_sts]`.
fn start(sts: &str) -> Option<Web> {
    for prog in ["curl", "openssl"] {
        if !have_program(prog) {
            eprintln!("SKIPPED: {prog} is not installed");
            return None;
        }
    }
    let ca = TestCa::new("Tern MTA-STS publish CA");
    let (cert, key) = ca.issue("policy", &["DNS:mta-sts.a.test", "DNS:mta-sts.b.test", "DNS:mta-sts.other.test"]);
    let (https, http) = (free_port(), free_port());
    let tern = Tern::start(&format!(
        "[[listen]]\naddr = \"127.0.0.1:{https}\"\nmode = \"https\"\n\n[[listen]]\naddr = \"127.0.0.1:{http}\"\nmode = \"http\"\n\n\
         [local]\ndomains = [\"a.test\", \"b.test\"]\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n{sts}\n",
        cert.display(),
        key.display()
    ));
    Some(Web { tern, https, http, ca })
}

impl Web {
    /// GET `https://HOST:PORT/PATH` trusting the test CA: (status, headers and body).
    fn get(&self, host: &str, path: &str) -> (String, String) {
        let resolve = format!("{host}:{}:127.0.0.1", self.https);
        let url = format!("https://{host}:{}{path}", self.https);
        let ca = self.ca.ca_file();
        let out = self.tern.curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            "-i",
            "-w",
            "\n%{http_code}",
            &url,
        ]);
        out.assert_success(&format!("curl {url}"));
        let (text, code) = out.stdout.trim_end().rsplit_once('\n').expect("status code line");
        (code.to_string(), text.to_string())
    }
}

#[test]
fn the_policy_is_served_for_each_local_domain_and_nothing_else() {
    let Some(w) = start("[mta_sts]\nmode = \"enforce\"\nmax_age = \"7d\"\nmx = [\"mx1.a.test\", \"*.mx.a.test\"]\n")
    else {
        return;
    };
    let expected = "version: STSv1\r\nmode: enforce\r\nmx: mx1.a.test\r\nmx: *.mx.a.test\r\nmax_age: 604800\r\n";
    for host in ["mta-sts.a.test", "mta-sts.b.test"] {
        let (code, text) = w.get(host, POLICY);
        assert_eq!(code, "200", "{text}");
        assert!(text.ends_with(&format!("\r\n\r\n{expected}")), "{text:?}");
        assert!(text.to_ascii_lowercase().contains("content-type: text/plain\r\n"), "{text}");
    }
    // Another host (not a local domain) and other paths: 404.
    assert_eq!(w.get("mta-sts.other.test", POLICY).0, "404");
    assert_eq!(w.get("mta-sts.a.test", "/").0, "404");
    assert_eq!(w.get("mta-sts.a.test", "/.well-known/mta-sts.txt.bak").0, "404");
    // Plain HTTP serves no policy, and no token that was not handed out.
    for path in [POLICY, "/.well-known/acme-challenge/unknown-token"] {
        let out =
            w.tern.curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{}{path}", w.http)]);
        assert_eq!(out.stdout.trim(), "404", "{path}");
    }
    // Anything but GET or HEAD: 405.
    let resolve = format!("mta-sts.a.test:{}:127.0.0.1", w.https);
    let ca = w.ca.ca_file();
    let url = format!("https://mta-sts.a.test:{}{POLICY}", w.https);
    let out = w.tern.curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-X",
        "POST",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ]);
    assert_eq!(out.stdout.trim(), "405");
    // SMTP still works beside them.
    assert!(w.tern.raw().ehlo().has("250"));
}

#[test]
fn mode_none_is_published_and_dns_check_prints_the_records() {
    let Some(w) = start("[mta_sts]\nmode = \"none\"\n") else { return };
    let (code, text) = w.get("mta-sts.a.test", POLICY);
    assert_eq!(code, "200");
    assert!(text.ends_with("\r\n\r\nversion: STSv1\r\nmode: none\r\nmx: tern.test\r\nmax_age: 604800\r\n"), "{text:?}");
    // `tern dns check` asks the test DNS server (an empty zone answers at once).
    let dns = DnsServer::start(&serde_json::json!({}));
    let extra = "\n[local]\ndomains = [\"a.test\"]\n\n[mta_sts]\nmode = \"none\"\n";
    let checker = sender_stopped(&SenderSetup { extra, dns: Some(&dns), peer_port: free_port(), outbound: "" });
    let out = checker.tern_cmd(&["dns", "check", "a.test"]);
    let printed = out.stdout.clone();
    let id = printed
        .lines()
        .find_map(|l| l.strip_prefix("publish: _mta-sts.a.test. TXT \"v=STSv1; id="))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no _mta-sts record in\n{}", out.all()));
    assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert!(
        printed.contains("publish: _smtp._tls.a.test. TXT \"v=TLSRPTv1; rua=mailto:postmaster@a.test\""),
        "{printed}"
    );
}

#[test]
fn without_mta_sts_every_policy_request_is_404() {
    let Some(w) = start("") else { return };
    assert_eq!(w.get("mta-sts.a.test", POLICY).0, "404");
}
