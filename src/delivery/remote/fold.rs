//! Long lines are broken before content goes to another server.
//!
//! RFC 5321 §4.5.3.1.6 limits a text line to 1,000 octets with its CRLF, but Tern
//! accepts longer lines (as most servers do) and keeps them as they came for local
//! delivery. When relaying, it does what Postfix does with `smtp_line_length_limit =
//! 998`: a line longer than 998 octets is broken by inserting CRLF and a space, so
//! that the next hop never sees a line over the limit and a broken header line stays
//! one header (the space makes the rest a continuation, RFC 5322 §2.2.3).

#[cfg(test)]
use std::borrow::Cow;

/// Longest line sent, without its CRLF.
pub const MAX_LINE: usize = 998;

/// Where folded output goes: a buffer, or a count of its length.
pub trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts what would be written.
#[derive(Debug, Default)]
pub struct Count(pub u64);

impl Sink for Count {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len() as u64;
    }
}

/// Folds content given in pieces of any size; the output is the same whatever the
/// pieces. Only the last few octets of a line that may be broken before them are held
/// back; everything else passes straight through.
#[derive(Debug)]
pub struct Folder {
    /// Octets of the current line put out since its start or its last break.
    len: usize,
    /// Octets the current part of the line may hold: [`MAX_LINE`], or one less after
    /// a break, for the space.
    room: usize,
    /// Octets of the line from `room - 3` on, held until it is known whether the line
    /// is broken and where (see [`break_at`]).
    held: Vec<u8>,
    /// A line was broken.
    folded: bool,
}

impl Default for Folder {
    fn default() -> Folder {
        Folder { len: 0, room: MAX_LINE, held: Vec::with_capacity(8), folded: false }
    }
}

impl Folder {
    /// Whether any line was broken so far.
    pub fn folded(&self) -> bool {
        self.folded
    }

    /// Folds the next piece of content into `out`.
    pub fn push(&mut self, input: &[u8], out: &mut impl Sink) {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', input) {
            self.line(&input[start..end], out);
            self.end_line(out);
            out.put(b"\n");
            start = end + 1;
        }
        self.line(&input[start..], out);
    }

    /// Puts out what is held at the end of the content.
    pub fn finish(&mut self, out: &mut impl Sink) {
        self.end_line(out);
    }

    /// Octets of the current line (no LF among them).
    fn line(&mut self, mut text: &[u8], out: &mut impl Sink) {
        while !text.is_empty() {
            if self.held.is_empty() {
                // Octets before `room - 3` are put out whether or not the line breaks.
                let n = (self.room - 3).saturating_sub(self.len).min(text.len());
                out.put(&text[..n]);
                self.len += n;
                text = &text[n..];
                if text.is_empty() {
                    return;
                }
            }
            self.held.push(text[0]);
            text = &text[1..];
            self.break_if_due(out);
        }
    }

    /// Breaks the line once it is certain to be longer than `room` without the CR of
    /// its CRLF: one octet past `room`, or exactly one past with that octet not a CR.
    fn break_if_due(&mut self, out: &mut impl Sink) {
        let seen = self.len + self.held.len();
        let due = seen > self.room + 1 || (seen == self.room + 1 && self.held.last() != Some(&b'\r'));
        if !due {
            return;
        }
        // `held` starts at `room - 3`, so it holds every octet `break_at` looks at.
        let base = self.len;
        let cut = break_at(&self.held, self.room - base);
        out.put(&self.held[..cut]);
        out.put(b"\r\n ");
        self.folded = true;
        let mut rest = [0; 8];
        let left = self.held.len() - cut;
        rest[..left].copy_from_slice(&self.held[cut..]);
        self.held.clear();
        self.len = 0;
        self.room = MAX_LINE - 1;
        self.line(&rest[..left], out);
    }

    /// The line ends (at an LF, or at the end of the content): what is held goes out
    /// as it is, since a line that ends within `room` plus its CR is not broken.
    fn end_line(&mut self, out: &mut impl Sink) {
        out.put(&self.held);
        self.held.clear();
        self.len = 0;
        self.room = MAX_LINE;
    }
}

/// `content` (CRLF line ends) with every line longer than [`MAX_LINE`] octets broken
/// by CRLF SPACE; borrowed unchanged when no line is too long. A break is moved back
/// (at most three octets) rather than split a UTF-8 character.
#[cfg(test)]
pub fn fold_long_lines(content: &[u8]) -> Cow<'_, [u8]> {
    let mut folder = Folder::default();
    let mut out = Vec::new();
    folder.push(content, &mut out);
    folder.finish(&mut out);
    if folder.folded() { Cow::Owned(out) } else { Cow::Borrowed(content) }
}

/// Where to break `text` so that the first part holds at most `room` octets: at
/// `room`, or up to three octets earlier when that would split a UTF-8 character.
fn break_at(text: &[u8], room: usize) -> usize {
    let continuation = |b: u8| b & 0xC0 == 0x80;
    (room - 3..=room).rev().find(|&i| !continuation(text[i])).unwrap_or(room)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(content: &[u8]) -> Vec<&[u8]> {
        content.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).collect()
    }

    /// Undoes the folding: every CRLF SPACE removed.
    fn unfold(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < content.len() {
            if content[i..].starts_with(b"\r\n ") {
                i += 3;
            } else {
                out.push(content[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn short_lines_are_left_alone() {
        let text = b"Subject: x\r\n\r\nshort\r\n";
        assert!(matches!(fold_long_lines(text), Cow::Borrowed(_)));
        let exact = [vec![b'a'; MAX_LINE], b"\r\n".to_vec()].concat();
        assert!(matches!(fold_long_lines(&exact), Cow::Borrowed(_)));
    }

    #[test]
    fn long_lines_are_broken_with_crlf_space() {
        let body: Vec<u8> = (0..5000).map(|i| b'a' + (i % 26) as u8).collect();
        let text = [b"Subject: long\r\n\r\n".to_vec(), body, b"\r\nend\r\n".to_vec()].concat();
        let folded = fold_long_lines(&text);
        assert!(lines(&folded).iter().all(|l| l.len() <= MAX_LINE));
        assert_eq!(lines(&folded)[2].len(), MAX_LINE);
        assert!(lines(&folded)[3].starts_with(b" ") && lines(&folded)[3].len() == MAX_LINE);
        assert_eq!(unfold(&folded), text);
        // One octet over the limit, and no CRLF at the very end.
        let text = vec![b'x'; MAX_LINE + 1];
        assert_eq!(fold_long_lines(&text).as_ref(), [vec![b'x'; MAX_LINE], b"\r\n x".to_vec()].concat());
    }

    /// The fold as first written, on a whole message: what folding in pieces must match.
    fn reference(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, line) in content.split(|&b| b == b'\n').enumerate() {
            if n > 0 {
                out.push(b'\n');
            }
            let (mut rest, cr) = match line.strip_suffix(b"\r") {
                Some(text) => (text, true),
                None => (line, false),
            };
            let mut room = MAX_LINE;
            while rest.len() > room {
                let cut = break_at(rest, room);
                out.extend_from_slice(&rest[..cut]);
                out.extend_from_slice(b"\r\n ");
                rest = &rest[cut..];
                room = MAX_LINE - 1;
            }
            out.extend_from_slice(rest);
            if cr {
                out.push(b'\r');
            }
        }
        out
    }

    /// A line of `len` octets of one of a few kinds, with one of a few endings.
    fn line(len: usize, kind: u8) -> Vec<u8> {
        let mut text: Vec<u8> = match kind % 3 {
            0 => b"abcdefghij".iter().cycle().take(len).copied().collect(),
            1 => "é€x".bytes().cycle().take(len).collect(),
            _ => b"a\rb".iter().cycle().take(len).copied().collect(),
        };
        text.extend_from_slice(match kind / 3 % 4 {
            0 => &b"\r\n"[..],
            1 => b"\n",
            2 => b"\r",
            _ => b"\r\r\n",
        });
        text
    }

    proptest::proptest! {
        #[test]
        fn pieces_fold_like_the_whole(
            lines in proptest::collection::vec((0usize..3100, 0u8..12), 1..6),
            cuts in proptest::collection::vec(0usize..16_000, 0..10),
            last_unended in proptest::bool::ANY,
        ) {
            let mut content: Vec<u8> = lines.iter().flat_map(|&(len, kind)| line(len, kind)).collect();
            if last_unended {
                let trimmed = content.len() - content.iter().rev().take_while(|&&b| b == b'\n' || b == b'\r').count();
                content.truncate(trimmed);
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(content.len())).collect();
            cuts.sort();
            let (mut folder, mut out, mut count, mut at) = (Folder::default(), Vec::new(), Count::default(), 0);
            for cut in cuts.into_iter().chain([content.len()]) {
                folder.push(&content[at..cut], &mut out);
                at = cut;
            }
            folder.finish(&mut out);
            let mut counter = Folder::default();
            counter.push(&content, &mut count);
            counter.finish(&mut count);
            let want = reference(&content);
            proptest::prop_assert_eq!(folder.folded(), want != content);
            proptest::prop_assert_eq!(count.0, want.len() as u64);
            proptest::prop_assert!(out == want, "pieces fold differently");
        }
    }

    #[test]
    fn utf8_characters_are_not_split() {
        let text = [vec![b'a'; MAX_LINE - 1], "é€".repeat(400).into_bytes(), b"\r\n".to_vec()].concat();
        let folded = fold_long_lines(&text);
        for line in lines(&folded) {
            assert!(line.len() <= MAX_LINE);
            assert!(std::str::from_utf8(line).is_ok(), "a character was split");
        }
        assert_eq!(unfold(&folded), text);
    }
}
