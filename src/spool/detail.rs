//! What happened to one recipient in one attempt, as typed fields: the enhanced
//! status, the remote server and its reply when one answered, and Tern's own words.
//! Logs, the queue listing, the spool and delivery reports all read these fields.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::net::IpAddr;

/// An enhanced status code (RFC 3463): class, subject and detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Status(pub u8, pub u16, pub u16);

impl Status {
    /// Parses `X.Y.Z` (RFC 3463 §2: class 2, 4 or 5, up to three digits each after).
    pub fn parse(s: &str) -> Option<Status> {
        let mut parts = s.split('.');
        let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
        let number = |p: &str, max: usize| (1..=max).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
        if parts.next().is_some() || !matches!(class, "2" | "4" | "5") || !number(subject, 3) || !number(detail, 3) {
            return None;
        }
        Some(Status(class.parse().ok()?, subject.parse().ok()?, detail.parse().ok()?))
    }

    /// The generic status of a reply class: `2.0.0`, `4.0.0` or `5.0.0`.
    pub fn of_class(class: u8) -> Status {
        Status(class, 0, 0)
    }
}

impl From<(u8, u16, u16)> for Status {
    fn from((c, s, d): (u8, u16, u16)) -> Status {
        Status(c, s, d)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl TryFrom<String> for Status {
    type Error = String;
    fn try_from(s: String) -> Result<Status, String> {
        Status::parse(&s).ok_or_else(|| format!("not an enhanced status code: {s:?}"))
    }
}

impl From<Status> for String {
    fn from(s: Status) -> String {
        s.to_string()
    }
}

/// A remote server's answer (RFC 5321 §4.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerReply {
    /// The host name the server was reached by.
    pub host: String,
    pub ip: IpAddr,
    pub code: u16,
    /// The reply's text lines, joined with ` / `.
    pub text: String,
}

/// The outcome of one attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detail {
    pub status: Status,
    /// The remote server's reply, when one answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerReply>,
    /// Tern's own words: why it failed here, or what was done.
    pub text: String,
}

impl Detail {
    pub fn new(status: impl Into<Status>, text: impl Into<String>) -> Detail {
        Detail { status: status.into(), server: None, text: text.into() }
    }

    /// A server's reply, its enhanced status taken from the reply when it gives one
    /// of the right class (RFC 2034 §3), else the generic one of its class.
    pub fn from_server(reply: ServerReply, text: impl Into<String>) -> Detail {
        let class = (reply.code / 100) as u8;
        let status = reply
            .text
            .split_whitespace()
            .next()
            .and_then(Status::parse)
            .filter(|s| s.0 == class)
            .unwrap_or(Status::of_class(class));
        Detail { status, server: Some(reply), text: text.into() }
    }
}

/// `5.1.1 mx.example [192.0.2.1] said: 550 5.1.1 no such user`, or `4.3.0 cannot …`.
impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status)?;
        if let Some(s) = &self.server {
            write!(f, " {} [{}] said: {} {}", s.host, s.ip, s.code, s.text)?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

/// A detail as stored: typed, or the plain text the spool held before.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Typed {
        status: Status,
        #[serde(default)]
        server: Option<ServerReply>,
        text: String,
    },
    Text(String),
}

impl<'de> Deserialize<'de> for Detail {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Detail, D::Error> {
        Ok(match Stored::deserialize(d)? {
            Stored::Typed { status, server, text } => Detail { status, server, text },
            // Older spools kept `X.Y.Z text`, or the text alone for deliveries.
            Stored::Text(text) => match text.split_once(' ').and_then(|(s, rest)| Some((Status::parse(s)?, rest))) {
                Some((status, rest)) => Detail::new(status, rest),
                None => Detail::new(Status::of_class(2), text),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parses_only_valid_codes() {
        assert_eq!(Status::parse("5.1.10"), Some(Status(5, 1, 10)));
        for bad in ["3.0.0", "5.1", "5.1.1.1", "5..1", "5.1.1234", "x.1.1", ""] {
            assert_eq!(Status::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn server_status_comes_from_the_reply_of_the_right_class() {
        let reply =
            |code, text: &str| ServerReply { host: "mx".into(), ip: [127, 0, 0, 2].into(), code, text: text.into() };
        assert_eq!(Detail::from_server(reply(550, "5.1.1 no such user"), "").status, Status(5, 1, 1));
        assert_eq!(Detail::from_server(reply(450, "5.1.1 wrong class"), "").status, Status(4, 0, 0));
        assert_eq!(Detail::from_server(reply(550, "no code"), "").status, Status(5, 0, 0));
        let d = Detail::from_server(reply(550, "5.1.1 no such user"), "");
        assert_eq!(d.to_string(), "5.1.1 mx [127.0.0.2] said: 550 5.1.1 no such user");
    }

    #[test]
    fn stored_details_round_trip_and_old_text_still_reads() {
        let d = Detail::new((4, 4, 1), "cannot connect");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Detail>(&json).unwrap(), d);
        let old: Detail = serde_json::from_str("\"4.3.0 cannot create Maildir\"").unwrap();
        assert_eq!(old, Detail::new((4, 3, 0), "cannot create Maildir"));
    }
}
