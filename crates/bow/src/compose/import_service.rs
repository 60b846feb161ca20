//! The services of a Compose file, field by field (`bow import`; see import.rs).

use std::collections::BTreeMap;

use bow_spec::diag::Span;
use bow_spec::yaml::{Node, NodeKind};

use super::emit::{Block, quote};
use super::import::Importer;
use super::values::{
    Items, bow_name, duration, memory_size, merged_entries, shell_word, traefik_routes,
};

impl Importer<'_> {
    pub(super) fn service(
        &mut self,
        service_name: &str,
        node: &Node,
        names: &BTreeMap<String, String>,
        out: &mut Block,
    ) {
        let entries = merged_entries(node);
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let mut routes: Vec<String> = Vec::new();
        let mut fields = Block::default();
        let mut health: Option<Block> = None;
        let mut deploy = Block::default();
        let mut resources = Block::default();
        let mut image_is_postgres = None;
        for (key, value) in &entries {
            let field = key.scalar().unwrap_or_default();
            match field {
                "image" => {
                    if let Some(image) = self.text(value) {
                        if image.starts_with("postgres:") || image == "postgres" || image.starts_with("library/postgres") {
                            image_is_postgres = Some((image.clone(), key.span));
                        }
                        fields.line(2, &format!("image: {}", quote(&image)));
                    }
                }
                "build" => self.build(value, &mut fields),
                "command" | "entrypoint" => {
                    if let Some(text) = self.command(value) {
                        fields.line(2, &format!("{field}: {text}"));
                    }
                }
                "environment" => self.environment(value, &mut env),
                "env_file" => self.env_files(value, &mut env),
                "ports" => self.ports(value, &mut fields),
                "expose" => {
                    let first = value.kind_items().first().and_then(|n| n.scalar()).map(str::to_string);
                    if let Some(port) = first.and_then(|p| p.split('/').next().map(str::to_string)) {
                        fields.line(2, &format!("container_port: {port}"));
                    }
                }
                "volumes" => self.volumes(value, &mut fields),
                "depends_on" => self.depends_on(value, names, &mut fields),
                "healthcheck" => health = self.healthcheck(value),
                "secrets" => self.secrets(value, &mut fields),
                "deploy" => self.deploy(value, &mut deploy, &mut resources, &mut fields, &mut routes),
                "labels" => self.labels(value, &mut routes),
                "user" => {
                    if let Some(user) = self.text(value) {
                        fields.line(2, &format!("user: {}", quote(&user)));
                    }
                }
                "working_dir" => {
                    if let Some(dir) = self.text(value) {
                        fields.line(2, &format!("working_dir: {}", quote(&dir)));
                    }
                }
                "stop_grace_period" => {
                    if let Some(duration) = self.text(value).and_then(|d| duration(&d)) {
                        fields.line(2, &format!("stop_timeout: {duration}"));
                    }
                }
                "mem_limit" => {
                    if let Some(memory) = self.text(value) {
                        resources.line(3, &format!("memory: {}", quote(&memory_size(&memory))));
                    }
                }
                "cpus" => {
                    if let Some(cpus) = self.text(value) {
                        resources.line(3, &format!("cpu: {cpus}"));
                    }
                }
                "restart" => self.note(key.span, "restart: bow restarts every service that ends (with backoff); nothing to set"),
                "container_name" | "hostname" => self.note(
                    key.span,
                    &format!("{field}: bow names instances <service>.<n> and services by name; not translated"),
                ),
                "networks" | "network_mode" | "links" | "extra_hosts" | "dns" => self.note(
                    key.span,
                    &format!("{field}: not translated (every service reaches every other by name on bow's own network)"),
                ),
                "logging" => self.note(key.span, "logging: bow captures every service's output itself (`bow logs`)"),
                other => self.note(key.span, &format!("{other}: no bow equivalent; not translated")),
            }
        }
        if let Some((image, span)) = image_is_postgres {
            // The official image becomes bow's own postgres service: same server, same role,
            // database and password; bow does init, health, backups.
            let version = image
                .rsplit_once(':')
                .and_then(|(_, tag)| tag.split(['.', '-']).next()?.parse::<u32>().ok())
                .unwrap_or(15);
            let user = env
                .remove("POSTGRES_USER")
                .unwrap_or_else(|| "postgres".to_string());
            let database = env.remove("POSTGRES_DB").unwrap_or_else(|| user.clone());
            let secret = match env.remove("POSTGRES_PASSWORD_FILE") {
                Some(file) => file
                    .rsplit('/')
                    .next()
                    .unwrap_or("db_password")
                    .replace('.', "_"),
                None => {
                    let name = format!("{}_password", bow_name(service_name).replace('-', "_"));
                    if env.remove("POSTGRES_PASSWORD").is_some() {
                        self.note(span, &format!("POSTGRES_PASSWORD: the password becomes the secret {name}: `bow secret set {name}` (it is not written to bow.yaml)"));
                    }
                    name
                }
            };
            env.retain(|k, _| !k.starts_with("POSTGRES_") && k != "PGDATA");
            self.note(span, &format!("{image}: runs as bow's postgres service (PostgreSQL {version} from the host's packages; data in a bow-managed volume, health is a real query, backups with `backup:`); move existing data with pg_dump/pg_restore"));
            let mut kept = Block::default();
            for (level, text) in fields.lines() {
                if ["image:", "container_port:", "volumes:", "secrets:"]
                    .iter()
                    .any(|p| text.starts_with(p))
                {
                    continue;
                }
                kept.line(level, &text);
            }
            kept.line(
                2,
                &format!(
                    "postgres: {{ version: {version}, database: {}, user: {}, password_secret: {} }}",
                    quote(&database),
                    quote(&user),
                    quote(&secret)
                ),
            );
            if !kept.lines().iter().any(|(_, t)| t.starts_with("port:")) {
                kept.line(2, "port: 5432");
            }
            fields = kept;
            health = None;
        }
        out.append(fields);
        if !env.is_empty() {
            out.line(2, "env:");
            for (name, value) in &env {
                out.line(3, &format!("{name}: {}", quote(value)));
            }
        }
        if !routes.is_empty() {
            let list: Vec<String> = routes.iter().map(|r| quote(r)).collect();
            out.line(2, &format!("routes: [{}]", list.join(", ")));
        }
        if let Some(health) = health {
            out.line(2, "health:");
            out.append(health);
        }
        if !resources.is_empty() {
            out.line(2, "resources:");
            out.append(resources);
        }
        if !deploy.is_empty() {
            out.line(2, "deploy:");
            out.append(deploy);
        }
    }

    fn build(&mut self, node: &Node, out: &mut Block) {
        if let Some(context) = self.text(node) {
            out.line(2, &format!("build: {{ context: {} }}", quote(&context)));
            return;
        }
        let mut parts = Vec::new();
        for (key, value) in node.entries().unwrap_or_default() {
            match key.scalar().unwrap_or_default() {
                field @ ("context" | "dockerfile" | "target") => {
                    if let Some(text) = self.text(value) {
                        parts.push(format!("{field}: {}", quote(&text)));
                    }
                }
                "args" => {
                    let mut args = BTreeMap::new();
                    self.environment(value, &mut args);
                    let list: Vec<String> = args
                        .iter()
                        .map(|(k, v)| format!("{k}: {}", quote(v)))
                        .collect();
                    parts.push(format!("args: {{ {} }}", list.join(", ")));
                }
                other => self.note(key.span, &format!("build.{other}: not translated (bow builds with context, dockerfile, args and target)")),
            }
        }
        if !parts.iter().any(|p| p.starts_with("context:")) {
            parts.insert(0, "context: \".\"".to_string());
        }
        out.line(2, &format!("build: {{ {} }}", parts.join(", ")));
    }

    fn command(&mut self, node: &Node) -> Option<String> {
        match &node.kind {
            NodeKind::Seq(items) => {
                let words: Vec<String> = items
                    .iter()
                    .filter_map(|item| self.text(item))
                    .map(|w| quote(&w))
                    .collect();
                Some(format!("[{}]", words.join(", ")))
            }
            _ => self.text(node).map(|t| quote(&t)),
        }
    }

    fn environment(&mut self, node: &Node, env: &mut BTreeMap<String, String>) {
        match &node.kind {
            NodeKind::Map(entries) => {
                for (key, value) in entries {
                    let name = key.scalar().unwrap_or_default().to_string();
                    if value.is_null() {
                        match (self.env)(&name) {
                            Some(from_shell) => {
                                env.insert(name, from_shell);
                            }
                            None => self.note(key.span, &format!("{name}: passed from the shell in Compose, not set here; set it in env or as a secret")),
                        }
                    } else if let Some(text) = self.text(value) {
                        env.insert(name, text);
                    }
                }
            }
            NodeKind::Seq(items) => {
                for item in items {
                    let Some(text) = self.text(item) else {
                        continue;
                    };
                    match text.split_once('=') {
                        Some((name, value)) => {
                            env.insert(name.to_string(), value.to_string());
                        }
                        None => match (self.env)(&text) {
                            Some(from_shell) => {
                                env.insert(text, from_shell);
                            }
                            None => self.note(
                                item.span,
                                &format!("{text}: passed from the shell in Compose, not set here"),
                            ),
                        },
                    }
                }
            }
            _ => {}
        }
    }

    fn env_files(&mut self, node: &Node, env: &mut BTreeMap<String, String>) {
        let files: Vec<(String, Span)> = match &node.kind {
            NodeKind::Seq(items) => items
                .iter()
                .filter_map(|i| {
                    let path = i
                        .scalar()
                        .map(str::to_string)
                        .or_else(|| i.get("path")?.scalar().map(str::to_string))?;
                    Some((path, i.span))
                })
                .collect(),
            _ => node
                .scalar()
                .map(|p| vec![(p.to_string(), node.span)])
                .unwrap_or_default(),
        };
        for (file, span) in files {
            let path = self.base.join(&file);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    for line in text.lines() {
                        let line = line.trim();
                        if line.is_empty() || line.starts_with('#') {
                            continue;
                        }
                        let line = line.strip_prefix("export ").unwrap_or(line);
                        if let Some((name, value)) = line.split_once('=') {
                            let value = value.trim();
                            let value = value
                                .strip_prefix('"')
                                .and_then(|v| v.strip_suffix('"'))
                                .or_else(|| {
                                    value.strip_prefix('\'').and_then(|v| v.strip_suffix('\''))
                                })
                                .unwrap_or(value);
                            env.insert(name.trim().to_string(), value.to_string());
                        }
                    }
                    self.note(span, &format!("env_file {file}: its variables are written into env (values that are secrets belong in `bow secret set`)"));
                }
                Err(error) => self.note(
                    span,
                    &format!("env_file {file}: cannot read it ({error}); not translated"),
                ),
            }
        }
    }

    fn ports(&mut self, node: &Node, out: &mut Block) {
        let mut first = true;
        for item in node.kind_items() {
            let (published, target) = if let Some(text) = self.text(item) {
                let text = text.split('/').next().unwrap_or_default().to_string();
                let parts: Vec<&str> = text.split(':').collect();
                match parts.as_slice() {
                    [target] => (None, target.to_string()),
                    [published, target] => (Some(published.to_string()), target.to_string()),
                    [_, published, target] => (Some(published.to_string()), target.to_string()),
                    _ => (None, String::new()),
                }
            } else {
                (
                    item.get("published")
                        .and_then(|p| p.scalar())
                        .map(str::to_string),
                    item.get("target")
                        .and_then(|t| t.scalar())
                        .unwrap_or_default()
                        .to_string(),
                )
            };
            if target.parse::<u16>().is_err() {
                self.note(item.span, "a port range or unreadable port: not translated");
                continue;
            }
            if !first {
                self.note(item.span, &format!("port {target}: bow routes one port per service; add another service or a route for it"));
                continue;
            }
            first = false;
            out.line(2, &format!("container_port: {target}"));
            if let Some(published) = published.filter(|p| p.parse::<u16>().is_ok()) {
                out.line(2, &format!("port: {published}"));
                self.note(item.span, &format!("ports {published}:{target}: the service is reached by name on port {published} and through the edge's routes; bow publishes nothing on the host's public addresses"));
            }
        }
    }

    fn volumes(&mut self, node: &Node, out: &mut Block) {
        let mut list = Vec::new();
        for item in node.kind_items() {
            let volume = if let Some(text) = self.text(item) {
                let parts: Vec<&str> = text.split(':').collect();
                match parts.as_slice() {
                    [_target] => {
                        self.note(item.span, &format!("{text}: an anonymous volume; give it a name (name:{text}) to keep its data"));
                        continue;
                    }
                    [source, target] => format!("{source}:{target}"),
                    [source, target, mode] if mode.split(',').any(|m| m == "ro") => {
                        format!("{source}:{target}:ro")
                    }
                    [source, target, _] => format!("{source}:{target}"),
                    _ => {
                        self.note(item.span, &format!("{text}: not a volume bow reads"));
                        continue;
                    }
                }
            } else {
                let kind = item
                    .get("type")
                    .and_then(|t| t.scalar())
                    .unwrap_or("volume");
                let source = item
                    .get("source")
                    .and_then(|s| s.scalar())
                    .unwrap_or_default();
                let target = item
                    .get("target")
                    .and_then(|t| t.scalar())
                    .unwrap_or_default();
                let read_only = item.get("read_only").and_then(|r| r.scalar()) == Some("true");
                if kind == "tmpfs" || source.is_empty() {
                    self.note(
                        item.span,
                        &format!("a {kind} mount at {target}: not translated"),
                    );
                    continue;
                }
                format!("{source}:{target}{}", if read_only { ":ro" } else { "" })
            };
            list.push(quote(&volume));
        }
        if !list.is_empty() {
            out.line(2, &format!("volumes: [{}]", list.join(", ")));
        }
    }

    fn depends_on(&mut self, node: &Node, names: &BTreeMap<String, String>, out: &mut Block) {
        let mut list = Vec::new();
        match &node.kind {
            NodeKind::Seq(items) => {
                for item in items {
                    if let Some(name) = item.scalar() {
                        list.push(names.get(name).cloned().unwrap_or_else(|| bow_name(name)));
                    }
                }
            }
            NodeKind::Map(entries) => {
                for (key, value) in entries {
                    let name = key.scalar().unwrap_or_default();
                    if value.get("condition").and_then(|c| c.scalar())
                        == Some("service_completed_successfully")
                    {
                        self.note(key.span, &format!("{name}: a one-off task to wait for; bow runs services, not tasks (run it before `bow up`)"));
                        continue;
                    }
                    list.push(names.get(name).cloned().unwrap_or_else(|| bow_name(name)));
                }
            }
            _ => {}
        }
        if !list.is_empty() {
            out.line(2, &format!("depends_on: [{}]", list.join(", ")));
        }
    }

    fn healthcheck(&mut self, node: &Node) -> Option<Block> {
        if node.get("disable").and_then(|d| d.scalar()) == Some("true") {
            return None;
        }
        let mut block = Block::default();
        let test = node.get("test")?;
        let command = match &test.kind {
            NodeKind::Seq(items) => {
                let words: Vec<String> = items.iter().filter_map(|i| self.text(i)).collect();
                match words.first().map(String::as_str) {
                    Some("NONE") => return None,
                    Some("CMD-SHELL") => words.get(1).cloned().unwrap_or_default(),
                    Some("CMD") => words[1..]
                        .iter()
                        .map(|w| shell_word(w))
                        .collect::<Vec<_>>()
                        .join(" "),
                    _ => words
                        .iter()
                        .map(|w| shell_word(w))
                        .collect::<Vec<_>>()
                        .join(" "),
                }
            }
            _ => self.text(test).unwrap_or_default(),
        };
        block.line(3, &format!("exec: {}", quote(&command)));
        for field in ["interval", "timeout", "start_period"] {
            if let Some(value) = node
                .get(field)
                .and_then(|v| self.text(v))
                .and_then(|d| duration(&d))
            {
                block.line(3, &format!("{field}: {value}"));
            }
        }
        if let Some(retries) = node.get("retries").and_then(|r| r.scalar()) {
            block.line(3, &format!("retries: {retries}"));
        }
        Some(block)
    }

    fn secrets(&mut self, node: &Node, out: &mut Block) {
        let mut list = Vec::new();
        for item in node.kind_items() {
            let name = match item.scalar() {
                Some(name) => name.to_string(),
                None => {
                    let source = item
                        .get("source")
                        .and_then(|s| s.scalar())
                        .unwrap_or_default()
                        .to_string();
                    if let Some(target) = item.get("target").and_then(|t| t.scalar())
                        && target != source
                    {
                        self.note(item.span, &format!("secret {source} as {target}: bow delivers it as /run/secrets/{source}"));
                    }
                    source
                }
            };
            if !name.is_empty() {
                list.push(name.replace('.', "_"));
            }
        }
        if !list.is_empty() {
            out.line(2, &format!("secrets: [{}]", list.join(", ")));
        }
    }

    fn deploy(
        &mut self,
        node: &Node,
        deploy: &mut Block,
        resources: &mut Block,
        fields: &mut Block,
        _routes: &mut Vec<String>,
    ) {
        for (key, value) in node.entries().unwrap_or_default() {
            match key.scalar().unwrap_or_default() {
                "replicas" => {
                    if let Some(replicas) = value.scalar() {
                        fields.line(2, &format!("replicas: {replicas}"));
                    }
                }
                "update_config" => {
                    let order = value.get("order").and_then(|o| o.scalar());
                    deploy.line(3, "strategy: rolling");
                    if order == Some("stop-first") {
                        self.note(key.span, "update_config order stop-first: bow's rolling deploys start the new instance first (no request fails)");
                    }
                    if let Some(parallelism) = value
                        .get("parallelism")
                        .and_then(|p| p.scalar())
                        .filter(|p| *p != "0")
                    {
                        deploy.line(3, &format!("max_surge: {parallelism}"));
                    }
                    for (k, _) in value.entries().unwrap_or_default() {
                        let name = k.scalar().unwrap_or_default();
                        if !matches!(name, "order" | "parallelism") {
                            self.note(k.span, &format!("update_config.{name}: bow's deploys wait for health and roll back by themselves"));
                        }
                    }
                }
                "resources" => {
                    if let Some(limits) = value.get("limits") {
                        if let Some(memory) = limits.get("memory").and_then(|m| self.text(m)) {
                            resources.line(3, &format!("memory: {}", quote(&memory_size(&memory))));
                        }
                        if let Some(cpus) = limits.get("cpus").and_then(|c| self.text(c)) {
                            resources.line(3, &format!("cpu: {}", cpus.trim_matches('\'')));
                        }
                    }
                    if let Some(reservations) = value.get("reservations") {
                        self.note(
                            reservations.blame(),
                            "resources.reservations: not translated (bow sets limits)",
                        );
                    }
                }
                "restart_policy" => self.note(
                    key.span,
                    "restart_policy: bow restarts every service that ends, with backoff",
                ),
                "placement" => self.note(
                    key.span,
                    "placement: one host here; several hosts use `placement:` (docs/hosts.md)",
                ),
                "mode" if value.scalar() == Some("global") => self.note(
                    key.span,
                    "mode global: one instance per host; here, one host: replicas 1",
                ),
                "mode" => {}
                "labels" => self.labels(value, _routes),
                other => self.note(key.span, &format!("deploy.{other}: not translated")),
            }
        }
    }

    /// Traefik-style routers (`traefik.http.routers.NAME.rule=Host(`a`) && PathPrefix(`/x`)`)
    /// become routes; other labels are notes.
    fn labels(&mut self, node: &Node, routes: &mut Vec<String>) {
        let pairs: Vec<(String, String, Span)> = match &node.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .map(|(k, v)| {
                    (
                        k.scalar().unwrap_or_default().to_string(),
                        v.scalar().unwrap_or_default().to_string(),
                        k.span,
                    )
                })
                .collect(),
            NodeKind::Seq(items) => items
                .iter()
                .filter_map(|i| {
                    let (k, v) = i.scalar()?.split_once('=')?;
                    Some((k.to_string(), v.to_string(), i.span))
                })
                .collect(),
            _ => Vec::new(),
        };
        for (key, value, span) in pairs {
            if key.starts_with("traefik.http.routers.") && key.ends_with(".rule") {
                let found = traefik_routes(&value);
                if found.is_empty() {
                    self.note(
                        span,
                        &format!("{key}: a rule bow cannot read ({value}); add routes by hand"),
                    );
                }
                for route in found {
                    if !routes.contains(&route) {
                        routes.push(route);
                    }
                }
            } else if key.starts_with("traefik.") {
                if key != "traefik.enable" {
                    self.note(span, &format!("{key}: bow's edge needs no other label (TLS, ports and balancing are its own)"));
                }
            } else {
                self.note(span, &format!("label {key}: not translated"));
            }
        }
    }
}
