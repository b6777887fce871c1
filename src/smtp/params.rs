//! ESMTP parameters of MAIL and RCPT (RFC 5321 §4.1.2 `esmtp-param`).

use super::reply::Reply;
use serde::{Deserialize, Serialize};
use std::fmt;

/// BODY= (RFC 6152).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    #[default]
    SevenBit,
    EightBitMime,
}

/// RET= (RFC 3461 §4.3): what a bounce should return. Stored as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Ret {
    Full,
    Headers,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Body,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// ENVID, kept in its xtext form (RFC 3461 §4.4).
    pub envid: Option<String>,
    /// AUTH= (RFC 4954 §5), kept as given.
    pub auth: Option<String>,
    /// REQUIRETLS (RFC 8689 §3): the message may travel only over authenticated TLS.
    pub requiretls: bool,
}

/// NOTIFY= (RFC 3461 §4.1). Stored as on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl std::str::FromStr for Ret {
    type Err = String;
    fn from_str(v: &str) -> Result<Ret, String> {
        match v.to_ascii_uppercase().as_str() {
            "FULL" => Ok(Ret::Full),
            "HDRS" => Ok(Ret::Headers),
            _ => Err(format!("not a RET value: {v:?}")),
        }
    }
}

impl std::str::FromStr for Notify {
    type Err = String;
    fn from_str(v: &str) -> Result<Notify, String> {
        parse_notify(v).ok_or_else(|| format!("not a NOTIFY value: {v:?}"))
    }
}

/// Conversions for storing RET and NOTIFY as on the wire.
macro_rules! wire_string {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(v: String) -> Result<$t, String> {
                v.parse()
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    };
}
wire_string!(Ret);
wire_string!(Notify);

/// The parameter values, as written on the wire.
impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if *self == Ret::Full { "FULL" } else { "HDRS" })
    }
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words =
            [(self.never, "NEVER"), (self.success, "SUCCESS"), (self.failure, "FAILURE"), (self.delay, "DELAY")];
        let on: Vec<&str> = words.iter().filter(|(on, _)| *on).map(|(_, w)| *w).collect();
        f.write_str(&on.join(","))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    /// ORCPT as given: `addr-type;xtext` (RFC 3461 §4.2).
    pub orcpt: Option<String>,
}

fn unsupported(key: &str) -> Reply {
    Reply::new(555, (5, 5, 4), format!("Unsupported parameter {key}"))
}

fn bad_value(key: &str) -> Reply {
    Reply::new(501, (5, 5, 4), format!("Invalid value for {key}"))
}

/// Splits `" KEY=VALUE KEY2"` into pairs; keys are upper-cased. A key given twice
/// is refused: RFC 5321 §4.1.2 makes each `esmtp-keyword` name one parameter, and
/// a second value would leave the two ends of a relay disagreeing on which counts.
fn split(rest: &str) -> Result<Vec<(String, Option<&str>)>, Reply> {
    let pairs = pairs(rest)?;
    for (i, (key, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(k, _)| k == key) {
            return Err(Reply::new(501, (5, 5, 4), format!("Duplicate parameter {key}")));
        }
    }
    Ok(pairs)
}

fn pairs(rest: &str) -> Result<Vec<(String, Option<&str>)>, Reply> {
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(Reply::new(501, (5, 5, 4), "Syntax error after address"));
    }
    rest.split(' ')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (p, None),
            };
            let key_ok = !k.is_empty()
                && k.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            let value_ok = v.is_none_or(|v| !v.is_empty() && v.bytes().all(|b| b > 32 && b != b'='));
            if key_ok && value_ok {
                Ok((k.to_ascii_uppercase(), v))
            } else {
                Err(Reply::new(501, (5, 5, 4), format!("Bad parameter syntax {p}")))
            }
        })
        .collect()
}

/// xtext (RFC 3461 §4): printable ASCII except `+` and `=`, or `+XX` hex escapes.
fn is_xtext(v: &str) -> bool {
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c));
                if !hex(b.get(i + 1)) || !hex(b.get(i + 2)) {
                    return false;
                }
                i += 3;
            }
            33..=126 if b[i] != b'=' => i += 1,
            _ => return false,
        }
    }
    !b.is_empty()
}

impl MailParams {
    pub fn parse(rest: &str) -> Result<MailParams, Reply> {
        let mut p = MailParams::default();
        for (key, value) in split(rest)? {
            match (key.as_str(), value) {
                ("SIZE", Some(v)) => {
                    p.size = Some(v.parse().map_err(|_| bad_value("SIZE"))?);
                }
                ("BODY", Some(v)) => {
                    p.body = match v.to_ascii_uppercase().as_str() {
                        "7BIT" => Body::SevenBit,
                        "8BITMIME" => Body::EightBitMime,
                        _ => {
                            return Err(Reply::new(555, (5, 5, 4), format!("Unsupported BODY type {v}")));
                        }
                    }
                }
                ("SMTPUTF8", None) => p.smtputf8 = true,
                ("REQUIRETLS", None) => p.requiretls = true,
                ("RET", Some(v)) => {
                    p.ret = Some(v.parse().map_err(|_| bad_value("RET"))?);
                }
                ("ENVID", Some(v)) if is_xtext(v) && v.len() <= 100 => p.envid = Some(v.to_string()),
                ("AUTH", Some(v)) => p.auth = Some(v.to_string()),
                ("SIZE" | "BODY" | "RET" | "ENVID" | "AUTH" | "SMTPUTF8" | "REQUIRETLS", _) => {
                    return Err(bad_value(&key));
                }
                _ => return Err(unsupported(&key)),
            }
        }
        Ok(p)
    }
}

impl RcptParams {
    pub fn parse(rest: &str) -> Result<RcptParams, Reply> {
        let mut p = RcptParams::default();
        for (key, value) in split(rest)? {
            match (key.as_str(), value) {
                ("NOTIFY", Some(v)) => p.notify = Some(parse_notify(v).ok_or_else(|| bad_value("NOTIFY"))?),
                ("ORCPT", Some(v)) => {
                    let (kind, addr) = v.split_once(';').ok_or_else(|| bad_value("ORCPT"))?;
                    let kind_ok = !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                    if !kind_ok || !is_xtext(addr) {
                        return Err(bad_value("ORCPT"));
                    }
                    p.orcpt = Some(v.to_string());
                }
                ("NOTIFY" | "ORCPT", None) => return Err(bad_value(&key)),
                _ => return Err(unsupported(&key)),
            }
        }
        Ok(p)
    }
}

/// `NEVER` alone, or a comma list of SUCCESS, FAILURE, DELAY.
fn parse_notify(v: &str) -> Option<Notify> {
    let mut n = Notify::default();
    for word in v.split(',') {
        match word.to_ascii_uppercase().as_str() {
            "NEVER" => n.never = true,
            "SUCCESS" => n.success = true,
            "FAILURE" => n.failure = true,
            "DELAY" => n.delay = true,
            _ => return None,
        }
    }
    let other = n.success || n.failure || n.delay;
    (!(n.never && other)).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_params() {
        let p = MailParams::parse(" SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abc+2Bdef").unwrap();
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Body::EightBitMime);
        assert!(p.smtputf8);
        assert_eq!(p.ret, Some(Ret::Headers));
        assert_eq!(p.envid.as_deref(), Some("abc+2Bdef"));
        assert_eq!(MailParams::parse(" FOO=1").unwrap_err().code, 555);
        assert_eq!(MailParams::parse(" SIZE=x").unwrap_err().code, 501);
        assert_eq!(MailParams::parse(" BODY=BINARYMIME").unwrap_err().code, 555);
        assert_eq!(MailParams::parse("SIZE=1").unwrap_err().code, 501);
        assert_eq!(MailParams::parse(" ENVID=a+zz").unwrap_err().code, 501);
        assert!(MailParams::parse(" REQUIRETLS").unwrap().requiretls);
        assert_eq!(MailParams::parse(" REQUIRETLS=YES").unwrap_err().code, 501);
    }

    #[test]
    fn rcpt_params() {
        let p = RcptParams::parse(" NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@x.test").unwrap();
        assert!(p.notify.unwrap().success && p.notify.unwrap().failure);
        assert_eq!(p.orcpt.as_deref(), Some("rfc822;bob@x.test"));
        assert_eq!(p.notify.unwrap().to_string(), "SUCCESS,FAILURE");
        assert!(RcptParams::parse(" NOTIFY=NEVER,SUCCESS").is_err());
        assert!(RcptParams::parse(" ORCPT=bob").is_err());
    }

    #[test]
    fn duplicate_parameters_are_refused() {
        let status = |r: Reply| (r.code, r.status.map(|s| s.to_string()));
        let dup = (501, Some("5.5.4".to_string()));
        assert_eq!(status(MailParams::parse(" SIZE=10 SIZE=20").unwrap_err()), dup);
        assert_eq!(status(MailParams::parse(" SIZE=10 BODY=7BIT size=10").unwrap_err()), dup);
        assert_eq!(status(MailParams::parse(" SMTPUTF8 SMTPUTF8").unwrap_err()), dup);
        assert_eq!(status(MailParams::parse(" RET=FULL RET=HDRS").unwrap_err()), dup);
        assert_eq!(status(RcptParams::parse(" NOTIFY=NEVER NOTIFY=SUCCESS").unwrap_err()), dup);
        assert_eq!(status(RcptParams::parse(" ORCPT=rfc822;a@x.test ORCPT=rfc822;b@x.test").unwrap_err()), dup);
        assert!(MailParams::parse(" SIZE=10 BODY=7BIT").is_ok());
    }
}
