//! Writing YAML by hand for import and export: indented lines, and every string as a JSON
//! string (a valid YAML double-quoted scalar), so nothing is ever read back as another type.

/// Lines with their indentation level (two spaces each).
#[derive(Debug, Default, Clone)]
pub struct Block {
    lines: Vec<(usize, String)>,
}

impl Block {
    pub fn line(&mut self, level: usize, text: &str) {
        self.lines.push((level, text.to_string()));
    }

    pub fn append(&mut self, other: Block) {
        self.lines.extend(other.lines);
    }

    pub fn lines(&self) -> Vec<(usize, String)> {
        self.lines.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for (level, text) in &self.lines {
            out.push_str(&"  ".repeat(*level));
            out.push_str(text);
            out.push('\n');
        }
        out
    }
}

/// `text` as a double-quoted scalar; `${` is written `$${` (bow would read it as a reference).
pub fn quote(text: &str) -> String {
    serde_json::to_string(&text.replace("${", "$${")).unwrap_or_else(|_| "\"\"".to_string())
}
