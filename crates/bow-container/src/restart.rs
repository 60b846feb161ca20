//! Restarting a container the way the engine's own restart policy does: a container that ended
//! is started again when it was made from the very spec the new start asks for (its digest is
//! a label), instead of being removed and a new one created — the create and the removal are
//! off a crash restart's path. After an exit the container stays for [`KEPT_FOR`], then goes
//! unless it runs again; an explicit stop still removes it at once.

use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use bow_driver::{ContainerHandle, ContainerSpec, DriverError, Handle, InstanceSpec, Result};
use sha2::{Digest, Sha256};

use crate::driver::ContainerDriver;
use crate::engine::message;
use crate::inspect::{container_address, now_ms};

/// The label with the digest of the spec a container was made from.
pub(crate) const SPEC_LABEL: &str = "bow.spec";
/// How long an ended container waits to be started again before it is removed.
pub(crate) const KEPT_FOR: Duration = Duration::from_secs(30);

/// The digest of everything a container is made from (secret values only through what the
/// environment already shows; the secrets' names, not their values).
pub(crate) fn spec_digest(spec: &InstanceSpec, container: &ContainerSpec) -> String {
    let mut container = container.clone();
    container.pull_auth = None;
    let secrets: Vec<&str> = spec.secrets.iter().map(|s| s.name.as_str()).collect();
    let text = serde_json::json!({
        "container": container,
        "env": spec.env,
        "release": spec.release,
        "resources": format!("{:?}", spec.resources),
        "stop_timeout_ms": spec.stop_timeout.as_millis() as u64,
        "secrets": secrets,
        "hosts": spec.hosts_file,
    })
    .to_string();
    Sha256::digest(text.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An ended container made from the spec with `digest`.
pub(crate) fn reusable(existing: &ContainerInspectResponse, digest: &str) -> bool {
    let ended = existing
        .state
        .as_ref()
        .and_then(|s| s.status)
        .is_some_and(|status| {
            use bollard::models::ContainerStateStatusEnum as Status;
            matches!(status, Status::EXITED | Status::CREATED)
        });
    ended
        && existing
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|labels| labels.get(SPEC_LABEL))
            .is_some_and(|found| found == digest)
}

impl ContainerDriver {
    /// Right after an exit the container that ended under `instance_id` is known, as inspected
    /// then; made from the spec with `digest`, it is the one to start again: the restart needs
    /// no list and inspect of the instance's containers.
    pub(crate) fn just_ended(
        &self,
        instance_id: &str,
        digest: &str,
    ) -> Option<ContainerInspectResponse> {
        self.state()
            .ended
            .remove(instance_id)
            .filter(|inspect| reusable(inspect, digest))
    }

    /// Starts `existing` again: its secrets delivered anew, its output followed again.
    pub(crate) async fn reuse(
        &self,
        docker: &Docker,
        existing: ContainerInspectResponse,
        spec: &InstanceSpec,
        container: &ContainerSpec,
    ) -> Result<Handle> {
        let id = existing.id.clone().unwrap_or_default();
        let name = existing
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        let user = existing
            .config
            .as_ref()
            .and_then(|c| c.user.clone())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "root".to_string());
        // The last run's output is all written before this one's begins.
        self.flush_logs(&id).await;
        let secrets_dir = (!spec.secrets.is_empty()).then(|| self.secrets_dir(&spec.instance_id));
        if let Some(dir) = &secrets_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| DriverError::io(format!("cannot create {}", dir.display()), e))?;
            let known = self.state().ids.get(&id).copied();
            let (uid, gid) = match known {
                Some(ids) => ids,
                None => crate::passwd::resolve(docker, &id, &user)
                    .await
                    .map_err(DriverError::Engine)?,
            };
            bow_driver::secret_files::deliver(dir, &spec.secrets, uid, gid, self.scope.root)
                .map_err(DriverError::Engine)?;
        }
        docker.start_container(&id, None).await.map_err(|e| {
            DriverError::Engine(format!("cannot start {name} again: {}", message(&e)))
        })?;
        self.started(docker, &id, name, spec, container, user, secrets_dir)
            .await
    }

    /// The handle of a container that was just started (made or started again).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn started(
        &self,
        docker: &Docker,
        id: &str,
        name: String,
        spec: &InstanceSpec,
        container: &ContainerSpec,
        user: String,
        secrets_dir: Option<PathBuf>,
    ) -> Result<Handle> {
        *self.state().starts.entry(id.to_string()).or_default() += 1;
        let inspect = docker.inspect_container(id, None).await.map_err(|e| {
            DriverError::Engine(format!("cannot inspect container {name}: {}", message(&e)))
        })?;
        let state = inspect.state.clone().unwrap_or_default();
        let pid = state.pid.unwrap_or(0) as i32;
        let start_time = bow_driver::procfs::read_stat(pid)
            .ok()
            .flatten()
            .map_or(0, |s| s.start_time);
        let started_at_unix_ms = state
            .started_at
            .as_deref()
            .and_then(bow_driver::parse_rfc3339)
            .map_or_else(now_ms, bow_driver::unix_millis);
        let instance_id = spec.instance_id.clone();
        let handle = ContainerHandle {
            scope: self.scope.name(),
            service: spec.service.clone(),
            index: spec.index,
            instance_id: instance_id.clone(),
            release: spec.release,
            container_id: id.to_string(),
            name,
            image: container.image.clone(),
            pid,
            start_time,
            user,
            log_path: bow_driver::logs::current_log_path(&self.scope.log_dir, &instance_id),
            secrets_dir,
            port: container.host_port,
            endpoint: container_address(&inspect, &container.network)
                .map(|ip| std::net::SocketAddr::from((ip, container.container_port))),
            started_at_unix_ms,
        };
        self.ensure_follower(docker, &handle, spec.secrets.clone());
        let handle_out = Handle::container(handle);
        self.state().live.insert(instance_id, handle_out.clone());
        Ok(handle_out)
    }

    /// After a container ended on its own: its last output written, its secrets removed and
    /// its instance no longer live — unless it was started again meanwhile — and, after
    /// [`KEPT_FOR`], the container itself removed unless it runs again.
    pub(crate) async fn after_exit(&self, docker: Docker, handle: ContainerHandle) {
        let id = handle.container_id.clone();
        let generation = self.state().starts.get(&id).copied();
        self.flush_logs(&id).await;
        {
            let mut state = self.state();
            if state.starts.get(&id).copied() != generation {
                return;
            }
            if let Some(dir) = &handle.secrets_dir {
                let _ = bow_driver::secret_files::remove(dir);
            }
            if state
                .live
                .get(&handle.instance_id)
                .and_then(Handle::as_container)
                .is_some_and(|live| live.container_id == id)
            {
                state.live.remove(&handle.instance_id);
            }
        }
        tokio::time::sleep(KEPT_FOR).await;
        if self.state().starts.get(&id).copied() != generation {
            return;
        }
        let running = docker
            .inspect_container(&id, None)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.running)
            .unwrap_or(false);
        if !running {
            let options = RemoveContainerOptionsBuilder::default().force(true).build();
            let _ = docker.remove_container(&id, Some(options)).await;
            let mut state = self.state();
            state.starts.remove(&id);
            state.ids.remove(&id);
            state
                .ended
                .retain(|_, inspect| inspect.id.as_deref() != Some(id.as_str()));
        }
    }
}
