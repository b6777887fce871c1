//! The header block as milters see and edit it: fields kept byte for byte, so that
//! those no milter touched (and the signatures over them) stay as they came.

use super::protocol::Edit;

/// The fields of a header block, each with its CRLF line ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields(Vec<Vec<u8>>);

impl Fields {
    /// Splits a header block (CRLF lines, without the empty line) into fields: a line
    /// starting with a space or tab continues the field before it (RFC 5322 §2.2.3).
    pub fn parse(block: &[u8]) -> Fields {
        let mut fields: Vec<Vec<u8>> = Vec::new();
        for line in block.split_inclusive(|&b| b == b'\n') {
            match fields.last_mut() {
                Some(last) if matches!(line.first(), Some(b' ' | b'\t')) => last.extend_from_slice(line),
                _ => fields.push(line.to_vec()),
            }
        }
        Fields(fields)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.concat()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Name and value of each field as SMFIC_HEADER sends them: the value without
    /// the line end, folds as bare LF (as Sendmail and Postfix send them), and
    /// without its first space unless `leading_space` (SMFIP_HDR_LEADSPC).
    pub fn for_milter(&self, leading_space: bool) -> impl Iterator<Item = (String, String)> + '_ {
        self.0.iter().map(move |raw| {
            let text = String::from_utf8_lossy(raw);
            let text = text.strip_suffix("\r\n").or_else(|| text.strip_suffix('\n')).unwrap_or(&text);
            let (name, value) = text.split_once(':').unwrap_or((text, ""));
            let value = if leading_space { value } else { value.strip_prefix(' ').unwrap_or(value) };
            (name.trim_end().to_string(), value.replace("\r\n", "\n"))
        })
    }

    /// Applies a header edit (libmilter's smfi_addheader, smfi_insheader,
    /// smfi_chgheader); other edits are not for the header. Returns whether the block
    /// changed.
    pub fn apply(&mut self, edit: &Edit, leading_space: bool) -> bool {
        let field = |name: &str, value: &str| make_field(name, value, leading_space);
        match edit {
            Edit::AddHeader { name, value } => self.0.push(field(name, value)),
            Edit::InsertHeader { index, name, value } => {
                let at = (*index as usize).min(self.0.len());
                self.0.insert(at, field(name, value));
            }
            // The `index`th field of that name (from 1; 0 is taken as 1, as Sendmail
            // does); an empty value deletes it; a field that is not there is added
            // unless the edit deletes.
            Edit::ChangeHeader { index, name, value } => {
                let nth = (*index).max(1) as usize;
                let found =
                    self.0.iter().enumerate().filter(|(_, raw)| is_named(raw, name)).nth(nth - 1).map(|(i, _)| i);
                match (found, value.is_empty()) {
                    (Some(i), true) => {
                        self.0.remove(i);
                    }
                    (Some(i), false) => self.0[i] = field(name, value),
                    (None, true) => return false,
                    (None, false) => self.0.push(field(name, value)),
                }
            }
            _ => return false,
        }
        true
    }
}

fn is_named(raw: &[u8], name: &str) -> bool {
    let Some(colon) = memchr::memchr(b':', raw) else { return false };
    raw[..colon].trim_ascii_end().eq_ignore_ascii_case(name.as_bytes())
}

/// A field from a milter's name and value: folds sent as bare LF become CRLF; NUL,
/// CR and LF not part of a fold are dropped, so no edit can end the header block.
fn make_field(name: &str, value: &str, leading_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 4);
    out.extend(name.bytes().filter(|&b| b.is_ascii_graphic() && b != b':'));
    out.push(b':');
    if !leading_space {
        out.push(b' ');
    }
    let value = value.replace("\r\n", "\n");
    let mut lines = value.split('\n');
    out.extend(lines.next().unwrap_or("").bytes().filter(|&b| b != 0 && b != b'\r'));
    for line in lines.filter(|l| !l.trim().is_empty()) {
        out.extend_from_slice(b"\r\n");
        // A continuation line must start with whitespace; one that does not would
        // begin a field of its own.
        if !line.starts_with([' ', '\t']) {
            out.push(b' ');
        }
        out.extend(line.bytes().filter(|&b| b != 0 && b != b'\r'));
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &[u8] = b"Received: from a\r\n\tby b\r\nSubject: one\r\nX-Tag: 1\r\nx-tag:2\r\nFrom: a@b\r\n";

    fn edited(edits: &[Edit]) -> String {
        let mut fields = Fields::parse(BLOCK);
        for e in edits {
            fields.apply(e, false);
        }
        String::from_utf8(fields.to_bytes()).unwrap()
    }

    #[test]
    fn fields_go_to_milters_as_sendmail_sends_them() {
        let fields = Fields::parse(BLOCK);
        assert_eq!(fields.len(), 5);
        assert_eq!(fields.to_bytes(), BLOCK, "kept byte for byte");
        let sent: Vec<_> = fields.for_milter(false).collect();
        assert_eq!(sent[0], ("Received".to_string(), "from a\n\tby b".to_string()));
        assert_eq!(sent[3], ("x-tag".to_string(), "2".to_string()));
        let sent: Vec<_> = fields.for_milter(true).collect();
        assert_eq!(sent[1], ("Subject".to_string(), " one".to_string()));
    }

    #[test]
    fn edits_follow_libmilter_indices() {
        let add = Edit::AddHeader { name: "X-New".into(), value: "v\n\tw".into() };
        assert!(edited(&[add]).ends_with("From: a@b\r\nX-New: v\r\n\tw\r\n"));
        let top = Edit::InsertHeader { index: 0, name: "X-Top".into(), value: "t".into() };
        assert!(edited(&[top]).starts_with("X-Top: t\r\nReceived:"));
        let far = Edit::InsertHeader { index: 99, name: "X-End".into(), value: "e".into() };
        assert!(edited(&[far]).ends_with("X-End: e\r\n"));
        let second = Edit::ChangeHeader { index: 2, name: "X-TAG".into(), value: "two".into() };
        assert!(edited(&[second]).contains("X-Tag: 1\r\nX-TAG: two\r\nFrom"));
        let delete = Edit::ChangeHeader { index: 1, name: "x-tag".into(), value: String::new() };
        assert!(edited(&[delete]).contains("Subject: one\r\nx-tag:2\r\n"));
        let absent = Edit::ChangeHeader { index: 1, name: "X-None".into(), value: "n".into() };
        assert!(edited(&[absent]).ends_with("X-None: n\r\n"));
        let mut fields = Fields::parse(BLOCK);
        assert!(!fields.apply(&Edit::ChangeHeader { index: 3, name: "X-Tag".into(), value: String::new() }, false));
        assert_eq!(fields.to_bytes(), BLOCK);
    }

    #[test]
    fn no_edit_can_end_the_header_block() {
        let sneaky = Edit::AddHeader { name: "X-A\r\n".into(), value: "a\r\n\r\nbody\n".into() };
        let out = edited(&[sneaky]);
        assert!(out.ends_with("X-A: a\r\n body\r\n"), "{out:?}");
        assert!(!out.contains("\r\n\r\n"));
    }
}
