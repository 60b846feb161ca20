//! Compose values in bow's terms: names, durations, memory sizes, Traefik rules, YAML merges.

use bow_spec::yaml::{Node, NodeKind};

/// A bow name (project, service, volume) for a Compose one: lower case, `_` and `.` as `-`.
pub(super) fn bow_name(name: &str) -> String {
    let mapped: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() {
        "app".to_string()
    } else {
        trimmed.to_string()
    }
}

/// `Host(`a.com`) && PathPrefix(`/api`)` or `Host(`a`) || Host(`b`)` → `a.com/api`, `a`, `b`.
pub(super) fn traefik_routes(rule: &str) -> Vec<String> {
    let mut routes = Vec::new();
    for alternative in rule.split("||") {
        let hosts = backticked(alternative, "Host(");
        let paths = backticked(alternative, "PathPrefix(");
        for host in &hosts {
            if paths.is_empty() {
                routes.push(host.clone());
            }
            for path in &paths {
                routes.push(format!("{host}{path}"));
            }
        }
    }
    routes
}

pub(super) fn backticked(text: &str, function: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(function) {
        let inside = &rest[at + function.len()..];
        let end = inside.find(')').unwrap_or(inside.len());
        for value in inside[..end].split(',') {
            let value = value
                .trim()
                .trim_matches(|c| c == '`' || c == '"' || c == '\'');
            if !value.is_empty() {
                found.push(value.to_string());
            }
        }
        rest = &inside[end..];
    }
    found
}

/// A Compose duration (`1m30s`, `500ms`, `10s`) in bow's units.
pub(super) fn duration(text: &str) -> Option<String> {
    let mut total_ms: u64 = 0;
    let mut number = String::new();
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(next) = chars.peek().filter(|n| n.is_ascii_alphabetic()) {
            unit.push(*next);
            chars.next();
        }
        let value: f64 = number.parse().ok()?;
        number.clear();
        let factor = match unit.as_str() {
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "us" | "µs" => 0.001,
            _ => return None,
        };
        total_ms += (value * factor).round() as u64;
    }
    if !number.is_empty() {
        total_ms += (number.parse::<f64>().ok()? * 1000.0) as u64;
    }
    Some(if total_ms.is_multiple_of(1000) {
        format!("{}s", total_ms / 1000)
    } else {
        format!("{total_ms}ms")
    })
}

/// Compose memory (`512m`, `1g`, `256M`, bytes) as bow's (`512M`).
pub(super) fn memory_size(text: &str) -> String {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    match unit.to_ascii_lowercase().trim_end_matches('b') {
        "" => number.parse::<u64>().map_or(text.to_string(), |bytes| {
            format!("{}M", bytes.div_ceil(1 << 20))
        }),
        "k" => format!("{number}K"),
        "m" => format!("{number}M"),
        "g" => format!("{number}G"),
        _ => text.to_string(),
    }
}

/// A word as a shell reads it back.
pub(super) fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// A mapping's entries with `<<: *anchor` merges applied (later keys win, as in YAML).
pub(super) fn merged_entries(node: &Node) -> Vec<(Node, Node)> {
    let mut out: Vec<(Node, Node)> = Vec::new();
    for (key, value) in node.entries().unwrap_or_default() {
        if key.scalar() == Some("<<") {
            let sources: Vec<&Node> = match &value.kind {
                NodeKind::Seq(items) => items.iter().collect(),
                _ => vec![value],
            };
            for source in sources {
                for (k, v) in merged_entries(source) {
                    if !out
                        .iter()
                        .any(|(existing, _)| existing.scalar() == k.scalar())
                    {
                        out.push((k, v));
                    }
                }
            }
        } else {
            out.retain(|(existing, _)| existing.scalar() != key.scalar());
            out.push((key.clone(), value.clone()));
        }
    }
    out
}

pub(super) trait Items {
    fn kind_items(&self) -> &[Node];
}

impl Items for Node {
    fn kind_items(&self) -> &[Node] {
        match &self.kind {
            NodeKind::Seq(items) => items,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_memory_and_routes_translate() {
        assert_eq!(duration("1m30s").as_deref(), Some("90s"));
        assert_eq!(duration("500ms").as_deref(), Some("500ms"));
        assert_eq!(duration("10s").as_deref(), Some("10s"));
        assert_eq!(memory_size("512m"), "512M");
        assert_eq!(memory_size("1g"), "1G");
        assert_eq!(
            traefik_routes(
                "Host(`shop.example.com`) && PathPrefix(`/api`) || Host(`www.example.com`)"
            ),
            ["shop.example.com/api", "www.example.com"]
        );
        assert_eq!(bow_name("my_app.web"), "my-app-web");
    }
}
