//! Signing outgoing mail with the `[[dkim]]` key of its `From:` domain.

use super::key::KeyFile;
use crate::config::DkimKey;
use mail_auth::AuthenticatedMessage;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, DkimSigningStream, Done};
use std::collections::HashMap;

/// The fields signed, when present (RFC 6376 §5.4.1). Fields listed but absent are
/// signed as absent, so none can be added on the way; `From` is listed twice so that
/// a second `From` cannot be added either (§8.15).
const SIGNED_FIELDS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

type Key = DkimSigner<mail_auth::common::crypto::DkimKey, Done>;

/// The signatures of one message in the making, one per key of its `From:` domain:
/// the header fields are kept, the body is hashed as it goes by (RFC 6376 §3.7).
pub struct Signing<'a> {
    domain: String,
    streams: Vec<DkimSigningStream<'a, mail_auth::common::crypto::DkimKey>>,
}

impl Signing<'_> {
    /// The next bytes of the message, from its first header field on.
    pub fn write(&mut self, bytes: &[u8]) {
        for stream in &mut self.streams {
            stream.write(bytes);
        }
    }

    /// The `DKIM-Signature` fields.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for stream in self.streams {
            match stream.finish() {
                Ok(signature) => out.push_str(&signature.to_header()),
                Err(e) => tracing::warn!(domain = self.domain, error = %e, "cannot sign message"),
            }
        }
        out
    }
}

/// The signing keys, by domain.
#[derive(Default)]
pub struct Signer {
    keys: HashMap<String, Vec<Key>>,
}

impl Signer {
    /// Reads every configured key; a missing or unreadable key stops the start.
    pub fn load(keys: &[DkimKey]) -> Result<Signer, String> {
        let mut signer = Signer::default();
        for k in keys {
            let what = || format!("dkim key {} for {} ({})", k.selector, k.domain, k.key.display());
            let pem = std::fs::read(&k.key).map_err(|e| format!("cannot read {}: {e}", what()))?;
            let key = KeyFile::parse_pem(&pem, k.algorithm)
                .and_then(|f| f.signing_key())
                .map_err(|e| format!("{}: {e}", what()))?;
            let domain = crate::smtp::address::canonical_domain(&k.domain).unwrap_or_else(|| k.domain.clone());
            let key = DkimSigner::from_key(key)
                .domain(&domain)
                .selector(&k.selector)
                .headers(SIGNED_FIELDS.iter().copied())
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed);
            signer.keys.entry(domain).or_default().push(key);
        }
        Ok(signer)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The domain of the single `From:` field of `message` and its keys, if it has any.
    fn keys_for(&self, message: &[u8]) -> Option<(String, &[Key])> {
        let parsed = AuthenticatedMessage::parse(message)?;
        let [from] = parsed.from.as_slice() else {
            return None;
        };
        let domain = from.rsplit_once('@').and_then(|(_, d)| crate::smtp::address::canonical_domain(d))?;
        let keys = self.keys.get(&domain)?;
        Some((domain, keys))
    }

    /// Starts signing a message whose header block (CRLF lines, without the empty
    /// line) is `header`; `None` when the domain of its single `From:` has no key.
    /// The whole message is then written to the [`Signing`], header block included.
    pub fn start(&self, header: &[u8]) -> Option<Signing<'_>> {
        if self.keys.is_empty() {
            return None;
        }
        let (domain, keys) = self.keys_for(&[header, b"\r\n"].concat())?;
        Some(Signing { domain, streams: keys.iter().map(Key::sign_streaming).collect() })
    }

    /// `DKIM-Signature` fields for the message made of the header fields `added`
    /// followed by `message` (header and body, CRLF lines): one per key of the domain
    /// in its single `From:` field, none when that domain has no key.
    pub fn sign(&self, added: &[u8], message: &[u8]) -> String {
        let header = memchr::memmem::find(message, b"\r\n\r\n").map_or(message, |i| &message[..i + 2]);
        let Some(mut signing) = self.start(header) else {
            return String::new();
        };
        signing.write(added);
        signing.write(message);
        signing.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::key::KeyFile;
    use super::*;
    use crate::config::DkimAlgorithm;

    /// The value of tag `tag` in a `DKIM-Signature` field, unfolded.
    fn tag(field: &str, tag: &str) -> String {
        let unfolded: String = field.split_once(':').unwrap().1.chars().filter(|c| !c.is_whitespace()).collect();
        let value = unfolded.split(';').find_map(|t| t.strip_prefix(&format!("{tag}=")));
        value.unwrap_or_else(|| panic!("no {tag}= in {field}")).to_string()
    }

    #[test]
    fn signing_in_pieces_hashes_as_signing_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.a.test.pem");
        std::fs::write(&path, KeyFile::generate(DkimAlgorithm::Ed25519Sha256).unwrap().to_pem()).unwrap();
        let config = DkimKey {
            domain: "a.test".into(),
            selector: "s".into(),
            key: path,
            algorithm: DkimAlgorithm::Ed25519Sha256,
        };
        let signer = Signer::load(&[config]).unwrap();
        let added = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n";
        let message = b"From: b@A.test\r\nSubject:  hi  there \r\n\r\n body  line \t\r\n\r\nx\r\n\r\n\r\n";
        let whole = signer.keys["a.test"][0].sign_chained([&added[..], &message[..]]).unwrap().to_header();
        for size in [1, 2, 5, 16, message.len()] {
            let mut signing = signer.start(b"From: b@A.test\r\nSubject:  hi  there \r\n").unwrap();
            signing.write(added);
            message.chunks(size).for_each(|piece| signing.write(piece));
            let pieces = signing.finish();
            assert_eq!(tag(&pieces, "bh"), tag(&whole, "bh"), "body hash, pieces of {size}");
            assert_eq!(tag(&pieces, "h"), tag(&whole, "h"));
        }
        assert_eq!(tag(&signer.sign(added, message), "bh"), tag(&whole, "bh"));
        assert!(signer.start(b"From: b@other.test\r\n").is_none());
    }
}
