//! `bow import docker-compose.yml`: a Compose file (v2/v3 and the Compose Specification,
//! Swarm `deploy:` sections included) as a bow.yaml. Everything bow has an equivalent for is
//! translated; everything else is listed as a note with the line it came from, never dropped
//! silently. `${VAR}` and `${VAR:-default}` are read from the environment as Compose does.

use std::collections::BTreeMap;
use std::path::Path;

use bow_spec::diag::Span;
use bow_spec::yaml::Node;

use super::emit::{Block, quote};
use super::values::bow_name;

/// One thing of the Compose file bow did not take over as it was, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub line: usize,
    pub col: usize,
    pub text: String,
}

/// The bow.yaml text and the notes.
#[derive(Debug, Clone)]
pub struct Imported {
    pub yaml: String,
    pub notes: Vec<Note>,
}

pub(super) struct Importer<'a> {
    pub(super) notes: Vec<Note>,
    /// The Compose file's directory: env_file and relative paths are read from it.
    pub(super) base: &'a Path,
    /// Top-level `secrets:` with `file:`, by name.
    pub(super) secret_files: BTreeMap<String, String>,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
}

/// Translates `text` (a Compose file in `base`); `default_project` names the project when the
/// file has no `name:`.
pub fn import(
    text: &str,
    base: &Path,
    default_project: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Imported, String> {
    let root = bow_spec::yaml::parse(text)
        .map_err(|diagnostics| {
            diagnostics
                .iter()
                .map(|d| format!("{}:{}: {}", d.span.line, d.span.col, d.message))
                .collect::<Vec<_>>()
                .join("\n")
        })?
        .ok_or_else(|| "the file is empty".to_string())?;
    if root.entries().is_none() {
        return Err("expected a mapping with services".to_string());
    }
    let mut importer = Importer {
        notes: Vec::new(),
        base,
        secret_files: BTreeMap::new(),
        env,
    };
    let mut project = default_project.to_string();
    let mut services_node = None;
    for (key, value) in root.entries().unwrap_or_default() {
        match key.scalar().unwrap_or_default() {
            "services" => services_node = Some(value),
            "name" => {
                if let Some(name) = importer.text(value) {
                    project = bow_name(&name);
                }
            }
            "version" => importer.note(key.span, "version: not needed (bow reads every Compose version)"),
            "volumes" => importer.top_volumes(value),
            "secrets" => importer.top_secrets(value),
            other if other.starts_with("x-") => {
                importer.note(key.span, &format!("{other}: an extension block, used only through anchors"))
            }
            other => importer.note(
                key.span,
                &format!("{other}: not translated (bow has one network per environment and no configs; see docs/containers.md)"),
            ),
        }
    }
    let services_node = services_node.ok_or_else(|| "no services: in the file".to_string())?;
    let mut out = Block::default();
    out.line(0, &format!("project: {}", quote(&project)));
    out.line(0, "services:");
    let mut names = BTreeMap::new();
    for (key, _) in services_node.entries().unwrap_or_default() {
        let name = key.scalar().unwrap_or_default().to_string();
        names.insert(name.clone(), bow_name(&name));
    }
    for (key, service) in services_node.entries().unwrap_or_default() {
        let name = key.scalar().unwrap_or_default();
        let bow = &names[name];
        if bow != name {
            importer.note(
                key.span,
                &format!("service {name} is named {bow} in bow (lower-case letters, digits and -)"),
            );
        }
        out.line(1, &format!("{bow}:"));
        importer.service(name, service, &names, &mut out);
    }
    let mut notes = importer.notes;
    notes.sort_by_key(|note| (note.line, note.col));
    notes.dedup();
    Ok(Imported {
        yaml: out.text(),
        notes,
    })
}

impl Importer<'_> {
    pub(super) fn note(&mut self, span: Span, text: &str) {
        self.notes.push(Note {
            line: span.line,
            col: span.col,
            text: text.to_string(),
        });
    }

    /// A scalar's text with `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `$VAR` from the
    /// environment (`$$` is a `$`).
    pub(super) fn text(&mut self, node: &Node) -> Option<String> {
        let raw = node.scalar()?;
        let mut out = String::new();
        let mut rest = raw;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(inner) = after.strip_prefix('{') {
                let Some(end) = inner.find('}') else {
                    out.push_str(&rest[at..]);
                    rest = "";
                    break;
                };
                let expression = &inner[..end];
                let (name, default) = match expression
                    .split_once(":-")
                    .or_else(|| expression.split_once('-'))
                {
                    Some((name, default)) => (name, Some(default)),
                    None => (
                        expression.split_once(":?").map_or(expression, |(n, _)| n),
                        None,
                    ),
                };
                match ((self.env)(name).filter(|v| !v.is_empty()), default) {
                    (Some(value), _) => out.push_str(&value),
                    (None, Some(default)) => out.push_str(default),
                    (None, None) => {
                        self.note(
                            node.span,
                            &format!("${{{name}}} is not set in the environment: left empty"),
                        );
                    }
                }
                rest = &inner[end + 1..];
            } else {
                let length = after
                    .bytes()
                    .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                    .count();
                if length == 0 {
                    out.push('$');
                    rest = after;
                    continue;
                }
                let name = &after[..length];
                match (self.env)(name) {
                    Some(value) => out.push_str(&value),
                    None => self.note(
                        node.span,
                        &format!("${name} is not set in the environment: left empty"),
                    ),
                }
                rest = &after[length..];
            }
        }
        out.push_str(rest);
        Some(out)
    }

    fn top_volumes(&mut self, node: &Node) {
        for (key, value) in node.entries().unwrap_or_default() {
            let options: Vec<&str> = value
                .entries()
                .unwrap_or_default()
                .iter()
                .filter_map(|(k, _)| k.scalar())
                .collect();
            if !options.is_empty() {
                self.note(
                    key.span,
                    &format!(
                        "volume {}: {} not translated (bow's volumes are local volumes of the engine)",
                        key.scalar().unwrap_or_default(),
                        options.join(", ")
                    ),
                );
            }
        }
    }

    fn top_secrets(&mut self, node: &Node) {
        for (key, value) in node.entries().unwrap_or_default() {
            let name = key.scalar().unwrap_or_default().to_string();
            if let Some(file) = value.get("file").and_then(|f| f.scalar()) {
                self.secret_files.insert(name.clone(), file.to_string());
                self.note(
                    key.span,
                    &format!("secret {name}: bow keeps values encrypted, not in files: `bow secret set {name} --from-file {file}`"),
                );
            } else {
                self.note(
                    key.span,
                    &format!("secret {name}: set its value with `bow secret set {name}`"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_come_from_the_environment_with_defaults() {
        let env = |name: &str| (name == "TAG").then(|| "1.4".to_string());
        let imported = import(
            "services:\n  web:\n    image: shop:${TAG}\n    environment:\n      MODE: ${MODE:-prod}\n      COST: $$5\n",
            Path::new("/"),
            "shop",
            &env,
        )
        .unwrap();
        assert!(
            imported.yaml.contains("image: \"shop:1.4\""),
            "{}",
            imported.yaml
        );
        assert!(
            imported.yaml.contains("MODE: \"prod\""),
            "{}",
            imported.yaml
        );
        assert!(imported.yaml.contains("COST: \"$5\""), "{}", imported.yaml);
    }
}
