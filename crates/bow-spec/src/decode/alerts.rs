//! `alerts:`: the webhook the alert rules post to (Alertmanager's format), the built-in
//! rules' thresholds, and the operator's own rules on the agent's series.

use std::collections::BTreeMap;

use crate::reader::{Reader, join};
use crate::schema::{AlertRule, Alerts};
use crate::units::Duration;
use crate::yaml::Node;

use super::{ALERT_RULE_KEYS, ALERTS_KEYS, defaults};

pub(super) fn alerts(node: &Node, path: &str, reader: &mut Reader) -> Option<Alerts> {
    let fields = reader.fields(
        node,
        path,
        "a mapping with webhook, no_healthy_for, error_ratio, p99_over, certificate_expiry and rules",
        ALERTS_KEYS,
    )?;
    let no_healthy_for = match fields.get("no_healthy_for") {
        Some((n, p)) => reader.duration(n, &p)?,
        None => defaults::ALERT_NO_HEALTHY_FOR,
    };
    let Some((n, p)) = fields.get("webhook") else {
        reader.error(
            &join(path, "webhook"),
            node.blame(),
            "missing `webhook`: the URL alerts are posted to",
            Some(
                "add webhook: https://hooks.example.com/bow (any receiver of Alertmanager's \
                 webhook JSON, or a Slack incoming webhook)"
                    .to_string(),
            ),
        );
        return None;
    };
    let webhook = reader.nonempty(n, &p, "an http:// or https:// URL")?;
    let rest = webhook
        .strip_prefix("https://")
        .or_else(|| webhook.strip_prefix("http://"));
    let host = rest.map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
    if host.is_none_or(|host| host.is_empty() || host.contains(char::is_whitespace)) {
        reader.error(
            &p,
            n.span,
            format!("expected an http:// or https:// URL with a host, found {webhook:?}"),
            Some("for example webhook: https://hooks.example.com/bow".to_string()),
        );
        return None;
    }
    let error_ratio = match fields.get("error_ratio") {
        Some((n, p)) => ratio(n, &p, reader)?,
        None => 0.05,
    };
    let p99_over = match fields.get("p99_over") {
        Some((n, p)) => Some(reader.duration(n, &p)?),
        None => None,
    };
    let certificate_expiry = match fields.get("certificate_expiry") {
        Some((n, p)) => reader.duration(n, &p)?,
        None => Duration(std::time::Duration::from_secs(14 * 86_400)),
    };
    let mut rules = Vec::new();
    if let Some((n, p)) = fields.get("rules") {
        let mut names = std::collections::BTreeSet::new();
        for (i, item) in reader.list(n, &p, "rules")?.iter().enumerate() {
            let at = format!("{p}[{i}]");
            let rule = rule(item, &at, reader)?;
            if !names.insert(rule.name.clone()) {
                reader.error(
                    &at,
                    item.blame(),
                    format!("a second rule named {}", rule.name),
                    Some("each rule needs its own name: it is the alert's name".to_string()),
                );
                return None;
            }
            rules.push(rule);
        }
    }
    Some(Alerts {
        webhook,
        no_healthy_for,
        error_ratio,
        p99_over,
        certificate_expiry,
        rules,
    })
}

/// `5%` or `0.05`: a share between 0 and 1.
fn ratio(node: &Node, path: &str, reader: &mut Reader) -> Option<f64> {
    let text = node.scalar().unwrap_or("").trim().to_string();
    let value = match text.strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().ok().map(|v| v / 100.0),
        None => text.parse::<f64>().ok(),
    };
    match value {
        Some(value) if value.is_finite() && value > 0.0 && value <= 1.0 => Some(value),
        _ => {
            reader.error(
                path,
                node.span,
                format!(
                    "expected a share like 5% or 0.05, found {}",
                    node.describe()
                ),
                Some("more than 0 and at most 100%".to_string()),
            );
            None
        }
    }
}

/// One rule of the operator's own.
fn rule(node: &Node, path: &str, reader: &mut Reader) -> Option<AlertRule> {
    let fields = reader.fields(
        node,
        path,
        "a rule: name, metric, labels, above or below, for, severity, summary",
        ALERT_RULE_KEYS,
    )?;
    let required = |reader: &mut Reader, key: &str, hint: &str| {
        let found = fields.get(key);
        if found.is_none() {
            reader.error(
                &join(path, key),
                node.blame(),
                format!("missing `{key}`"),
                Some(hint.to_string()),
            );
        }
        found
    };
    let (n, p) = required(reader, "name", "name: QueueTooDeep (the alert's name)")?;
    let name = reader.nonempty(n, &p, "an alert name")?;
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        reader.error(
            &p,
            n.span,
            format!("alert name {name:?} is not valid: expected letters, digits and `_`"),
            Some("for example name: WebMemoryHigh".to_string()),
        );
        return None;
    }
    let (n, p) = required(
        reader,
        "metric",
        "metric: bow_instance_memory_bytes (a series of the agent's /metrics; docs/metrics.md)",
    )?;
    let metric = reader.nonempty(n, &p, "a series name")?;
    if !metric.starts_with("bow_")
        || !metric
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
    {
        reader.error(
            &p,
            n.span,
            format!("{metric:?} is not one of the agent's series"),
            Some(
                "rules read the agent's own /metrics: a name starting with bow_                  (docs/metrics.md lists them)"
                    .to_string(),
            ),
        );
        return None;
    }
    let mut labels = BTreeMap::new();
    if let Some((n, p)) = fields.get("labels") {
        for (key, value) in reader.map(n, &p, "a mapping of label names to values")? {
            let Some(key_text) = reader.string(key, &p, "a label name") else {
                continue;
            };
            let at = join(&p, &key_text);
            let value = reader.string(value, &at, "a label value")?;
            labels.insert(key_text, value);
        }
    }
    let above = match fields.get("above") {
        Some((n, p)) => Some(reader.float(n, &p, "a number")?),
        None => None,
    };
    let below = match fields.get("below") {
        Some((n, p)) => Some(reader.float(n, &p, "a number")?),
        None => None,
    };
    if above.is_some() == below.is_some() {
        reader.error(
            path,
            node.blame(),
            "a rule needs exactly one of `above` and `below`",
            Some("for example above: 0.9 (fires while the series is greater)".to_string()),
        );
        return None;
    }
    let wait = match fields.get("for") {
        Some((n, p)) => reader.duration(n, &p)?,
        None => Duration(std::time::Duration::ZERO),
    };
    let severity = match fields.get("severity") {
        Some((n, p)) => {
            let text = reader.nonempty(n, &p, "critical, warning or info")?;
            if !matches!(text.as_str(), "critical" | "warning" | "info") {
                reader.error(
                    &p,
                    n.span,
                    format!("expected critical, warning or info, found {text:?}"),
                    None,
                );
                return None;
            }
            text
        }
        None => "warning".to_string(),
    };
    let summary = match fields.get("summary") {
        Some((n, p)) => Some(reader.nonempty(n, &p, "a sentence")?),
        None => None,
    };
    Some(AlertRule {
        name,
        metric,
        labels,
        above,
        below,
        wait,
        severity,
        summary,
    })
}
