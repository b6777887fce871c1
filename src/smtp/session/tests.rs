//! The session driven in memory, without sockets.

use super::*;

struct Driver {
    session: Session,
    messages: Vec<Message>,
    /// The content of each message in `messages`, put together from its pieces.
    contents: Vec<Vec<u8>>,
    /// The pieces of the message being received.
    pieces: Vec<u8>,
    closed: bool,
    /// STARTTLS handshakes requested.
    handshakes: usize,
}

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.test".into(),
        max_message_size: 1000,
        max_recipients: 3,
        max_bad_commands: 8,
        max_header_size: 200,
        starttls: false,
        auth: false,
        auth_without_tls: false,
        require_auth: false,
    }
}

impl Driver {
    fn new() -> Driver {
        Driver::with(config())
    }

    fn with(config: SessionConfig) -> Driver {
        Driver {
            session: Session::new(config),
            messages: Vec::new(),
            contents: Vec::new(),
            pieces: Vec::new(),
            closed: false,
            handshakes: 0,
        }
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
                Event::ContentStart => self.pieces.clear(),
                Event::Content(piece) => {
                    assert!(piece.len() <= CONTENT_PIECE && !piece.is_empty());
                    self.pieces.extend_from_slice(&piece);
                }
                Event::Close => self.closed = true,
                Event::StartTls => {
                    self.handshakes += 1;
                    self.session.tls_started("TLSv1.3 with cipher TEST".into());
                }
                Event::Check(Check::Auth { user, password }) => {
                    let ok = user == "alice@x.test" && password.0 == "pw";
                    let verdict = if ok { Ok(user) } else { Err(Reply::new(535, (5, 7, 8), "bad")) };
                    self.session.answer_auth(verdict)
                }
                Event::Check(Check::Mail { .. }) => self.session.answer_mail(Ok(())),
                Event::Check(Check::Rcpt { to, .. }) => {
                    let verdict = if to.local == "unknown" {
                        Err(Reply::new(550, (5, 1, 1), "User unknown"))
                    } else {
                        Ok(vec![Destination { address: to.to_string(), local: false }])
                    };
                    self.session.answer_rcpt(verdict)
                }
                Event::Check(Check::Message(m)) => {
                    assert_eq!(m.size, self.pieces.len() as u64);
                    self.contents.push(std::mem::take(&mut self.pieces));
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
    assert_eq!(d.contents[0], b"Subject: hi\r\n\r\n.dot\r\n");
    assert_eq!(d.messages[0].rcpts[0].routes[0].address, "b@y.test");
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
        assert!(d.contents[0].windows(9).any(|w| w == b"MAIL FROM"));
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
    assert_eq!(d.contents[0], b"ab\r\n.\r\nx\r\n");
    d.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    assert_eq!(d.send(b"BDAT 0 LAST\r\n"), ["250 2.0.0"]);
    assert_eq!(d.contents[1], b"");
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
fn duplicate_parameters_are_refused() {
    let mut d = Driver::greeted();
    assert_eq!(d.send(b"MAIL FROM:<a@x.test> SIZE=10 SIZE=20\r\n"), ["501 5.5.4"]);
    assert_eq!(d.send(b"MAIL FROM:<a@x.test> SIZE=10\r\n"), ["250 2.1.0"]);
    assert_eq!(d.send(b"RCPT TO:<b@y.test> NOTIFY=NEVER NOTIFY=SUCCESS\r\n"), ["501 5.5.4"]);
    assert_eq!(d.send(b"RCPT TO:<b@y.test> NOTIFY=NEVER\r\n"), ["250 2.1.5"]);
    assert_eq!(d.send(b"DATA\r\n"), ["354 2.0.0"]);
    assert_eq!(d.send(b"x\r\n.\r\n"), ["250 2.0.0"]);
    assert_eq!(d.messages[0].rcpts.len(), 1);
}

#[test]
fn utf8_addresses_need_smtputf8() {
    let mut d = Driver::greeted();
    assert_eq!(d.send("MAIL FROM:<jösé@x.test>\r\n".as_bytes()), ["553 5.6.7"]);
    assert_eq!(d.send("MAIL FROM:<jösé@x.test> SMTPUTF8\r\n".as_bytes()), ["250 2.1.0"]);
    assert_eq!(d.send("RCPT TO:<ünï@bücher.test>\r\n".as_bytes()), ["250 2.1.5"]);
}

fn secure() -> SessionConfig {
    SessionConfig { starttls: true, auth: true, require_auth: true, ..config() }
}

/// The EHLO reply's keywords.
fn ehlo(d: &mut Driver) -> Vec<String> {
    d.session.receive(b"EHLO c.test\r\n");
    match d.session.poll() {
        Some(Event::Reply(r)) => r.lines[1..].to_vec(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn starttls_resets_and_then_offers_auth() {
    let mut d = Driver::with(secure());
    let before = ehlo(&mut d);
    assert!(before.contains(&"STARTTLS".to_string()));
    assert!(!before.iter().any(|k| k.starts_with("AUTH")), "no AUTH before TLS");
    assert_eq!(d.send(b"AUTH PLAIN AGFsaWNlQHgudGVzdABwdw==\r\n"), ["538 5.7.11"]);
    assert_eq!(d.send(b"MAIL FROM:<alice@x.test>\r\n"), ["530 5.7.0"]);
    assert_eq!(d.send(b"STARTTLS\r\n"), ["220 2.0.0"]);
    assert_eq!(d.handshakes, 1);
    assert_eq!(d.send(b"MAIL FROM:<alice@x.test>\r\n"), ["503 5.5.1"], "EHLO again after TLS");
    let after = ehlo(&mut d);
    assert!(!after.contains(&"STARTTLS".to_string()));
    assert!(after.contains(&"AUTH PLAIN LOGIN".to_string()));
    assert_eq!(d.send(b"STARTTLS\r\n"), ["503 5.5.1"]);
}

#[test]
fn plaintext_after_starttls_is_never_executed() {
    let mut d = Driver::with(secure());
    ehlo(&mut d);
    assert_eq!(d.send(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n"), ["554 5.5.0"]);
    assert!(d.closed);
    assert_eq!(d.handshakes, 0);
}

#[test]
fn auth_plain_and_login() {
    let mut d = Driver::with(SessionConfig { auth_without_tls: true, ..secure() });
    ehlo(&mut d);
    assert_eq!(d.send(b"AUTH PLAIN AGFsaWNlQHgudGVzdAB3cm9uZw==\r\n"), ["535 5.7.8"]);
    assert_eq!(d.session.auth_mechanism(), None, "no mechanism without a user");
    assert_eq!(d.send(b"AUTH CRAM-MD5\r\n"), ["504 5.5.4"]);
    assert_eq!(d.send(b"AUTH PLAIN\r\n"), ["334"]);
    assert_eq!(d.send(b"*\r\n"), ["501 5.0.0"]);
    assert_eq!(d.send(b"AUTH LOGIN\r\n"), ["334"]);
    assert_eq!(d.send(b"YWxpY2VAeC50ZXN0\r\n"), ["334"]);
    assert_eq!(d.send(b"cHc=\r\n"), ["235 2.7.0"]);
    assert_eq!(d.session.user(), Some("alice@x.test"));
    assert_eq!(d.session.auth_mechanism(), Some("LOGIN"));
    assert_eq!(d.send(b"AUTH PLAIN AGFsaWNlQHgudGVzdABwdw==\r\n"), ["503 5.5.1"]);
    assert_eq!(d.session.auth_mechanism(), Some("LOGIN"), "a refused AUTH changes nothing");
    assert_eq!(d.send(b"MAIL FROM:<alice@x.test>\r\n"), ["250 2.1.0"]);
}

#[test]
fn http_requests_are_dropped() {
    let mut d = Driver::new();
    assert_eq!(d.send(b"GET / HTTP/1.1\r\n"), ["554 5.5.1"]);
    assert!(d.closed);
}

#[test]
fn oversized_header_block_is_refused() {
    let mut d = Driver::greeted();
    d.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    d.send(b"DATA\r\n");
    let big = format!("Subject: {}\r\n\r\nbody\r\n.\r\n", "x".repeat(300));
    assert_eq!(d.send(big.as_bytes()), ["552 5.3.4"]);
    assert!(d.messages.is_empty());
}

#[test]
fn partial_line_is_known_for_commands_only() {
    let mut d = Driver::new();
    assert!(!d.session.partial_line());
    assert!(d.send(b"EH").is_empty());
    assert!(d.session.partial_line());
    assert_eq!(d.send(b"LO x\r\n"), ["250"]);
    assert!(!d.session.partial_line());
    assert_eq!(d.send(b"MAIL FROM:<a@x.test>\r\nRC"), ["250 2.1.0"]);
    assert!(d.session.partial_line());
    assert_eq!(d.send(b"PT TO:<b@x.test>\r\n"), ["250 2.1.5"]);
    assert!(!d.session.partial_line());
    assert_eq!(d.send(b"DATA\r\n"), ["354 2.0.0"]);
    assert!(d.send(b"Subject: half a li").is_empty());
    assert!(!d.session.partial_line(), "message content is not a command line");
}

/// A driver whose limits allow a message of `size` bytes.
fn large(size: u64) -> Driver {
    let mut d = Driver::with(SessionConfig { max_message_size: size, ..config() });
    assert_eq!(d.send(b"EHLO client.test\r\n"), ["250"]);
    d.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    d
}

#[test]
fn content_is_handed_out_in_bounded_pieces() {
    let body: Vec<u8> = (0..20_000).flat_map(|i| format!("line {i:06} of the body\r\n").into_bytes()).collect();
    let content = [&b"Subject: big\r\n\r\n"[..], &body].concat();
    // All of it in one piece of input: the session keeps no more than a piece of it.
    let mut d = large(1 << 20);
    assert_eq!(d.send(b"DATA\r\n"), ["354 2.0.0"]);
    d.session.receive(&content);
    let mut pieces = 0;
    while let Some(event) = d.session.poll() {
        let Event::Content(piece) = event else { panic!("unexpected {event:?}") };
        assert!(piece.len() <= CONTENT_PIECE);
        assert!(d.session.input.len() <= content.len() - pieces * CONTENT_PIECE);
        d.pieces.extend_from_slice(&piece);
        pieces += 1;
    }
    assert!(pieces >= content.len() / CONTENT_PIECE, "{pieces} pieces");
    assert!(d.session.holds_content());
    assert_eq!(d.send(b".\r\n"), ["250 2.0.0"]);
    assert_eq!(d.contents[0], content);
    assert_eq!(d.messages[0].size, content.len() as u64);
    assert!(!d.session.holds_content());
    // The same by BDAT, in chunks that do not follow lines.
    let mut d = large(1 << 20);
    for chunk in content.chunks(100_003) {
        let mut input = format!("BDAT {}\r\n", chunk.len()).into_bytes();
        input.extend_from_slice(chunk);
        assert_eq!(d.send(&input), ["250 2.0.0"]);
        assert!(d.session.holds_content());
    }
    assert_eq!(d.send(b"BDAT 0 LAST\r\n"), ["250 2.0.0"]);
    assert_eq!(d.contents[0], content);
}

#[test]
fn a_new_message_starts_its_content_afresh() {
    let mut d = large(1 << 20);
    assert_eq!(d.send(b"BDAT 5\r\nstale"), ["250 2.0.0"]);
    assert_eq!(d.pieces, b"stale");
    // RSET drops the transaction and its content: nothing of it is held any more.
    assert_eq!(d.send(b"RSET\r\n"), ["250 2.0.0"]);
    assert!(!d.session.holds_content());
    d.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    assert_eq!(d.send(b"BDAT 0 LAST\r\n"), ["250 2.0.0"]);
    assert_eq!(d.contents[0], b"", "content of the reset transaction was handed out again");
}

#[test]
fn header_limit_holds_across_pieces() {
    let mut d = Driver::greeted();
    d.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    d.send(b"DATA\r\n");
    for _ in 0..30 {
        assert_eq!(d.send(b"X-Long: 0123456789\r\n"), Vec::<String>::new());
    }
    assert_eq!(d.send(b"\r\nbody\r\n.\r\n"), ["552 5.3.4"]);
    assert!(!d.session.holds_content());
    // Within the limit, a header block cut anywhere is fine.
    d.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    d.send(b"DATA\r\n");
    for piece in [&b"Subject: a\r"[..], b"\n", b"\r", b"\nbody\r\n.\r\n"] {
        d.send(piece);
    }
    assert_eq!(d.contents[0], b"Subject: a\r\n\r\nbody\r\n");
}

#[test]
fn requiretls_is_offered_and_accepted_only_over_tls() {
    let mut d = Driver::with(SessionConfig { starttls: true, ..config() });
    assert!(!ehlo(&mut d).contains(&"REQUIRETLS".to_string()), "not before STARTTLS");
    // RFC 8689 §3: refused on a plaintext session, and the transaction does not start.
    assert_eq!(d.send(b"MAIL FROM:<a@x.test> REQUIRETLS\r\n"), ["530 5.7.10"]);
    assert_eq!(d.send(b"RCPT TO:<b@y.test>\r\n"), ["503 5.5.1"]);
    assert_eq!(d.send(b"STARTTLS\r\n"), ["220 2.0.0"]);
    assert!(ehlo(&mut d).contains(&"REQUIRETLS".to_string()), "offered after STARTTLS");
    assert_eq!(d.send(b"MAIL FROM:<a@x.test> REQUIRETLS\r\n"), ["250 2.1.0"]);
    assert_eq!(d.send(b"RCPT TO:<b@y.test>\r\n"), ["250 2.1.5"]);
    assert_eq!(d.send(b"DATA\r\n"), ["354 2.0.0"]);
    assert_eq!(d.send(b"Subject: s\r\n\r\nx\r\n.\r\n"), ["250 2.0.0"]);
    assert!(d.messages[0].params.requiretls);
}
