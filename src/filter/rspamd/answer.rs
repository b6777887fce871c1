//! rspamd's answer to `/checkv2` (a JSON object), read into typed fields. Only what
//! Tern acts on or records is kept, each part bounded: an answer may come from a
//! misconfigured or hostile server.

use serde_json::Value;

/// Symbols kept for the trace, the highest scores first.
pub const MAX_SYMBOLS: usize = 50;
/// Longest symbol name kept.
const MAX_NAME: usize = 64;
/// Header fields rspamd may add or remove in one answer.
const MAX_HEADER_EDITS: usize = 64;
/// Bytes of added header fields in one answer.
const MAX_ADDED_BYTES: usize = 32 * 1024;
/// Longest text of rspamd's own kept for an SMTP reply or a Subject.
const MAX_TEXT: usize = 400;

/// What rspamd said should happen to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    NoAction,
    Greylist,
    AddHeader,
    RewriteSubject,
    SoftReject,
    Reject,
    /// Not one of rspamd's standard actions: a `discard` (Tern refuses rather than
    /// drops: accepted mail is never lost silently) or a custom `quarantine` (to the
    /// recipient's Junk folder).
    Discard,
    Quarantine,
}

impl Action {
    fn parse(word: &str) -> Option<Action> {
        Some(match word {
            "no action" => Action::NoAction,
            "greylist" => Action::Greylist,
            "add header" | "add_header" => Action::AddHeader,
            "rewrite subject" | "rewrite_subject" => Action::RewriteSubject,
            "soft reject" | "soft_reject" => Action::SoftReject,
            "reject" => Action::Reject,
            "discard" => Action::Discard,
            "quarantine" => Action::Quarantine,
            _ => return None,
        })
    }

    /// rspamd's word for the action.
    pub fn name(self) -> &'static str {
        match self {
            Action::NoAction => "no action",
            Action::Greylist => "greylist",
            Action::AddHeader => "add header",
            Action::RewriteSubject => "rewrite subject",
            Action::SoftReject => "soft reject",
            Action::Reject => "reject",
            Action::Discard => "discard",
            Action::Quarantine => "quarantine",
        }
    }
}

/// One header field rspamd asks to add; `order` is its place among the header
/// fields (0 first), none to append it.
#[derive(Debug, Clone, PartialEq)]
pub struct Added {
    pub name: String,
    pub value: String,
    pub order: Option<usize>,
}

/// One header field rspamd asks to remove: its `index`-th occurrence (from 1; from the
/// end when negative), every occurrence when 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Removed {
    pub name: String,
    pub index: i64,
}

/// rspamd's verdict on one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub action: Action,
    pub score: f64,
    pub required_score: f64,
    /// (name, score), the highest absolute scores first, at most [`MAX_SYMBOLS`].
    pub symbols: Vec<(String, f64)>,
    /// Symbols left out of `symbols`.
    pub more_symbols: usize,
    /// `messages.smtp_message`: the text for the client of a refusal.
    pub smtp_message: Option<String>,
    /// The new Subject for `rewrite subject`.
    pub subject: Option<String>,
    pub add_headers: Vec<Added>,
    pub remove_headers: Vec<Removed>,
}

/// Reads an answer; an error says what made it unusable.
pub fn parse(bytes: &[u8]) -> Result<Answer, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("answer is not JSON: {e}"))?;
    let object = value.as_object().ok_or("answer is not a JSON object")?;
    if let Some(error) = object.get("error") {
        return Err(format!("rspamd error: {}", text(error).unwrap_or_default()));
    }
    let word = object.get("action").and_then(Value::as_str).ok_or("answer has no action")?;
    let action = Action::parse(word).ok_or_else(|| format!("unknown action {:?}", clip(word, MAX_NAME)))?;
    let number = |key: &str| object.get(key).and_then(Value::as_f64).filter(|n| n.is_finite());
    let score = number("score").ok_or("answer has no score")?;
    let required_score = number("required_score").unwrap_or(f64::NAN);
    let (symbols, more_symbols) = symbols(object.get("symbols"));
    let smtp_message = object.get("messages").and_then(|m| m.get("smtp_message")).and_then(text);
    let subject = object.get("subject").and_then(text);
    if action == Action::RewriteSubject && subject.is_none() {
        return Err("rewrite subject without a subject".into());
    }
    let milter = object.get("milter");
    let add_headers = added(milter.and_then(|m| m.get("add_headers")))?;
    let remove_headers = removed(milter.and_then(|m| m.get("remove_headers")))?;
    Ok(Answer {
        action,
        score,
        required_score,
        symbols,
        more_symbols,
        smtp_message,
        subject,
        add_headers,
        remove_headers,
    })
}

/// A string value, cut to [`MAX_TEXT`] characters.
fn text(value: &Value) -> Option<String> {
    value.as_str().map(|s| clip(s, MAX_TEXT))
}

fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn symbols(value: Option<&Value>) -> (Vec<(String, f64)>, usize) {
    let Some(map) = value.and_then(Value::as_object) else { return (Vec::new(), 0) };
    let mut all: Vec<(String, f64)> = map
        .iter()
        .map(|(name, s)| {
            let score = s.get("score").and_then(Value::as_f64).filter(|n| n.is_finite()).unwrap_or(0.0);
            (clip(name, MAX_NAME), score)
        })
        .collect();
    all.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then_with(|| a.0.cmp(&b.0)));
    let more = all.len().saturating_sub(MAX_SYMBOLS);
    all.truncate(MAX_SYMBOLS);
    (all, more)
}

/// A header field name: printable ASCII without a colon (RFC 5322 §2.2).
fn field_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if ok { Ok(name.to_string()) } else { Err(format!("bad header field name {:?}", clip(name, MAX_NAME))) }
}

/// `add_headers`: `{name: value}`, `{name: {value, order}}` or `{name: [either…]}`.
fn added(value: Option<&Value>) -> Result<Vec<Added>, String> {
    let Some(map) = value.and_then(Value::as_object) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    let mut bytes = 0;
    for (name, spec) in map {
        let name = field_name(name)?;
        let specs = match spec {
            Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        for spec in specs {
            let (value, order) = match spec {
                Value::String(v) => (v.as_str(), None),
                Value::Object(o) => {
                    let v = o.get("value").and_then(Value::as_str).ok_or_else(|| format!("{name}: no value"))?;
                    // rspamd's milter gives -1 (or none) for "append".
                    let order = o.get("order").and_then(Value::as_i64).and_then(|n| usize::try_from(n).ok());
                    (v, order)
                }
                _ => return Err(format!("{name}: value is not text")),
            };
            bytes += name.len() + value.len();
            out.push(Added { name: name.clone(), value: value.to_string(), order });
        }
        if out.len() > MAX_HEADER_EDITS || bytes > MAX_ADDED_BYTES {
            return Err("too many or too large header fields to add".into());
        }
    }
    Ok(out)
}

/// `remove_headers`: `{name: index}`.
fn removed(value: Option<&Value>) -> Result<Vec<Removed>, String> {
    let Some(map) = value.and_then(Value::as_object) else { return Ok(Vec::new()) };
    if map.len() > MAX_HEADER_EDITS {
        return Err("too many header fields to remove".into());
    }
    map.iter()
        .map(|(name, index)| Ok(Removed { name: field_name(name)?, index: index.as_i64().unwrap_or(0) }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_rspamd_3_4_answers() {
        let json = br#"{"is_skipped":false,"score":7.0,"required_score":15.0,"action":"add header",
            "symbols":{"A":{"name":"A","score":0.5},"TERN_TEST_WORD":{"name":"TERN_TEST_WORD","score":7.0},
            "NEG":{"name":"NEG","score":-2.0}},"messages":{},"message-id":"x@b.test",
            "milter":{"remove_headers":{"X-Spam-Status":0,"X-Spam":0},
            "add_headers":{"X-Spam-Status":{"order":-1,"value":"Yes, score=7.00"},"X-Two":["a",{"value":"b","order":0}]}}}"#;
        let a = parse(json).unwrap();
        assert_eq!(a.action, Action::AddHeader);
        assert_eq!((a.score, a.required_score), (7.0, 15.0));
        let names: Vec<&str> = a.symbols.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["TERN_TEST_WORD", "NEG", "A"]);
        let mut removed = a.remove_headers.clone();
        removed.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            removed,
            vec![Removed { name: "X-Spam".into(), index: 0 }, Removed { name: "X-Spam-Status".into(), index: 0 },]
        );
        assert_eq!(a.add_headers.len(), 3);
        assert_eq!(
            a.add_headers[0],
            Added { name: "X-Spam-Status".into(), value: "Yes, score=7.00".into(), order: None }
        );
        assert_eq!(a.add_headers[2].order, Some(0));
    }

    #[test]
    fn unusable_answers_are_errors() {
        for bad in [
            &b"<html>"[..],
            b"[]",
            b"{\"score\":1}",
            b"{\"action\":\"explode\",\"score\":1}",
            b"{\"action\":\"reject\"}",
            b"{\"action\":\"rewrite subject\",\"score\":1}",
            b"{\"error\":\"bad request\"}",
            b"{\"action\":\"no action\",\"score\":1,\"milter\":{\"add_headers\":{\"Bad Name\":\"x\"}}}",
            b"{\"action\":\"no action\",\"score\":1,\"milter\":{\"add_headers\":{\"X\":5}}}",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn symbols_and_headers_are_bounded() {
        let symbols: Vec<String> = (0..200).map(|i| format!("\"S{i}{}\":{{\"score\":{i}}}", "x".repeat(100))).collect();
        let json = format!("{{\"action\":\"no action\",\"score\":0,\"symbols\":{{{}}}}}", symbols.join(","));
        let a = parse(json.as_bytes()).unwrap();
        assert_eq!((a.symbols.len(), a.more_symbols), (MAX_SYMBOLS, 150));
        assert!(a.symbols.iter().all(|(n, _)| n.len() <= MAX_NAME));
        assert_eq!(a.symbols[0].1, 199.0);
        let many: Vec<String> = (0..100).map(|i| format!("\"X-H{i}\":\"v\"")).collect();
        let json =
            format!("{{\"action\":\"no action\",\"score\":0,\"milter\":{{\"add_headers\":{{{}}}}}}}", many.join(","));
        assert!(parse(json.as_bytes()).is_err());
    }
}
