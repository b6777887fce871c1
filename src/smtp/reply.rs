//! SMTP replies: a basic code, an enhanced status code (RFC 3463) and text.

use crate::metrics::Refusal;
use std::fmt;

/// An enhanced status code `class.subject.detail` (RFC 3463).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u8, pub u16, pub u16);

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply, possibly of several lines.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    /// Absent only for the greeting and the EHLO/HELO reply (RFC 2034 §3).
    pub status: Option<Status>,
    pub lines: Vec<String>,
    /// Why it refuses, where its code and status do not tell ([`Reply::refusal`]).
    reason: Option<Refusal>,
}

/// Replies are equal by what goes on the wire.
impl PartialEq for Reply {
    fn eq(&self, other: &Reply) -> bool {
        (self.code, self.status, &self.lines) == (other.code, other.status, &other.lines)
    }
}

impl Eq for Reply {}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, status: (u8, u16, u16), text: impl Into<String>) -> Reply {
        Reply { code, status: Some(Status(status.0, status.1, status.2)), lines: vec![text.into()], reason: None }
    }

    /// A reply without an enhanced status code.
    pub fn plain(code: u16, lines: Vec<String>) -> Reply {
        Reply { code, status: None, lines, reason: None }
    }

    /// A reply of several lines, each with the enhanced status code `status` when given.
    pub fn with_lines(code: u16, status: Option<Status>, lines: Vec<String>) -> Reply {
        Reply { code, status, lines, reason: None }
    }

    /// The same reply, counted as refused for `reason`.
    pub fn because(mut self, reason: Refusal) -> Reply {
        self.reason = Some(reason);
        self
    }

    /// Why a 4xx or 5xx reply refuses: the reason it was given, else what its
    /// enhanced status code says (RFC 3463 §3.4: class 3 the mail system, 5 the
    /// protocol, 6 the content); `None` for a positive reply.
    pub fn refusal(&self) -> Option<Refusal> {
        if self.code < 400 {
            return None;
        }
        if let Some(reason) = self.reason {
            return Some(reason);
        }
        Some(match self.status {
            Some(Status(_, 3, 4)) => Refusal::MessageSize,
            Some(Status(_, 3, _)) => Refusal::Storage,
            Some(Status(_, 5, 3)) => Refusal::TooManyRecipients,
            Some(Status(_, 5, _)) => Refusal::Protocol,
            Some(Status(_, 6, _)) => Refusal::Content,
            None if (500..=504).contains(&self.code) => Refusal::Protocol,
            _ => Refusal::Other,
        })
    }

    /// The first line's text, for logs.
    pub fn text(&self) -> &str {
        self.lines.first().map(String::as_str).unwrap_or("")
    }

    /// Wire form: `250-…` lines then `250 …`, each ending in CRLF.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let n = self.lines.len().max(1);
        for i in 0..n {
            let sep = if i + 1 == n { ' ' } else { '-' };
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let line = match self.status {
                Some(s) => format!("{}{sep}{s} {text}\r\n", self.code),
                None => format!("{}{sep}{text}\r\n", self.code),
            };
            out.extend_from_slice(line.as_bytes());
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} {} {}", self.code, s, self.text()),
            None => write!(f, "{} {}", self.code, self.text()),
        }
    }
}

/// Replies used in more than one place.
pub mod common {
    use super::Reply;
    use crate::metrics::Refusal;

    pub fn ok() -> Reply {
        Reply::new(250, (2, 0, 0), "Ok")
    }
    pub fn bad_sequence(text: &str) -> Reply {
        Reply::new(503, (5, 5, 1), text)
    }
    pub fn syntax(text: &str) -> Reply {
        Reply::new(501, (5, 5, 4), text)
    }
    pub fn line_syntax(text: &str) -> Reply {
        Reply::new(500, (5, 5, 2), text)
    }
    pub fn too_big() -> Reply {
        Reply::new(552, (5, 3, 4), "Message size exceeds fixed maximum message size")
    }
    pub fn too_many_errors() -> Reply {
        Reply::new(421, (4, 7, 0), "Too many errors, closing connection").because(Refusal::Protocol)
    }
    pub fn pipelining_violation() -> Reply {
        Reply::new(554, (5, 5, 0), "Improper command pipelining, closing connection")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_classified_by_reason_then_status() {
        use crate::metrics::Refusal;
        assert_eq!(common::ok().refusal(), None);
        let relay = Reply::new(554, (5, 7, 1), "Relay access denied").because(Refusal::RelayDenied);
        assert_eq!(relay.refusal(), Some(Refusal::RelayDenied));
        assert_eq!(relay, Reply::new(554, (5, 7, 1), "Relay access denied"), "the reason is not on the wire");
        assert_eq!(common::too_big().refusal(), Some(Refusal::MessageSize));
        assert_eq!(Reply::new(452, (4, 3, 1), "full").refusal(), Some(Refusal::Storage));
        assert_eq!(Reply::new(452, (4, 5, 3), "Too many recipients").refusal(), Some(Refusal::TooManyRecipients));
        assert_eq!(common::bad_sequence("no").refusal(), Some(Refusal::Protocol));
        assert_eq!(common::pipelining_violation().refusal(), Some(Refusal::Protocol));
        assert_eq!(common::too_many_errors().refusal(), Some(Refusal::Protocol));
        assert_eq!(Reply::new(550, (5, 6, 0), "bare CR").refusal(), Some(Refusal::Content));
        assert_eq!(Reply::plain(502, vec!["no".into()]).refusal(), Some(Refusal::Protocol));
        assert_eq!(Reply::new(550, (5, 7, 1), "no").refusal(), Some(Refusal::Other));
    }

    #[test]
    fn encodes_single_and_multi_line() {
        let mut out = Vec::new();
        Reply::new(250, (2, 1, 0), "Ok").encode(&mut out);
        assert_eq!(out, b"250 2.1.0 Ok\r\n");
        out.clear();
        Reply::plain(250, vec!["a".into(), "b".into()]).encode(&mut out);
        assert_eq!(out, b"250-a\r\n250 b\r\n");
    }
}
