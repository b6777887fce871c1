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

    /// `DKIM-Signature` fields for the message made of the header fields `added`
    /// followed by `message` (header and body, CRLF lines): one per key of the domain
    /// in its single `From:` field, none when that domain has no key.
    pub fn sign(&self, added: &[u8], message: &[u8]) -> String {
        let body_at = canon::body_offset(message);
        let Some(parsed) = AuthenticatedMessage::parse(&message[..body_at]) else {
            return String::new();
        };
        let [from] = parsed.from.as_slice() else {
            return String::new();
        };
        let domain = from.rsplit_once('@').and_then(|(_, d)| crate::smtp::address::canonical_domain(d));
        let Some(keys) = domain.and_then(|d| self.keys.get(&d)) else {
            return String::new();
        };
        let mut fields = canon::fields(added);
        fields.extend(canon::fields(message));
        let mut body = BodyHasher::new(Canonicalization::Relaxed, Hash::Sha256, None);
        body.feed(&message[body_at..]);
        let bh = STANDARD.encode(body.finish().0);
        let names = signed_names(&fields);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut out = String::new();
        for key in keys {
            match signature(key, &fields, &names, &bh, now) {
                Ok(field) => out.push_str(&field),
                Err(e) => tracing::warn!(domain = key.domain, error = %e, "cannot sign message"),
            }
        }
        out
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
