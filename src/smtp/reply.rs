//! SMTP replies: a basic code, an enhanced status code (RFC 3463) and text.

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Absent only for the greeting and the EHLO/HELO reply (RFC 2034 §3).
    pub status: Option<Status>,
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, status: (u8, u16, u16), text: impl Into<String>) -> Reply {
        Reply { code, status: Some(Status(status.0, status.1, status.2)), lines: vec![text.into()] }
    }

    /// A reply without an enhanced status code.
    pub fn plain(code: u16, lines: Vec<String>) -> Reply {
        Reply { code, status: None, lines }
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
        Reply::new(421, (4, 7, 0), "Too many errors, closing connection")
    }
    pub fn pipelining_violation() -> Reply {
        Reply::new(554, (5, 5, 0), "Improper command pipelining, closing connection")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
