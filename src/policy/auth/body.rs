//! Body hashes for the checks, computed while the body streams past.
//!
//! Once the header block of a message is in, its `DKIM-Signature` and
//! `ARC-Message-Signature` fields say which body hashes are needed: one per
//! canonicalization, hash algorithm and `l=` (RFC 6376 §3.7, RFC 8617 §4.1.2). Each
//! is computed with Tern's canonicalization ([`BodyHasher`]) as the body arrives, and
//! later put into the message that mail-auth parsed from the header block alone, in
//! place of the hashes mail-auth made of its empty body. No whole message is held.

use crate::policy::dkim::canon::{BodyHasher, Canonicalization, Hash};
use mail_auth::AuthenticatedMessage;
use mail_auth::common::crypto::HashAlgorithm;

/// What one body hash is of, as mail-auth keys them: canonicalization, hash, `l=`
/// (0 for the whole body).
type Key = (Canonicalization, HashAlgorithm, u64);

/// The body hashes a message's signatures need, being computed.
pub struct BodyHashes {
    hashers: Vec<(Key, BodyHasher)>,
}

/// The finished body hashes.
#[derive(Debug, Default)]
pub struct Hashed(Vec<(Key, Vec<u8>)>);

/// The header block as a message with an empty body, for mail-auth's parser.
pub fn header_message(header: &[u8]) -> Vec<u8> {
    [header, b"\r\n"].concat()
}

impl BodyHashes {
    /// One hasher for each body hash the signatures in `header` (the header block,
    /// up to the CRLF before the empty line) need.
    pub fn for_header(header: &[u8]) -> BodyHashes {
        let message = header_message(header);
        let keys = AuthenticatedMessage::parse(&message).map(|m| keys(&m)).unwrap_or_default();
        BodyHashes::for_keys(keys)
    }

    fn for_keys(keys: Vec<Key>) -> BodyHashes {
        let hashers = keys
            .into_iter()
            .map(|(c, h, l)| {
                let hash = if h == HashAlgorithm::Sha1 { Hash::Sha1 } else { Hash::Sha256 };
                ((c, h, l), BodyHasher::new(c, hash, (l > 0).then_some(l)))
            })
            .collect();
        BodyHashes { hashers }
    }

    /// The next piece of the body.
    pub fn feed(&mut self, body: &[u8]) {
        for (_, hasher) in &mut self.hashers {
            hasher.feed(body);
        }
    }

    pub fn finish(self) -> Hashed {
        Hashed(self.hashers.into_iter().map(|(key, hasher)| (key, hasher.finish().0)).collect())
    }
}

/// The distinct body hashes `message`'s signatures need.
fn keys(message: &AuthenticatedMessage<'_>) -> Vec<Key> {
    message.body_hashes.iter().map(|(c, h, l, _)| (*c, *h, *l)).collect()
}

impl Hashed {
    /// Puts the hashes into `message` (parsed from a header block, or a whole message
    /// whose body they were computed from). A hash not computed is left empty, so that
    /// no signature matches it.
    pub fn inject(&self, message: &mut AuthenticatedMessage<'_>) {
        for (c, h, l, bh) in &mut message.body_hashes {
            let key = (*c, *h, *l);
            *bh = self.0.iter().find(|(k, _)| *k == key).map(|(_, hash)| hash.clone()).unwrap_or_default();
        }
    }
}

/// Replaces the body hashes mail-auth made when parsing the whole `message` with
/// Tern's.
#[cfg(test)]
pub fn rehash_bodies(message: &mut AuthenticatedMessage<'_>) {
    let raw = message.raw_message;
    let mut hashes = BodyHashes::for_keys(keys(message));
    hashes.feed(&raw[crate::policy::dkim::canon::body_offset(raw)..]);
    hashes.finish().inject(message);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNED: &[u8] = b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=a.test; s=s;\r\n\
        \th=from; bh=AAAA; b=AAAA\r\n\
        DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; d=a.test; s=t;\r\n\
        \th=from; bh=AAAA; b=AAAA\r\n\
        From: a@a.test\r\n";

    #[test]
    fn hashes_in_pieces_match_the_whole() {
        let body = b"Hello  \r\n\r\n world\t\r\n\r\n\r\n".repeat(1000);
        let whole = [SIGNED, b"\r\n", &body].concat();
        let mut reference = AuthenticatedMessage::parse(&whole).unwrap();
        rehash_bodies(&mut reference);
        assert_eq!(reference.body_hashes.len(), 2);

        let mut hashes = BodyHashes::for_header(SIGNED);
        for piece in body.chunks(77) {
            hashes.feed(piece);
        }
        let header = header_message(SIGNED);
        let mut parsed = AuthenticatedMessage::parse(&header).unwrap();
        hashes.finish().inject(&mut parsed);
        assert_eq!(parsed.body_hashes, reference.body_hashes);
        // mail-auth agrees where Tern's canonicalization and its own do (this body).
        let theirs = AuthenticatedMessage::parse(&whole).unwrap();
        assert_eq!(parsed.body_hashes, theirs.body_hashes);
    }

    #[test]
    fn a_hash_not_computed_matches_nothing() {
        let header = header_message(SIGNED);
        let mut parsed = AuthenticatedMessage::parse(&header).unwrap();
        Hashed::default().inject(&mut parsed);
        assert!(parsed.body_hashes.iter().all(|(.., bh)| bh.is_empty()));
    }
}
