//! Command line parsing (RFC 5321 §4.1.1). A line arrives here without its CRLF; the
//! session has already checked the line ending and length.

use super::address::{Mailbox, parse_path};
use super::params::{MailParams, RcptParams};
use super::reply::{Reply, common};
use crate::metrics::Refusal;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    /// `None` is the null reverse path `<>`.
    Mail(Option<Mailbox>, MailParams),
    /// A recipient; `<Postmaster>` without a domain has an empty `domain`.
    Rcpt(Mailbox, RcptParams),
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth(String),
}

/// Parses one command line.
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    let line = std::str::from_utf8(line).map_err(|_| common::line_syntax("Invalid UTF-8 in command"))?;
    if line.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        return Err(common::line_syntax("Control character in command"));
    }
    let (verb, arg) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let no_arg = |cmd: Command| {
        if arg.trim().is_empty() { Ok(cmd) } else { Err(common::syntax("Syntax error, no parameters allowed")) }
    };
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" => Ok(Command::Ehlo(hello_name(arg, "EHLO")?)),
        "HELO" => Ok(Command::Helo(hello_name(arg, "HELO")?)),
        "MAIL" => {
            let rest = strip_keyword(arg, "FROM:").ok_or_else(|| common::syntax("Syntax: MAIL FROM:<address>"))?;
            let (from, params) = parse_path(rest.trim_start(), true).map_err(path_error)?;
            Ok(Command::Mail(from, MailParams::parse(params)?))
        }
        "RCPT" => {
            let rest = strip_keyword(arg, "TO:").ok_or_else(|| common::syntax("Syntax: RCPT TO:<address>"))?;
            let rest = rest.trim_start();
            // RFC 5321 §4.1.1.3: "<Postmaster>" with no domain is always valid.
            if rest.get(..12).is_some_and(|head| head.eq_ignore_ascii_case("<postmaster>")) {
                let mailbox = Mailbox { local: rest[1..11].to_string(), domain: String::new() };
                return Ok(Command::Rcpt(mailbox, RcptParams::parse(&rest[12..])?));
            }
            let (to, params) = parse_path(rest, false).map_err(path_error)?;
            Ok(Command::Rcpt(to.expect("null path refused"), RcptParams::parse(params)?))
        }
        "DATA" => no_arg(Command::Data),
        "BDAT" => parse_bdat(arg),
        "RSET" => no_arg(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_arg(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_arg(Command::StartTls),
        "AUTH" => Ok(Command::Auth(arg.to_string())),
        _ => Err(Reply::new(500, (5, 5, 1), "Command unrecognized")),
    }
}

fn hello_name(arg: &str, verb: &str) -> Result<String, Reply> {
    let name = arg.trim();
    if name.is_empty() || name.contains(' ') {
        return Err(common::syntax(&format!("Syntax: {verb} hostname")));
    }
    Ok(name.to_string())
}

/// Strips `FROM:` / `TO:` case-insensitively.
fn strip_keyword<'a>(arg: &'a str, keyword: &str) -> Option<&'a str> {
    let head = arg.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword).then(|| &arg[keyword.len()..])
}

fn path_error(e: &'static str) -> Reply {
    Reply::new(501, (5, 1, 3), format!("Bad address syntax: {e}")).because(Refusal::Protocol)
}

/// `BDAT <size> [LAST]` (RFC 3030 §2).
fn parse_bdat(arg: &str) -> Result<Command, Reply> {
    let mut words = arg.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .filter(|w| w.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|w| w.parse::<u64>().ok())
        .ok_or_else(|| common::syntax("Syntax: BDAT size [LAST]"))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(common::syntax("Syntax: BDAT size [LAST]")),
    };
    if words.next().is_some() {
        return Err(common::syntax("Syntax: BDAT size [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_verbs() {
        assert_eq!(parse(b"ehlo client.test").unwrap(), Command::Ehlo("client.test".into()));
        assert_eq!(parse(b"DATA").unwrap(), Command::Data);
        assert_eq!(parse(b"BDAT 10 LAST").unwrap(), Command::Bdat { size: 10, last: true });
        assert_eq!(parse(b"BDAT 0").unwrap(), Command::Bdat { size: 0, last: false });
        assert_eq!(parse(b"FOO").unwrap_err().code, 500);
        assert_eq!(parse(b"EHLO").unwrap_err().code, 501);
        assert_eq!(parse(b"DATA x").unwrap_err().code, 501);
        assert_eq!(parse(b"BDAT x").unwrap_err().code, 501);
        assert_eq!(parse(b"BDAT 1 FIRST").unwrap_err().code, 501);
    }

    #[test]
    fn mail_and_rcpt() {
        match parse(b"MAIL FROM:<a@b.test> SIZE=10").unwrap() {
            Command::Mail(Some(m), p) => {
                assert_eq!(m.to_string(), "a@b.test");
                assert_eq!(p.size, Some(10));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(b"mail from: <>").unwrap(), Command::Mail(None, _)));
        assert!(matches!(parse(b"RCPT TO:<Postmaster>").unwrap(), Command::Rcpt(m, _) if m.domain.is_empty()));
        assert_eq!(parse(b"RCPT TO:<>").unwrap_err().code, 501);
        assert_eq!(parse(b"MAIL TO:<a@b.test>").unwrap_err().code, 501);
        assert_eq!(parse(b"MAIL FROM:<a@b.test>SIZE=1").unwrap_err().code, 501);
        assert_eq!(parse(b"MAIL FROM:<a\x00@b.test>").unwrap_err().code, 500);
        assert_eq!(parse(b"MAIL FROM:<\xff@b.test>").unwrap_err().code, 500);
        // Multi-byte characters where a keyword or "<Postmaster>" is expected.
        assert_eq!(parse("RCPT TO:\u{2039}postmaste\u{20ac}@x.test>".as_bytes()).unwrap_err().code, 501);
        assert_eq!(parse("RCPT TO:12345678901\u{e9}".as_bytes()).unwrap_err().code, 501);
        assert_eq!(parse("MAIL FR\u{e9}M:<a@b.test>".as_bytes()).unwrap_err().code, 501);
    }
}
