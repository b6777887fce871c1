//! Receiving mail with real clients and delivering it to local Maildirs.

mod common;

use common::*;
use std::fs;
use std::time::Duration;

const SENDER: &str = "sender@example.org";

fn message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Sender <{SENDER}>\r\nTo: alice@localhost\r\nSubject: {subject}\r\nMessage-ID: <{}@example.org>\r\n\r\n{body}",
        subject.replace(' ', "-")
    )
    .into_bytes()
}

/// Writes `msg` to `<tempdir>/<name>` and returns its path as a string.
fn write_msg(t: &Tern, name: &str, msg: &[u8]) -> String {
    let p = t.path().join(name);
    fs::write(&p, msg).expect("write message file");
    p.display().to_string()
}

#[test]
fn swaks_message_lands_in_maildir() {
    let t = Tern::start(LOCAL_OPEN);
    // No final line break: swaks ends the data with CRLF . CRLF itself.
    let msg = message("swaks plain", "Hello from swaks.\r\nSecond line.");
    let file = write_msg(&t, "msg.eml", &msg);
    let out = t.swaks(&["-f", SENDER, "-t", "alice@localhost", "--data", &format!("@{file}")]);
    out.assert_success("swaks");
    assert!(out.stdout.contains("250 2.0.0 Ok: queued as "), "no queued reply in swaks output:\n{}", out.stdout);
    let id = queue_id(&out.stdout).expect("queue id in swaks output");
    assert!(is_queue_id(&id), "queue id {id:?} is not 16 upper-case hex");

    let stored = t.wait_one("localhost", "alice");
    let mut sent = msg.clone();
    sent.extend_from_slice(b"\r\n");
    let headers = assert_delivered(&stored, SENDER, &sent);
    assert!(headers.contains(&format!("id {id}")), "Received header does not name queue id {id}:\n{headers}");
    assert!(
        headers.lines().any(|l| l.starts_with("Delivered-To:") && l.contains("alice@localhost")),
        "no Delivered-To header:\n{headers}"
    );
}

#[test]
fn smtplib_message_lands_in_maildir() {
    let t = Tern::start(LOCAL_OPEN);
    let msg = message("smtplib plain", "Hello from Python.\r\n\r\nThird line.\r\n");
    write_msg(&t, "msg.eml", &msg);
    let out = t.py(r#"
s = connect()
msg = open(os.path.join(DIR, "msg.eml"), "rb").read()
print(send(s, "sender@example.org", ["alice@localhost"], msg))
s.quit()
"#);
    out.assert_success("python smtplib");
    let id = queue_id(&out.stdout).expect("queue id in the DATA reply");
    assert!(is_queue_id(&id), "queue id {id:?}");
    assert!(out.stdout.starts_with("2.0.0 Ok: queued as "), "{}", out.stdout);
    let stored = t.wait_one("localhost", "alice");
    let headers = assert_delivered(&stored, SENDER, &msg);
    assert!(headers.contains(&format!("id {id}")), "{headers}");
    // Nothing else was delivered anywhere.
    assert_eq!(t.all_delivered().len(), 1, "{:?}", t.all_delivered());
}

#[test]
fn curl_message_lands_in_maildir() {
    let t = Tern::start(LOCAL_OPEN);
    let msg = message("curl plain", "Hello from curl.\r\n");
    let file = write_msg(&t, "msg.eml", &msg);
    let out = t.curl(&[&t.smtp_url(), "--mail-from", SENDER, "--mail-rcpt", "alice@localhost", "--upload-file", &file]);
    out.assert_success("curl smtp://");
    let stored = t.wait_one("localhost", "alice");
    assert_delivered(&stored, SENDER, &msg);
}

#[test]
fn msmtp_message_lands_in_maildir() {
    let t = Tern::start(LOCAL_OPEN);
    let msg = message("msmtp plain", "Hello from msmtp.\r\n");
    let mut cmd = std::process::Command::new("msmtp");
    cmd.args([
        "-C",
        "/dev/null",
        "--host=127.0.0.1",
        &format!("--port={}", t.port),
        "--auth=off",
        "--tls=off",
        &format!("--from={SENDER}"),
        "--",
        "alice@localhost",
    ]);
    let out = run_with_input(cmd, Some(&msg), CLIENT_TIMEOUT);
    out.assert_success("msmtp");
    let stored = t.wait_one("localhost", "alice");
    // msmtp may add Date/Message-ID headers; the body must be intact.
    assert!(stored.starts_with(format!("Return-Path: <{SENDER}>\r\n").as_bytes()));
    assert!(stored.ends_with(b"\r\n\r\nHello from msmtp.\r\n"), "{}", show(&stored));
}

#[test]
fn swaks_pipelining() {
    let t = Tern::start(LOCAL_OPEN);
    let msg = message("pipelined", "Sent with PIPELINING.");
    let file = write_msg(&t, "msg.eml", &msg);
    let out =
        t.swaks(&["--pipeline", "-f", SENDER, "-t", "alice@localhost,bob@localhost", "--data", &format!("@{file}")]);
    out.assert_success("swaks --pipeline");
    assert!(out.stdout.contains("PIPELINING"), "{}", out.stdout);
    let mut sent = msg.clone();
    sent.extend_from_slice(b"\r\n");
    assert_delivered(&t.wait_one("localhost", "alice"), SENDER, &sent);
    assert_delivered(&t.wait_one("localhost", "bob"), SENDER, &sent);
}

#[test]
fn raw_pipelined_batch_gets_ordered_replies() {
    let t = Tern::start(&format!("{LOCAL_OPEN}{NO_RELAY}{NO_AUTH_CHECKS}"));
    let mut c = t.raw();
    let ehlo = c.ehlo();
    assert!(ehlo.has("PIPELINING"), "{ehlo:?}");
    c.send(
        b"MAIL FROM:<sender@example.org>\r\n\
          RCPT TO:<alice@localhost>\r\n\
          RCPT TO:<someone@elsewhere.test>\r\n\
          RCPT TO:<bob@localhost>\r\n\
          DATA\r\n",
    )
    .unwrap();
    let codes: Vec<u16> = (0..5).map(|_| c.reply().code).collect();
    assert_eq!(codes, vec![250, 250, 554, 250, 354]);
    c.send(b"Subject: batch\r\n\r\nbatched\r\n.\r\n").unwrap();
    let r = c.reply();
    assert_eq!(r.code, 250, "{r:?}");
    assert!(r.has("2.0.0") && queue_id(&r.text()).is_some(), "{r:?}");
    c.send(b"RSET\r\nNOOP\r\nQUIT\r\n").unwrap();
    let codes: Vec<u16> = (0..3).map(|_| c.reply().code).collect();
    assert_eq!(codes, vec![250, 250, 221]);
    let sent = b"Subject: batch\r\n\r\nbatched\r\n";
    assert_delivered(&t.wait_one("localhost", "alice"), SENDER, sent);
    assert_delivered(&t.wait_one("localhost", "bob"), SENDER, sent);
}

#[test]
fn bdat_chunks() {
    let t = Tern::start(LOCAL_OPEN);
    let mut c = t.raw();
    assert!(c.ehlo().has("CHUNKING"));
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    // BDAT content is binary-exact: no dot-unstuffing, no terminator.
    let part1: &[u8] = b"Subject: chunked\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n";
    let part2: &[u8] = b"\r\n.\r\nMAIL FROM:<x@y>\r\nend of chunked body\r\n";
    let mut cmd1 = format!("BDAT {}\r\n", part1.len()).into_bytes();
    cmd1.extend_from_slice(part1);
    c.send(&cmd1).unwrap();
    let r = c.reply();
    assert_eq!(r.code, 250, "first BDAT chunk: {r:?}");
    let mut cmd2 = format!("BDAT {} LAST\r\n", part2.len()).into_bytes();
    cmd2.extend_from_slice(part2);
    c.send(&cmd2).unwrap();
    let r = c.reply();
    assert_eq!(r.code, 250, "BDAT LAST: {r:?}");
    assert!(queue_id(&r.text()).is_some(), "{r:?}");
    assert_eq!(c.cmd("QUIT").code, 221);
    let mut sent = part1.to_vec();
    sent.extend_from_slice(part2);
    assert_delivered(&t.wait_one("localhost", "alice"), SENDER, &sent);
}

#[test]
fn bdat_pipelined_chunks_and_empty_last() {
    let t = Tern::start(LOCAL_OPEN);
    let mut c = t.raw();
    c.ehlo();
    let part1: &[u8] = b"Subject: chunk zero\r\n\r\n";
    let part2: &[u8] = b"body in a second chunk\r\n";
    let mut batch = b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<alice@localhost>\r\n".to_vec();
    batch.extend_from_slice(format!("BDAT {}\r\n", part1.len()).as_bytes());
    batch.extend_from_slice(part1);
    batch.extend_from_slice(format!("BDAT {}\r\n", part2.len()).as_bytes());
    batch.extend_from_slice(part2);
    batch.extend_from_slice(b"BDAT 0 LAST\r\n");
    c.send(&batch).unwrap();
    let replies: Vec<Reply> = (0..5).map(|_| c.reply()).collect();
    let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
    assert_eq!(codes, vec![250, 250, 250, 250, 250], "{replies:?}");
    assert!(queue_id(&replies[4].text()).is_some(), "{replies:?}");
    assert_eq!(c.cmd("QUIT").code, 221);
    let mut sent = part1.to_vec();
    sent.extend_from_slice(part2);
    assert_delivered(&t.wait_one("localhost", "alice"), SENDER, &sent);
}

#[test]
fn smtputf8_address_gets_a_mailbox() {
    let t = Tern::start(LOCAL_OPEN);
    let msg = "From: Sender <sender@example.org>\r\nTo: jösé@localhost\r\nSubject: Grüße\r\n\r\nÜnïcödé body ✓\r\n"
        .as_bytes()
        .to_vec();
    write_msg(&t, "msg.eml", &msg);
    let out = t.py(r#"
s = connect()
if not s.has_extn("smtputf8"):
    raise SystemExit("no SMTPUTF8 in EHLO")
msg = open(os.path.join(DIR, "msg.eml"), "rb").read()
print(send(s, "sender@example.org", ["jösé@localhost"], msg, ["SMTPUTF8", "BODY=8BITMIME"]))
s.quit()
"#);
    out.assert_success("smtplib SMTPUTF8");
    let stored = t.wait_one("localhost", "jösé");
    let headers = assert_delivered(&stored, SENDER, &msg);
    assert!(headers.contains("jösé@localhost"), "{headers}");
}

#[test]
fn eight_bit_body_is_kept_byte_for_byte() {
    let t = Tern::start(LOCAL_OPEN);
    let mut msg =
        b"Subject: 8bit\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            .to_vec();
    // Latin-1 (not valid UTF-8), UTF-8, and every byte 0x80..=0xFF.
    msg.extend_from_slice(b"caf\xe9 na\xefve \xa9\r\n");
    msg.extend_from_slice("UTF-8: żółw 😀\r\n".as_bytes());
    let high: Vec<u8> = (0x80..=0xFFu8).collect();
    for chunk in high.chunks(32) {
        msg.extend_from_slice(chunk);
        msg.extend_from_slice(b"\r\n");
    }
    msg.extend_from_slice(b"\t tabs and spaces \t\r\n");
    write_msg(&t, "msg.eml", &msg);
    let out = t.py(r#"
s = connect()
if not s.has_extn("8bitmime"):
    raise SystemExit("no 8BITMIME in EHLO")
msg = open(os.path.join(DIR, "msg.eml"), "rb").read()
print(send(s, "sender@example.org", ["alice@localhost"], msg, ["BODY=8BITMIME"]))
s.quit()
"#);
    out.assert_success("smtplib BODY=8BITMIME");
    assert_delivered(&t.wait_one("localhost", "alice"), SENDER, &msg);
}

const DOTTY_BODY: &str =
    ".\r\n..\r\n...\r\n.leading\r\n..double\r\n.\r\nmiddle . line\r\n \r\n.\r\n. \r\n.x.\r\nlast line\r\n.\r\n";

#[test]
fn dot_stuffing_round_trip_smtplib() {
    let t = Tern::start(LOCAL_OPEN);
    let mut msg = b"Subject: dots\r\n\r\n".to_vec();
    msg.extend_from_slice(DOTTY_BODY.as_bytes());
    write_msg(&t, "msg.eml", &msg);
    let out = t.py(r#"
s = connect()
msg = open(os.path.join(DIR, "msg.eml"), "rb").read()
print(send(s, "sender@example.org", ["alice@localhost"], msg))
s.quit()
"#);
    out.assert_success("smtplib");
    assert_delivered(&t.wait_one("localhost", "alice"), SENDER, &msg);
}

#[test]
fn dot_stuffing_round_trip_curl() {
    let t = Tern::start(LOCAL_OPEN);
    let mut msg = b"Subject: dots via curl\r\n\r\n".to_vec();
    msg.extend_from_slice(DOTTY_BODY.as_bytes());
    let file = write_msg(&t, "msg.eml", &msg);
    let out = t.curl(&[&t.smtp_url(), "--mail-from", SENDER, "--mail-rcpt", "alice@localhost", "--upload-file", &file]);
    out.assert_success("curl");
    assert_delivered(&t.wait_one("localhost", "alice"), SENDER, &msg);
}

#[test]
fn empty_body_and_message_starting_with_dot() {
    let t = Tern::start(LOCAL_OPEN);
    // The first line of the content starts with a dot (stuffed by the client).
    let msg = b".Subject-like first line\r\n\r\n".to_vec();
    write_msg(&t, "msg.eml", &msg);
    let out = t.py(r#"
s = connect()
msg = open(os.path.join(DIR, "msg.eml"), "rb").read()
print(send(s, "sender@example.org", ["alice@localhost"], msg))
s.quit()
"#);
    out.assert_success("smtplib");
    assert_delivered(&t.wait_one("localhost", "alice"), SENDER, &msg);
}

#[test]
fn twenty_mib_message_is_delivered_intact() {
    let t = Tern::start(&format!("{LOCAL_OPEN}\n[limits]\nmax_message_size = 31457280\n"));
    // Python builds the message (about 20 MiB, some lines starting with a
    // dot), keeps a copy, and sends it.
    let out = t.py_within(
        r#"
import random
rnd = random.Random(20)
alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/ .,;"
lines = [b"From: sender@example.org", b"To: alice@localhost", b"Subject: big", b""]
size = 0
i = 0
while size < 20 * 1024 * 1024:
    line = bytes(rnd.choice(alphabet) for _ in range(16)) * 5
    if i % 97 == 0:
        line = b"." + line
    lines.append(line)
    size += len(line) + 2
    i += 1
msg = b"\r\n".join(lines) + b"\r\n"
open(os.path.join(DIR, "big.eml"), "wb").write(msg)
s = connect()
s.sock.settimeout(120)
print(send(s, "sender@example.org", ["alice@localhost"], msg))
s.quit()
"#,
        Duration::from_secs(240),
    );
    out.assert_success("smtplib 20 MiB");
    let sent = fs::read(t.path().join("big.eml")).unwrap();
    assert!(sent.len() >= 20 * 1024 * 1024);
    let stored = t.wait_mail_within("localhost", "alice", 1, Duration::from_secs(120)).pop().unwrap();
    assert!(
        stored.ends_with(&sent),
        "20 MiB message changed: stored {} bytes, sent {} bytes",
        stored.len(),
        sent.len()
    );
    assert!(stored.starts_with(format!("Return-Path: <{SENDER}>\r\n").as_bytes()));
}

#[test]
fn size_parameter_too_big_is_refused_at_mail() {
    let t = Tern::start(&format!("{LOCAL_OPEN}\n[limits]\nmax_message_size = 10000\n"));
    let out = t.py(r#"
s = connect()
print("SIZE", s.esmtp_features.get("size"))
msg = b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n"
msg = msg * 200
try:
    s.sendmail("sender@example.org", ["alice@localhost"], msg)
    print("ACCEPTED")
except smtplib.SMTPSenderRefused as e:
    print("REFUSED", e.smtp_code, e.smtp_error.decode())
print("NOOP", s.noop()[0])
s.quit()
"#);
    out.assert_success("smtplib");
    assert!(out.stdout.contains("SIZE 10000"), "{}", out.stdout);
    assert!(out.stdout.contains("REFUSED 552 5.3.4"), "expected 552 5.3.4 at MAIL:\n{}", out.stdout);
    assert!(out.stdout.contains("NOOP 250"), "{}", out.stdout);
    assert_eq!(t.settled_count("localhost", "alice"), 0);
}

#[test]
fn oversized_data_is_refused_and_session_goes_on() {
    let t = Tern::start(&format!("{LOCAL_OPEN}\n[limits]\nmax_message_size = 10000\n"));
    let mut c = t.raw();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    let mut body = b"Subject: too big\r\n\r\n".to_vec();
    for i in 0..400 {
        body.extend_from_slice(format!("line {i:04} of a message that is too large ........\r\n").as_bytes());
        if i % 50 == 0 {
            // Command-looking lines that must never be executed.
            body.extend_from_slice(b"RSET\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@localhost>\r\nQUIT\r\n");
        }
    }
    body.extend_from_slice(b".\r\n");
    c.send(&body).unwrap();
    let r = c.reply();
    assert_eq!(r.code, 552, "{r:?}");
    assert!(r.has("5.3.4"), "{r:?}");
    // The next command gets exactly its own reply.
    let r = c.cmd("NOOP");
    assert_eq!(r.code, 250, "{r:?}");
    assert!(c.try_reply(Duration::from_millis(300)).is_none(), "extra reply");
    // A fresh transaction works.
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: small\r\n\r\nsmall\r\n.\r\n").unwrap();
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.cmd("QUIT").code, 221);
    let stored = t.wait_one("localhost", "alice");
    assert_delivered(&stored, SENDER, b"Subject: small\r\n\r\nsmall\r\n");
    assert_eq!(t.settled_count("localhost", "bob"), 0);
    assert_eq!(t.all_delivered().len(), 1);
}

#[test]
fn oversized_bdat_is_refused_and_session_goes_on() {
    let t = Tern::start(&format!("{LOCAL_OPEN}\n[limits]\nmax_message_size = 2000\n"));
    let mut c = t.raw();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    // The chunk holds command-looking lines; they are data, never commands.
    let mut chunk = Vec::new();
    while chunk.len() < 6000 {
        chunk.extend_from_slice(b"QUIT\r\nRSET\r\nMAIL FROM:<evil@example.org>\r\n");
    }
    let mut cmd = format!("BDAT {} LAST\r\n", chunk.len()).into_bytes();
    cmd.extend_from_slice(&chunk);
    c.send(&cmd).unwrap();
    let r = c.reply();
    assert_eq!(r.code, 552, "{r:?}");
    assert!(r.has("5.3.4"), "{r:?}");
    let r = c.cmd("NOOP");
    assert_eq!(r.code, 250, "{r:?}");
    assert!(c.try_reply(Duration::from_millis(300)).is_none(), "extra reply");
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 503);
    assert_eq!(c.cmd("QUIT").code, 221);
    assert_eq!(t.settled_count("localhost", "alice"), 0);
}

#[test]
fn size_limit_boundary_at_mail() {
    let t = Tern::start(&format!("{LOCAL_OPEN}\n[limits]\nmax_message_size = 5000\n"));
    let out = t.py(r#"
s = connect()
print("EQ", s.mail("sender@example.org", ["SIZE=5000"])[0])
s.rset()
code, msg = s.mail("sender@example.org", ["SIZE=5001"])
print("OVER", code, msg.decode())
s.quit()
"#);
    out.assert_success("smtplib");
    assert!(out.stdout.contains("EQ 250"), "{}", out.stdout);
    assert!(out.stdout.contains("OVER 552 5.3.4"), "{}", out.stdout);
}

#[test]
fn concurrent_clients_are_all_delivered() {
    let t = Tern::start(LOCAL_OPEN);
    let out = t.py_within(
        r#"
import threading
errors = []
def client(n):
    try:
        s = connect()
        for i in range(5):
            msg = ("Subject: concurrent %d-%d\r\n\r\nbody %d-%d\r\n" % (n, i, n, i)).encode()
            send(s, "sender@example.org", ["user%d@localhost" % (n % 5)], msg)
        s.quit()
    except BaseException as e:
        errors.append("%d: %r" % (n, e))
threads = [threading.Thread(target=client, args=(n,)) for n in range(40)]
for th in threads:
    th.start()
for th in threads:
    th.join(60)
print("errors", errors)
"#,
        Duration::from_secs(90),
    );
    out.assert_success("concurrent smtplib clients");
    assert!(out.stdout.contains("errors []"), "{}", out.stdout);
    for u in 0..5 {
        let mails = t.wait_mail_within("localhost", &format!("user{u}"), 40, Duration::from_secs(60));
        assert_eq!(mails.len(), 40, "user{u}");
    }
}

#[test]
fn duplicate_esmtp_parameters_are_refused() {
    let t = Tern::start(LOCAL_OPEN);
    let mut c = t.raw();
    c.ehlo();
    let r = c.cmd("MAIL FROM:<sender@example.org> SIZE=10 SIZE=20");
    assert_eq!(r.code, 501, "{r:?}");
    assert!(r.has("5.5.4"), "{r:?}");
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org> SIZE=20").code, 250);
    let r = c.cmd("RCPT TO:<alice@localhost> NOTIFY=NEVER NOTIFY=SUCCESS");
    assert_eq!(r.code, 501, "{r:?}");
    assert!(r.has("5.5.4"), "{r:?}");
    assert_eq!(c.cmd("RCPT TO:<bob@localhost> NOTIFY=NEVER").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: dup\r\n\r\nbody\r\n.\r\n").unwrap();
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.cmd("QUIT").code, 221);
    t.wait_one("localhost", "bob");
    assert_eq!(t.settled_count("localhost", "alice"), 0, "the refused recipient got mail");
}
