//! Mailbox and path syntax (RFC 5321 §4.1.2), with UTF-8 addresses (RFC 6531 §3.3).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// `local-part@domain` exactly as the client wrote it (quotes kept), so it can be
/// passed on unchanged. An address literal keeps its brackets in `domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Mailbox {
    pub local: String,
    pub domain: String,
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.domain.is_empty() { f.write_str(&self.local) } else { write!(f, "{}@{}", self.local, self.domain) }
    }
}

impl Mailbox {
    /// Parses `local@domain` (no angle brackets).
    pub fn parse(s: &str) -> Result<Mailbox, &'static str> {
        let (local, rest) = split_local_part(s)?;
        let domain = rest.strip_prefix('@').ok_or("missing @domain")?;
        if domain.is_empty() {
            return Err("empty domain");
        }
        if domain.starts_with('[') {
            check_address_literal(domain)?;
        } else if canonical_domain(domain).is_none() {
            return Err("invalid domain");
        }
        Ok(Mailbox { local: local.to_string(), domain: domain.to_string() })
    }

    /// True when the address needs SMTPUTF8 to be transported (RFC 6531 §3.2).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }

    /// The local part with quoting removed: `"a b"` → `a b`.
    pub fn local_unquoted(&self) -> String {
        match self.local.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            None => self.local.clone(),
            Some(inner) => {
                let mut out = String::with_capacity(inner.len());
                let mut chars = inner.chars();
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        out.extend(chars.next());
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
    }

    /// The domain in canonical form: lower case, A-labels, no trailing dot.
    /// Address literals are returned lower-cased with their brackets.
    pub fn canonical_domain(&self) -> Option<String> {
        if self.domain.starts_with('[') {
            Some(self.domain.to_ascii_lowercase())
        } else {
            canonical_domain(&self.domain)
        }
    }
}

/// Lower-cases a domain, removes one trailing dot and converts U-labels to A-labels
/// (so `BÜCHER.test.` and `xn--bcher-kva.test` compare equal). `None` if it is not a
/// valid host name (RFC 5321 §4.1.2 `Domain`, RFC 5890 labels).
pub fn canonical_domain(d: &str) -> Option<String> {
    let d = d.strip_suffix('.').unwrap_or(d);
    if d.is_empty() || d.len() > 253 {
        return None;
    }
    let ascii = idna::domain_to_ascii(d).ok()?;
    // The limit applies to the A-label form, which is what goes into DNS.
    if ascii.len() > 253 {
        return None;
    }
    let ok = ascii.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    ok.then_some(ascii)
}

/// Splits a leading local part (Dot-string or Quoted-string) off `s`.
fn split_local_part(s: &str) -> Result<(&str, &str), &'static str> {
    if let Some(inner) = s.strip_prefix('"') {
        let mut escaped = false;
        for (i, c) in inner.char_indices() {
            if escaped {
                if !(c == ' ' || c.is_ascii_graphic()) {
                    return Err("invalid quoted pair");
                }
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                let end = i + 2;
                return Ok((&s[..end], &s[end..]));
            } else if !(c == ' ' || c == '!' || (c.is_ascii_graphic()) || !c.is_ascii()) {
                return Err("invalid character in quoted local part");
            }
        }
        return Err("unterminated quoted local part");
    }
    let end = s.find('@').unwrap_or(s.len());
    let local = &s[..end];
    if local.is_empty() {
        return Err("empty local part");
    }
    if local.split('.').any(|atom| atom.is_empty() || !atom.chars().all(is_atext)) {
        return Err("invalid local part");
    }
    Ok((local, &s[end..]))
}

/// `atext` of RFC 5322 §3.2.3, extended with UTF-8 by RFC 6531 §3.3.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || (!c.is_ascii() && !c.is_control())
}

fn check_address_literal(d: &str) -> Result<(), &'static str> {
    let inner = d.strip_prefix('[').and_then(|s| s.strip_suffix(']')).ok_or("invalid address literal")?;
    let ok = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => inner[5..].parse::<Ipv6Addr>().is_ok(),
        _ => inner.parse::<Ipv4Addr>().is_ok(),
    };
    if ok { Ok(()) } else { Err("invalid address literal") }
}

/// Parses a path at the start of `s`: `<mailbox>`, `<@route:mailbox>` (the source route
/// is ignored, RFC 5321 §4.1.1.3 and appendix C), `<>` when `allow_null`, or a bare
/// mailbox without brackets as many old clients send. Returns the mailbox (None for
/// `<>`) and the rest of the line.
pub fn parse_path(s: &str, allow_null: bool) -> Result<(Option<Mailbox>, &str), &'static str> {
    let Some(inner) = s.strip_prefix('<') else {
        let end = s.find(' ').unwrap_or(s.len());
        return Ok((Some(Mailbox::parse(&s[..end])?), &s[end..]));
    };
    // The closing bracket is the first '>' outside a quoted local part.
    let mut in_quotes = false;
    let mut escaped = false;
    let mut close = None;
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '>' if !in_quotes => {
                close = Some(i);
                break;
            }
            _ => {}
        }
    }
    let close = close.ok_or("missing closing >")?;
    let (body, rest) = (&inner[..close], &inner[close + 1..]);
    if body.is_empty() {
        return if allow_null { Ok((None, rest)) } else { Err("empty path") };
    }
    let mailbox_text = match body.strip_prefix('@') {
        Some(route) => {
            let colon = route.find(':').ok_or("invalid source route")?;
            for hop in route[..colon].split(',') {
                let hop = hop.strip_prefix('@').unwrap_or(hop);
                if canonical_domain(hop).is_none() {
                    return Err("invalid source route");
                }
            }
            &route[colon + 1..]
        }
        None => body,
    };
    Ok((Some(Mailbox::parse(mailbox_text)?), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_quoted_and_utf8() {
        let m = Mailbox::parse("alice@Example.TEST").unwrap();
        assert_eq!(m.local, "alice");
        assert_eq!(m.canonical_domain().unwrap(), "example.test");
        let q = Mailbox::parse("\"user@remote.test\"@local.test").unwrap();
        assert_eq!(q.local_unquoted(), "user@remote.test");
        assert_eq!(q.domain, "local.test");
        let u = Mailbox::parse("jösé@bücher.test").unwrap();
        assert!(!u.is_ascii());
        assert_eq!(u.canonical_domain().unwrap(), "xn--bcher-kva.test");
    }

    #[test]
    fn rejects_bad_syntax() {
        for bad in
            ["user@remote.test@local.test", "@x.test", "a..b@x.test", "a@", "a@-x.test", "a b@x.test", "a@[1.2.3]"]
        {
            assert!(Mailbox::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        let (m, rest) = parse_path("<@a.test,@b.test:user@remote.test> SIZE=1", false).unwrap();
        assert_eq!(m.unwrap().to_string(), "user@remote.test");
        assert_eq!(rest, " SIZE=1");
        assert_eq!(parse_path("<>", true).unwrap().0, None);
        assert!(parse_path("<>", false).is_err());
        let (m, _) = parse_path("<\"a>b\"@x.test>", false).unwrap();
        assert_eq!(m.unwrap().local, "\"a>b\"");
        assert_eq!(parse_path("bare@x.test SIZE=5", false).unwrap().1, " SIZE=5");
        assert!(parse_path("<a@x.test", false).is_err());
        let (m, _) = parse_path("<USER@[127.0.0.1]>", false).unwrap();
        assert_eq!(m.unwrap().canonical_domain().unwrap(), "[127.0.0.1]");
    }

    #[test]
    fn trailing_dot_and_case_fold() {
        assert_eq!(canonical_domain("LOCAL.TEST.").unwrap(), "local.test");
        assert_eq!(canonical_domain("xn--bcher-kva.test").unwrap(), "xn--bcher-kva.test");
        assert!(canonical_domain("a..b").is_none());
    }
}
