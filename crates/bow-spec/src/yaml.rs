//! YAML text to a [`Node`] tree that remembers where every node came from.
//!
//! Built on `saphyr-parser` events so that each scalar, sequence and mapping carries its
//! [`Span`] (byte offsets plus 1-based line and column). Aliases are expanded, duplicate keys
//! and multiple documents are reported as diagnostics.
//!
//! The text may come from someone hostile, so reading it has budgets ([`budget`]): input
//! size, nesting depth, keys per mapping, aliases, and the size of the tree once aliases are
//! expanded (nodes and scalar bytes). Exceeding one stops reading at once with a diagnostic
//! that names it; nothing is allocated past a budget. Every step is linear in the input.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as YamlSpan};

use crate::diag::{Diagnostic, Span};

/// What reading one stack file may cost. Each limit is far above any real `bow.yaml` (the
/// 500-service stack of `bench/plan.sh` is ~0.1 MiB and ~12 000 nodes).
pub mod budget {
    /// The largest file read, in bytes.
    pub const MAX_BYTES: usize = 16 << 20;
    /// The deepest nesting of lists and mappings.
    pub const MAX_DEPTH: usize = 64;
    /// The most keys one mapping may hold.
    pub const MAX_KEYS: usize = 100_000;
    /// The most aliases (`*name`) one file may use.
    pub const MAX_ALIASES: usize = 1_000;
    /// The most nodes (scalars, lists, mappings) in the tree, every alias counted as a copy
    /// of what it names.
    pub const MAX_NODES: usize = 500_000;
    /// The most scalar text in the tree, in bytes, every alias counted as a copy.
    pub const MAX_EXPANDED_BYTES: usize = 32 << 20;
}

/// The line (1-based) and column (1-based, in characters) of byte `offset` of `text`.
pub fn position(text: &str, offset: usize) -> Span {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    Span {
        start: offset,
        end: offset,
        line: before.bytes().filter(|b| *b == b'\n').count() + 1,
        col: before[line_start..].chars().count() + 1,
    }
}

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
    if text.len() > budget::MAX_BYTES {
        let mut at = position(text, budget::MAX_BYTES);
        at.end = at.start;
        return Err(vec![over_budget(
            at,
            format!(
                "the file is {} bytes, more than {} MiB",
                text.len(),
                budget::MAX_BYTES >> 20
            ),
            "a bow.yaml describes services, not data: keep large content in files the services read",
        )]);
    }
    let offsets = Offsets::new(text);
    let mut builder = Builder {
        offsets: &offsets,
        stack: Vec::new(),
        anchors: HashMap::new(),
        documents: Vec::new(),
        document_starts: Vec::new(),
        diagnostics: Vec::new(),
        nodes: 0,
        bytes: 0,
        aliases: 0,
        over_budget: false,
    };
    for item in Parser::new_from_str(text) {
        match item {
            Ok((event, span)) => {
                builder.event(event, &span);
                if builder.over_budget {
                    return Err(builder.diagnostics);
                }
            }
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
    if info.contains("recursion limit") {
        message = format!(
            "over budget: lists and mappings nested too deep (more than {} levels)",
            budget::MAX_DEPTH
        );
        hint = "a stack file is a few levels deep; flatten this structure".to_string();
    } else if indent.contains('\t') || info.contains("tab") {
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

/// The diagnostic for an exceeded budget.
fn over_budget(here: Span, message: String, hint: &str) -> Diagnostic {
    Diagnostic::new(
        "",
        here,
        format!("over budget: {message}"),
        Some(format!(
            "{hint}; a bow.yaml is read with fixed budgets (docs/stack-file.md, \"Budgets\")"
        )),
    )
}

const ALIAS_HINT: &str = "an alias copies what its anchor names, so aliases of aliases multiply";

enum Frame {
    Seq {
        start: Span,
        items: Vec<Node>,
        anchor: usize,
        /// The tree's size when the list opened (its own size is the growth since).
        before: Size,
    },
    Map {
        start: Span,
        entries: Vec<(Node, Node)>,
        /// Each key's line, to find duplicates in constant time.
        keys: HashMap<String, usize>,
        pending_key: Option<Node>,
        anchor: usize,
        before: Size,
    },
}

/// The size of a (sub)tree: nodes and scalar bytes.
#[derive(Clone, Copy, Default)]
struct Size {
    nodes: usize,
    bytes: usize,
}

struct Builder<'a> {
    offsets: &'a Offsets,
    stack: Vec<Frame>,
    /// Anchored nodes with their size, for aliases.
    anchors: HashMap<usize, (Node, Size)>,
    documents: Vec<Option<Node>>,
    document_starts: Vec<Span>,
    diagnostics: Vec<Diagnostic>,
    /// Nodes and scalar bytes in the tree so far, aliases counted as copies.
    nodes: usize,
    bytes: usize,
    aliases: usize,
    /// A budget was exceeded: reading stops.
    over_budget: bool,
}

impl Builder<'_> {
    fn size(&self) -> Size {
        Size {
            nodes: self.nodes,
            bytes: self.bytes,
        }
    }

    /// Counts `added` into the tree, or stops reading when that passes a budget.
    fn grow(&mut self, added: Size, here: Span, what: &str) -> bool {
        self.nodes += added.nodes;
        self.bytes += added.bytes;
        if self.nodes > budget::MAX_NODES {
            self.over(
                here,
                format!(
                    "{what} makes the file more than {} nodes (lists, mappings and values, each alias counted as a copy)",
                    budget::MAX_NODES
                ),
                ALIAS_HINT,
            );
        } else if self.bytes > budget::MAX_EXPANDED_BYTES {
            self.over(
                here,
                format!(
                    "{what} makes the file's values more than {} MiB (each alias counted as a copy)",
                    budget::MAX_EXPANDED_BYTES >> 20
                ),
                ALIAS_HINT,
            );
        }
        !self.over_budget
    }

    fn over(&mut self, here: Span, message: String, hint: &str) {
        self.over_budget = true;
        self.diagnostics.push(over_budget(here, message, hint));
    }

    fn event(&mut self, event: Event<'_>, span: &YamlSpan) {
        let here = self.offsets.span(span);
        match event {
            Event::DocumentStart(_) => {
                self.document_starts.push(here);
                self.documents.push(None);
            }
            Event::Scalar(value, style, anchor, _tag) => {
                let size = Size {
                    nodes: 1,
                    bytes: value.len(),
                };
                if !self.grow(size, here, "this value") {
                    return;
                }
                if value.contains('\0') {
                    self.diagnostics.push(Diagnostic::new(
                        "",
                        here,
                        "a value holds a NUL character (\\0)",
                        Some(
                            "commands, environment variables and paths cannot hold NUL; remove it"
                                .to_string(),
                        ),
                    ));
                }
                let kind = if style == ScalarStyle::Plain {
                    NodeKind::Plain(value.into_owned())
                } else {
                    NodeKind::Quoted(value.into_owned())
                };
                self.finish(Node::new(kind, here), anchor, size);
            }
            Event::Alias(anchor) => {
                let Some(size) = self.anchors.get(&anchor).map(|(_, size)| *size) else {
                    self.diagnostics.push(Diagnostic::new(
                        "",
                        here,
                        "unknown YAML alias",
                        Some("define the anchor (&name) before using it (*name)".to_string()),
                    ));
                    return;
                };
                self.aliases += 1;
                if self.aliases > budget::MAX_ALIASES {
                    self.over(
                        here,
                        format!("more than {} aliases (*name)", budget::MAX_ALIASES),
                        ALIAS_HINT,
                    );
                    return;
                }
                // Checked before the copy is made: a budget is never exceeded in memory.
                if !self.grow(size, here, "this alias") {
                    return;
                }
                if let Some((node, _)) = self.anchors.get(&anchor) {
                    let mut node = node.clone();
                    node.span = here;
                    self.finish(node, 0, size);
                }
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if self.stack.len() >= budget::MAX_DEPTH {
                    self.over(
                        here,
                        format!(
                            "lists and mappings nested more than {} deep",
                            budget::MAX_DEPTH
                        ),
                        "a stack file is a few levels deep; flatten this structure",
                    );
                    return;
                }
                let before = self.size();
                if !self.grow(Size { nodes: 1, bytes: 0 }, here, "this list or mapping") {
                    return;
                }
                self.stack
                    .push(if matches!(event, Event::SequenceStart(..)) {
                        Frame::Seq {
                            start: here,
                            items: Vec::new(),
                            anchor,
                            before,
                        }
                    } else {
                        Frame::Map {
                            start: here,
                            entries: Vec::new(),
                            keys: HashMap::new(),
                            pending_key: None,
                            anchor,
                            before,
                        }
                    });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return;
                };
                let (node, anchor, before) = match frame {
                    Frame::Seq {
                        start,
                        items,
                        anchor,
                        before,
                    } => (
                        Node::new(NodeKind::Seq(items), start.to(&here)),
                        anchor,
                        before,
                    ),
                    Frame::Map {
                        start,
                        entries,
                        anchor,
                        before,
                        ..
                    } => (
                        Node::new(NodeKind::Map(entries), start.to(&here)),
                        anchor,
                        before,
                    ),
                };
                let size = Size {
                    nodes: self.nodes - before.nodes,
                    bytes: self.bytes - before.bytes,
                };
                self.finish(node, anchor, size);
            }
            _ => {}
        }
    }

    fn finish(&mut self, node: Node, anchor: usize, size: Size) {
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), size));
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
                keys,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => {
                    let Some(name) = key.scalar() else {
                        self.diagnostics.push(Diagnostic::new(
                            "",
                            key.span,
                            "expected a plain key, found a complex mapping key",
                            None,
                        ));
                        return;
                    };
                    if let Some(first_line) = keys.get(name) {
                        self.diagnostics.push(Diagnostic::new(
                            "",
                            key.span,
                            format!("duplicate key {name:?}"),
                            Some(format!(
                                "it is already set on line {first_line}; keep one of them"
                            )),
                        ));
                    } else if entries.len() >= budget::MAX_KEYS {
                        self.over_budget = true;
                        self.diagnostics.push(over_budget(
                            key.span,
                            format!("a mapping with more than {} keys", budget::MAX_KEYS),
                            "split the mapping or keep the data in a file a service reads",
                        ));
                    } else {
                        keys.insert(name.to_string(), key.span.line);
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

    fn budget_error(text: &str) -> Diagnostic {
        let errors = parse(text).expect_err("over a budget");
        let error = errors.last().unwrap().clone();
        assert!(error.message.starts_with("over budget: "), "{error:?}");
        error
    }

    /// "Billion laughs": nine aliases of nine aliases of ... (9^9 values once expanded).
    pub(crate) fn alias_bomb() -> String {
        let mut text = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for (name, previous) in ["b", "c", "d", "e", "f", "g", "h", "i"]
            .iter()
            .zip("abcdefgh".chars())
        {
            let items = vec![format!("*{previous}"); 9].join(", ");
            text.push_str(&format!("{name}: &{name} [{items}]\n"));
        }
        text
    }

    #[test]
    fn an_alias_bomb_stops_at_the_node_budget_before_copying() {
        let error = budget_error(&alias_bomb());
        assert!(error.message.contains("500000 nodes"), "{error:?}");
        // Line 6 (`f:`) is where the expanded tree would pass 500 000 nodes.
        assert_eq!(error.span.line, 6, "{error:?}");
    }

    #[test]
    fn aliases_are_counted() {
        let mut text = String::from("a: &a x\nb: [");
        text.push_str(&vec!["*a"; budget::MAX_ALIASES + 1].join(", "));
        text.push_str("]\n");
        let error = budget_error(&text);
        assert!(
            error.message.contains("more than 1000 aliases"),
            "{error:?}"
        );
        assert_eq!(error.span.line, 2);
    }

    #[test]
    fn expanded_bytes_are_counted() {
        let big = "x".repeat(4 << 20);
        let text = format!("a: &a {big}\nb: [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n");
        let error = budget_error(&text);
        assert!(error.message.contains("32 MiB"), "{error:?}");
    }

    #[test]
    fn nesting_depth_is_bounded() {
        let mut text = String::new();
        for depth in 0..100 {
            text.push_str(&format!("{}k{depth}:\n", "  ".repeat(depth)));
        }
        let error = budget_error(&text);
        assert!(error.message.contains("64 deep"), "{error:?}");
        // Key k63 opens the 64th mapping, the 65th level.
        assert_eq!(error.span.line, budget::MAX_DEPTH + 1, "{error:?}");
        // Flow style is stopped by the parser's own limit, reported as the same budget.
        let flow = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let error = budget_error(&flow);
        assert!(error.message.contains("nested too deep"), "{error:?}");
    }

    #[test]
    fn keys_per_mapping_are_bounded() {
        let mut text = String::from("vars:\n");
        for i in 0..=budget::MAX_KEYS {
            text.push_str(&format!("  k{i}: v\n"));
        }
        let error = budget_error(&text);
        assert!(error.message.contains("100000 keys"), "{error:?}");
        assert_eq!(error.span.line, budget::MAX_KEYS + 2);
    }

    #[test]
    fn input_size_is_bounded() {
        let text = format!("a: \"{}\"\n", "x".repeat(budget::MAX_BYTES));
        let error = budget_error(&text);
        assert!(error.message.contains("16 MiB"), "{error:?}");
    }

    #[test]
    fn duplicate_keys_in_a_large_mapping_are_all_found() {
        let mut text = String::new();
        for i in 0..50_000 {
            text.push_str(&format!("k{i}: v\n"));
        }
        text.push_str("k49999: again\nk0: again\n");
        let errors = parse(&text).unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.span.line).collect();
        assert_eq!(lines, [50_001, 50_002], "{errors:?}");
        assert!(errors[1].hint.as_deref().unwrap().contains("line 1;"));
    }

    #[test]
    fn nul_characters_are_refused_where_they_are() {
        let errors = parse("a: ok\nb: \"x\\0y\"\n").unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("NUL"), "{errors:?}");
        assert_eq!((errors[0].span.line, errors[0].span.col), (2, 4));
    }

    #[test]
    fn positions_count_lines_and_characters() {
        let text = "ab\néé: x\n";
        let at = position(text, text.find('x').unwrap());
        assert_eq!((at.line, at.col), (2, 5));
    }

    #[test]
    fn aliases_expand() {
        let root = parse("x: &a {k: v}\ny: *a\n").unwrap().unwrap();
        assert_eq!(root.get("y").unwrap().get("k").unwrap().scalar(), Some("v"));
    }
}
