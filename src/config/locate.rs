//! Where things are in a TOML text: byte offset -> dotted key (`auth.user[1].key`) and back,
//! and offset -> line. Built on `toml_edit`, which keeps the span of every key and value, so a
//! serde error's span names its key and a validation problem's key finds its line.

use std::ops::Range;

use toml_edit::{ArrayOfTables, ImDocument, InlineTable, Item, Table, Value};

/// The 1-based line holding byte `offset` of `text`.
pub fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key of the innermost key or value whose span holds `offset`.
pub fn path_at(doc: &ImDocument<&str>, offset: usize) -> Option<String> {
    let mut path = String::new();
    table_at(doc.as_table(), offset, &mut path).then_some(path)
}

fn holds(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && (offset < s.end || s.is_empty() && offset == s.start))
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn table_at(table: &Table, offset: usize, path: &mut String) -> bool {
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        let mark = path.len();
        push_key(path, name);
        if holds(key.span(), offset) || item_at(item, offset, path) {
            return true;
        }
        path.truncate(mark);
    }
    false
}

fn item_at(item: &Item, offset: usize, path: &mut String) -> bool {
    match item {
        Item::None => false,
        Item::Value(v) => value_at(v, offset, path),
        // A standard table's span is its header; its keys are searched separately.
        Item::Table(t) => table_at(t, offset, path) || holds(t.span(), offset),
        Item::ArrayOfTables(a) => tables_at(a, offset, path),
    }
}

fn tables_at(array: &ArrayOfTables, offset: usize, path: &mut String) -> bool {
    for (i, t) in array.iter().enumerate() {
        let mark = path.len();
        path.push_str(&format!("[{i}]"));
        if table_at(t, offset, path) || holds(t.span(), offset) {
            return true;
        }
        path.truncate(mark);
    }
    false
}

fn value_at(value: &Value, offset: usize, path: &mut String) -> bool {
    match value {
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let mark = path.len();
                path.push_str(&format!("[{i}]"));
                if value_at(v, offset, path) {
                    return true;
                }
                path.truncate(mark);
            }
            holds(a.span(), offset)
        }
        Value::InlineTable(t) => inline_at(t, offset, path) || holds(t.span(), offset),
        v => holds(v.span(), offset),
    }
}

fn inline_at(table: &InlineTable, offset: usize, path: &mut String) -> bool {
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        let mark = path.len();
        push_key(path, name);
        if holds(key.span(), offset) || item_at(item, offset, path) {
            return true;
        }
        path.truncate(mark);
    }
    false
}

/// One step of a dotted key.
#[derive(Debug, PartialEq)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some((n, tail)) = rest.split_once(']') {
            if let Ok(i) = n.parse() {
                out.push(Segment::Index(i));
            }
            rest = tail.strip_prefix('[').unwrap_or(tail);
        }
    }
    out
}

/// A place in the document while walking a dotted key.
#[derive(Clone, Copy)]
enum Node<'a> {
    Table(&'a Table),
    Inline(&'a InlineTable),
    Tables(&'a ArrayOfTables),
    Array(&'a toml_edit::Array),
    Leaf,
}

impl<'a> Node<'a> {
    fn of_item(item: &'a Item) -> Self {
        match item {
            Item::Table(t) => Node::Table(t),
            Item::ArrayOfTables(a) => Node::Tables(a),
            Item::Value(v) => Node::of_value(v),
            Item::None => Node::Leaf,
        }
    }

    fn of_value(value: &'a Value) -> Self {
        match value {
            Value::InlineTable(t) => Node::Inline(t),
            Value::Array(a) => Node::Array(a),
            _ => Node::Leaf,
        }
    }

    /// The span to report for this step and the node it leads to.
    fn step(self, seg: &Segment<'_>) -> Option<(Option<Range<usize>>, Node<'a>)> {
        match (self, seg) {
            (Node::Table(t), Segment::Key(k)) => t
                .get_key_value(k)
                .map(|(key, item)| (key.span(), Node::of_item(item))),
            (Node::Inline(t), Segment::Key(k)) => t
                .get_key_value(k)
                .map(|(key, item)| (key.span(), Node::of_item(item))),
            (Node::Tables(a), Segment::Index(i)) => a.get(*i).map(|t| (t.span(), Node::Table(t))),
            (Node::Array(a), Segment::Index(i)) => a.get(*i).map(|v| (v.span(), Node::of_value(v))),
            _ => None,
        }
    }
}

/// The span of `path` (the key's own span for a key, the element's for an index), or of its
/// nearest ancestor present in the file; `None` when not even the first key is present.
pub fn span_of(doc: &ImDocument<&str>, path: &str) -> Option<Range<usize>> {
    let mut node = Node::Table(doc.as_table());
    let mut best = None;
    for seg in segments(path) {
        let Some((span, next)) = node.step(&seg) else {
            break;
        };
        best = span.or(best);
        node = next;
    }
    best
}

/// For a syntax error, where `toml_edit` gives no tree: the last `[table]` header at or above
/// `offset` and the `key =` on the offending line, as well as they can be read from the text.
pub fn guess_path(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[line_start..line_end].trim();
    let table = text[..line_start]
        .lines()
        .chain(std::iter::once(line))
        .filter_map(|l| {
            let l = l.trim();
            let inner = l.strip_prefix('[')?.split(']').next()?;
            Some(inner.trim_start_matches('[').trim().to_string())
        })
        .next_back()
        .unwrap_or_default();
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('[') && !k.starts_with('#'))
        .unwrap_or("");
    match (table.as_str(), key) {
        ("", "") => "(top level)".to_string(),
        (table, "") => table.to_string(),
        ("", key) => key.to_string(),
        (table, key) => format!("{table}.{key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "realm = \"x\"\n[listen]\nudp = [\n  \"a\",\n  \"b\",\n]\n\n[[auth.user]]\nname = \"n\"\n[[auth.user]]\nname = \"m\"\nkey = \"k\"\n[relay]\nexternal = [{ x = 1 }]\n";

    fn at(needle: &str) -> usize {
        TEXT.find(needle).unwrap()
    }

    #[test]
    fn offsets_name_their_keys() {
        let doc = ImDocument::parse(TEXT).unwrap();
        assert_eq!(path_at(&doc, at("realm")).as_deref(), Some("realm"));
        assert_eq!(path_at(&doc, at("\"b\"")).as_deref(), Some("listen.udp[1]"));
        assert_eq!(
            path_at(&doc, at("key")).as_deref(),
            Some("auth.user[1].key")
        );
        assert_eq!(
            path_at(&doc, at("x =")).as_deref(),
            Some("relay.external[0].x")
        );
        assert_eq!(line_at(TEXT, at("\"b\"")), 5);
    }

    #[test]
    fn keys_find_their_lines() {
        let doc = ImDocument::parse(TEXT).unwrap();
        let line = |p: &str| span_of(&doc, p).map(|s| line_at(TEXT, s.start));
        assert_eq!(line("realm"), Some(1));
        assert_eq!(line("listen.udp[1]"), Some(5));
        assert_eq!(line("auth.user[1].key"), Some(12));
        assert_eq!(line("auth.user[1].password"), Some(10));
        assert_eq!(line("listen.tcp"), Some(2));
        assert_eq!(line("policy.max_allocations"), None);
    }

    #[test]
    fn syntax_errors_guess_their_keys() {
        let text = "realm = 1\n[relay]\nports = \"1-2\nx\n";
        assert_eq!(guess_path(text, text.find("\"1").unwrap()), "relay.ports");
        assert_eq!(guess_path(text, 2), "realm");
        assert_eq!(guess_path("[[auth.user]]\n!!\n", 15), "auth.user");
    }
}
