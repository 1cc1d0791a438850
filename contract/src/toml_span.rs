//! Where a key is in a TOML document, from the parser's own spans. Error messages about a value
//! that went through merging or migration (so the deserializer's span is lost) name the line of
//! the key the user wrote, in the table they wrote it in — `users.count` is never reported at a
//! `[[dataset.channels]]` `count` line.

use toml_edit::{ImDocument, InlineTable, Item, Table, Value};

/// One step of a serde path (`dataset.channels[1].count`): a key or an array index.
#[derive(Debug, PartialEq)]
enum Step<'p> {
    Key(&'p str),
    Index(usize),
}

fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Step::Key(name));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            out.push(Step::Index(r[..end].parse().ok()?));
            rest = &r[end + 1..];
        }
    }
    Some(out)
}

#[derive(Clone, Copy)]
enum Node<'d> {
    Item(&'d Item),
    Value(&'d Value),
    Table(&'d Table),
    Inline(&'d InlineTable),
}

impl<'d> Node<'d> {
    /// The child named `key` and the span of its key as written.
    fn key(self, key: &str) -> Option<(Node<'d>, Option<std::ops::Range<usize>>)> {
        match self {
            Node::Table(t) | Node::Item(Item::Table(t)) => {
                t.get_key_value(key).map(|(k, v)| (Node::Item(v), k.span()))
            }
            Node::Inline(t)
            | Node::Value(Value::InlineTable(t))
            | Node::Item(Item::Value(Value::InlineTable(t))) => {
                t.get_key_value(key).map(|(k, v)| (Node::Item(v), k.span()))
            }
            _ => None,
        }
    }

    fn index(self, i: usize) -> Option<Node<'d>> {
        match self {
            Node::Item(Item::ArrayOfTables(a)) => a.get(i).map(Node::Table),
            Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                a.get(i).map(|v| match v {
                    Value::InlineTable(t) => Node::Inline(t),
                    v => Node::Value(v),
                })
            }
            _ => None,
        }
    }

    fn span(self) -> Option<std::ops::Range<usize>> {
        match self {
            Node::Item(i) => i.span(),
            Node::Value(v) => v.span(),
            Node::Table(t) => t.span(),
            Node::Inline(t) => t.span(),
        }
    }
}

/// The 1-based line where `path` (a serde path such as `users.count` or
/// `dataset.channels[1].members`) is written in `text`: its key, or for an array element the
/// element itself. `None` when the document does not contain it (a value from a preset, say)
/// or does not parse.
pub fn key_line(text: &str, path: &str) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    let mut node = Node::Table(doc.as_table());
    let mut span = None;
    for step in steps(path)? {
        match step {
            Step::Key(k) => {
                let (child, key_span) = node.key(k)?;
                span = key_span.or_else(|| child.span());
                node = child;
            }
            Step::Index(i) => {
                node = node.index(i)?;
                span = node.span();
            }
        }
    }
    span.map(|s| line_at(text, s.start))
}

/// The line of `path`, or of the nearest enclosing table or element the document holds: a
/// missing or preset-supplied key is reported where its table is written.
pub fn nearest_line(text: &str, path: &str) -> Option<usize> {
    let mut p = path;
    loop {
        if let Some(l) = key_line(text, p) {
            return Some(l);
        }
        p = &p[..p.rfind(['.', '['])?];
    }
}

/// The 1-based line of byte `offset` of `text`.
pub fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"preset = "quick"
[dataset]
teams = 1
[[dataset.channels]]
count = 4
members = 10
[[dataset.channels]]
count = 2
members = 3
[users]
count = 20
ramp_up = "1s"
[run]
thresholds = ["a", "b"]
inline = { count = 5 }
"#;

    #[test]
    fn keys_are_found_in_their_own_table() {
        assert_eq!(key_line(DOC, "users.count"), Some(11));
        assert_eq!(key_line(DOC, "dataset.channels[0].count"), Some(5));
        assert_eq!(key_line(DOC, "dataset.channels[1].members"), Some(9));
        assert_eq!(key_line(DOC, "dataset.channels[1]"), Some(7));
        assert_eq!(key_line(DOC, "dataset.teams"), Some(3));
        assert_eq!(key_line(DOC, "preset"), Some(1));
        assert_eq!(key_line(DOC, "users"), Some(10));
        assert_eq!(key_line(DOC, "run.thresholds[1]"), Some(14));
        assert_eq!(key_line(DOC, "run.inline.count"), Some(15));
    }

    #[test]
    fn what_the_document_does_not_hold_has_no_line() {
        assert_eq!(key_line(DOC, "users.duration"), None);
        assert_eq!(key_line(DOC, "dataset.channels[2].count"), None);
        assert_eq!(key_line(DOC, "behaviour.mode"), None);
        assert_eq!(key_line(DOC, "."), None);
        assert_eq!(key_line("not = [toml", "not"), None);
    }

    #[test]
    fn a_missing_key_is_placed_at_its_table() {
        assert_eq!(nearest_line(DOC, "users.duration"), Some(10));
        assert_eq!(nearest_line(DOC, "dataset.channels[1].name"), Some(7));
        assert_eq!(nearest_line(DOC, "behaviour.mode"), None);
        assert_eq!(nearest_line(DOC, "users.count"), Some(11));
    }
}
