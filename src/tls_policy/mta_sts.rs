//! MTA-STS (RFC 8461): the `_mta-sts` TXT record and the policy file, as pure parsers,
//! and the matching of MX host names against a policy's `mx` patterns.

use std::fmt;

/// The largest `max_age` a policy may carry, in seconds (RFC 8461 §3.2: about one year).
pub const MAX_AGE_LIMIT: u32 = 31_557_600;

/// What a sender does when no MX host satisfies the policy (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to matching MX hosts over TLS with a verified certificate.
    Enforce,
    /// Deliver as without a policy, but report what would have failed.
    Testing,
    /// The domain has withdrawn its policy.
    None,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        })
    }
}

/// One `mx:` line of a policy: an exact host name, or `*.` and a domain, which matches
/// exactly one more label to the left (RFC 8461 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPattern {
    /// Matches this host name only (lower case, no trailing dot).
    Exact(String),
    /// Matches `<one label>.<this domain>` (lower case, no trailing dot).
    Wildcard(String),
}

impl MxPattern {
    /// Whether `host` (any case, trailing dot allowed) is matched by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        match self {
            MxPattern::Exact(name) => host == *name,
            MxPattern::Wildcard(parent) => host
                .strip_suffix(parent.as_str())
                .and_then(|left| left.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

impl fmt::Display for MxPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MxPattern::Exact(name) => f.write_str(name),
            MxPattern::Wildcard(parent) => write!(f, "*.{parent}"),
        }
    }
}

/// A valid policy file (RFC 8461 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub mx: Vec<MxPattern>,
    /// Seconds the policy may be cached, at most [`MAX_AGE_LIMIT`].
    pub max_age: u32,
}

impl Policy {
    /// Whether the MX host `host` is one the policy allows (RFC 8461 §4.1).
    pub fn allows_mx(&self, host: &str) -> bool {
        self.mx.iter().any(|p| p.matches(host))
    }
}

/// Why a TXT record or a policy file was rejected; either way the domain is treated as
/// having no policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

/// Picks the policy id from the TXT records found at `_mta-sts.<domain>` (RFC 8461 §3.1):
/// records not starting with `v=STSv1` are discarded, and exactly one must remain and be
/// valid. `Ok(None)` means the domain publishes no MTA-STS record at all.
pub fn policy_id(records: &[String]) -> Result<Option<String>, ParseError> {
    let sts: Vec<&String> = records.iter().filter(|r| r.starts_with("v=STSv1")).collect();
    match sts.as_slice() {
        [] => Ok(None),
        [record] => parse_txt(record).map(Some),
        _ => err(format!("{} v=STSv1 TXT records, not one", sts.len())),
    }
}

/// Parses one `v=STSv1; id=...;` record and returns its id (RFC 8461 §3.1).
pub fn parse_txt(record: &str) -> Result<String, ParseError> {
    let mut fields = record.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next() != Some("v=STSv1") {
        return err("TXT record does not start with v=STSv1");
    }
    let mut id = None;
    let mut count = 0;
    for field in fields {
        if field.is_empty() {
            // Only a trailing separator may leave an empty field.
            continue;
        }
        count += 1;
        let Some((name, value)) = field.split_once('=') else {
            return err(format!("TXT field without '=': {field}"));
        };
        if name == "id" {
            if value.is_empty() || value.len() > 32 || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return err(format!("bad id in TXT record: {value}"));
            }
            id.get_or_insert_with(|| value.to_string());
        } else if !valid_extension(name, value) {
            return err(format!("bad TXT field: {field}"));
        }
    }
    // An empty field between two fields ("a=1;;b=2") is not in the grammar.
    let empty_inside =
        record.trim_end_matches([' ', '\t', ';']).split(';').skip(1).any(|f| f.trim_matches([' ', '\t']).is_empty());
    if empty_inside || count == 0 {
        return err("malformed TXT record");
    }
    id.ok_or_else(|| ParseError("TXT record has no id".into()))
}

/// `sts-extension` of RFC 8461 §3.1.
fn valid_extension(name: &str, value: &str) -> bool {
    let mut name_bytes = name.bytes();
    name_bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= 32
        && name_bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !value.is_empty()
        && value.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b';' && b != b'=')
}

/// Parses a policy file body (RFC 8461 §3.2). Lines end in LF or CRLF; unknown keys are
/// ignored; of a key other than `mx` given twice, the first value counts; `mx` is
/// required unless the mode is `none`.
pub fn parse_policy(text: &str) -> Result<Policy, ParseError> {
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return err(format!("policy line without ':': {line}"));
        };
        let value = value.trim_matches([' ', '\t']);
        match key {
            "version" => {
                version.get_or_insert(value);
            }
            "mode" if mode.is_none() => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    _ => return err(format!("unknown mode: {value}")),
                });
            }
            "max_age" if max_age.is_none() => max_age = Some(parse_max_age(value)?),
            "mx" => mx.push(parse_mx(value)?),
            _ => {}
        }
    }
    match version {
        Some("STSv1") => {}
        Some(v) => return err(format!("unsupported policy version: {v}")),
        None => return err("policy has no version"),
    }
    let mode = mode.ok_or_else(|| ParseError("policy has no mode".into()))?;
    let max_age = max_age.ok_or_else(|| ParseError("policy has no max_age".into()))?;
    if mx.is_empty() && mode != Mode::None {
        return err("policy has no mx");
    }
    Ok(Policy { mode, mx, max_age })
}

/// `max_age`: 1 to 10 digits, at most [`MAX_AGE_LIMIT`].
fn parse_max_age(value: &str) -> Result<u32, ParseError> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return err(format!("bad max_age: {value}"));
    }
    match value.parse::<u64>() {
        Ok(n) if n <= u64::from(MAX_AGE_LIMIT) => Ok(n as u32),
        _ => err(format!("max_age above {MAX_AGE_LIMIT}: {value}")),
    }
}

/// `mx`: `["*."] Domain`, compared without case.
fn parse_mx(value: &str) -> Result<MxPattern, ParseError> {
    let (wildcard, domain) = match value.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if domain.is_empty() || !domain.split('.').all(valid_label) {
        return err(format!("bad mx pattern: {value}"));
    }
    let domain = domain.to_ascii_lowercase();
    Ok(if wildcard { MxPattern::Wildcard(domain) } else { MxPattern::Exact(domain) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rfc_txt_example() {
        // RFC 8461 §3.1.
        assert_eq!(parse_txt("v=STSv1; id=20160831085700Z;").unwrap(), "20160831085700Z");
        assert_eq!(parse_txt("v=STSv1;id=abc").unwrap(), "abc");
        assert_eq!(parse_txt("v=STSv1; id=abc; ext-1=x.y").unwrap(), "abc");
    }

    #[test]
    fn bad_txt_records() {
        for bad in [
            "v=STSv1",
            "v=STSv1;",
            "v=STSv2; id=abc;",
            "v=STSv1; id=;",
            "v=STSv1; id=a-b;",
            "v=STSv1; id=123456789012345678901234567890123;",
            "v=STSv1; ext=1;",
            "v=STSv1; id=abc;; x=y",
            "v=STSv1; id",
            "id=abc; v=STSv1;",
        ] {
            assert!(parse_txt(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn exactly_one_sts_record() {
        assert_eq!(policy_id(&strings(&["v=spf1 -all"])).unwrap(), None);
        assert_eq!(policy_id(&strings(&["v=spf1 -all", "v=STSv1; id=1;"])).unwrap(), Some("1".to_string()));
        assert!(policy_id(&strings(&["v=STSv1; id=1;", "v=STSv1; id=2;"])).is_err());
        assert!(policy_id(&strings(&["v=STSv1; id=bad!"])).is_err());
    }

    #[test]
    fn rfc_policy_example() {
        // RFC 8461 §3.2.
        let text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n\
                    mx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";
        let p = parse_policy(text).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604_800);
        assert_eq!(
            p.mx,
            vec![
                MxPattern::Exact("mail.example.com".into()),
                MxPattern::Wildcard("example.net".into()),
                MxPattern::Exact("backupmx.example.com".into()),
            ]
        );
    }

    #[test]
    fn lf_endings_unknown_keys_and_none_mode() {
        let p = parse_policy("version: STSv1\nmode: testing\nfoo: bar\nmx: MX.Example.org.\nmax_age:86400").unwrap();
        assert_eq!(p.mode, Mode::Testing);
        assert_eq!(p.mx, vec![MxPattern::Exact("mx.example.org".into())]);
        let p = parse_policy("version: STSv1\nmode: none\nmax_age: 0\n").unwrap();
        assert_eq!(p.mode, Mode::None);
        assert!(p.mx.is_empty());
    }

    #[test]
    fn bad_policies() {
        let ok_rest = "mode: enforce\nmx: mx.example.com\nmax_age: 86400\n";
        for bad in [
            format!("version: STSv2\n{ok_rest}"),
            format!("version: stsv1\n{ok_rest}"),
            ok_rest.to_string(),
            "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 31557601\n".into(),
            "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: -1\n".into(),
            "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 12345678901\n".into(),
            "version: STSv1\nmode: enforce\nmx: mx.example.com\n".into(),
            "version: STSv1\nmode: enforce\nmax_age: 86400\n".into(),
            "version: STSv1\nmode: Enforce\nmx: mx.example.com\nmax_age: 86400\n".into(),
            "version: STSv1\nmx: mx.example.com\nmax_age: 86400\n".into(),
            "version: STSv1\nmode: enforce\nmx: *.*.example.com\nmax_age: 86400\n".into(),
            "version: STSv1\nmode: enforce\nmx: mx..example.com\nmax_age: 86400\n".into(),
            "<html>not a policy</html>".into(),
        ] {
            assert!(parse_policy(&bad).is_err(), "{bad:?} accepted");
        }
        let max = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 31557600\n";
        assert_eq!(parse_policy(max).unwrap().max_age, MAX_AGE_LIMIT);
    }

    #[test]
    fn wildcard_matches_one_label() {
        // RFC 8461 §4.1.
        let p = parse_mx("*.example.com").unwrap();
        assert!(p.matches("mail.example.com"));
        assert!(p.matches("MAIL.Example.COM."));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("foo.bar.example.com"));
        assert!(!p.matches("mailexample.com"));
        assert!(!p.matches(".example.com"));
        let exact = parse_mx("mail.example.com").unwrap();
        assert!(exact.matches("Mail.Example.Com."));
        assert!(!exact.matches("x.mail.example.com"));
        let policy =
            parse_policy("version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.backup.example.com\nmax_age: 60\n")
                .unwrap();
        assert!(policy.allows_mx("mx1.example.com"));
        assert!(policy.allows_mx("b2.backup.example.com"));
        assert!(!policy.allows_mx("mx2.example.com"));
    }
}
