//! SPF records parsed by the ABNF of RFC 7208 §4.6.1 and §12: any syntax error
//! anywhere makes the record a permanent error before anything is evaluated (§4.6).

use super::macros::{Context, MacroString};
use mail_auth::SpfResult;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    All,
    Include(MacroString),
    /// `a`, with its own target or the current domain, and the CIDR lengths.
    A(Option<MacroString>, u8, u8),
    Mx(Option<MacroString>, u8, u8),
    Ptr(Option<MacroString>),
    Ip(IpAddr, u8),
    Exists(MacroString),
}

impl Mechanism {
    /// Mechanisms that ask DNS count against the limit of ten (§4.6.4).
    pub fn queries_dns(&self) -> bool {
        !matches!(self, Mechanism::All | Mechanism::Ip(..))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub qualifier: SpfResult,
    pub mechanism: Mechanism,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub directives: Vec<Directive>,
    pub redirect: Option<MacroString>,
    pub exp: Option<MacroString>,
}

/// True for an SPF record: `v=spf1` alone or followed by a space (§4.5).
pub fn is_spf(record: &str) -> bool {
    let r = record.as_bytes();
    r.len() >= 6 && r[..6].eq_ignore_ascii_case(b"v=spf1") && (r.len() == 6 || r[6] == b' ')
}

impl Record {
    /// Parses an SPF record (one for which `is_spf` holds); `Err` names the fault.
    pub fn parse(text: &str) -> Result<Record, String> {
        let mut record = Record { directives: Vec::new(), redirect: None, exp: None };
        // §4.6.1: terms are separated by spaces, and only by spaces.
        for term in text[6..].split(' ').filter(|t| !t.is_empty()) {
            if let Some(c) = term.chars().find(|c| !c.is_ascii_graphic()) {
                return Err(format!("character {c:?} in {term:?}"));
            }
            if let Some((name, value)) = modifier(term) {
                let slot = match name.to_ascii_lowercase().as_str() {
                    "redirect" => &mut record.redirect,
                    "exp" => &mut record.exp,
                    // §6: unknown modifiers are ignored, but must be well formed.
                    _ => {
                        MacroString::parse(value, Context::Domain)?;
                        continue;
                    }
                };
                if slot.is_some() {
                    return Err(format!("{name}= given twice"));
                }
                *slot = Some(domain_spec(value)?);
            } else {
                record.directives.push(directive(term).map_err(|e| format!("{term:?}: {e}"))?);
            }
        }
        Ok(record)
    }
}

/// `name "=" macro-string`, the name `ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )`.
fn modifier(term: &str) -> Option<(&str, &str)> {
    let (name, value) = term.split_once('=')?;
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    valid.then_some((name, value))
}

fn directive(term: &str) -> Result<Directive, String> {
    let (qualifier, rest) = match term.as_bytes()[0] {
        b'+' => (SpfResult::Pass, &term[1..]),
        b'-' => (SpfResult::Fail, &term[1..]),
        b'~' => (SpfResult::SoftFail, &term[1..]),
        b'?' => (SpfResult::Neutral, &term[1..]),
        _ => (SpfResult::Pass, term),
    };
    let split = rest.find([':', '/']).unwrap_or(rest.len());
    let (name, args) = rest.split_at(split);
    let target = |args: &str| match args.strip_prefix(':') {
        Some(spec) => domain_spec(spec).map(Some),
        None if args.is_empty() => Ok(None),
        None => Err("unexpected text".to_string()),
    };
    let required = |t: Option<MacroString>| t.ok_or_else(|| "needs \":domain\"".to_string());
    let mechanism = match name.to_ascii_lowercase().as_str() {
        "all" if args.is_empty() => Mechanism::All,
        "include" => Mechanism::Include(required(target(args)?)?),
        "exists" => Mechanism::Exists(required(target(args)?)?),
        "ptr" => Mechanism::Ptr(target(args)?),
        "a" | "mx" => {
            let (args, v4, v6) = dual_cidr(args)?;
            let spec = target(args)?;
            if name.eq_ignore_ascii_case("a") { Mechanism::A(spec, v4, v6) } else { Mechanism::Mx(spec, v4, v6) }
        }
        "ip4" | "ip6" => {
            let value = args.strip_prefix(':').ok_or("needs \":address\"")?;
            let (addr, prefix) = value.split_once('/').map_or((value, None), |(a, p)| (a, Some(p)));
            let (ip, max) = if name.eq_ignore_ascii_case("ip4") {
                (addr.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| "bad IPv4 address")?, 32)
            } else {
                (addr.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| "bad IPv6 address")?, 128)
            };
            Mechanism::Ip(ip, prefix.map_or(Ok(max), |p| cidr(p, max))?)
        }
        _ => return Err("unknown mechanism".into()),
    };
    Ok(Directive { qualifier, mechanism })
}

/// Splits `[ip4-cidr-length] [ "/" ip6-cidr-length ]` off the end (§5.3, §5.4).
fn dual_cidr(args: &str) -> Result<(&str, u8, u8), String> {
    let (mut rest, mut v4, mut v6) = (args, 32, 128);
    if let Some((before, n)) = trailing_number(rest)
        && let Some(before) = before.strip_suffix("//")
    {
        v6 = cidr(n, 128)?;
        rest = before;
    }
    if let Some((before, n)) = trailing_number(rest)
        && let Some(before) = before.strip_suffix('/')
        && !before.ends_with('/')
    {
        v4 = cidr(n, 32)?;
        rest = before;
    }
    Ok((rest, v4, v6))
}

/// `text` split before its trailing digits, when it ends with some.
fn trailing_number(text: &str) -> Option<(&str, &str)> {
    let digits = text.bytes().rev().take_while(u8::is_ascii_digit).count();
    (digits > 0).then(|| text.split_at(text.len() - digits))
}

/// A prefix length: `"0"` or digits without a leading zero, at most `max` (§12).
fn cidr(digits: &str, max: u8) -> Result<u8, String> {
    let valid = !digits.is_empty()
        && digits.len() <= 3
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    match digits.parse::<u8>() {
        Ok(n) if valid && n <= max => Ok(n),
        _ => Err(format!("bad prefix length /{digits}")),
    }
}

/// `domain-spec = macro-string domain-end`, where `domain-end` is a macro or
/// `"." toplabel ["."]` (§7.1): a macro followed by a lone dot is neither.
fn domain_spec(text: &str) -> Result<MacroString, String> {
    let spec = MacroString::parse(text, Context::Domain)?;
    if spec.ends_with_macro() {
        return Ok(spec);
    }
    let tail = spec.tail();
    let tail = tail.strip_suffix('.').unwrap_or(tail);
    match tail.rsplit_once('.') {
        Some((_, top)) if is_toplabel(top) => Ok(spec),
        _ => Err(format!("{text:?} does not end in a top-level domain")),
    }
}

/// `toplabel`: letters, digits and inner hyphens, not all digits (§7.1).
fn is_toplabel(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().any(|c| !c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Record {
        Record::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn valid_records() {
        let r = ok("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx:mx.test/24//64 ptr include:x.test ~all");
        assert_eq!(r.directives.len(), 7);
        assert_eq!(
            r.directives[3].mechanism,
            Mechanism::Mx(Some(MacroString::parse("mx.test", Context::Domain).unwrap()), 24, 64)
        );
        assert_eq!(r.directives[6].qualifier, SpfResult::SoftFail);
        ok("v=spf1");
        ok("v=spf1  a   -all ");
        ok("v=spf1 a/0 a//0 a/24//64 a:foo:bar/baz.example.com");
        ok("v=spf1 moo.cow-far_out=man:dog/cat -all");
        ok("v=spf1 -all redirect=_spf.%{d}");
        ok("v=spf1 redirect=x.test -all");
        ok("v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} a:xn--zckzah.example.xn--zckzah");
        ok("v=spf1 include:foo.123-4 exp=explain.%{d}");
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "v=spf1 a:example.com:8080",
            "v=spf1 a:museum",
            "v=spf1 a:museum.",
            "v=spf1 a:foo.123",
            "v=spf1 a:foo.-bar",
            "v=spf1 a/33",
            "v=spf1 a//129",
            "v=spf1 a/032",
            "v=spf1 a/",
            "v=spf1 a//",
            "v=spf1 ip4:192.0.2.1/33",
            "v=spf1 ip4:192.0.2.1/",
            "v=spf1 ip4:192.0.2.01",
            "v=spf1 ip6:::1/129",
            "v=spf1 ip6:::1//64",
            "v=spf1 ip4",
            "v=spf1 include",
            "v=spf1 include:",
            "v=spf1 exists",
            "v=spf1 all:x.test",
            "v=spf1 frobnicate",
            "v=spf1 -redirect=x.test",
            "v=spf1 =x",
            "v=spf1 redirect=a.test redirect=b.test",
            "v=spf1 exp=a.test exp=b.test",
            "v=spf1 redirect=%{q}.test",
            "v=spf1 exp=museum",
            "v=spf1 a:%{c}.test",
            "v=spf1 a:%{d}.",
            "v=spf1 foo=%",
            "v=spf1 a:x.test\tptr",
            "v=spf1 ip4:192.0.2.5\n",
            "v=spf1 \u{80}a",
        ] {
            assert!(Record::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn spf_records_are_recognized() {
        assert!(is_spf("v=spf1 mx -all"));
        assert!(is_spf("V=SPF1"));
        assert!(!is_spf("v=spf10 mx"));
        assert!(!is_spf("google-site-verification=abc"));
    }
}
