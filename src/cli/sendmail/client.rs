//! A small SMTP client for the local submission socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long to wait for one reply (storing a message waits for an fsync).
const REPLY_TIMEOUT: Duration = Duration::from_secs(600);

/// One SMTP reply: its code and text lines joined.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    /// The enhanced status code's class and subject (`5.7`), if the text starts with one.
    pub fn enhanced(&self) -> Option<(u8, u16)> {
        let word = self.text.split_whitespace().next()?;
        let mut parts = word.split('.');
        let class = parts.next()?.parse().ok()?;
        let subject = parts.next()?.parse().ok()?;
        parts.next()?;
        Some((class, subject))
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(path: &Path) -> std::io::Result<Client> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Client { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    /// The raw stream, for `-bs`.
    pub fn into_stream(self) -> UnixStream {
        self.writer
    }

    pub fn reply(&mut self) -> std::io::Result<Reply> {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let line = line.trim_end();
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok()).ok_or(std::io::ErrorKind::InvalidData)?;
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply { code, text: text.join(" / ") });
            }
        }
    }

    pub fn command(&mut self, line: &str) -> std::io::Result<Reply> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.reply()
    }

    pub fn writer(&mut self) -> &mut UnixStream {
        &mut self.writer
    }
}

/// `xtext` (RFC 3461 §4): `+`, `=` and what is not printable ASCII as `+XX`.
pub fn xtext(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn xtext_and_enhanced() {
        assert_eq!(super::xtext("a+b=c"), "a+2Bb+3Dc");
        let r = super::Reply { code: 553, text: "5.7.1 no".into() };
        assert_eq!(r.enhanced(), Some((5, 7)));
    }
}
