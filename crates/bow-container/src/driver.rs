//! [`ContainerDriver`]: [`Driver`] for `image:`/`build:` services. A container is created
//! with bow's labels (scope, service, index, instance, release, port), joins the scope's
//! network, publishes its port on 127.0.0.1 only, gets its secrets as read-only files at
//! `/run/secrets` (from bow's tmpfs, owned by its user) and its restart policy off: bow
//! restarts it, with the same backoff as a process. Its output goes into bow's log files.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bow_driver::logs::LogLine;
use bow_driver::{
    BoxFuture, ContainerHandle, Driver, DriverError, Found, Handle, InstanceExit, InstanceSpec,
    Listing, Result, SecretFile, StopOutcome, Stray, Usage,
};
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use crate::create::INSTANCE_LABEL;
use crate::create::{create_body, describe_command, unique_suffix};
use crate::engine::{Engine, is_not_found, message};
use crate::inspect::{exit_of, handle_of, process_runs, read_secrets, wait_not_running};
use crate::logs::{LogTarget, follow};
use crate::network::SCOPE_LABEL;

/// Where a container finds its secrets (Docker's convention).
pub const SECRETS_TARGET: &str = "/run/secrets";
/// How long the end of an instance waits for its last output to be written.
const LOG_FLUSH_PATIENCE: Duration = Duration::from_secs(2);

/// Which containers a driver answers for, and where their files go.
#[derive(Debug, Clone)]
pub struct ContainerScope {
    pub project: String,
    pub environment: String,
    /// `<state-dir>/run` (the secrets base of a non-root agent is under it).
    pub run_dir: PathBuf,
    /// `<state-dir>/logs`.
    pub log_dir: PathBuf,
    /// Whether the agent runs as root (secrets on a tmpfs of their own).
    pub root: bool,
}

impl ContainerScope {
    /// `<project>-<environment>`: the value of the scope label.
    pub fn name(&self) -> String {
        format!("{}-{}", self.project, self.environment)
    }
}

#[derive(Default)]
pub(crate) struct State {
    /// The instance under each id, as far as this driver started or found it.
    pub live: HashMap<String, Handle>,
    /// How ended containers ended, by container id.
    pub exits: HashMap<String, InstanceExit>,
    /// The log follower of each running container, by container id.
    pub followers: HashMap<String, JoinHandle<()>>,
    /// How many times each container was started by this driver: the clean-up after an
    /// exit leaves alone a container that was started again meanwhile.
    pub starts: HashMap<String, u64>,
    /// The uid and gid a container's user has (found when it was created).
    pub ids: HashMap<String, (u32, u32)>,
    /// The container that just ended under each instance id, as inspected when its end was
    /// seen: the restart that follows starts it again without listing and inspecting anew.
    pub ended: HashMap<String, ContainerInspectResponse>,
}

/// The container driver of one scope.
pub struct ContainerDriver {
    pub(crate) engine: Arc<Engine>,
    pub(crate) scope: ContainerScope,
    state: Arc<Mutex<State>>,
}

impl ContainerDriver {
    pub fn new(engine: Arc<Engine>, scope: ContainerScope) -> ContainerDriver {
        ContainerDriver {
            engine,
            scope,
            state: Arc::default(),
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn docker(&self) -> Result<Docker> {
        self.engine
            .docker()
            .await
            .cloned()
            .map_err(DriverError::Engine)
    }

    fn log_target(&self, instance_id: &str) -> LogTarget {
        LogTarget {
            log_dir: self.scope.log_dir.clone(),
            instance_id: instance_id.to_string(),
            rotation: bow_driver::LogRotation::default(),
        }
    }

    pub(crate) fn secrets_dir(&self, instance_id: &str) -> PathBuf {
        bow_driver::secret_files::project_secrets_base(
            &self.scope.name(),
            &self.scope.run_dir,
            self.scope.root,
        )
        .join(format!("container-{instance_id}"))
    }

    /// Starts following a running container's output, unless a follower does already.
    pub(crate) fn ensure_follower(
        &self,
        docker: &Docker,
        handle: &ContainerHandle,
        secrets: Vec<SecretFile>,
    ) {
        let mut state = self.state();
        if state
            .followers
            .get(&handle.container_id)
            .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        let task = tokio::spawn(follow(
            docker.clone(),
            handle.container_id.clone(),
            self.log_target(&handle.instance_id),
            secrets,
            true,
        ));
        state.followers.insert(handle.container_id.clone(), task);
    }

    /// Waits (a little) for the follower to write the container's last lines.
    pub(crate) async fn flush_logs(&self, container_id: &str) {
        let task = self.state().followers.remove(container_id);
        if let Some(task) = task
            && tokio::time::timeout(LOG_FLUSH_PATIENCE, task)
                .await
                .is_err()
        {
            // The stream did not end: the engine kept it open; nothing more will come.
        }
    }

    /// Records how the container ended, removes it and its secrets.
    async fn finish(&self, docker: &Docker, handle: &ContainerHandle) -> Option<InstanceExit> {
        let exit = match docker.inspect_container(&handle.container_id, None).await {
            Ok(inspect) => exit_of(&inspect),
            Err(_) => None,
        };
        self.flush_logs(&handle.container_id).await;
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = docker
            .remove_container(&handle.container_id, Some(options))
            .await;
        if let Some(dir) = &handle.secrets_dir {
            let _ = bow_driver::secret_files::remove(dir);
        }
        let mut state = self.state();
        state.starts.remove(&handle.container_id);
        state.ids.remove(&handle.container_id);
        state.ended.remove(&handle.instance_id);
        if let Some(exit) = &exit {
            state
                .exits
                .insert(handle.container_id.clone(), exit.clone());
        }
        if state
            .live
            .get(&handle.instance_id)
            .and_then(Handle::as_container)
            .is_some_and(|live| live.container_id == handle.container_id)
        {
            state.live.remove(&handle.instance_id);
        }
        exit.or_else(|| state.exits.get(&handle.container_id).cloned())
    }

    /// The containers of this scope (all states), optionally of one instance id.
    async fn containers(
        &self,
        docker: &Docker,
        instance_id: Option<&str>,
    ) -> Result<Vec<ContainerInspectResponse>> {
        let mut labels = vec![format!("{SCOPE_LABEL}={}", self.scope.name())];
        if let Some(id) = instance_id {
            labels.push(format!("{INSTANCE_LABEL}={id}"));
        }
        let filters = HashMap::from([("label".to_string(), labels)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| DriverError::Engine(format!("cannot list containers: {}", message(&e))))?;
        let mut found = Vec::new();
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            if let Ok(inspect) = docker.inspect_container(&id, None).await {
                found.push(inspect);
            }
        }
        Ok(found)
    }

    /// The image's configured user, pulling the image when the engine lacks it.
    async fn image_user(
        &self,
        docker: &Docker,
        image: &str,
        auth: Option<&bow_driver::PullAuth>,
    ) -> Result<Option<String>> {
        match docker.inspect_image(image).await {
            Ok(found) => return Ok(found.config.and_then(|c| c.user).filter(|u| !u.is_empty())),
            Err(error) if is_not_found(&error) => {}
            Err(error) => {
                return Err(DriverError::Engine(format!(
                    "cannot inspect image {image}: {}",
                    message(&error)
                )));
            }
        }
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let credentials = auth.map(|auth| bollard::auth::DockerCredentials {
            username: Some(auth.username.clone()),
            password: Some(auth.password.clone()),
            serveraddress: Some(auth.server.clone()),
            ..Default::default()
        });
        let mut pull = docker.create_image(Some(options), None, credentials);
        while let Some(progress) = pull.next().await {
            if let Err(error) = progress {
                return Err(DriverError::Engine(format!(
                    "image {image} is not on the engine and could not be pulled: {}; build it (`build:`), load it (docker load / docker import) or fix the name",
                    message(&error)
                )));
            }
        }
        let found = docker.inspect_image(image).await.map_err(|e| {
            DriverError::Engine(format!("image {image} after pulling: {}", message(&e)))
        })?;
        Ok(found.config.and_then(|c| c.user).filter(|u| !u.is_empty()))
    }

    async fn start_container(&self, spec: InstanceSpec) -> Result<Handle> {
        let container = spec
            .container
            .clone()
            .ok_or_else(|| DriverError::InvalidSpec("not a container instance".into()))?;
        let docker = self.docker().await?;
        let instance_id = spec.instance_id.clone();
        let digest = crate::restart::spec_digest(&spec, &container);
        let mut reusable = None;
        // An instance id names one container at a time: a running one refuses the start
        // (the caller deals with it as an orphan); an ended one made from this very spec is
        // started again (what the engine's own restart policy does: no create); others are
        // removed.
        let existing_ones = match self.just_ended(&instance_id, &digest) {
            Some(inspect) => vec![inspect],
            None => self.containers(&docker, Some(&instance_id)).await?,
        };
        for existing in existing_ones {
            let running = existing
                .state
                .as_ref()
                .and_then(|s| s.running)
                .unwrap_or(false);
            let id = existing.id.clone().unwrap_or_default();
            if running {
                let pid = existing.state.and_then(|s| s.pid).unwrap_or(0) as i32;
                return Err(DriverError::AlreadyRunning {
                    instance: instance_id,
                    pid,
                });
            }
            if reusable.is_none() && crate::restart::reusable(&existing, &digest) {
                reusable = Some(existing);
                continue;
            }
            // An ended one goes in the background (it may be being torn down still): the new
            // container has a name of its own.
            let docker = docker.clone();
            tokio::spawn(async move {
                let options = RemoveContainerOptionsBuilder::default().force(true).build();
                let _ = docker.remove_container(&id, Some(options)).await;
            });
        }
        if let Some(existing) = reusable {
            let id = existing.id.clone().unwrap_or_default();
            match self.reuse(&docker, existing, &spec, &container).await {
                Ok(handle) => return Ok(handle),
                Err(_) => {
                    // Not startable after all: a new container, as for any change.
                    let options = RemoveContainerOptionsBuilder::default().force(true).build();
                    let _ = docker.remove_container(&id, Some(options)).await;
                }
            }
        }
        let image_user = self
            .image_user(&docker, &container.image, container.pull_auth.as_ref())
            .await?;
        for mount in container.mounts.iter().filter(|m| m.named) {
            let name = mount
                .source
                .strip_prefix(&format!("bow-{}-", self.scope.name()))
                .unwrap_or(&mount.source);
            crate::volumes::ensure(&self.engine, &self.scope.name(), &mount.source, name)
                .await
                .map_err(DriverError::Engine)?;
        }
        let user = container
            .user
            .clone()
            .or(image_user)
            .unwrap_or_else(|| "root".to_string());
        let secrets_dir = (!spec.secrets.is_empty()).then(|| self.secrets_dir(&instance_id));
        if let Some(dir) = &secrets_dir {
            // The bind mount's source must exist when the container is created; its files
            // arrive (on a tmpfs of its own) once the user's uid is known.
            std::fs::create_dir_all(dir)
                .map_err(|e| DriverError::io(format!("cannot create {}", dir.display()), e))?;
        }
        let name = format!(
            "bow-{}-{}-{}",
            self.scope.name(),
            instance_id,
            unique_suffix()
        );
        let body = create_body(
            &spec,
            &container,
            &user,
            secrets_dir.as_deref(),
            &self.scope.name(),
        );
        let mut body = body;
        body.labels
            .get_or_insert_default()
            .insert(crate::restart::SPEC_LABEL.to_string(), digest);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| {
                DriverError::Engine(format!(
                    "cannot create a container of {}: {}",
                    container.image,
                    message(&e)
                ))
            })?;
        let id = created.id;
        let remove = |docker: Docker, id: String, dir: Option<PathBuf>| async move {
            let options = RemoveContainerOptionsBuilder::default().force(true).build();
            let _ = docker.remove_container(&id, Some(options)).await;
            if let Some(dir) = dir {
                let _ = bow_driver::secret_files::remove(&dir);
            }
        };
        if let Some(dir) = &secrets_dir {
            let (uid, gid) = match crate::passwd::resolve(&docker, &id, &user).await {
                Ok(ids) => ids,
                Err(reason) => {
                    remove(docker.clone(), id.clone(), secrets_dir.clone()).await;
                    return Err(DriverError::Engine(format!(
                        "cannot find user {user} in the image {}: {reason}",
                        container.image
                    )));
                }
            };
            self.state().ids.insert(id.clone(), (uid, gid));
            if let Err(reason) =
                bow_driver::secret_files::deliver(dir, &spec.secrets, uid, gid, self.scope.root)
            {
                remove(docker.clone(), id.clone(), secrets_dir.clone()).await;
                return Err(DriverError::Engine(reason));
            }
        }
        if let Err(error) = docker.start_container(&id, None).await {
            remove(docker.clone(), id.clone(), secrets_dir.clone()).await;
            return Err(DriverError::ExecFailed {
                command: describe_command(&container),
                message: message(&error),
            });
        }
        self.started(&docker, &id, name, &spec, &container, user, secrets_dir)
            .await
    }

    async fn stop_container(
        &self,
        handle: ContainerHandle,
        timeout: Duration,
    ) -> Result<StopOutcome> {
        let docker = self.docker().await?;
        let recorded = || self.state().exits.get(&handle.container_id).cloned();
        let inspect = match docker.inspect_container(&handle.container_id, None).await {
            Ok(inspect) => inspect,
            Err(error) if is_not_found(&error) => return Ok(StopOutcome::AlreadyGone(recorded())),
            Err(error) => {
                return Err(DriverError::Engine(format!(
                    "cannot inspect {}: {}",
                    handle.name,
                    message(&error)
                )));
            }
        };
        if !inspect
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false)
        {
            let exit = self.finish(&docker, &handle).await;
            return Ok(StopOutcome::AlreadyGone(exit));
        }
        let signal = inspect
            .config
            .as_ref()
            .and_then(|c| c.stop_signal.clone())
            .unwrap_or_else(|| "SIGTERM".to_string());
        let kill = |signal: String| {
            let docker = docker.clone();
            let id = handle.container_id.clone();
            async move {
                let options = KillContainerOptionsBuilder::default()
                    .signal(&signal)
                    .build();
                docker.kill_container(&id, Some(options)).await
            }
        };
        if let Err(error) = kill(signal).await {
            // It ended meanwhile (409: not running; 404: gone).
            let exit = self.finish(&docker, &handle).await;
            return match error {
                e if is_not_found(&e) || message(&e).contains("not running") => {
                    Ok(StopOutcome::AlreadyGone(exit))
                }
                e => Err(DriverError::Engine(format!(
                    "cannot signal {}: {}",
                    handle.name,
                    message(&e)
                ))),
            };
        }
        let ended =
            tokio::time::timeout(timeout, wait_not_running(&docker, &handle.container_id)).await;
        if ended.is_ok() {
            let exit = self.finish(&docker, &handle).await;
            return Ok(StopOutcome::Terminated(exit));
        }
        let _ = kill("SIGKILL".to_string()).await;
        wait_not_running(&docker, &handle.container_id).await;
        let exit = self.finish(&docker, &handle).await;
        Ok(StopOutcome::Killed(exit))
    }

    async fn wait_container_exit(&self, handle: ContainerHandle) -> Option<InstanceExit> {
        let Ok(docker) = self.docker().await else {
            // No engine: watch the host process instead.
            while process_runs(&handle) {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            return self.state().exits.get(&handle.container_id).cloned();
        };
        let secrets = handle
            .secrets_dir
            .as_deref()
            .map(read_secrets)
            .unwrap_or_default();
        self.ensure_follower(&docker, &handle, secrets);
        wait_not_running(&docker, &handle.container_id).await;
        // How it ended is known now; its last output and its removal follow in the background
        // so that a restart does not wait for them.
        let exit = match docker.inspect_container(&handle.container_id, None).await {
            Ok(inspect) => {
                let exit = exit_of(&inspect);
                self.state()
                    .ended
                    .insert(handle.instance_id.clone(), inspect);
                exit
            }
            Err(_) => None,
        };
        if let Some(exit) = &exit {
            self.state()
                .exits
                .insert(handle.container_id.clone(), exit.clone());
        }
        let recorded = self.state().exits.get(&handle.container_id).cloned();
        // Kept a moment: a restart of the same spec starts this container again.
        let this = self.clone_ref();
        tokio::spawn(async move { this.after_exit(docker, handle).await });
        exit.or(recorded)
    }

    async fn list_containers(&self) -> Listing {
        let Ok(docker) = self.docker().await else {
            return Listing::default();
        };
        let Ok(containers) = self.containers(&docker, None).await else {
            return Listing::default();
        };
        let mut instances = Vec::new();
        for inspect in containers {
            let Some(handle) = handle_of(&inspect, &self.scope) else {
                continue;
            };
            let running = inspect
                .state
                .as_ref()
                .and_then(|s| s.running)
                .unwrap_or(false);
            if running {
                self.state().live.insert(
                    handle.instance_id.clone(),
                    Handle::container(handle.clone()),
                );
            } else {
                // Ended while no agent watched: its last output, how it ended, then away.
                let secrets = handle
                    .secrets_dir
                    .as_deref()
                    .map(read_secrets)
                    .unwrap_or_default();
                follow(
                    docker.clone(),
                    handle.container_id.clone(),
                    self.log_target(&handle.instance_id),
                    secrets,
                    false,
                )
                .await;
                self.finish(&docker, &handle).await;
            }
            instances.push(Found {
                handle: Handle::container(handle),
                running,
            });
        }
        Listing {
            instances,
            strays: Vec::new(),
        }
    }

    async fn exec_in(
        &self,
        handle: ContainerHandle,
        command: String,
    ) -> std::result::Result<(), String> {
        let docker = self.docker().await.map_err(|e| e.to_string())?;
        crate::exec::run(&docker, &handle.container_id, &command).await
    }
}

impl Driver for ContainerDriver {
    fn start(&self, spec: InstanceSpec) -> BoxFuture<Result<Handle>> {
        let this = self.clone_ref();
        Box::pin(async move { this.start_container(spec).await })
    }

    fn stop(&self, handle: &Handle, timeout: Duration) -> BoxFuture<Result<StopOutcome>> {
        let this = self.clone_ref();
        let handle = handle.as_container().cloned();
        Box::pin(async move {
            let handle =
                handle.ok_or_else(|| DriverError::InvalidSpec("not a container".into()))?;
            this.stop_container(handle, timeout).await
        })
    }

    fn wait_exit(&self, handle: &Handle) -> BoxFuture<Option<InstanceExit>> {
        let this = self.clone_ref();
        let handle = handle.as_container().cloned();
        Box::pin(async move { this.wait_container_exit(handle?).await })
    }

    fn is_running(&self, handle: &Handle) -> bool {
        handle.as_container().is_some_and(process_runs)
    }

    fn exit_status(&self, handle: &Handle) -> Option<InstanceExit> {
        let handle = handle.as_container()?;
        self.state().exits.get(&handle.container_id).cloned()
    }

    fn live(&self, instance_id: &str) -> Option<Handle> {
        let handle = self.state().live.get(instance_id).cloned()?;
        self.is_running(&handle).then_some(handle)
    }

    fn list(&self) -> BoxFuture<Listing> {
        let this = self.clone_ref();
        Box::pin(async move { this.list_containers().await })
    }

    fn stop_stray(&self, _stray: Stray, _timeout: Duration) -> BoxFuture<()> {
        // Every container of the scope carries its labels: none is a stray.
        Box::pin(async {})
    }

    fn port_of(&self, handle: &Handle) -> Option<u16> {
        handle.as_container().map(|h| h.port)
    }

    fn log_tail(&self, instance_id: &str, lines: usize) -> Vec<LogLine> {
        bow_driver::logs::tail(&self.scope.log_dir, instance_id, lines)
    }

    fn usage(&self, handle: &Handle) -> Usage {
        let Some(handle) = handle.as_container() else {
            return Usage::default();
        };
        crate::usage::read(&handle.container_id)
    }

    fn check_command(
        &self,
        _handle: &Handle,
        check: &str,
        _dir: &std::path::Path,
    ) -> std::process::Command {
        crate::exec::not_on_the_host(check)
    }

    fn exec_check(
        &self,
        handle: &Handle,
        command: &str,
        timeout: Duration,
    ) -> Option<BoxFuture<std::result::Result<(), String>>> {
        let handle = handle.as_container()?.clone();
        let this = self.clone_ref();
        let command = command.to_string();
        Some(Box::pin(async move {
            match tokio::time::timeout(timeout, this.exec_in(handle, command.clone())).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "exec {command:?} did not finish within {:.1}s",
                    timeout.as_secs_f64()
                )),
            }
        }))
    }

    fn clean_up(&self) -> BoxFuture<()> {
        let this = self.clone_ref();
        Box::pin(async move {
            let Ok(docker) = this.docker().await else {
                return;
            };
            if let Ok(containers) = this.containers(&docker, None).await {
                for inspect in containers {
                    if let Some(handle) = handle_of(&inspect, &this.scope) {
                        this.finish(&docker, &handle).await;
                    }
                }
            }
            // Nothing of the scope runs: its network goes too (volumes stay).
            crate::network::remove(&this.engine, &this.scope.name()).await;
        })
    }
}

impl ContainerDriver {
    /// A second owner of the same driver state, for futures that outlive `&self`.
    fn clone_ref(&self) -> ContainerDriver {
        ContainerDriver {
            engine: self.engine.clone(),
            scope: self.scope.clone(),
            state: self.state.clone(),
        }
    }
}
