//! The server side of an SMTP conversation as a state machine without I/O.
//!
//! The connection task feeds received bytes with [`Session::receive`] and calls
//! [`Session::poll`] until it returns `None`, writing each reply it gets. Decisions that
//! belong to other layers (may this sender or recipient be accepted, is the message
//! stored) come out as [`Event::Check`]; the session then waits until the caller answers
//! with [`Session::answer_mail`], [`Session::answer_rcpt`] or [`Session::answer_message`].

mod auth;
mod bdat;
mod data;
mod hello;
mod mail;
mod rcpt;
mod simple;
mod starttls;

use super::address::Mailbox;
use super::body::{BodyReader, HeaderEnd};
use super::command::{self, Command};
use super::params::{MailParams, RcptParams};
use super::reply::{Reply, common};
use super::sasl::Secret;
use std::collections::VecDeque;

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4).
pub const MAX_LINE: usize = 1000;

/// Most input decoded into one [`Event::Content`] piece.
pub const CONTENT_PIECE: usize = 64 * 1024;

/// Limits and identity the session needs.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_bad_commands: u32,
    /// Largest header block accepted, in bytes.
    pub max_header_size: u64,
    /// STARTTLS can be offered (a certificate is configured and TLS is not active).
    pub starttls: bool,
    /// AUTH can be offered once the connection is encrypted.
    pub auth: bool,
    /// AUTH is offered even without TLS (loopback clients, when configured).
    pub auth_without_tls: bool,
    /// MAIL needs a successful AUTH first (submission, RFC 6409 §4.3).
    pub require_auth: bool,
}

/// What the client said in EHLO/HELO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub name: String,
    pub extended: bool,
}

/// Where the policy layer said a recipient goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    pub address: String,
    /// A local mailbox rather than another server.
    pub local: bool,
}

/// An accepted recipient and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub to: Mailbox,
    pub params: RcptParams,
    pub routes: Vec<Destination>,
}

/// A complete transaction, handed out when the message content has arrived. The
/// content itself was handed out before, in [`Event::Content`] pieces.
#[derive(Debug, Clone)]
pub struct Message {
    pub hello: Hello,
    /// `TLSv1.3 with cipher …` when the session is encrypted.
    pub tls: Option<String>,
    /// The authenticated user, if any.
    pub user: Option<String>,
    pub from: Option<Mailbox>,
    pub params: MailParams,
    pub rcpts: Vec<Recipient>,
    /// Length of the content, in bytes.
    pub size: u64,
}

/// A question for the layers above the protocol.
#[derive(Debug, Clone)]
pub enum Check {
    /// May this user (authenticated or not) send from this address?
    Mail {
        from: Option<Mailbox>,
        params: MailParams,
        user: Option<String>,
    },
    /// Is this password right? (SASL PLAIN or LOGIN.)
    Auth {
        user: String,
        password: Secret,
    },
    Rcpt {
        to: Mailbox,
    },
    Message(Box<Message>),
}

#[derive(Debug)]
pub enum Event {
    /// Send this reply.
    Reply(Reply),
    /// The content of a new message starts: the pieces that follow belong to it, and
    /// whatever was kept of an earlier one is to be dropped.
    ContentStart,
    /// The next piece of the message content (decoded: no dot-stuffing, CRLF lines), at
    /// most [`CONTENT_PIECE`] bytes and never past the size limit.
    Content(Vec<u8>),
    /// Decide, then answer the session.
    Check(Check),
    /// Send the replies so far, then start the TLS handshake and call
    /// [`Session::tls_started`] (RFC 3207).
    StartTls,
    /// Close the connection once the replies before it are sent.
    Close,
}

#[derive(Debug)]
enum Mode {
    Command,
    /// Discarding the rest of an overlong command line.
    SkipLine,
    Data(BodyReader),
    /// Reading a BDAT chunk; `refusal` is set when the chunk is read only to be discarded.
    Bdat {
        remaining: u64,
        last: bool,
        refusal: Option<Reply>,
    },
    /// Waiting for a SASL response line (after a 334 challenge).
    Auth(auth::Step),
}

/// The open mail transaction (between MAIL and the end of the message).
#[derive(Debug)]
struct Transaction {
    from: Option<Mailbox>,
    params: MailParams,
    rcpts: Vec<Recipient>,
    /// Where the header block of the content ends, for its size limit.
    header: HeaderEnd,
    /// Present once BDAT has started.
    chunks: Option<BodyReader>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Mail,
    Rcpt,
    Message,
    Auth,
}

pub struct Session {
    config: SessionConfig,
    input: Vec<u8>,
    hello: Option<Hello>,
    txn: Option<Transaction>,
    mode: Mode,
    pending: Option<Pending>,
    /// The MAIL or RCPT awaiting a verdict.
    asked: Option<Command>,
    events: VecDeque<Event>,
    bad_commands: u32,
    closed: bool,
    /// Set once TLS is established: `TLSv1.3 with cipher …`.
    tls: Option<String>,
    /// Set by a successful AUTH.
    user: Option<String>,
    /// The SASL mechanism of the last AUTH (`PLAIN`, `LOGIN`).
    mechanism: Option<&'static str>,
}

impl Session {
    pub fn new(config: SessionConfig) -> Session {
        Session {
            config,
            input: Vec::new(),
            hello: None,
            txn: None,
            mode: Mode::Command,
            pending: None,
            asked: None,
            events: VecDeque::new(),
            bad_commands: 0,
            closed: false,
            tls: None,
            user: None,
            mechanism: None,
        }
    }

    /// Takes the client as `user` without AUTH: it was identified another way (a
    /// local user, by the kernel).
    pub fn set_user(&mut self, user: String) {
        self.user = Some(user);
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The SASL mechanism the user authenticated with (`{auth_type}` of milters).
    pub fn auth_mechanism(&self) -> Option<&'static str> {
        self.mechanism.filter(|_| self.user.is_some())
    }

    /// The reverse-path of the open transaction; `None` for the null sender or when
    /// no transaction is open.
    pub fn sender(&self) -> Option<&Mailbox> {
        self.txn.as_ref().and_then(|t| t.from.as_ref())
    }

    /// The name the client gave in EHLO or HELO, once it has.
    pub fn hello_name(&self) -> Option<&str> {
        self.hello.as_ref().map(|h| h.name.as_str())
    }

    pub fn greeting(&self) -> Reply {
        Reply::plain(220, vec![format!("{} ESMTP Tern", self.config.hostname)])
    }

    /// Appends bytes received from the client.
    pub fn receive(&mut self, bytes: &[u8]) {
        if !self.closed {
            self.input.extend_from_slice(bytes);
        }
    }

    /// True while message content is being received (DATA or a BDAT chunk).
    pub fn in_message(&self) -> bool {
        !matches!(self.mode, Mode::Command | Mode::SkipLine) || self.pending == Some(Pending::Message)
    }

    /// True when part of a command line (or of a SASL response line) has arrived but
    /// not its end. The network task bounds how long such a line may take, so that a
    /// client trickling bytes cannot hold the connection; message content has its
    /// own limit (a minimum data rate).
    pub fn partial_line(&self) -> bool {
        match self.mode {
            // In the middle of an overlong line being discarded.
            Mode::SkipLine => !self.closed,
            Mode::Command | Mode::Auth(_) => !self.closed && self.pending.is_none() && !self.input.is_empty(),
            Mode::Data(_) | Mode::Bdat { .. } => false,
        }
    }

    /// True while the content of a message has started and is not yet finished or
    /// dropped: what the caller keeps of it is still needed.
    pub fn holds_content(&self) -> bool {
        matches!(self.mode, Mode::Data(_)) || self.txn.as_ref().is_some_and(|t| t.chunks.is_some())
    }

    /// The next thing to do, or `None` when more input (or an answer) is needed.
    pub fn poll(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            if self.closed || self.pending.is_some() {
                return None;
            }
            let progressed = match self.mode {
                Mode::Command => self.next_command(),
                Mode::SkipLine => self.skip_line(),
                Mode::Data(_) => self.read_data(),
                Mode::Bdat { .. } => self.read_chunk(),
                Mode::Auth(_) => self.read_auth_response(),
            };
            if !progressed {
                return None;
            }
        }
    }

    fn reply(&mut self, reply: Reply) {
        self.events.push_back(Event::Reply(reply));
    }

    /// Hands out a piece of decoded content of the open transaction.
    fn content(&mut self, piece: Vec<u8>) {
        if let Some(txn) = self.txn.as_mut().filter(|_| !piece.is_empty()) {
            // Past the limit without an empty line the header is too large already.
            if txn.header.header_len() <= self.config.max_header_size {
                txn.header.feed(&piece);
            }
            self.events.push_back(Event::Content(piece));
        }
    }

    fn close_with(&mut self, reply: Reply) {
        self.reply(reply);
        self.events.push_back(Event::Close);
        self.closed = true;
        self.input.clear();
    }

    /// Replies with an error that counts towards the bad-command limit.
    fn reject(&mut self, reply: Reply) {
        self.reply(reply);
        self.bad_commands += 1;
        if self.bad_commands >= self.config.max_bad_commands {
            self.close_with(common::too_many_errors());
        }
    }

    fn ask(&mut self, pending: Pending, check: Check) {
        self.pending = Some(pending);
        self.events.push_back(Event::Check(check));
    }

    /// Takes one line (CRLF-terminated, within the limit) from the input. `Err(true)`
    /// means a malformed line was consumed and refused; `Err(false)` that more input
    /// is needed.
    fn next_line(&mut self) -> Result<Vec<u8>, bool> {
        let Some(lf) = memchr::memchr(b'\n', &self.input) else {
            if self.input.len() >= MAX_LINE {
                // No line end within the limit: refuse, then drop the rest of the line.
                self.input.clear();
                self.mode = Mode::SkipLine;
                self.reject(common::line_syntax("Line too long"));
                return Err(true);
            }
            return Err(false);
        };
        let mut line: Vec<u8> = self.input.drain(..=lf).collect();
        if line.len() > MAX_LINE {
            self.reject(common::line_syntax("Line too long"));
            return Err(true);
        }
        if !line.ends_with(b"\r\n") {
            self.reject(common::line_syntax("Line must end with CRLF"));
            return Err(true);
        }
        line.truncate(line.len() - 2);
        if line.contains(&b'\r') {
            self.reject(common::line_syntax("Bare CR in command"));
            return Err(true);
        }
        Ok(line)
    }

    /// Takes one command line from the input and handles it.
    fn next_command(&mut self) -> bool {
        let line = match self.next_line() {
            Ok(line) => line,
            Err(progressed) => return progressed,
        };
        // Postfix's smtpd_forbidden_commands: a web client talking to the mail port.
        if self.hello.is_none() && is_http_request(&line) {
            self.close_with(Reply::new(554, (5, 5, 1), "This is a mail server, not a web server"));
            return true;
        }
        match command::parse(&line) {
            Ok(cmd) => self.dispatch(cmd),
            Err(reply) => self.reject(reply),
        }
        true
    }

    fn skip_line(&mut self) -> bool {
        match memchr::memchr(b'\n', &self.input) {
            Some(lf) => {
                self.input.drain(..=lf);
                self.mode = Mode::Command;
                true
            }
            None => {
                self.input.clear();
                false
            }
        }
    }

    fn dispatch(&mut self, cmd: Command) {
        match cmd {
            Command::Ehlo(name) => self.on_hello(name, true),
            Command::Helo(name) => self.on_hello(name, false),
            Command::Mail(from, params) => self.on_mail(from, params),
            Command::Rcpt(to, params) => self.on_rcpt(to, params),
            Command::Data => self.on_data(),
            Command::Bdat { size, last } => self.on_bdat(size, last),
            Command::Rset => self.on_rset(),
            Command::Noop => self.on_noop(),
            Command::Quit => self.on_quit(),
            Command::Vrfy => self.on_vrfy(),
            Command::Expn => self.on_expn(),
            Command::Help => self.on_help(),
            Command::StartTls => self.on_starttls(),
            Command::Auth(arg) => self.on_auth(&arg),
        }
    }

    /// RFC 2920 §3.1: EHLO, HELO and DATA must be the last command of a pipelined group;
    /// anything already sent after them was sent before the reply it must wait for.
    fn pipelined_too_far(&mut self) -> bool {
        if self.input.is_empty() {
            return false;
        }
        self.close_with(common::pipelining_violation());
        true
    }

    /// Completes the message (end of DATA or BDAT LAST) once its content is in.
    fn finish_message(&mut self, reader: BodyReader) {
        let txn = self.txn.take().expect("message without transaction");
        if reader.overflowed() {
            self.reply(common::too_big());
            return;
        }
        if reader.saw_bare_cr() {
            self.reply(Reply::new(550, (5, 6, 0), "Message contains bare CR, refused"));
            return;
        }
        if txn.header.header_len() > self.config.max_header_size {
            self.reply(Reply::new(552, (5, 3, 4), "Message header size exceeds limit"));
            return;
        }
        let message = Message {
            hello: self.hello.clone().expect("transaction without hello"),
            tls: self.tls.clone(),
            user: self.user.clone(),
            from: txn.from,
            params: txn.params,
            rcpts: txn.rcpts,
            size: reader.size(),
        };
        self.ask(Pending::Message, Check::Message(Box::new(message)));
    }

    /// The verdict on the MAIL command handed out in [`Check::Mail`].
    pub fn answer_mail(&mut self, verdict: Result<(), Reply>) {
        assert_eq!(self.pending.take(), Some(Pending::Mail));
        let Some(Command::Mail(from, params)) = self.asked.take() else { unreachable!() };
        match verdict {
            Ok(()) => {
                self.txn =
                    Some(Transaction { from, params, rcpts: Vec::new(), header: HeaderEnd::default(), chunks: None });
                self.reply(Reply::new(250, (2, 1, 0), "Ok"));
            }
            Err(reply) => self.refuse(reply),
        }
    }

    /// The verdict on the RCPT command handed out in [`Check::Rcpt`]: where it goes.
    pub fn answer_rcpt(&mut self, verdict: Result<Vec<Destination>, Reply>) {
        assert_eq!(self.pending.take(), Some(Pending::Rcpt));
        let Some(Command::Rcpt(to, params)) = self.asked.take() else { unreachable!() };
        match verdict {
            Ok(routes) => {
                if let Some(txn) = self.txn.as_mut() {
                    txn.rcpts.push(Recipient { to, params, routes });
                }
                self.reply(Reply::new(250, (2, 1, 5), "Ok"));
            }
            Err(reply) => self.refuse(reply),
        }
    }

    /// The outcome of storing the message handed out in [`Check::Message`]: its queue id.
    pub fn answer_message(&mut self, outcome: Result<String, Reply>) {
        assert_eq!(self.pending.take(), Some(Pending::Message));
        match outcome {
            Ok(id) => self.reply(Reply::new(250, (2, 0, 0), format!("Ok: queued as {id}"))),
            Err(reply) => self.reply(reply),
        }
    }

    /// A policy refusal (unknown user, relay denied…). It does not count towards the
    /// bad-command limit, which is for protocol errors.
    fn refuse(&mut self, reply: Reply) {
        self.reply(reply);
    }
}

#[cfg(test)]
mod tests;

/// An HTTP request line (`GET / HTTP/1.1`, `POST …`) sent to the SMTP port.
fn is_http_request(line: &[u8]) -> bool {
    ["GET ", "POST ", "HEAD ", "PUT ", "CONNECT ", "OPTIONS "]
        .iter()
        .any(|m| line.len() >= m.len() && line[..m.len()].eq_ignore_ascii_case(m.as_bytes()))
}
