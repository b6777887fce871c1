//! Reloading the configuration of a running server (SIGHUP and `tern reload`): new
//! sessions get the new settings while sessions opened before keep theirs, listeners
//! come and go, and a broken file changes nothing.

mod common;

use common::outbound::wait_for;
use common::service::*;
use common::*;
use std::fs;
use std::process::Command;
use std::time::Duration;

const STRANGER: &str = "someone@elsewhere.test";

fn strangers_only(local: &str) -> String {
    format!("{NO_RELAY}{NO_AUTH_CHECKS}\n{local}\n")
}

#[test]
fn local_domains_users_and_aliases_change_for_new_sessions_only() {
    let t = Tern::start(&strangers_only(
        "[local]\ndomains = [\"a.test\"]\nusers = [\"bob@a.test\", \"carol@a.test\"]\n\
         [local.aliases]\n\"team@a.test\" = [\"bob@a.test\"]\n",
    ));
    assert_eq!(rcpt_code(&t, STRANGER, "dave@b.test"), 554, "b.test is not local yet");
    let mut before = t.raw();
    before.ehlo();

    edit_config(&t, "domains = [\"a.test\"]", "domains = [\"a.test\", \"b.test\"]");
    edit_config(&t, "\"carol@a.test\"]", "\"carol@a.test\", \"dave@b.test\"]");
    edit_config(&t, "\"team@a.test\" = [\"bob@a.test\"]", "\"team@a.test\" = [\"carol@a.test\"]");
    let line = sighup(&t, true);
    assert!(line.contains("changed local"), "{line}");

    assert_eq!(rcpt_code(&t, STRANGER, "dave@b.test"), 250, "a new session knows b.test\n{}", t.logs());
    let mut after = t.raw();
    after.ehlo();
    mail_from(&mut after, STRANGER);
    assert_eq!(after.cmd("RCPT TO:<team@a.test>").code, 250);
    data(&mut after, "Subject: after\r\n\r\nto the new alias");

    // The session opened before the reload goes on under the old settings.
    mail_from(&mut before, STRANGER);
    let old = before.cmd("RCPT TO:<dave@b.test>");
    assert_eq!(old.code, 554, "the old session still relays nothing to b.test: {old:?}");
    assert_eq!(before.cmd("RCPT TO:<team@a.test>").code, 250);
    data(&mut before, "Subject: before\r\n\r\nto the old alias");

    let bob = t.wait_mail("a.test", "bob", 1);
    let carol = t.wait_mail("a.test", "carol", 1);
    assert!(contains(&bob[0], b"Subject: before"), "{}", show(&bob[0]));
    assert!(contains(&carol[0], b"Subject: after"), "{}", show(&carol[0]));
}

#[test]
fn relay_networks_change() {
    let t = Tern::start(&strangers_only(LOCAL_OPEN));
    let mut before = t.raw();
    before.ehlo();
    assert_eq!(rcpt_code(&t, STRANGER, "x@remote.test"), 554);
    edit_config(&t, "networks = []", "networks = [\"127.0.0.0/8\"]");
    let line = sighup(&t, true);
    assert!(line.contains("changed relay"), "{line}");
    assert_eq!(rcpt_code(&t, STRANGER, "x@remote.test"), 250, "a client of the new network relays");
    mail_from(&mut before, STRANGER);
    assert_eq!(before.cmd("RCPT TO:<x@remote.test>").code, 554, "the old session keeps the old networks");
}

/// `tern dkim keygen` into `dir`; returns the key's path.
fn keygen(dir: &std::path::Path, selector: &str) -> String {
    let path = dir.join(format!("{selector}.pem")).display().to_string();
    let mut cmd = Command::new(TERN_BIN);
    cmd.args(["dkim", "keygen", "a.test", "--selector", selector, "--algorithm", "ed25519", "--out", &path]);
    run(cmd, CLIENT_TIMEOUT).assert_success("tern dkim keygen");
    path
}

/// Sends a message from a.test (signed: loopback is a relay network) to bob@a.test.
fn send_signed(t: &Tern, subject: &str) {
    let mut r = t.raw();
    r.ehlo();
    mail_from(&mut r, "alice@a.test");
    assert_eq!(r.cmd("RCPT TO:<bob@a.test>").code, 250);
    data(&mut r, &format!("From: alice@a.test\r\nTo: bob@a.test\r\nSubject: {subject}\r\n\r\nbody"));
}

#[test]
fn a_new_dkim_key_signs_after_reload_and_a_missing_one_changes_nothing() {
    let keys = tempfile::tempdir().unwrap();
    let (k1, k2) = (keygen(keys.path(), "s1"), keygen(keys.path(), "s2"));
    let dkim = |selector: &str, key: &str| {
        format!(
            "[[dkim]]\ndomain = \"a.test\"\nselector = \"{selector}\"\nkey = \"{key}\"\nalgorithm = \"ed25519-sha256\"\n"
        )
    };
    let t = Tern::start(&format!(
        "{NO_AUTH_CHECKS}\n[local]\ndomains = [\"a.test\"]\naccept_unknown = true\n\n{}",
        dkim("s1", &k1)
    ));
    send_signed(&t, "first");
    let first = t.wait_mail("a.test", "bob", 1);
    assert!(contains(&first[0], b"s=s1;"), "{}", show(&first[0]));

    edit_config(&t, &dkim("s1", &k1), &dkim("s2", &k2));
    let line = sighup(&t, true);
    assert!(line.contains("changed dkim"), "{line}");
    send_signed(&t, "second");
    let both = t.wait_mail("a.test", "bob", 2);
    assert_eq!(both.iter().filter(|m| contains(m, b"s=s2;")).count(), 1, "the second message has the new key");

    let missing = keys.path().join("missing.pem").display().to_string();
    edit_config(&t, &k2, &missing);
    let line = sighup(&t, false);
    assert!(line.contains("missing.pem"), "the error names the key file: {line}");
    assert!(line.contains(": dkim: ") && line.contains(": line "), "and the key and its line: {line}");
    send_signed(&t, "third");
    let all = t.wait_mail("a.test", "bob", 3);
    assert_eq!(all.iter().filter(|m| contains(m, b"s=s2;")).count(), 2, "the running key stays");
}

/// A self-signed certificate for `name` in `dir`: (cert, key).
fn certificate(dir: &std::path::Path, name: &str) -> (String, String) {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}"), "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert);
    run(cmd, CLIENT_TIMEOUT).assert_success("openssl req");
    (cert.display().to_string(), key.display().to_string())
}

/// The subject of the certificate the server shows after STARTTLS.
fn served_subject(t: &Tern) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-starttls", "smtp", "-connect", &format!("127.0.0.1:{}", t.port)]);
    let out = run_with_input(cmd, Some(b"QUIT\r\n"), CLIENT_TIMEOUT);
    out.stdout.lines().find(|l| l.starts_with("subject=")).unwrap_or_default().to_string()
}

#[test]
fn a_new_certificate_is_served_after_reload_and_open_sessions_keep_the_old_one() {
    let certs = tempfile::tempdir().unwrap();
    let (cert1, key1) = certificate(certs.path(), "one.test");
    let (cert2, key2) = certificate(certs.path(), "two.test");
    let t = Tern::start(&format!("{LOCAL_OPEN}\n[tls]\ncert = \"{cert1}\"\nkey = \"{key1}\"\n"));
    assert!(served_subject(&t).contains("one.test"), "{}", served_subject(&t));
    edit_config(&t, &format!("cert = \"{cert1}\"\nkey = \"{key1}\""), &format!("cert = \"{cert2}\"\nkey = \"{key2}\""));
    // A session opened before the reload starts TLS after it, with the old certificate.
    let script = format!(
        r#"
import signal, ssl
s = connect()
log = {log:?}
before = open(log).read().count("configuration reloaded")
os.kill({pid}, signal.SIGHUP)
deadline = time.time() + 20
while open(log).read().count("configuration reloaded") == before and time.time() < deadline:
    time.sleep(0.05)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx)
der = s.sock.getpeercert(binary_form=True)
print("old" if b"one.test" in der else "new" if b"two.test" in der else "unknown")
s.quit()
"#,
        log = t.stderr_log().display().to_string(),
        pid = t.pid().unwrap()
    );
    let out = t.py(&script);
    out.assert_success("python STARTTLS across a reload");
    assert_eq!(out.stdout.trim(), "old", "{}", t.logs());
    assert!(!log_lines(&t, "configuration reloaded").is_empty(), "{}", t.logs());
    let subject = wait_for(
        RELOAD_TIMEOUT,
        "the new certificate",
        || Some(served_subject(&t)).filter(|s| s.contains("two.test")),
        || format!("served: {}\n{}", served_subject(&t), t.logs()),
    );
    assert!(subject.contains("two.test"));
}

/// True when a TCP connection to `port` on 127.0.0.1 is accepted and greeted.
fn greets(port: u16) -> bool {
    let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut r = Raw::over(stream, Duration::from_secs(5));
    r.try_reply(Duration::from_secs(5)).is_some_and(|g| g.code == 220)
}

#[test]
fn listeners_are_added_and_removed_without_dropping_sessions() {
    let (kept, added) = (free_port(), free_port());
    let listen = |port: u16| format!("[[listen]]\naddr = \"127.0.0.1:{port}\"\nmode = \"smtp\"\n");
    let t = Tern::start(&format!("{LOCAL_OPEN}{NO_AUTH_CHECKS}\n{}", listen(kept)));
    assert!(greets(kept));
    // Sessions on the listener that goes and on one that stays, opened before.
    let stream = std::net::TcpStream::connect(("127.0.0.1", kept)).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut on_removed = Raw::over(stream, Duration::from_secs(10));
    assert_eq!(on_removed.reply().code, 220);
    on_removed.ehlo();
    let mut on_main = t.raw();
    on_main.ehlo();

    edit_config(&t, &listen(kept), &listen(added));
    let line = sighup(&t, true);
    assert!(line.contains(&format!("now listening on 127.0.0.1:{added}")), "{line}");
    assert!(line.contains(&format!("no longer listening on 127.0.0.1:{kept}")), "{line}");
    assert!(greets(added), "the new listener accepts");
    assert!(!greets(kept), "the removed listener accepts no more");
    assert!(greets(t.port), "the listener that stays accepts");

    for (r, user) in [(&mut on_removed, "first"), (&mut on_main, "second")] {
        mail_from(r, "sender@localhost");
        assert_eq!(r.cmd(&format!("RCPT TO:<{user}@localhost>")).code, 250);
        data(r, &format!("Subject: {user}\r\n\r\nopened before the reload"));
        assert_eq!(r.cmd("QUIT").code, 221);
    }
    t.wait_mail("localhost", "first", 1);
    t.wait_mail("localhost", "second", 1);
}

#[test]
fn an_invalid_file_changes_nothing_and_the_error_names_key_and_line() {
    let t = Tern::start(&strangers_only("[local]\ndomains = [\"a.test\"]\naccept_unknown = true\n"));
    let lines = fs::read_to_string(&t.config_path).unwrap().lines().count();
    edit_config(&t, "domains = [\"a.test\"]", "domains = [\"a.test\", \"b.test\"]");
    append_config(&t, "[limits]\nmax_recipient = 5");
    let line = sighup(&t, false);
    assert!(line.contains(&format!("line {}", lines + 3)), "the line is named: {line}");
    assert!(line.contains("max_recipient"), "the key is named: {line}");
    assert_eq!(rcpt_code(&t, STRANGER, "x@b.test"), 554, "the running configuration stays");
    assert_eq!(rcpt_code(&t, STRANGER, "x@a.test"), 250);
    // `tern reload` reads the file first and says the same.
    let out = t.tern_cmd(&["reload"]);
    assert!(!out.success(), "{out:?}");
    assert!(out.stderr.contains("max_recipient") && out.stderr.contains("line"), "{}", out.stderr);
}

#[test]
fn tern_reload_reports_what_changed_and_what_needs_a_restart() {
    let mut t = Tern::start(&strangers_only("[local]\ndomains = [\"a.test\"]\naccept_unknown = true\n"));
    edit_config(&t, "domains = [\"a.test\"]", "domains = [\"b.test\"]");
    let out = t.tern_cmd(&["reload"]);
    out.assert_success("tern reload");
    assert!(out.stdout.contains("changed local"), "{}", out.stdout);
    assert_eq!(rcpt_code(&t, STRANGER, "x@b.test"), 250);

    // The data directory cannot move while the server runs: the reload says so and the
    // old one stays in use. (`tern reload` finds the server through the data directory,
    // so the request goes by SIGHUP here.)
    let data = t.data_dir.display().to_string();
    edit_config(&t, &format!("data_dir = \"{data}\""), &format!("data_dir = \"{data}-moved\""));
    let line = sighup(&t, true);
    assert!(line.contains("needs a restart (old value kept): data_dir"), "{line}");
    assert!(!log_lines(&t, "needs a restart; the old value stays").is_empty(), "{}", t.logs());
    edit_config(&t, &format!("data_dir = \"{data}-moved\""), &format!("data_dir = \"{data}\""));
    assert_eq!(rcpt_code(&t, STRANGER, "x@b.test"), 250);
    t.swaks(&["-f", STRANGER, "-t", "x@b.test"]).assert_success("swaks after the reload");
    t.wait_mail("b.test", "x", 1);

    // Without a server, `tern reload` fails.
    assert!(t.sigterm().is_some_and(|s| s.success()));
    let out = t.tern_cmd(&["reload"]);
    assert!(!out.success() && out.stderr.contains("no tern server is running"), "{out:?}");
}

#[test]
fn routes_change_for_new_delivery_attempts() {
    let receiver = || Tern::start("\n[local]\ndomains = [\"remote.test\"]\naccept_unknown = true\n");
    let (b1, b2) = (receiver(), receiver());
    let route = |port: u16| format!("\"remote.test\" = \"127.0.0.1:{port}\"");
    let a = Tern::start(&format!(
        "{LOCAL_OPEN}\n[queue]\nretry = [\"1s\"]\n\n[relay]\nnetworks = [\"127.0.0.0/8\"]\n\n[relay.routes]\n{}\n",
        route(b1.port)
    ));
    a.swaks(&["-f", "sender@localhost", "-t", "bob@remote.test"]).assert_success("swaks");
    b1.wait_mail_within("remote.test", "bob", 1, Duration::from_secs(30));
    edit_config(&a, &route(b1.port), &route(b2.port));
    let line = sighup(&a, true);
    assert!(line.contains("changed relay"), "{line}");
    a.swaks(&["-f", "sender@localhost", "-t", "bob@remote.test"]).assert_success("swaks");
    b2.wait_mail_within("remote.test", "bob", 1, Duration::from_secs(30));
    assert_eq!(b1.settled_count("remote.test", "bob"), 1, "nothing more went the old route");
}
