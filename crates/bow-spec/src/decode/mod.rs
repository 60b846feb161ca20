//! The resolved node tree to a typed [`Spec`], with defaults, reporting every field error.
//!
//! Cross-service rules (cycles, duplicate routes and ports) live in `check`. One file per
//! part: the root and shared helpers here, `edge.rs`, `service.rs` (a service and its
//! workload), `parts.rs` (health, postgres, backup), `sandbox.rs`, `values.rs` (routes, volumes, names).

mod admin;
mod alerts;
mod edge;
mod hosts;
mod parts;
mod proxy;
mod registries;
mod route;
mod sandbox;
mod service;
mod values;

pub(crate) use hosts::check as check_placement;
pub use proxy::check_url as check_proxy_url;
pub use values::{SYSTEM_DIRS, is_secret_name, parse_rate, parse_route, parse_volume, system_dir};

use edge::{default_edge, edge};
use service::service;

use std::collections::BTreeMap;

use crate::LoadOptions;
use crate::reader::{Fields, Reader, index, join};
use crate::schema::*;
use crate::units::{Duration, Size};
use crate::yaml::Node;

pub const TOP_KEYS: &[&str] = &[
    "project",
    "vars",
    "environments",
    "edge",
    "services",
    "chaos",
    "registries",
    "admin",
    "alerts",
    "hosts",
];
pub const HOSTS_KEYS: &[&str] = &["etcd", "members"];
pub const HOST_KEYS: &[&str] = &["address", "roles", "capacity"];
pub const CAPACITY_KEYS: &[&str] = &["cpu", "memory"];
pub const PLACEMENT_KEYS: &[&str] = &["roles", "spread", "singleton"];
pub const ADMIN_KEYS: &[&str] = &["listen", "token_secret"];
pub const ALERTS_KEYS: &[&str] = &[
    "webhook",
    "no_healthy_for",
    "error_ratio",
    "p99_over",
    "certificate_expiry",
    "rules",
];
pub const ALERT_RULE_KEYS: &[&str] = &[
    "name", "metric", "labels", "above", "below", "for", "severity", "summary",
];
pub const REGISTRY_KEYS: &[&str] = &["username", "password_secret"];
pub const OTLP_KEYS: &[&str] = &["endpoint", "sample"];
pub const EDGE_KEYS: &[&str] = &[
    "otlp",
    "http_port",
    "https_port",
    "tls",
    "acme",
    "hsts_max_age",
    "security_headers",
    "max_body_size",
    "max_header_size",
    "header_timeout",
    "body_timeout",
    "upstream_timeout",
    "idle_timeout",
    "max_connections",
];
pub const SERVICE_KEYS: &[&str] = &[
    "command",
    "image",
    "postgres",
    "dir",
    "env",
    "port",
    "replicas",
    "routes",
    "health",
    "depends_on",
    "secrets",
    "resources",
    "user",
    "allow_root",
    "python",
    "deploy",
    "volumes",
    "backup",
    "stop_timeout",
    "build",
    "sandbox",
    "entrypoint",
    "container_port",
    "working_dir",
    "tcp",
    "proxy",
    "placement",
];
pub const PROXY_KEYS: &[&str] = &["to", "inject_headers"];
/// The service keys a `proxy:` service may have besides `proxy` (no instance runs).
pub const PROXY_SERVICE_KEYS: &[&str] = &["proxy", "port"];
pub const TCP_KEYS: &[&str] = &["port", "sni"];
pub const ROUTE_KEYS: &[&str] = &["host", "path", "auth", "limits"];
pub const AUTH_KEYS: &[&str] = &["basic", "forward", "oidc"];
pub const OIDC_KEYS: &[&str] = &["issuer", "client_id", "client_secret_secret", "allowed"];
pub const BASIC_AUTH_KEYS: &[&str] = &["users_secret"];
pub const FORWARD_KEYS: &[&str] = &["service", "path", "headers"];
pub const LIMITS_KEYS: &[&str] = &["rate", "burst", "body", "allow", "deny"];
/// Service keys this version decodes but cannot run yet: validation refuses them
/// (`check::not_available`), each later issue lifts its own.
pub const NOT_AVAILABLE_KEYS: &[&str] = &[];
/// The keys only a container service may have.
pub const CONTAINER_ONLY_KEYS: &[&str] = &["entrypoint", "container_port", "working_dir"];
pub const HEALTH_KEYS: &[&str] = &[
    "http",
    "tcp",
    "exec",
    "interval",
    "timeout",
    "retries",
    "start_period",
];
pub const POSTGRES_KEYS: &[&str] = &[
    "version",
    "database",
    "user",
    "password_secret",
    "init",
    "settings",
    "replicas",
    "max_lag",
];
pub const BUILD_KEYS: &[&str] = &["context", "dockerfile", "args", "target"];
pub const DEPLOY_KEYS: &[&str] = &["strategy", "max_surge", "timeout", "drain_timeout"];
pub const BACKUP_KEYS: &[&str] = &[
    "schedule",
    "keep",
    "to",
    "kind",
    "pitr",
    "endpoint",
    "region",
    "access_key_secret",
    "secret_key_secret",
    "check",
    "verify",
];
pub const ACME_KEYS: &[&str] = &[
    "email",
    "directory",
    "directory_ca",
    "challenge",
    "renew_before",
];
pub const TLS_FILE_KEYS: &[&str] = &["cert", "key"];
pub const RESOURCES_KEYS: &[&str] = &["memory", "cpu"];
pub const PYTHON_KEYS: &[&str] = &["requirements", "version"];
pub const SANDBOX_KEYS: &[&str] = &["level", "writable", "caps", "syscalls"];
pub const SYSCALLS_KEYS: &[&str] = &["allow"];

/// Every key the decoder reads, from each section's list (the property test's vocabulary).
pub fn all_keys() -> std::collections::BTreeSet<&'static str> {
    [
        TOP_KEYS,
        crate::environ::OVERLAY_KEYS,
        EDGE_KEYS,
        OTLP_KEYS,
        ACME_KEYS,
        TLS_FILE_KEYS,
        SERVICE_KEYS,
        HEALTH_KEYS,
        POSTGRES_KEYS,
        BUILD_KEYS,
        TCP_KEYS,
        PROXY_KEYS,
        ROUTE_KEYS,
        AUTH_KEYS,
        BASIC_AUTH_KEYS,
        FORWARD_KEYS,
        OIDC_KEYS,
        LIMITS_KEYS,
        REGISTRY_KEYS,
        ADMIN_KEYS,
        ALERTS_KEYS,
        ALERT_RULE_KEYS,
        DEPLOY_KEYS,
        BACKUP_KEYS,
        RESOURCES_KEYS,
        PYTHON_KEYS,
        SANDBOX_KEYS,
        SYSCALLS_KEYS,
        HOSTS_KEYS,
        HOST_KEYS,
        CAPACITY_KEYS,
        PLACEMENT_KEYS,
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect()
}

/// Defaults that apply when a field is absent (documented in docs/stack-file.md).
pub mod defaults {
    /// The port a `proxy:` service is called at when it gives none (`http://geo-api`).
    pub const PROXY_DEFAULT_PORT: u16 = 80;
    use super::*;
    pub const REPLICAS: u32 = 1;
    pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
    pub const HEALTH_RETRIES: u32 = 3;
    pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const HSTS_MAX_AGE: Duration = Duration::from_secs(365 * 86_400);
    pub const MAX_BODY_SIZE: Size = Size(16 << 20);
    pub const MAX_HEADER_SIZE: Size = Size(32 << 10);
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
    pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const MAX_CONNECTIONS: u32 = 10_000;
    pub const BACKUP_KEEP: u32 = 7;
    pub const POSTGRES_VERSION: u32 = 15;
    /// The port other services reach a postgres service on when it names none.
    pub const POSTGRES_PORT: u16 = 5432;
    /// How far a read replica may lag and still serve `<service>-ro`.
    pub const POSTGRES_MAX_LAG: Duration = Duration::from_secs(10);
    /// At most this many read replicas per postgres service.
    pub const POSTGRES_MAX_REPLICAS: u32 = 8;
    /// Edge ports as root, and as an unprivileged user (who cannot bind below 1024).
    pub const PRIVILEGED_PORTS: (u16, u16) = (80, 443);
    pub const UNPRIVILEGED_PORTS: (u16, u16) = (8080, 8443);
    /// Where the admin listener serves when `admin:` names no `listen`.
    pub const ADMIN_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 9100);
    /// How long a service may have no healthy instance before it is an alert.
    pub const ALERT_NO_HEALTHY_FOR: Duration = Duration::from_secs(60);
}

/// Decodes the merged, interpolated root. `None` when required parts are unusable.
/// Always returns a spec so that cross-service rules can run; fields with errors hold
/// defaults and the caller rejects the spec when any diagnostic was recorded.
pub fn spec(
    root: &Node,
    vars: BTreeMap<String, String>,
    options: &LoadOptions,
    reader: &mut Reader,
) -> Option<Spec> {
    let top = reader.fields(root, "", "a mapping with project and services", TOP_KEYS)?;
    let project = match top.get("project") {
        Some((node, path)) => {
            let name = reader.string(node, &path, "a project name")?;
            reader
                .name(&name, node.span, &path, "project name")
                .then_some(name)
        }
        None => {
            reader.error(
                "project",
                root.span.sub(0, 0),
                "missing required key `project`",
                Some("add `project: my-app` at the top".to_string()),
            );
            None
        }
    };
    let edge = match top.get("edge") {
        Some((node, path)) => edge(node, &path, options, reader),
        None => default_edge(options),
    };
    let mut services = BTreeMap::new();
    match top.get("services") {
        Some((node, path)) => {
            for (key, value) in reader
                .map(node, &path, "a mapping of service names to services")
                .unwrap_or_default()
            {
                let name = key.scalar().unwrap_or_default();
                let service_path = join(&path, name);
                let valid_name = reader.name(name, key.span, &service_path, "service name");
                if let Some(service) = service(value, &service_path, options, reader)
                    && valid_name
                {
                    services.insert(name.to_string(), service);
                }
            }
        }
        None => reader.error(
            "services",
            root.span.sub(0, 0),
            "missing required key `services`",
            Some("add a `services:` mapping with at least one service".to_string()),
        ),
    }
    let chaos = match top.get("chaos") {
        Some((node, path)) => chaos(node, &path, reader).unwrap_or_default(),
        None => Chaos::default(),
    };
    let registries = match top.get("registries") {
        Some((node, path)) => registries::registries(node, &path, reader),
        None => BTreeMap::new(),
    };
    let admin = top
        .get("admin")
        .and_then(|(node, path)| admin::admin(node, &path, reader));
    let alerts = top
        .get("alerts")
        .and_then(|(node, path)| alerts::alerts(node, &path, reader));
    let hosts = top
        .get("hosts")
        .and_then(|(node, path)| hosts::hosts(node, &path, reader));
    Some(Spec {
        hosts,
        admin,
        alerts,
        chaos,
        registries,
        project: project.unwrap_or_default(),
        environment: options.environment.clone(),
        vars,
        edge,
        services,
    })
}

/// The `vars` mapping as strings (any scalar is accepted as its text).
pub fn vars(node: Option<&Node>, path: &str, reader: &mut Reader) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    let Some(node) = node else { return vars };
    for (key, value) in reader
        .map(node, path, "a mapping of variable names to values")
        .unwrap_or_default()
    {
        let name = key.scalar().unwrap_or_default();
        let var_path = join(path, name);
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            || name.is_empty()
        {
            reader.error(
                &var_path,
                key.span,
                format!(
                    "variable name {name:?} is not valid: expected letters, digits, `_` and `-`"
                ),
                None,
            );
            continue;
        }
        if let Some(text) = reader.string(value, &var_path, "a string value") {
            vars.insert(name.to_string(), text);
        }
    }
    vars
}

/// A duration that must be longer than zero (a timeout: zero would cut every request).
fn positive_duration(reader: &mut Reader, node: &Node, path: &str) -> Option<Duration> {
    let duration = reader.duration(node, path)?;
    if duration.as_std().is_zero() {
        reader.error(
            path,
            node.span,
            "expected a timeout longer than 0s, found 0s",
            Some("a timeout of zero would cut off every request; write e.g. 30s".to_string()),
        );
        return None;
    }
    Some(duration)
}

fn required(fields: &Fields<'_>, key: &str, what: &str, reader: &mut Reader) -> Option<String> {
    match fields.get(key) {
        Some((node, path)) => reader.nonempty(node, &path, what),
        None => {
            reader.error(
                &fields.path,
                fields.span,
                format!("missing required key `{key}` ({what})"),
                Some(format!("add `{key}: ...` here")),
            );
            None
        }
    }
}

fn names(node: &Node, path: &str, what: &str, reader: &mut Reader) -> Vec<String> {
    let mut out = Vec::new();
    for (position, item) in reader
        .list(node, path, what)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let item_path = index(path, position);
        if let Some(name) = reader.nonempty(item, &item_path, "a name") {
            if out.contains(&name) {
                reader.error(
                    &item_path,
                    item.span,
                    format!("`{name}` is listed twice"),
                    None,
                );
            } else {
                out.push(name);
            }
        }
    }
    out
}

/// `chaos: allow | deny`.
fn chaos(node: &Node, path: &str, reader: &mut Reader) -> Option<Chaos> {
    match node.scalar() {
        Some("allow") => Some(Chaos::Allow),
        Some("deny") => Some(Chaos::Deny),
        _ => {
            reader.error(
                path,
                node.span,
                format!("expected allow or deny, found {}", node.describe()),
                Some(
                    "`chaos: allow` lets `bow chaos` drills run in this environment (set it under `environments:` for one)"
                        .to_string(),
                ),
            );
            None
        }
    }
}
