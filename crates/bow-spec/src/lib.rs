//! bow's stack file: `bow.yaml` text → a typed, validated [`Spec`] for one environment.
//!
//! Pure: no file system, no network, no clock. The caller reads the file and renders the
//! [`Diagnostic`]s. The pipeline is: YAML with spans (`yaml`) → environment overlay
//! (`environ`) → vars (`interp`) → typed fields (`decode`) → cross-service rules (`check`).

mod check;
pub mod cron;
mod decode;
pub mod diag;
pub mod environ;
mod interp;
mod reader;
pub mod sandbox;
pub mod schema;
mod schema_ops;
mod schema_routes;
pub mod units;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};

pub use decode::{
    ACME_KEYS, ADMIN_KEYS, ALERT_RULE_KEYS, ALERTS_KEYS, BACKUP_KEYS, DEPLOY_KEYS, EDGE_KEYS,
    HEALTH_KEYS, NOT_AVAILABLE_KEYS, POSTGRES_KEYS, PYTHON_KEYS, RESOURCES_KEYS, SANDBOX_KEYS,
    SERVICE_KEYS, SYSCALLS_KEYS, SYSTEM_DIRS, TLS_FILE_KEYS, TOP_KEYS, all_keys, check_proxy_url,
    defaults, is_secret_name, parse_route, parse_volume, system_dir,
};
pub use diag::{Diagnostic, Span};
pub use environ::DEFAULT_ENVIRONMENT;
pub use interp::{postgres_references, secret_references};
pub use sandbox::{Sandbox, SandboxLevel, SyscallRules};
pub use schema::*;

use reader::Reader;

/// What the caller knows that the file does not say.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// The environment to resolve (`-e`, `BOW_ENV`, or `development`).
    pub environment: String,
    /// Whether bow runs as root: decides the default edge ports (80/443 or 8080/8443).
    pub privileged: bool,
    /// Names of this host's users with uid 0 besides `root` (read by the caller from the
    /// user database): `user:` naming one needs `allow_root: true` like `root` does.
    pub uid0_users: Vec<String>,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions {
            environment: DEFAULT_ENVIRONMENT.to_string(),
            privileged: false,
            uid0_users: Vec::new(),
        }
    }
}

/// The text of a stack file read as bytes: `Err` names the first byte that is not UTF-8 at
/// its line and column (everything before it is valid, so positions are exact).
pub fn text(bytes: &[u8]) -> Result<&str, Diagnostic> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(error) => {
            let valid = error.valid_up_to();
            // The prefix up to `valid_up_to` is valid UTF-8 by definition.
            let prefix = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
            let mut span = yaml::position(prefix, valid);
            span.end = valid + error.error_len().unwrap_or(1).min(bytes.len() - valid);
            Err(Diagnostic::new(
                "",
                span,
                format!(
                    "the file is not UTF-8: byte 0x{:02x} at offset {valid} is not valid here",
                    bytes[valid]
                ),
                Some("save bow.yaml as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)".to_string()),
            ))
        }
    }
}

/// Parses and validates `text` for one environment. `Err` holds every problem found, sorted
/// by position.
pub fn load(text: &str, options: &LoadOptions) -> Result<Spec, Vec<Diagnostic>> {
    let root = parse_root(text)?;
    let mut reader = Reader::default();
    // Declared environments are checked whichever one is selected.
    environ::declared(&root, &mut reader);
    let spec = load_environment(&root, options, &mut reader);
    let mut diagnostics = reader.diagnostics;
    diag::normalize(&mut diagnostics);
    match spec {
        Some(spec) if diagnostics.is_empty() => Ok(spec),
        _ => Err(diagnostics),
    }
}

/// Checks the file in every environment it declares (and `development`). Problems that only
/// show up in some environments say which.
pub fn validate(text: &str, privileged: bool) -> Vec<Diagnostic> {
    validate_with(
        text,
        &LoadOptions {
            privileged,
            ..LoadOptions::default()
        },
    )
}

/// [`validate`] with everything the caller knows about the host (`options.environment` is
/// ignored: every environment is checked).
pub fn validate_with(text: &str, host: &LoadOptions) -> Vec<Diagnostic> {
    let root = match parse_root(text) {
        Ok(root) => root,
        Err(diagnostics) => return diagnostics,
    };
    let mut reader = Reader::default();
    let environments = environ::declared(&root, &mut reader);
    let mut all = reader.diagnostics;
    let mut per_environment: Vec<(String, Vec<Diagnostic>)> = Vec::new();
    for (environment, _) in &environments {
        let mut reader = Reader::default();
        let options = LoadOptions {
            environment: environment.clone(),
            ..host.clone()
        };
        load_environment(&root, &options, &mut reader);
        per_environment.push((environment.clone(), reader.diagnostics));
    }
    // Hash sets: a file with many problems must not cost their square.
    let sets: Vec<std::collections::HashSet<&Diagnostic>> = per_environment
        .iter()
        .map(|(_, diagnostics)| diagnostics.iter().collect())
        .collect();
    let everywhere: std::collections::HashSet<&Diagnostic> = per_environment
        .first()
        .map(|(_, first)| {
            first
                .iter()
                .filter(|d| sets.iter().all(|other| other.contains(d)))
                .collect()
        })
        .unwrap_or_default();
    for (environment, diagnostics) in &per_environment {
        for diagnostic in diagnostics {
            if everywhere.contains(diagnostic) || diagnostic.path.starts_with("environments.") {
                all.push(diagnostic.clone());
            } else {
                let mut scoped = diagnostic.clone();
                scoped
                    .message
                    .push_str(&format!(" (in environment `{environment}`)"));
                all.push(scoped);
            }
        }
    }
    diag::normalize(&mut all);
    all
}

/// The project name, read leniently (for locating the state dir before full validation).
pub fn project_name(text: &str) -> Option<String> {
    let root = yaml::parse(text).ok()??;
    let name = root.get("project")?.scalar()?.to_string();
    reader::is_name(&name).then_some(name)
}

/// Where the value at `keys` (like `["services", "web", "dir"]`) is written in the base file;
/// when it is not written, the key of its nearest written parent (e.g. the service's name).
/// For the CLI's checks of a loaded spec against the disk.
pub fn locate(text: &str, keys: &[&str]) -> Option<Span> {
    let root = yaml::parse(text).ok()??;
    let mut node = &root;
    let mut span = None;
    for key in keys {
        match node.get(key) {
            Some(child) => {
                span = Some(child.blame());
                node = child;
            }
            None => break,
        }
    }
    span
}

/// Services in dependency order: each after everything it depends on; among services that
/// are ready at the same time, by name. Services on a cycle (which validation rejects) come
/// last, by name.
pub fn dependency_order(spec: &Spec) -> Vec<String> {
    let mut waiting_on: BTreeMap<&str, usize> = BTreeMap::new();
    let mut dependants: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, service) in &spec.services {
        let known: BTreeSet<&str> = service
            .depends_on
            .iter()
            .map(String::as_str)
            .filter(|d| spec.services.contains_key(*d) && *d != name)
            .collect();
        waiting_on.insert(name, known.len());
        for dependency in known {
            dependants.entry(dependency).or_default().push(name);
        }
    }
    let mut ready: BTreeSet<&str> = waiting_on
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(s, _)| *s)
        .collect();
    let mut order = Vec::with_capacity(spec.services.len());
    while let Some(name) = ready.pop_first() {
        order.push(name.to_string());
        for dependant in dependants.get(name).map(Vec::as_slice).unwrap_or_default() {
            if let Some(count) = waiting_on.get_mut(dependant) {
                *count -= 1;
                if *count == 0 {
                    ready.insert(dependant);
                }
            }
        }
    }
    if order.len() < spec.services.len() {
        let placed: BTreeSet<String> = order.iter().cloned().collect();
        order.extend(
            spec.services
                .keys()
                .filter(|n| !placed.contains(*n))
                .cloned(),
        );
    }
    order
}

/// Makes the file's relative paths absolute against `base` (the directory holding bow.yaml),
/// so that what is applied and recorded does not depend on the caller's working directory.
/// A command service without `dir` runs in `base`. Lexical only: nothing is read.
pub fn anchor_paths(spec: &mut Spec, base: &std::path::Path) {
    let anchor = |path: &str| -> String {
        let joined = base.join(path);
        let mut clean = std::path::PathBuf::new();
        for component in joined.components() {
            match component {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    clean.pop();
                }
                other => clean.push(other),
            }
        }
        clean.to_string_lossy().into_owned()
    };
    if let Some(ca) = spec
        .edge
        .acme
        .as_mut()
        .and_then(|acme| acme.directory_ca.as_mut())
    {
        *ca = anchor(ca);
    }
    if let Tls::Files { cert, key } = &mut spec.edge.tls {
        *cert = anchor(cert);
        *key = anchor(key);
    }
    for service in spec.services.values_mut() {
        match &mut service.workload {
            Workload::Command(_) => {
                service.dir = Some(anchor(service.dir.as_deref().unwrap_or(".")))
            }
            Workload::Postgres(postgres) => postgres.init = postgres.init.as_deref().map(anchor),
            Workload::Container(container) => {
                if let Some(build) = &mut container.build {
                    build.context = anchor(&build.context);
                }
            }
            Workload::Proxy(_) => {}
        }
        for path in &mut service.sandbox.writable {
            *path = anchor(path);
        }
        for volume in &mut service.volumes {
            if let VolumeSource::Path(path) = &mut volume.source {
                *path = anchor(path);
            }
        }
    }
}

fn parse_root(text: &str) -> Result<yaml::Node, Vec<Diagnostic>> {
    match yaml::parse(text)? {
        Some(root) if matches!(root.kind, yaml::NodeKind::Map(_)) => Ok(root),
        Some(root) => Err(vec![Diagnostic::new(
            "",
            root.span,
            format!(
                "expected a mapping with project and services, found {}",
                root.describe()
            ),
            Some("a bow.yaml starts with `project: my-app`".to_string()),
        )]),
        None => Err(vec![Diagnostic::new(
            "",
            Span {
                start: 0,
                end: 0,
                line: 1,
                col: 1,
            },
            "the file is empty: expected a mapping with project and services",
            Some("a bow.yaml starts with `project: my-app`".to_string()),
        )]),
    }
}

fn load_environment(root: &yaml::Node, options: &LoadOptions, reader: &mut Reader) -> Option<Spec> {
    let mut merged = environ::resolve(root, &options.environment, reader)?;
    let vars = decode::vars(merged.get("vars"), "vars", reader);
    if let yaml::NodeKind::Map(entries) = &mut merged.kind {
        for (key, value) in entries.iter_mut() {
            if matches!(key.scalar(), Some("edge" | "services")) {
                let path = key.scalar().unwrap_or_default().to_string();
                interp::interpolate(value, &path, &vars, reader);
            }
        }
    }
    let spec = decode::spec(&merged, vars, options, reader)?;
    check::spec(&spec, &merged, reader);
    Some(spec)
}

/// Every secret a service uses: its `secrets:` list plus a postgres password secret.
pub fn service_secrets(service: &Service) -> Vec<&str> {
    let mut names: Vec<&str> = service.secrets.iter().map(String::as_str).collect();
    if let Workload::Postgres(postgres) = &service.workload
        && !names.contains(&postgres.password_secret.as_str())
    {
        names.push(&postgres.password_secret);
    }
    names
}

/// The secrets the edge and the agent read for a service's routes (`auth: {basic:
/// {users_secret}}`) and an outside API's injected headers: never delivered to instances.
pub fn route_secrets(service: &Service) -> Vec<&str> {
    let mut names = Vec::new();
    if let Workload::Proxy(api) = &service.workload {
        for value in api.inject_headers.values() {
            for name in secret_references(value) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    for route in &service.routes {
        let secret = match &route.auth {
            Some(RouteAuth::Basic { users_secret }) => users_secret,
            Some(RouteAuth::Oidc(oidc)) => &oidc.client_secret_secret,
            _ => continue,
        };
        if !names.contains(&secret.as_str()) {
            names.push(secret.as_str());
        }
    }
    names
}

/// Every secret a service's release depends on: [`service_secrets`] and [`route_secrets`].
pub fn used_secrets(service: &Service) -> Vec<&str> {
    let mut names = service_secrets(service);
    for name in route_secrets(service) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(services: usize) -> String {
        let mut text = String::from("project: p\nservices:\n");
        for i in 0..services {
            let deps = match i {
                0 => "[]".to_string(),
                1 | 2 => format!("[s{}]", i - 1),
                _ => format!("[s{}, s{}]", i - 1, i / 2),
            };
            text.push_str(&format!("  s{i}: {{command: run, depends_on: {deps}}}\n"));
        }
        text
    }

    #[test]
    fn dependency_checks_are_linear_on_deep_graphs() {
        // An exponential search would never finish on this graph.
        let spec = load(&chain(400), &LoadOptions::default()).unwrap();
        let order = dependency_order(&spec);
        let position = |name: &str| order.iter().position(|n| n == name).unwrap();
        assert!(position("s0") < position("s1") && position("s1") < position("s399"));
        assert!(position("s199") < position("s399"));
    }

    #[test]
    fn non_utf8_names_the_first_bad_byte() {
        let bytes = b"project: p\nservices:\n  w\xc3\xa9b: {command: \"caf\xe9\"}\n";
        let error = text(bytes).unwrap_err();
        assert_eq!((error.span.line, error.span.col), (3, 22), "{error:?}");
        assert_eq!(error.span.start, 43);
        assert!(error.message.contains("0xe9"), "{error:?}");
        assert_eq!(text(b"project: p\n").unwrap(), "project: p\n");
    }

    #[test]
    fn many_problems_are_capped_and_cost_no_square() {
        let mut file = String::from("project: p\nservices: {a: {command: x}}\n");
        for i in 0..20_000 {
            file.push_str(&format!("unknown{i}: 1\n"));
        }
        let diagnostics = validate(&file, false);
        assert_eq!(diagnostics.len(), reader::MAX_DIAGNOSTICS + 1);
        assert!(
            diagnostics
                .iter()
                .any(|d| d.message.starts_with("too many problems")),
            "{:?}",
            diagnostics.last()
        );
    }

    #[test]
    fn root_needs_allow_root_by_any_name() {
        let file = "project: p\nservices:\n  a: {command: x, user: root}\n  b: {command: x, user: toor}\n  c: {command: x, user: toor, allow_root: true}\n";
        let host = LoadOptions {
            uid0_users: vec!["toor".to_string()],
            ..LoadOptions::default()
        };
        let errors = validate_with(file, &host);
        let found: Vec<(&str, usize)> = errors
            .iter()
            .map(|d| (d.path.as_str(), d.span.line))
            .collect();
        assert_eq!(
            found,
            [("services.a.user", 3), ("services.b.user", 4)],
            "{errors:?}"
        );
        assert!(
            errors[1].message.contains("uid 0 on this host"),
            "{errors:?}"
        );
        assert!(
            errors[0]
                .hint
                .as_deref()
                .unwrap()
                .contains("allow_root: true")
        );
        // Elsewhere `toor` is an ordinary user.
        assert_eq!(validate(file, false).len(), 1);
    }

    #[test]
    fn chaos_drills_are_denied_unless_an_environment_allows_them() {
        let file = "project: p\nservices:\n  a: {command: x}\nenvironments:\n  staging: {chaos: allow}\n  production: {}\n";
        let load_env = |environment: &str| {
            let options = LoadOptions {
                environment: environment.to_string(),
                ..LoadOptions::default()
            };
            load(file, &options).unwrap().chaos
        };
        assert_eq!(load_env("development"), Chaos::Deny);
        assert_eq!(load_env("staging"), Chaos::Allow);
        assert_eq!(load_env("production"), Chaos::Deny);
        let everywhere = "project: p\nchaos: allow\nservices:\n  a: {command: x}\nenvironments:\n  production: {chaos: deny}\n";
        let production = LoadOptions {
            environment: "production".to_string(),
            ..LoadOptions::default()
        };
        assert_eq!(load(everywhere, &production).unwrap().chaos, Chaos::Deny);
        assert_eq!(
            load(everywhere, &LoadOptions::default()).unwrap().chaos,
            Chaos::Allow
        );
        let errors = validate(
            "project: p\nchaos: yes\nservices:\n  a: {command: x}\n",
            false,
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].path.as_str(), errors[0].span.line), ("chaos", 2));
        assert!(
            errors[0].message.contains("expected allow or deny"),
            "{errors:?}"
        );
    }

    #[test]
    fn system_dirs_are_refused_lexically() {
        assert_eq!(system_dir("/"), Some("/"));
        assert_eq!(system_dir("/etc/ssl/private"), Some("/etc"));
        assert_eq!(system_dir("/srv/../etc"), Some("/etc"));
        assert_eq!(
            system_dir("/var/lib/bow/p-development/logs"),
            Some("/var/lib/bow")
        );
        assert_eq!(system_dir("/usr"), Some("/usr"));
        assert_eq!(system_dir("/usr/local/app"), None);
        assert_eq!(system_dir("/home/ann/app"), None);
        assert_eq!(system_dir("/etcetera"), None);
        assert_eq!(system_dir("./etc"), None);
    }

    #[test]
    fn paths_are_anchored_at_the_file() {
        let mut spec = load(
            "project: p\nservices:\n  a: {command: x, dir: ./web/../api}\n  b: {command: y}\n",
            &LoadOptions::default(),
        )
        .unwrap();
        anchor_paths(&mut spec, std::path::Path::new("/srv/app"));
        assert_eq!(spec.services["a"].dir.as_deref(), Some("/srv/app/api"));
        assert_eq!(spec.services["b"].dir.as_deref(), Some("/srv/app"));
    }

    #[test]
    fn every_distinct_cycle_is_named_once() {
        let text = "project: p\nservices:\n  a: {command: x, depends_on: [b]}\n  b: {command: x, depends_on: [c]}\n  c: {command: x, depends_on: [a, d]}\n  d: {command: x, depends_on: [c]}\n";
        let errors = load(text, &LoadOptions::default()).unwrap_err();
        let messages: Vec<&str> = errors.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "dependency cycle: a → b → c → a",
                "dependency cycle: c → d → c"
            ],
            "{messages:?}"
        );
    }
}
