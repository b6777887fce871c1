//! DKIM verification (RFC 6376 §6.1) with Tern's canonicalization.
//!
//! mail-auth 0.13 canonicalizes some bodies and header fields differently from
//! OpenDKIM and Mail::DKIM (a body ending in a whitespace-only line; a field with
//! whitespace before its colon), so correctly signed mail would fail. Tern
//! therefore checks each signature itself: mail-auth parses the `DKIM-Signature`
//! fields and the key records (fetched through Tern's resolver and cache); Tern
//! hashes the body as it arrives (`super::body`, whose hashes mail-auth's ARC check
//! then uses too), selects and canonicalizes the signed header fields (`dkim::canon`), and
//! checks `b=` with the record's public key. Checking the whole signature, not
//! only the body hash, keeps a match of `bh=` from standing in for a valid
//! signature. A signature with a body length count (`l=`) is refused as insecure
//! by mail-auth's parser (RFC 6376 §8.2) and reported as neutral.

use super::cache::Caches;
use crate::policy::dkim::canon;
use mail_auth::common::crypto::HashAlgorithm;
use mail_auth::common::verify::DomainKey;
use mail_auth::dkim::{DkimError, Signature};
use mail_auth::{AuthenticatedMessage, DkimOutput, Error, MessageAuthenticator};
use std::time::{SystemTime, UNIX_EPOCH};

/// The record's `t=s` flag (RFC 6376 §3.6.1): `i=` must be in `d=` itself.
const FLAG_SAME_DOMAIN: u64 = 0x20;

/// One result per `DKIM-Signature` field, malformed ones included (as neutral);
/// `message` (which may be its header block alone) holds Tern's body hashes.
pub async fn verify<'x>(
    resolver: &MessageAuthenticator,
    caches: &Caches,
    message: &'x AuthenticatedMessage<'x>,
) -> Vec<DkimOutput<'x>> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let raw = message.raw_message;
    let fields = canon::fields(raw);
    let mut out: Vec<DkimOutput<'x>> = message
        .errors
        .iter()
        .filter(|e| matches!(e.header, Error::Dkim(_)))
        .map(|e| DkimOutput::neutral(e.header.clone()))
        .collect();
    for header in &message.dkim_headers {
        let sig = &header.header;
        let result = |r: DkimOutput<'x>| r.with_signature(sig);
        // §3.5 x=: an expired signature counts for nothing.
        if sig.x != 0 && (sig.x <= sig.t || sig.x <= now) {
            out.push(result(DkimOutput::neutral(Error::Dkim(DkimError::SignatureExpired))));
            continue;
        }
        let ha = HashAlgorithm::from(sig.a);
        let bh = message.body_hashes.iter().find(|(c, h, l, _)| (*c, *h, *l) == (sig.cb, ha, sig.l)).map(|b| &b.3);
        if bh != Some(&sig.bh) {
            out.push(result(DkimOutput::neutral(Error::Dkim(DkimError::FailedBodyHashMatch))));
            continue;
        }
        let record = match resolver
            .txt_lookup::<DomainKey>(format!("{}._domainkey.{}.", sig.s, sig.d), Some(caches.txt()))
            .await
        {
            Ok(record) => record,
            Err(e) => {
                out.push(result(DkimOutput::dns_error(e)));
                continue;
            }
        };
        if !auid_allowed(sig, record.f & FLAG_SAME_DOMAIN != 0) {
            out.push(result(DkimOutput::fail(Error::Dkim(DkimError::FailedAuidMatch))));
            continue;
        }
        let data = signed_data(sig, &fields, header.name);
        match record.p.verify_bytes(&data, &sig.b, sig.a) {
            Ok(()) => out.push(result(DkimOutput::pass())),
            Err(e) => out.push(result(DkimOutput::fail(e))),
        }
    }
    out
}

/// §3.5 i=: the agent's domain is `d=` or, unless the record says `t=s`, below it.
fn auid_allowed(sig: &Signature, same_domain: bool) -> bool {
    if sig.i.is_empty() {
        return true;
    }
    let domain = sig.i.rsplit_once('@').map_or("", |(_, d)| d).to_ascii_lowercase();
    let d = sig.d.to_ascii_lowercase();
    domain == d || (!same_domain && domain.ends_with(&format!(".{d}")))
}

/// What `b=` signs (§3.7): the fields `h=` names, then the signature field itself
/// with an empty `b=`; `name` is where that field starts in the message.
fn signed_data(sig: &Signature, fields: &[canon::Field<'_>], name: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    for f in canon::select(fields, &sig.h) {
        canon::canonical_field(sig.ch, f.raw, &mut data);
    }
    if let Some(own) = fields.iter().find(|f| std::ptr::eq(f.raw.as_ptr(), name.as_ptr())) {
        canon::canonical_signature_field(sig.ch, own.raw, &mut data);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DkimAlgorithm, DkimKey};
    use crate::policy::auth::body::rehash_bodies;
    use crate::policy::dkim::Signer;
    use crate::policy::dkim::key::KeyFile;
    use mail_auth::common::parse::TxtRecordParser;

    /// Everything `verify` checks but the DNS lookup, with `record` as the key.
    fn check(message: &[u8], record: &str) -> Result<(), String> {
        let mut parsed = AuthenticatedMessage::parse(message).ok_or("unparsable")?;
        rehash_bodies(&mut parsed);
        let header = parsed.dkim_headers.first().ok_or("no signature")?;
        let sig = &header.header;
        if parsed.body_hashes.iter().all(|(.., bh)| *bh != sig.bh) {
            return Err("body hash".into());
        }
        let key = DomainKey::parse(record.as_bytes()).map_err(|e| e.to_string())?;
        let data = signed_data(sig, &canon::fields(message), header.name);
        key.p.verify_bytes(&data, &sig.b, sig.a).map_err(|e| e.to_string())
    }

    #[test]
    fn terns_signatures_verify_on_tricky_messages() {
        let dir = tempfile::tempdir().unwrap();
        for algorithm in [DkimAlgorithm::RsaSha256, DkimAlgorithm::Ed25519Sha256] {
            let key = KeyFile::generate(algorithm).unwrap();
            let path = dir.path().join(algorithm.name());
            std::fs::write(&path, key.to_pem()).unwrap();
            let config = DkimKey { domain: "a.test".into(), selector: "s".into(), key: path, algorithm };
            let signer = Signer::load(&[config]).unwrap();
            let record = key.dns_record().unwrap();
            for body in [&b"Hello\r\n \r\n"[..], b"", b"caf\xc3\xa9 \t \r\n\t\r\n", b"no line end "] {
                let message = [&b"From: a@a.test\r\nSubject : x\r\n\ty\r\nTo: b@b.test\r\n\r\n"[..], body].concat();
                let added = b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n";
                let signature = signer.sign(added, &message);
                assert!(signature.starts_with("DKIM-Signature: v=1; a="), "{signature}");
                let signed = [signature.as_bytes(), added, &message].concat();
                assert_eq!(check(&signed, &record), Ok(()), "{}", String::from_utf8_lossy(&signed));
                // The Subject is signed: changing it breaks the signature.
                let changed = String::from_utf8_lossy(&signed).replace("Subject : x", "Subject : z");
                assert!(check(changed.as_bytes(), &record).is_err());
            }
        }
    }

    #[test]
    fn agent_domains() {
        let sig = |i: &str| Signature { i: i.into(), d: "A.test".into(), ..Signature::default() };
        assert!(auid_allowed(&sig(""), true));
        assert!(auid_allowed(&sig("u@a.test"), true));
        assert!(auid_allowed(&sig("@mail.a.test"), false));
        assert!(!auid_allowed(&sig("@mail.a.test"), true));
        assert!(!auid_allowed(&sig("u@evila.test"), false));
    }
}
