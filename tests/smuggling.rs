//! Protocol violations no well-behaved client produces: SMTP smuggling,
//! bare CR/LF, pipelining abuse and overlong command lines. These use a
//! plain TCP socket on purpose.

mod common;

use common::*;
use std::time::Duration;

const SMUGGLED: &[u8] =
    b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n";

/// Sends one message whose body holds `fake_end` followed by a smuggled
/// transaction, then the real terminator. Never may two messages result.
fn smuggle(fake_end: &[u8]) {
    let t = Tern::start(LOCAL_OPEN);
    let mut c = t.raw();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    let mut data = b"Subject: smuggle test\r\n\r\nfirst part".to_vec();
    data.extend_from_slice(fake_end);
    data.extend_from_slice(SMUGGLED);
    data.extend_from_slice(b"\r\n.\r\n");
    c.send(&data).unwrap();
    // Wait for the verdict on the message, then for anything else the
    // server might say (a smuggled transaction would answer quickly).
    let mut replies = c.replies_until(|r| r.code >= 250, Duration::from_secs(15), Duration::from_secs(1));
    if !c.closed && c.send(b"QUIT\r\n").is_ok() {
        replies.extend(c.replies_until(|r| r.code == 221, Duration::from_secs(10), Duration::from_millis(200)));
    }
    let what = format!("fake end {:?}: replies {replies:?}", String::from_utf8_lossy(fake_end));
    let queued = replies.iter().filter(|r| r.code == 250 && r.has("queued as")).count();
    assert!(queued <= 1, "more than one message accepted; {what}");
    assert!(!replies.iter().any(|r| r.code == 354), "smuggled DATA got 354; {what}");
    let refused_bare_cr = replies.iter().any(|r| r.code == 550 && r.has("5.6.0"));
    assert_eq!(t.settled_count("localhost", "bob"), 0, "smuggled recipient got mail; {what}");
    if refused_bare_cr {
        assert!(has_bare_cr(fake_end), "550 5.6.0 without a bare CR; {what}");
        assert_eq!(queued, 0, "{what}");
        assert_eq!(t.settled_count("localhost", "alice"), 0, "{what}");
    } else {
        assert_eq!(queued, 1, "message neither accepted nor refused; {what}");
        let stored = t.wait_one("localhost", "alice");
        assert!(
            contains(&stored, b"MAIL FROM:<evil@example.org>") && contains(&stored, b"smuggled body"),
            "smuggled text is not part of the stored body; {what}\n{}",
            show(&stored)
        );
        assert_eq!(t.settled_count("localhost", "alice"), 1, "{what}");
    }
    assert_eq!(t.all_delivered().len(), usize::from(!refused_bare_cr), "{what}");
}

/// A CR not followed by LF.
fn has_bare_cr(b: &[u8]) -> bool {
    b.iter().enumerate().any(|(i, &c)| c == b'\r' && b.get(i + 1) != Some(&b'\n'))
}

#[test]
fn smuggling_lf_dot_lf() {
    smuggle(b"\n.\n");
}

#[test]
fn smuggling_crlf_dot_lf() {
    smuggle(b"\r\n.\n");
}

#[test]
fn smuggling_lf_dot_crlf() {
    smuggle(b"\n.\r\n");
}

#[test]
fn smuggling_cr_dot_cr() {
    smuggle(b"\r.\r");
}

#[test]
fn smuggling_crlf_dot_cr() {
    smuggle(b"\r\n.\r");
}

#[test]
fn smuggling_cr_dot_crlf() {
    smuggle(b"\r.\r\n");
}

#[test]
fn bare_lf_in_body_is_normalised_to_crlf() {
    let t = Tern::start(LOCAL_OPEN);
    let mut c = t.raw();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: lf\n\nline one\nline two\r\n.\r\n").unwrap();
    let r = c.reply();
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(c.cmd("QUIT").code, 221);
    let stored = t.wait_one("localhost", "alice");
    assert_delivered(&stored, "sender@example.org", b"Subject: lf\r\n\r\nline one\r\nline two\r\n");
}

#[test]
fn bare_cr_in_body_is_refused() {
    let t = Tern::start(LOCAL_OPEN);
    let mut c = t.raw();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: cr\r\n\r\nbare\rcarriage return\r\n.\r\n").unwrap();
    let r = c.reply();
    assert_eq!(r.code, 550, "{r:?}");
    assert!(r.has("5.6.0"), "{r:?}");
    // The session goes on.
    assert_eq!(c.cmd("NOOP").code, 250);
    assert_eq!(c.cmd("QUIT").code, 221);
    assert!(t.all_delivered().is_empty());
}

#[test]
fn data_pipelined_with_content_is_refused() {
    let t = Tern::start(LOCAL_OPEN);
    let mut c = t.raw();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    c.send(b"DATA\r\nSubject: early\r\n\r\nsent before 354\r\n.\r\nQUIT\r\n").unwrap();
    let replies = c.replies_until(|r| r.code == 554, Duration::from_secs(10), Duration::from_millis(500));
    assert!(replies.iter().any(|r| r.code == 554), "expected 554 for content before 354: {replies:?}");
    assert!(replies.iter().any(|r| r.code == 554 && r.has("5.5.0")), "554 without 5.5.0: {replies:?}");
    assert!(!replies.iter().any(|r| r.code == 250), "message accepted: {replies:?}");
    assert!(c.wait_closed(Duration::from_secs(5)), "connection not closed");
    assert_eq!(t.settled_count("localhost", "alice"), 0);
}

#[test]
fn whole_transaction_in_one_write_is_refused() {
    let t = Tern::start(LOCAL_OPEN);
    let mut c = t.raw();
    c.ehlo();
    c.send(
        b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\nSubject: early\r\n\r\nbody\r\n.\r\n",
    )
    .unwrap();
    let replies = c.replies_until(|r| r.code == 554, Duration::from_secs(10), Duration::from_millis(500));
    assert!(replies.iter().any(|r| r.code == 554), "expected 554: {replies:?}");
    assert!(!replies.iter().any(|r| r.has("queued as")), "{replies:?}");
    assert!(c.wait_closed(Duration::from_secs(5)));
    assert!(t.all_delivered().is_empty());
}

#[test]
fn command_line_of_1000_octets_is_accepted() {
    let t = Tern::start(LOCAL_OPEN);
    let mut c = t.raw();
    c.ehlo();
    // 998 octets of text + CRLF = the RFC 5321 maximum.
    let line = format!("NOOP {}", "a".repeat(998 - 5));
    let r = c.cmd(&line);
    assert_eq!(r.code, 250, "{r:?}");
}

#[test]
fn overlong_command_line_is_refused_and_not_executed() {
    let t = Tern::start(LOCAL_OPEN);
    let mut c = t.raw();
    c.ehlo();
    // 999 octets + CRLF: one octet too long.
    let r = c.cmd(&format!("NOOP {}", "a".repeat(999 - 5)));
    assert_eq!(r.code, 500, "{r:?}");
    assert!(r.has("5.5.2"), "{r:?}");
    // A long line whose tail looks like a command: the tail must not run.
    let mut line = format!("NOOP {}", "b".repeat(1100)).into_bytes();
    line.extend_from_slice(b"MAIL FROM:<evil@example.org>\r\n");
    c.send(&line).unwrap();
    let r = c.reply();
    assert_eq!(r.code, 500, "{r:?}");
    assert!(r.has("5.5.2"), "{r:?}");
    assert!(c.try_reply(Duration::from_millis(500)).is_none(), "more than one reply to one overlong line");
    let r = c.cmd("RCPT TO:<alice@localhost>");
    assert_eq!(r.code, 503, "MAIL FROM from the line's tail was executed: {r:?}");
    // A 64 KiB line does not break the session either.
    let mut huge = vec![b'c'; 64 * 1024];
    huge.extend_from_slice(b"\r\n");
    c.send(&huge).unwrap();
    let r = c.reply();
    assert_eq!(r.code, 500, "{r:?}");
    assert_eq!(c.cmd("NOOP").code, 250);
    assert_eq!(c.cmd("QUIT").code, 221);
}

#[test]
fn bare_lf_in_command_line_is_refused() {
    let t = Tern::start(LOCAL_OPEN);
    let mut c = t.raw();
    c.ehlo();
    c.send(b"MAIL FROM:<sender@example.org>\nRCPT TO:<alice@localhost>\r\n").unwrap();
    let replies = c.replies_until(|_| true, Duration::from_secs(10), Duration::from_millis(800));
    assert!(!replies.is_empty(), "no reply");
    assert_eq!(replies[0].code, 500, "{replies:?}");
    assert!(replies[0].has("5.5.2"), "{replies:?}");
    assert!(replies.iter().all(|r| r.code >= 500), "part of a bare-LF line was accepted: {replies:?}");
    assert_eq!(c.cmd("NOOP").code, 250);
}

#[test]
fn bare_cr_in_command_line_is_refused() {
    let t = Tern::start(LOCAL_OPEN);
    let mut c = t.raw();
    c.ehlo();
    c.send(b"MAIL FROM:<sender@example.org>\rRCPT TO:<alice@localhost>\r\n").unwrap();
    let replies = c.replies_until(|_| true, Duration::from_secs(10), Duration::from_millis(800));
    assert!(!replies.is_empty(), "no reply");
    assert_eq!(replies[0].code, 500, "{replies:?}");
    assert!(replies[0].has("5.5.2"), "{replies:?}");
    assert!(replies.iter().all(|r| r.code >= 500), "part of a bare-CR line was accepted: {replies:?}");
    assert_eq!(c.cmd("NOOP").code, 250);
}

/// Non-ASCII bytes where ASCII keywords are expected (`<postmaster>` is
/// matched by length): a clean refusal, and the session and server live on.
#[test]
fn multibyte_character_in_rcpt_keyword_position() {
    let t = Tern::start(LOCAL_OPEN);
    for arg in ["TO:<postmaste\u{20ac}@x.test>", "TO:12345678901\u{e9}", "TO:<AUTH \"a b\\\u{e9}\"@[127.1]>"] {
        let mut c = t.raw();
        c.ehlo();
        assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").code, 250);
        c.send(format!("RCPT {arg}\r\n").as_bytes()).unwrap();
        let r = c.try_reply(Duration::from_secs(5));
        assert!(
            r.as_ref().is_some_and(|r| (500..600).contains(&r.code)),
            "RCPT {arg:?}: expected a 5xx reply, got {r:?} (connection closed: {})",
            c.closed
        );
        assert_eq!(c.cmd("RSET").code, 250, "session broken after RCPT {arg:?}");
    }
    // The server still serves new sessions.
    let out = t.swaks(&["-f", "sender@example.org", "-t", "alice@localhost"]);
    out.assert_success("swaks after hostile input");
    t.wait_one("localhost", "alice");
}
