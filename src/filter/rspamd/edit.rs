//! rspamd's header edits, applied to a message's header block at the end of the
//! message: fields removed, the Subject rewritten, fields added (RFC 5322 §2.2).

use super::answer::{Action, Answer};
use base64::Engine;

/// The fields of a header block, each with its continuation lines and its CRLF.
fn fields(header: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for line in header.split_inclusive(|&b| b == b'\n') {
        match out.last_mut() {
            // RFC 5322 §2.2.3: a line starting with white space continues the field.
            Some(field) if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') => field.extend_from_slice(line),
            _ => out.push(line.to_vec()),
        }
    }
    out
}

fn named(field: &[u8], name: &str) -> bool {
    field.len() > name.len() && field[name.len()] == b':' && field[..name.len()].eq_ignore_ascii_case(name.as_bytes())
}

/// A field's name, or none for a line that is not a field.
fn name_of(field: &[u8]) -> Option<&[u8]> {
    let colon = memchr::memchr(b':', field)?;
    Some(field[..colon].trim_ascii_end())
}

/// `Name: value` with CRLF, the value's line breaks made CRLF followed by white space
/// (a folded field), other control characters dropped.
pub fn field(name: &str, value: &str) -> Vec<u8> {
    let mut out = format!("{name}: ").into_bytes();
    let mut lines = value.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).filter(|l| !l.trim().is_empty());
    if let Some(first) = lines.next() {
        out.extend(first.trim_start().bytes().filter(|b| *b == b'\t' || !b.is_ascii_control()));
    }
    for line in lines {
        out.extend_from_slice(b"\r\n");
        if !line.starts_with([' ', '\t']) {
            out.push(b'\t');
        }
        out.extend(line.bytes().filter(|b| *b == b'\t' || !b.is_ascii_control()));
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A Subject value: as it is when ASCII, else RFC 2047 encoded words (§2: at most 75
/// characters each, on lines of their own).
fn subject_value(subject: &str) -> String {
    if subject.is_ascii() {
        return subject.to_string();
    }
    let mut words = Vec::new();
    let mut rest = subject;
    while !rest.is_empty() {
        let mut cut = rest.len().min(39);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (chunk, tail) = rest.split_at(cut);
        words.push(format!("=?UTF-8?B?{}?=", base64::engine::general_purpose::STANDARD.encode(chunk)));
        rest = tail;
    }
    words.join("\n ")
}

/// Whether rspamd judged the message spam yet let it through (marked).
pub fn marks(action: Action) -> bool {
    matches!(action, Action::AddHeader | Action::RewriteSubject | Action::Quarantine)
}

/// The header block after rspamd's verdict: the client's `X-Spam*` fields removed
/// (only the verdict of this scan is to be trusted), rspamd's `remove_headers`
/// applied, the Subject rewritten, Tern's marks for spam (`X-Spam: Yes`,
/// `X-Spam-Score`, `X-Spam-Status`, unless rspamd adds fields of those names), then
/// rspamd's `add_headers`, appended or placed where their `order` says.
pub fn apply(header: &[u8], answer: &Answer) -> Vec<u8> {
    let mut fields = fields(header);
    fields.retain(|f| name_of(f).is_none_or(|n| !is_spam_field(n)));
    for removal in &answer.remove_headers {
        let hits: Vec<usize> = (0..fields.len()).filter(|&i| named(&fields[i], &removal.name)).collect();
        let chosen = match removal.index {
            0 => hits,
            n if n > 0 => hits.get(n as usize - 1).copied().into_iter().collect(),
            n => hits.len().checked_sub(n.unsigned_abs() as usize).map(|i| hits[i]).into_iter().collect(),
        };
        for i in chosen.into_iter().rev() {
            fields.remove(i);
        }
    }
    if let (Action::RewriteSubject, Some(subject)) = (answer.action, &answer.subject) {
        let new = field("Subject", &subject_value(subject));
        match fields.iter().position(|f| named(f, "Subject")) {
            Some(i) => fields[i] = new,
            None => fields.push(new),
        }
    }
    let from_rspamd = |name: &str| answer.add_headers.iter().any(|a| a.name.eq_ignore_ascii_case(name));
    if marks(answer.action) {
        let status = format!(
            "Yes, score={:.2} required={:.2} action=\"{}\" tests={}",
            answer.score,
            answer.required_score,
            answer.action.name(),
            answer
                .symbols
                .iter()
                .filter(|(_, s)| *s != 0.0)
                .take(20)
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        for (name, value) in
            [("X-Spam", "Yes".to_string()), ("X-Spam-Score", format!("{:.2}", answer.score)), ("X-Spam-Status", status)]
        {
            if !from_rspamd(name) {
                fields.push(field(name, &value));
            }
        }
    }
    for added in &answer.add_headers {
        let new = field(&added.name, &added.value);
        match added.order {
            Some(at) => fields.insert(at.min(fields.len()), new),
            None => fields.push(new),
        }
    }
    fields.concat()
}

/// `X-Spam` and `X-Spam-…`, the names filters read a verdict from.
fn is_spam_field(name: &[u8]) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == b"x-spam" || lower.starts_with(b"x-spam-")
}

#[cfg(test)]
mod tests {
    use super::super::answer::{Added, Removed};
    use super::*;

    fn answer(action: Action) -> Answer {
        Answer {
            action,
            score: 7.5,
            required_score: 15.0,
            symbols: vec![("TERN_TEST_WORD".into(), 7.5), ("ZERO".into(), 0.0)],
            more_symbols: 0,
            smtp_message: None,
            subject: None,
            add_headers: Vec::new(),
            remove_headers: Vec::new(),
        }
    }

    const HEADER: &[u8] = b"Received: from x\r\n\tby y\r\nSubject: hello\r\nX-Spam: No\r\nX-Spam-Flag: NO\r\nX-Spamd-Bar: +\r\nDKIM-Signature: a\r\nDKIM-Signature: b\r\n";

    #[test]
    fn clean_mail_loses_only_the_clients_verdicts() {
        let out = apply(HEADER, &answer(Action::NoAction));
        assert_eq!(out, b"Received: from x\r\n\tby y\r\nSubject: hello\r\nX-Spamd-Bar: +\r\nDKIM-Signature: a\r\nDKIM-Signature: b\r\n");
    }

    #[test]
    fn spam_is_marked_and_rspamds_fields_win() {
        let out = String::from_utf8(apply(HEADER, &answer(Action::AddHeader))).unwrap();
        assert!(out.ends_with(
            "X-Spam: Yes\r\nX-Spam-Score: 7.50\r\nX-Spam-Status: Yes, score=7.50 required=15.00 action=\"add header\" tests=TERN_TEST_WORD\r\n"
        ), "{out}");
        let mut a = answer(Action::AddHeader);
        a.add_headers = vec![
            Added { name: "X-Spam-Status".into(), value: "Yes, score=7.50\n\tfolded\nunfolded".into(), order: None },
            Added { name: "DKIM-Signature".into(), value: "v=1; new".into(), order: Some(0) },
        ];
        a.remove_headers = vec![Removed { name: "dkim-signature".into(), index: -1 }];
        let out = String::from_utf8(apply(HEADER, &a)).unwrap();
        assert!(out.starts_with("DKIM-Signature: v=1; new\r\nReceived: from x\r\n"), "{out}");
        assert!(out.contains("DKIM-Signature: a\r\n") && !out.contains("DKIM-Signature: b"), "{out}");
        assert!(
            out.ends_with(
                "X-Spam: Yes\r\nX-Spam-Score: 7.50\r\nX-Spam-Status: Yes, score=7.50\r\n\tfolded\r\n\tunfolded\r\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn subject_is_rewritten_and_encoded_when_not_ascii() {
        let mut a = answer(Action::RewriteSubject);
        a.subject = Some("*** SPAM *** hello".into());
        let out = String::from_utf8(apply(HEADER, &a)).unwrap();
        assert!(out.contains("\r\nSubject: *** SPAM *** hello\r\nX-Spamd-Bar: +\r\n"), "{out}");
        a.subject = Some("*** SPAM *** héllo wörld".repeat(4));
        let out = String::from_utf8(apply(b"From: a@b\r\n", &a)).unwrap();
        let subject = out
            .lines()
            .skip_while(|l| !l.starts_with("Subject:"))
            .take_while(|l| !l.starts_with("X-"))
            .collect::<Vec<_>>();
        assert!(subject.len() > 1 && subject.iter().all(|l| l.len() <= 78 && l.is_ascii()), "{out}");
        let decoded = mail_parser::MessageParser::default().parse(out.as_bytes()).unwrap();
        assert_eq!(decoded.subject(), a.subject.as_deref());
    }
}
