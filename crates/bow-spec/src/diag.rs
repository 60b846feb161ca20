//! Diagnostics: what is wrong, where (byte span, line, column), at which path, and a hint.
//!
//! The spec crate only produces them; the binary renders them with the source line.

use std::fmt;

/// A place in the source text: byte offsets for rendering, 1-based line and column for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub line: usize,
    pub col: usize,
}

impl Span {
    /// From the start of `self` to the end of `other`.
    pub fn to(&self, other: &Span) -> Span {
        Span {
            start: self.start,
            end: other.end.max(self.start),
            line: self.line,
            col: self.col,
        }
    }

    /// A span of `len` bytes starting `offset` bytes into `self` on the same line.
    pub fn sub(&self, offset: usize, len: usize) -> Span {
        Span {
            start: self.start + offset,
            end: self.start + offset + len,
            line: self.line,
            col: self.col + offset,
        }
    }
}

/// One problem with the stack file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    /// The config path of the offending value, like `services.back.health.interval`; empty
    /// for YAML syntax errors.
    pub path: String,
    pub span: Span,
    /// What was expected and what was found, lowercase, no trailing period.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(
        path: impl Into<String>,
        span: Span,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        Diagnostic {
            path: path.into(),
            span,
            message: message.into(),
            hint,
        }
    }

    /// The one-line form `file:line:col: path: message (hint: ...)`, used in plain output and
    /// snapshot tests.
    pub fn one_line(&self, file: &str) -> String {
        let mut line = format!("{file}:{}:{}: ", self.span.line, self.span.col);
        if !self.path.is_empty() {
            line.push_str(&self.path);
            line.push_str(": ");
        }
        line.push_str(&self.message);
        if let Some(hint) = &self.hint {
            line.push_str(" (hint: ");
            line.push_str(hint);
            line.push(')');
        }
        line
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Sorts diagnostics by position and drops exact duplicates (the same mistake seen while
/// resolving several environments).
pub fn normalize(diagnostics: &mut Vec<Diagnostic>) {
    diagnostics.sort_by(|a, b| {
        (a.span.start, &a.path, &a.message).cmp(&(b.span.start, &b.path, &b.message))
    });
    diagnostics.dedup_by(|a, b| a.span == b.span && a.message == b.message && a.path == b.path);
}

/// The closest of `candidates` to `word`, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let edits_allowed = (word.chars().count() / 4).max(1);
    candidates
        .into_iter()
        .map(|candidate| {
            (
                strsim::jaro_winkler(word, candidate),
                strsim::osa_distance(word, candidate),
                candidate,
            )
        })
        .filter(|(score, edits, _)| *score >= 0.8 || *edits <= edits_allowed)
        .max_by(|a, b| a.1.cmp(&b.1).reverse().then(a.0.total_cmp(&b.0)))
        .map(|(_, _, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words_only() {
        let keys = ["replicas", "routes", "health"];
        assert_eq!(did_you_mean("replica", keys), Some("replicas"));
        assert_eq!(did_you_mean("helth", keys), Some("health"));
        assert_eq!(did_you_mean("zzz", keys), None);
        assert_eq!(did_you_mean("wbe", ["web", "db"]), Some("web"));
    }
}
