//! Signing outgoing mail with the `[[dkim]]` key of its `From:` domain.

use super::key::KeyFile;
use crate::config::DkimKey;
use mail_auth::AuthenticatedMessage;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
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

    /// True when a message with this header block (CRLF lines) is signed.
    pub fn signs(&self, header: &[u8]) -> bool {
        !self.keys.is_empty() && self.keys_for(&[header, b"\r\n"].concat()).is_some()
    }

    /// `DKIM-Signature` fields for the message made of the header fields `added`
    /// followed by `message` (header and body, CRLF lines): one per key of the domain
    /// in its single `From:` field, none when that domain has no key.
    pub fn sign(&self, added: &[u8], message: &[u8]) -> String {
        let Some((domain, keys)) = self.keys_for(message) else {
            return String::new();
        };
        let mut out = String::new();
        for key in keys {
            match key.sign_chained([added, message]) {
                Ok(signature) => out.push_str(&signature.to_header()),
                Err(e) => tracing::warn!(domain, error = %e, "cannot sign message"),
            }
        }
        out
    }
}
