//! One service: its fields, defaults and what runs it (`command`, `image`, `postgres`).

use std::collections::BTreeMap;

use crate::LoadOptions;
use crate::reader::{Fields, Reader, index, join};
use crate::schema::*;
use crate::yaml::{Node, NodeKind};

use super::parts::{backup, health, postgres};
use super::values::is_user_name;
use super::*;

/// A service with defaults in place of fields that have errors; `None` only when it is not a
/// mapping at all.
pub(super) fn service(
    node: &Node,
    path: &str,
    options: &LoadOptions,
    reader: &mut Reader,
) -> Option<Service> {
    let fields = reader.fields(node, path, "a service mapping", SERVICE_KEYS)?;
    let workload = workload(&fields, node, path, reader);
    let is_command = matches!(workload, Some(Workload::Command(_)));
    let mut service = Service {
        workload: workload
            .clone()
            .unwrap_or(Workload::Command(CommandLine::Argv(Vec::new()))),
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
        sandbox: Default::default(),
        tcp: None,
        placement: Placement::default(),
    };
    if let Some(Workload::Proxy(_)) = &workload {
        // No instance runs: the agent listens at the service's address and calls out.
        service.replicas = 0;
        service.port = Some(defaults::PROXY_DEFAULT_PORT);
        if let Some((n, p)) = fields.get("port") {
            service.port = reader.port(n, &p).or(service.port);
        }
        service.workload = workload?;
        return Some(service);
    }
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
            .list(
                n,
                &p,
                "routes like app.example.com, app.example.com/api or {host, path, auth, limits}",
            )
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let item_path = index(&p, position);
            if let Some(route) = super::route::route(item, &item_path, reader) {
                service.routes.push(route);
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
        let in_container = matches!(workload, Some(Workload::Container(_)));
        service.user = reader.nonempty(n, &p, "a unix user name").filter(|user| {
            // Inside a container: a name or uid, with an optional group (`1000:1000`).
            let ok = is_user_name(user)
                || (in_container && is_container_user(user));
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
        && !matches!(workload, Some(Workload::Container(_)))
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
    if let Some((n, p)) = fields.get("sandbox") {
        if matches!(workload, Some(Workload::Container(_))) {
            reader.error(
                &p,
                n.blame(),
                "`sandbox` applies to process and postgres services; the engine confines containers",
                Some("remove it: a container runs in its own namespaces under the engine's own confinement".to_string()),
            );
        }
        service.sandbox = super::sandbox::sandbox(n, &p, reader);
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
    if let Some((n, p)) = fields.get("tcp")
        && let Some(tcp) = reader.fields(n, &p, "a mapping like {port: 2222}", TCP_KEYS)
    {
        match tcp.get("port") {
            Some((n, p)) => {
                let sni = tcp
                    .get("sni")
                    .map(|(n, p)| super::values::server_names(n, &p, reader))
                    .unwrap_or_default();
                service.tcp = reader
                    .integer(n, &p, "a TCP port", 1, 65535)
                    .map(|port| TcpRoute {
                        port: port as u16,
                        sni,
                    });
            }
            None => reader.error(
                &p,
                n.span,
                "missing required key `port`",
                Some("the host port to pass to the service, e.g. tcp: {port: 2222}".to_string()),
            ),
        }
    }
    if let Some((n, p)) = fields.get("volumes")
        && matches!(workload, Some(Workload::Postgres(_)))
    {
        reader.error(
            &p,
            n.blame(),
            "`volumes` do not apply to postgres services: bow keeps their data in its own volume",
            Some("remove `volumes:`; `backup:` backs the database up".to_string()),
        );
    } else if let Some((n, p)) = fields.get("volumes") {
        let process = matches!(workload, Some(Workload::Command(_)));
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
                    Ok(volume) if process => match process_volume_problem(&volume) {
                        None => service.volumes.push(volume),
                        Some((message, hint)) => {
                            reader.error(&item_path, item.span, message, Some(hint.to_string()))
                        }
                    },
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
    if let Some((n, p)) = fields.get("placement") {
        service.placement = super::hosts::placement(n, &p, reader);
    }
    if let Some((n, p)) = fields.get("backup") {
        service.backup = backup(n, &p, reader);
    }
    if let Some((n, p)) = fields.get("stop_timeout") {
        service.stop_timeout = reader.duration(n, &p).unwrap_or(service.stop_timeout);
    }
    if let Some(Workload::Postgres(_)) = &workload {
        if service.port.is_none() {
            service.port = Some(defaults::POSTGRES_PORT);
        }
        if let Some((n, p)) = fields.get("health") {
            reader.error(
                &p,
                n.blame(),
                "a postgres service has its own health check",
                Some(
                    "bow connects with the service's role and runs SELECT 1; remove `health:`"
                        .to_string(),
                ),
            );
        }
    }
    if let Some(Workload::Postgres(postgres)) = &workload {
        if let Some((n, p)) = fields.get("replicas")
            && service.replicas != 1
        {
            reader.error(
                &p,
                n.span,
                "a postgres service has one primary: its instances are not set with `replicas`",
                Some(format!(
                    "for streaming read replicas, set postgres.replicas: {} (other services read them as {}{})",
                    service.replicas.saturating_sub(1).max(1),
                    path.rsplit('.').next().unwrap_or(path),
                    crate::schema::REPLICA_SUFFIX
                )),
            );
        }
        // The primary plus its streaming replicas.
        service.replicas = 1 + postgres.replicas;
    }
    if let Some(workload) = workload {
        service.workload = workload;
    }
    Some(service)
}

fn workload(fields: &Fields<'_>, node: &Node, path: &str, reader: &mut Reader) -> Option<Workload> {
    // `image:` or `build:` make a container; `command:` beside them is the container's command.
    let is_container = fields.get("image").is_some() || fields.get("build").is_some();
    let present: Vec<&str> = ["command", "image", "postgres", "proxy"]
        .into_iter()
        .filter(|key| fields.get(key).is_some() && !(is_container && *key == "command"))
        .chain(
            fields
                .get("build")
                .filter(|_| fields.get("image").is_none())
                .map(|_| "build"),
        )
        .collect();
    if present.is_empty() {
        reader.error(path, node.blame(), "expected one of `command`, `image`, `postgres` or `proxy`, found none", Some("add `command: ...` to run a process, `image: ...` for a container, `postgres: {...}` for a database or `proxy: {to: https://...}` for an outside API".to_string()));
        return None;
    }
    if present.len() > 1 {
        let second = present[1];
        let span = fields.key_span(second).unwrap_or(node.span);
        reader.error(&join(path, second), span, format!("`{}` and `{second}` are both set: a service runs exactly one of command, image, postgres or proxy", present[0]), Some("split them into two services".to_string()));
        return None;
    }
    if present[0] == "proxy" {
        return super::proxy::proxy(fields, path, reader).map(Workload::Proxy);
    }
    if !is_container {
        for key in CONTAINER_ONLY_KEYS {
            if let Some((n, p)) = fields.get(key) {
                reader.error(
                    &p,
                    n.blame(),
                    format!("`{key}` applies to container services only (`image:` or `build:`)"),
                    Some("remove it, or run the service from an image".to_string()),
                );
            }
        }
    }
    if is_container {
        return container(fields, reader).map(Workload::Container);
    }
    let (value, value_path) = fields.get(present[0])?;
    match present[0] {
        "command" => command_line(value, &value_path, reader).map(Workload::Command),
        _ => postgres(value, &value_path, reader).map(Workload::Postgres),
    }
}

/// A command as a string (shell form) or a list (exec form).
fn command_line(value: &Node, value_path: &str, reader: &mut Reader) -> Option<CommandLine> {
    match &value.kind {
        NodeKind::Seq(items) => {
            let mut argv = Vec::new();
            for (position, item) in items.iter().enumerate() {
                argv.push(reader.nonempty(
                    item,
                    &index(value_path, position),
                    "a command argument",
                )?);
            }
            if argv.is_empty() {
                reader.error(
                    value_path,
                    value.span,
                    "expected a command, found an empty list",
                    None,
                );
                return None;
            }
            Some(CommandLine::Argv(argv))
        }
        _ => reader
            .nonempty(value, value_path, "a command line")
            .map(CommandLine::Shell),
    }
}

fn container(fields: &Fields<'_>, reader: &mut Reader) -> Option<Container> {
    let before = reader.diagnostics.len();
    let image = fields.get("image").and_then(|(value, value_path)| {
        let image = reader.nonempty(value, &value_path, "an image reference like app:1.4.2")?;
        if !is_image_reference(&image) {
            reader.error(
                &value_path,
                value.span,
                format!("expected an image reference like app:1.4.2 or registry.example.com/team/app@sha256:..., found {image:?}"),
                None,
            );
            return None;
        }
        Some(image)
    });
    let build = fields.get("build").and_then(|(n, p)| build(n, &p, reader));
    let command = fields
        .get("command")
        .and_then(|(n, p)| command_line(n, &p, reader));
    let entrypoint = fields
        .get("entrypoint")
        .and_then(|(n, p)| command_line(n, &p, reader));
    let container_port = fields
        .get("container_port")
        .and_then(|(n, p)| reader.port(n, &p));
    let working_dir = fields.get("working_dir").and_then(|(n, p)| {
        let dir = reader.nonempty(n, &p, "an absolute path inside the container")?;
        if !dir.starts_with('/') {
            reader.error(
                &p,
                n.span,
                format!("expected an absolute path inside the container, found {dir:?}"),
                Some("write it from the container's root, like /app".to_string()),
            );
            return None;
        }
        Some(dir)
    });
    if reader.diagnostics.len() > before {
        return None;
    }
    Some(Container {
        image,
        build,
        command,
        entrypoint,
        container_port,
        working_dir,
    })
}

fn build(node: &Node, path: &str, reader: &mut Reader) -> Option<Build> {
    // `build: ./dir` is the short form of `build: {context: ./dir}` (as in Compose).
    if node.scalar().is_some() {
        let context = reader.nonempty(node, path, "a build context directory")?;
        return Some(Build {
            context,
            dockerfile: None,
            args: BTreeMap::new(),
            target: None,
        });
    }
    let fields = reader.fields(
        node,
        path,
        "a build mapping like {context: ./app}",
        BUILD_KEYS,
    )?;
    let Some((n, p)) = fields.get("context") else {
        reader.error(
            path,
            node.blame(),
            "`build` needs a `context`: the directory the image is built from",
            Some("write build: {context: ./app}".to_string()),
        );
        return None;
    };
    let context = reader.nonempty(n, &p, "a build context directory")?;
    let dockerfile = fields
        .get("dockerfile")
        .and_then(|(n, p)| reader.nonempty(n, &p, "a Dockerfile path inside the context"));
    let target = fields
        .get("target")
        .and_then(|(n, p)| reader.nonempty(n, &p, "a build stage name"));
    let mut args = BTreeMap::new();
    if let Some((n, p)) = fields.get("args") {
        for (key, value) in reader
            .map(n, &p, "a mapping of build arguments")
            .unwrap_or_default()
        {
            let name = key.scalar().unwrap_or_default();
            if let Some(value) = reader.string(value, &join(&p, name), "a build argument value") {
                args.insert(name.to_string(), value);
            }
        }
    }
    Some(Build {
        context,
        dockerfile,
        args,
        target,
    })
}

/// `uid`, `name:group` or `uid:gid`: a user inside a container.
fn is_container_user(user: &str) -> bool {
    let part = |p: &str| {
        is_user_name(p) || (!p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    match user.split_once(':') {
        Some((user, group)) => part(user) && part(group),
        None => part(user),
    }
}

/// `[registry[:port]/]name[/name...][:tag][@digest]`, lower-case names (Docker's grammar, loosely).
fn is_image_reference(image: &str) -> bool {
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let Some((algorithm, hex)) = digest.split_once(':') else {
            return false;
        };
        if algorithm.is_empty() || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
    }
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (rest, None),
    };
    if let Some(tag) = tag
        && (tag.is_empty()
            || tag.len() > 128
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)))
    {
        return false;
    }
    !name.is_empty()
        && name.split('/').enumerate().all(|(position, part)| {
            let registry = position == 0
                && name.contains('/')
                && (part.contains('.') || part.contains(':') || part == "localhost");
            !part.is_empty()
                && part.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b"._-".contains(&b)
                        || (registry && (b.is_ascii_uppercase() || b == b':'))
                })
        })
}

/// Directories a process service's volume may not be beyond [`super::values::SYSTEM_DIRS`]
/// (bow creates the volume's directory and gives it to the service's user): the parents
/// every service's own directories live in.
const SHARED_DIRS: &[&str] = &["/media", "/mnt", "/opt", "/srv", "/home"];

/// Why a volume cannot be a process service's (`name:/path` only: a directory of the host
/// that bow creates and manages), with a hint.
fn process_volume_problem(volume: &crate::schema::Volume) -> Option<(String, &'static str)> {
    use crate::schema::VolumeSource;
    if let VolumeSource::Path(path) = &volume.source {
        return Some((
            format!(
                "a process service sees the host's files: the directory {path} needs no volume"
            ),
            "write name:/path for a directory bow creates, gives to the service's user and backs up, or use the directory as it is",
        ));
    }
    if volume.read_only {
        return Some((
            "`:ro` applies to container volumes only: a process service's volume is its own data"
                .to_string(),
            "remove `:ro`",
        ));
    }
    let target = volume.target.trim_end_matches('/');
    if super::values::system_dir(&volume.target).is_some()
        || SHARED_DIRS.contains(&target)
        || target.split('/').any(|part| part == "..")
    {
        return Some((
            format!(
                "{:?} is a system directory: a process service's volume is a directory of its own, which bow creates and hands to the service's user",
                volume.target
            ),
            "choose a directory of the service's own, like /srv/NAME or /var/lib/NAME",
        ));
    }
    None
}
