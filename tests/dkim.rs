//! DKIM end to end: Tern signs what its users and relay clients send, and
//! checks DKIM, ARC, SPF and DMARC on what strangers send it; dkimpy checks
//! Tern's signatures and makes the signatures and ARC sets Tern checks.
//!
//! Keys come from `tern dkim keygen`; the records it prints are served by
//! the test DNS server. A signing Tern ("A") relays `b.test` through
//! `[relay.routes]` either to a second Tern ("B", which treats loopback
//! clients as strangers) or to a fake SMTP server that keeps the messages
//! exactly as they arrived. Everything stays on loopback.

mod common;

use common::auth_results::*;
use common::outbound::*;
use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The signing domain.
const SIGNER: &str = "a.test";
const ALICE: &str = "alice@a.test";
/// The domain of the receiving Tern.
const RECEIVER: &str = "b.test";
const BOB: &str = "bob@b.test";
/// A domain with an SPF record but no key and no DMARC record.
const OTHER: &str = "other.test";
/// Lets every loopback client send for a domain.
const SPF_LOOPBACK: &str = "v=spf1 ip4:127.0.0.0/8 -all";
const DMARC_REJECT: &str = "v=DMARC1; p=reject";

/// Long enough for a few one-second retries and a Tern start-up.
const DELIVERY: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Keys.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rsa,
    Ed25519,
}

impl Alg {
    /// `tern dkim keygen --algorithm` and the record's `k=` tag.
    fn short(self) -> &'static str {
        match self {
            Alg::Rsa => "rsa",
            Alg::Ed25519 => "ed25519",
        }
    }

    /// The config's `algorithm` and the signature's `a=` tag.
    fn name(self) -> &'static str {
        match self {
            Alg::Rsa => "rsa-sha256",
            Alg::Ed25519 => "ed25519-sha256",
        }
    }
}

/// A key made by `tern dkim keygen`, with the TXT record it printed.
struct Key {
    /// The stopped Tern whose config `keygen` ran with; owns the key file.
    _home: Tern,
    domain: String,
    selector: String,
    alg: Alg,
    path: PathBuf,
    record: String,
}

/// The strings between double quotes in `text`, in order (backslash escapes undone).
fn quoted_strings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut s = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => s.extend(chars.next()),
                c => s.push(c),
            }
        }
        out.push(s);
    }
    out
}

/// Runs `tern dkim keygen DOMAIN --selector S --algorithm A --out FILE` and
/// checks the key file and the printed zone-file line.
#[track_caller]
fn keygen(domain: &str, selector: &str, alg: Alg) -> Key {
    let home = Tern::new_stopped("", &[]);
    let path = home.path().join(format!("{selector}.{domain}.pem"));
    let path_arg = path.display().to_string();
    let out = home.tern_cmd(&[
        "dkim",
        "keygen",
        domain,
        "--selector",
        selector,
        "--algorithm",
        alg.short(),
        "--out",
        &path_arg,
    ]);
    out.assert_success("tern dkim keygen");
    let line = out.stdout.trim();
    assert_eq!(line.lines().count(), 1, "one zone-file line expected on stdout: {:?}", out.stdout);
    let owner = format!("{selector}._domainkey.{domain}.");
    assert!(line.starts_with(&owner), "the record line does not start with {owner}: {line:?}");
    assert!(line.contains(" IN TXT "), "not a TXT record line: {line:?}");
    let record = quoted_strings(line).concat();
    let prefix = format!("v=DKIM1; k={}; p=", alg.short());
    assert!(record.starts_with(&prefix), "record {record:?} does not start with {prefix:?} (line {line:?})");
    let pem = fs::read_to_string(&path).unwrap_or_else(|e| panic!("key file {}: {e}", path.display()));
    assert!(pem.starts_with("-----BEGIN ") && pem.contains("PRIVATE KEY-----"), "not a PEM private key:\n{pem}");
    let mode = fs::metadata(&path).expect("key file metadata").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode {mode:o}");
    Key { _home: home, domain: domain.into(), selector: selector.into(), alg, path, record }
}

/// Runs `openssl ARGS` in `dir`.
#[track_caller]
fn openssl(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("openssl");
    cmd.args(args).current_dir(dir);
    run(cmd, CLIENT_TIMEOUT).assert_success(&format!("openssl {}", args.join(" ")));
}

/// A key made by OpenSSL rather than Tern: RSA as PKCS#1 (`BEGIN RSA
/// PRIVATE KEY`), Ed25519 as PKCS#8; the record is made from the public key
/// OpenSSL derives.
#[track_caller]
fn openssl_key(domain: &str, selector: &str, alg: Alg) -> Key {
    let home = Tern::new_stopped("", &[]);
    let dir = home.path();
    let algorithm: &[&str] = match alg {
        Alg::Rsa => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        Alg::Ed25519 => &["-algorithm", "ED25519"],
    };
    openssl(dir, &[&["genpkey"], algorithm, &["-out", "pkcs8.pem"]].concat());
    let path = dir.join(format!("{selector}.{domain}.pem"));
    let path_arg = path.display().to_string();
    match alg {
        Alg::Rsa => {
            openssl(dir, &["pkey", "-in", "pkcs8.pem", "-traditional", "-out", &path_arg]);
            let pem = fs::read_to_string(&path).expect("read the PKCS#1 key");
            assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "not PKCS#1:\n{pem}");
        }
        Alg::Ed25519 => {
            fs::copy(dir.join("pkcs8.pem"), &path).expect("copy the key");
        }
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    openssl(dir, &["pkey", "-in", &path_arg, "-pubout", "-outform", "DER", "-out", "public.der"]);
    let spki = fs::read(dir.join("public.der")).expect("read the public key");
    // RSA publishes the SubjectPublicKeyInfo, Ed25519 the bare 32 bytes (RFC 8463 §4.2).
    let public = match alg {
        Alg::Rsa => &spki[..],
        Alg::Ed25519 => &spki[spki.len() - 32..],
    };
    let record = format!("v=DKIM1; k={}; p={}", alg.short(), common::security::b64(public));
    Key { _home: home, domain: domain.into(), selector: selector.into(), alg, path, record }
}

impl Key {
    /// The `[[dkim]]` table for this key.
    fn config(&self) -> String {
        format!(
            "\n[[dkim]]\ndomain = \"{}\"\nselector = \"{}\"\nkey = \"{}\"\nalgorithm = \"{}\"\n",
            self.domain,
            self.selector,
            self.path.display(),
            self.alg.name()
        )
    }

    /// Where the record is published, with the final dot.
    fn dns_name(&self) -> String {
        format!("{}._domainkey.{}.", self.selector, self.domain)
    }

    /// `name=record`, as the dkimpy scripts below take it.
    fn dkimpy_arg(&self) -> String {
        format!("{}={}", self.dns_name(), self.record)
    }

    fn path_arg(&self) -> String {
        self.path.display().to_string()
    }
}

/// A zone with SPF records letting loopback send for `a.test`, `other.test`
/// and `extra_spf`, the keys' records, and `_dmarc.a.test` if `dmarc` is given.
fn zone(keys: &[&Key], dmarc: Option<&str>, extra_spf: &[&str]) -> serde_json::Value {
    let mut zone = serde_json::Map::new();
    for domain in [SIGNER, OTHER].iter().chain(extra_spf) {
        zone.insert(format!("{domain}."), json!([["TXT", SPF_LOOPBACK]]));
    }
    for key in keys {
        zone.insert(key.dns_name(), json!([["TXT", key.record]]));
    }
    if let Some(policy) = dmarc {
        zone.insert(format!("_dmarc.{SIGNER}."), json!([["TXT", policy]]));
    }
    serde_json::Value::Object(zone)
}

// ---------------------------------------------------------------------------
// Servers.

/// Tern B: the final destination of `b.test` (any local part), treating
/// loopback clients as strangers, asking `dns`. `extra` is added to the config.
fn receiver(dns: &DnsServer, extra: &str) -> Tern {
    let config = format!("\n[local]\ndomains = [\"{RECEIVER}\"]\naccept_unknown = true\n{NO_RELAY}\n{extra}\n");
    let mut t = sender_stopped(&SenderSetup { extra: &config, dns: Some(dns), peer_port: free_port(), outbound: "" });
    t.start_again();
    t
}

/// Tern A: signs with `keys`, relays `b.test` to 127.0.0.1:`route_port`;
/// loopback clients may relay (the default networks).
fn signer(keys: &[&Key], route_port: u16) -> Tern {
    let keys: String = keys.iter().map(|k| k.config()).collect();
    Tern::start(&format!(
        "{LOCAL_OPEN}\n[queue]\nretry = [\"1s\"]\n\n[relay.routes]\n\"{RECEIVER}\" = \"127.0.0.1:{route_port}\"\n{keys}"
    ))
}

/// A signing Tern relaying `b.test` to a fake SMTP server that keeps every
/// message exactly as Tern sent it.
struct Capture {
    a: Tern,
    peer: FakePeer,
}

impl Capture {
    fn start(keys: &[&Key]) -> Capture {
        let port = free_port();
        let peer = FakePeer::start("127.0.0.1", port, &json!({}));
        let a = signer(keys, port);
        Capture { a, peer }
    }

    /// Sends `msg` through A and returns it as the fake server received it.
    #[track_caller]
    fn relay(&self, sender: &str, msg: &[u8]) -> Vec<u8> {
        let before = self.peer.messages().len();
        send_message(&self.a, sender, &[BOB], msg, &[]);
        let mut got = wait_for(
            DELIVERY,
            "the relayed message at the fake server",
            || {
                let m = self.peer.messages();
                (m.len() > before).then_some(m)
            },
            || format!("{}\n{}", self.peer.logs(), self.a.logs()),
        );
        let relayed = got.swap_remove(before);
        assert!(relayed.ends_with(msg), "the message changed on the way:\n{}", show(&relayed));
        relayed
    }
}

/// One SMTP transaction on `t` from 127.0.0.1; returns the reply to the
/// end of the message.
#[track_caller]
fn submit(t: &Tern, sender: &str, rcpt: &str, msg: &[u8]) -> Reply {
    let mut s = t.raw();
    s.ehlo();
    let r = s.cmd(&format!("MAIL FROM:<{sender}>"));
    assert_eq!(r.code, 250, "MAIL FROM:<{sender}>: {r:?}");
    let r = s.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert_eq!(r.code, 250, "RCPT TO:<{rcpt}>: {r:?}");
    let r = s.cmd("DATA");
    assert_eq!(r.code, 354, "DATA: {r:?}");
    s.send(&tern::delivery::remote::dot_stuff(msg)).expect("send the message");
    let r = s.try_reply(Duration::from_secs(30)).unwrap_or_else(|| panic!("no reply to the final dot\n{}", t.logs()));
    let _ = s.send(b"QUIT\r\n");
    r
}

/// Submits `msg` to B as a stranger and returns it as delivered to `rcpt`.
#[track_caller]
fn deliver(b: &Tern, sender: &str, rcpt: &str, msg: &[u8]) -> Vec<u8> {
    let r = submit(b, sender, rcpt, msg);
    assert_eq!(r.code, 250, "end of data from {sender} to {rcpt}: {r:?}\n{}", b.logs());
    let (user, domain) = rcpt.split_once('@').expect("an address");
    let stored = b.wait_one(domain, user);
    assert_delivered(&stored, sender, msg);
    stored
}

// ---------------------------------------------------------------------------
// Messages and header fields.

/// A message from alice@a.test to bob@b.test with the usual header fields,
/// a folded one, a line starting with a dot and trailing empty lines.
fn message(subject: &str) -> Vec<u8> {
    message_from(&format!("Alice <{ALICE}>"), subject)
}

fn message_from(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: Bob <{BOB}>\r\nSubject: {subject}\r\n\tfolded  with   spaces\r\n\
         Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{id}@a.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n\
         Hello Bob,\r\n\r\nthis   line has  runs of spaces \r\n.a line starting with a dot\r\nBye.\r\n\r\n\r\n",
        id = subject.replace(' ', "-")
    )
    .into_bytes()
}

/// `msg` with its body changed after the first occurrence of `Hello Bob`.
#[track_caller]
fn tamper_body(msg: &[u8]) -> Vec<u8> {
    replace_after(msg, b"\r\n\r\n", b"Hello Bob", b"Hello Eve")
}

/// `msg` with the first `old` after the first `anchor` replaced by `new`.
#[track_caller]
fn replace_after(msg: &[u8], anchor: &[u8], old: &[u8], new: &[u8]) -> Vec<u8> {
    let start =
        find(msg, anchor).unwrap_or_else(|| panic!("no {:?} in\n{}", String::from_utf8_lossy(anchor), show(msg)));
    let at = start
        + find(&msg[start..], old).unwrap_or_else(|| panic!("no {:?} in\n{}", String::from_utf8_lossy(old), show(msg)));
    [&msg[..at], new, &msg[at + old.len()..]].concat()
}

/// The unfolded values of the header fields called `name`, white space collapsed.
fn values(msg: &[u8], name: &str) -> Vec<String> {
    fields_named(msg, name).iter().map(|v| collapse(v)).collect()
}

/// The tags of a DKIM-Signature (or ARC) value, with all white space
/// removed from the values.
fn tags(value: &str) -> BTreeMap<String, String> {
    value
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.split_whitespace().collect()))
        .collect()
}

/// The one DKIM-Signature of `msg`, as tags.
#[track_caller]
fn signature(msg: &[u8]) -> BTreeMap<String, String> {
    let sigs = values(msg, "DKIM-Signature");
    assert_eq!(sigs.len(), 1, "expected one DKIM-Signature:\n{}", show(msg));
    tags(&sigs[0])
}

/// Tern's verdict for `method` (which must appear once), e.g. `pass`.
#[track_caller]
fn verdict(msg: &[u8], method: &str) -> String {
    tern_ar(msg).result(method)
}

/// Tern's DKIM results as (result, header.d, header.s), sorted.
#[track_caller]
fn dkim_results(msg: &[u8]) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = tern_ar(msg)
        .parts
        .iter()
        .filter(|p| p.method == "dkim")
        .map(|p| {
            let prop = |k: &str| p.prop(k).unwrap_or_default();
            (p.result.clone(), prop("header.d"), prop("header.s"))
        })
        .collect();
    out.sort();
    out
}

fn triple(result: &str, d: &str, s: &str) -> (String, String, String) {
    (result.into(), d.into(), s.into())
}

/// Asserts Tern's SPF, DKIM, ARC and DMARC verdicts on a delivered message.
#[track_caller]
fn assert_results(msg: &[u8], spf: &str, dkim: &[(&str, &str, &str)], arc: &str, dmarc: &str) {
    let mut want: Vec<_> = dkim.iter().map(|(r, d, s)| triple(r, d, s)).collect();
    want.sort();
    let header = values(msg, "Authentication-Results").join("\n");
    assert_eq!(dkim_results(msg), want, "dkim results in:\n{header}");
    assert_eq!(verdict(msg, "spf"), spf, "spf result in:\n{header}");
    assert_eq!(verdict(msg, "arc"), arc, "arc result in:\n{header}");
    assert_eq!(verdict(msg, "dmarc"), dmarc, "dmarc result in:\n{header}");
}

// ---------------------------------------------------------------------------
// dkimpy.

/// Python 3 running `script` with `args`.
fn python(script: &str, args: &[&str]) -> Out {
    let mut cmd = Command::new("python3");
    cmd.arg("-").args(args).env("PYTHONIOENCODING", "utf-8");
    run_with_input(cmd, Some(script.as_bytes()), CLIENT_TIMEOUT)
}

#[track_caller]
fn require_dkimpy() {
    assert!(
        python_has("dkim") && python_has("nacl") && python_has("authres"),
        "dkimpy, pynacl and authres are missing (scripts/test installs them with pip)"
    );
}

/// Shared by the scripts: `RECORDS` from `name=record` arguments and a
/// `dnsfunc` answering from them only (no network).
const PY_DKIM: &str = r#"
import base64, logging, sys
import dkim
logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
LOG = logging.getLogger("dkimpy")
RECORDS = {}
def records(args):
    for arg in args:
        name, _, value = arg.partition("=")
        RECORDS[name.lower().rstrip(".")] = value.encode()
def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    return RECORDS.get(name.lower().rstrip("."))
"#;

/// `verify.py MESSAGE NAME=RECORD...`: prints `pass` or `fail` (first signature).
const PY_VERIFY: &str = r#"
records(sys.argv[2:])
msg = open(sys.argv[1], "rb").read()
print("pass" if dkim.verify(msg, logger=LOG, dnsfunc=dnsfunc) else "fail")
"#;

/// `sign.py IN OUT KEYFILE rsa|ed25519 SELECTOR DOMAIN CANON NAME=RECORD`:
/// prepends a DKIM-Signature by dkimpy, after checking that dkimpy
/// verifies it itself. An Ed25519 key is given to dkimpy as its base64
/// 32-byte seed, taken from the PKCS#8 DER (the OCTET STRING in the
/// privateKey OCTET STRING: 04 22 04 20 <seed>).
const PY_SIGN: &str = r#"
src, out, key_file, alg, selector, domain, canon = sys.argv[1:8]
records(sys.argv[8:])
msg = open(src, "rb").read()
pem = open(key_file, "rb").read()
if alg == "ed25519":
    der = base64.b64decode(b"".join(l for l in pem.splitlines() if not l.startswith(b"-----")))
    at = der.find(b"\x04\x22\x04\x20")
    if at < 0:
        raise SystemExit("no Ed25519 seed in the PKCS#8 key")
    key = base64.b64encode(der[at + 4:at + 36])
    algorithm = b"ed25519-sha256"
else:
    key = pem
    algorithm = b"rsa-sha256"
header, body = canon.encode().split(b"/")
sig = dkim.sign(msg, selector.encode(), domain.encode(), key, canonicalize=(header, body),
                signature_algorithm=algorithm, logger=LOG)
signed = sig + msg
d = dkim.DKIM(signed, logger=LOG)
if not d.verify(dnsfunc=dnsfunc):
    raise SystemExit("dkimpy does not verify its own signature")
open(out, "wb").write(signed)
print(sig.decode())
"#;

/// `arc.py IN OUT KEYFILE SELECTOR DOMAIN SRV_ID NAME=RECORD`: prepends an
/// ARC set sealed by dkimpy, after checking that dkimpy validates the chain.
const PY_ARC: &str = r#"
src, out, key_file, selector, domain, srv_id = sys.argv[1:7]
records(sys.argv[7:])
msg = open(src, "rb").read()
arc = dkim.arc_sign(msg, selector.encode(), domain.encode(), open(key_file, "rb").read(), srv_id.encode(),
                    logger=LOG)
if not arc:
    raise SystemExit("dkimpy made no ARC set")
sealed = b"".join(arc) + msg
cv, results, reason = dkim.arc_verify(sealed, logger=LOG, dnsfunc=dnsfunc)
if cv != dkim.CV_Pass:
    raise SystemExit("dkimpy does not validate its own ARC set: %r %r %r" % (cv, results, reason))
open(out, "wb").write(sealed)
print(b"".join(arc).decode())
"#;

/// Writes `msg` to a scratch file of `dir`; returns the path.
fn scratch(dir: &Path, name: &str, msg: &[u8]) -> String {
    let p = dir.join(name);
    fs::write(&p, msg).expect("write scratch file");
    p.display().to_string()
}

/// dkimpy's verdict (`pass` or `fail`) on the first signature of `msg`.
#[track_caller]
fn dkimpy_verify(dir: &Path, msg: &[u8], key: &Key) -> String {
    let file = scratch(dir, "to-verify.eml", msg);
    let out = python(&format!("{PY_DKIM}\n{PY_VERIFY}"), &[&file, &key.dkimpy_arg()]);
    out.assert_success("dkimpy verify");
    out.stdout.trim().to_string()
}

/// `msg` signed by dkimpy with `key` (canonicalization `canon`).
#[track_caller]
fn dkimpy_sign(dir: &Path, msg: &[u8], key: &Key, canon: &str) -> Vec<u8> {
    let src = scratch(dir, "to-sign.eml", msg);
    let dst = dir.join("signed.eml");
    let dst_arg = dst.display().to_string();
    let out = python(
        &format!("{PY_DKIM}\n{PY_SIGN}"),
        &[&src, &dst_arg, &key.path_arg(), key.alg.short(), &key.selector, &key.domain, canon, &key.dkimpy_arg()],
    );
    out.assert_success("dkimpy sign");
    fs::read(&dst).expect("read the signed message")
}

/// `msg` with an ARC set sealed by dkimpy as `key.domain` (authserv-id the same).
#[track_caller]
fn dkimpy_seal(dir: &Path, msg: &[u8], key: &Key) -> Vec<u8> {
    let src = scratch(dir, "to-seal.eml", msg);
    let dst = dir.join("sealed.eml");
    let dst_arg = dst.display().to_string();
    let out = python(
        &format!("{PY_DKIM}\n{PY_ARC}"),
        &[&src, &dst_arg, &key.path_arg(), &key.selector, &key.domain, &key.domain, &key.dkimpy_arg()],
    );
    out.assert_success("dkimpy arc_sign");
    fs::read(&dst).expect("read the sealed message")
}

// ---------------------------------------------------------------------------
// Tern signs, the next Tern verifies.

/// A signs with a key of `alg`, relays to B; B finds the signature valid
/// and DMARC (p=reject) passing.
fn relay_signed_and_verify(alg: Alg) {
    let key = keygen(SIGNER, "s1", alg);
    let dns = DnsServer::start(&zone(&[&key], Some(DMARC_REJECT), &[]));
    let b = receiver(&dns, "");
    let a = signer(&[&key], b.port);
    let msg = message(&format!("signed with {}", alg.short()));
    send_message(&a, ALICE, &[BOB], &msg, &[]);
    let stored = b.wait_mail_within(RECEIVER, "bob", 1, DELIVERY);
    assert_eq!(stored.len(), 1);
    let stored = &stored[0];
    assert_delivered(stored, ALICE, &msg);
    let sig = signature(stored);
    assert_eq!(sig.get("a").map(String::as_str), Some(alg.name()), "{sig:?}");
    assert_results(stored, "pass", &[("pass", SIGNER, "s1")], "none", "pass");
    wait_queue_empty(&a, DELIVERY);
}

#[test]
fn relayed_mail_signed_with_rsa_passes_dkim_and_dmarc_at_the_next_tern() {
    relay_signed_and_verify(Alg::Rsa);
}

#[test]
fn relayed_mail_signed_with_ed25519_passes_dkim_and_dmarc_at_the_next_tern() {
    relay_signed_and_verify(Alg::Ed25519);
}

#[test]
fn message_changed_after_signing_fails_dkim_and_is_refused_under_dmarc_reject() {
    let key = keygen(SIGNER, "s1", Alg::Rsa);
    let cap = Capture::start(&[&key]);
    let signed = cap.relay(ALICE, &message("tampered"));
    let tampered = tamper_body(&signed);
    let dns = DnsServer::start(&zone(&[&key], Some(DMARC_REJECT), &[]));
    let b = receiver(&dns, "");

    // Intact, with an envelope sender of another domain: DMARC passes
    // through the aligned DKIM signature alone.
    let intact = deliver(&b, "bounce@other.test", "bob@b.test", &signed);
    assert_results(&intact, "pass", &[("pass", SIGNER, "s1")], "none", "pass");

    // Changed, with an aligned envelope sender: DKIM fails, SPF carries DMARC.
    let changed = deliver(&b, ALICE, "carol@b.test", &tampered);
    assert_results(&changed, "pass", &[("fail", SIGNER, "s1")], "none", "pass");

    // A signed header field changed: the signature itself no longer verifies.
    let resubjected = replace_after(&signed, b"\r\nSubject: ", b"tampered", b"tamperEd");
    let changed = deliver(&b, ALICE, "erin@b.test", &resubjected);
    assert_results(&changed, "pass", &[("fail", SIGNER, "s1")], "none", "pass");

    // Changed, with nothing aligned: DMARC fails and p=reject refuses it.
    let r = submit(&b, "bounce@other.test", "dave@b.test", &tampered);
    assert_eq!(r.code, 550, "a DMARC p=reject failure: {r:?}\n{}", b.logs());
    assert!(r.has("5.7.1"), "{r:?}");
    assert_eq!(b.settled_count(RECEIVER, "dave"), 0, "the refused message was delivered");
}

// ---------------------------------------------------------------------------
// What Tern signs.

#[test]
fn signature_covers_the_expected_header_fields() {
    let key = keygen(SIGNER, "s1", Alg::Rsa);
    let cap = Capture::start(&[&key]);
    // The envelope sender's domain has no key: the From: header decides.
    let relayed = cap.relay("bounce@other.test", &message("header set"));
    let sig = signature(&relayed);
    let get = |t: &str| sig.get(t).map(String::as_str);
    assert_eq!(get("v"), Some("1"), "{sig:?}");
    assert_eq!(get("a"), Some("rsa-sha256"), "{sig:?}");
    assert_eq!(get("c"), Some("relaxed/relaxed"), "{sig:?}");
    assert_eq!(get("d"), Some(SIGNER), "{sig:?}");
    assert_eq!(get("s"), Some("s1"), "{sig:?}");
    assert!(get("bh").is_some_and(|v| !v.is_empty()), "{sig:?}");
    assert!(get("b").is_some_and(|v| !v.is_empty()), "{sig:?}");
    assert_eq!(get("l"), None, "no body length limit expected: {sig:?}");
    let h: Vec<String> = get("h").unwrap_or_default().split(':').map(|n| n.trim().to_ascii_lowercase()).collect();
    assert_eq!(h.iter().filter(|n| *n == "from").count(), 2, "From: is not oversigned: h={h:?}");
    for name in ["subject", "date", "to", "message-id"] {
        assert!(h.iter().any(|n| n == name), "{name} not signed: h={h:?}");
    }
    for name in ["dkim-signature", "received", "return-path"] {
        assert!(!h.iter().any(|n| n == name), "{name} must not be signed: h={h:?}");
    }
    assert_eq!(dkimpy_verify(cap.a.path(), &relayed, &key), "pass", "dkimpy on:\n{}", show(&relayed));
}

#[test]
fn large_mail_is_signed_as_it_arrives() {
    require_dkimpy();
    let key = keygen(SIGNER, "s1", Alg::Ed25519);
    let cap = Capture::start(&[&key]);
    // About 3 MiB, far past what Tern keeps in memory, with what relaxed body
    // canonicalization changes (runs of spaces, trailing blanks, empty lines at the end).
    let mut msg = message("large");
    msg.truncate(msg.len() - 4);
    for i in 0..40_000 {
        msg.extend_from_slice(format!("line {i}  with   runs of\tspaces and a trailing blank \t\r\n").as_bytes());
    }
    msg.extend_from_slice(b"\r\n\r\n\r\n");
    let relayed = cap.relay(ALICE, &msg);
    assert_eq!(signature(&relayed).get("d").map(String::as_str), Some(SIGNER));
    assert_eq!(dkimpy_verify(cap.a.path(), &relayed, &key), "pass");
}

#[test]
fn mail_whose_from_domain_has_no_key_is_not_signed() {
    let key = keygen(SIGNER, "s1", Alg::Rsa);
    let cap = Capture::start(&[&key]);
    // The envelope sender's domain has a key, the From: header's has not.
    let relayed = cap.relay(ALICE, &message_from("Carol <carol@other.test>", "no key"));
    assert!(values(&relayed, "DKIM-Signature").is_empty(), "signed for other.test:\n{}", show(&relayed));
}

#[test]
fn mail_from_a_stranger_is_checked_and_not_signed() {
    let key = keygen(SIGNER, "s1", Alg::Rsa);
    let dns = DnsServer::start(&zone(&[&key], None, &[]));
    // B holds a key for a.test, but the client is a stranger.
    let b = receiver(&dns, &key.config());
    let msg = message("from a stranger");
    let stored = deliver(&b, ALICE, BOB, &msg);
    assert!(values(&stored, "DKIM-Signature").is_empty(), "a stranger's mail was signed:\n{}", show(&stored));
    assert_results(&stored, "pass", &[("none", "", "")], "none", "none");
}

#[test]
fn results_forged_in_terns_name_are_not_kept() {
    let dns = DnsServer::start(&zone(&[], None, &[]));
    let b = receiver(&dns, "");
    let msg = message("forged results");
    let forged = [
        format!("Authentication-Results: {HOSTNAME}; dkim=pass header.d={SIGNER} header.s=s1; dmarc=pass\r\n")
            .as_bytes(),
        &msg[..],
    ]
    .concat();
    let r = submit(&b, ALICE, BOB, &forged);
    assert_eq!(r.code, 250, "{r:?}\n{}", b.logs());
    let stored = b.wait_one(RECEIVER, "bob");
    let (_, body) = split_message(&msg);
    assert!(stored.ends_with(body), "the body changed:\n{}", show(&stored));
    // Only Tern's own results remain under its name.
    assert_results(&stored, "pass", &[("none", "", "")], "none", "none");
}

#[test]
fn mail_from_an_authenticated_user_is_signed() {
    let msg = common::security::message("authenticated-signed", common::security::BOB);
    submitted_and_signed(&msg);
}

#[test]
fn headers_added_to_submitted_mail_are_signed_too() {
    // Without Date and Message-ID Tern adds both (RFC 6409 §8.2, §8.3) before signing.
    let full = common::security::message("added-and-signed", common::security::BOB);
    let text = String::from_utf8(full).expect("ASCII message");
    let bare: String =
        text.split_inclusive("\r\n").filter(|l| !l.starts_with("Date:") && !l.starts_with("Message-ID:")).collect();
    let stored = submitted_and_signed(bare.as_bytes());
    assert_eq!(values(&stored, "Date").len(), 1, "{}", show(&stored));
    assert_eq!(values(&stored, "Message-ID").len(), 1, "{}", show(&stored));
}

/// `msg` submitted by an authenticated user (relaying closed) and delivered to the
/// next server: signed with the user's domain key, which dkimpy finds valid.
fn submitted_and_signed(msg: &[u8]) -> Vec<u8> {
    use common::security::{ALICE as USER, BOB as PEER_USER, Mta, Opts, Port};
    require_dkimpy();
    let domain = USER.split_once('@').expect("address").1;
    let key = keygen(domain, "sub", Alg::Ed25519);
    // Loopback clients are strangers here: only the authentication counts.
    let m = Mta::start(Opts { extra: &key.config(), ..Opts::default() });
    let file = m.write("msg.eml", msg);
    let out = m.swaks(
        Port::Submission,
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            USER,
            "--auth-password",
            common::security::ALICE_PW,
            "-f",
            USER,
            "-t",
            PEER_USER,
            "--data",
            &format!("@{file}"),
        ],
    );
    out.assert_success("swaks --tls --auth PLAIN");
    let stored = m.remote_mail(PEER_USER.split_once('@').expect("address").0, 1);
    assert_eq!(stored.len(), 1);
    let sig = signature(&stored[0]);
    assert_eq!(sig.get("d").map(String::as_str), Some(domain), "{sig:?}");
    assert_eq!(sig.get("s").map(String::as_str), Some("sub"), "{sig:?}");
    assert_eq!(sig.get("a").map(String::as_str), Some("ed25519-sha256"), "{sig:?}");
    assert_eq!(dkimpy_verify(m.t.path(), &stored[0], &key), "pass", "dkimpy on:\n{}", show(&stored[0]));
    stored.into_iter().next().expect("one message")
}

#[test]
fn tern_signs_with_keys_made_by_openssl() {
    require_dkimpy();
    let rsa = openssl_key(SIGNER, "o1", Alg::Rsa);
    let ed = openssl_key("c.test", "o2", Alg::Ed25519);
    let cap = Capture::start(&[&rsa, &ed]);
    for (key, from) in [(&rsa, format!("Alice <{ALICE}>")), (&ed, "Carol <carol@c.test>".to_string())] {
        let msg = message_from(&from, &format!("openssl {}", key.alg.short()));
        let relayed = cap.relay(ALICE, &msg);
        let sig = signature(&relayed);
        let get = |t: &str| sig.get(t).map(String::as_str);
        assert_eq!((get("d"), get("s"), get("a")), (Some(&*key.domain), Some(&*key.selector), Some(key.alg.name())));
        assert_eq!(dkimpy_verify(cap.a.path(), &relayed, key), "pass", "dkimpy on:\n{}", show(&relayed));
    }
}

// ---------------------------------------------------------------------------
// Interoperability with dkimpy.

/// A signs with a key of `alg`; dkimpy verifies the signature as relayed,
/// and finds it broken once the body changes.
fn dkimpy_checks_tern(alg: Alg) {
    require_dkimpy();
    let key = keygen(SIGNER, "s1", alg);
    let cap = Capture::start(&[&key]);
    let relayed = cap.relay(ALICE, &message(&format!("dkimpy checks {}", alg.short())));
    assert_eq!(signature(&relayed).get("a").map(String::as_str), Some(alg.name()));
    assert_eq!(dkimpy_verify(cap.a.path(), &relayed, &key), "pass", "dkimpy on:\n{}", show(&relayed));
    assert_eq!(dkimpy_verify(cap.a.path(), &tamper_body(&relayed), &key), "fail", "dkimpy on a changed body");
}

#[test]
fn dkimpy_verifies_an_rsa_signature_by_tern() {
    dkimpy_checks_tern(Alg::Rsa);
}

#[test]
fn dkimpy_verifies_an_ed25519_signature_by_tern() {
    dkimpy_checks_tern(Alg::Ed25519);
}

#[test]
fn tern_verifies_an_rsa_signature_by_dkimpy() {
    require_dkimpy();
    let key = keygen(SIGNER, "s1", Alg::Rsa);
    let dns = DnsServer::start(&zone(&[&key], Some(DMARC_REJECT), &[]));
    let b = receiver(&dns, "");
    // dkimpy's default canonicalization, relaxed/simple.
    let signed = dkimpy_sign(b.path(), &message("dkimpy rsa"), &key, "relaxed/simple");
    let stored = deliver(&b, "bounce@other.test", BOB, &signed);
    assert_results(&stored, "pass", &[("pass", SIGNER, "s1")], "none", "pass");
    // The same signature over a changed body.
    let stored = deliver(&b, ALICE, "carol@b.test", &tamper_body(&signed));
    assert_results(&stored, "pass", &[("fail", SIGNER, "s1")], "none", "pass");
}

#[test]
fn tern_verifies_an_ed25519_signature_by_dkimpy() {
    require_dkimpy();
    let key = keygen(SIGNER, "e1", Alg::Ed25519);
    let dns = DnsServer::start(&zone(&[&key], Some(DMARC_REJECT), &[]));
    let b = receiver(&dns, "");
    let signed = dkimpy_sign(b.path(), &message("dkimpy ed25519"), &key, "relaxed/relaxed");
    let stored = deliver(&b, "bounce@other.test", BOB, &signed);
    assert_results(&stored, "pass", &[("pass", SIGNER, "e1")], "none", "pass");
}

#[test]
fn tern_reports_each_signature_of_a_doubly_signed_message() {
    require_dkimpy();
    let rsa = keygen(SIGNER, "s1", Alg::Rsa);
    let ed = keygen(SIGNER, "e1", Alg::Ed25519);
    let dns = DnsServer::start(&zone(&[&rsa, &ed], None, &[]));
    let b = receiver(&dns, "");
    // RFC 8463 §4: an Ed25519 signature beside an RSA one; simple/simple this time.
    let once = dkimpy_sign(b.path(), &message("two signatures"), &ed, "simple/simple");
    let twice = dkimpy_sign(b.path(), &once, &rsa, "simple/simple");
    let stored = deliver(&b, ALICE, BOB, &twice);
    assert_results(&stored, "pass", &[("pass", SIGNER, "s1"), ("pass", SIGNER, "e1")], "none", "none");
}

// ---------------------------------------------------------------------------
// ARC.

/// Sends a message sealed by dkimpy (as the forwarder `fwd.test`, after its
/// own Authentication-Results), changed by `change`, to B from the
/// forwarder; returns Tern's arc= verdict and its Authentication-Results.
fn arc_verdict(change: impl Fn(&[u8]) -> Vec<u8>) -> (String, String) {
    require_dkimpy();
    const SEALER: &str = "fwd.test";
    let seal = keygen(SEALER, "arc", Alg::Rsa);
    let dns = DnsServer::start(&zone(&[&seal], None, &[SEALER]));
    let b = receiver(&dns, "");
    let received = [
        format!("Authentication-Results: {SEALER}; spf=pass smtp.mailfrom={ALICE}; dkim=none\r\n").as_bytes(),
        &message("arc sealed")[..],
    ]
    .concat();
    let sealed = change(&dkimpy_seal(b.path(), &received, &seal));
    let stored = deliver(&b, "list@fwd.test", BOB, &sealed);
    let header = values(&stored, "Authentication-Results").join("\n");
    // The message as sealed carries no DKIM signature and no DMARC record applies.
    assert_eq!(dkim_results(&stored), [triple("none", "", "")], "{header}");
    assert_eq!(verdict(&stored, "dmarc"), "none", "{header}");
    (verdict(&stored, "arc"), header)
}

#[test]
fn arc_chain_sealed_by_dkimpy_passes() {
    let (arc, header) = arc_verdict(|m| m.to_vec());
    assert_eq!(arc, "pass", "{header}");
}

#[test]
fn arc_chain_with_a_changed_sealed_verdict_fails() {
    // A verdict changed inside the sealed ARC-Authentication-Results: the ARC-Seal breaks.
    let (arc, header) = arc_verdict(|m| replace_after(m, b"ARC-Authentication-Results:", b"spf=pass", b"spf=fail"));
    assert_eq!(arc, "fail", "{header}");
}

#[test]
fn arc_chain_with_the_body_changed_after_sealing_fails() {
    // The newest ARC-Message-Signature no longer matches the body (RFC 8617 §5.2 step 4).
    let (arc, header) = arc_verdict(tamper_body);
    assert_eq!(arc, "fail", "{header}");
}

#[test]
fn a_trusted_forwarders_arc_seal_outweighs_a_dmarc_failure() {
    // A list at fwd.test relays alice@a.test's mail under its own envelope sender:
    // SPF passes for fwd.test, which is not aligned with a.test, and a.test says
    // p=reject. The list sealed the chain; only a receiver that trusts it delivers.
    require_dkimpy();
    const SEALER: &str = "fwd.test";
    let seal = keygen(SEALER, "arc", Alg::Rsa);
    let dns = DnsServer::start(&zone(&[&seal], Some(DMARC_REJECT), &[SEALER]));
    let received = [
        format!("Authentication-Results: {SEALER}; spf=pass smtp.mailfrom={ALICE}; dmarc=pass\r\n").as_bytes(),
        &message("via the list")[..],
    ]
    .concat();
    let strict = receiver(&dns, "");
    let sealed = dkimpy_seal(strict.path(), &received, &seal);
    let refused = submit(&strict, "list@fwd.test", BOB, &sealed);
    assert_eq!(refused.code, 550, "{refused:?}");
    assert!(refused.has("5.7.1"), "{refused:?}");

    let trusting = receiver(&dns, &format!("[auth_checks]\ntrusted_arc_sealers = [\"{SEALER}\"]\n"));
    let stored = deliver(&trusting, "list@fwd.test", BOB, &sealed);
    let header = values(&stored, "Authentication-Results").join("\n");
    assert_eq!(verdict(&stored, "arc"), "pass", "{header}");
    assert_eq!(verdict(&stored, "dmarc"), "fail", "{header}");
    assert!(header.contains("sealed by trusted fwd.test"), "{header}");
}
