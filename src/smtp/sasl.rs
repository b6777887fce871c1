//! SASL PLAIN (RFC 4616) and LOGIN decoding for AUTH (RFC 4954).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::fmt;

/// A password: never shown in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Decodes one base64 response line; `=` is the empty response (RFC 4954 §4).
pub fn decode(line: &[u8]) -> Option<Vec<u8>> {
    if line == b"=" {
        return Some(Vec::new());
    }
    STANDARD.decode(line).ok()
}

/// Decodes a PLAIN message `authzid NUL authcid NUL passwd` into (user, password).
/// An authorization identity other than the user itself is refused.
pub fn plain(message: &[u8]) -> Option<(String, Secret)> {
    let mut parts = message.split(|&b| b == 0);
    let (authz, user, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || user.is_empty() || (!authz.is_empty() && authz != user) {
        return None;
    }
    let user = String::from_utf8(user.to_vec()).ok()?;
    let password = String::from_utf8(password.to_vec()).ok()?;
    Some((user, Secret(password)))
}

pub fn encode(text: &str) -> String {
    STANDARD.encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages() {
        let (u, p) = plain(b"\0alice@x.test\0secret").unwrap();
        assert_eq!(u, "alice@x.test");
        assert_eq!(p.0, "secret");
        assert!(plain(b"alice@x.test\0alice@x.test\0pw").is_some());
        assert!(plain(b"bob\0alice\0pw").is_none(), "acting as another user");
        assert!(plain(b"\0\0pw").is_none());
        assert!(plain(b"only").is_none());
        assert!(plain(b"\0a\0b\0c").is_none());
        assert_eq!(format!("{p:?}"), "Secret(…)");
    }

    #[test]
    fn base64_lines() {
        assert_eq!(decode(b"=").unwrap(), b"");
        assert_eq!(decode(b"AGFsaWNlAHB3").unwrap(), b"\0alice\0pw");
        assert!(decode(b"!!!").is_none());
    }
}
