//! Typed reads from [`Node`]s that record a diagnostic instead of failing.
//!
//! Every reader returns `None` after pushing a diagnostic, so decoding carries on and reports
//! every mistake in one run.

use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::units::{Duration, Size};
use crate::yaml::{Node, NodeKind};

/// `parent.child`, or `child` at the root.
pub fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// `parent[index]`.
pub fn index(parent: &str, position: usize) -> String {
    format!("{parent}[{position}]")
}

/// The most diagnostics one run records; past it, one more says that reporting stopped (a
/// file of 100 000 wrong keys must not cost 100 000 rendered reports).
pub const MAX_DIAGNOSTICS: usize = 1_000;

/// Collects diagnostics while a file is decoded.
#[derive(Default)]
pub struct Reader {
    pub diagnostics: Vec<Diagnostic>,
    /// Values already reported (a `${var}` that could not be substituted): later errors
    /// about the same text would only repeat the first one. Start → end of each (scalar
    /// spans do not overlap), so a lookup is a logarithmic search.
    poisoned: std::collections::BTreeMap<usize, usize>,
}

/// The fields of one mapping, with its path, after unknown keys were reported.
pub struct Fields<'n> {
    pub path: String,
    pub span: Span,
    entries: &'n [(Node, Node)],
}

impl<'n> Fields<'n> {
    /// The value of `key` and its path; `None` when absent or null.
    pub fn get(&self, key: &str) -> Option<(&'n Node, String)> {
        self.entries
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .filter(|(_, v)| !v.is_null())
            .map(|(_, v)| (v, join(&self.path, key)))
    }

    /// The span of `key` itself, for "this key ..." diagnostics.
    pub fn key_span(&self, key: &str) -> Option<Span> {
        self.entries
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(k, _)| k.span)
    }

    pub fn entries(&self) -> &'n [(Node, Node)] {
        self.entries
    }
}

impl Reader {
    pub fn error(
        &mut self,
        path: &str,
        span: Span,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        if self.diagnostics.len() > MAX_DIAGNOSTICS {
            return;
        }
        if self
            .poisoned
            .range(..=span.start)
            .next_back()
            .is_some_and(|(start, end)| span.start < (*end).max(start + 1))
        {
            return;
        }
        if self.diagnostics.len() == MAX_DIAGNOSTICS {
            self.diagnostics.push(Diagnostic::new(
                path,
                span,
                format!("too many problems: stopped reporting after {MAX_DIAGNOSTICS}"),
                Some("fix these and run `bow validate` again".to_string()),
            ));
            return;
        }
        self.diagnostics
            .push(Diagnostic::new(path, span, message, hint));
    }

    /// True once reporting stopped (`MAX_DIAGNOSTICS`): callers may skip costly hints.
    pub fn is_full(&self) -> bool {
        self.diagnostics.len() > MAX_DIAGNOSTICS
    }

    /// Suppresses further diagnostics that start inside `span`.
    pub fn poison(&mut self, span: Span) {
        let end = self.poisoned.entry(span.start).or_insert(span.end);
        *end = (*end).max(span.end);
    }

    /// A mapping whose keys must all be in `allowed`.
    pub fn fields<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        what: &str,
        allowed: &[&str],
    ) -> Option<Fields<'n>> {
        let NodeKind::Map(entries) = &node.kind else {
            self.error(
                path,
                node.span,
                format!("expected {what}, found {}", node.describe()),
                None,
            );
            return None;
        };
        for (key, _) in entries {
            let name = key.scalar().unwrap_or_default();
            if !allowed.contains(&name) && !self.is_full() {
                let hint = match did_you_mean(name, allowed.iter().copied()) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!("known keys here: {}", allowed.join(", ")),
                };
                self.error(
                    &join(path, name),
                    key.span,
                    format!("unknown key `{name}`"),
                    Some(hint),
                );
            }
        }
        Some(Fields {
            path: path.to_string(),
            span: node.blame(),
            entries,
        })
    }

    /// A mapping with free-form keys (env, vars, services).
    pub fn map<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        what: &str,
    ) -> Option<&'n [(Node, Node)]> {
        match &node.kind {
            NodeKind::Map(entries) => Some(entries),
            _ if node.is_null() => Some(&[]),
            _ => {
                self.error(
                    path,
                    node.span,
                    format!("expected {what}, found {}", node.describe()),
                    None,
                );
                None
            }
        }
    }

    pub fn list<'n>(&mut self, node: &'n Node, path: &str, what: &str) -> Option<&'n [Node]> {
        match &node.kind {
            NodeKind::Seq(items) => Some(items),
            _ => {
                self.error(
                    path,
                    node.span,
                    format!("expected a list of {what}, found {}", node.describe()),
                    Some("write it as [a, b] or as lines starting with `- `".to_string()),
                );
                None
            }
        }
    }

    /// A scalar as text; numbers and booleans are accepted as their text.
    pub fn string(&mut self, node: &Node, path: &str, what: &str) -> Option<String> {
        match node.scalar() {
            Some(text) if !node.is_null() => Some(text.to_string()),
            _ => {
                self.error(
                    path,
                    node.span,
                    format!("expected {what}, found {}", node.describe()),
                    None,
                );
                None
            }
        }
    }

    /// A non-empty string.
    pub fn nonempty(&mut self, node: &Node, path: &str, what: &str) -> Option<String> {
        let text = self.string(node, path, what)?;
        if text.trim().is_empty() {
            self.error(
                path,
                node.span,
                format!("expected {what}, found an empty string"),
                None,
            );
            return None;
        }
        Some(text)
    }

    /// A whole number in `min..=max`.
    pub fn integer(
        &mut self,
        node: &Node,
        path: &str,
        what: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let parsed = match &node.kind {
            NodeKind::Plain(text) => text.parse::<i64>().ok(),
            _ => None,
        };
        match parsed {
            Some(value) if (min..=max).contains(&value) => Some(value),
            Some(value) => {
                let message = if value < 0 && min >= 0 {
                    format!("expected {what}, found a negative number ({value})")
                } else {
                    format!("expected {what} between {min} and {max}, found {value}")
                };
                self.error(
                    path,
                    node.span,
                    message,
                    Some(format!("write a whole number from {min} to {max}")),
                );
                None
            }
            None => {
                let hint = format!("write a whole number from {min} to {max}, without quotes");
                self.error(
                    path,
                    node.span,
                    format!("expected {what}, found {}", node.describe()),
                    Some(hint),
                );
                None
            }
        }
    }

    pub fn port(&mut self, node: &Node, path: &str) -> Option<u16> {
        let value = self.integer(node, path, "a port number", 1, 65535)?;
        u16::try_from(value).ok()
    }

    pub fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.kind {
            NodeKind::Plain(text) if matches!(text.as_str(), "true" | "True" | "TRUE") => {
                Some(true)
            }
            NodeKind::Plain(text) if matches!(text.as_str(), "false" | "False" | "FALSE") => {
                Some(false)
            }
            _ => {
                self.error(
                    path,
                    node.span,
                    format!("expected true or false, found {}", node.describe()),
                    None,
                );
                None
            }
        }
    }

    pub fn float(&mut self, node: &Node, path: &str, what: &str) -> Option<f64> {
        match &node.kind {
            NodeKind::Plain(text) => match text.parse::<f64>() {
                Ok(value) if value.is_finite() => Some(value),
                _ => {
                    self.error(
                        path,
                        node.span,
                        format!("expected {what}, found {}", node.describe()),
                        None,
                    );
                    None
                }
            },
            _ => {
                self.error(
                    path,
                    node.span,
                    format!("expected {what}, found {}", node.describe()),
                    None,
                );
                None
            }
        }
    }

    pub fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let Some(text) = node.scalar() else {
            self.error(
                path,
                node.span,
                format!(
                    "expected a duration like 2s or 500ms, found {}",
                    node.describe()
                ),
                None,
            );
            return None;
        };
        match text.parse::<Duration>() {
            Ok(duration) => Some(duration),
            Err(message) => {
                self.error(
                    path,
                    node.span,
                    message,
                    Some("durations are written like 500ms, 2s, 1m or 1m30s".to_string()),
                );
                None
            }
        }
    }

    pub fn size(&mut self, node: &Node, path: &str) -> Option<Size> {
        let Some(text) = node.scalar() else {
            self.error(
                path,
                node.span,
                format!("expected a size like 256M, found {}", node.describe()),
                None,
            );
            return None;
        };
        match text.parse::<Size>() {
            Ok(size) => Some(size),
            Err(message) => {
                self.error(
                    path,
                    node.span,
                    message,
                    Some("sizes are written like 512K, 256M or 1G".to_string()),
                );
                None
            }
        }
    }

    /// A name made of `[a-z0-9-]`, starting with a letter or digit, at most 63 characters.
    pub fn name(&mut self, text: &str, span: Span, path: &str, what: &str) -> bool {
        if is_name(text) {
            return true;
        }
        let suggestion = suggest_name(text);
        let hint = if suggestion.is_empty() {
            "use lowercase letters, digits and `-`".to_string()
        } else {
            format!("use lowercase letters, digits and `-`, like `{suggestion}`")
        };
        self.error(
            path,
            span,
            format!("{text:?} is not a valid {what}: expected [a-z0-9-], at most 63 characters, not starting or ending with `-`"),
            Some(hint),
        );
        false
    }
}

/// `[a-z0-9-]`, 1..=63 characters, no leading or trailing `-` (a DNS label, a unix user suffix).
pub fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// `text` turned into something that passes [`is_name`], for hints.
pub fn suggest_name(text: &str) -> String {
    let lowered: String = text
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    lowered.trim_matches('-').chars().take(63).collect()
}
