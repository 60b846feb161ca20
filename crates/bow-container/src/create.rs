//! What bow asks the engine for: the create request of one instance (labels, ports, mounts,
//! limits, the restart policy off, bounded engine-side logs).

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, PortBinding,
    RestartPolicy, RestartPolicyNameEnum,
};
use bow_driver::{ContainerSpec, InstanceSpec};

use crate::driver::SECRETS_TARGET;
use crate::inspect::now_ms;
use crate::network::SCOPE_LABEL;

pub(crate) const SERVICE_LABEL: &str = "dev.bow.service";
pub(crate) const INDEX_LABEL: &str = "dev.bow.index";
pub(crate) const INSTANCE_LABEL: &str = "dev.bow.instance";
pub(crate) const RELEASE_LABEL: &str = "dev.bow.release";
pub(crate) const PORT_LABEL: &str = "dev.bow.port";
pub(crate) const USER_LABEL: &str = "dev.bow.user";
pub(crate) const CONTAINER_PORT_LABEL: &str = "dev.bow.container-port";
pub(crate) const SECRETS_LABEL: &str = "dev.bow.secrets-dir";

/// The create request for one instance.
pub(crate) fn create_body(
    spec: &InstanceSpec,
    container: &ContainerSpec,
    user: &str,
    secrets_dir: Option<&Path>,
    scope: &str,
) -> ContainerCreateBody {
    let port_key = format!("{}/tcp", container.container_port);
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if secrets_dir.is_some() {
        env.push(format!("{}={SECRETS_TARGET}", bow_driver::SECRETS_DIR_ENV));
    }
    let mut mounts: Vec<Mount> = container
        .mounts
        .iter()
        .map(|m| Mount {
            target: Some(m.target.clone()),
            source: Some(m.source.clone()),
            typ: Some(if m.named {
                MountType::VOLUME
            } else {
                MountType::BIND
            }),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    if let Some(dir) = secrets_dir {
        mounts.push(bind(dir, SECRETS_TARGET));
    }
    if let Some(hosts) = &spec.hosts_file {
        mounts.push(bind(hosts, "/etc/hosts"));
    }
    let labels = HashMap::from([
        (SCOPE_LABEL.to_string(), scope.to_string()),
        (SERVICE_LABEL.to_string(), spec.service.clone()),
        (INDEX_LABEL.to_string(), spec.index.to_string()),
        (INSTANCE_LABEL.to_string(), spec.instance_id.clone()),
        (RELEASE_LABEL.to_string(), spec.release.to_string()),
        (PORT_LABEL.to_string(), container.host_port.to_string()),
        (
            CONTAINER_PORT_LABEL.to_string(),
            container.container_port.to_string(),
        ),
        (USER_LABEL.to_string(), user.to_string()),
    ])
    .into_iter()
    .chain(secrets_dir.map(|d| (SECRETS_LABEL.to_string(), d.display().to_string())))
    .collect();
    let memory = spec.resources.memory_bytes.map(|b| b as i64);
    ContainerCreateBody {
        image: Some(container.image.clone()),
        cmd: container.command.clone(),
        entrypoint: container.entrypoint.clone(),
        env: Some(env),
        working_dir: container.working_dir.clone(),
        user: container.user.clone(),
        labels: Some(labels),
        exposed_ports: Some(vec![port_key.clone()]),
        host_config: Some(HostConfig {
            port_bindings: Some(HashMap::from([(
                port_key,
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(container.host_port.to_string()),
                }]),
            )])),
            network_mode: Some(container.network.clone()),
            mounts: Some(mounts),
            memory,
            // No swap beyond the limit: the limit is the limit.
            memory_swap: memory,
            nano_cpus: spec
                .resources
                .cpu_cores
                .map(|cores| (cores * 1e9).round() as i64),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), "10m".to_string()),
                    ("max-file".to_string(), "2".to_string()),
                ])),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn bind(source: &Path, target: &str) -> Mount {
    Mount {
        target: Some(target.to_string()),
        source: Some(source.display().to_string()),
        typ: Some(MountType::BIND),
        read_only: Some(true),
        ..Default::default()
    }
}

pub(crate) fn describe_command(container: &ContainerSpec) -> String {
    let mut words = Vec::new();
    words.extend(container.entrypoint.iter().flatten().cloned());
    words.extend(container.command.iter().flatten().cloned());
    if words.is_empty() {
        format!("the image {}'s own command", container.image)
    } else {
        words.join(" ")
    }
}

pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{:x}{:x}",
        now_ms() % 0xff_ffff,
        COUNTER.fetch_add(1, Ordering::Relaxed) % 0xfff
    )
}
