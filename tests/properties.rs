//! Property tests of the protocol core: address syntax round trips, the command parser
//! on arbitrary input, the message content reader and the session whatever way the
//! client's bytes are cut into pieces. The same properties are fuzzed at length by the
//! targets in `fuzz/`; inputs that broke them are kept here as plain regression tests.

use proptest::prelude::*;
use proptest::test_runner::Config;
use tern::smtp::Reply;
use tern::smtp::address::{Mailbox, canonical_domain, parse_path};
use tern::smtp::body::BodyReader;
use tern::smtp::command::{self, Command};
use tern::smtp::params::{MailParams, RcptParams};
use tern::smtp::session::{Check, Event, Hello, Session, SessionConfig};

/// A moderate number of cases, and no regression files written next to the tests.
fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

// ---------------------------------------------------------------------------------
// Helpers

/// Cuts `data` into pieces whose lengths cycle through `lens`; no lengths: one piece.
fn chunks<'a>(data: &'a [u8], lens: &[usize]) -> Vec<&'a [u8]> {
    if lens.is_empty() {
        return vec![data];
    }
    let mut out = Vec::new();
    let mut rest = data;
    for &n in lens.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at(n.clamp(1, rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

/// No CR or LF except as a CRLF pair.
fn crlf_clean(out: &[u8]) -> bool {
    out.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => out.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && out[i - 1] == b'\r',
        _ => true,
    })
}

// ---------------------------------------------------------------------------------
// Addresses

/// An atom of a Dot-string: RFC 5322 atext, with some UTF-8 (RFC 6531).
fn atom() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(
                "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
                    .chars()
                    .collect::<Vec<_>>()
            ),
            1 => prop::sample::select(vec!['é', 'ü', 'ß', 'ж', '日', '本', '€', '😀']),
        ],
        1..8,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// A Quoted-string local part, with quoted pairs.
fn quoted() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select("abcXYZ019 @.,;:<>()[]!#".chars().map(String::from).collect::<Vec<_>>()),
            1 => Just("\\\"".to_string()),
            1 => Just("\\\\".to_string()),
            1 => Just("é".to_string()),
        ],
        0..10,
    )
    .prop_map(|parts| format!("\"{}\"", parts.concat()))
}

fn local_part() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(atom(), 1..4).prop_map(|atoms| atoms.join(".")),
        1 => quoted(),
    ]
}

/// A host name (LDH labels, some U-labels) or an address literal.
fn domain() -> impl Strategy<Value = String> {
    let label = prop_oneof![
        6 => "[a-zA-Z0-9]{1,8}(-[a-zA-Z0-9]{1,8})?",
        1 => prop::sample::select(vec!["bücher".to_string(), "xn--bcher-kva".to_string(), "日本".to_string()]),
    ];
    prop_oneof![
        6 => (prop::collection::vec(label, 1..5), any::<bool>()).prop_map(|(labels, dot)| {
            let mut d = labels.join(".");
            if dot {
                d.push('.');
            }
            d
        }),
        1 => any::<[u8; 4]>().prop_map(|[a, b, c, d]| format!("[{a}.{b}.{c}.{d}]")),
        1 => any::<[u16; 8]>().prop_map(|a| format!("[IPv6:{}]", std::net::Ipv6Addr::from(a))),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// A generated `local@domain` parses, prints back to itself and parses again to the
    /// same mailbox, in a path and in MAIL FROM and RCPT TO as well.
    #[test]
    fn mailbox_round_trip(local in local_part(), domain in domain()) {
        let text = format!("{local}@{domain}");
        let m = Mailbox::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        prop_assert_eq!(&m.local, &local);
        prop_assert_eq!(&m.domain, &domain);
        prop_assert_eq!(m.to_string(), text.clone());
        prop_assert_eq!(Mailbox::parse(&m.to_string()), Ok(m.clone()));
        prop_assert!(m.canonical_domain().is_some());

        let line = format!("<{m}> SIZE=1");
        let (path, rest) = parse_path(&line, false).unwrap();
        prop_assert_eq!(path.as_ref(), Some(&m));
        prop_assert_eq!(rest, " SIZE=1");
        let (path, _) = parse_path(&format!("<@relay.test,@b.test:{m}>"), false).unwrap();
        prop_assert_eq!(path.as_ref(), Some(&m));

        match command::parse(format!("MAIL FROM:<{m}> SMTPUTF8").as_bytes()) {
            Ok(Command::Mail(from, params)) => {
                prop_assert_eq!(from, Some(m.clone()));
                prop_assert!(params.smtputf8);
            }
            other => prop_assert!(false, "MAIL FROM:<{}>: {:?}", text, other),
        }
        match command::parse(format!("RCPT TO:<{m}> NOTIFY=NEVER").as_bytes()) {
            Ok(Command::Rcpt(to, params)) => {
                prop_assert_eq!(to, m);
                prop_assert!(params.notify.is_some_and(|n| n.never));
            }
            other => prop_assert!(false, "RCPT TO:<{}>: {:?}", text, other),
        }
    }

    /// The canonical form of a host name is lower-case ASCII and its own canonical form.
    #[test]
    fn canonical_domain_is_idempotent(domain in domain()) {
        if let Some(c) = canonical_domain(&domain) {
            prop_assert!(c.is_ascii() && !c.bytes().any(|b| b.is_ascii_uppercase()), "{}", c);
            prop_assert_eq!(canonical_domain(&c), Some(c.clone()));
            prop_assert_eq!(canonical_domain(&domain.to_uppercase()), Some(c));
        }
    }
}

// ---------------------------------------------------------------------------------
// Commands

/// Refusals are 5xx with no line break in their text.
fn check_refusal(reply: &Reply) -> Result<(), TestCaseError> {
    prop_assert!((500..600).contains(&reply.code), "{:?}", reply);
    prop_assert!(reply.lines.iter().all(|l| !l.contains(['\r', '\n'])), "{:?}", reply);
    Ok(())
}

/// A verb (any case) followed by printable text, parameters and stray bytes.
fn command_line() -> impl Strategy<Value = Vec<u8>> {
    let verb = prop::sample::select(vec![
        "EHLO ",
        "helo ",
        "MAIL FROM:",
        "mail from: ",
        "RCPT TO:",
        "rcpt to:",
        "DATA",
        "BDAT ",
        "RSET",
        "NOOP ",
        "QUIT",
        "VRFY ",
        "EXPN ",
        "HELP",
        "STARTTLS",
        "AUTH ",
        "XYZZY ",
    ]);
    let word = prop_oneof![
        "[ -~]{0,20}",
        "[a-z<>@. ]{0,12}[éü€😀][a-z<>@.]{0,6}",
        Just("<>".to_string()),
        Just("<Postmaster>".to_string()),
        Just("<a@b.test>".to_string()),
        Just(" SIZE=10".to_string()),
        Just(" BODY=8BITMIME SMTPUTF8".to_string()),
        Just(" NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+2Bb@c.test".to_string()),
        Just(" LAST".to_string()),
        "[0-9]{1,25}",
    ];
    (verb, prop::collection::vec(word, 0..5), prop::collection::vec(any::<u8>(), 0..3)).prop_map(
        |(verb, words, stray)| {
            let mut line = verb.as_bytes().to_vec();
            line.extend_from_slice(words.concat().as_bytes());
            line.extend_from_slice(&stray);
            line
        },
    )
}

proptest! {
    #![proptest_config(config(512))]

    /// The command parser never panics on arbitrary bytes.
    #[test]
    fn command_parse_never_panics(line in prop::collection::vec(any::<u8>(), 0..120)) {
        if let Err(reply) = command::parse(&line) {
            check_refusal(&reply)?;
        }
    }

    /// Nor on near-valid command lines; what it accepts does not depend on the verb's
    /// case, and accepted addresses print back to themselves.
    #[test]
    fn command_parse_structured(line in command_line()) {
        let result = command::parse(&line);
        match &result {
            Ok(Command::Mail(Some(m), _)) | Ok(Command::Rcpt(m, _)) if !m.domain.is_empty() => {
                prop_assert_eq!(&Mailbox::parse(&m.to_string()), &Ok(m.clone()));
            }
            Ok(_) => {}
            Err(reply) => check_refusal(reply)?,
        }
        let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
        let mut upper = line.clone();
        upper[..verb_end].make_ascii_uppercase();
        prop_assert_eq!(command::parse(&upper), result);
    }

    /// MAIL and RCPT parameters never panic the parsers either.
    #[test]
    fn params_parse_never_panics(text in "( [A-Za-z0-9=+;,<>@.-]{0,16}){0,4}") {
        for reply in [MailParams::parse(&text).err(), RcptParams::parse(&text).err()].into_iter().flatten() {
            prop_assert!(matches!(reply.code, 501 | 555), "{:?}", reply);
        }
    }
}

// ---------------------------------------------------------------------------------
// Message content

#[derive(Debug, PartialEq)]
struct BodyRun {
    end: Option<usize>,
    out: Vec<u8>,
    bare_cr: bool,
    overflowed: bool,
    size: u64,
}

fn run_body(dotted: bool, limit: u64, pieces: &[&[u8]]) -> BodyRun {
    let mut reader = if dotted { BodyReader::data(limit) } else { BodyReader::chunks(limit) };
    let mut out = Vec::new();
    let mut offset = 0;
    let mut end = None;
    for piece in pieces {
        if let Some(n) = reader.feed(piece, &mut out) {
            assert!(dotted && (1..=piece.len()).contains(&n));
            end = Some(offset + n);
            break;
        }
        offset += piece.len();
    }
    BodyRun { end, out, bare_cr: reader.saw_bare_cr(), overflowed: reader.overflowed(), size: reader.size() }
}

/// Bytes rich in what matters to the reader: CR, LF, dots and line ends.
fn content_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => prop::sample::select(vec![&b"\r\n"[..], b"\r\n.\r\n", b".", b"..", b"\n", b"\r", b"\n.\n", b"\r\n."])
            .prop_map(<[u8]>::to_vec),
        3 => "[a-z]{1,4}".prop_map(String::into_bytes),
        1 => any::<u8>().prop_map(|b| vec![b]),
    ];
    prop::collection::vec(piece, 0..max / 2).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(config(512))]

    /// Whole or in pieces, the reader gives the same end, flags and content; the
    /// content is CRLF-clean and within the limit; DATA ends only at a real CRLF.CRLF.
    #[test]
    fn body_reader_split_invariance(
        dotted in any::<bool>(),
        limit in prop::sample::select(vec![0u64, 5, 40, u64::MAX]),
        input in content_bytes(200),
        lens in prop::collection::vec(1usize..12, 0..6),
    ) {
        let whole = run_body(dotted, limit, &[&input]);
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        let unlimited = run_body(dotted, u64::MAX, &[&input]);
        for run in [run_body(dotted, limit, &chunks(&input, &lens)), run_body(dotted, limit, &bytewise)] {
            prop_assert_eq!(run.end, whole.end);
            prop_assert_eq!(run.bare_cr, whole.bare_cr);
            prop_assert_eq!(run.overflowed, whole.overflowed);
            prop_assert_eq!(run.size, whole.size);
            if !whole.overflowed {
                prop_assert_eq!(&run.out, &whole.out);
            }
            prop_assert!(run.out.len() as u64 <= limit);
            prop_assert!(unlimited.out.starts_with(&run.out));
            prop_assert!(crlf_clean(&run.out));
        }
        prop_assert!(crlf_clean(&whole.out));
        prop_assert_eq!(unlimited.end, whole.end);
        if let Some(n) = whole.end {
            prop_assert!(input[..n].ends_with(b"\r\n.\r\n") || &input[..n] == b".\r\n");
        }
    }

    /// Dot-stuffed lines come back exactly, and DATA ends right after the terminator.
    #[test]
    fn body_reader_unstuffs(
        lines in prop::collection::vec("[.a-z ]{0,6}", 0..8),
        lens in prop::collection::vec(1usize..12, 0..6),
    ) {
        let mut wire = Vec::new();
        let mut content = Vec::new();
        for line in &lines {
            if line.starts_with('.') {
                wire.push(b'.');
            }
            wire.extend_from_slice(line.as_bytes());
            wire.extend_from_slice(b"\r\n");
            content.extend_from_slice(line.as_bytes());
            content.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b".\r\n");
        let end = wire.len();
        wire.extend_from_slice(b"QUIT\r\n");
        let run = run_body(true, u64::MAX, &chunks(&wire, &lens));
        prop_assert_eq!(run.end, Some(end));
        prop_assert!(!run.bare_cr);
        prop_assert_eq!(run.out, content);
    }
}

// ---------------------------------------------------------------------------------
// Session

/// One thing the session did, comparable between runs.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Reply(Reply),
    CheckMail(Option<Mailbox>, Option<String>),
    CheckAuth(String),
    CheckRcpt(Mailbox),
    StartTls,
    Message {
        hello: Hello,
        tls: Option<String>,
        user: Option<String>,
        from: Option<Mailbox>,
        rcpts: Vec<Mailbox>,
        content: Vec<u8>,
    },
    Close,
}

fn session_config(max_message_size: u64) -> SessionConfig {
    SessionConfig {
        hostname: "mx.tern.test".into(),
        max_message_size,
        max_recipients: 3,
        max_bad_commands: 20,
        max_header_size: 500,
        starttls: true,
        auth: true,
        auth_without_tls: false,
        require_auth: false,
    }
}

/// Runs a conversation, answering every check with a fixed policy (local parts
/// starting with `x` refused, content with `REJECT` not stored, the password `secret`
/// right) and completing every STARTTLS at once.
fn run_session(config: &SessionConfig, pieces: &[&[u8]]) -> Vec<Step> {
    let mut session = Session::new(config.clone());
    let mut steps = Vec::new();
    // The pieces of the message being received (they differ by chunking: no steps).
    let mut content = Vec::new();
    for piece in pieces {
        session.receive(piece);
        while let Some(event) = session.poll() {
            assert_ne!(steps.last(), Some(&Step::Close), "event after Close");
            match event {
                Event::ContentStart => content.clear(),
                Event::Content(piece) => content.extend_from_slice(&piece),
                Event::Reply(r) => {
                    assert!(r.lines.iter().all(|l| !l.contains(['\r', '\n'])), "{r:?}");
                    steps.push(Step::Reply(r));
                }
                Event::Close => steps.push(Step::Close),
                Event::StartTls => {
                    steps.push(Step::StartTls);
                    session.tls_started("TLSv1.3".into());
                }
                Event::Check(Check::Auth { user, password }) => {
                    let verdict = if password.0 == "secret" {
                        Ok(user.clone())
                    } else {
                        Err(Reply::new(535, (5, 7, 8), "Authentication credentials invalid"))
                    };
                    steps.push(Step::CheckAuth(user));
                    session.answer_auth(verdict);
                }
                Event::Check(Check::Mail { from, user, .. }) => {
                    let refuse = from.as_ref().is_some_and(|m| m.local.starts_with('x'));
                    steps.push(Step::CheckMail(from, user));
                    session.answer_mail(if refuse { Err(Reply::new(550, (5, 7, 1), "No")) } else { Ok(()) });
                }
                Event::Check(Check::Rcpt { to }) => {
                    let verdict = if to.local.starts_with('x') {
                        Err(Reply::new(550, (5, 1, 1), "No such user"))
                    } else {
                        Ok(vec![tern::smtp::session::Destination { address: to.to_string(), local: true }])
                    };
                    steps.push(Step::CheckRcpt(to));
                    session.answer_rcpt(verdict);
                }
                Event::Check(Check::Message(m)) => {
                    let content = std::mem::take(&mut content);
                    assert_eq!(m.size, content.len() as u64);
                    assert!(crlf_clean(&content), "stored content is not CRLF-clean");
                    assert!(content.len() as u64 <= config.max_message_size);
                    let refuse = content.windows(6).any(|w| w == b"REJECT");
                    steps.push(Step::Message {
                        hello: m.hello,
                        tls: m.tls,
                        user: m.user,
                        from: m.from,
                        rcpts: m.rcpts.into_iter().map(|r| r.to).collect(),
                        content,
                    });
                    session.answer_message(if refuse {
                        Err(Reply::new(554, (5, 7, 1), "Content refused"))
                    } else {
                        Ok("ID".into())
                    });
                }
            }
        }
    }
    steps
}

/// The reply to a client that sent more after EHLO/HELO/DATA/STARTTLS without waiting
/// (RFC 2920 §3.1, RFC 3207): whether that happens depends on how the bytes arrived.
fn is_pipelining_violation(step: &Step) -> bool {
    matches!(step, Step::Reply(r) if r.code == 554 && r.status.is_some_and(|s| (s.0, s.1, s.2) == (5, 5, 0)))
}

fn messages(steps: &[Step]) -> usize {
    steps.iter().filter(|s| matches!(s, Step::Message { .. })).count()
}

/// Two runs agree step for step, up to a pipelining violation only one of them saw.
fn same_conversation(reference: &[Step], other: &[Step]) -> Result<(), TestCaseError> {
    let k = match (reference.iter().position(is_pipelining_violation), other.iter().position(is_pipelining_violation)) {
        (None, None) => {
            prop_assert_eq!(reference, other);
            return Ok(());
        }
        (Some(a), None) | (None, Some(a)) => a,
        (Some(a), Some(b)) => a.min(b),
    };
    prop_assert!(reference.len() >= k && other.len() >= k);
    prop_assert_eq!(&reference[..k], &other[..k]);
    Ok(())
}

/// What a client (well-behaved or not) sends, one piece at a time.
fn client_part() -> impl Strategy<Value = Vec<u8>> {
    let mailbox = prop::sample::select(vec!["a@b.test", "xavier@b.test", "c@d.test", "Postmaster", "é@b.test"]);
    prop_oneof![
        2 => Just(b"EHLO client.test\r\n".to_vec()),
        1 => Just(b"HELO client.test\r\n".to_vec()),
        3 => (mailbox.clone(), prop::sample::select(vec!["", " SIZE=30", " SMTPUTF8", " BODY=8BITMIME"]))
            .prop_map(|(m, p)| format!("MAIL FROM:<{m}>{p}\r\n").into_bytes()),
        1 => Just(b"MAIL FROM:<>\r\n".to_vec()),
        4 => mailbox.prop_map(|m| format!("RCPT TO:<{m}>\r\n").into_bytes()),
        2 => content_bytes(60).prop_map(|body| {
            let mut v = b"DATA\r\n".to_vec();
            v.extend(body);
            v.extend_from_slice(b"\r\n.\r\n");
            v
        }),
        2 => (content_bytes(40), any::<bool>()).prop_map(|(chunk, last)| {
            let mut v = format!("BDAT {}{}\r\n", chunk.len(), if last { " LAST" } else { "" }).into_bytes();
            v.extend(chunk);
            v
        }),
        1 => Just(b"STARTTLS\r\n".to_vec()),
        1 => Just(b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n".to_vec()),
        1 => Just(b"AUTH LOGIN\r\nYm9i\r\nc2VjcmV0\r\n".to_vec()),
        1 => Just(b"RSET\r\n".to_vec()),
        1 => Just(b"NOOP\r\n".to_vec()),
        1 => Just(b"QUIT\r\n".to_vec()),
        1 => Just(b"REJECT\r\n".to_vec()),
        1 => content_bytes(30),
        1 => Just(vec![b'A'; 1001]),
    ]
}

proptest! {
    #![proptest_config(config(96))]

    /// However the client's bytes are cut, the session gives the same replies and the
    /// same messages as for a client that sends one byte at a time.
    #[test]
    fn session_split_invariance(
        parts in prop::collection::vec(client_part(), 1..12),
        lens in prop::collection::vec(1usize..40, 0..6),
        size in prop::sample::select(vec![20u64, 1000]),
    ) {
        let input = parts.concat();
        let config = session_config(size);
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        let reference = run_session(&config, &bytewise);
        let split = run_session(&config, &chunks(&input, &lens));
        let whole = run_session(&config, &[&input]);
        same_conversation(&reference, &split)?;
        same_conversation(&reference, &whole)?;
        if !split.iter().any(is_pipelining_violation) {
            prop_assert_eq!(messages(&reference), messages(&split));
        }
    }

    /// A client that waits for each reply gets every message through in any chunking.
    #[test]
    fn session_pipelined_messages(
        n in 1usize..4,
        body in "[.a-z\r\n]{0,40}",
        lens in prop::collection::vec(1usize..40, 0..6),
    ) {
        let config = session_config(1 << 20);
        let mut pieces = vec![b"EHLO client.test\r\n".to_vec()];
        for _ in 0..n {
            pieces.push(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n".to_vec());
            let mut content = Vec::new();
            for line in body.split('\n') {
                let line = line.replace('\r', "");
                if line.starts_with('.') {
                    content.push(b'.');
                }
                content.extend_from_slice(line.as_bytes());
                content.extend_from_slice(b"\r\n");
            }
            content.extend_from_slice(b".\r\n");
            pieces.push(content);
        }
        pieces.push(b"QUIT\r\n".to_vec());
        let input = pieces.concat();
        // The client waits after EHLO and DATA, cutting the rest at will.
        let mut cut: Vec<&[u8]> = Vec::new();
        for piece in &pieces {
            cut.extend(chunks(piece, &lens));
        }
        let steps = run_session(&config, &cut);
        prop_assert_eq!(messages(&steps), n, "{:?}", String::from_utf8_lossy(&input));
        prop_assert!(!steps.iter().any(is_pipelining_violation));
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(run_session(&config, &bytewise), steps);
    }
}

// ---------------------------------------------------------------------------------
// Regression inputs from the fuzz targets

/// `fuzz/fuzz_targets/command.rs`: a `RCPT TO:` argument with a UTF-8 character across
/// its 12th byte (the `<Postmaster>` check sliced the argument at byte 12).
#[test]
fn rcpt_argument_with_multibyte_char_at_byte_12() {
    // As found, and as `cargo fuzz tmin` left it.
    let _ = command::parse(b"RCPT TO:<AUTH \"a b\\\xc3\xa9\"@[127.1]>");
    let _ = command::parse(b"RCPT TO:\"@[127.1]>\\\xc3\xa9\"@>");
    // The shortest form: 11 ASCII bytes, then a two-byte character.
    let _ = command::parse("RCPT TO:12345678901é".as_bytes());
    let _ = command::parse("RCPT TO:<postmaste€@x.test>".as_bytes());
}

/// `fuzz/fuzz_targets/address.rs`: 84 labels `é` are 251 octets as written but 671 as
/// A-labels (`xn--9ca`), over the 253 a host name may have; the canonical form was
/// accepted, and is then refused when canonicalized again.
#[test]
fn canonical_domain_checks_length_of_a_labels() {
    let domain = vec!["é"; 84].join(".");
    assert!(domain.len() <= 253);
    assert_eq!(canonical_domain(&domain), None);
    assert!(Mailbox::parse(&format!("user@{domain}")).is_err());
}
