//! Reading the header fields of delivered messages, and above all the
//! `Authentication-Results` header (RFC 8601) that carries Tern's SPF, DKIM,
//! ARC and DMARC verdicts.
#![allow(dead_code)]

use super::{HOSTNAME, show, split_message};

/// The header fields of a stored message in order, unfolded: (name, value).
/// A line that is neither a continuation nor a `name: value` field counts as
/// a field of its own with an empty value.
pub fn header_fields(stored: &[u8]) -> Vec<(String, String)> {
    let (headers, _) = split_message(stored);
    let text = String::from_utf8_lossy(headers);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n") {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push_str(line);
            }
            continue;
        }
        match line.split_once(':') {
            Some((name, value)) => fields.push((name.trim().to_string(), value.to_string())),
            None => fields.push((line.to_string(), String::new())),
        }
    }
    fields
}

/// The unfolded values of the header fields called `name` (any case), as is.
pub fn fields_named(stored: &[u8], name: &str) -> Vec<String> {
    header_fields(stored).into_iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v).collect()
}

/// Runs of white space as one space, none at the ends.
pub fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Removes RFC 5322 comments (nested parentheses, quoted pairs); a comment
/// leaves a space behind. Parentheses inside quoted strings are kept.
pub fn strip_comments(s: &str) -> String {
    let mut out = String::new();
    let mut depth = 0u32;
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if depth > 0 || quoted => {
                let next = chars.next();
                if depth == 0 {
                    out.push(c);
                    out.extend(next);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => {
                depth -= 1;
                out.push(' ');
            }
            _ if depth > 0 => {}
            _ => out.push(c),
        }
    }
    out
}

/// One `method=result ptype.property=value …` part of an
/// Authentication-Results header.
#[derive(Debug, Clone)]
pub struct ArPart {
    /// Lower case, without a `/version`.
    pub method: String,
    /// Lower case.
    pub result: String,
    /// Keys in lower case, values without surrounding double quotes.
    pub props: Vec<(String, String)>,
}

impl ArPart {
    /// Property `key` (such as `header.d`), if present.
    pub fn prop(&self, key: &str) -> Option<String> {
        self.props.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.clone())
    }
}

/// A parsed Authentication-Results header.
#[derive(Debug, Clone)]
pub struct AuthResults {
    pub authserv_id: String,
    pub parts: Vec<ArPart>,
    /// The header's value, trimmed, for messages.
    pub raw: String,
}

impl AuthResults {
    /// Every result of `method`, in order.
    pub fn results(&self, method: &str) -> Vec<String> {
        self.parts.iter().filter(|p| p.method == method).map(|p| p.result.clone()).collect()
    }

    /// The only result of `method`.
    #[track_caller]
    pub fn result(&self, method: &str) -> String {
        let r = self.results(method);
        assert_eq!(r.len(), 1, "exactly one {method}= result expected in {:?}", self.raw);
        r[0].clone()
    }

    /// Property `key` (such as `smtp.mailfrom`) of the first `method` part.
    pub fn prop(&self, method: &str, key: &str) -> Option<String> {
        self.parts.iter().find(|p| p.method == method)?.prop(key)
    }

    #[track_caller]
    pub fn assert(&self, method: &str, result: &str) {
        assert_eq!(self.result(method), result, "{method}= in {:?}", self.raw);
    }
}

/// Parses the value of an Authentication-Results header. Parts without a
/// `method=result` (such as the `none` of a header with no results) are
/// left out.
pub fn parse_ar(value: &str) -> AuthResults {
    let clean = strip_comments(value);
    let mut pieces = clean.split(';');
    let authserv_id = pieces.next().unwrap_or_default().split_whitespace().next().unwrap_or_default().to_string();
    let mut parts = Vec::new();
    for piece in pieces {
        let mut words = piece.split_whitespace();
        let Some(first) = words.next() else { continue };
        let Some((method, result)) = first.split_once('=') else { continue };
        let method = method.split('/').next().unwrap_or_default().trim().to_ascii_lowercase();
        let props = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim_matches('"').to_string()))
            .collect();
        parts.push(ArPart { method, result: result.trim().to_ascii_lowercase(), props });
    }
    AuthResults { authserv_id, parts, raw: value.trim().to_string() }
}

/// Every Authentication-Results header of a stored message, parsed.
pub fn all_ar(stored: &[u8]) -> Vec<AuthResults> {
    fields_named(stored, "Authentication-Results").iter().map(|v| parse_ar(v)).collect()
}

/// The Authentication-Results headers naming Tern (`HOSTNAME`).
pub fn tern_ars(stored: &[u8]) -> Vec<AuthResults> {
    all_ar(stored).into_iter().filter(|a| a.authserv_id.eq_ignore_ascii_case(HOSTNAME)).collect()
}

/// Tern's one Authentication-Results header.
#[track_caller]
pub fn tern_ar(stored: &[u8]) -> AuthResults {
    let mut ars = tern_ars(stored);
    assert_eq!(ars.len(), 1, "exactly one Authentication-Results naming {HOSTNAME} expected:\n{}", show(stored));
    ars.pop().unwrap()
}
