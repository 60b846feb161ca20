//! `bow export compose|kubernetes`: the resolved stack of an environment for teams that move
//! on. Container services translate one to one; a postgres service becomes the official
//! image with its role, database and password file; process services have no container to
//! run and are listed as notes. Secret values are never written: Compose gets external
//! secrets, Kubernetes Secrets with empty values to fill in.

use std::collections::BTreeMap;

use bow_spec::{Check, CommandLine, Service, Spec, TcpTarget, VolumeSource, Workload};

use super::emit::{Block, quote};

/// The text and what could not be exported.
pub struct Exported {
    pub text: String,
    pub notes: Vec<String>,
}

fn argv(command: &CommandLine) -> Vec<String> {
    match command {
        CommandLine::Argv(argv) => argv.clone(),
        CommandLine::Shell(line) => {
            bow_driver::command_to_argv(line).unwrap_or_else(|_| vec![line.clone()])
        }
    }
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| quote(i)).collect();
    format!("[{}]", quoted.join(", "))
}

/// The port a service's program listens on inside its container.
fn inner_port(service: &Service) -> Option<u16> {
    match &service.workload {
        Workload::Container(c) => c.container_port.or(service.port),
        Workload::Postgres(_) => Some(5432),
        Workload::Command(_) | Workload::Proxy(_) => service.port,
    }
}

/// The env a service's program sees, minus references to secrets (their values stay out).
fn plain_env(name: &str, service: &Service, notes: &mut Vec<String>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (key, value) in &service.env {
        if value.contains("${secret:") || value.contains("${postgres:") {
            notes.push(format!(
                "{name}: env {key} refers to a secret; the export leaves it out (read /run/secrets instead)"
            ));
            continue;
        }
        env.insert(key.clone(), value.clone());
    }
    env
}

/// The check as a command run inside the container.
fn check_command(check: &Check, port: Option<u16>) -> Option<String> {
    match check {
        Check::Exec(command) => Some(command.clone()),
        Check::Http(path) => {
            port.map(|port| format!("wget -q -O /dev/null http://127.0.0.1:{port}{path} || exit 1"))
        }
        Check::Tcp(TcpTarget::Port(port)) => Some(format!("nc -z 127.0.0.1 {port} || exit 1")),
        Check::Tcp(TcpTarget::InstancePort(_)) => {
            port.map(|port| format!("nc -z 127.0.0.1 {port} || exit 1"))
        }
    }
}

/// The stack as a Compose file.
pub fn compose(spec: &Spec) -> Exported {
    let mut notes = Vec::new();
    let mut out = Block::default();
    out.line(
        0,
        &format!("# {} ({}), exported by bow", spec.project, spec.environment),
    );
    out.line(0, "services:");
    let mut secrets: Vec<String> = Vec::new();
    let mut volumes: Vec<String> = Vec::new();
    for (name, service) in &spec.services {
        let mut env = plain_env(name, service, &mut notes);
        let mut block = Block::default();
        match &service.workload {
            Workload::Command(_) => {
                notes.push(format!(
                    "{name}: a process service (command in {}); Compose runs containers: build an image for it",
                    service.dir.as_deref().unwrap_or(".")
                ));
                continue;
            }
            Workload::Proxy(api) => {
                notes.push(format!(
                    "{name}: an outside API ({}) that bow's agent calls with injected headers; Compose has no equivalent: call it directly",
                    api.to
                ));
                continue;
            }
            Workload::Container(container) => {
                if let Some(build) = &container.build {
                    block.line(2, "build:");
                    block.line(3, &format!("context: {}", quote(&build.context)));
                    if let Some(dockerfile) = &build.dockerfile {
                        block.line(3, &format!("dockerfile: {}", quote(dockerfile)));
                    }
                    if let Some(target) = &build.target {
                        block.line(3, &format!("target: {}", quote(target)));
                    }
                    if !build.args.is_empty() {
                        block.line(3, "args:");
                        for (key, value) in &build.args {
                            block.line(4, &format!("{key}: {}", quote(value)));
                        }
                    }
                }
                if let Some(image) = &container.image {
                    block.line(2, &format!("image: {}", quote(image)));
                }
                if let Some(entrypoint) = &container.entrypoint {
                    block.line(2, &format!("entrypoint: {}", list(&argv(entrypoint))));
                }
                if let Some(command) = &container.command {
                    block.line(2, &format!("command: {}", list(&argv(command))));
                }
                if let Some(dir) = &container.working_dir {
                    block.line(2, &format!("working_dir: {}", quote(dir)));
                }
                if let Some(user) = &service.user {
                    block.line(2, &format!("user: {}", quote(user)));
                }
                if container.container_port.is_none()
                    && let Some(port) = service.port
                {
                    env.insert("PORT".into(), port.to_string());
                }
            }
            Workload::Postgres(postgres) => {
                block.line(2, &format!("image: \"postgres:{}\"", postgres.version));
                env.insert("POSTGRES_USER".into(), postgres.user.clone());
                env.insert("POSTGRES_DB".into(), postgres.database.clone());
                env.insert(
                    "POSTGRES_PASSWORD_FILE".into(),
                    format!("/run/secrets/{}", postgres.password_secret),
                );
                if !secrets.contains(&postgres.password_secret) {
                    secrets.push(postgres.password_secret.clone());
                }
                block.line(
                    2,
                    &format!("secrets: [{}]", quote(&postgres.password_secret)),
                );
                let data = format!("{name}-data");
                block.line(
                    2,
                    &format!(
                        "volumes: [{}]",
                        quote(&format!("{data}:/var/lib/postgresql/data"))
                    ),
                );
                volumes.push(data);
            }
        }
        if !env.is_empty() {
            block.line(2, "environment:");
            for (key, value) in &env {
                block.line(3, &format!("{key}: {}", quote(value)));
            }
        }
        if let (Some(port), Some(inner)) = (service.port, inner_port(service)) {
            block.line(
                2,
                &format!("ports: [{}]", quote(&format!("127.0.0.1:{port}:{inner}"))),
            );
        } else if let Some(inner) = inner_port(service) {
            block.line(2, &format!("expose: [{}]", quote(&inner.to_string())));
        }
        let mounts: Vec<String> = service
            .volumes
            .iter()
            .map(|v| {
                let source = match &v.source {
                    VolumeSource::Named(n) => {
                        if !volumes.contains(n) {
                            volumes.push(n.clone());
                        }
                        n.clone()
                    }
                    VolumeSource::Path(p) => p.clone(),
                };
                format!(
                    "{source}:{}{}",
                    v.target,
                    if v.read_only { ":ro" } else { "" }
                )
            })
            .collect();
        if !mounts.is_empty() {
            block.line(2, &format!("volumes: {}", list(&mounts)));
        }
        if !service.secrets.is_empty() {
            block.line(2, &format!("secrets: {}", list(&service.secrets)));
            for secret in &service.secrets {
                if !secrets.contains(secret) {
                    secrets.push(secret.clone());
                }
            }
        }
        if !service.depends_on.is_empty() {
            block.line(2, "depends_on:");
            for dependency in &service.depends_on {
                let healthy = spec.services.get(dependency).is_some_and(|d| {
                    d.health.is_some() && !matches!(d.workload, Workload::Command(_))
                });
                block.line(3, &format!("{dependency}:"));
                let condition = if healthy {
                    "service_healthy"
                } else {
                    "service_started"
                };
                block.line(4, &format!("condition: {condition}"));
            }
        }
        if let Some(health) = &service.health
            && let Some(command) = check_command(&health.check, inner_port(service))
        {
            block.line(2, "healthcheck:");
            block.line(3, &format!("test: [\"CMD-SHELL\", {}]", quote(&command)));
            block.line(3, &format!("interval: {}", health.interval));
            block.line(3, &format!("timeout: {}", health.timeout));
            block.line(3, &format!("retries: {}", health.retries));
            block.line(3, &format!("start_period: {}", health.start_period));
        }
        block.line(2, &format!("stop_grace_period: {}", service.stop_timeout));
        block.line(2, "deploy:");
        block.line(3, &format!("replicas: {}", service.replicas));
        block.line(3, "update_config:");
        block.line(4, "order: start-first");
        block.line(4, &format!("parallelism: {}", service.deploy.max_surge));
        if service.resources.memory.is_some() || service.resources.cpu.is_some() {
            block.line(3, "resources:");
            block.line(4, "limits:");
            if let Some(memory) = &service.resources.memory {
                block.line(5, &format!("memory: {}", quote(&memory.to_string())));
            }
            if let Some(cpu) = service.resources.cpu {
                block.line(5, &format!("cpus: {}", quote(&cpu.to_string())));
            }
        }
        if !service.routes.is_empty() {
            let rule: Vec<String> = service
                .routes
                .iter()
                .map(|r| {
                    if r.path == "/" {
                        format!("Host(`{}`)", r.host)
                    } else {
                        format!("(Host(`{}`) && PathPrefix(`{}`))", r.host, r.path)
                    }
                })
                .collect();
            block.line(2, "labels:");
            block.line(3, "traefik.enable: \"true\"");
            block.line(
                3,
                &format!(
                    "traefik.http.routers.{name}.rule: {}",
                    quote(&rule.join(" || "))
                ),
            );
            notes.push(format!(
                "{name}: its routes are written as Traefik labels; bow's edge (TLS, draining) is not part of the export"
            ));
        }
        out.line(1, &format!("{name}:"));
        out.append(block);
    }
    if !secrets.is_empty() {
        out.line(0, "secrets:");
        for secret in &secrets {
            out.line(1, &format!("{secret}:"));
            out.line(2, "external: true");
        }
        notes.push(format!(
            "secrets ({}) are external: create them in the target (their values are not exported)",
            secrets.join(", ")
        ));
    }
    if !volumes.is_empty() {
        out.line(0, "volumes:");
        for volume in &volumes {
            out.line(1, &format!("{volume}: {{}}"));
        }
    }
    Exported {
        text: out.text(),
        notes,
    }
}

/// The stack as Kubernetes objects: a Deployment and a Service per service (an Ingress for
/// routes, a PersistentVolumeClaim per named volume, a Secret per secret with no value).
pub fn kubernetes(spec: &Spec) -> Exported {
    let mut notes = Vec::new();
    let mut docs: Vec<Block> = Vec::new();
    let mut secrets: Vec<String> = Vec::new();
    let mut claims: Vec<String> = Vec::new();
    let labels = |name: &str, level: usize, block: &mut Block| {
        block.line(level, &format!("app.kubernetes.io/name: {}", quote(name)));
        block.line(
            level,
            &format!("app.kubernetes.io/part-of: {}", quote(&spec.project)),
        );
    };
    for (name, service) in &spec.services {
        let env = plain_env(name, service, &mut notes);
        let (image, args, command) = match &service.workload {
            Workload::Command(_) => {
                notes.push(format!(
                    "{name}: a process service; Kubernetes runs containers: build an image for it"
                ));
                continue;
            }
            Workload::Proxy(api) => {
                notes.push(format!(
                    "{name}: an outside API ({}) that bow's agent calls with injected headers; use an ExternalName Service or an egress proxy",
                    api.to
                ));
                continue;
            }
            Workload::Container(c) => (
                c.image
                    .clone()
                    .unwrap_or_else(|| format!("{}-{name}:latest", spec.project)),
                c.command.as_ref().map(argv),
                c.entrypoint.as_ref().map(argv),
            ),
            Workload::Postgres(p) => (format!("postgres:{}", p.version), None, None),
        };
        if let Workload::Container(c) = &service.workload
            && c.build.is_some()
            && c.image.is_none()
        {
            notes.push(format!(
                "{name}: built by bow; push the image and set its name ({}-{name}:latest here)",
                spec.project
            ));
        }
        let mut d = Block::default();
        d.line(0, "apiVersion: apps/v1");
        d.line(0, "kind: Deployment");
        d.line(0, "metadata:");
        d.line(1, &format!("name: {}", quote(name)));
        d.line(1, "labels:");
        labels(name, 2, &mut d);
        d.line(0, "spec:");
        d.line(1, &format!("replicas: {}", service.replicas));
        d.line(1, "strategy:");
        d.line(2, "type: RollingUpdate");
        d.line(2, "rollingUpdate:");
        d.line(3, &format!("maxSurge: {}", service.deploy.max_surge));
        d.line(3, "maxUnavailable: 0");
        d.line(1, "selector:");
        d.line(2, "matchLabels:");
        d.line(3, &format!("app.kubernetes.io/name: {}", quote(name)));
        d.line(1, "template:");
        d.line(2, "metadata:");
        d.line(3, "labels:");
        labels(name, 4, &mut d);
        d.line(2, "spec:");
        d.line(
            3,
            &format!(
                "terminationGracePeriodSeconds: {}",
                service.stop_timeout.as_std().as_secs()
            ),
        );
        d.line(3, "containers:");
        d.line(4, &format!("- name: {}", quote(name)));
        d.line(5, &format!("image: {}", quote(&image)));
        if let Some(command) = command {
            d.line(5, &format!("command: {}", list(&command)));
        }
        if let Some(args) = args {
            d.line(5, &format!("args: {}", list(&args)));
        }
        let port = inner_port(service);
        let mut all_env: Vec<(String, String)> = env.into_iter().collect();
        if let (Workload::Container(c), Some(port)) = (&service.workload, port)
            && c.container_port.is_none()
        {
            all_env.push(("PORT".into(), port.to_string()));
        }
        if let Workload::Postgres(p) = &service.workload {
            all_env.push(("POSTGRES_USER".into(), p.user.clone()));
            all_env.push(("POSTGRES_DB".into(), p.database.clone()));
            all_env.push((
                "POSTGRES_PASSWORD_FILE".into(),
                format!("/run/secrets/{}", p.password_secret),
            ));
        }
        if !all_env.is_empty() {
            d.line(5, "env:");
            for (key, value) in &all_env {
                d.line(6, &format!("- name: {key}"));
                d.line(7, &format!("value: {}", quote(value)));
            }
        }
        if let Some(port) = port {
            d.line(5, "ports:");
            d.line(6, &format!("- containerPort: {port}"));
        }
        if let Some(health) = &service.health {
            d.line(5, "readinessProbe:");
            match &health.check {
                Check::Http(path) if port.is_some() => {
                    d.line(6, "httpGet:");
                    d.line(7, &format!("path: {}", quote(path)));
                    d.line(7, &format!("port: {}", port.unwrap_or_default()));
                }
                Check::Tcp(_) if port.is_some() => {
                    d.line(6, "tcpSocket:");
                    d.line(7, &format!("port: {}", port.unwrap_or_default()));
                }
                other => {
                    let command = check_command(other, port).unwrap_or_else(|| "true".into());
                    d.line(6, "exec:");
                    d.line(
                        7,
                        &format!("command: [\"/bin/sh\", \"-c\", {}]", quote(&command)),
                    );
                }
            }
            d.line(
                6,
                &format!(
                    "periodSeconds: {}",
                    health.interval.as_std().as_secs().max(1)
                ),
            );
            d.line(
                6,
                &format!(
                    "timeoutSeconds: {}",
                    health.timeout.as_std().as_secs().max(1)
                ),
            );
            d.line(6, &format!("failureThreshold: {}", health.retries));
        }
        if service.resources.memory.is_some() || service.resources.cpu.is_some() {
            d.line(5, "resources:");
            d.line(6, "limits:");
            if let Some(memory) = &service.resources.memory {
                d.line(
                    7,
                    &format!("memory: {}", quote(&format!("{}Mi", memory.bytes() >> 20))),
                );
            }
            if let Some(cpu) = service.resources.cpu {
                d.line(7, &format!("cpu: {}", quote(&cpu.to_string())));
            }
        }
        let mut secret_names: Vec<String> = service.secrets.clone();
        if let Workload::Postgres(p) = &service.workload {
            secret_names.push(p.password_secret.clone());
        }
        let mut mounts: Vec<(String, String, bool, String)> = Vec::new();
        for volume in &service.volumes {
            match &volume.source {
                VolumeSource::Named(n) => {
                    if !claims.contains(n) {
                        claims.push(n.clone());
                    }
                    mounts.push((
                        format!("volume-{n}"),
                        volume.target.clone(),
                        volume.read_only,
                        format!("claim:{n}"),
                    ));
                }
                VolumeSource::Path(p) => notes.push(format!(
                    "{name}: the bind mount {p} has no place in Kubernetes; use a volume"
                )),
            }
        }
        if let Workload::Postgres(_) = &service.workload {
            let claim = format!("{name}-data");
            claims.push(claim.clone());
            mounts.push((
                "data".into(),
                "/var/lib/postgresql/data".into(),
                false,
                format!("claim:{claim}"),
            ));
        }
        if !secret_names.is_empty() {
            mounts.push((
                "secrets".into(),
                "/run/secrets".into(),
                true,
                "secrets".into(),
            ));
        }
        if !mounts.is_empty() {
            d.line(5, "volumeMounts:");
            for (volume, path, read_only, _) in &mounts {
                d.line(6, &format!("- name: {}", quote(volume)));
                d.line(7, &format!("mountPath: {}", quote(path)));
                if *read_only {
                    d.line(7, "readOnly: true");
                }
            }
            d.line(3, "volumes:");
            for (volume, _, _, source) in &mounts {
                d.line(4, &format!("- name: {}", quote(volume)));
                if let Some(claim) = source.strip_prefix("claim:") {
                    d.line(5, "persistentVolumeClaim:");
                    d.line(6, &format!("claimName: {}", quote(claim)));
                } else {
                    d.line(5, "projected:");
                    d.line(6, "sources:");
                    for secret in &secret_names {
                        d.line(7, "- secret:");
                        d.line(8, &format!("name: {}", quote(&secret.replace('_', "-"))));
                        d.line(8, "items:");
                        d.line(9, "- key: value");
                        d.line(10, &format!("path: {}", quote(secret)));
                    }
                }
            }
        }
        for secret in secret_names {
            if !secrets.contains(&secret) {
                secrets.push(secret);
            }
        }
        docs.push(d);
        if let Some(port) = port {
            let mut s = Block::default();
            s.line(0, "apiVersion: v1");
            s.line(0, "kind: Service");
            s.line(0, "metadata:");
            s.line(1, &format!("name: {}", quote(name)));
            s.line(0, "spec:");
            s.line(1, "selector:");
            s.line(2, &format!("app.kubernetes.io/name: {}", quote(name)));
            s.line(1, "ports:");
            s.line(2, &format!("- port: {}", service.port.unwrap_or(port)));
            s.line(3, &format!("targetPort: {port}"));
            docs.push(s);
        }
        if !service.routes.is_empty() && port.is_some() {
            let mut i = Block::default();
            i.line(0, "apiVersion: networking.k8s.io/v1");
            i.line(0, "kind: Ingress");
            i.line(0, "metadata:");
            i.line(1, &format!("name: {}", quote(name)));
            i.line(0, "spec:");
            i.line(1, "rules:");
            for route in &service.routes {
                i.line(2, &format!("- host: {}", quote(&route.host)));
                i.line(3, "http:");
                i.line(4, "paths:");
                i.line(5, &format!("- path: {}", quote(&route.path)));
                i.line(6, "pathType: Prefix");
                i.line(6, "backend:");
                i.line(7, "service:");
                i.line(8, &format!("name: {}", quote(name)));
                i.line(8, "port:");
                i.line(
                    9,
                    &format!("number: {}", service.port.or(port).unwrap_or_default()),
                );
            }
            docs.push(i);
        }
    }
    for claim in &claims {
        let mut c = Block::default();
        c.line(0, "apiVersion: v1");
        c.line(0, "kind: PersistentVolumeClaim");
        c.line(0, "metadata:");
        c.line(1, &format!("name: {}", quote(claim)));
        c.line(0, "spec:");
        c.line(1, "accessModes: [\"ReadWriteOnce\"]");
        c.line(1, "resources:");
        c.line(2, "requests:");
        c.line(3, "storage: \"1Gi\"");
        docs.push(c);
    }
    for secret in &secrets {
        let mut s = Block::default();
        s.line(0, "apiVersion: v1");
        s.line(0, "kind: Secret");
        s.line(0, "metadata:");
        s.line(1, &format!("name: {}", quote(&secret.replace('_', "-"))));
        s.line(0, "type: Opaque");
        s.line(0, "stringData:");
        s.line(1, "value: \"\"");
        docs.push(s);
    }
    if !secrets.is_empty() {
        notes.push(format!(
            "Secrets ({}) are exported without values: fill in stringData.value",
            secrets.join(", ")
        ));
    }
    let text = docs
        .iter()
        .map(Block::text)
        .collect::<Vec<_>>()
        .join("---\n");
    Exported {
        text: format!(
            "# {} ({}), exported by bow\n{text}",
            spec.project, spec.environment
        ),
        notes,
    }
}
