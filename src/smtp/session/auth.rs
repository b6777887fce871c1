//! AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms.

use super::{Check, Mode, Pending, Session};
use crate::metrics::Refusal;
use crate::smtp::reply::{Reply, common};
use crate::smtp::sasl::{self, Secret};

/// Where an AUTH exchange stands.
#[derive(Debug)]
pub(super) enum Step {
    /// PLAIN sent without an initial response: the next line is the whole message.
    Plain,
    /// LOGIN: the next line is the user name.
    LoginUser,
    /// LOGIN: the next line is the password for this user.
    LoginPassword(String),
}

fn malformed() -> Reply {
    Reply::new(501, (5, 5, 2), "Malformed authentication response")
}

impl Session {
    /// AUTH is offered when the connection is encrypted (or plaintext is allowed).
    pub(super) fn auth_offered(&self) -> bool {
        self.config.auth && (self.tls.is_some() || self.config.auth_without_tls)
    }

    pub(super) fn on_auth(&mut self, arg: &str) {
        if !self.config.auth {
            return self.reject(Reply::new(502, (5, 5, 1), "AUTH not available"));
        }
        if !self.auth_offered() {
            // RFC 4954 §4: 538 when the mechanism needs an encrypted connection.
            return self.reject(
                Reply::new(538, (5, 7, 11), "Encryption required for requested authentication mechanism")
                    .because(Refusal::Protocol),
            );
        }
        if self.hello.is_none() {
            return self.reject(common::bad_sequence("Send EHLO first"));
        }
        if self.user.is_some() {
            return self.reject(common::bad_sequence("Already authenticated"));
        }
        if self.txn.is_some() {
            return self.reject(common::bad_sequence("AUTH not allowed during a mail transaction"));
        }
        let mut words = arg.split(' ').filter(|w| !w.is_empty());
        let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
        let initial = words.next();
        if words.next().is_some() {
            return self.reject(common::syntax("Syntax: AUTH mechanism [initial-response]"));
        }
        self.mechanism = match mechanism.as_str() {
            "PLAIN" => Some("PLAIN"),
            "LOGIN" => Some("LOGIN"),
            _ => None,
        };
        match (mechanism.as_str(), initial) {
            ("PLAIN", None) => self.challenge(Step::Plain, ""),
            ("PLAIN", Some(ir)) => self.auth_response(Step::Plain, ir.as_bytes()),
            ("LOGIN", None) => self.challenge(Step::LoginUser, "Username:"),
            ("LOGIN", Some(ir)) => self.auth_response(Step::LoginUser, ir.as_bytes()),
            _ => self.reject(Reply::new(504, (5, 5, 4), "Unrecognized authentication type")),
        }
    }

    fn challenge(&mut self, step: Step, prompt: &str) {
        self.reply(Reply::plain(334, vec![sasl::encode(prompt)]));
        self.mode = Mode::Auth(step);
    }

    /// Reads the client's answer to a 334 challenge.
    pub(super) fn read_auth_response(&mut self) -> bool {
        let line = match self.next_line() {
            Ok(line) => line,
            Err(progressed) => {
                if progressed {
                    self.mode = match self.mode {
                        Mode::SkipLine => Mode::SkipLine,
                        _ => Mode::Command,
                    };
                }
                return progressed;
            }
        };
        let Mode::Auth(step) = std::mem::replace(&mut self.mode, Mode::Command) else { unreachable!() };
        if line == b"*" {
            self.reject(Reply::new(501, (5, 0, 0), "Authentication cancelled").because(Refusal::Protocol));
            return true;
        }
        self.auth_response(step, &line);
        true
    }

    fn auth_response(&mut self, step: Step, line: &[u8]) {
        let Some(decoded) = sasl::decode(line) else { return self.reject(malformed()) };
        match step {
            Step::Plain => match sasl::plain(&decoded) {
                Some((user, password)) => self.ask(Pending::Auth, Check::Auth { user, password }),
                None => self.reject(malformed()),
            },
            Step::LoginUser => match String::from_utf8(decoded) {
                Ok(user) if !user.is_empty() => self.challenge(Step::LoginPassword(user), "Password:"),
                _ => self.reject(malformed()),
            },
            Step::LoginPassword(user) => match String::from_utf8(decoded) {
                Ok(password) => self.ask(Pending::Auth, Check::Auth { user, password: Secret(password) }),
                Err(_) => self.reject(malformed()),
            },
        }
    }

    /// The verdict on [`Check::Auth`]: the user's canonical name, or the refusal.
    pub fn answer_auth(&mut self, verdict: Result<String, Reply>) {
        assert_eq!(self.pending.take(), Some(Pending::Auth));
        match verdict {
            Ok(user) => {
                self.user = Some(user);
                self.reply(Reply::new(235, (2, 7, 0), "Authentication successful"));
            }
            Err(reply) => self.reply(reply),
        }
    }
}
