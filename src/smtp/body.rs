//! The message content reader for DATA (RFC 5321 §4.1.1.4, §4.5.2) and BDAT (RFC 3030).
//!
//! Smuggling-safe by construction: the only end of DATA is `<CRLF>.<CRLF>` where the
//! first CRLF is a real one. A bare LF is normalized to CRLF (as Postfix's
//! `smtpd_forbid_bare_newline = normalize` does) and never ends DATA, even around a lone
//! dot; a bare CR is recorded so the message can be refused (550 5.6.0). The stored
//! content is therefore CRLF-clean, and whatever is relayed later is dot-stuffed again.

use memchr::memchr2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line; `true` when the previous line ended in a real CRLF.
    Start(bool),
    /// Saw `.` at the start of a line.
    Dot(bool),
    /// Saw `.` CR at the start of a line.
    DotCr(bool),
    /// Inside a line.
    Mid,
    /// Saw CR inside a line.
    Cr,
}

/// Streams message content into a buffer, enforcing a size limit.
#[derive(Debug)]
pub struct BodyReader {
    state: State,
    /// DATA mode: dot-stuffing and the terminator apply. BDAT mode: raw chunks.
    dotted: bool,
    size: u64,
    limit: u64,
    overflow: bool,
    bare_cr: bool,
}

impl BodyReader {
    /// A reader for DATA content.
    pub fn data(limit: u64) -> BodyReader {
        BodyReader::new(true, limit)
    }

    /// A reader for BDAT chunks (no dot-stuffing; the end is given by `BDAT n LAST`).
    pub fn chunks(limit: u64) -> BodyReader {
        BodyReader::new(false, limit)
    }

    fn new(dotted: bool, limit: u64) -> BodyReader {
        BodyReader { state: State::Start(true), dotted, size: 0, limit, overflow: false, bare_cr: false }
    }

    /// More content was received than the limit allows (content past it was dropped).
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// A CR not followed by LF was seen.
    pub fn saw_bare_cr(&self) -> bool {
        self.bare_cr || (!self.dotted && self.state == State::Cr)
    }

    /// Content bytes seen so far, including any past the limit.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        if self.size > self.limit {
            self.overflow = true;
        } else {
            out.extend_from_slice(bytes);
        }
    }

    /// Consumes `input`, appending content to `out`. In DATA mode, returns
    /// `Some(n)` when the terminator ends at `input[n - 1]`; the rest is not content.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Mid => {
                    // Fast path: copy up to the next CR or LF.
                    let run = memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                    if run > 0 {
                        self.emit(out, &input[i..i + run]);
                        i += run;
                        continue;
                    }
                    self.line_end_byte(b, out);
                }
                State::Start(real) if self.dotted && b == b'.' => self.state = State::Dot(real),
                State::Start(_) => {
                    self.state = State::Mid;
                    continue;
                }
                State::Dot(real) => match b {
                    b'\r' => self.state = State::DotCr(real),
                    b'\n' => {
                        // A lone dot ended by a bare LF is content, never the end.
                        self.emit(out, b".\r\n");
                        self.state = State::Start(false);
                    }
                    _ => {
                        // §4.5.2: the leading dot of a longer line is removed.
                        self.state = State::Mid;
                        continue;
                    }
                },
                State::DotCr(real) => {
                    if b == b'\n' {
                        if real {
                            return Some(i + 1);
                        }
                        self.emit(out, b".\r\n");
                        self.state = State::Start(true);
                    } else {
                        self.bare_cr = true;
                        self.emit(out, b".");
                        self.state = State::Mid;
                        continue;
                    }
                }
                State::Cr => {
                    if b == b'\n' {
                        self.emit(out, b"\r\n");
                        self.state = State::Start(true);
                    } else {
                        self.bare_cr = true;
                        self.state = State::Mid;
                        continue;
                    }
                }
            }
            i += 1;
        }
        None
    }

    /// Handles a CR or LF met inside a line.
    fn line_end_byte(&mut self, b: u8, out: &mut Vec<u8>) {
        if b == b'\r' {
            self.state = State::Cr;
        } else {
            self.emit(out, b"\r\n");
            self.state = State::Start(false);
        }
    }
}

/// Finds where the header block of content that arrives in pieces ends: after the CRLF
/// of the last header line, before the empty line (RFC 5322 §2.1). Content with no
/// empty line is all header.
#[derive(Debug, Default, Clone)]
pub struct HeaderEnd {
    seen: u64,
    /// How much of CR LF CR LF the last bytes matched.
    matched: u8,
    end: Option<u64>,
}

impl HeaderEnd {
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.end.is_none() {
            for (i, &b) in bytes.iter().enumerate() {
                self.matched = match (self.matched, b) {
                    (0 | 2, b'\r') => self.matched + 1,
                    (1 | 3, b'\n') => self.matched + 1,
                    (_, b'\r') => 1,
                    _ => 0,
                };
                if self.matched == 4 {
                    self.end = Some(self.seen + i as u64 - 1);
                    break;
                }
            }
        }
        self.seen += bytes.len() as u64;
    }

    /// The length of the header block, once the empty line after it has been seen.
    pub fn found(&self) -> Option<u64> {
        self.end
    }

    /// The length of the header block so far: all content until the empty line is seen.
    pub fn header_len(&self) -> u64 {
        self.end.unwrap_or(self.seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in one piece and byte by byte; both must agree.
    fn run(input: &[u8]) -> (Option<usize>, Vec<u8>, bool) {
        let mut r = BodyReader::data(1 << 20);
        let mut out = Vec::new();
        let end = r.feed(input, &mut out);
        let mut r2 = BodyReader::data(1 << 20);
        let mut out2 = Vec::new();
        let mut end2 = None;
        for (i, b) in input.iter().enumerate() {
            if let Some(n) = r2.feed(std::slice::from_ref(b), &mut out2) {
                end2 = Some(i + n);
                break;
            }
        }
        assert_eq!((end, &out), (end2, &out2), "split feeding differs");
        (end, out, r.saw_bare_cr())
    }

    #[test]
    fn plain_message_and_terminator() {
        let (end, out, _) = run(b"Subject: x\r\n\r\nhello\r\n.\r\nMAIL FROM:<a@b>\r\n");
        assert_eq!(end, Some(24));
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
    }

    #[test]
    fn empty_message_at_start() {
        let (end, out, _) = run(b".\r\n");
        assert_eq!(end, Some(3));
        assert!(out.is_empty());
    }

    #[test]
    fn dot_unstuffing_is_exact() {
        let (_, out, _) = run(b"..x\r\n...\r\n.y\r\na.b\r\n..\r\n.\r\n");
        assert_eq!(out, b".x\r\n..\r\ny\r\na.b\r\n.\r\n");
    }

    #[test]
    fn smuggling_vectors_never_end_data() {
        for v in [&b"a\n.\nMAIL"[..], b"a\r\n.\nMAIL", b"a\n.\r\nMAIL", b"a\r.\rMAIL", b"a\r.\r\nMAIL", b"a\n.\n\r\n"] {
            let (end, _, _) = run(v);
            assert_eq!(end, None, "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn bare_lf_is_normalized() {
        let (end, out, cr) = run(b"a\nb\n.\nc\r\n.\r\n");
        assert_eq!(end, Some(12));
        assert_eq!(out, b"a\r\nb\r\n.\r\nc\r\n");
        assert!(!cr);
    }

    #[test]
    fn bare_cr_is_flagged() {
        for v in [&b"a\rb\r\n.\r\n"[..], b"\r.\r\n.\r\n", b"x\r\r\n.\r\n"] {
            let (end, _, cr) = run(v);
            assert!(end.is_some(), "{v:?}");
            assert!(cr, "{v:?}");
        }
    }

    #[test]
    fn overflow_reads_to_terminator() {
        let mut r = BodyReader::data(4);
        let mut out = Vec::new();
        assert_eq!(r.feed(b"0123456789\r\n", &mut out), None);
        assert_eq!(r.feed(b".\r\nQUIT\r\n", &mut out), Some(3));
        assert!(r.overflowed());
        assert!(out.len() <= 4);
    }

    #[test]
    fn chunks_are_raw_but_normalized() {
        let mut r = BodyReader::chunks(100);
        let mut out = Vec::new();
        assert_eq!(r.feed(b".\r\n..x\n", &mut out), None);
        assert_eq!(r.feed(b"y\r", &mut out), None);
        assert!(r.saw_bare_cr(), "a trailing CR is bare until its LF arrives");
        r.feed(b"\n", &mut out);
        assert_eq!(out, b".\r\n..x\r\ny\r\n");
        assert!(!r.saw_bare_cr());
    }

    #[test]
    fn header_end_in_any_pieces() {
        for msg in [
            &b"A: b\r\nC: d\r\n\r\nbody\r\n\r\n"[..],
            b"\r\n\r\nx",
            b"\r\nA: b\r\n\r\n",
            b"A: b\r\r\n\r\n",
            b"no end\r\n",
        ] {
            let want = memchr::memmem::find(msg, b"\r\n\r\n").map(|i| i as u64 + 2);
            for split in 1..=msg.len() {
                let mut h = HeaderEnd::default();
                msg.chunks(split).for_each(|c| h.feed(c));
                assert_eq!(h.found(), want, "{msg:?} in pieces of {split}");
                assert_eq!(h.header_len(), want.unwrap_or(msg.len() as u64));
            }
        }
    }
}
