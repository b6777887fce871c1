//! Long lines are broken before content goes to another server.
//!
//! RFC 5321 §4.5.3.1.6 limits a text line to 1,000 octets with its CRLF, but Tern
//! accepts longer lines (as most servers do) and keeps them as they came for local
//! delivery. When relaying, it does what Postfix does with `smtp_line_length_limit =
//! 998`: a line longer than 998 octets is broken by inserting CRLF and a space, so
//! that the next hop never sees a line over the limit and a broken header line stays
//! one header (the space makes the rest a continuation, RFC 5322 §2.2.3).

use std::borrow::Cow;

/// Longest line sent, without its CRLF.
pub const MAX_LINE: usize = 998;

/// `content` (CRLF line ends) with every line longer than [`MAX_LINE`] octets broken
/// by CRLF SPACE; borrowed unchanged when no line is too long. A break is moved back
/// (at most three octets) rather than split a UTF-8 character.
pub fn fold_long_lines(content: &[u8]) -> Cow<'_, [u8]> {
    if !has_long_line(content) {
        return Cow::Borrowed(content);
    }
    let mut out = Vec::with_capacity(content.len() + content.len() / MAX_LINE * 3 + 3);
    for (n, line) in content.split(|&b| b == b'\n').enumerate() {
        if n > 0 {
            out.push(b'\n');
        }
        let (mut rest, cr) = match line.strip_suffix(b"\r") {
            Some(text) => (text, true),
            None => (line, false),
        };
        // The first piece may fill a whole line; the others follow a space.
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
    Cow::Owned(out)
}

/// Whether any line (its CR aside) is longer than [`MAX_LINE`]; every message to
/// another server is scanned, so this uses memchr rather than a byte loop.
fn has_long_line(content: &[u8]) -> bool {
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', content).chain([content.len()]) {
        let line = &content[start..end];
        if line.len() > MAX_LINE && line.strip_suffix(b"\r").unwrap_or(line).len() > MAX_LINE {
            return true;
        }
        start = end + 1;
    }
    false
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
