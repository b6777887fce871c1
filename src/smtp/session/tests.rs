//! The session driven in memory, without sockets.

use super::*;

struct Driver {
    session: Session,
    messages: Vec<Message>,
    closed: bool,
}

impl Driver {
    fn new() -> Driver {
        let config = SessionConfig {
            hostname: "mx.test".into(),
            max_message_size: 1000,
            max_recipients: 3,
            max_bad_commands: 8,
        };
        Driver { session: Session::new(config), messages: Vec::new(), closed: false }
    }

    /// Feeds `input` and returns the replies as `code status` strings; recipients whose
    /// local part is `unknown` are refused, messages are "queued" as Q1, Q2, ….
    fn send(&mut self, input: &[u8]) -> Vec<String> {
        self.session.receive(input);
        let mut replies = Vec::new();
        while let Some(event) = self.session.poll() {
            match event {
                Event::Reply(r) => replies.push(match r.status {
                    Some(s) => format!("{} {s}", r.code),
                    None => r.code.to_string(),
                }),
                Event::Close => self.closed = true,
                Event::Check(Check::Mail { .. }) => self.session.answer_mail(Ok(())),
                Event::Check(Check::Rcpt { to, .. }) => {
                    let verdict = if to.local == "unknown" {
                        Err(Reply::new(550, (5, 1, 1), "User unknown"))
                    } else {
                        Ok(vec![to.to_string()])
                    };
                    self.session.answer_rcpt(verdict)
                }
                Event::Check(Check::Message(m)) => {
                    self.messages.push(*m);
                    self.session.answer_message(Ok(format!("Q{}", self.messages.len())));
                }
            }
        }
        replies
    }

    fn greeted() -> Driver {
        let mut d = Driver::new();
        assert_eq!(d.send(b"EHLO client.test\r\n"), ["250"]);
        d
    }
}

#[test]
fn plain_transaction() {
    let mut d = Driver::greeted();
    assert_eq!(d.send(b"MAIL FROM:<a@x.test>\r\n"), ["250 2.1.0"]);
    assert_eq!(d.send(b"RCPT TO:<b@y.test>\r\n"), ["250 2.1.5"]);
    assert_eq!(d.send(b"DATA\r\n"), ["354 2.0.0"]);
    assert_eq!(d.send(b"Subject: hi\r\n\r\n..dot\r\n.\r\n"), ["250 2.0.0"]);
    assert_eq!(d.messages[0].content, b"Subject: hi\r\n\r\n.dot\r\n");
    assert_eq!(d.messages[0].rcpts[0].routes, ["b@y.test"]);
    assert_eq!(d.send(b"QUIT\r\n"), ["221 2.0.0"]);
    assert!(d.closed);
}

#[test]
fn pipelined_commands_get_ordered_replies() {
    let mut d = Driver::greeted();
    let r = d.send(
        b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<unknown@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n",
    );
    assert_eq!(r, ["250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5", "354 2.0.0"]);
    d.send(b"x\r\n.\r\n");
    assert_eq!(d.messages[0].rcpts.len(), 2);
}

#[test]
fn content_before_354_closes() {
    let mut d = Driver::greeted();
    let r = d.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n");
    assert_eq!(r, ["250 2.1.0", "250 2.1.5", "554 5.5.0"]);
    assert!(d.closed);
    assert!(d.messages.is_empty());
}

#[test]
fn commands_pipelined_after_ehlo_close() {
    let mut d = Driver::new();
    assert_eq!(d.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n"), ["554 5.5.0"]);
    assert!(d.closed);
}

#[test]
fn sequence_errors() {
    let mut d = Driver::new();
    assert_eq!(d.send(b"MAIL FROM:<a@x.test>\r\n"), ["503 5.5.1"]);
    d.send(b"HELO c.test\r\n");
    assert_eq!(d.send(b"RCPT TO:<b@y.test>\r\n"), ["503 5.5.1"]);
    assert_eq!(d.send(b"DATA\r\n"), ["503 5.5.1"]);
    assert_eq!(d.send(b"MAIL FROM:<a@x.test> SIZE=10\r\n"), ["555 5.5.4"], "HELO has no extensions");
    d.send(b"MAIL FROM:<a@x.test>\r\n");
    assert_eq!(d.send(b"MAIL FROM:<a@x.test>\r\n"), ["503 5.5.1"]);
    assert_eq!(d.send(b"DATA\r\n"), ["554 5.5.1"]);
}

#[test]
fn rset_vrfy_noop_help() {
    let mut d = Driver::greeted();
    d.send(b"MAIL FROM:<a@x.test>\r\n");
    assert_eq!(d.send(b"RSET\r\n"), ["250 2.0.0"]);
    assert_eq!(d.send(b"RCPT TO:<b@y.test>\r\n"), ["503 5.5.1"]);
    assert_eq!(d.send(b"VRFY bob\r\n"), ["252 2.5.2"]);
    assert_eq!(d.send(b"NOOP\r\n"), ["250 2.0.0"]);
    assert_eq!(d.send(b"HELP\r\n"), ["214 2.0.0"]);
    assert_eq!(d.send(b"EXPN list\r\n"), ["502 5.5.1"]);
    assert_eq!(d.send(b"FOO\r\n"), ["500 5.5.1"]);
}

#[test]
fn too_many_recipients() {
    let mut d = Driver::greeted();
    d.send(b"MAIL FROM:<a@x.test>\r\n");
    for _ in 0..3 {
        assert_eq!(d.send(b"RCPT TO:<b@y.test>\r\n"), ["250 2.1.5"]);
    }
    assert_eq!(d.send(b"RCPT TO:<b@y.test>\r\n"), ["452 4.5.3"]);
}

#[test]
fn size_declared_and_overflow() {
    let mut d = Driver::greeted();
    assert_eq!(d.send(b"MAIL FROM:<a@x.test> SIZE=1001\r\n"), ["552 5.3.4"]);
    d.send(b"MAIL FROM:<a@x.test> SIZE=999\r\nRCPT TO:<b@y.test>\r\n");
    d.send(b"DATA\r\n");
    let mut big = vec![b'x'; 2000];
    big.extend_from_slice(b"\r\nRSET\r\n.\r\n");
    assert_eq!(d.send(&big), ["552 5.3.4"]);
    assert_eq!(d.send(b"NOOP\r\n"), ["250 2.0.0"]);
    assert!(d.messages.is_empty());
}

#[test]
fn long_and_malformed_lines() {
    let mut d = Driver::greeted();
    let mut long = vec![b'A'; 1500];
    long.extend_from_slice(b" MAIL FROM:<a@x.test>\r\nNOOP\r\n");
    assert_eq!(d.send(&long), ["500 5.5.2", "250 2.0.0"]);
    assert_eq!(d.send(b"NOOP\nNOOP\r\n"), ["500 5.5.2", "250 2.0.0"]);
    assert_eq!(d.send(b"NO\rOP\r\n"), ["500 5.5.2"]);
    let exact = [vec![b'N'; 0], b"NOOP ".to_vec(), vec![b'x'; 993], b"\r\n".to_vec()].concat();
    assert_eq!(exact.len(), 1000);
    assert_eq!(d.send(&exact), ["250 2.0.0"]);
}

#[test]
fn bad_command_limit_closes() {
    let mut d = Driver::greeted();
    for _ in 0..7 {
        assert_eq!(d.send(b"BOGUS\r\n"), ["500 5.5.1"]);
    }
    assert_eq!(d.send(b"BOGUS\r\n"), ["500 5.5.1", "421 4.7.0"]);
    assert!(d.closed);
}

#[test]
fn smuggled_commands_stay_in_the_body() {
    for sep in [&b"\n.\n"[..], b"\r\n.\n", b"\n.\r\n"] {
        let mut d = Driver::greeted();
        d.send(b"MAIL FROM:<a@x.test>\r\n");
        d.send(b"RCPT TO:<b@y.test>\r\n");
        d.send(b"DATA\r\n");
        let body = [
            b"Subject: s\r\n\r\nhello".to_vec(),
            sep.to_vec(),
            b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nevil\r\n.\r\n".to_vec(),
        ]
        .concat();
        assert_eq!(d.send(&body), ["250 2.0.0"], "{sep:?}");
        assert_eq!(d.messages.len(), 1);
        assert!(d.messages[0].content.windows(9).any(|w| w == b"MAIL FROM"));
    }
}

#[test]
fn bare_cr_refused() {
    let mut d = Driver::greeted();
    d.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    d.send(b"DATA\r\n");
    assert_eq!(d.send(b"hello\r.\rMAIL FROM:<e@x.test>\r\n.\r\n"), ["550 5.6.0"]);
    assert!(d.messages.is_empty());
}

#[test]
fn bdat_chunks() {
    let mut d = Driver::greeted();
    d.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    assert_eq!(d.send(b"BDAT 4\r\nab\r\n"), ["250 2.0.0"]);
    assert_eq!(d.send(b"BDAT 6 LAST\r\n.\r\nx\r\n"), ["250 2.0.0"]);
    assert_eq!(d.messages[0].content, b"ab\r\n.\r\nx\r\n");
    d.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    assert_eq!(d.send(b"BDAT 0 LAST\r\n"), ["250 2.0.0"]);
    assert_eq!(d.messages[1].content, b"");
}

#[test]
fn refused_bdat_chunk_is_read_not_executed() {
    let mut d = Driver::greeted();
    let chunk = b"MAIL FROM:<e@x.test>\r\n";
    let mut input = format!("BDAT {}\r\n", chunk.len()).into_bytes();
    input.extend_from_slice(chunk);
    assert_eq!(d.send(&input), ["503 5.5.1"]);
    assert_eq!(d.send(b"RCPT TO:<b@y.test>\r\n"), ["503 5.5.1"], "no transaction was opened");
}

#[test]
fn bdat_overflow_fails_transaction() {
    let mut d = Driver::greeted();
    d.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    let mut input = b"BDAT 1200\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 1200));
    assert_eq!(d.send(&input), ["552 5.3.4"]);
    assert_eq!(d.send(b"BDAT 2 LAST\r\nab"), ["503 5.5.1"]);
    assert!(d.messages.is_empty());
}

#[test]
fn utf8_addresses_need_smtputf8() {
    let mut d = Driver::greeted();
    assert_eq!(d.send("MAIL FROM:<jösé@x.test>\r\n".as_bytes()), ["553 5.6.7"]);
    assert_eq!(d.send("MAIL FROM:<jösé@x.test> SMTPUTF8\r\n".as_bytes()), ["250 2.1.0"]);
    assert_eq!(d.send("RCPT TO:<ünï@bücher.test>\r\n".as_bytes()), ["250 2.1.5"]);
}
