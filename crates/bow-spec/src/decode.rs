//! The resolved node tree to a typed [`Spec`], with defaults, reporting every field error.
//!
//! Cross-service rules (cycles, duplicate routes and ports) live in `check`.

use std::collections::BTreeMap;

use crate::LoadOptions;
use crate::reader::{Fields, Reader, index, is_name, join};
use crate::schema::*;
use crate::units::{Duration, Size};
use crate::yaml::{Node, NodeKind};

pub const TOP_KEYS: &[&str] = &[
    "project",
    "vars",
    "environments",
    "edge",
    "services",
    "chaos",
];
pub const EDGE_KEYS: &[&str] = &[
    "http_port",
    "https_port",
    "tls",
    "acme",
    "hsts_max_age",
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
];
/// Service keys this version decodes but cannot run yet: validation refuses them
/// (`check::not_available`), each later issue lifts its own.
pub const NOT_AVAILABLE_KEYS: &[&str] = &["image", "build", "postgres", "volumes", "backup"];
pub const HEALTH_KEYS: &[&str] = &[
    "http",
    "tcp",
    "exec",
    "interval",
    "timeout",
    "retries",
    "start_period",
];
pub const POSTGRES_KEYS: &[&str] = &["version", "database", "user", "password_secret", "init"];
pub const DEPLOY_KEYS: &[&str] = &["strategy", "max_surge", "timeout", "drain_timeout"];
pub const BACKUP_KEYS: &[&str] = &["schedule", "keep", "to"];
pub const ACME_KEYS: &[&str] = &["email", "directory"];
pub const TLS_FILE_KEYS: &[&str] = &["cert", "key"];
pub const RESOURCES_KEYS: &[&str] = &["memory", "cpu"];
pub const PYTHON_KEYS: &[&str] = &["requirements", "version"];

/// Every key the decoder reads, from each section's list (the property test's vocabulary).
pub fn all_keys() -> std::collections::BTreeSet<&'static str> {
    [
        TOP_KEYS,
        crate::environ::OVERLAY_KEYS,
        EDGE_KEYS,
        ACME_KEYS,
        TLS_FILE_KEYS,
        SERVICE_KEYS,
        HEALTH_KEYS,
        POSTGRES_KEYS,
        DEPLOY_KEYS,
        BACKUP_KEYS,
        RESOURCES_KEYS,
        PYTHON_KEYS,
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect()
}

/// Defaults that apply when a field is absent (documented in docs/stack-file.md).
pub mod defaults {
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
    /// Edge ports as root, and as an unprivileged user (who cannot bind below 1024).
    pub const PRIVILEGED_PORTS: (u16, u16) = (80, 443);
    pub const UNPRIVILEGED_PORTS: (u16, u16) = (8080, 8443);
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
    Some(Spec {
        chaos,
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

fn default_edge(options: &LoadOptions) -> Edge {
    let (http_port, https_port) = if options.privileged {
        defaults::PRIVILEGED_PORTS
    } else {
        defaults::UNPRIVILEGED_PORTS
    };
    Edge {
        http_port,
        https_port,
        tls: Tls::SelfSigned,
        acme: None,
        hsts_max_age: defaults::HSTS_MAX_AGE,
        max_body_size: defaults::MAX_BODY_SIZE,
        max_header_size: defaults::MAX_HEADER_SIZE,
        header_timeout: defaults::HEADER_TIMEOUT,
        body_timeout: defaults::BODY_TIMEOUT,
        upstream_timeout: defaults::UPSTREAM_TIMEOUT,
        idle_timeout: defaults::IDLE_TIMEOUT,
        max_connections: defaults::MAX_CONNECTIONS,
    }
}

fn edge(node: &Node, path: &str, options: &LoadOptions, reader: &mut Reader) -> Edge {
    let mut edge = default_edge(options);
    let Some(fields) = reader.fields(node, path, "a mapping of edge settings", EDGE_KEYS) else {
        return edge;
    };
    if let Some((n, p)) = fields.get("http_port") {
        edge.http_port = reader.port(n, &p).unwrap_or(edge.http_port);
    }
    if let Some((n, p)) = fields.get("https_port") {
        edge.https_port = reader.port(n, &p).unwrap_or(edge.https_port);
    }
    if edge.http_port == edge.https_port {
        let span = fields
            .get("https_port")
            .or(fields.get("http_port"))
            .map_or(node.span, |(n, _)| n.span);
        reader.error(
            &join(path, "https_port"),
            span,
            format!("http_port and https_port are both {}", edge.https_port),
            Some("give the edge two different ports".to_string()),
        );
    }
    if let Some((n, p)) = fields.get("tls")
        && let Some(tls) = tls(n, &p, reader)
    {
        edge.tls = tls;
    }
    if let Some((n, p)) = fields.get("acme")
        && let Some(acme_fields) =
            reader.fields(n, &p, "a mapping with email and directory", ACME_KEYS)
    {
        let email = match acme_fields.get("email") {
            Some((n, p)) => reader.nonempty(n, &p, "an email address").filter(|email| {
                let ok = email.contains('@') && !email.contains(char::is_whitespace);
                if !ok {
                    reader.error(
                        &p,
                        n.span,
                        format!("expected an email address, found {email:?}"),
                        None,
                    );
                }
                ok
            }),
            None => {
                reader.error(
                    &p,
                    n.span,
                    "missing required key `email`",
                    Some("the ACME CA sends expiry notices there".to_string()),
                );
                None
            }
        };
        let directory = match acme_fields.get("directory") {
            Some((n, p)) => reader
                .nonempty(n, &p, "an ACME directory URL")
                .filter(|url| {
                    let ok = url.starts_with("https://") || url.starts_with("http://");
                    if !ok {
                        reader.error(
                            &p,
                            n.span,
                            format!("expected an http(s) URL, found {url:?}"),
                            None,
                        );
                    }
                    ok
                }),
            None => Some(LETS_ENCRYPT_DIRECTORY.to_string()),
        };
        if let (Some(email), Some(directory)) = (email, directory) {
            edge.acme = Some(Acme { email, directory });
        }
    }
    if edge.tls == Tls::Acme && fields.get("acme").is_none() {
        let span = fields.get("tls").map_or(node.span, |(n, _)| n.span);
        reader.error(
            &join(path, "acme"),
            span,
            "tls: acme needs an `acme:` section",
            Some("add `acme: { email: ops@example.com }`".to_string()),
        );
    }
    if let Some((n, p)) = fields.get("hsts_max_age") {
        edge.hsts_max_age = reader.duration(n, &p).unwrap_or(edge.hsts_max_age);
    }
    if let Some((n, p)) = fields.get("max_body_size") {
        edge.max_body_size = reader.size(n, &p).unwrap_or(edge.max_body_size);
    }
    if let Some((n, p)) = fields.get("max_header_size") {
        edge.max_header_size = reader.size(n, &p).unwrap_or(edge.max_header_size);
    }
    if let Some((n, p)) = fields.get("header_timeout") {
        edge.header_timeout = positive_duration(reader, n, &p).unwrap_or(edge.header_timeout);
    }
    if let Some((n, p)) = fields.get("body_timeout") {
        edge.body_timeout = positive_duration(reader, n, &p).unwrap_or(edge.body_timeout);
    }
    if let Some((n, p)) = fields.get("upstream_timeout") {
        edge.upstream_timeout = positive_duration(reader, n, &p).unwrap_or(edge.upstream_timeout);
    }
    if let Some((n, p)) = fields.get("idle_timeout") {
        edge.idle_timeout = positive_duration(reader, n, &p).unwrap_or(edge.idle_timeout);
    }
    if let Some((n, p)) = fields.get("max_connections") {
        edge.max_connections = reader
            .integer(n, &p, "a connection count", 1, 10_000_000)
            .map_or(edge.max_connections, |v| v as u32);
    }
    edge
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

fn tls(node: &Node, path: &str, reader: &mut Reader) -> Option<Tls> {
    match &node.kind {
        NodeKind::Plain(text) | NodeKind::Quoted(text) => match text.as_str() {
            "self-signed" => Some(Tls::SelfSigned),
            "acme" => Some(Tls::Acme),
            other => {
                reader.error(
                    path,
                    node.span,
                    format!("expected self-signed, acme or {{cert, key}}, found {other:?}"),
                    Some("use `tls: self-signed` for development".to_string()),
                );
                None
            }
        },
        _ => {
            let fields = reader.fields(
                node,
                path,
                "self-signed, acme or {cert, key}",
                TLS_FILE_KEYS,
            )?;
            let cert = required(&fields, "cert", "a certificate file path", reader);
            let key = required(&fields, "key", "a private key file path", reader);
            Some(Tls::Files {
                cert: cert?,
                key: key?,
            })
        }
    }
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

/// A service with defaults in place of fields that have errors; `None` only when it is not a
/// mapping at all.
fn service(node: &Node, path: &str, options: &LoadOptions, reader: &mut Reader) -> Option<Service> {
    let fields = reader.fields(node, path, "a service mapping", SERVICE_KEYS)?;
    let workload = workload(&fields, node, path, reader);
    let is_command = matches!(workload, Some(Workload::Command(_)));
    let mut service = Service {
        workload: workload.clone().unwrap_or(Workload::Image(String::new())),
        dir: None,
        env: BTreeMap::new(),
        port: None,
        replicas: defaults::REPLICAS,
        routes: Vec::new(),
        health: None,
        depends_on: Vec::new(),
        secrets: Vec::new(),
        resources: Resources::default(),
        user: None,
        allow_root: false,
        python: None,
        deploy: Deploy {
            strategy: Strategy::Rolling,
            max_surge: 1,
            timeout: defaults::DEPLOY_TIMEOUT,
            drain_timeout: defaults::DRAIN_TIMEOUT,
        },
        volumes: Vec::new(),
        backup: None,
        stop_timeout: defaults::STOP_TIMEOUT,
        code: None,
        secret_digests: BTreeMap::new(),
    };
    if let Some((n, p)) = fields.get("dir") {
        if workload.is_some() && !is_command {
            reader.error(
                &p,
                n.blame(),
                "`dir` applies to command services only",
                Some("remove it, or run the service with `command:`".to_string()),
            );
        }
        service.dir = reader.nonempty(n, &p, "a directory path");
        if let Some(dir) = &service.dir
            && let Some(system) = system_dir(dir)
        {
            reader.error(
                &p,
                n.span,
                format!("`dir: {dir}` is a system directory ({system}): a service's dir is its code, which bow reads to version it"),
                Some("give the service a directory of its own, like ./app or /srv/app".to_string()),
            );
        }
    }
    if let Some((n, p)) = fields.get("env") {
        for (key, value) in reader
            .map(n, &p, "a mapping of environment variables")
            .unwrap_or_default()
        {
            let name = key.scalar().unwrap_or_default();
            let env_path = join(&p, name);
            if !crate::interp::is_env_name(name) {
                reader.error(
                    &env_path,
                    key.span,
                    format!("{name:?} is not a valid environment variable name"),
                    Some("use letters, digits and `_`, not starting with a digit".to_string()),
                );
                continue;
            }
            if value.is_null() {
                reader.error(
                    &env_path,
                    value.span,
                    "expected a value, found nothing",
                    Some("write '' for an empty string".to_string()),
                );
                continue;
            }
            if let Some(text) = reader.string(value, &env_path, "a string value") {
                service.env.insert(name.to_string(), text);
            }
        }
    }
    if let Some((n, p)) = fields.get("port") {
        service.port = reader.port(n, &p);
    }
    if let Some((n, p)) = fields.get("replicas") {
        service.replicas = reader
            .integer(n, &p, "a replica count", 0, 1000)
            .map_or(service.replicas, |v| v as u32);
    }
    if let Some((n, p)) = fields.get("routes") {
        for (position, item) in reader
            .list(n, &p, "routes like app.example.com or app.example.com/api")
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let item_path = index(&p, position);
            if let Some(text) =
                reader.nonempty(item, &item_path, "a route like app.example.com/path")
            {
                match parse_route(&text) {
                    Ok(route) => service.routes.push(route),
                    Err(message) => reader.error(&item_path, item.span, message, Some("a route is a host name with an optional path prefix, like app.example.com/api".to_string())),
                }
            }
        }
    }
    if let Some((n, p)) = fields.get("health") {
        service.health = health(n, &p, reader);
    }
    if let Some((n, p)) = fields.get("depends_on") {
        service.depends_on = names(n, &p, "service names", reader);
    }
    if let Some((n, p)) = fields.get("secrets") {
        for (position, item) in reader
            .list(n, &p, "secret names")
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let item_path = index(&p, position);
            if let Some(name) = reader.nonempty(item, &item_path, "a secret name") {
                if !is_secret_name(&name) {
                    reader.error(&item_path, item.span, format!("secret name {name:?} is not valid: expected letters, digits, `_` and `-`"), None);
                } else if service.secrets.contains(&name) {
                    reader.error(
                        &item_path,
                        item.span,
                        format!("secret `{name}` is listed twice"),
                        None,
                    );
                } else {
                    service.secrets.push(name);
                }
            }
        }
    }
    if let Some((n, p)) = fields.get("resources")
        && let Some(resources) =
            reader.fields(n, &p, "a mapping with memory and cpu", RESOURCES_KEYS)
    {
        if let Some((n, p)) = resources.get("memory") {
            service.resources.memory = reader.size(n, &p).filter(|size| {
                let ok = size.bytes() >= 4 << 20;
                if !ok {
                    reader.error(
                        &p,
                        n.span,
                        format!("memory limit {size} is too small: expected at least 4M"),
                        Some("for example `memory: 256M`".to_string()),
                    );
                }
                ok
            });
        }
        if let Some((n, p)) = resources.get("cpu") {
            service.resources.cpu = reader
                .float(n, &p, "a number of CPU cores like 0.5")
                .filter(|cpu| {
                    let ok = *cpu >= 0.01 && *cpu <= 1024.0;
                    if !ok {
                        reader.error(
                            &p,
                            n.span,
                            format!(
                                "expected a number of CPU cores between 0.01 and 1024, found {cpu}"
                            ),
                            Some("for example `cpu: 0.5` for half a core".to_string()),
                        );
                    }
                    ok
                });
        }
    }
    if let Some((n, p)) = fields.get("user") {
        service.user = reader.nonempty(n, &p, "a unix user name").filter(|user| {
            let ok = is_user_name(user);
            if !ok {
                let suggestion: String = crate::reader::suggest_name(user).chars().take(32).collect();
                let hint = if suggestion.is_empty() { "use lowercase letters, digits, `_` and `-`".to_string() } else { format!("for example `{suggestion}`") };
                reader.error(&p, n.span, format!("{user:?} is not a valid unix user name: expected [a-z_][a-z0-9_-]*, at most 32 characters"), Some(hint));
            }
            ok
        });
    }
    if let Some((n, p)) = fields.get("allow_root") {
        service.allow_root = reader.boolean(n, &p).unwrap_or(false);
    }
    if let Some(user) = &service.user
        && !service.allow_root
        && (user == "root" || options.uid0_users.iter().any(|u| u == user))
        && let Some((n, p)) = fields.get("user")
    {
        let uid0 = if user == "root" {
            String::new()
        } else {
            " (uid 0 on this host)".to_string()
        };
        reader.error(
            &p,
            n.span,
            format!("`user: {user}`{uid0} runs the service as root, with every privilege of the host"),
            Some("run it as an unprivileged user (leave `user` out and bow creates one), or add `allow_root: true` to the service if it must be root".to_string()),
        );
    }
    if let Some((n, p)) = fields.get("python") {
        if workload.is_some() && !is_command {
            reader.error(
                &p,
                n.blame(),
                "`python` applies to command services only",
                Some("remove it, or run the service with `command:`".to_string()),
            );
        }
        if let Some(python) = reader.fields(n, &p, "a mapping with requirements", PYTHON_KEYS) {
            let requirements = required(
                &python,
                "requirements",
                "a requirements file, relative to dir",
                reader,
            );
            let version = python
                .get("version")
                .and_then(|(n, p)| reader.nonempty(n, &p, "a python version like 3.11"));
            if let Some(requirements) = requirements {
                service.python = Some(Python {
                    requirements,
                    version,
                });
            }
        }
    }
    if let Some((n, p)) = fields.get("deploy")
        && let Some(deploy) = reader.fields(n, &p, "a mapping of deploy settings", DEPLOY_KEYS)
    {
        if let Some((n, p)) = deploy.get("strategy") {
            match n.scalar() {
                Some("rolling") => service.deploy.strategy = Strategy::Rolling,
                Some("blue-green") => service.deploy.strategy = Strategy::BlueGreen,
                _ => reader.error(
                    &p,
                    n.span,
                    format!("expected rolling or blue-green, found {}", n.describe()),
                    None,
                ),
            }
        }
        if let Some((n, p)) = deploy.get("max_surge") {
            service.deploy.max_surge = reader
                .integer(n, &p, "a number of extra instances", 1, 100)
                .map_or(1, |v| v as u32);
        }
        if let Some((n, p)) = deploy.get("timeout") {
            service.deploy.timeout = reader.duration(n, &p).unwrap_or(service.deploy.timeout);
        }
        if let Some((n, p)) = deploy.get("drain_timeout") {
            service.deploy.drain_timeout = reader
                .duration(n, &p)
                .unwrap_or(service.deploy.drain_timeout);
        }
    }
    if let Some((n, p)) = fields.get("volumes") {
        for (position, item) in reader
            .list(n, &p, "volumes like data:/var/lib/app")
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let item_path = index(&p, position);
            if let Some(text) = reader.nonempty(item, &item_path, "a volume like data:/var/lib/app")
            {
                match parse_volume(&text) {
                    Ok(volume) => service.volumes.push(volume),
                    Err(message) => reader.error(
                        &item_path,
                        item.span,
                        message,
                        Some("write name:/path, ./dir:/path, or add :ro".to_string()),
                    ),
                }
            }
        }
    }
    if let Some((n, p)) = fields.get("backup") {
        service.backup = backup(n, &p, reader);
    }
    if let Some((n, p)) = fields.get("stop_timeout") {
        service.stop_timeout = reader.duration(n, &p).unwrap_or(service.stop_timeout);
    }
    if let Some(Workload::Postgres(_)) = &workload
        && service.replicas > 1
    {
        let span = fields.get("replicas").map_or(node.span, |(n, _)| n.span);
        reader.error(
            &join(path, "replicas"),
            span,
            "a postgres service runs one instance",
            Some("streaming replicas are not supported yet; use replicas: 1".to_string()),
        );
    }
    if let Some(workload) = workload {
        service.workload = workload;
    }
    Some(service)
}

fn workload(fields: &Fields<'_>, node: &Node, path: &str, reader: &mut Reader) -> Option<Workload> {
    let present: Vec<&str> = ["command", "image", "postgres"]
        .into_iter()
        .filter(|key| fields.get(key).is_some())
        .collect();
    if present.is_empty() {
        if fields.get("build").is_some() {
            // `build:` makes an image; it is refused as not available (check.rs) on its own.
            return None;
        }
        reader.error(path, node.blame(), "expected one of `command`, `image` or `postgres`, found none", Some("add `command: ...` to run a process, `image: ...` for a container or `postgres: {...}` for a database".to_string()));
        return None;
    }
    if present.len() > 1 {
        let second = present[1];
        let span = fields.key_span(second).unwrap_or(node.span);
        reader.error(&join(path, second), span, format!("`{}` and `{second}` are both set: a service runs exactly one of command, image or postgres", present[0]), Some("split them into two services".to_string()));
        return None;
    }
    let (value, value_path) = fields.get(present[0])?;
    match present[0] {
        "command" => match &value.kind {
            NodeKind::Seq(items) => {
                let mut argv = Vec::new();
                for (position, item) in items.iter().enumerate() {
                    argv.push(reader.nonempty(
                        item,
                        &index(&value_path, position),
                        "a command argument",
                    )?);
                }
                if argv.is_empty() {
                    reader.error(
                        &value_path,
                        value.span,
                        "expected a command, found an empty list",
                        None,
                    );
                    return None;
                }
                Some(Workload::Command(CommandLine::Argv(argv)))
            }
            _ => reader
                .nonempty(value, &value_path, "a command line")
                .map(|c| Workload::Command(CommandLine::Shell(c))),
        },
        "image" => {
            let image = reader.nonempty(value, &value_path, "an image reference like app:1.4.2")?;
            if image.contains(char::is_whitespace) {
                reader.error(
                    &value_path,
                    value.span,
                    format!("expected an image reference like app:1.4.2, found {image:?}"),
                    None,
                );
                return None;
            }
            Some(Workload::Image(image))
        }
        _ => postgres(value, &value_path, reader).map(Workload::Postgres),
    }
}

fn postgres(node: &Node, path: &str, reader: &mut Reader) -> Option<Postgres> {
    let fields = reader.fields(node, path, "a mapping of postgres settings", POSTGRES_KEYS)?;
    let version = match fields.get("version") {
        Some((n, p)) => reader
            .integer(n, &p, "a PostgreSQL major version", 10, 99)
            .map(|v| v as u32),
        None => Some(defaults::POSTGRES_VERSION),
    };
    let mut sql_name = |key: &str, what: &str| {
        let value = required(&fields, key, what, reader)?;
        let (n, p) = fields.get(key)?;
        let ok = value.len() <= 63
            && value.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            reader.error(
                &p,
                n.span,
                format!("{value:?} is not a valid {what}: expected [a-z_][a-z0-9_]*"),
                None,
            );
            return None;
        }
        Some(value)
    };
    let database = sql_name("database", "database name");
    let user = sql_name("user", "database user name");
    let password_secret = required(
        &fields,
        "password_secret",
        "the name of the secret holding the password",
        reader,
    );
    if let (Some(name), Some((n, p))) = (&password_secret, fields.get("password_secret"))
        && !is_secret_name(name)
    {
        reader.error(
            &p,
            n.span,
            format!("secret name {name:?} is not valid: expected letters, digits, `_` and `-`"),
            None,
        );
        return None;
    }
    let init = fields
        .get("init")
        .and_then(|(n, p)| reader.nonempty(n, &p, "an SQL file path"));
    Some(Postgres {
        version: version?,
        database: database?,
        user: user?,
        password_secret: password_secret?,
        init,
    })
}

fn health(node: &Node, path: &str, reader: &mut Reader) -> Option<Health> {
    let fields = reader.fields(node, path, "a health check mapping", HEALTH_KEYS)?;
    let before = reader.diagnostics.len();
    let kinds: Vec<&str> = ["http", "tcp", "exec"]
        .into_iter()
        .filter(|k| fields.get(k).is_some())
        .collect();
    let check = match kinds.as_slice() {
        [] => {
            reader.error(
                path,
                node.span,
                "expected one of `http`, `tcp` or `exec`, found none",
                Some("for example `health: { http: /healthz }`".to_string()),
            );
            None
        }
        [kind] => {
            let (n, p) = fields.get(kind)?;
            match *kind {
                "http" => {
                    reader
                        .nonempty(n, &p, "a URL path like /healthz")
                        .and_then(|path_text| {
                            if path_text.starts_with('/') {
                                Some(Check::Http(path_text))
                            } else {
                                reader.error(
                                    &p,
                                    n.span,
                                    format!(
                                        "expected a URL path starting with /, found {path_text:?}"
                                    ),
                                    Some(format!("write /{}", path_text.trim_start_matches('/'))),
                                );
                                None
                            }
                        })
                }
                "tcp" => match &n.kind {
                    NodeKind::Plain(text) if matches!(text.as_str(), "true" | "false") => reader
                        .boolean(n, &p)
                        .map(|b| Check::Tcp(TcpTarget::InstancePort(b))),
                    _ => reader
                        .port(n, &p)
                        .map(|port| Check::Tcp(TcpTarget::Port(port))),
                },
                _ => reader.nonempty(n, &p, "a command").map(Check::Exec),
            }
        }
        [first, second, ..] => {
            let span = fields.key_span(second).unwrap_or(node.span);
            reader.error(
                &join(path, second),
                span,
                format!("a health check has exactly one of http, tcp or exec, found {first} and {second}"),
                Some(format!("keep one: `{first}` or `{second}`")),
            );
            None
        }
    };
    let mut duration = |key: &str, default: Duration| match fields.get(key) {
        Some((n, p)) => reader.duration(n, &p).filter(|d| {
            let ok = key == "start_period" || d.as_std() > std::time::Duration::ZERO;
            if !ok {
                reader.error(&p, n.span, format!("{key} must be longer than 0s"), None);
            }
            ok
        }),
        None => Some(default),
    };
    let interval = duration("interval", defaults::HEALTH_INTERVAL);
    let timeout = duration("timeout", defaults::HEALTH_TIMEOUT);
    let start_period = duration("start_period", Duration::default());
    let retries = match fields.get("retries") {
        Some((n, p)) => reader
            .integer(n, &p, "a number of failed checks", 1, 100)
            .map(|v| v as u32),
        None => Some(defaults::HEALTH_RETRIES),
    };
    let health = Health {
        check: check?,
        interval: interval?,
        timeout: timeout?,
        retries: retries?,
        start_period: start_period?,
    };
    (reader.diagnostics.len() == before).then_some(health)
}

fn backup(node: &Node, path: &str, reader: &mut Reader) -> Option<Backup> {
    let fields = reader.fields(
        node,
        path,
        "a mapping with schedule, keep and to",
        BACKUP_KEYS,
    )?;
    let schedule = required(&fields, "schedule", "a cron schedule like \"0 3 * * *\"", reader).and_then(|text| {
        let (n, p) = fields.get("schedule")?;
        match crate::cron::Cron::parse(&text) {
            Ok(_) => Some(text),
            Err(message) => {
                reader.error(&p, n.span, message, Some("five fields: minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\"".to_string()));
                None
            }
        }
    });
    let keep = match fields.get("keep") {
        Some((n, p)) => reader
            .integer(n, &p, "a number of backups to keep", 1, 100_000)
            .map(|v| v as u32),
        None => Some(defaults::BACKUP_KEEP),
    };
    let to = required(
        &fields,
        "to",
        "a destination like s3://bucket/prefix or a directory",
        reader,
    )
    .and_then(|to| {
        let (n, p) = fields.get("to")?;
        let ok = to.starts_with("s3://") && to.len() > 5
            || to.starts_with("file:///")
            || to.starts_with('/')
            || to.starts_with("./");
        if !ok {
            reader.error(
                &p,
                n.span,
                format!(
                    "expected s3://bucket/prefix, file:///dir or a directory path, found {to:?}"
                ),
                None,
            );
            return None;
        }
        Some(to)
    });
    Some(Backup {
        schedule: schedule?,
        keep: keep?,
        to: to?,
    })
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

/// `host` or `host/path/prefix`.
pub fn parse_route(text: &str) -> Result<Route, String> {
    if text.contains("://") {
        return Err(format!(
            "expected a host name without a scheme, found {text:?}"
        ));
    }
    let (host, path) = match text.find('/') {
        Some(at) => (&text[..at], &text[at..]),
        None => (text, "/"),
    };
    if host.contains(':') {
        return Err(format!(
            "expected a host name without a port, found {text:?} (the edge listens on edge.https_port)"
        ));
    }
    let host = host.to_ascii_lowercase();
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|label| is_name(label) || (label == "*" && host.starts_with("*.")));
    if !valid_host {
        return Err(format!(
            "expected a host name like app.example.com, found {text:?}"
        ));
    }
    if path.contains(char::is_whitespace) || path.contains(['?', '#']) {
        return Err(format!(
            "expected a path prefix without spaces, query or fragment, found {path:?}"
        ));
    }
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    Ok(Route {
        host,
        path: path.to_string(),
    })
}

/// `name:/path[:ro]` or `./dir:/path[:ro]` or `/abs:/path[:ro]`.
pub fn parse_volume(text: &str) -> Result<Volume, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [source, target] => (*source, *target, false),
        [source, target, "ro"] => (*source, *target, true),
        [_, _, "rw"] => {
            return Err("`:rw` is the default; write only `:ro` when needed".to_string());
        }
        _ => return Err(format!("expected SOURCE:/path[:ro], found {text:?}")),
    };
    if !target.starts_with('/') {
        return Err(format!(
            "the volume target must be an absolute path, found {target:?}"
        ));
    }
    let source = if source.starts_with("./") || source.starts_with('/') || source.starts_with("../")
    {
        VolumeSource::Path(source.to_string())
    } else if is_name(source) {
        VolumeSource::Named(source.to_string())
    } else {
        return Err(format!(
            "the volume source {source:?} is neither a name ([a-z0-9-]) nor a path starting with ./ or /"
        ));
    };
    Ok(Volume {
        source,
        target: target.to_string(),
        read_only,
    })
}

/// Secret names become file names: letters, digits, `_`, `-`.
pub fn is_secret_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_user_name(text: &str) -> bool {
    text.len() <= 32
        && text.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Directories a service may not use as its `dir` (nor anything below the ones marked
/// `true`): the root, the system's own trees, and bow's state. A service's dir is hashed for
/// its code version and is the working directory of a process; neither makes sense there.
pub const SYSTEM_DIRS: &[(&str, bool)] = &[
    ("/", false),
    ("/bin", true),
    ("/boot", true),
    ("/dev", true),
    ("/etc", true),
    ("/lib", true),
    ("/lib32", true),
    ("/lib64", true),
    ("/proc", true),
    ("/root", false),
    ("/run", false),
    ("/sbin", true),
    ("/sys", true),
    ("/usr", false),
    ("/usr/bin", true),
    ("/usr/lib", true),
    ("/usr/sbin", true),
    ("/var", false),
    ("/var/lib", false),
    ("/var/lib/bow", true),
    ("/var/log", true),
    ("/home", false),
    ("/tmp", false),
    ("/var/tmp", false),
];

/// The system directory `path` is or lies in (lexically: `.` and `..` resolved, no links
/// followed; the CLI checks the real path too), when it is one [`SYSTEM_DIRS`] refuses.
/// Relative paths are not checked here.
pub fn system_dir(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let clean = format!("/{}", parts.join("/"));
    SYSTEM_DIRS
        .iter()
        .find(|(dir, below)| {
            clean == *dir
                || (*below
                    && clean
                        .strip_prefix(dir)
                        .is_some_and(|rest| rest.starts_with('/')))
        })
        .map(|(dir, _)| *dir)
}
