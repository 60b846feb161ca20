//! Rules across services: dependencies and their cycles, routes and ports claimed twice,
//! secret references, backups with nothing to back up.

use std::collections::{BTreeMap, BTreeSet};

use crate::decode::NOT_AVAILABLE_KEYS;
use crate::diag::{Span, did_you_mean};
use crate::interp::{postgres_references, secret_references};
use crate::reader::{Reader, index, join};
use crate::schema::{RouteAuth, Spec, Workload};
use crate::yaml::{Node, NodeKind};

/// Runs every cross-service rule on a decoded spec; `root` supplies the spans.
pub fn spec(spec: &Spec, root: &Node, reader: &mut Reader) {
    dependencies(spec, root, reader);
    routes(spec, root, reader);
    ports(spec, root, reader);
    secrets(spec, root, reader);
    database_urls(spec, root, reader);
    replica_names(spec, root, reader);
    backups(spec, root, reader);
    not_available(root, reader);
    crate::decode::check_placement(spec, root, reader);
}

/// Refuses the sections this version decodes but cannot run, one diagnostic per use. Each
/// later issue removes its key from `NOT_AVAILABLE_KEYS` when its driver lands.
fn not_available(root: &Node, reader: &mut Reader) {
    let Some(services) = root.get("services").and_then(Node::entries) else {
        return;
    };
    for (name, service) in services {
        let name = name.scalar().unwrap_or_default();
        for (key, _) in service.entries().unwrap_or_default() {
            let Some(field) = key.scalar().filter(|k| NOT_AVAILABLE_KEYS.contains(k)) else {
                continue;
            };
            let (what, hint) = match field {
                "postgres" => (
                    "managed PostgreSQL is",
                    "run PostgreSQL outside bow (or as a `command:` service) and give its address in `env`",
                ),
                _ => ("this section is", "leave it out for now"),
            };
            reader.error(
                &join(&join("services", name), field),
                key.span,
                format!("`{field}:` is not available in this version: {what} not supported yet"),
                Some(format!("{hint}; remove `{field}:` to go on")),
            );
        }
    }
}

fn node_at<'n>(root: &'n Node, path: &[&str]) -> Option<&'n Node> {
    let mut node = root;
    for key in path {
        node = node.get(key)?;
    }
    Some(node)
}

fn item_span(root: &Node, path: &[&str], position: usize) -> Span {
    let list = node_at(root, path);
    match list.map(|n| &n.kind) {
        Some(NodeKind::Seq(items)) => items.get(position).map_or(root.span, |item| item.span),
        _ => list.map_or(root.span, |n| n.span),
    }
}

fn dependencies(spec: &Spec, root: &Node, reader: &mut Reader) {
    let names: Vec<&str> = spec.services.keys().map(String::as_str).collect();
    for (name, service) in &spec.services {
        for (position, dependency) in service.depends_on.iter().enumerate() {
            let path = index(&format!("services.{name}.depends_on"), position);
            let span = item_span(root, &["services", name, "depends_on"], position);
            if dependency == name {
                reader.error(
                    &path,
                    span,
                    format!("service `{name}` depends on itself"),
                    Some("remove it from its own depends_on".to_string()),
                );
            } else if !spec.services.contains_key(dependency) {
                let hint = match did_you_mean(dependency, names.iter().copied()) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!("services in this file: {}", names.join(", ")),
                };
                reader.error(
                    &path,
                    span,
                    format!("depends on unknown service `{dependency}`"),
                    Some(hint),
                );
            }
        }
    }
    // Depth-first search with colours: linear in services plus edges. Every back edge is a
    // cycle; each distinct cycle is reported once, starting at its smallest name.
    let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut finished: BTreeSet<&str> = BTreeSet::new();
    for start in spec.services.keys() {
        if finished.contains(start.as_str()) {
            continue;
        }
        let mut path: Vec<&str> = vec![start];
        let mut next_edge: Vec<usize> = vec![0];
        while let (Some(&current), Some(edge)) = (path.last(), next_edge.last_mut()) {
            let dependencies = &spec.services[current].depends_on;
            let Some(dependency) = dependencies.get(*edge) else {
                finished.insert(current);
                path.pop();
                next_edge.pop();
                continue;
            };
            *edge += 1;
            let dependency = dependency.as_str();
            if dependency == current
                || !spec.services.contains_key(dependency)
                || finished.contains(dependency)
            {
                continue;
            }
            if let Some(at) = path.iter().position(|s| *s == dependency) {
                let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
                let smallest = cycle
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| *s)
                    .map_or(0, |(i, _)| i);
                cycle.rotate_left(smallest);
                if reported.insert(cycle.clone()) {
                    report_cycle(spec, &cycle, root, reader);
                }
                continue;
            }
            path.push(dependency);
            next_edge.push(0);
        }
    }
}

fn report_cycle(spec: &Spec, cycle: &[String], root: &Node, reader: &mut Reader) {
    let first = &cycle[0];
    let next = cycle.get(1).unwrap_or(first);
    let position = spec.services[first]
        .depends_on
        .iter()
        .position(|d| d == next)
        .unwrap_or(0);
    let span = item_span(root, &["services", first, "depends_on"], position);
    let mut chain = cycle.join(" → ");
    chain.push_str(" → ");
    chain.push_str(first);
    reader.error(
        &index(&format!("services.{first}.depends_on"), position),
        span,
        format!("dependency cycle: {chain}"),
        Some("services start only after their dependencies are healthy, so a cycle never starts; remove one edge".to_string()),
    );
}

fn routes(spec: &Spec, root: &Node, reader: &mut Reader) {
    let mut claimed: BTreeMap<String, String> = BTreeMap::new();
    for (name, service) in &spec.services {
        for (position, route) in service.routes.iter().enumerate() {
            // Positions name YAML items only when every item became a route.
            let items = node_at(root, &["services", name, "routes"]);
            let aligned = matches!(items.map(|n| &n.kind), Some(NodeKind::Seq(all)) if all.len() == service.routes.len());
            if let Some(RouteAuth::Forward(forward)) = &route.auth
                && aligned
            {
                let auth = &forward.service;
                let item = match items.map(|n| &n.kind) {
                    Some(NodeKind::Seq(all)) => all.get(position),
                    _ => None,
                };
                let span = item
                    .and_then(|item| item.get("auth"))
                    .and_then(|auth| auth.get("forward"))
                    .map_or_else(
                        || item_span(root, &["services", name, "routes"], position),
                        |n| n.span,
                    );
                let path = format!(
                    "{}.auth.forward",
                    index(&format!("services.{name}.routes"), position)
                );
                match spec.services.get(auth) {
                    None => {
                        let known: Vec<&str> = spec.services.keys().map(String::as_str).collect();
                        let hint = match did_you_mean(auth, known.iter().copied()) {
                            Some(close) => format!("did you mean `{close}`?"),
                            None => format!("services here: {}", known.join(", ")),
                        };
                        reader.error(
                            &path,
                            span,
                            format!("no service `{auth}` to ask: forward auth names a service of this file"),
                            Some(hint),
                        );
                    }
                    Some(service) if service.port.is_none() => reader.error(
                        &path,
                        span,
                        format!("service `{auth}` has no `port:`: the edge asks it at its stable address"),
                        Some(format!("give `{auth}` a port, e.g. port: 4180")),
                    ),
                    Some(_) => {}
                }
            }
            let key = route.to_string();
            match claimed.get(&key) {
                Some(owner) => {
                    let span = item_span(root, &["services", name, "routes"], position);
                    let whom = if owner == name {
                        "this service".to_string()
                    } else {
                        format!("service `{owner}`")
                    };
                    reader.error(
                        &index(&format!("services.{name}.routes"), position),
                        span,
                        format!("route `{key}` is already claimed by {whom}"),
                        Some("each host and path prefix is served by one service; use a different host or path".to_string()),
                    );
                }
                None => {
                    claimed.insert(key, name.clone());
                }
            }
        }
    }
}

fn ports(spec: &Spec, root: &Node, reader: &mut Reader) {
    let mut taken: BTreeMap<u16, String> = BTreeMap::new();
    taken.insert(spec.edge.http_port, "edge.http_port".to_string());
    taken.insert(spec.edge.https_port, "edge.https_port".to_string());
    for (name, service) in &spec.services {
        let Some(port) = service.port else { continue };
        let path = format!("services.{name}.port");
        let given = node_at(root, &["services", name, "port"]);
        let span = given
            .or_else(|| node_at(root, &["services", name, "proxy"]))
            .map_or(root.span, |n| n.span);
        let by_default = given.is_none() && matches!(service.workload, Workload::Proxy(_));
        match taken.get(&port) {
            Some(owner) if by_default => {
                let owner = if owner.starts_with("edge.") {
                    owner.clone()
                } else {
                    format!("service `{owner}`")
                };
                reader.error(
                    &path,
                    span,
                    format!("an outside API is called at port {port} unless it gives a `port:`, and {owner} uses it"),
                    Some(format!("add a port, e.g. `port: 8080` (services then call http://{name}:8080)")),
                );
            }
            Some(owner) if owner.starts_with("edge.") => {
                reader.error(
                    &path,
                    span,
                    format!("port {port} is already used by {owner}"),
                    Some("pick another port for the service".to_string()),
                );
            }
            Some(owner) => {
                reader.error(
                    &path,
                    span,
                    format!("port {port} is already used by service `{owner}`"),
                    Some("each service needs its own port".to_string()),
                );
            }
            None => {
                taken.insert(port, name.clone());
            }
        }
    }
    // TCP routes listen on every address of the host: not on the edge's ports, not twice.
    let mut routes: BTreeMap<u16, String> = BTreeMap::new();
    routes.insert(spec.edge.http_port, "edge.http_port".to_string());
    routes.insert(spec.edge.https_port, "edge.https_port".to_string());
    // TLS passthrough routes (`sni:`) share a port among themselves, each name once.
    let mut passthrough: BTreeMap<u16, BTreeMap<&str, &str>> = BTreeMap::new();
    for (name, service) in &spec.services {
        let Some(tcp) = &service.tcp else { continue };
        let path = format!("services.{name}.tcp.port");
        let span = node_at(root, &["services", name, "tcp", "port"]).map_or(root.span, |n| n.span);
        let shared = passthrough.get(&tcp.port);
        if let Some(names) = shared
            && !tcp.sni.is_empty()
        {
            for server in &tcp.sni {
                if let Some(other) = names.get(server.as_str()) {
                    reader.error(
                        &format!("services.{name}.tcp.sni"),
                        node_at(root, &["services", name, "tcp", "sni"]).map_or(span, |n| n.span),
                        format!(
                            "{server} on port {} is already passed to `{other}`",
                            tcp.port
                        ),
                        Some("a server name goes to one service".to_string()),
                    );
                }
            }
        }
        if !tcp.sni.is_empty() && (shared.is_some() || !routes.contains_key(&tcp.port)) {
            let names = passthrough.entry(tcp.port).or_default();
            for server in &tcp.sni {
                names.entry(server.as_str()).or_insert(name.as_str());
            }
            routes.entry(tcp.port).or_insert_with(|| name.clone());
            continue;
        }
        if let Some(owner) = routes.get(&tcp.port) {
            let owner = if owner.starts_with("edge.") {
                owner.clone()
            } else if passthrough.contains_key(&tcp.port) {
                format!("the TLS passthrough routes of `{owner}`")
            } else {
                format!("the TCP route of `{owner}`")
            };
            reader.error(
                &path,
                span,
                format!("port {} is already used by {owner}", tcp.port),
                Some("each TCP route needs a port of its own (TLS passthrough routes, with `sni:`, may share one)".to_string()),
            );
        } else {
            routes.insert(tcp.port, name.clone());
        }
    }
}

fn secrets(spec: &Spec, root: &Node, reader: &mut Reader) {
    for (name, service) in &spec.services {
        for (variable, value) in &service.env {
            for secret in secret_references(value) {
                if !service.secrets.iter().any(|s| s == secret) {
                    let span = node_at(root, &["services", name, "env", variable])
                        .map_or(root.span, |n| n.span);
                    reader.error(
                        &join(&format!("services.{name}.env"), variable),
                        span,
                        format!("secret `{secret}` is referenced but not listed in services.{name}.secrets"),
                        Some(format!("add `{secret}` to `secrets:` of `{name}`")),
                    );
                }
            }
        }
    }
}

/// `${postgres:SERVICE}` names a postgres service, and the service using it lists that
/// service's password secret (the URL carries the password).
fn database_urls(spec: &Spec, root: &Node, reader: &mut Reader) {
    for (name, service) in &spec.services {
        for (variable, value) in &service.env {
            for target in postgres_references(value) {
                let span = node_at(root, &["services", name, "env", variable])
                    .map_or(root.span, |n| n.span);
                let path = join(&format!("services.{name}.env"), variable);
                let Some((target, postgres, _)) = spec.database(target) else {
                    let databases = spec
                        .services
                        .iter()
                        .filter(|(_, s)| matches!(s.workload, Workload::Postgres(_)))
                        .map(|(n, _)| n.as_str());
                    let hint = match did_you_mean(target, databases.clone()) {
                        Some(close) => format!("did you mean `${{postgres:{close}}}`?"),
                        None => format!(
                            "postgres services here: {}",
                            databases.collect::<Vec<_>>().join(", ")
                        ),
                    };
                    reader.error(
                        &path,
                        span,
                        format!("`${{postgres:{target}}}` names no postgres service"),
                        Some(hint),
                    );
                    continue;
                };
                if !service.secrets.contains(&postgres.password_secret) {
                    reader.error(
                        &path,
                        span,
                        format!(
                            "`${{postgres:{target}}}` carries {target}'s password, and `{name}` does not list its secret `{}`",
                            postgres.password_secret
                        ),
                        Some(format!(
                            "add `{}` to `secrets:` of `{name}`",
                            postgres.password_secret
                        )),
                    );
                }
            }
        }
    }
}

/// The replicas of a postgres service are reached as `<service>-ro`: no service may be
/// called that.
fn replica_names(spec: &Spec, root: &Node, reader: &mut Reader) {
    for (name, service) in &spec.services {
        let Workload::Postgres(postgres) = &service.workload else {
            continue;
        };
        let Some(replica) = postgres.replica_name(name) else {
            continue;
        };
        if spec.services.contains_key(&replica) {
            let span = node_at(root, &["services", &replica]).map_or(root.span, |n| n.blame());
            reader.error(
                &join("services", &replica),
                span,
                format!("`{replica}` is the name of {name}'s read replicas (postgres.replicas)"),
                Some(format!(
                    "rename this service, or set postgres.replicas: 0 on {name}"
                )),
            );
        }
    }
}

fn backups(spec: &Spec, root: &Node, reader: &mut Reader) {
    for (name, service) in &spec.services {
        let Some(backup) = &service.backup else {
            continue;
        };
        let path = format!("services.{name}.backup");
        let span_of = |key: Option<&str>| {
            let mut at = vec!["services", name.as_str(), "backup"];
            at.extend(key);
            node_at(root, &at)
                .map(Node::blame)
                .or_else(|| node_at(root, &at[..3]).map(Node::blame))
                .unwrap_or(root.span)
        };
        if !matches!(service.workload, Workload::Postgres(_)) {
            if !service.volumes.iter().any(|v| !v.read_only) {
                reader.error(
                    &path,
                    span_of(None),
                    "nothing to back up: the service is not a postgres service and has no writable volumes",
                    Some("add `volumes:` or move the backup to the database service".to_string()),
                );
                continue;
            }
            // A volume backup is a tar of the volumes: kind and pitr are PostgreSQL's.
            for key in ["kind", "pitr"] {
                if node_at(root, &["services", name.as_str(), "backup", key]).is_some() {
                    reader.error(
                        &join(&path, key),
                        span_of(Some(key)),
                        format!("`{key}` applies to postgres backups only: a service's volumes are backed up as a tar"),
                        Some(format!("remove `{key}:`")),
                    );
                }
            }
        }
        // pitr: true takes base backups; an explicit `kind: logical` beside it contradicts it.
        let kind_written = node_at(root, &["services", name.as_str(), "backup", "kind"]).is_some();
        if backup.pitr && kind_written && backup.kind == crate::schema::BackupKind::Logical {
            reader.error(
                &join(&path, "kind"),
                span_of(Some("kind")),
                "point-in-time recovery replays WAL onto base backups, not onto logical ones",
                Some("remove `kind: logical` (with `pitr: true` the backups are base backups), or remove `pitr:`".to_string()),
            );
        }
        for key in ["access_key_secret", "secret_key_secret"] {
            let value = match key {
                "access_key_secret" => &backup.access_key_secret,
                _ => &backup.secret_key_secret,
            };
            match value {
                Some(secret) if !crate::is_secret_name(secret) => reader.error(
                    &join(&path, key),
                    span_of(Some(key)),
                    format!("{secret:?} is not a secret name (letters, digits, `_`, `-`)"),
                    None,
                ),
                None if backup.to.starts_with("s3://") => reader.error(
                    &join(&path, "to"),
                    span_of(Some("to")),
                    format!("an s3:// destination needs its credentials: `{key}:` is missing"),
                    Some(
                        "name the secrets that hold them: `access_key_secret: s3_key_id`, `secret_key_secret: s3_secret_key` (set with `bow secret set`)"
                            .to_string(),
                    ),
                ),
                _ => {}
            }
        }
    }
}
