//! The SMTP client side of one connection (RFC 5321 §4, RFC 2920 pipelining,
//! RFC 3030 BDAT), over any byte stream.

use super::tls::{TlsClient, TlsLevel};
pub use crate::net::Stream;
use crate::reports::tls::ResultType;
use crate::tls_policy::dane::DaneCheck;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;

/// Longest reply line accepted (RFC 5321 §4.5.3.1.5 says 512; be lenient).
const MAX_REPLY_LINE: u64 = 4096;
/// Most lines in one reply.
const MAX_REPLY_LINES: usize = 200;

/// A reply from the remote server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteReply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl RemoteReply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_temporary(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// One line for logs and bounces: `550 5.1.1 no such user`.
    pub fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" / "))
    }
}

/// What went wrong on the connection itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnError(pub String);

/// Parses one reply line: `NNN-text` or `NNN text` (or `NNN` alone).
pub fn parse_reply_line(line: &[u8]) -> Option<(u16, bool, String)> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code: u16 = std::str::from_utf8(&line[..3]).ok()?.parse().ok()?;
    if !(200..600).contains(&code) {
        return None;
    }
    let (more, text) = match line.get(3) {
        None => (false, &[][..]),
        Some(b' ') => (false, &line[4..]),
        Some(b'-') => (true, &line[4..]),
        Some(_) => return None,
    };
    Some((code, more, String::from_utf8_lossy(text).into_owned()))
}

pub struct Client {
    io: BufReader<Box<dyn Stream>>,
    pub command_timeout: Duration,
}

impl Client {
    pub fn new(stream: Box<dyn Stream>, command_timeout: Duration) -> Client {
        Client { io: BufReader::new(stream), command_timeout }
    }

    /// Runs a TLS handshake on the connection (after STARTTLS was accepted). Bytes the
    /// server sent before the handshake would otherwise be read as if they came over
    /// TLS, so their presence aborts the connection.
    /// Also says why the certificate did not verify, when it did not.
    pub async fn start_tls(
        &mut self,
        tls: &TlsClient,
        host: &str,
        dane: Option<&DaneCheck>,
    ) -> Result<(TlsLevel, String, Option<ResultType>), ConnError> {
        if !self.io.buffer().is_empty() {
            return Err(ConnError("server sent data before the TLS handshake".into()));
        }
        let plain = std::mem::replace(&mut self.io, BufReader::new(crate::net::closed())).into_inner();
        let (encrypted, level, cipher, problem) = tls.handshake_checked(plain, host, dane).await?;
        self.io = BufReader::new(encrypted);
        Ok((level, cipher, problem))
    }

    /// Reads one (possibly multi-line) reply within `limit`.
    pub async fn read_reply_within(&mut self, limit: Duration) -> Result<RemoteReply, ConnError> {
        timeout(limit, self.read_reply_inner()).await.map_err(|_| {
            ConnError(format!("timeout after {} waiting for the server", humantime::format_duration(limit)))
        })?
    }

    pub async fn read_reply(&mut self) -> Result<RemoteReply, ConnError> {
        self.read_reply_within(self.command_timeout).await
    }

    async fn read_reply_inner(&mut self) -> Result<RemoteReply, ConnError> {
        let mut lines = Vec::new();
        let mut buf = Vec::new();
        let mut first = None;
        loop {
            buf.clear();
            let n = (&mut self.io)
                .take(MAX_REPLY_LINE)
                .read_until(b'\n', &mut buf)
                .await
                .map_err(|e| ConnError(format!("read error: {e}")))?;
            if n == 0 {
                return Err(ConnError("connection closed by the server".into()));
            }
            if !buf.ends_with(b"\n") {
                return Err(ConnError("reply line too long".into()));
            }
            let malformed = || ConnError(format!("malformed reply: {:?}", String::from_utf8_lossy(&buf).trim_end()));
            let (code, more, text) = parse_reply_line(&buf).ok_or_else(malformed)?;
            // RFC 5321 §4.2.1: every line of a multi-line reply carries the same code.
            // `250-…` then `550 …` says two things at once; it is malformed (and so a
            // temporary failure), not a refusal.
            if first.is_some_and(|f| f != code) {
                return Err(malformed());
            }
            first = Some(code);
            lines.push(text);
            if lines.len() > MAX_REPLY_LINES {
                return Err(ConnError("reply has too many lines".into()));
            }
            if !more {
                return Ok(RemoteReply { code, lines });
            }
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        let stream = self.io.get_mut();
        timeout(self.command_timeout, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| ConnError("timeout while sending".into()))?
        .map_err(|e| ConnError(format!("write error: {e}")))
    }

    /// Sends a command line and reads its reply.
    pub async fn command(&mut self, line: &str) -> Result<RemoteReply, ConnError> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply().await
    }
}

/// Dot-stuffs CRLF-clean content and appends the terminator (RFC 5321 §4.5.2).
pub fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 64 + 5);
    let mut stuffer = Stuffer::default();
    stuffer.push(content, &mut out);
    stuffer.finish(&mut out);
    out
}

/// Dot-stuffs content given in pieces of any size (RFC 5321 §4.5.2): a line that
/// starts with a dot gets another in front.
#[derive(Debug)]
pub struct Stuffer {
    at_line_start: bool,
    /// The last two octets so far, the later one last.
    tail: [u8; 2],
    empty: bool,
}

impl Default for Stuffer {
    fn default() -> Stuffer {
        Stuffer { at_line_start: true, tail: [0; 2], empty: true }
    }
}

impl Stuffer {
    /// Puts the next piece, stuffed, at the end of `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(&last) = input.last() else { return };
        if self.at_line_start && input[0] == b'.' {
            out.push(b'.');
        }
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', input) {
            out.extend_from_slice(&input[start..=end]);
            start = end + 1;
            if input.get(start) == Some(&b'.') {
                out.push(b'.');
            }
        }
        out.extend_from_slice(&input[start..]);
        self.at_line_start = last == b'\n';
        self.tail = match input {
            [.., a, b] => [*a, *b],
            _ => [self.tail[1], last],
        };
        self.empty = false;
    }

    /// Ends the content: a CRLF if the last line lacks one, then the lone dot.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.empty && self.tail != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines() {
        assert_eq!(parse_reply_line(b"250-PIPELINING\r\n"), Some((250, true, "PIPELINING".into())));
        assert_eq!(parse_reply_line(b"250 ok\r\n"), Some((250, false, "ok".into())));
        assert_eq!(parse_reply_line(b"354\r\n"), Some((354, false, String::new())));
        assert_eq!(parse_reply_line(b"25 ok\r\n"), None);
        assert_eq!(parse_reply_line(b"250xok\r\n"), None);
        assert_eq!(parse_reply_line(b"999 ok\r\n"), None);
    }

    #[test]
    fn stuffing() {
        assert_eq!(dot_stuff(b".a\r\nb\r\n..\r\n"), b"..a\r\nb\r\n...\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"x"), b"x\r\n.\r\n");
        assert_eq!(dot_stuff(b"x\r"), b"x\r\r\n.\r\n");
    }

    #[test]
    fn stuffing_in_pieces_of_any_size() {
        let content = b".a\r\nb\r\n..\r\n.\r\nc.\r\n\r\n.d";
        let whole = dot_stuff(content);
        for size in 1..content.len() {
            let (mut stuffer, mut out) = (Stuffer::default(), Vec::new());
            for piece in content.chunks(size) {
                stuffer.push(piece, &mut out);
            }
            stuffer.push(b"", &mut out);
            stuffer.finish(&mut out);
            assert_eq!(out, whole, "pieces of {size}");
        }
    }

    #[tokio::test]
    async fn multiline_and_garbage() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut c = Client::new(Box::new(a), Duration::from_secs(5));
        b.write_all(b"250-one\r\n250 two\r\nhello\r\n").await.unwrap();
        assert_eq!(c.read_reply().await.unwrap().lines, ["one", "two"]);
        assert!(c.read_reply().await.is_err());
        let long = vec![b'2'; 10_000];
        b.write_all(&long).await.unwrap();
        assert!(c.read_reply().await.unwrap_err().0.contains("too long"));
    }

    #[tokio::test]
    async fn multiline_with_mixed_codes_is_malformed() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut c = Client::new(Box::new(a), Duration::from_secs(5));
        b.write_all(b"250-accepted\r\n550 5.1.1 refused\r\n").await.unwrap();
        let e = c.read_reply().await.unwrap_err();
        assert!(e.0.contains("malformed reply") && e.0.contains("550 5.1.1 refused"), "{e:?}");
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut c = Client::new(Box::new(a), Duration::from_secs(5));
        b.write_all(b"550-5.1.1 no\r\n550 5.1.1 such user\r\n").await.unwrap();
        let r = c.read_reply().await.unwrap();
        assert_eq!((r.code, r.lines.len()), (550, 2));
    }
}
