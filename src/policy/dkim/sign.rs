//! Signing outgoing mail with the `[[dkim]]` key of its `From:` domain: relaxed/relaxed
//! with Tern's canonicalization (`canon`), the signature made with the key itself.

use super::canon::{self, BodyHasher, Canonicalization, Hash};
use super::key::{KeyFile, SigningKey};
use crate::config::DkimKey;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_auth::AuthenticatedMessage;
use std::collections::HashMap;
use std::fmt::Write;

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

struct Key {
    domain: String,
    selector: String,
    key: SigningKey,
}

/// The signatures of one message in the making, one per key of its `From:` domain:
/// the header block is kept, the body is hashed as it goes by (RFC 6376 §3.7).
pub struct Signing<'a> {
    domain: String,
    keys: &'a [Key],
    /// What was written, up to the end of the header block.
    head: Vec<u8>,
    /// The body's hash, once the header block has ended.
    body: Option<BodyHasher>,
}

fn body_hasher() -> BodyHasher {
    BodyHasher::new(Canonicalization::Relaxed, Hash::Sha256, None)
}

impl Signing<'_> {
    /// The next bytes of the message, from its first header field on.
    pub fn write(&mut self, bytes: &[u8]) {
        if let Some(body) = &mut self.body {
            return body.feed(bytes);
        }
        let from = self.head.len().saturating_sub(3);
        self.head.extend_from_slice(bytes);
        let end = match memchr::memmem::find(&self.head[from..], b"\r\n\r\n") {
            _ if self.head.starts_with(b"\r\n") => Some(2),
            found => found.map(|i| from + i + 4),
        };
        if let Some(end) = end {
            let mut body = body_hasher();
            body.feed(&self.head[end..]);
            self.head.truncate(end);
            self.body = Some(body);
        }
    }

    /// The `DKIM-Signature` fields.
    pub fn finish(self) -> String {
        let bh = STANDARD.encode(self.body.unwrap_or_else(body_hasher).finish().0);
        let fields = canon::fields(&self.head);
        let names = signed_names(&fields);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut out = String::new();
        for key in self.keys {
            match signature(key, &fields, &names, &bh, now) {
                Ok(field) => out.push_str(&field),
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
            let key = Key { domain: domain.clone(), selector: k.selector.clone(), key };
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
        Some(Signing { domain, keys, head: Vec::new(), body: None })
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

/// `h=`: every instance of a signed field present, bottom up, then the listed
/// fields not present (or not present that often), which are signed as absent.
fn signed_names(fields: &[canon::Field<'_>]) -> Vec<String> {
    let mut found = [false; SIGNED_FIELDS.len()];
    let mut names: Vec<String> = fields
        .iter()
        .filter_map(|f| {
            let i = SIGNED_FIELDS.iter().position(|n| f.name.eq_ignore_ascii_case(n.as_bytes()))?;
            found[i] = true;
            Some(String::from_utf8_lossy(f.name).into_owned())
        })
        .collect();
    names.reverse();
    names.extend(SIGNED_FIELDS.iter().zip(found).filter(|(_, f)| !f).map(|(n, _)| n.to_string()));
    names
}

/// The `DKIM-Signature` field (RFC 6376 §3.5), folded, ending in CRLF.
fn signature(key: &Key, fields: &[canon::Field<'_>], names: &[String], bh: &str, now: u64) -> Result<String, String> {
    let mut field = format!(
        "DKIM-Signature: v=1; a={}; s={}; d={}; c=relaxed/relaxed;\r\n\th=",
        key.key.algorithm().name(),
        key.selector,
        key.domain
    );
    let mut width = 3;
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            field.push(':');
            if width + name.len() > 72 {
                field.push_str("\r\n\t");
                width = 0;
            }
        }
        field.push_str(name);
        width += name.len() + 1;
    }
    let _ = write!(field, ";\r\n\tt={now}; bh={bh};\r\n\tb=");
    // §3.7: the selected fields, then this one with an empty b=, without its CRLF.
    let mut data = Vec::new();
    for f in canon::select(fields, names) {
        canon::canonical_field(Canonicalization::Relaxed, f.raw, &mut data);
    }
    canon::canonical_signature_field(Canonicalization::Relaxed, format!("{field}\r\n").as_bytes(), &mut data);
    let b = STANDARD.encode(key.key.sign(&data)?);
    for (i, part) in b.as_bytes().chunks(72).enumerate() {
        if i > 0 {
            field.push_str("\r\n\t ");
        }
        field.push_str(std::str::from_utf8(part).expect("base64 is ASCII"));
    }
    field.push_str("\r\n");
    Ok(field)
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
        // The body hash of the whole body at once, and the fields of the whole header block.
        let mut whole_body = body_hasher();
        whole_body.feed(b" body  line \t\r\n\r\nx\r\n\r\n\r\n");
        let bh = STANDARD.encode(whole_body.finish().0);
        let whole = signer.sign(added, message);
        assert_eq!(tag(&whole, "bh"), bh);
        assert_eq!(
            tag(&whole, "h"),
            "Subject:From:Date:From:Reply-To:To:Cc:Message-ID:In-Reply-To:References:MIME-Version:Content-Type:\
             Content-Transfer-Encoding"
        );
        for size in [1, 2, 5, 16, message.len()] {
            let mut signing = signer.start(b"From: b@A.test\r\nSubject:  hi  there \r\n").unwrap();
            signing.write(added);
            message.chunks(size).for_each(|piece| signing.write(piece));
            let pieces = signing.finish();
            assert_eq!(tag(&pieces, "bh"), tag(&whole, "bh"), "body hash, pieces of {size}");
            assert_eq!(tag(&pieces, "h"), tag(&whole, "h"));
        }
        assert!(signer.start(b"From: b@other.test\r\n").is_none());
    }
}
