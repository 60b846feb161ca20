//! The operations parts of the typed stack: the admin listener, alerts and their rules, and
//! where the edge's spans are exported (`schema.rs` re-exports them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::units::Duration;

/// `alerts: { webhook, no_healthy_for, error_ratio, p99_over, certificate_expiry, rules }`:
/// the receiver of the rules' notifications (Alertmanager's webhook format, version 4), the
/// built-in rules' thresholds, and rules of the operator's own on the agent's series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    /// `http://` or `https://` URL.
    pub webhook: String,
    /// `ServiceDown`: how long a service may have no healthy instance.
    pub no_healthy_for: Duration,
    /// `HighErrorRate`: the share of a service's answers at the edge that are 5xx, over five
    /// minutes, above which it alerts.
    #[serde(default = "default_error_ratio")]
    pub error_ratio: f64,
    /// `HighLatency`: a service's p99 at the edge over five minutes above this alerts; off
    /// when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_over: Option<Duration>,
    /// `CertificateExpiring`: a certificate the edge serves that ends within this.
    #[serde(default = "default_certificate_expiry")]
    pub certificate_expiry: Duration,
    /// The operator's own rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AlertRule>,
}

fn default_error_ratio() -> f64 {
    0.05
}

fn default_certificate_expiry() -> Duration {
    Duration(std::time::Duration::from_secs(14 * 86_400))
}

/// `edge.otlp: { endpoint, sample }`: where the edge's spans go (`<endpoint>/v1/traces`,
/// OTLP/HTTP with JSON) and the share of sampled traces exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    /// `http://` or `https://` URL of the collector's OTLP/HTTP receiver (port 4318).
    pub endpoint: String,
    /// 0 < sample <= 1: traces exported, by trace id (the same traces in every service).
    pub sample: f64,
}

/// One rule of the operator's own: fires when a series of the agent's `/metrics` whose
/// labels include `labels` is above (or below) a threshold for `for`. Each matching series is
/// one alert (labelled with its service, when it has one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// The alert's name (`alertname`): letters, digits and `_`.
    pub name: String,
    /// A series name of the agent's `/metrics` (`bow_…`).
    pub metric: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    #[serde(rename = "for")]
    pub wait: Duration,
    /// `critical`, `warning` or `info`.
    pub severity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// `admin: { listen, token_secret }`: where the agent serves `/metrics`, and the bow secret
/// holding the bearer token every request must carry (required off loopback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `ip:port`; `127.0.0.1:9100` when the file names none.
    pub listen: core::net::SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<String>,
}
