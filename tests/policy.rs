//! Recipient policy, limits and command handling, seen by real clients.

mod common;

use common::*;
use std::time::Duration;

const USERS: &str = r#"
[local]
domains = ["localhost"]
accept_unknown = false
users = ["alice@localhost", "bob@localhost"]
aliases = { "team@localhost" = ["alice@localhost", "bob@localhost"] }
subaddress_separator = "+"
"#;

#[test]
fn greeting_and_ehlo_extensions() {
    let t = Tern::start(LOCAL_OPEN);
    let out = t.py(r#"
s = smtplib.SMTP(timeout=30)
code, msg = s.connect("127.0.0.1", PORT)
print("GREETING", code, msg.decode())
code, msg = s.ehlo("client.test")
print("EHLO", code)
for k, v in sorted(s.esmtp_features.items()):
    print("EXT", k, v.strip())
s.quit()
"#);
    out.assert_success("smtplib");
    assert!(out.stdout.contains(&format!("GREETING 220 {HOSTNAME} ESMTP Tern")), "{}", out.stdout);
    assert!(out.stdout.contains("EHLO 250"), "{}", out.stdout);
    for ext in ["pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking", "dsn"] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(&format!("EXT {ext}"))),
            "EHLO does not advertise {ext}:\n{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("EXT size 26214400"), "default SIZE should be 26214400:\n{}", out.stdout);
}

#[test]
fn unknown_user_is_refused_and_postmaster_accepted() {
    let t = Tern::start(USERS);
    let out = t.py(r#"
s = connect()
print("MAIL", s.mail("sender@example.org")[0])
for r in ["nobody@localhost", "alice@localhost", "Alice@LOCALHOST", "postmaster@localhost",
          "PostMaster@LocalHost", "POSTMASTER@LOCALHOST"]:
    code, msg = s.rcpt(r)
    print("RCPT", r, code, msg.decode())
s.quit()
"#);
    out.assert_success("smtplib");
    let line = |rcpt: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(&format!("RCPT {rcpt} ")))
            .unwrap_or_else(|| panic!("no line for {rcpt}:\n{}", out.stdout))
            .to_string()
    };
    let nobody = line("nobody@localhost");
    assert!(nobody.contains(" 550 5.1.1"), "unknown user should get 550 5.1.1: {nobody}");
    for ok in
        ["alice@localhost", "Alice@LOCALHOST", "postmaster@localhost", "PostMaster@LocalHost", "POSTMASTER@LOCALHOST"]
    {
        let l = line(ok);
        assert!(l.contains(" 250 "), "{ok} should be accepted: {l}");
    }
}

#[test]
fn postmaster_mail_is_delivered() {
    let t = Tern::start(USERS);
    let out = t.swaks(&["-f", "sender@example.org", "-t", "PostMaster@localhost"]);
    out.assert_success("swaks to postmaster");
    // Where postmaster mail goes is up to the server; it must land somewhere.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while t.all_delivered().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        t.all_delivered().len(),
        1,
        "postmaster mail not delivered: {:?}\n{}",
        t.all_delivered(),
        t.queue_list().all()
    );
}

#[test]
fn alias_expands_to_two_mailboxes() {
    let t = Tern::start(USERS);
    let out = t.swaks(&["-f", "sender@example.org", "-t", "team@localhost"]);
    out.assert_success("swaks to alias");
    let alice = t.wait_one("localhost", "alice");
    let bob = t.wait_one("localhost", "bob");
    assert!(contains(&alice, b"This is a test mailing"));
    assert!(contains(&bob, b"This is a test mailing"));
    assert!(!t.maildir("localhost", "team").exists());
}

#[test]
fn subaddress_goes_to_the_base_mailbox() {
    let t = Tern::start(USERS);
    let out = t.swaks(&["-f", "sender@example.org", "-t", "alice+news@localhost"]);
    out.assert_success("swaks to alice+news");
    let stored = t.wait_one("localhost", "alice");
    assert!(contains(&stored, b"This is a test mailing"));
    assert!(!t.maildir("localhost", "alice+news").exists());
}

#[test]
fn subaddress_with_accept_unknown() {
    let t = Tern::start(&format!("{LOCAL_OPEN}subaddress_separator = \"+\"\n"));
    let out = t.swaks(&["-f", "sender@example.org", "-t", "Carol+Lists@LocalHost"]);
    out.assert_success("swaks");
    t.wait_one("localhost", "carol");
}

#[test]
fn non_local_domain_is_relay_denied() {
    let t = Tern::start(&format!("{LOCAL_OPEN}{NO_RELAY}"));
    let out = t.py(r#"
s = connect()
s.mail("sender@example.org")
code, msg = s.rcpt("someone@example.com")
print("RCPT", code, msg.decode())
s.quit()
"#);
    out.assert_success("smtplib");
    assert!(out.stdout.contains("RCPT 554 5.7.1"), "non-local domain should get 554 5.7.1:\n{}", out.stdout);
    // swaks agrees, and nothing is queued.
    let out = t.swaks(&["-f", "sender@example.org", "-t", "someone@example.com"]);
    assert!(!out.success(), "swaks should fail:\n{}", out.stdout);
    assert!(out.stdout.contains("554 5.7.1"), "{}", out.stdout);
    assert!(t.all_delivered().is_empty());
}

#[test]
fn too_many_recipients() {
    let t = Tern::start(&format!("{LOCAL_OPEN}\n[limits]\nmax_recipients = 3\n"));
    let out = t.py(r#"
s = connect()
s.mail("sender@example.org")
for i in range(5):
    code, msg = s.rcpt("user%d@localhost" % i)
    print("RCPT", i, code, msg.decode())
code, msg = s.data(b"Subject: many\r\n\r\nmany\r\n")
print("DATA", code, msg.decode())
s.quit()
"#);
    out.assert_success("smtplib");
    for i in 0..3 {
        assert!(out.stdout.contains(&format!("RCPT {i} 250")), "{}", out.stdout);
    }
    for i in 3..5 {
        assert!(
            out.stdout.contains(&format!("RCPT {i} 452 4.5.3")),
            "recipient {i} should get 452 4.5.3:\n{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("DATA 250"), "{}", out.stdout);
    for i in 0..3 {
        t.wait_one("localhost", &format!("user{i}"));
    }
    assert!(!t.maildir("localhost", "user3").exists());
}

#[test]
fn bad_sequence_unknown_command_and_vrfy() {
    let t = Tern::start(LOCAL_OPEN);
    let out = t.py(r#"
s = connect()
def show(tag, r):
    print(tag, r[0], r[1].decode().replace("\n", " | "))
show("RCPT-FIRST", s.docmd("RCPT", "TO:<alice@localhost>"))
show("DATA-FIRST", s.docmd("DATA"))
show("BOGUS", s.docmd("FROBNICATE", "now"))
show("VRFY", s.docmd("VRFY", "alice@localhost"))
show("MAIL", s.docmd("MAIL", "FROM:<sender@example.org>"))
show("MAIL-AGAIN", s.docmd("MAIL", "FROM:<sender@example.org>"))
show("DATA-NORCPT", s.docmd("DATA"))
show("RSET0", s.docmd("RSET"))
show("BADSYNTAX", s.docmd("MAIL", "FROM:sender-without-brackets@@"))
show("NOOP", s.docmd("NOOP"))
show("RSET", s.docmd("RSET"))
show("QUIT", s.docmd("QUIT"))
"#);
    out.assert_success("smtplib");
    let line = |tag: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{tag} ")))
            .unwrap_or_else(|| panic!("no {tag} line:\n{}", out.stdout))
            .to_string()
    };
    assert!(line("RCPT-FIRST").contains(" 503 5.5.1"), "{}", out.stdout);
    assert!(line("DATA-FIRST").contains(" 503 5.5.1"), "{}", out.stdout);
    assert!(line("BOGUS").contains(" 500 5.5.1"), "{}", out.stdout);
    assert!(line("VRFY").contains(" 252 2.5.2"), "{}", out.stdout);
    assert!(line("MAIL").contains(" 250 "), "{}", out.stdout);
    assert!(line("MAIL-AGAIN").contains(" 503 5.5.1"), "{}", out.stdout);
    // RFC 5321 3.3: 503 (bad sequence) or 554 (no valid recipients).
    let data = line("DATA-NORCPT");
    assert!(data.contains(" 503 5.5.1") || data.contains(" 554 5.5.1"), "{}", out.stdout);
    let bad = line("BADSYNTAX");
    assert!(
        bad.contains(" 501 5.") || bad.contains(" 500 5.5.2") || bad.contains(" 553 5.1."),
        "malformed MAIL FROM should be a syntax error: {bad}"
    );
    assert!(line("NOOP").contains(" 250 "), "{}", out.stdout);
    assert!(line("QUIT").contains(" 221 "), "{}", out.stdout);
}

#[test]
fn too_many_bad_commands_closes_the_session() {
    let t = Tern::start(LOCAL_OPEN);
    let mut c = t.raw();
    c.ehlo();
    let mut got_421 = None;
    for i in 1..=12 {
        if c.send(format!("BOGUS{i}\r\n").as_bytes()).is_err() {
            break;
        }
        match c.try_reply(Duration::from_secs(10)) {
            Some(r) if r.code == 421 => {
                assert!(r.has("4.7.0"), "{r:?}");
                got_421 = Some(i);
                break;
            }
            Some(r) => assert_eq!(r.code, 500, "bad command {i}: {r:?}"),
            None => break,
        }
    }
    let n = got_421.expect("no 421 after 12 bad commands");
    assert!((10..=11).contains(&n), "421 came after {n} bad commands, expected after the 10th");
    assert!(c.wait_closed(Duration::from_secs(5)), "connection still open after 421");
}

#[test]
fn max_bad_commands_is_configurable() {
    let t = Tern::start(&format!("{LOCAL_OPEN}\n[limits]\nmax_bad_commands = 3\n"));
    let mut c = t.raw();
    c.ehlo();
    let mut codes = Vec::new();
    for i in 1..=5 {
        if c.send(format!("BOGUS{i}\r\n").as_bytes()).is_err() {
            break;
        }
        match c.try_reply(Duration::from_secs(10)) {
            Some(r) => {
                codes.push(r.code);
                if r.code == 421 {
                    break;
                }
            }
            None => break,
        }
    }
    assert!(codes == vec![500, 500, 421] || codes == vec![500, 500, 500, 421], "replies {codes:?}");
    assert!(c.wait_closed(Duration::from_secs(5)));
}

#[test]
fn idle_client_gets_421_after_command_timeout() {
    let t = Tern::start(&format!("{LOCAL_OPEN}\n[limits]\ncommand_timeout = \"1s\"\n"));
    let mut c = t.raw();
    c.ehlo();
    let started = std::time::Instant::now();
    let r = c.try_reply(Duration::from_secs(10)).expect("no reply after the command timeout");
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.has("4.4.2"), "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(800), "timed out too early: {:?}", started.elapsed());
    assert!(c.wait_closed(Duration::from_secs(5)));
}

#[test]
fn recipient_case_is_folded_for_the_mailbox() {
    let t = Tern::start(USERS);
    let out = t.swaks(&["-f", "sender@example.org", "-t", "ALICE@LocalHost"]);
    out.assert_success("swaks");
    let stored = t.wait_one("localhost", "alice");
    assert!(contains(&stored, b"This is a test mailing"));
    assert_eq!(t.all_delivered().len(), 1);
}

#[test]
fn null_sender_is_accepted() {
    let t = Tern::start(LOCAL_OPEN);
    let out = t.swaks(&["-f", "<>", "-t", "alice@localhost"]);
    out.assert_success("swaks with null sender");
    let stored = t.wait_one("localhost", "alice");
    assert!(stored.starts_with(b"Return-Path: <>\r\n"), "{}", show(&stored));
}

/// Every local part the server accepts must end up as one Maildir directly
/// under `<mail_root>/localhost/`, never anywhere else.
#[test]
fn tricky_local_parts_stay_inside_mail_root() {
    let t = Tern::start(LOCAL_OPEN);
    let out = t.py(r#"
tricky = ['../../escape@localhost', '"../escape"@localhost', '"a/b"@localhost',
          '"..\\/x"@localhost', '".."@localhost', '"."@localhost', '"x/../../y"@localhost',
          '"/etc/passwd"@localhost', '"nul\\\x00"@localhost', 'tmp@localhost',
          '"new"@localhost', '"-rf"@localhost', '"~root"@localhost']
for r in tricky:
    s = connect()
    s.mail("sender@example.org")
    code, msg = s.docmd("RCPT", "TO:<%s>" % r)
    line = "RCPT %s %d" % (r, code)
    if code == 250:
        s.docmd("RCPT", "TO:<witness@localhost>")
        code, msg = s.data(b"Subject: tricky\r\n\r\ntricky\r\n")
        line += " DATA %d" % code
    print(line)
    try:
        s.quit()
    except Exception:
        pass
"#);
    out.assert_success("smtplib");
    let accepted = out.stdout.lines().filter(|l| l.contains(" DATA 250")).count();
    if accepted > 0 {
        // Wait for the witness copies: by then the tricky ones were tried too.
        t.wait_mail("localhost", "witness", accepted);
        std::thread::sleep(Duration::from_secs(1));
    }
    let root = t.mail_root().join("localhost");
    for f in t.all_delivered() {
        let rel = f
            .strip_prefix(&root)
            .unwrap_or_else(|_| panic!("mail file outside {}: {}\n{}", root.display(), f.display(), out.stdout));
        assert_eq!(rel.components().count(), 3, "unexpected mail file location {}", f.display());
    }
    // Nothing was written next to the data directory.
    let mut names: Vec<String> =
        std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for n in &names {
        assert!(
            ["data", "tern.toml", "extra.toml", "tern.stdout.log", "tern.stderr.log"].contains(&n.as_str()),
            "unexpected file {n} in the test directory: {names:?}"
        );
    }
}

/// A quoted local part the server accepts has to be deliverable.
#[test]
fn accepted_quoted_local_part_is_delivered() {
    let t = Tern::start(&format!("{LOCAL_OPEN}\n[queue]\nretry = [\"1s\"]\n"));
    let out = t.py(r#"
s = connect()
s.mail("sender@example.org")
code, msg = s.docmd("RCPT", 'TO:<"john smith"@localhost>')
print("RCPT", code, msg.decode())
if code == 250:
    print("DATA", s.data(b"Subject: quoted\r\n\r\nquoted\r\n")[0])
s.quit()
"#);
    out.assert_success("smtplib");
    if !out.stdout.contains("RCPT 250") {
        // Refusing such addresses is allowed.
        assert!(out.stdout.contains("RCPT 5"), "{}", out.stdout);
        return;
    }
    assert!(out.stdout.contains("DATA 250"), "{}", out.stdout);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while t.all_delivered().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        t.all_delivered().len(),
        1,
        "\"john smith\"@localhost was accepted but not delivered:\n{}",
        t.queue_list().all()
    );
}
