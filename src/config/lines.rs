//! Where a key is in the configuration text: `local.aliases."x@y"` or `listen[1].addr`
//! to a line number, and a position in the text back to its key path, so that every
//! error can name both.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of a key path.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// `a.b."c.d"[2].e` as steps.
fn steps(path: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut chars = path.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '.' => {
                chars.next();
            }
            '"' => {
                chars.next();
                let mut key = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => key.extend(chars.next()),
                        '"' => break,
                        c => key.push(c),
                    }
                }
                out.push(Step::Key(key));
            }
            '[' => {
                chars.next();
                let digits: String = chars.by_ref().take_while(|&c| c != ']').collect();
                out.push(Step::Index(digits.parse().unwrap_or(usize::MAX)));
            }
            _ => {
                let mut key = String::new();
                while let Some(&c) = chars.peek() {
                    if c == '.' || c == '[' {
                        break;
                    }
                    key.push(c);
                    chars.next();
                }
                out.push(Step::Key(key));
            }
        }
    }
    out
}

/// A key as it is written in a path: bare when it can be, quoted otherwise.
pub fn key(name: &str) -> String {
    let bare = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { name.to_string() } else { format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\"")) }
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line of the deepest key of `path` that the text has (a table's header for a
/// key left at its default), or `None`.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let mut table: &DeTable = root.get_ref();
    let mut value: Option<&Spanned<DeValue>> = None;
    let mut found = None;
    for step in steps(path) {
        let next = match (&step, value.map(Spanned::get_ref)) {
            (Step::Key(k), None) => table.get_key_value(k.as_str()),
            (Step::Key(k), Some(DeValue::Table(t))) => {
                table = t;
                table.get_key_value(k.as_str())
            }
            (Step::Index(i), Some(DeValue::Array(a))) => {
                let item = a.get(*i)?;
                found = Some(item.span().start);
                value = Some(item);
                continue;
            }
            _ => None,
        };
        let Some((k, v)) = next else { break };
        found = Some(k.span().start);
        value = Some(v);
    }
    found.map(|offset| line_at(text, offset))
}

/// The key path of the value or key at `offset` (where a parse error points).
pub fn path_at(text: &str, offset: usize) -> Option<String> {
    let root = DeTable::parse(text).ok()?;
    search(root.get_ref(), offset, "")
}

/// A table's span may cover only its header, so every table is searched.
fn search(table: &DeTable, offset: usize, prefix: &str) -> Option<String> {
    let within = |span: std::ops::Range<usize>| span.contains(&offset);
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() { key(k.get_ref()) } else { format!("{prefix}.{}", key(k.get_ref())) };
        if within(k.span()) {
            return Some(path);
        }
        match v.get_ref() {
            DeValue::Table(t) => {
                if let Some(found) = search(t, offset, &path) {
                    return Some(found);
                }
            }
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{path}[{i}]");
                    if let DeValue::Table(t) = item.get_ref()
                        && let Some(found) = search(t, offset, &at)
                    {
                        return Some(found);
                    }
                    if within(item.span()) {
                        return Some(at);
                    }
                }
            }
            _ => {}
        }
        if within(v.span()) {
            return Some(path);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "hostname = \"a\"\n\n[[listen]]\naddr = \"127.0.0.1:25\"\n\n[[listen]]\naddr = \"127.0.0.1:26\"\n\n[local.aliases]\n\"x@y.test\" = [\"z@y.test\"]\n[limits]\nmax_size = 5\n";

    #[test]
    fn paths_to_lines() {
        assert_eq!(line_of(TEXT, "hostname"), Some(1));
        assert_eq!(line_of(TEXT, "listen[1].addr"), Some(7));
        assert_eq!(line_of(TEXT, "listen[0].addr"), Some(4));
        assert_eq!(line_of(TEXT, "local.aliases.\"x@y.test\""), Some(10));
        assert_eq!(line_of(TEXT, "limits.max_connections"), Some(11), "a missing key: its table");
        assert_eq!(line_of(TEXT, "queue.retry"), None);
        assert_eq!(key("x@y"), "\"x@y\"");
        assert_eq!(key("max_age"), "max_age");
    }

    #[test]
    fn lines_to_paths() {
        let at = |needle: &str| path_at(TEXT, TEXT.find(needle).unwrap());
        assert_eq!(at("max_size").as_deref(), Some("limits.max_size"));
        assert_eq!(at("\"127.0.0.1:26\"").as_deref(), Some("listen[1].addr"));
        assert_eq!(at("[\"z@y.test\"]").as_deref(), Some("local.aliases.\"x@y.test\""));
        assert_eq!(at("\"z@y.test\"").as_deref(), Some("local.aliases.\"x@y.test\"[0]"));
    }
}
