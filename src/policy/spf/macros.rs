//! Macro strings (RFC 7208 §7): parsed with the record, so a malformed macro is a
//! syntax error of the whole record (§4.6), and expanded at evaluation.

use std::fmt::Write;
use std::net::IpAddr;

/// One piece of a macro string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    /// `%{` letter transformers delimiters `}` (§7.1).
    Expand {
        letter: u8,
        escape: bool,
        keep: Option<usize>,
        reverse: bool,
        delimiters: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacroString {
    pieces: Vec<Piece>,
}

/// Where a macro string stands: `c`, `r` and `t` are allowed only in explanations
/// (§7.2), and only explanations may hold spaces (§6.2 `explain-string`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Domain,
    Explanation,
}

/// What the macros stand for in one evaluation.
pub struct Values<'a> {
    pub sender: &'a str,
    pub local: &'a str,
    pub sender_domain: &'a str,
    pub domain: &'a str,
    pub ip: IpAddr,
    pub helo: &'a str,
    pub receiver: &'a str,
    /// `%{p}`, found only when a macro asks for it.
    pub validated: Option<&'a str>,
}

impl MacroString {
    /// Parses `text`; `Err` names the fault.
    pub fn parse(text: &str, context: Context) -> Result<MacroString, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            let printable = c.is_ascii_graphic() || (c == ' ' && context == Context::Explanation);
            if !printable {
                return Err(format!("character {c:?} in {text:?}"));
            }
            if c != '%' {
                literal.push(c);
                rest = &rest[1..];
                continue;
            }
            match rest.as_bytes().get(1) {
                Some(b'%') => literal.push('%'),
                Some(b'_') => literal.push(' '),
                Some(b'-') => literal.push_str("%20"),
                Some(b'{') => {
                    let end = rest.find('}').ok_or_else(|| format!("unclosed macro in {text:?}"))?;
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(expand(&rest[2..end], context).map_err(|e| format!("{e} in {text:?}"))?);
                    rest = &rest[end + 1..];
                    continue;
                }
                _ => return Err(format!("bad '%' in {text:?}")),
            }
            rest = &rest[2..];
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(MacroString { pieces })
    }

    /// True when the string ends with a macro (`%{…}`); `domain-end` (§7.1) allows
    /// that instead of a top label.
    pub fn ends_with_macro(&self) -> bool {
        matches!(self.pieces.last(), Some(Piece::Expand { .. }))
    }

    /// The literal text after the last macro.
    pub fn tail(&self) -> &str {
        match self.pieces.last() {
            Some(Piece::Literal(s)) => s,
            _ => "",
        }
    }

    pub fn uses(&self, letter: u8) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Expand { letter: l, .. } if *l == letter))
    }

    pub fn expand(&self, values: &Values) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Expand { letter, escape, keep, reverse, delimiters } => {
                    let value = value(*letter, values);
                    let delimiters = if delimiters.is_empty() { "." } else { delimiters };
                    let mut parts: Vec<&str> = value.split(|c| delimiters.contains(c)).collect();
                    if *reverse {
                        parts.reverse();
                    }
                    let skip = keep.map_or(0, |n| parts.len().saturating_sub(n));
                    let joined = parts[skip..].join(".");
                    if *escape { url_escape(&joined, &mut out) } else { out.push_str(&joined) }
                }
            }
        }
        out
    }
}

/// The inside of `%{…}`: a letter, `*DIGIT ["r"]`, then delimiters (§7.1).
fn expand(inner: &str, context: Context) -> Result<Piece, String> {
    let bytes = inner.as_bytes();
    let first = *bytes.first().ok_or("empty macro")?;
    let letter = first.to_ascii_lowercase();
    let allowed: &[u8] = match context {
        Context::Domain => b"slodiphv",
        Context::Explanation => b"slodiphvcrt",
    };
    if !allowed.contains(&letter) {
        return Err(format!("macro letter {:?}", first as char));
    }
    let rest = &inner[1..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let keep = match &rest[..digits] {
        "" => None,
        n => match n.trim_start_matches('0') {
            "" => return Err("zero labels in a macro".into()),
            n => Some(n.parse::<usize>().unwrap_or(usize::MAX)),
        },
    };
    let rest = &rest[digits..];
    let (reverse, delimiters) = match rest.strip_prefix(['r', 'R']) {
        Some(d) => (true, d),
        None => (false, rest),
    };
    if let Some(c) = delimiters.chars().find(|c| !".-+,/_=".contains(*c)) {
        return Err(format!("macro delimiter {c:?}"));
    }
    Ok(Piece::Expand { letter, escape: first.is_ascii_uppercase(), keep, reverse, delimiters: delimiters.into() })
}

fn value(letter: u8, v: &Values) -> String {
    match letter {
        b's' => v.sender.into(),
        b'l' => v.local.into(),
        b'o' => v.sender_domain.into(),
        b'd' => v.domain.into(),
        b'i' => dotted(v.ip),
        b'p' => v.validated.unwrap_or("unknown").into(),
        b'v' => if v.ip.is_ipv4() { "in-addr" } else { "ip6" }.into(),
        b'h' => v.helo.into(),
        b'c' => v.ip.to_string(),
        b'r' => v.receiver.into(),
        b't' => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()).to_string()
        }
        _ => String::new(),
    }
}

/// `%{i}`: dotted quad, or an IPv6 address as 32 dot-separated nibbles (§7.3).
pub fn dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(63);
            for byte in v6.octets() {
                let _ = write!(s, "{:x}.{:x}.", byte >> 4, byte & 15);
            }
            s.pop();
            s
        }
    }
}

/// Upper-case macro letters: URL-escaped (RFC 3986 unreserved characters kept).
fn url_escape(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(ip: &str) -> Values<'static> {
        Values {
            sender: "strong-bad@email.example.com",
            local: "strong-bad",
            sender_domain: "email.example.com",
            domain: "email.example.com",
            ip: ip.parse().unwrap(),
            helo: "mx.example.org",
            receiver: "mx.test",
            validated: None,
        }
    }

    fn expand(text: &str, ip: &str) -> String {
        MacroString::parse(text, Context::Explanation).unwrap().expand(&values(ip))
    }

    /// The examples of RFC 7208 §7.4.
    #[test]
    fn rfc_examples() {
        let v4 = "192.0.2.3";
        assert_eq!(expand("%{s}", v4), "strong-bad@email.example.com");
        assert_eq!(expand("%{o}", v4), "email.example.com");
        assert_eq!(expand("%{d4}", v4), "email.example.com");
        assert_eq!(expand("%{d3}", v4), "email.example.com");
        assert_eq!(expand("%{d2}", v4), "example.com");
        assert_eq!(expand("%{d1}", v4), "com");
        assert_eq!(expand("%{dr}", v4), "com.example.email");
        assert_eq!(expand("%{d2r}", v4), "example.email");
        assert_eq!(expand("%{l}", v4), "strong-bad");
        assert_eq!(expand("%{l-}", v4), "strong.bad");
        assert_eq!(expand("%{lr}", v4), "strong-bad");
        assert_eq!(expand("%{lr-}", v4), "bad.strong");
        assert_eq!(expand("%{l1r-}", v4), "strong");
        assert_eq!(expand("%{ir}.%{v}._spf.%{d2}", v4), "3.2.0.192.in-addr._spf.example.com");
        assert_eq!(expand("%{lr-}.lp._spf.%{d2}", v4), "bad.strong.lp._spf.example.com");
        assert_eq!(expand("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", v4), "3.2.0.192.in-addr.strong.lp._spf.example.com");
        assert_eq!(expand("%{d2}.trusted-domains.example.net", v4), "example.com.trusted-domains.example.net");
        assert_eq!(
            expand("%{ir}.%{v}._spf.%{d2}", "2001:db8::cb01"),
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
        );
        assert_eq!(expand("%%%_%-", v4), "% %20");
        assert_eq!(expand("%{S}", v4), "strong-bad%40email.example.com");
        assert_eq!(expand("%{c} %{p}", "2001:db8::cb01"), "2001:db8::cb01 unknown");
    }

    #[test]
    fn malformed_macros_are_errors() {
        for bad in ["%", "%x", "%{", "%{}", "%{q}", "%{d0}", "%{d2x}", "%{dr!}", "a b", "é"] {
            assert!(MacroString::parse(bad, Context::Domain).is_err(), "{bad}");
        }
        assert!(MacroString::parse("%{c}", Context::Domain).is_err());
        assert!(MacroString::parse("%{c} %{r} %{t}", Context::Explanation).is_ok());
        assert_eq!(expand("%{d99999999999999999999999}", "192.0.2.3"), "email.example.com");
    }
}
