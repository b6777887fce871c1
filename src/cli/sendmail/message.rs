//! The message on standard input, as sendmail(1) reads it: lines ending in LF or CRLF,
//! a lone dot ending it unless `-i`, a leading mbox `From ` line dropped. The header
//! block is read whole: `-t` takes recipients from it, `Bcc` is removed and a `From`
//! added when missing. The body then streams through, CRLF and dot-stuffed.

use std::io::{BufRead, Read, Write};

/// Longest piece of a line read at once; a longer line is passed on in pieces.
const PIECE: u64 = 64 * 1024;
/// Largest header block read into memory.
pub const MAX_HEADER: usize = 4 << 20;

/// One piece of input: the bytes (without the line ending) and whether the line ended.
struct Piece {
    bytes: Vec<u8>,
    line_end: bool,
}

/// Standard input (or any reader), cut into lines.
pub struct Input<R> {
    reader: R,
    ignore_dots: bool,
    /// The next piece is the start of a line.
    at_line_start: bool,
    /// The input ended (EOF, or a lone dot).
    ended: bool,
    /// A first body line read while looking for the end of the header block.
    held: Option<Piece>,
}

/// The header block, split into fields (each with its CRLF-ended lines).
pub struct Header {
    pub fields: Vec<Vec<u8>>,
}

impl<R: BufRead> Input<R> {
    pub fn new(reader: R, ignore_dots: bool) -> Input<R> {
        Input { reader, ignore_dots, at_line_start: true, ended: false, held: None }
    }

    fn piece(&mut self) -> std::io::Result<Option<Piece>> {
        if let Some(piece) = self.held.take() {
            return Ok(Some(piece));
        }
        if self.ended {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        (&mut self.reader).take(PIECE).read_until(b'\n', &mut bytes)?;
        if bytes.is_empty() {
            self.ended = true;
            return Ok(None);
        }
        let line_end = bytes.ends_with(b"\n");
        if line_end {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        let starts_line = std::mem::replace(&mut self.at_line_start, line_end);
        if starts_line && line_end && bytes == b"." && !self.ignore_dots {
            self.ended = true;
            return Ok(None);
        }
        Ok(Some(Piece { bytes, line_end }))
    }

    /// Reads the header block; the input is left at the first line of the body.
    pub fn header(&mut self) -> Result<Header, String> {
        let io = |e: std::io::Error| format!("cannot read the message: {e}");
        let mut fields: Vec<Vec<u8>> = Vec::new();
        let mut size = 0;
        let mut first = true;
        while let Some(piece) = self.piece().map_err(io)? {
            // A line too long for one piece is no header line: the body starts there.
            if !piece.line_end {
                self.held = Some(piece);
                break;
            }
            let line = piece.bytes;
            if std::mem::take(&mut first) && line.starts_with(b"From ") {
                continue;
            }
            if line.is_empty() {
                break;
            }
            size += line.len() + 2;
            if size > MAX_HEADER {
                return Err(format!("the header block is larger than {} MiB", MAX_HEADER >> 20));
            }
            let continuation = line[0] == b' ' || line[0] == b'\t';
            match fields.last_mut() {
                Some(field) if continuation => {
                    field.extend_from_slice(&line);
                    field.extend_from_slice(b"\r\n");
                }
                _ if is_field_start(&line) => {
                    let mut field = line;
                    field.extend_from_slice(b"\r\n");
                    fields.push(field);
                }
                _ => {
                    // Not a header line: the header block ends and the body begins here.
                    self.held = Some(Piece { bytes: line, line_end: true });
                    break;
                }
            }
        }
        Ok(Header { fields })
    }

    /// Copies the body to `out`: CRLF line ends, dot-stuffed, ending with a line end.
    pub fn copy_body(&mut self, out: &mut impl Write) -> Result<(), BodyError> {
        let mut line_open = false;
        while let Some(piece) = self.piece().map_err(BodyError::Read)? {
            if !line_open && piece.bytes.first() == Some(&b'.') {
                out.write_all(b".").map_err(BodyError::Write)?;
            }
            out.write_all(&piece.bytes).map_err(BodyError::Write)?;
            if piece.line_end {
                out.write_all(b"\r\n").map_err(BodyError::Write)?;
            }
            line_open = !piece.line_end;
        }
        if line_open {
            out.write_all(b"\r\n").map_err(BodyError::Write)?;
        }
        Ok(())
    }
}

/// Why the body could not be passed on.
#[derive(Debug)]
pub enum BodyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// `name:` with a name of printable ASCII other than the colon (RFC 5322 §2.2).
fn is_field_start(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(colon) => colon > 0 && line[..colon].iter().all(|&b| (33..=126).contains(&b)),
        None => false,
    }
}

impl Header {
    fn name_is(field: &[u8], name: &str) -> bool {
        field.len() > name.len()
            && field[name.len()] == b':'
            && field[..name.len()].eq_ignore_ascii_case(name.as_bytes())
    }

    pub fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|f| Header::name_is(f, name))
    }

    /// The addresses of the fields named `names` (as written, in order).
    pub fn addresses(&self, names: &[&str]) -> Vec<String> {
        let mut block: Vec<u8> = Vec::new();
        for field in self.fields.iter().filter(|f| names.iter().any(|n| Header::name_is(f, n))) {
            block.extend_from_slice(field);
        }
        addresses_of(&block)
    }

    /// `-t`: the recipients of `Resent-To`, `Resent-Cc` and `Resent-Bcc` when there
    /// are any (the message is being resent), else of `To`, `Cc` and `Bcc`.
    pub fn recipients(&self) -> Vec<String> {
        let resent = ["Resent-To", "Resent-Cc", "Resent-Bcc"];
        if resent.iter().any(|n| self.has(n)) { self.addresses(&resent) } else { self.addresses(&["To", "Cc", "Bcc"]) }
    }

    /// Removes `Bcc` and `Resent-Bcc`: blind copies must not show who else got them.
    pub fn remove_bcc(&mut self) {
        self.fields.retain(|f| !Header::name_is(f, "Bcc") && !Header::name_is(f, "Resent-Bcc"));
    }

    pub fn push(&mut self, field: String) {
        self.fields.push(field.into_bytes());
    }
}

/// The addresses in header fields (`To: a@x, "B" <b@y>, group: c@z;`), in order.
fn addresses_of(block: &[u8]) -> Vec<String> {
    let mut text = block.to_vec();
    text.extend_from_slice(b"\r\n");
    let Some(message) = mail_parser::MessageParser::new().parse_headers(&text) else { return Vec::new() };
    let mut out = Vec::new();
    for header in message.headers() {
        if let Some(list) = header.value().as_address() {
            out.extend(list.iter().filter_map(|a| a.address()).map(str::to_string));
        }
    }
    out
}

/// The addresses in one command-line recipient argument, which may be a list.
pub fn addresses_in_argument(arg: &str) -> Vec<String> {
    let found = addresses_of(format!("To: {arg}\r\n").as_bytes());
    if found.is_empty() { vec![arg.trim().to_string()] } else { found }
}

/// `From: Full Name <sender>` (the name quoted or RFC 2047-encoded as needed).
pub fn from_field(name: &str, address: &str) -> String {
    let name = name.trim();
    if name.is_empty() {
        return format!("From: {address}\r\n");
    }
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~ ".contains(c);
    let shown = if name.chars().all(atext) {
        name.to_string()
    } else if name.chars().all(|c| c.is_ascii() && !c.is_ascii_control()) {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        use base64::Engine;
        format!("=?UTF-8?B?{}?=", base64::engine::general_purpose::STANDARD.encode(name))
    };
    format!("From: {shown} <{address}>\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &str, ignore_dots: bool) -> (Header, Vec<u8>) {
        let mut i = Input::new(input.as_bytes(), ignore_dots);
        let header = i.header().unwrap();
        let mut body = Vec::new();
        i.copy_body(&mut body).unwrap();
        (header, body)
    }

    #[test]
    fn lines_dots_and_header() {
        let (h, body) = read(
            "From me Mon\nTo: a@x.test,\n  \"B, b\" <b@x.test>\nBcc: c@x.test\nSubject: s\n\n.hi\nx\r\n.\nafter\n",
            false,
        );
        assert_eq!(h.fields.len(), 3);
        assert_eq!(h.recipients(), ["a@x.test", "b@x.test", "c@x.test"]);
        assert_eq!(body, b"..hi\r\nx\r\n");
        let (_, body) = read("Subject: s\n\na\n.\nb", true);
        assert_eq!(body, b"a\r\n..\r\nb\r\n");
    }

    #[test]
    fn body_without_empty_line_and_bcc_removal() {
        let (mut h, body) = read("Subject: s\nnot a header\nmore\n", false);
        assert_eq!(body, b"not a header\r\nmore\r\n");
        h.remove_bcc();
        assert_eq!(h.fields, [b"Subject: s\r\n".to_vec()]);
        let (mut h, _) = read("Resent-To: r@x.test\nTo: t@x.test\nResent-Bcc: q@x.test\nbcc: z@x.test\n\n", false);
        assert_eq!(h.recipients(), ["r@x.test", "q@x.test"]);
        h.remove_bcc();
        assert_eq!(h.fields.len(), 2);
    }

    #[test]
    fn from_fields() {
        assert_eq!(from_field("Bob B", "b@x"), "From: Bob B <b@x>\r\n");
        assert_eq!(from_field("Bob \"Q\", Jr.", "b@x"), "From: \"Bob \\\"Q\\\", Jr.\" <b@x>\r\n");
        assert_eq!(from_field("Zoë", "z@x"), "From: =?UTF-8?B?Wm/Dqw==?= <z@x>\r\n");
        assert_eq!(from_field("", "b@x"), "From: b@x\r\n");
        assert_eq!(addresses_in_argument("a@x, B <b@y>"), ["a@x", "b@y"]);
        assert_eq!(addresses_in_argument("root"), ["root"]);
    }
}
