//! YAML text to a [`Node`] tree that remembers where every node came from.
//!
//! Built on `saphyr-parser` events so that each scalar, sequence and mapping carries its
//! [`Span`] (byte offsets plus 1-based line and column). Aliases are expanded, duplicate keys
//! and multiple documents are reported as diagnostics.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as YamlSpan};

use crate::diag::{Diagnostic, Span};

/// One YAML node and where it is in the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub span: Span,
    /// The span of the mapping key this node is the value of, if any.
    pub key_span: Option<Span>,
}

/// The shape of a node. Scalars keep their text; typing happens in `decode`.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A plain (unquoted) scalar: `2s`, `true`, `5001`, `~`.
    Plain(String),
    /// A quoted or block scalar: always a string.
    Quoted(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A node without a key.
    pub fn new(kind: NodeKind, span: Span) -> Node {
        Node {
            kind,
            span,
            key_span: None,
        }
    }

    /// Where to point when the node as a whole is at fault: the key of a mapping or list
    /// (`postgres:`), the value itself for scalars.
    pub fn blame(&self) -> Span {
        match (&self.kind, self.key_span) {
            (NodeKind::Map(_) | NodeKind::Seq(_), Some(key)) => key,
            _ => self.span,
        }
    }

    /// True for `~`, `null`, `Null`, `NULL` and an empty plain scalar.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Plain(s) if matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The text of a scalar node, quoted or not.
    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Plain(s) | NodeKind::Quoted(s) => Some(s),
            _ => None,
        }
    }

    /// Key/value pairs of a mapping node.
    pub fn entries(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value under `key` in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries()?
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(_, v)| v)
    }

    /// A short description of what this node is, for "found ..." messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Plain(s) if self.is_null() && s.is_empty() => "nothing".to_string(),
            NodeKind::Plain(s) if self.is_null() => format!("null ({s})"),
            NodeKind::Plain(s) | NodeKind::Quoted(s) => format!("{:?}", truncate(s, 40)),
            NodeKind::Seq(_) => "a list".to_string(),
            NodeKind::Map(_) => "a mapping".to_string(),
        }
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max_chars).collect();
        format!("{cut}…")
    }
}

/// Maps the parser's character indices to byte offsets.
struct Offsets {
    /// Byte offset of each character; empty when the text is ASCII (index == offset).
    char_to_byte: Vec<usize>,
    len: usize,
}

impl Offsets {
    fn new(text: &str) -> Offsets {
        let char_to_byte = if text.is_ascii() {
            Vec::new()
        } else {
            text.char_indices().map(|(i, _)| i).collect()
        };
        Offsets {
            char_to_byte,
            len: text.len(),
        }
    }

    fn byte(&self, char_index: usize) -> usize {
        if self.char_to_byte.is_empty() {
            char_index.min(self.len)
        } else {
            self.char_to_byte
                .get(char_index)
                .copied()
                .unwrap_or(self.len)
        }
    }

    fn span(&self, span: &YamlSpan) -> Span {
        let start = self.byte(span.start.index());
        let end = self.byte(span.end.index()).max(start);
        Span {
            start,
            end,
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

/// Parses one YAML document. `Err` holds syntax errors (with positions); the tree is `None`
/// for an empty document.
pub fn parse(text: &str) -> Result<Option<Node>, Vec<Diagnostic>> {
    let offsets = Offsets::new(text);
    let mut builder = Builder {
        offsets: &offsets,
        stack: Vec::new(),
        anchors: HashMap::new(),
        documents: Vec::new(),
        document_starts: Vec::new(),
        diagnostics: Vec::new(),
    };
    for item in Parser::new_from_str(text) {
        match item {
            Ok((event, span)) => builder.event(event, &span),
            Err(error) => {
                let diagnostic = syntax_error(text, &offsets, &error, &builder.stack);
                builder.diagnostics.push(diagnostic);
                return Err(builder.diagnostics);
            }
        }
    }
    if !builder.diagnostics.is_empty() {
        return Err(builder.diagnostics);
    }
    let mut documents = builder.documents.into_iter();
    let first = documents.next().flatten();
    if let Some(Some(second)) = documents.next() {
        let start = builder
            .document_starts
            .get(1)
            .copied()
            .unwrap_or(second.span);
        return Err(vec![Diagnostic::new(
            "",
            start,
            "expected one YAML document, found a second one",
            Some("remove the `---` separator; bow.yaml holds one stack".to_string()),
        )]);
    }
    Ok(first)
}

/// A YAML syntax error made specific: unclosed flow collections, tabs, `${` in flow context.
fn syntax_error(
    text: &str,
    offsets: &Offsets,
    error: &saphyr_parser::ScanError,
    open: &[Frame],
) -> Diagnostic {
    let marker = error.marker();
    let start = offsets.byte(marker.index()).min(text.len());
    let mut span = Span {
        start,
        end: start,
        line: marker.line(),
        col: marker.col() + 1,
    };
    let info = error.info();
    let mut message = format!("invalid YAML: {info}");
    let mut hint = "check the indentation and quoting around this point".to_string();
    let line_start = text[..start].rfind('\n').map_or(0, |at| at + 1);
    let line_text = text[line_start..].lines().next().unwrap_or_default();
    let indent: &str = &line_text[..line_text.len() - line_text.trim_start().len()];
    let innermost_flow = open.iter().rev().find_map(|frame| {
        let start = match frame {
            Frame::Seq { start, .. } | Frame::Map { start, .. } => start,
        };
        match text.as_bytes().get(start.start) {
            Some(b'[') => Some(('[', ']', *start)),
            Some(b'{') => Some(('{', '}', *start)),
            _ => None,
        }
    });
    if indent.contains('\t') || info.contains("tab") {
        let tab = line_text.find('\t').unwrap_or(0);
        span = Span {
            start: line_start + tab,
            end: line_start + tab + 1,
            line: span.line,
            col: tab + 1,
        };
        message = "invalid YAML: a tab is used for indentation".to_string();
        hint = "indent with spaces, not tabs".to_string();
    } else if let Some((open_char, close_char, opened)) =
        innermost_flow.filter(|(_, _, opened)| opened.line < span.line)
    {
        message = format!(
            "invalid YAML: `{open_char}` opened on line {} column {} is not closed: expected `,` or `{close_char}` ({info})",
            opened.line, opened.col
        );
        hint = format!(
            "close the list or mapping with `{close_char}` on its own line or before the next key"
        );
        span = Span {
            start: opened.start,
            end: opened.start + 1,
            line: opened.line,
            col: opened.col,
        };
    } else if innermost_flow.is_some() && line_text.contains("${") {
        hint = "quote values that contain `${...}` inside [...] or {...}, like [\"${domain}\"]"
            .to_string();
    } else if info.contains("did not find expected key")
        || info.contains("mapping values are not allowed")
    {
        hint =
            "keys of one mapping must be indented equally; check this line against the line above"
                .to_string();
    }
    Diagnostic::new("", span, message, Some(hint))
}

enum Frame {
    Seq {
        start: Span,
        items: Vec<Node>,
        anchor: usize,
    },
    Map {
        start: Span,
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
        anchor: usize,
    },
}

struct Builder<'a> {
    offsets: &'a Offsets,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    documents: Vec<Option<Node>>,
    document_starts: Vec<Span>,
    diagnostics: Vec<Diagnostic>,
}

impl Builder<'_> {
    fn event(&mut self, event: Event<'_>, span: &YamlSpan) {
        let here = self.offsets.span(span);
        match event {
            Event::DocumentStart(_) => {
                self.document_starts.push(here);
                self.documents.push(None);
            }
            Event::Scalar(value, style, anchor, _tag) => {
                let kind = if style == ScalarStyle::Plain {
                    NodeKind::Plain(value.into_owned())
                } else {
                    NodeKind::Quoted(value.into_owned())
                };
                self.finish(Node::new(kind, here), anchor);
            }
            Event::Alias(anchor) => match self.anchors.get(&anchor) {
                Some(node) => {
                    let mut node = node.clone();
                    node.span = here;
                    self.finish(node, 0);
                }
                None => self.diagnostics.push(Diagnostic::new(
                    "",
                    here,
                    "unknown YAML alias",
                    Some("define the anchor (&name) before using it (*name)".to_string()),
                )),
            },
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                start: here,
                items: Vec::new(),
                anchor,
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                start: here,
                entries: Vec::new(),
                pending_key: None,
                anchor,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return;
                };
                let (node, anchor) = match frame {
                    Frame::Seq {
                        start,
                        items,
                        anchor,
                    } => (Node::new(NodeKind::Seq(items), start.to(&here)), anchor),
                    Frame::Map {
                        start,
                        entries,
                        anchor,
                        ..
                    } => (Node::new(NodeKind::Map(entries), start.to(&here)), anchor),
                };
                self.finish(node, anchor);
            }
            _ => {}
        }
    }

    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                if let Some(slot) = self.documents.last_mut() {
                    *slot = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => {
                    if key.scalar().is_none() {
                        self.diagnostics.push(Diagnostic::new(
                            "",
                            key.span,
                            "expected a plain key, found a complex mapping key",
                            None,
                        ));
                    } else if let Some((first, _)) =
                        entries.iter().find(|(k, _)| k.scalar() == key.scalar())
                    {
                        self.diagnostics.push(Diagnostic::new(
                            "",
                            key.span,
                            format!("duplicate key {:?}", key.scalar().unwrap_or_default()),
                            Some(format!(
                                "it is already set on line {}; keep one of them",
                                first.span.line
                            )),
                        ));
                    } else {
                        let mut node = node;
                        node.key_span = Some(key.span);
                        entries.push((key, node));
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_point_at_scalars() {
        let text = "a:\n  b: hello\n  c: [1, 2]\n";
        let root = parse(text).unwrap().unwrap();
        let b = root.get("a").unwrap().get("b").unwrap();
        assert_eq!(b.scalar(), Some("hello"));
        assert_eq!((b.span.line, b.span.col), (2, 6));
        assert_eq!(&text[b.span.start..b.span.end], "hello");
    }

    #[test]
    fn non_ascii_offsets_are_bytes() {
        let text = "é: \"ü\"\nx: y\n";
        let root = parse(text).unwrap().unwrap();
        let x = root.get("x").unwrap();
        assert_eq!(&text[x.span.start..x.span.end], "y");
    }

    #[test]
    fn duplicate_keys_are_reported() {
        let errors = parse("a: 1\na: 2\n").unwrap_err();
        assert!(errors[0].message.contains("duplicate key"));
        assert_eq!(errors[0].span.line, 2);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let errors = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(errors[0].message.starts_with("invalid YAML"));
        assert!(errors[0].span.line >= 1);
    }

    #[test]
    fn aliases_expand() {
        let root = parse("x: &a {k: v}\ny: *a\n").unwrap().unwrap();
        assert_eq!(root.get("y").unwrap().get("k").unwrap().scalar(), Some("v"));
    }
}
