//! Shared pieces of Tern's fuzz targets: how a fuzz input is cut into a settings byte,
//! a chunking pattern and a payload, and the harnesses for the message reader and the
//! session that more than one target (and the regression tests) use.

use tern::smtp::Reply;
use tern::smtp::address::Mailbox;
use tern::smtp::body::BodyReader;
use tern::smtp::params::{MailParams, RcptParams};
use tern::smtp::session::{Check, Destination, Event, Hello, Recipient, Session, SessionConfig};

/// What the session is told once the (pretend) TLS handshake is done.
pub const TLS_DESCRIPTION: &str = "TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256";

/// The one password the `session` policy accepts (for any user).
pub const PASSWORD: &str = "secret";

/// A fuzz input cut into its parts:
/// `[settings][n][n chunk lengths][payload…]`, where the low five bits of `n` count the
/// chunk lengths and its high three bits are more settings.
pub struct Input<'a> {
    pub settings: u8,
    /// The high three bits of `n`.
    pub extra: u8,
    /// Chunk lengths, used cyclically; a byte `b` is a chunk of `b + 1` bytes.
    pub lens: &'a [u8],
    pub payload: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn split(data: &'a [u8]) -> Option<Input<'a>> {
        let (&settings, rest) = data.split_first()?;
        let (&n, rest) = rest.split_first()?;
        let (lens, payload) = rest.split_at(usize::from(n % 32).min(rest.len()));
        Some(Input { settings, extra: n >> 5, lens, payload })
    }
}

/// Cuts `data` into chunks whose lengths cycle through `lens` (`b` → `b + 1` bytes).
/// Empty `lens` gives the whole of `data` as one chunk.
pub fn chunks<'a>(data: &'a [u8], lens: &[u8]) -> Vec<&'a [u8]> {
    if lens.is_empty() {
        return vec![data];
    }
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = (usize::from(lens[i % lens.len()]) + 1).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}

/// True when no CR or LF appears in `out` except as part of a CRLF pair.
pub fn crlf_clean(out: &[u8]) -> bool {
    out.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => out.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && out[i - 1] == b'\r',
        _ => true,
    })
}

// ---------------------------------------------------------------------------------
// Message content reader

/// What a [`BodyReader`] made of an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyRun {
    /// Where the DATA terminator ended, as an offset into the whole input.
    pub end: Option<usize>,
    pub out: Vec<u8>,
    pub bare_cr: bool,
    pub overflowed: bool,
    pub size: u64,
}

/// Feeds `pieces` to a new reader in turn, stopping at the DATA terminator.
pub fn run_body(dotted: bool, limit: u64, pieces: &[&[u8]]) -> BodyRun {
    let mut reader = if dotted { BodyReader::data(limit) } else { BodyReader::chunks(limit) };
    let mut out = Vec::new();
    let mut offset = 0;
    let mut end = None;
    for piece in pieces {
        if let Some(n) = reader.feed(piece, &mut out) {
            assert!(dotted, "a BDAT reader reported an end");
            assert!(n >= 1 && n <= piece.len(), "end {n} outside a piece of {}", piece.len());
            end = Some(offset + n);
            break;
        }
        offset += piece.len();
    }
    BodyRun { end, out, bare_cr: reader.saw_bare_cr(), overflowed: reader.overflowed(), size: reader.size() }
}

/// The limits the `body` target picks from.
pub const BODY_LIMITS: [u64; 4] = [0, 7, 64, u64::MAX];

/// Every property of the message content reader on one input:
/// - feeding it whole and in the given chunks agree (end, flags, size, and the content
///   itself unless the limit was passed, where each is a prefix of the unlimited one);
/// - the content is CRLF-clean and never longer than the limit;
/// - a DATA end is always at a real `CRLF . CRLF` (or `.CRLF` at the very start);
/// - a BDAT reader's content is the input itself when the input is CRLF-clean.
pub fn check_body(dotted: bool, limit: u64, lens: &[u8], input: &[u8]) {
    let whole = run_body(dotted, limit, &[input]);
    let split = run_body(dotted, limit, &chunks(input, lens));
    let bytewise: Vec<&[u8]> = input.chunks(1).collect();
    let single = run_body(dotted, limit, &bytewise);
    let unlimited = run_body(dotted, u64::MAX, &[input]);

    for run in [&split, &single] {
        assert_eq!(run.end, whole.end, "end differs by chunking");
        assert_eq!(run.bare_cr, whole.bare_cr, "bare CR flag differs by chunking");
        assert_eq!(run.overflowed, whole.overflowed, "overflow differs by chunking");
        assert_eq!(run.size, whole.size, "size differs by chunking");
        if !whole.overflowed {
            assert_eq!(run.out, whole.out, "content differs by chunking");
        }
    }
    assert_eq!(unlimited.end, whole.end, "the limit changed where DATA ends");
    assert_eq!(unlimited.size, whole.size);
    assert_eq!(whole.overflowed, whole.size > limit);
    for run in [&whole, &split, &single] {
        assert!(run.out.len() as u64 <= limit, "content of {} bytes over the limit {limit}", run.out.len());
        assert!(unlimited.out.starts_with(&run.out), "limited content is not a prefix of the unlimited content");
        assert!(crlf_clean(&run.out), "content is not CRLF-clean");
    }
    if !whole.overflowed {
        assert_eq!(whole.out, unlimited.out);
    }
    if let Some(n) = whole.end {
        let seen = &input[..n];
        assert!(
            seen.ends_with(b"\r\n.\r\n") || seen == b".\r\n",
            "DATA ended after {:?}",
            String::from_utf8_lossy(&seen[seen.len().saturating_sub(8)..])
        );
    }
    if !dotted && crlf_clean(input) && input.last() != Some(&b'\r') {
        assert!(!whole.bare_cr);
        if !whole.overflowed {
            assert_eq!(whole.out, input, "BDAT content changed");
        }
    }
}

/// Dot-stuffs the lines of `text` (cut at LF, every CR removed) into DATA content with
/// its terminator, as a client does. Returns the wire form and the content the server
/// must recover from it.
pub fn stuff_lines(text: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut wire = Vec::new();
    let mut content = Vec::new();
    if !text.is_empty() {
        for line in text.split(|&b| b == b'\n') {
            let line: Vec<u8> = line.iter().copied().filter(|&b| b != b'\r').collect();
            if line.first() == Some(&b'.') {
                wire.push(b'.');
            }
            wire.extend_from_slice(&line);
            wire.extend_from_slice(b"\r\n");
            content.extend_from_slice(&line);
            content.extend_from_slice(b"\r\n");
        }
    }
    wire.extend_from_slice(b".\r\n");
    (wire, content)
}

/// Dot-stuffed content read back in the given chunks gives exactly the original lines,
/// and DATA ends exactly at the terminator.
pub fn check_stuffing_round_trip(text: &[u8], lens: &[u8]) {
    let (mut wire, content) = stuff_lines(text);
    let end = wire.len();
    wire.extend_from_slice(b"QUIT\r\n");
    let run = run_body(true, u64::MAX, &chunks(&wire, lens));
    assert_eq!(run.end, Some(end), "DATA did not end at its terminator");
    assert!(!run.bare_cr);
    assert_eq!(run.out, content, "dot-stuffed content not recovered");
}

// ---------------------------------------------------------------------------------
// Session

/// One thing a session did, in a form that can be compared between runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Reply(Reply),
    CheckMail(Option<Mailbox>, MailParams, Option<String>),
    CheckAuth(String, String),
    CheckRcpt(Mailbox),
    StartTls,
    Message {
        hello: Hello,
        tls: Option<String>,
        user: Option<String>,
        from: Option<Mailbox>,
        params: MailParams,
        rcpts: Vec<(Mailbox, RcptParams, Vec<Destination>)>,
        content: Vec<u8>,
    },
    Close,
}

/// Session limits and features chosen by the settings bits: `settings` bits 0–1 the
/// message size limit, 2–3 the recipient limit, 4–5 the error limit, 6–7 the header
/// size limit; `extra` bit 0 offers STARTTLS, bit 1 AUTH without TLS, bit 2 requires
/// AUTH before MAIL.
pub fn session_config(settings: u8, extra: u8) -> SessionConfig {
    SessionConfig {
        hostname: "mx.tern.test".into(),
        max_message_size: [64, 1000, 1 << 20, 0][usize::from(settings & 3)],
        max_recipients: usize::from((settings >> 2) & 3) + 1,
        max_bad_commands: [3, 10, 50, 1000][usize::from((settings >> 4) & 3)],
        max_header_size: [1 << 20, 32, 500, 0][usize::from((settings >> 6) & 3)],
        starttls: extra & 1 != 0,
        auth: true,
        auth_without_tls: extra & 2 != 0,
        require_auth: extra & 4 != 0,
    }
}

fn starts_with(m: &Mailbox, c: char) -> bool {
    m.local.trim_start_matches('"').starts_with(c)
}

/// A deterministic policy: a local part starting with `x` is refused for good, one
/// starting with `y` for now; content containing `REJECT` is not stored.
fn mail_verdict(from: &Option<Mailbox>) -> Result<(), Reply> {
    match from {
        Some(m) if starts_with(m, 'x') => Err(Reply::new(550, (5, 7, 1), "Sender refused")),
        Some(m) if starts_with(m, 'y') => Err(Reply::new(451, (4, 3, 0), "Try later")),
        _ => Ok(()),
    }
}

fn rcpt_verdict(to: &Mailbox) -> Result<Vec<Destination>, Reply> {
    if starts_with(to, 'x') {
        Err(Reply::new(550, (5, 1, 1), "No such user"))
    } else if starts_with(to, 'y') {
        Err(Reply::new(450, (4, 2, 1), "Mailbox busy"))
    } else {
        Ok(vec![Destination { address: to.to_string(), local: true }])
    }
}

fn message_verdict(content: &[u8]) -> Result<String, Reply> {
    if content.windows(6).any(|w| w == b"REJECT") {
        Err(Reply::new(554, (5, 7, 1), "Content refused"))
    } else {
        Ok("0000000000000001".into())
    }
}

/// A reply's wire form is well formed: every line `NNN-` / `NNN ` with no CR or LF
/// inside the text (no reply can inject lines into the conversation).
fn check_reply(reply: &Reply) {
    assert!((200..600).contains(&reply.code), "reply code {}", reply.code);
    for line in &reply.lines {
        assert!(!line.contains(['\r', '\n']), "reply text with a line break: {line:?}");
    }
    let mut wire = Vec::new();
    reply.encode(&mut wire);
    assert!(wire.ends_with(b"\r\n") && crlf_clean(&wire));
}

/// Polls `session` until it needs more input, answering every check; `content`
/// gathers the pieces of the message being received (they differ by chunking, so they
/// are no steps of their own).
fn drive(session: &mut Session, config: &SessionConfig, steps: &mut Vec<Step>, content: &mut Vec<u8>) {
    while let Some(event) = session.poll() {
        assert!(steps.last() != Some(&Step::Close), "event after Close: {event:?}");
        match event {
            Event::Reply(reply) => {
                check_reply(&reply);
                steps.push(Step::Reply(reply));
            }
            Event::Close => steps.push(Step::Close),
            Event::ContentStart => content.clear(),
            Event::Content(piece) => {
                assert!(!piece.is_empty() && piece.len() <= tern::smtp::session::CONTENT_PIECE);
                content.extend_from_slice(&piece);
            }
            Event::StartTls => {
                steps.push(Step::StartTls);
                session.tls_started(TLS_DESCRIPTION.into());
            }
            Event::Check(Check::Mail { from, params, user }) => {
                let verdict = mail_verdict(&from);
                steps.push(Step::CheckMail(from, params, user));
                session.answer_mail(verdict);
            }
            Event::Check(Check::Auth { user, password }) => {
                let verdict = if password.0 == PASSWORD {
                    Ok(user.clone())
                } else {
                    Err(Reply::new(535, (5, 7, 8), "Authentication credentials invalid"))
                };
                steps.push(Step::CheckAuth(user, password.0));
                session.answer_auth(verdict);
            }
            Event::Check(Check::Rcpt { to }) => {
                let verdict = rcpt_verdict(&to);
                steps.push(Step::CheckRcpt(to));
                session.answer_rcpt(verdict);
            }
            Event::Check(Check::Message(message)) => {
                let content = std::mem::take(content);
                assert_eq!(message.size, content.len() as u64, "size differs from the content handed out");
                assert!(crlf_clean(&content), "stored content is not CRLF-clean");
                assert!(content.len() as u64 <= config.max_message_size);
                assert!(!message.rcpts.is_empty(), "message without recipients");
                assert!(message.rcpts.len() <= config.max_recipients);
                let verdict = message_verdict(&content);
                let message = *message;
                steps.push(Step::Message {
                    hello: message.hello,
                    tls: message.tls,
                    user: message.user,
                    from: message.from,
                    params: message.params,
                    rcpts: message
                        .rcpts
                        .into_iter()
                        .map(|Recipient { to, params, routes }| (to, params, routes))
                        .collect(),
                    content,
                });
                session.answer_message(verdict);
            }
        }
    }
}

/// Runs a whole conversation, the client's bytes arriving in `pieces`.
pub fn run_session(config: &SessionConfig, pieces: &[&[u8]]) -> Vec<Step> {
    let mut session = Session::new(config.clone());
    check_reply(&session.greeting());
    let (mut steps, mut content) = (Vec::new(), Vec::new());
    for piece in pieces {
        session.receive(piece);
        drive(&mut session, config, &mut steps, &mut content);
    }
    steps
}

/// The reply to a client that sent more after EHLO, HELO, DATA or STARTTLS in one go
/// (RFC 2920 §3.1, RFC 3207); whether that happens depends on how the bytes arrived.
pub fn is_pipelining_violation(step: &Step) -> bool {
    matches!(step, Step::Reply(r) if r.code == 554 && r.status.is_some_and(|s| (s.0, s.1, s.2) == (5, 5, 0)))
}

/// Two runs of the same bytes agree step for step, up to the first pipelining
/// violation that only one of them saw (both then stop there).
pub fn assert_same_conversation(reference: &[Step], other: &[Step]) {
    let va = reference.iter().position(is_pipelining_violation);
    let vb = other.iter().position(is_pipelining_violation);
    let k = match (va, vb) {
        (None, None) => {
            if reference != other {
                let i =
                    reference.iter().zip(other).position(|(a, b)| a != b).unwrap_or(reference.len().min(other.len()));
                panic!(
                    "conversations differ at step {i}: {:?} vs {:?} ({} vs {} steps)",
                    reference.get(i),
                    other.get(i),
                    reference.len(),
                    other.len()
                );
            }
            return;
        }
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (Some(a), Some(b)) => a.min(b),
    };
    assert!(reference.len() >= k && other.len() >= k, "one conversation ended before step {k}");
    assert_eq!(reference[..k], other[..k], "conversations differ before a pipelining violation");
}

/// The number of messages handed out for storing.
pub fn message_count(steps: &[Step]) -> usize {
    steps.iter().filter(|s| matches!(s, Step::Message { .. })).count()
}

/// The `session` target: the client's bytes byte by byte (a client that always waits),
/// in the input's own chunks, and in one piece must give the same conversation.
pub fn check_session(settings: u8, extra: u8, lens: &[u8], payload: &[u8]) {
    let config = session_config(settings, extra);
    let bytewise: Vec<&[u8]> = payload.chunks(1).collect();
    let reference = run_session(&config, &bytewise);
    let split = run_session(&config, &chunks(payload, lens));
    let whole = run_session(&config, &[payload]);
    assert_same_conversation(&reference, &split);
    assert_same_conversation(&reference, &whole);
    if !split.iter().any(is_pipelining_violation) {
        assert_eq!(message_count(&reference), message_count(&split));
    }
}
