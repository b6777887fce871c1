//! Helpers of the DKIM end-to-end tests: keys made by `tern dkim keygen` or
//! OpenSSL, the test DNS zone, a signing Tern ("A") and a receiving Tern ("B"),
//! messages and their header fields, and dkimpy's signing, checking and sealing.

use super::auth_results::*;
use super::outbound::*;
use super::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The signing domain.
pub const SIGNER: &str = "a.test";
pub const ALICE: &str = "alice@a.test";
/// The domain of the receiving Tern.
pub const RECEIVER: &str = "b.test";
pub const BOB: &str = "bob@b.test";
/// A domain with an SPF record but no key and no DMARC record.
pub const OTHER: &str = "other.test";
/// Lets every loopback client send for a domain.
pub const SPF_LOOPBACK: &str = "v=spf1 ip4:127.0.0.0/8 -all";
pub const DMARC_REJECT: &str = "v=DMARC1; p=reject";

/// Long enough for a few one-second retries and a Tern start-up.
pub const DELIVERY: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Keys.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rsa,
    Ed25519,
}

impl Alg {
    /// `tern dkim keygen --algorithm` and the record's `k=` tag.
    pub fn short(self) -> &'static str {
        match self {
            Alg::Rsa => "rsa",
            Alg::Ed25519 => "ed25519",
        }
    }

    /// The config's `algorithm` and the signature's `a=` tag.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rsa => "rsa-sha256",
            Alg::Ed25519 => "ed25519-sha256",
        }
    }
}

/// A key made by `tern dkim keygen`, with the TXT record it printed.
pub struct Key {
    /// The stopped Tern whose config `keygen` ran with; owns the key file.
    pub _home: Tern,
    pub domain: String,
    pub selector: String,
    pub alg: Alg,
    pub path: PathBuf,
    pub record: String,
}

/// The strings between double quotes in `text`, in order (backslash escapes undone).
pub fn quoted_strings(text: &str) -> Vec<String> {
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
pub fn keygen(domain: &str, selector: &str, alg: Alg) -> Key {
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
pub fn openssl(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("openssl");
    cmd.args(args).current_dir(dir);
    run(cmd, CLIENT_TIMEOUT).assert_success(&format!("openssl {}", args.join(" ")));
}

/// A key made by OpenSSL rather than Tern: RSA as PKCS#1 (`BEGIN RSA
/// PRIVATE KEY`), Ed25519 as PKCS#8; the record is made from the public key
/// OpenSSL derives.
#[track_caller]
pub fn openssl_key(domain: &str, selector: &str, alg: Alg) -> Key {
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
    let record = format!("v=DKIM1; k={}; p={}", alg.short(), super::security::b64(public));
    Key { _home: home, domain: domain.into(), selector: selector.into(), alg, path, record }
}

impl Key {
    /// The `[[dkim]]` table for this key.
    pub fn config(&self) -> String {
        format!(
            "\n[[dkim]]\ndomain = \"{}\"\nselector = \"{}\"\nkey = \"{}\"\nalgorithm = \"{}\"\n",
            self.domain,
            self.selector,
            self.path.display(),
            self.alg.name()
        )
    }

    /// Where the record is published, with the final dot.
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}.", self.selector, self.domain)
    }

    /// `name=record`, as the dkimpy scripts below take it.
    pub fn dkimpy_arg(&self) -> String {
        format!("{}={}", self.dns_name(), self.record)
    }

    pub fn path_arg(&self) -> String {
        self.path.display().to_string()
    }
}

/// A zone with SPF records letting loopback send for `a.test`, `other.test`
/// and `extra_spf`, the keys' records, and `_dmarc.a.test` if `dmarc` is given.
pub fn zone(keys: &[&Key], dmarc: Option<&str>, extra_spf: &[&str]) -> serde_json::Value {
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
pub fn receiver(dns: &DnsServer, extra: &str) -> Tern {
    let config = format!("\n[local]\ndomains = [\"{RECEIVER}\"]\naccept_unknown = true\n{NO_RELAY}\n{extra}\n");
    let mut t = sender_stopped(&SenderSetup { extra: &config, dns: Some(dns), peer_port: free_port(), outbound: "" });
    t.start_again();
    t
}

/// Tern A: signs with `keys`, relays `b.test` to 127.0.0.1:`route_port`;
/// loopback clients may relay (the default networks).
pub fn signer(keys: &[&Key], route_port: u16) -> Tern {
    let keys: String = keys.iter().map(|k| k.config()).collect();
    Tern::start(&format!(
        "{LOCAL_OPEN}\n[queue]\nretry = [\"1s\"]\n\n[relay.routes]\n\"{RECEIVER}\" = \"127.0.0.1:{route_port}\"\n{keys}"
    ))
}

/// A signing Tern relaying `b.test` to a fake SMTP server that keeps every
/// message exactly as Tern sent it.
pub struct Capture {
    pub a: Tern,
    pub peer: FakePeer,
}

impl Capture {
    pub fn start(keys: &[&Key]) -> Capture {
        let port = free_port();
        let peer = FakePeer::start("127.0.0.1", port, &json!({}));
        let a = signer(keys, port);
        Capture { a, peer }
    }

    /// Sends `msg` through A and returns it as the fake server received it.
    #[track_caller]
    pub fn relay(&self, sender: &str, msg: &[u8]) -> Vec<u8> {
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
pub fn submit(t: &Tern, sender: &str, rcpt: &str, msg: &[u8]) -> Reply {
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
pub fn deliver(b: &Tern, sender: &str, rcpt: &str, msg: &[u8]) -> Vec<u8> {
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
pub fn message(subject: &str) -> Vec<u8> {
    message_from(&format!("Alice <{ALICE}>"), subject)
}

pub fn message_from(from: &str, subject: &str) -> Vec<u8> {
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
pub fn tamper_body(msg: &[u8]) -> Vec<u8> {
    replace_after(msg, b"\r\n\r\n", b"Hello Bob", b"Hello Eve")
}

/// `msg` with the first `old` after the first `anchor` replaced by `new`.
#[track_caller]
pub fn replace_after(msg: &[u8], anchor: &[u8], old: &[u8], new: &[u8]) -> Vec<u8> {
    let start =
        find(msg, anchor).unwrap_or_else(|| panic!("no {:?} in\n{}", String::from_utf8_lossy(anchor), show(msg)));
    let at = start
        + find(&msg[start..], old).unwrap_or_else(|| panic!("no {:?} in\n{}", String::from_utf8_lossy(old), show(msg)));
    [&msg[..at], new, &msg[at + old.len()..]].concat()
}

/// The unfolded values of the header fields called `name`, white space collapsed.
pub fn values(msg: &[u8], name: &str) -> Vec<String> {
    fields_named(msg, name).iter().map(|v| collapse(v)).collect()
}

/// The tags of a DKIM-Signature (or ARC) value, with all white space
/// removed from the values.
pub fn tags(value: &str) -> BTreeMap<String, String> {
    value
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.split_whitespace().collect()))
        .collect()
}

/// The one DKIM-Signature of `msg`, as tags.
#[track_caller]
pub fn signature(msg: &[u8]) -> BTreeMap<String, String> {
    let sigs = values(msg, "DKIM-Signature");
    assert_eq!(sigs.len(), 1, "expected one DKIM-Signature:\n{}", show(msg));
    tags(&sigs[0])
}

/// Tern's verdict for `method` (which must appear once), e.g. `pass`.
#[track_caller]
pub fn verdict(msg: &[u8], method: &str) -> String {
    tern_ar(msg).result(method)
}

/// Tern's DKIM results as (result, header.d, header.s), sorted.
#[track_caller]
pub fn dkim_results(msg: &[u8]) -> Vec<(String, String, String)> {
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

pub fn triple(result: &str, d: &str, s: &str) -> (String, String, String) {
    (result.into(), d.into(), s.into())
}

/// Asserts Tern's SPF, DKIM, ARC and DMARC verdicts on a delivered message.
#[track_caller]
pub fn assert_results(msg: &[u8], spf: &str, dkim: &[(&str, &str, &str)], arc: &str, dmarc: &str) {
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
pub fn python(script: &str, args: &[&str]) -> Out {
    let mut cmd = Command::new("python3");
    cmd.arg("-").args(args).env("PYTHONIOENCODING", "utf-8");
    run_with_input(cmd, Some(script.as_bytes()), CLIENT_TIMEOUT)
}

#[track_caller]
pub fn require_dkimpy() {
    assert!(
        python_has("dkim") && python_has("nacl") && python_has("authres"),
        "dkimpy, pynacl and authres are missing (scripts/test installs them with pip)"
    );
}

/// Shared by the scripts: `RECORDS` from `name=record` arguments and a
/// `dnsfunc` answering from them only (no network).
pub const PY_DKIM: &str = r#"
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
pub const PY_VERIFY: &str = r#"
records(sys.argv[2:])
msg = open(sys.argv[1], "rb").read()
print("pass" if dkim.verify(msg, logger=LOG, dnsfunc=dnsfunc) else "fail")
"#;

/// `sign.py IN OUT KEYFILE rsa|ed25519 SELECTOR DOMAIN CANON NAME=RECORD`:
/// prepends a DKIM-Signature by dkimpy, after checking that dkimpy
/// verifies it itself. An Ed25519 key is given to dkimpy as its base64
/// 32-byte seed, taken from the PKCS#8 DER (the OCTET STRING in the
/// privateKey OCTET STRING: 04 22 04 20 <seed>).
pub const PY_SIGN: &str = r#"
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
pub const PY_ARC: &str = r#"
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
pub fn scratch(dir: &Path, name: &str, msg: &[u8]) -> String {
    let p = dir.join(name);
    fs::write(&p, msg).expect("write scratch file");
    p.display().to_string()
}

/// dkimpy's verdict (`pass` or `fail`) on the first signature of `msg`.
#[track_caller]
pub fn dkimpy_verify(dir: &Path, msg: &[u8], key: &Key) -> String {
    let file = scratch(dir, "to-verify.eml", msg);
    let out = python(&format!("{PY_DKIM}\n{PY_VERIFY}"), &[&file, &key.dkimpy_arg()]);
    out.assert_success("dkimpy verify");
    out.stdout.trim().to_string()
}

/// `msg` signed by dkimpy with `key` (canonicalization `canon`).
#[track_caller]
pub fn dkimpy_sign(dir: &Path, msg: &[u8], key: &Key, canon: &str) -> Vec<u8> {
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
pub fn dkimpy_seal(dir: &Path, msg: &[u8], key: &Key) -> Vec<u8> {
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
