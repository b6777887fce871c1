//! Tern's DKIM against the reference implementations: OpenDKIM (its test mode,
//! with keys from a `TestPublicKeys` file or signing with a key file),
//! Mail::DKIM (asking the test DNS server) and dkimpy, on messages whose
//! canonical forms are easy to get wrong (RFC 6376 §3.4). Everything stays on
//! loopback.

mod common;

use common::dkim::*;
use common::outbound::*;
use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;

/// (what, message): a body ending in a whitespace-only line, whitespace before a
/// field's colon, an 8-bit body, an empty body.
fn tricky_messages() -> Vec<(&'static str, Vec<u8>)> {
    let head = |subject: &str, id: &str| {
        format!(
            "From: Alice <{ALICE}>\r\nTo: Bob <{BOB}>\r\n{subject}\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\
             Message-ID: <{id}@a.test>\r\nMIME-Version: 1.0\r\n"
        )
        .into_bytes()
    };
    let text = b"Content-Type: text/plain; charset=us-ascii\r\n\r\n";
    vec![
        (
            "a whitespace-only last line",
            [head("Subject: ws", "ws"), text.to_vec(), b"Hello\r\n \r\n".to_vec()].concat(),
        ),
        ("space before a colon", [head("Subject : x", "colon"), text.to_vec(), b"Hello\r\n".to_vec()].concat()),
        (
            "an 8-bit body",
            [
                head("Subject: 8bit", "8bit"),
                b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".to_vec(),
                b"caf\xc3\xa9  \t d\xc3\xa9j\xc3\xa0\r\n\xe2\x82\xac \r\n\t\r\n".to_vec(),
            ]
            .concat(),
        ),
        ("an empty body", [head("Subject: empty", "empty"), text.to_vec()].concat()),
    ]
}

#[track_caller]
fn require_reference_verifiers() {
    let perl_has = |module: &str| {
        let mut cmd = Command::new("perl");
        cmd.args([&format!("-M{module}"), "-e", "1"]);
        run(cmd, CLIENT_TIMEOUT).success()
    };
    assert!(
        have_program("opendkim") && perl_has("Mail::DKIM") && perl_has("Net::DNS"),
        "opendkim, Mail::DKIM or Net::DNS is missing (scripts/test installs them)"
    );
}

/// OpenDKIM's verdict on `msg`: its test mode (`opendkim -t`) with the key from
/// a `TestPublicKeys` file, so that no DNS is asked. `Ok` when it passes.
fn opendkim_verify(dir: &Path, msg: &[u8], key: &Key) -> Result<(), String> {
    let keys = dir.join("opendkim-keys.txt");
    fs::write(&keys, format!("{} {}\n", key.dns_name().trim_end_matches('.'), key.record)).expect("write keys");
    let conf = dir.join("opendkim.conf");
    fs::write(&conf, format!("Mode v\nSyslog no\nTestPublicKeys {}\n", keys.display())).expect("write config");
    let file = scratch(dir, "opendkim.eml", msg);
    let mut cmd = Command::new("opendkim");
    cmd.arg("-x").arg(&conf).args(["-t", &file]);
    let out = run(cmd, CLIENT_TIMEOUT);
    let passed = format!("verification (s={}, d={}", key.selector, key.domain);
    let all = out.all();
    let verdict = all.lines().find(|l| l.contains(&passed)).unwrap_or_default();
    match out.success() && verdict.ends_with("succeeded") {
        true => Ok(()),
        false => Err(format!("status {:?}, timed out {}: {}{}", out.status, out.timed_out, out.stdout, out.stderr)),
    }
}

/// `msg` signed by OpenDKIM's test mode (`opendkim -t`, `Mode s`) with `key`
/// and canonicalization `canon`: it prints the field it would add.
fn opendkim_sign(dir: &Path, msg: &[u8], key: &Key, canon: &str) -> Vec<u8> {
    let conf = dir.join("opendkim-sign.conf");
    let settings = format!(
        "Mode s\nSyslog no\nDomain {}\nSelector {}\nKeyFile {}\nCanonicalization {canon}\nRequireSafeKeys false\n",
        key.domain,
        key.selector,
        key.path.display()
    );
    fs::write(&conf, settings).expect("write config");
    let file = scratch(dir, "opendkim-sign.eml", msg);
    let mut cmd = Command::new("opendkim");
    cmd.arg("-x").arg(&conf).args(["-t", &file]);
    let out = run(cmd, CLIENT_TIMEOUT);
    out.assert_success("opendkim -t (signing)");
    let all = out.all();
    let at = all.find("DKIM-Signature:").unwrap_or_else(|| panic!("no signature from OpenDKIM:\n{all}"));
    let field: Vec<&str> = all[at..].lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.is_empty()).collect();
    [field.join("\r\n").as_bytes(), b"\r\n", msg].concat()
}

/// `verify.pl PORT FILE`: Mail::DKIM's result for each signature, asking the
/// test DNS server on 127.0.0.1:PORT for the keys.
const PERL_VERIFY: &str = r#"
use strict; use warnings;
use Mail::DKIM::Verifier; use Net::DNS::Resolver;
my ($port, $file) = @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers => ['127.0.0.1'], port => $port,
    recurse => 0, retry => 2, udp_timeout => 5, tcp_timeout => 5));
open(my $fh, '<', $file) or die "$file: $!";
binmode $fh;
my $v = Mail::DKIM::Verifier->new();
$v->load($fh);
my @sigs = $v->signatures;
print join(" ", map { $_->result . (($_->result_detail // "") =~ /\((.*)\)/ ? "($1)" : "") } @sigs) || "none", "\n";
"#;

/// Mail::DKIM's results (`pass`, `fail(...)`, …) for the signatures of `msg`.
fn mail_dkim_verify(dir: &Path, msg: &[u8], dns: &DnsServer) -> String {
    let file = scratch(dir, "mail-dkim.eml", msg);
    let mut cmd = Command::new("perl");
    cmd.args(["-e", PERL_VERIFY, &dns.port.to_string(), &file]);
    let out = run(cmd, CLIENT_TIMEOUT);
    out.assert_success("Mail::DKIM verify");
    out.stdout.trim().to_string()
}

/// `sign.pl KEYFILE ALGORITHM SELECTOR DOMAIN CANON IN OUT`: `IN` signed by
/// Mail::DKIM, written to `OUT`.
const PERL_SIGN: &str = r#"
use strict; use warnings;
use Mail::DKIM::Signer;
my ($key, $alg, $selector, $domain, $canon, $in, $out) = @ARGV;
my $s = Mail::DKIM::Signer->new(Algorithm => $alg, Method => $canon, Domain => $domain,
    Selector => $selector, KeyFile => $key);
open(my $fh, '<', $in) or die "$in: $!";
binmode $fh;
$s->load($fh);
open(my $o, '>', $out) or die "$out: $!";
binmode $o;
seek($fh, 0, 0);
local $/;
my $sig = $s->signature->as_string;
$sig =~ s/\015?\012/\015\012/g;
print $o $sig, "\015\012", <$fh>;
"#;

fn mail_dkim_sign(dir: &Path, msg: &[u8], key: &Key, canon: &str) -> Vec<u8> {
    let src = scratch(dir, "to-sign-perl.eml", msg);
    let dst = dir.join("signed-perl.eml");
    let mut cmd = Command::new("perl");
    cmd.args(["-e", PERL_SIGN, &key.path_arg(), key.alg.name(), &key.selector, &key.domain, canon, &src]).arg(&dst);
    run(cmd, CLIENT_TIMEOUT).assert_success("Mail::DKIM sign");
    fs::read(&dst).expect("read the signed message")
}

/// Tern signs each tricky message with `alg`; OpenDKIM, Mail::DKIM and dkimpy
/// (which cannot read a field with whitespace before its colon) find it valid.
/// Debian's Mail::DKIM (1.20230212) knows no Ed25519, so it checks RSA only.
fn references_verify_tern(alg: Alg) {
    require_reference_verifiers();
    require_dkimpy();
    let key = keygen(SIGNER, "s1", alg);
    let dns = DnsServer::start(&zone(&[&key], None, &[]));
    let cap = Capture::start(&[&key]);
    let dir = cap.a.path();
    for (what, msg) in tricky_messages() {
        let relayed = cap.relay(ALICE, &msg);
        assert_eq!(signature(&relayed).get("a").map(String::as_str), Some(alg.name()));
        if let Err(e) = opendkim_verify(dir, &relayed, &key) {
            panic!("OpenDKIM fails Tern's signature on {what}:\n{e}\n{}", show(&relayed));
        }
        if alg == Alg::Rsa {
            let verdict = mail_dkim_verify(dir, &relayed, &dns);
            assert_eq!(verdict, "pass", "Mail::DKIM on {what}:\n{}", show(&relayed));
        }
        if what != "space before a colon" {
            assert_eq!(dkimpy_verify(dir, &relayed, &key), "pass", "dkimpy on {what}:\n{}", show(&relayed));
        }
    }
}

#[test]
fn opendkim_mail_dkim_and_dkimpy_verify_terns_rsa_signatures() {
    references_verify_tern(Alg::Rsa);
}

#[test]
fn opendkim_mail_dkim_and_dkimpy_verify_terns_ed25519_signatures() {
    references_verify_tern(Alg::Ed25519);
}

/// OpenDKIM and Mail::DKIM sign each tricky message (relaxed and simple), dkimpy
/// too (but the field it cannot read): Tern finds every signature valid.
#[test]
fn tern_verifies_tricky_messages_signed_by_opendkim_mail_dkim_and_dkimpy() {
    require_reference_verifiers();
    require_dkimpy();
    let key = keygen(SIGNER, "s1", Alg::Rsa);
    let dns = DnsServer::start(&zone(&[&key], None, &[]));
    let b = receiver(&dns, "");
    let mut n = 0;
    for (what, msg) in tricky_messages() {
        let mut signed = vec![];
        for canon in ["relaxed", "simple"] {
            let c = format!("{canon}/{canon}");
            signed.push((format!("OpenDKIM {canon}"), opendkim_sign(b.path(), &msg, &key, &c)));
            signed.push((format!("Mail::DKIM {canon}"), mail_dkim_sign(b.path(), &msg, &key, canon)));
            if what != "space before a colon" {
                signed.push((format!("dkimpy {canon}"), dkimpy_sign(b.path(), &msg, &key, &c)));
            }
        }
        for (signer, msg) in signed {
            n += 1;
            let stored = deliver(&b, ALICE, &format!("bob{n}@b.test"), &msg);
            let dkim = dkim_results(&stored);
            assert_eq!(dkim, [triple("pass", SIGNER, "s1")], "{what} signed by {signer}:\n{}", show(&stored));
        }
    }
}
