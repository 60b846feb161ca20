//! What the engine says about a container: its handle (from bow's labels), its address on
//! bow's network, how it ended, whether its main process still runs, when it stopped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::WaitContainerOptionsBuilder;
use bow_driver::{ContainerHandle, InstanceExit, SecretFile};
use futures_util::StreamExt;

use crate::create::{
    CONTAINER_PORT_LABEL, INDEX_LABEL, INSTANCE_LABEL, PORT_LABEL, RELEASE_LABEL, SECRETS_LABEL,
    SERVICE_LABEL, USER_LABEL,
};
use crate::driver::ContainerScope;
use crate::engine::is_not_found;
use crate::network::SCOPE_LABEL;

/// Resolves once the container no longer runs (or no longer exists).
pub(crate) async fn wait_not_running(docker: &Docker, id: &str) {
    loop {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut stream = docker.wait_container(id, Some(options));
        match stream.next().await {
            // A non-zero exit code arrives as an error of its own kind: it ended.
            Some(Ok(_)) | None => return,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => return,
            Some(Err(error)) if is_not_found(&error) => return,
            Some(Err(_)) => {
                // The engine went away (restarted?): look again shortly.
                tokio::time::sleep(Duration::from_millis(500)).await;
                match docker.inspect_container(id, None).await {
                    Ok(inspect) if inspect.state.as_ref().and_then(|s| s.running) == Some(true) => {
                    }
                    Err(error) if !is_not_found(&error) => {}
                    _ => return,
                }
            }
        }
    }
}

/// A container's handle from its labels and state (one bow made).
pub(crate) fn handle_of(
    inspect: &ContainerInspectResponse,
    scope: &ContainerScope,
) -> Option<ContainerHandle> {
    let labels = inspect.config.as_ref()?.labels.as_ref()?;
    if labels.get(SCOPE_LABEL)? != &scope.name() {
        return None;
    }
    let instance_id = labels.get(INSTANCE_LABEL)?.clone();
    let state = inspect.state.clone().unwrap_or_default();
    let pid = state.pid.unwrap_or(0) as i32;
    let start_time = bow_driver::procfs::read_stat(pid)
        .ok()
        .flatten()
        .map_or(0, |s| s.start_time);
    Some(ContainerHandle {
        scope: scope.name(),
        service: labels.get(SERVICE_LABEL)?.clone(),
        index: labels.get(INDEX_LABEL)?.parse().ok()?,
        instance_id: instance_id.clone(),
        release: labels
            .get(RELEASE_LABEL)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0),
        container_id: inspect.id.clone()?,
        name: inspect
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: inspect.config.as_ref()?.image.clone().unwrap_or_default(),
        pid,
        start_time,
        user: labels
            .get(USER_LABEL)
            .cloned()
            .unwrap_or_else(|| "root".into()),
        log_path: bow_driver::logs::current_log_path(&scope.log_dir, &instance_id),
        secrets_dir: labels.get(SECRETS_LABEL).map(PathBuf::from),
        port: labels
            .get(PORT_LABEL)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        endpoint: labels
            .get(CONTAINER_PORT_LABEL)
            .and_then(|p| p.parse::<u16>().ok())
            .and_then(|port| {
                let network = inspect.host_config.as_ref()?.network_mode.clone()?;
                Some(std::net::SocketAddr::from((
                    container_address(inspect, &network)?,
                    port,
                )))
            }),
        started_at_unix_ms: state
            .started_at
            .as_deref()
            .and_then(bow_driver::parse_rfc3339)
            .map_or(0, bow_driver::unix_millis),
    })
}

/// The container's address on `network`.
pub(crate) fn container_address(
    inspect: &ContainerInspectResponse,
    network: &str,
) -> Option<std::net::IpAddr> {
    inspect
        .network_settings
        .as_ref()?
        .networks
        .as_ref()?
        .get(network)?
        .ip_address
        .as_deref()?
        .parse()
        .ok()
}

/// How a container ended, from the engine's record (a signal shows as 128 + its number).
pub(crate) fn exit_of(inspect: &ContainerInspectResponse) -> Option<InstanceExit> {
    let state = inspect.state.as_ref()?;
    if state.running == Some(true) {
        return None;
    }
    let code = state.exit_code.unwrap_or(0) as i32;
    let (code, signal) = if (129..=159).contains(&code) {
        (None, Some(code - 128))
    } else {
        (Some(code), None)
    };
    Some(InstanceExit {
        code,
        signal,
        oom_killed: state.oom_killed.unwrap_or(false),
        exited_at_unix_ms: state
            .finished_at
            .as_deref()
            .and_then(bow_driver::parse_rfc3339)
            .map_or_else(now_ms, bow_driver::unix_millis),
    })
}

/// Whether the container's main process (the very one) still runs on the host.
pub(crate) fn process_runs(handle: &ContainerHandle) -> bool {
    matches!(
        bow_driver::procfs::read_stat(handle.pid),
        Ok(Some(stat)) if stat.start_time == handle.start_time && stat.is_alive()
    )
}

/// The secrets in an instance's dir (for redacting its output after an agent restart).
pub(crate) fn read_secrets(dir: &Path) -> Vec<SecretFile> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            Some(SecretFile {
                name: entry.file_name().to_str()?.to_string(),
                value: std::fs::read(entry.path()).ok()?,
            })
        })
        .collect()
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
