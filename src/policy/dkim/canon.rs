//! DKIM canonicalization (RFC 6376 §3.4): "simple" and "relaxed", for header
//! fields and for the body, as OpenDKIM and Mail::DKIM compute it.
//!
//! The body is fed in chunks of any size ([`BodyHasher`]); lines end in CRLF, and a
//! lone CR or LF is an ordinary byte. A body whose last line has no CRLF is
//! canonicalized as if it had one (§3.4.3, and what OpenDKIM and Mail::DKIM do).

use aws_lc_rs::digest;
pub use mail_auth::dkim::Canonicalization;

/// The hash of `a=` (RFC 6376 §3.3; SHA-1 only to verify old signatures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha1,
}

impl Hash {
    fn algorithm(self) -> &'static digest::Algorithm {
        match self {
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.algorithm(), data).as_ref().to_vec()
    }
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The body canonicalizer's state between chunks.
struct Body {
    canon: Canonicalization,
    /// Completed lines that are empty once canonicalized, not yet written: they
    /// are written only if a line with content follows (§3.4.3, §3.4.4 c).
    blank_lines: u64,
    /// Relaxed: whitespace seen since the last content byte of the line.
    wsp: bool,
    /// The current line has content.
    content: bool,
    /// The last byte was a CR that may start a CRLF.
    cr: bool,
    /// Something was written.
    written: bool,
}

impl Body {
    fn new(canon: Canonicalization) -> Body {
        Body { canon, blank_lines: 0, wsp: false, content: false, cr: false, written: false }
    }

    /// Writes content bytes (no CR, and for relaxed no whitespace) of the line.
    fn content(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if !self.content {
            for _ in 0..self.blank_lines {
                out.extend_from_slice(b"\r\n");
            }
            self.blank_lines = 0;
            self.content = true;
        }
        if self.wsp {
            out.push(b' ');
            self.wsp = false;
        }
        out.extend_from_slice(bytes);
        self.written = true;
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        if self.content {
            out.extend_from_slice(b"\r\n");
        } else {
            self.blank_lines += 1;
        }
        self.content = false;
        self.wsp = false;
    }

    fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        let relaxed = self.canon == Canonicalization::Relaxed;
        while let Some(&b) = chunk.first() {
            if self.cr {
                self.cr = false;
                if b == b'\n' {
                    self.end_line(out);
                    chunk = &chunk[1..];
                    continue;
                }
                self.content(b"\r", out);
            }
            if b == b'\r' {
                self.cr = true;
                chunk = &chunk[1..];
            } else if relaxed && is_wsp(b) {
                self.wsp = true;
                chunk = &chunk[1..];
            } else {
                // A run of ordinary bytes goes out at once.
                let run = chunk.iter().position(|&c| c == b'\r' || (relaxed && is_wsp(c))).unwrap_or(chunk.len());
                self.content(&chunk[..run], out);
                chunk = &chunk[run..];
            }
        }
    }

    fn finish(mut self, out: &mut Vec<u8>) {
        if self.cr {
            self.content(b"\r", out);
        }
        if self.content {
            out.extend_from_slice(b"\r\n");
        }
        // §3.4.3: an empty body is one CRLF in "simple"; §3.4.4: nothing in "relaxed".
        if !self.written && self.canon == Canonicalization::Simple {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The body hash (`bh=`) of a body fed in chunks.
pub struct BodyHasher {
    body: Body,
    context: digest::Context,
    /// `l=`: how many canonical octets to hash at most (§3.5).
    limit: Option<u64>,
    hashed: u64,
    buf: Vec<u8>,
}

impl BodyHasher {
    pub fn new(canon: Canonicalization, hash: Hash, limit: Option<u64>) -> BodyHasher {
        BodyHasher {
            body: Body::new(canon),
            context: digest::Context::new(hash.algorithm()),
            limit,
            hashed: 0,
            buf: Vec::new(),
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        self.body.feed(chunk, &mut self.buf);
        self.flush();
    }

    fn flush(&mut self) {
        let take = match self.limit {
            Some(limit) => self.buf.len().min(limit.saturating_sub(self.hashed) as usize),
            None => self.buf.len(),
        };
        self.context.update(&self.buf[..take]);
        self.hashed += take as u64;
        self.buf.clear();
    }

    /// The hash, and how many canonical octets it covers.
    pub fn finish(mut self) -> (Vec<u8>, u64) {
        let body = std::mem::replace(&mut self.body, Body::new(Canonicalization::Simple));
        body.finish(&mut self.buf);
        self.flush();
        (self.context.finish().as_ref().to_vec(), self.hashed)
    }
}

/// The canonical form of a whole body.
pub fn canonical_body(canon: Canonicalization, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    let mut state = Body::new(canon);
    state.feed(body, &mut out);
    state.finish(&mut out);
    out
}

/// One header field as it appears in the message.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    /// The name, without the whitespace that may precede the colon.
    pub name: &'a [u8],
    /// The whole field: name, colon, value and its line ends.
    pub raw: &'a [u8],
}

/// Where the body starts: after the first empty line, or the end when there is none.
pub fn body_offset(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 2;
    }
    memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 4)
}

/// The header fields of `message` (which may be a bare header block), in order.
/// A line without a colon is a field without a name, which nothing selects.
pub fn fields(message: &[u8]) -> Vec<Field<'_>> {
    let block = match memchr::memmem::find(message, b"\r\n\r\n") {
        _ if message.starts_with(b"\r\n") => &[][..],
        Some(i) => &message[..i + 2],
        None => message,
    };
    let mut out = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < block.len() {
        let next = memchr::memmem::find(&block[pos..], b"\r\n").map_or(block.len(), |i| pos + i + 2);
        if next >= block.len() || !is_wsp(block[next]) {
            let raw = &block[start..next];
            let name = match memchr::memchr(b':', raw) {
                Some(colon) => trim_end(&raw[..colon]),
                None => &[][..],
            };
            out.push(Field { name, raw });
            start = next;
        }
        pos = next;
    }
    out
}

fn trim_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., last] = s {
        if !is_wsp(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// The fields `h=` names, in its order: each name takes the last instance not yet
/// taken, and names with no instance left stand for nothing (RFC 6376 §5.4.2).
pub fn select<'a, S: AsRef<str>>(fields: &[Field<'a>], names: &[S]) -> Vec<Field<'a>> {
    let mut used = vec![false; fields.len()];
    let mut out = Vec::new();
    for name in names {
        let name = name.as_ref().trim().as_bytes();
        if let Some(i) = (0..fields.len()).rev().find(|&i| !used[i] && fields[i].name.eq_ignore_ascii_case(name)) {
            used[i] = true;
            out.push(fields[i]);
        }
    }
    out
}

/// Appends the canonical form of one header field (with its CRLF; RFC 6376 §3.4.1,
/// §3.4.2).
pub fn canonical_field(canon: Canonicalization, raw: &[u8], out: &mut Vec<u8>) {
    if canon == Canonicalization::Simple {
        out.extend_from_slice(raw);
        return;
    }
    let (name, value) = match memchr::memchr(b':', raw) {
        Some(colon) => (trim_end(&raw[..colon]), &raw[colon + 1..]),
        None => (trim_end(raw), &[][..]),
    };
    out.extend(name.iter().map(u8::to_ascii_lowercase));
    out.push(b':');
    // Unfold, make each whitespace run one space, drop it at both ends.
    let mut wsp = false;
    let mut started = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => wsp = true,
            _ => {
                if wsp && started {
                    out.push(b' ');
                }
                wsp = false;
                started = true;
                out.push(b);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// The value of the `DKIM-Signature` field `raw` with the value of its `b=` tag
/// removed (RFC 6376 §3.7), to be hashed last, without its final CRLF.
pub fn canonical_signature_field(canon: Canonicalization, raw: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    canonical_field(canon, &without_b(raw), out);
    if out[start..].ends_with(b"\r\n") {
        out.truncate(out.len() - 2);
    }
}

/// `raw` with everything between `b=` and the next `;` (or the end) removed, but
/// the line end that closes the field.
fn without_b(raw: &[u8]) -> Vec<u8> {
    let colon = memchr::memchr(b':', raw).map_or(0, |c| c + 1);
    let mut pos = colon;
    while pos < raw.len() {
        let tag_end = memchr::memchr(b';', &raw[pos..]).map_or(raw.len(), |i| pos + i);
        let tag = &raw[pos..tag_end];
        let name_end = memchr::memchr(b'=', tag);
        let is_b = name_end.is_some_and(|eq| {
            let name: Vec<u8> = tag[..eq].iter().copied().filter(|b| !b" \t\r\n".contains(b)).collect();
            name == b"b"
        });
        if let (true, Some(eq)) = (is_b, name_end) {
            let mut out = raw[..pos + eq + 1].to_vec();
            let rest = &raw[tag_end..];
            if rest.is_empty() && raw.ends_with(b"\r\n") {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(rest);
            return out;
        }
        pos = tag_end + 1;
    }
    raw.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Canonicalization::{Relaxed, Simple};

    fn body(c: Canonicalization, b: &[u8]) -> String {
        String::from_utf8_lossy(&canonical_body(c, b)).into_owned()
    }

    #[test]
    fn relaxed_bodies() {
        assert_eq!(body(Relaxed, b"Hello\r\n \r\n"), "Hello\r\n");
        assert_eq!(body(Relaxed, b" a  \t b \r\n\r\n\t\r\nc\r\n \r\n\r\n"), " a b\r\n\r\n\r\nc\r\n");
        assert_eq!(body(Relaxed, b""), "");
        assert_eq!(body(Relaxed, b"\r\n\r\n"), "");
        assert_eq!(body(Relaxed, b"abc "), "abc\r\n");
        assert_eq!(body(Relaxed, b"a\rb\nc\r"), "a\rb\nc\r\r\n");
    }

    #[test]
    fn simple_bodies() {
        assert_eq!(body(Simple, b"Hello\r\n \r\n\r\n"), "Hello\r\n \r\n");
        assert_eq!(body(Simple, b""), "\r\n");
        assert_eq!(body(Simple, b"\r\n\r\n"), "\r\n");
        assert_eq!(body(Simple, b"abc"), "abc\r\n");
    }

    #[test]
    fn chunks_do_not_matter() {
        let text = b"a \t\r\n\r\n  b\r\r\n\r\n \r\nc\t\r\n\r\n";
        for c in [Relaxed, Simple] {
            let whole = Hash::Sha256.digest(&canonical_body(c, text));
            for size in 1..text.len() {
                let mut h = BodyHasher::new(c, Hash::Sha256, None);
                text.chunks(size).for_each(|part| h.feed(part));
                assert_eq!(h.finish().0, whole, "{c:?} in chunks of {size}");
            }
        }
    }

    #[test]
    fn length_limit_counts_canonical_octets() {
        let mut h = BodyHasher::new(Relaxed, Hash::Sha256, Some(3));
        h.feed(b"a  b c\r\n");
        assert_eq!(h.finish(), (Hash::Sha256.digest(b"a b"), 3));
    }

    #[test]
    fn fields_and_selection() {
        let msg = b"Subject : x\r\n\ty\r\nFrom: a\r\nfrom: b\r\nno colon\r\n\r\nFrom: body\r\n";
        let f = fields(msg);
        assert_eq!(f.len(), 4);
        assert_eq!(f[0].name, b"Subject");
        assert_eq!(f[0].raw, b"Subject : x\r\n\ty\r\n");
        let picked = select(&f, &["from", "From", "From", "subject"]);
        let raws: Vec<&[u8]> = picked.iter().map(|f| f.raw).collect();
        assert_eq!(raws, [&b"from: b\r\n"[..], b"From: a\r\n", b"Subject : x\r\n\ty\r\n"]);
        assert_eq!(fields(b"A: 1\r\nB: 2").len(), 2);
        assert!(fields(b"\r\nA: body").is_empty());
    }

    #[test]
    fn relaxed_fields() {
        let mut out = Vec::new();
        canonical_field(Relaxed, b"Subject \t: \t a  b\r\n \tc \r\n", &mut out);
        assert_eq!(out, b"subject:a b c\r\n");
        out.clear();
        canonical_field(Simple, b"Subject : x\r\n", &mut out);
        assert_eq!(out, b"Subject : x\r\n");
    }

    #[test]
    fn the_signature_is_hashed_without_b() {
        let mut out = Vec::new();
        let sig = b"DKIM-Signature: v=1; b=abc\r\n\tdef; bh=xyz;\r\n\tb=\r\n";
        canonical_signature_field(Relaxed, sig, &mut out);
        assert_eq!(out, b"dkim-signature:v=1; b=; bh=xyz; b=");
        out.clear();
        canonical_signature_field(Simple, b"DKIM-Signature: a=1; b=q w\r\n", &mut out);
        assert_eq!(out, b"DKIM-Signature: a=1; b=");
    }
}
