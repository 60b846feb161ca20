//! A service of the spec → the driver's `InstanceSpec` for one instance.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bow_driver::{DEFAULT_PATH, InstanceSpec, LogRotation, Resources};
use bow_spec::{CommandLine, Service, Workload};

/// What the agent knows about where and how an instance runs.
pub struct InstanceContext<'a> {
    pub project: &'a str,
    pub environment: &'a str,
    pub state_dir: &'a Path,
    pub service_name: &'a str,
    pub index: u32,
    pub port: u16,
    pub venv: Option<&'a Path>,
    pub root: bool,
    /// The other services' addresses and the hosts file (service discovery).
    pub names: crate::discovery::Names,
    /// The other services' dirs: hidden from a confined instance.
    pub other_dirs: Vec<PathBuf>,
    /// The postgres services of the spec, for `${postgres:SERVICE}` in env values.
    pub databases: BTreeMap<String, bow_spec::Postgres>,
    /// The engine network a container instance joins (`None` for a process).
    pub container_network: Option<String>,
}

/// The driver's view of one instance of `service`, with its secrets (delivered as files;
/// `${secret:NAME}` in `env` resolved); `Err` says why it cannot run as a process.
pub fn build(
    service: &Service,
    context: &InstanceContext<'_>,
    secrets: Vec<bow_driver::SecretFile>,
) -> Result<InstanceSpec, String> {
    let mut postgres = None;
    let argv = match &service.workload {
        Workload::Command(CommandLine::Shell(line)) => {
            bow_driver::command_to_argv(line).map_err(|e| e.to_string())?
        }
        Workload::Command(CommandLine::Argv(argv)) => argv.clone(),
        Workload::Container(container) => {
            return build_container(service, container, context, secrets);
        }
        Workload::Postgres(_) => {
            let cluster = crate::postgres::Cluster::locate(
                context.state_dir,
                context.service_name,
                context.index,
                service,
                context.root,
            )?;
            let argv = cluster.argv(context.port);
            postgres = Some(cluster);
            argv
        }
        Workload::Proxy(_) => {
            return Err("an outside API (`proxy:`) has no instance to run".to_string());
        }
    };
    let run_dir = crate::layout::run_dir(context.state_dir);
    let log_dir = crate::layout::log_dir(context.state_dir);
    let mut spec = InstanceSpec::new(
        &format!("{}-{}", context.project, context.environment),
        context.service_name,
        context.index,
        argv,
        &run_dir,
        &log_dir,
    );
    spec.working_dir = service
        .dir
        .as_deref()
        .map_or_else(|| PathBuf::from("/"), PathBuf::from);
    spec.env = environment(service, context);
    for (name, value) in spec.env.iter_mut() {
        if value.contains("${secret:") {
            *value = crate::secrets::resolve_references(value, &secrets)
                .map_err(|reason| format!("env {name}: {reason}"))?;
        }
        if value.contains("${postgres:") {
            *value = crate::postgres::resolve_urls(value, context, &secrets)
                .map_err(|reason| format!("env {name}: {reason}"))?;
        }
    }
    spec.secrets = secrets;
    if context.root {
        let user = service
            .user
            .clone()
            .unwrap_or_else(|| bow_driver::default_service_user(context.service_name));
        // Validation refuses `user: root`; a user renamed or added with uid 0 since (or one
        // only the name service knows) is caught here, before anything runs as root.
        if !service.allow_root
            && let Ok(Some(resolved)) = bow_driver::users::lookup_user(&user)
            && resolved.uid == 0
        {
            return Err(format!(
                "user {user} has uid 0: the service would run as root; add `allow_root: true` to it if it must"
            ));
        }
        spec.user = Some(user);
    }
    spec.resources = Resources {
        memory_bytes: service.resources.memory.map(|m| m.bytes()),
        cpu_cores: service.resources.cpu,
    };
    spec.log_rotation = LogRotation::default();
    spec.stop_timeout = service.stop_timeout.as_std();
    spec.hosts_file = context.names.hosts_file.clone();
    let postgres_volume = postgres.as_ref().map(|cluster| cluster.volume.clone());
    let archiver = postgres
        .as_ref()
        .filter(|cluster| cluster.pitr)
        .and_then(|_| crate::postgres_archive::archiver());
    if let Some(cluster) = postgres {
        spec.working_dir = cluster.volume;
        // Fast shutdown: sessions end, a checkpoint is written, the postmaster exits.
        spec.stop_signal = Some(libc::SIGINT);
    }
    spec.sandbox = sandbox(service, context, &spec.working_dir);
    // A process service's volumes: directories of the host bow creates for it, writable
    // through its sandbox (docs/backups.md backs them up).
    let volumes = process_volumes(service, spec.user.as_deref())?;
    if let Some(sandbox) = spec.sandbox.as_mut() {
        for volume in volumes {
            sandbox.visible.retain(|path| *path != volume);
            if !sandbox.writable.contains(&volume) {
                sandbox.writable.push(volume);
            }
        }
    }
    // A postgres server writes its data and its socket in its volume, at every level.
    if let (Some(sandbox), Some(volume)) = (spec.sandbox.as_mut(), postgres_volume) {
        sandbox.visible.retain(|path| *path != volume);
        if !sandbox.writable.contains(&volume) {
            sandbox.writable.push(volume);
        }
        // Its archive_command runs this binary (`postgres_archive`): visible, even under /tmp.
        sandbox.visible.extend(archiver);
    }
    Ok(spec)
}

/// Creates the directories of a process service's volumes that do not exist yet (0750, the
/// service's user's when bow runs as root; an existing one is left as it is) and returns them.
fn process_volumes(service: &Service, user: Option<&str>) -> Result<Vec<PathBuf>, String> {
    use std::os::unix::fs::DirBuilderExt;
    if !matches!(service.workload, Workload::Command(_)) {
        return Ok(Vec::new());
    }
    let mut made = Vec::new();
    for volume in &service.volumes {
        let path = PathBuf::from(&volume.target);
        if !path.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(&path)
                .map_err(|e| format!("cannot create the volume {}: {e}", path.display()))?;
            if let Some(user) = user {
                let found =
                    bow_driver::users::ensure_system_user(user).map_err(|e| e.to_string())?;
                std::os::unix::fs::chown(&path, Some(found.uid), Some(found.gid))
                    .map_err(|e| format!("cannot give {} to {user}: {e}", path.display()))?;
            }
        }
        made.push(path);
    }
    Ok(made)
}

/// The confinement of `service` as paths and names (docs/sandbox.md): the system read-only;
/// its `dir` writable (read-only at `strict`) and its `sandbox.writable` paths; visible
/// read-only at the same place, even under the private /tmp, every absolute path its
/// command, env values and health exec name, and its venv; bow's state dir and the other
/// services' dirs hidden.
pub fn sandbox(
    service: &Service,
    context: &InstanceContext<'_>,
    dir: &Path,
) -> Option<bow_driver::SandboxSpec> {
    use bow_spec::SandboxLevel;
    let rules = &service.sandbox;
    if rules.level == SandboxLevel::Off {
        return None;
    }
    let mut writable: Vec<PathBuf> = rules.writable.iter().map(PathBuf::from).collect();
    let mut visible = Vec::new();
    match rules.level {
        SandboxLevel::Strict => visible.push(dir.to_path_buf()),
        _ => writable.push(dir.to_path_buf()),
    }
    let mut texts: Vec<&str> = match &service.workload {
        Workload::Command(CommandLine::Shell(line)) => vec![line.as_str()],
        Workload::Command(CommandLine::Argv(argv)) => argv.iter().map(String::as_str).collect(),
        _ => Vec::new(),
    };
    if let Some(health) = &service.health
        && let bow_spec::Check::Exec(check) = &health.check
    {
        texts.push(check);
    }
    texts.extend(service.env.values().map(String::as_str));
    for text in texts {
        visible.extend(bow_driver::sandbox::named_paths(text));
    }
    visible.extend(context.venv.map(Path::to_path_buf));
    let mut hidden = vec![context.state_dir.to_path_buf()];
    hidden.extend(
        context
            .other_dirs
            .iter()
            .filter(|other| *other != dir)
            .cloned(),
    );
    let denied = bow_spec::sandbox::denied_syscalls(rules.level)
        .into_iter()
        .filter(|name| !rules.syscalls.allow.iter().any(|allowed| allowed == name))
        .map(str::to_string)
        .collect();
    Some(bow_driver::SandboxSpec {
        level: rules.level.name().to_string(),
        writable,
        visible,
        hidden,
        caps: rules.caps.clone(),
        denied_syscalls: denied,
        nofile: Some(bow_driver::sandbox::DEFAULT_NOFILE),
        nproc: Some(bow_driver::sandbox::DEFAULT_NPROC),
    })
}

/// A container instance: the image, its overrides, the port it listens on inside (its
/// `container_port`, or the instance's port when it reads `$PORT`), volumes and secrets.
fn build_container(
    service: &Service,
    container: &bow_spec::Container,
    context: &InstanceContext<'_>,
    secrets: Vec<bow_driver::SecretFile>,
) -> Result<InstanceSpec, String> {
    let image = crate::image_build::image_of(context.project, context.service_name, service)
        .ok_or_else(|| "the service has no image to run".to_string())?;
    let network = context
        .container_network
        .clone()
        .ok_or_else(|| "the container network is not ready".to_string())?;
    let run_dir = crate::layout::run_dir(context.state_dir);
    let log_dir = crate::layout::log_dir(context.state_dir);
    let mut spec = InstanceSpec::new(
        &format!("{}-{}", context.project, context.environment),
        context.service_name,
        context.index,
        Vec::new(),
        &run_dir,
        &log_dir,
    );
    let container_port = container.container_port.unwrap_or(context.port);
    let mut env = environment(service, context);
    // Inside the container the program listens on its own port; PATH and LANG are the
    // image's unless the service sets them.
    env.insert("PORT".into(), container_port.to_string());
    for (name, value) in env.iter_mut() {
        if value.contains("${secret:") {
            *value = crate::secrets::resolve_references(value, &secrets)
                .map_err(|reason| format!("env {name}: {reason}"))?;
        }
    }
    spec.env = env;
    spec.secrets = secrets;
    spec.resources = Resources {
        memory_bytes: service.resources.memory.map(|m| m.bytes()),
        cpu_cores: service.resources.cpu,
    };
    spec.stop_timeout = service.stop_timeout.as_std();
    spec.hosts_file = context.names.hosts_file.clone();
    let volume_prefix = format!("bow-{}-{}-", context.project, context.environment);
    spec.container = Some(bow_driver::ContainerSpec {
        image,
        command: container.command.as_ref().map(container_argv).transpose()?,
        entrypoint: container
            .entrypoint
            .as_ref()
            .map(container_argv)
            .transpose()?,
        container_port,
        host_port: context.port,
        working_dir: container.working_dir.clone(),
        user: service.user.clone(),
        mounts: service
            .volumes
            .iter()
            .map(|volume| match &volume.source {
                bow_spec::VolumeSource::Named(name) => bow_driver::ContainerMount {
                    source: format!("{volume_prefix}{name}"),
                    named: true,
                    target: volume.target.clone(),
                    read_only: volume.read_only,
                },
                bow_spec::VolumeSource::Path(path) => bow_driver::ContainerMount {
                    source: path.clone(),
                    named: false,
                    target: volume.target.clone(),
                    read_only: volume.read_only,
                },
            })
            .collect(),
        network,
        pull_auth: None,
    });
    Ok(spec)
}

/// A list as it is; a string split into words like a process's command (and as Compose
/// does), run by the image's `/bin/sh -c` when it uses shell syntax.
fn container_argv(command: &CommandLine) -> Result<Vec<String>, String> {
    match command {
        CommandLine::Argv(argv) => Ok(argv.clone()),
        CommandLine::Shell(line) => bow_driver::command_to_argv(line).map_err(|e| e.to_string()),
    }
}

/// The service's env plus what bow gives every instance: `PORT`, `BOW_*`, and
/// `BOW_<SERVICE>_HOST/_PORT/_URL` of every service with a port (unless `env` sets them).
pub fn environment(service: &Service, context: &InstanceContext<'_>) -> BTreeMap<String, String> {
    let mut env = crate::discovery::environment(&context.names);
    env.extend(service.env.clone());
    env.insert("PORT".into(), context.port.to_string());
    env.insert("BOW_SERVICE".into(), context.service_name.to_string());
    env.insert(
        "BOW_INSTANCE".into(),
        format!("{}.{}", context.service_name, context.index),
    );
    env.insert("BOW_PROJECT".into(), context.project.to_string());
    env.insert("BOW_ENV".into(), context.environment.to_string());
    if let Some(venv) = context.venv {
        let base = env
            .get("PATH")
            .cloned()
            .unwrap_or_else(|| DEFAULT_PATH.to_string());
        env.insert(
            "PATH".into(),
            format!("{}:{base}", venv.join("bin").display()),
        );
        env.insert("VIRTUAL_ENV".into(), venv.display().to_string());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Service {
        let spec = bow_spec::load(
            &format!("project: p\nservices:\n  web: {yaml}\n"),
            &Default::default(),
        )
        .unwrap();
        spec.services["web"].clone()
    }

    fn build_as_root(service: &Service) -> Result<InstanceSpec, String> {
        let state_dir = Path::new("/tmp/bow-instance-spec-test");
        let context = InstanceContext {
            project: "p",
            environment: "development",
            state_dir,
            service_name: "web",
            index: 1,
            port: 5000,
            venv: None,
            root: true,
            names: crate::discovery::Names::default(),
            other_dirs: Vec::new(),
            databases: BTreeMap::new(),
            container_network: None,
        };
        build(service, &context, Vec::new())
    }

    #[test]
    fn a_uid_0_user_needs_allow_root_even_past_validation() {
        // A spec recorded before the rule, or a user given uid 0 after validation: the agent
        // looks the uid up itself before anything runs as root.
        let mut web = service("{command: run, user: nobody}");
        web.user = Some("root".to_string());
        let error = build_as_root(&web).unwrap_err();
        assert!(
            error.contains("uid 0") && error.contains("allow_root"),
            "{error}"
        );
        web.allow_root = true;
        assert_eq!(build_as_root(&web).unwrap().user.as_deref(), Some("root"));
        let nobody = service("{command: run, user: nobody}");
        assert_eq!(
            build_as_root(&nobody).unwrap().user.as_deref(),
            Some("nobody")
        );
    }

    #[test]
    fn the_default_sandbox_keeps_what_the_definition_names() {
        let web = service(
            "{command: \"sh -c 'exec /opt/app/bin/run --conf=/etc/app.toml'\", dir: /srv/web, env: {DATA: /var/lib/web}, health: {exec: 'test -e /srv/flag'}}",
        );
        let sandbox = build_as_root(&web).unwrap().sandbox.unwrap();
        assert_eq!(sandbox.level, "default");
        assert_eq!(sandbox.writable, vec![PathBuf::from("/srv/web")]);
        for named in [
            "/opt/app/bin/run",
            "/etc/app.toml",
            "/var/lib/web",
            "/srv/flag",
        ] {
            assert!(
                sandbox.visible.contains(&PathBuf::from(named)),
                "{named}: {sandbox:?}"
            );
        }
        assert_eq!(
            sandbox.hidden,
            vec![PathBuf::from("/tmp/bow-instance-spec-test")]
        );
        assert!(sandbox.denied_syscalls.iter().any(|s| s == "ptrace"));
        assert!(sandbox.caps.is_empty());

        let loose = service(
            "{command: run, dir: /srv/web, sandbox: {level: strict, caps: [net_bind_service], syscalls: {allow: [ptrace]}}}",
        );
        let sandbox = build_as_root(&loose).unwrap().sandbox.unwrap();
        assert!(sandbox.writable.is_empty());
        assert!(sandbox.visible.contains(&PathBuf::from("/srv/web")));
        assert_eq!(sandbox.caps, vec!["net_bind_service".to_string()]);
        assert!(!sandbox.denied_syscalls.iter().any(|s| s == "ptrace"));
        assert!(
            sandbox
                .denied_syscalls
                .iter()
                .any(|s| s == "io_uring_setup")
        );

        let off = service("{command: run, sandbox: {level: off}}");
        assert!(build_as_root(&off).unwrap().sandbox.is_none());
    }

    #[test]
    fn every_system_call_bow_spec_can_refuse_is_one_the_driver_knows() {
        for level in [
            bow_spec::SandboxLevel::Default,
            bow_spec::SandboxLevel::Strict,
        ] {
            let names: Vec<String> = bow_spec::sandbox::denied_syscalls(level)
                .into_iter()
                .map(str::to_string)
                .collect();
            bow_driver::sandbox::seccomp::Filter::compile(&names).unwrap();
        }
        assert_eq!(
            bow_spec::sandbox::CAPABILITIES,
            bow_driver::sandbox::caps::CAP_NAMES
        );
    }
}
