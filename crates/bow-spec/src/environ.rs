//! Environments: deep-merge one environment's overlay over the base file.
//!
//! Mappings merge key by key, anything else (scalars, lists) replaces, and a `null` value
//! (`key: ~`) removes the key. An overlay may change services; it may not invent new ones.

use crate::diag::{Span, did_you_mean};
use crate::reader::{Reader, join};
use crate::yaml::{Node, NodeKind};

/// The environment used when neither `-e` nor `BOW_ENV` is given; always exists.
pub const DEFAULT_ENVIRONMENT: &str = "development";

/// The keys an environment overlay may hold.
pub const OVERLAY_KEYS: &[&str] = &[
    "vars", "edge", "services", "chaos", "admin", "alerts", "hosts",
];

/// The environments the file declares (plus `development`), each with the span of its key.
pub fn declared(root: &Node, reader: &mut Reader) -> Vec<(String, Span)> {
    let mut names = Vec::new();
    if let Some(environments) = root.get("environments")
        && let Some(entries) = reader.map(
            environments,
            "environments",
            "a mapping of environment names to overrides",
        )
    {
        for (key, value) in entries {
            let name = key.scalar().unwrap_or_default().to_string();
            let path = join("environments", &name);
            reader.name(&name, key.span, &path, "environment name");
            reader.fields(
                value,
                &path,
                "a mapping with vars, edge, services, chaos, admin, alerts or hosts",
                OVERLAY_KEYS,
            );
            names.push((name, key.span));
        }
    }
    if !names.iter().any(|(name, _)| name == DEFAULT_ENVIRONMENT) {
        names.insert(0, (DEFAULT_ENVIRONMENT.to_string(), root.span));
    }
    names
}

/// The root with `environment`'s overlay merged in and `environments` removed.
/// `None` when the environment is not declared (a diagnostic says which ones are).
pub fn resolve(root: &Node, environment: &str, reader: &mut Reader) -> Option<Node> {
    let mut merged = root.clone();
    let NodeKind::Map(entries) = &mut merged.kind else {
        return Some(merged);
    };
    let overlays = entries
        .iter()
        .position(|(key, _)| key.scalar() == Some("environments"))
        .map(|position| entries.remove(position).1);
    let overlay = overlays
        .as_ref()
        .and_then(|environments| environments.get(environment).cloned());
    let Some(overlay) = overlay else {
        if environment == DEFAULT_ENVIRONMENT {
            return Some(merged);
        }
        let names: Vec<String> = match &overlays {
            Some(environments) => environments
                .entries()
                .unwrap_or_default()
                .iter()
                .filter_map(|(k, _)| k.scalar().map(str::to_string))
                .collect(),
            None => Vec::new(),
        };
        let hint = match did_you_mean(environment, names.iter().map(String::as_str)) {
            Some(close) => format!("did you mean `{close}`?"),
            None if names.is_empty() => "declare it under `environments:`".to_string(),
            None => format!("declared environments: {}", names.join(", ")),
        };
        let span = overlays.as_ref().map_or(root.span, |n| n.span);
        reader.error(
            "environments",
            span,
            format!("unknown environment `{environment}`"),
            Some(hint),
        );
        return None;
    };
    if overlay.is_null() {
        return Some(merged);
    }
    let overlay_path = join("environments", environment);
    let overlay = check_overlay_services(&merged, overlay, &overlay_path, reader);
    for key in OVERLAY_KEYS {
        if let Some(value) = overlay.get(key) {
            merge_entry(&mut merged, key, value);
        }
    }
    Some(merged)
}

/// Reports overlay services the base does not define and returns the overlay without them.
fn check_overlay_services(
    base: &Node,
    mut overlay: Node,
    overlay_path: &str,
    reader: &mut Reader,
) -> Node {
    let Some(services) = overlay.get("services").and_then(Node::entries) else {
        return overlay;
    };
    let base_names: Vec<&str> = base
        .get("services")
        .and_then(Node::entries)
        .unwrap_or_default()
        .iter()
        .filter_map(|(k, _)| k.scalar())
        .collect();
    for (key, _) in services {
        let name = key.scalar().unwrap_or_default();
        if !base_names.contains(&name) {
            let hint = match did_you_mean(name, base_names.iter().copied()) {
                Some(close) => format!(
                    "did you mean `{close}`? an environment can change services, not add them"
                ),
                None if base_names.is_empty() => {
                    "define the service under the top-level `services:` first".to_string()
                }
                None => format!(
                    "services in this file: {}; an environment can change services, not add them",
                    base_names.join(", ")
                ),
            };
            reader.error(
                &join(&join(overlay_path, "services"), name),
                key.span,
                format!("overrides service `{name}`, which is not defined in services"),
                Some(hint),
            );
        }
    }
    let known: Vec<String> = base_names.iter().map(|n| n.to_string()).collect();
    if let NodeKind::Map(entries) = &mut overlay.kind {
        for (key, value) in entries.iter_mut() {
            if key.scalar() == Some("services")
                && let NodeKind::Map(services) = &mut value.kind
            {
                services.retain(|(k, _)| known.iter().any(|n| Some(n.as_str()) == k.scalar()));
            }
        }
    }
    overlay
}

/// Merges `value` under `key` of the mapping `base` (null removes the key).
fn merge_entry(base: &mut Node, key: &str, value: &Node) {
    let NodeKind::Map(entries) = &mut base.kind else {
        return;
    };
    let existing = entries.iter().position(|(k, _)| k.scalar() == Some(key));
    match existing {
        Some(position) if value.is_null() => {
            entries.remove(position);
        }
        Some(position) => merge(&mut entries[position].1, value),
        None if value.is_null() => {}
        None => {
            let key_node = Node::new(NodeKind::Plain(key.to_string()), value.blame());
            entries.push((key_node, value.clone()));
        }
    }
}

/// Deep-merges `over` into `base`.
pub fn merge(base: &mut Node, over: &Node) {
    match (&base.kind, &over.kind) {
        (NodeKind::Map(_), NodeKind::Map(over_entries)) => {
            for (key, value) in over_entries {
                if let Some(name) = key.scalar() {
                    merge_entry(base, name, value);
                }
            }
        }
        _ => *base = over.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse;

    #[test]
    fn overlay_merges_deeply_and_null_removes() {
        let root = parse(
            "services:\n  a: {command: x, replicas: 1, env: {A: '1', B: '2'}}\nenvironments:\n  prod:\n    services:\n      a: {replicas: 3, env: {B: ~, C: '3'}}\n",
        )
        .unwrap()
        .unwrap();
        let mut reader = Reader::default();
        let merged = resolve(&root, "prod", &mut reader).unwrap();
        assert!(reader.diagnostics.is_empty());
        let a = merged.get("services").unwrap().get("a").unwrap();
        assert_eq!(a.get("replicas").unwrap().scalar(), Some("3"));
        assert_eq!(a.get("command").unwrap().scalar(), Some("x"));
        let env = a.get("env").unwrap();
        assert_eq!(env.get("A").unwrap().scalar(), Some("1"));
        assert!(env.get("B").is_none());
        assert_eq!(env.get("C").unwrap().scalar(), Some("3"));
        assert!(merged.get("environments").is_none());
    }
}
