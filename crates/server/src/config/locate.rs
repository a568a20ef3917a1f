//! Finding where a key path sits in the TOML text, so that semantic problems
//! found after parsing get a line and column like syntax errors do.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, TableLike, Value};

use super::error::Location;
use super::validate::{KeyPath, Segment};

/// Turns a byte offset into a 1-based line and column (columns count
/// characters, as editors do).
pub(crate) fn line_col(text: &str, offset: usize) -> Location {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    Location { line, column }
}

/// The span of the value at `path`, or of its nearest ancestor present in
/// the file when the key itself is absent (e.g. a required key left out).
pub(crate) fn span_of(text: &str, path: &KeyPath) -> Option<Range<usize>> {
    walk(text, path).map(|(span, _)| span)
}

/// The span of the value at `path` only if the whole path is in the file.
pub(crate) fn exact_span_of(text: &str, path: &KeyPath) -> Option<Range<usize>> {
    walk(text, path).and_then(|(span, exact)| exact.then_some(span))
}

/// The deepest span found along `path`, and whether the path resolved fully.
fn walk(text: &str, path: &KeyPath) -> Option<(Range<usize>, bool)> {
    let doc = ImDocument::parse(text).ok()?;
    let mut node = Node::Table(doc.as_table());
    let mut best = None;
    let mut exact = true;
    for seg in &path.0 {
        let Some((next, span)) = node.child(seg) else {
            exact = false;
            break;
        };
        match span {
            Some(span) => best = Some(span),
            None => exact = false,
        }
        node = next;
    }
    best.map(|span| (span, exact && !path.0.is_empty()))
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
    Table(&'a Table),
}

impl<'a> Node<'a> {
    fn table_like(self) -> Option<&'a dyn TableLike> {
        match self {
            Node::Item(item) => item.as_table_like(),
            Node::Value(value) => value.as_inline_table().map(|t| t as &dyn TableLike),
            Node::Table(table) => Some(table as &dyn TableLike),
        }
    }

    fn child(self, seg: &Segment) -> Option<(Node<'a>, Option<Range<usize>>)> {
        match seg {
            Segment::Key(key) => {
                let (k, item) = self.table_like()?.get_key_value(key)?;
                Some((Node::Item(item), item.span().or_else(|| k.span())))
            }
            Segment::Index(i) => match self {
                Node::Item(Item::ArrayOfTables(aot)) => {
                    let table = aot.get(*i)?;
                    Some((Node::Table(table), table.span()))
                }
                Node::Item(Item::Value(Value::Array(array))) | Node::Value(Value::Array(array)) => {
                    let value = array.get(*i)?;
                    Some((Node::Value(value), value.span()))
                }
                _ => None,
            },
        }
    }
}
