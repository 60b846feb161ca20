//! `alerts:`: the webhook the built-in alert rules post to (Alertmanager's format) and the
//! rules' one setting, how long a service may have no healthy instance.

use crate::reader::{Reader, join};
use crate::schema::Alerts;
use crate::yaml::Node;

use super::{ALERTS_KEYS, defaults};

pub(super) fn alerts(node: &Node, path: &str, reader: &mut Reader) -> Option<Alerts> {
    let fields = reader.fields(
        node,
        path,
        "a mapping with webhook and no_healthy_for",
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
    Some(Alerts {
        webhook,
        no_healthy_for,
    })
}
