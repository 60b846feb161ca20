//! The agent's shared state, its start (lock, store, adoption, API) and apply; status,
//! stopping and the state dir's lock are in `status.rs`, `stopping.rs`, `state_dir.rs`.

use bow_reconcile::EventKind;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use bow_driver::Handle;
use bow_spec::Spec;
use bow_store::Store;

use crate::api::{Event, Health, InstanceStatus};
use crate::drivers::Drivers;
use crate::error::{AgentError, Result};
use crate::ports::PortPicker;
use crate::supervisor::{Adopted, Control};

/// How a status note about an edge that could not start begins.
pub const EDGE_FAILED_NOTE: &str = "the edge is not serving: ";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Where events go besides the store (the foreground view prints them).
pub type EventSink = Box<dyn Fn(&Event) + Send + Sync>;

/// How to run an agent.
pub struct AgentConfig {
    pub state_dir: PathBuf,
    pub project: String,
    pub environment: String,
    /// What runs instances, per workload kind ([`Drivers::local`]: processes under
    /// `bow shim`; a fake in unit tests).
    pub drivers: Drivers,
    /// Receives every event; without one, events are logged to stderr.
    pub event_sink: Option<EventSink>,
    /// Resume the last applied revision at start (`bow agent`, `bow up`); `false` only adopts
    /// what runs (`bow down` without an agent).
    pub reconcile_on_start: bool,
    /// The secrets file and key instances' secrets come from (`None`: services that use
    /// secrets cannot start).
    pub secrets: Option<bow_secrets::Source>,
}

/// One supervised instance slot (`<service>.<index>`).
pub(crate) struct Slot {
    pub status: InstanceStatus,
    pub control: watch::Sender<Control>,
    pub task: Option<JoinHandle<()>>,
    /// The release this instance runs, and that release's definition (restarts use it, so
    /// an old instance stays old while a deploy is under way).
    pub release: i64,
    pub definition: Arc<bow_spec::Service>,
    /// Whether the edge may send it traffic once healthy; a blue-green set waits for the
    /// switch.
    pub routable: bool,
}

#[derive(Default)]
pub(crate) struct ServiceRuntime {
    pub slots: BTreeMap<u32, Slot>,
    /// The task that waits for dependencies and then converges the slots on the target
    /// release (a deploy when they run another one).
    pub starter: Option<JoinHandle<()>>,
    pub venv: Option<PathBuf>,
    /// The release the service converges on.
    pub release: i64,
    /// Indexes of instances being stopped: their ids stay taken until they are gone.
    pub stopping: BTreeSet<u32>,
}

#[derive(Default)]
pub(crate) struct Inner {
    pub spec: Option<Spec>,
    pub revision: i64,
    pub services: BTreeMap<String, ServiceRuntime>,
    /// Instances found running at start, waiting for the reconciler to take them over.
    pub adopted: BTreeMap<String, Adopted>,
    pub shutting_down: bool,
    /// The deploys of the last apply or rollback, by service.
    pub progress: BTreeMap<String, crate::api::ServiceProgress>,
    /// The revision `progress` belongs to.
    pub progress_revision: i64,
    /// Chaos drills' faults on services' traffic at the edge, until when.
    pub faults: BTreeMap<String, (bow_edge::Fault, std::time::Instant)>,
}

impl Inner {
    pub(crate) fn slot(&self, service: &str, index: u32) -> Option<&Slot> {
        self.services.get(service)?.slots.get(&index)
    }
}

/// The agent of one project + environment.
pub struct Agent {
    pub state_dir: PathBuf,
    pub project: String,
    pub environment: String,
    pub root: bool,
    pub(crate) drivers: Drivers,
    pub(crate) store: Mutex<Store>,
    pub(crate) ports: PortPicker,
    pub(crate) inner: Mutex<Inner>,
    /// Held for the whole of an apply or rollback: two at once (`bow agent` applying the file
    /// at start while `bow up` applies it too) would both record a revision and reconcile.
    pub(crate) applying: Mutex<()>,
    pub(crate) edge: tokio::sync::Mutex<Option<crate::edge::EdgeRuntime>>,
    /// The running edge, for route refreshes: they must never be skipped because the
    /// lifecycle lock above is held (by a status request, say), or the edge would go on
    /// serving an old table, or none.
    pub(crate) edge_handle: Mutex<Option<Arc<bow_edge::Edge>>>,
    /// The edge's per-route checks, kept across route tables (crate::edge_policy).
    pub(crate) route_policies: crate::edge_policy::Policies,
    pub(crate) outside_apis: crate::outside_api::OutsideApis,
    /// Why the edge could not start, until it does.
    pub(crate) edge_error: Mutex<Option<String>>,
    pub(crate) discovery: crate::discovery::Discovery,
    pub(crate) container_net: crate::container_net::ContainerNet,
    pub(crate) secrets: crate::secrets::Supply,
    /// Postgres services in a `bow db switchover`: their members wait before starting.
    pub(crate) switchovers: watch::Sender<BTreeSet<String>>,
    /// The admin listener (`/metrics`), when `admin:` asks for one.
    pub(crate) admin: tokio::sync::Mutex<Option<crate::admin::AdminRuntime>>,
    /// The alert engine, when `alerts:` asks for one.
    pub(crate) alerts: tokio::sync::Mutex<Option<crate::alerts::AlertRuntime>>,
    /// Health-check results per service, for `/metrics`.
    pub(crate) health_checks: crate::metrics::HealthCheckCounters,
    event_sink: Option<EventSink>,
    shutdown: Notify,
    _lock: std::fs::File,
}

impl Agent {
    /// Takes the state dir's lock, opens the store, finds instances to adopt and serves the
    /// API socket. Fails when another agent holds the lock.
    pub async fn start(config: AgentConfig) -> Result<Arc<Agent>> {
        let state_dir = config.state_dir.clone();
        let config_reconcile = config.reconcile_on_start;
        // Traverse-only for others: services reach their venv under it; everything sensitive
        // inside (state.db, agent.sock, run/, logs/) is private on its own.
        create_dir_with_mode(&state_dir, 0o711)?;
        for dir in [
            crate::layout::run_dir(&state_dir),
            crate::layout::log_dir(&state_dir),
        ] {
            create_dir_with_mode(&dir, 0o700)?;
        }
        let lock = crate::state_dir::lock(&state_dir)?;
        write_private(
            &state_dir.join(crate::api::PID_FILE),
            format!("{}\n", std::process::id()).as_bytes(),
        )
        .map_err(|source| AgentError::Io {
            what: "cannot write agent.pid".into(),
            source,
        })?;
        let store = Store::open(&state_dir)?;
        let recorded = store.latest_revision()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() == 0 };
        let agent = Arc::new(Agent {
            state_dir: state_dir.clone(),
            project: config.project,
            environment: config.environment,
            root,
            drivers: config.drivers,
            store: Mutex::new(store),
            ports: PortPicker::default(),
            inner: Mutex::new(Inner::default()),
            applying: Mutex::new(()),
            edge: tokio::sync::Mutex::new(None),
            edge_handle: Mutex::new(None),
            route_policies: Default::default(),
            outside_apis: Default::default(),
            edge_error: Mutex::new(None),
            discovery: Default::default(),
            container_net: Default::default(),
            secrets: crate::secrets::Supply::new(config.secrets),
            switchovers: watch::channel(BTreeSet::new()).0,
            admin: tokio::sync::Mutex::new(None),
            alerts: tokio::sync::Mutex::new(None),
            health_checks: Default::default(),
            event_sink: config.event_sink,
            shutdown: Notify::new(),
            _lock: lock,
        });
        let adopted = crate::adopt::scan(&agent).await;
        crate::secrets::sweep(&agent, &|id| adopted.contains_key(id));
        agent.lock().adopted = adopted;
        let listener = crate::server::bind(&agent)?;
        let Some(revision) = recorded else {
            crate::server::serve(agent.clone(), listener);
            crate::adopt::stop_unwanted(&agent).await;
            return Ok(agent);
        };
        if !config_reconcile {
            // Known but not run: `down` needs the stop timeouts and the dependency order.
            {
                let mut inner = agent.lock();
                inner.revision = revision.id;
                inner.spec = Some(revision.spec);
            }
            crate::server::serve(agent.clone(), listener);
            return Ok(agent);
        }
        // The API answers only once the recorded revision is resumed: an apply arriving
        // earlier (`bow up -d` right after starting the agent) would race the resume, which
        // then opened a release for the older spec over the new one's.
        agent.lock().revision = revision.id;
        if let Err(error) = crate::releases::open_releases(&agent, &revision.spec, revision.id) {
            agent.emit(
                "",
                "",
                EventKind::StoreError,
                &format!("cannot read releases: {error}"),
            );
        }
        agent.reconcile(revision.spec);
        crate::server::serve(agent.clone(), listener);
        crate::adopt::stop_unwanted(&agent).await;
        Ok(agent)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records and shows one event.
    pub fn emit(&self, service: &str, instance: &str, kind: EventKind, message: &str) {
        let kind = kind.label();
        let at_ms = now_ms();
        let id = self
            .store()
            .record_event(at_ms, service, instance, kind, message)
            .unwrap_or_else(|error| {
                eprintln!("bow agent: cannot record event: {error}");
                0
            });
        let event = Event {
            id,
            at_ms,
            service: service.to_string(),
            instance: instance.to_string(),
            kind: kind.to_string(),
            message: message.to_string(),
        };
        // The foreground view prints events itself; otherwise they go to the agent's log.
        match &self.event_sink {
            Some(sink) => sink(&event),
            None => eprintln!(
                "{} {instance:<12} {kind:<13} {message}",
                crate::agent::clock(at_ms)
            ),
        }
    }

    /// The lock that serialises applies and rollbacks.
    pub(crate) fn applying_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.applying
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Records `spec` as applied and reconciles towards it. Returns the revision and the
    /// services it changes (a release each; their deploys report through `progress`).
    pub fn apply(self: &Arc<Self>, spec: Spec) -> Result<(i64, Vec<String>)> {
        let _applying = self.applying_lock();
        if self.lock().shutting_down {
            return Err(AgentError::Other("the agent is shutting down".into()));
        }
        {
            let inner = self.lock();
            if inner.spec.as_ref() == Some(&spec) && inner.revision > 0 {
                return Ok((inner.revision, Vec::new()));
            }
        }
        let revision = self.store().record_revision(&spec, now_ms())?;
        self.lock().revision = revision;
        self.emit(
            "",
            "",
            EventKind::Applied,
            &format!("revision {revision}: {} services", spec.services.len()),
        );
        let changed = crate::releases::open_releases(self, &spec, revision)?;
        self.reconcile(spec);
        Ok((revision, changed))
    }

    /// The spec applied last, if any.
    pub fn applied_spec(&self) -> Option<Spec> {
        self.lock().spec.clone()
    }

    /// Records where revision `revision` came from (the git commit a follower applied); `bow
    /// history` shows it beside its releases.
    pub fn note_source(&self, revision: i64, source: &str) {
        if let Err(error) = self.store().set_revision_source(revision, source) {
            self.emit(
                "",
                "",
                EventKind::StoreError,
                &format!("revision {revision}: {error}"),
            );
        }
    }

    /// Moves the running system towards `spec`: removed services stop, each other service's
    /// starter waits for its dependencies and then converges on its target release.
    pub(crate) fn reconcile(self: &Arc<Self>, spec: Spec) {
        self.assign_addresses(&spec);
        let mut inner = self.lock();
        inner.spec = Some(spec.clone());
        let removed: Vec<String> = inner
            .services
            .keys()
            .filter(|name| !spec.services.contains_key(*name))
            .cloned()
            .collect();
        for name in removed {
            if let Some(runtime) = inner.services.remove(&name) {
                if let Some(starter) = runtime.starter {
                    starter.abort();
                }
                let agent = self.clone();
                tokio::spawn(async move { agent.stop_slots(&name, runtime.slots).await });
            }
        }
        for name in bow_spec::dependency_order(&spec) {
            let runtime = inner.services.entry(name.clone()).or_default();
            if let Some(starter) = runtime.starter.take() {
                starter.abort();
            }
            let agent = self.clone();
            runtime.starter = Some(tokio::spawn(crate::deploy::converge(agent, name)));
        }
        drop(inner);
        let agent = self.clone();
        tokio::spawn(async move {
            tokio::join!(
                agent.ensure_discovery(&spec),
                agent.ensure_edge(&spec),
                agent.ensure_admin(&spec),
                agent.ensure_alerts(&spec)
            );
        });
    }

    /// The definition and release a slot runs.
    pub(crate) fn slot_definition(
        &self,
        service: &str,
        index: u32,
    ) -> Option<(Arc<bow_spec::Service>, i64)> {
        let inner = self.lock();
        let slot = inner.slot(service, index)?;
        Some((slot.definition.clone(), slot.release))
    }

    pub(crate) fn service_spec(&self, name: &str) -> Option<bow_spec::Service> {
        self.lock().spec.as_ref()?.services.get(name).cloned()
    }

    /// Builds (or reuses) the python environment of a service for `definition`.
    pub(crate) async fn build_venv(
        &self,
        name: &str,
        definition: &bow_spec::Service,
    ) -> std::result::Result<(), String> {
        let Some(python) = &definition.python else {
            return Ok(());
        };
        let dir = definition.dir.clone().unwrap_or_else(|| "/".to_string());
        self.emit(
            name,
            "",
            EventKind::Building,
            &format!("python environment from {}", python.requirements),
        );
        let search_path = definition
            .env
            .get("PATH")
            .map_or(bow_driver::DEFAULT_PATH, String::as_str);
        match crate::venv::ensure(
            &self.state_dir,
            Path::new(&dir),
            &python.requirements,
            python.version.as_deref(),
            search_path,
        )
        .await
        {
            Ok(venv) => {
                self.emit(
                    name,
                    "",
                    EventKind::Built,
                    &format!("python environment {}", venv.display()),
                );
                if let Some(runtime) = self.lock().services.get_mut(name) {
                    runtime.venv = Some(venv);
                }
                Ok(())
            }
            Err(reason) => {
                self.emit(
                    name,
                    &format!("{name}.1"),
                    EventKind::StartFailed,
                    &format!("python environment: {reason}"),
                );
                Err(reason.to_string())
            }
        }
    }

    pub(crate) fn service_healthy(&self, inner: &Inner, name: &str) -> bool {
        let Some(service) = inner.spec.as_ref().and_then(|s| s.services.get(name)) else {
            return true;
        };
        let Some(runtime) = inner.services.get(name) else {
            return service.replicas == 0;
        };
        // Healthy instances of any release count: an old release serving while a deploy of
        // a dependency's new one is under way is still serving.
        let healthy = runtime
            .slots
            .values()
            .filter(|slot| slot.status.health == Health::Healthy)
            .count();
        healthy as u32 >= service.replicas
    }

    /// Instances of `service` other than `index` that serve or are starting.
    pub(crate) fn others_up(&self, service: &str, index: u32) -> usize {
        let inner = self.lock();
        inner.services.get(service).map_or(0, |runtime| {
            runtime
                .slots
                .iter()
                .filter(|(other, slot)| {
                    **other != index
                        && matches!(slot.status.health, Health::Healthy | Health::Starting)
                })
                .count()
        })
    }

    /// Updates one slot's status.
    pub(crate) fn update(
        &self,
        service: &str,
        index: u32,
        change: impl FnOnce(&mut InstanceStatus),
    ) {
        let routes_changed = {
            let mut inner = self.lock();
            let Some(slot) = inner
                .services
                .get_mut(service)
                .and_then(|r| r.slots.get_mut(&index))
            else {
                return;
            };
            let was_healthy = slot.status.health == Health::Healthy;
            let old_target = (slot.status.port, slot.status.endpoint);
            let old_role = slot
                .status
                .database
                .as_ref()
                .map(|d| (d.is_primary(), d.serving_reads));
            change(&mut slot.status);
            let role = slot
                .status
                .database
                .as_ref()
                .map(|d| (d.is_primary(), d.serving_reads));
            (slot.status.health == Health::Healthy) != was_healthy
                || (was_healthy && (slot.status.port, slot.status.endpoint) != old_target)
                // A postgres instance's name (`db` or `db-ro`) follows its role.
                || role != old_role
        };
        // Only healthy instances get traffic: the edge follows every change of that set.
        if routes_changed {
            self.refresh_routes();
        }
    }

    /// The dirs of every service but `service` (hidden from its sandbox).
    pub(crate) fn other_service_dirs(&self, service: &str) -> Vec<PathBuf> {
        let inner = self.lock();
        let Some(spec) = &inner.spec else {
            return Vec::new();
        };
        spec.services
            .iter()
            .filter(|(name, _)| name.as_str() != service)
            .filter_map(|(_, other)| other.dir.as_deref().map(PathBuf::from))
            .collect()
    }

    pub(crate) fn venv(&self, service: &str) -> Option<PathBuf> {
        self.lock().services.get(service)?.venv.clone()
    }

    /// Ends the agent without stopping instances (they keep running and are adopted later).
    pub fn detach(&self) {
        self.lock().shutting_down = true;
        self.shutdown.notify_waiters();
        self.shutdown.notify_one();
    }

    /// Resolves when `down` or `detach` ran.
    pub async fn wait_shutdown(&self) {
        self.shutdown.notified().await;
        let _ = std::fs::remove_file(self.state_dir.join(crate::api::SOCKET_FILE));
        let _ = std::fs::remove_file(self.state_dir.join(crate::api::PID_FILE));
    }

    pub(crate) fn record_instance(&self, handle: &Handle, port: u16, restarts: u32) {
        let row = bow_store::InstanceRow {
            id: handle.instance_id().to_string(),
            service: handle.service().to_string(),
            index: handle.index(),
            port,
            restarts,
            handle_json: serde_json::to_string(handle).unwrap_or_default(),
            updated_at_ms: now_ms(),
        };
        if let Err(error) = self.store().upsert_instance(&row) {
            eprintln!(
                "bow agent: cannot record instance {}: {error}",
                handle.instance_id()
            );
        }
    }

    pub(crate) fn forget_instance(&self, id: &str) {
        if let Err(error) = self.store().delete_instance(id) {
            eprintln!("bow agent: cannot forget instance {id}: {error}");
        }
    }
}

/// `HH:MM:SS.mmm` (UTC) for log lines.
pub(crate) fn clock(at_ms: i64) -> String {
    let seconds = at_ms.div_euclid(1000);
    let millis = at_ms.rem_euclid(1000);
    let day = seconds.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{millis:03}",
        day / 3600,
        day / 60 % 60,
        day % 60
    )
}

fn create_dir_with_mode(dir: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|source| AgentError::Io {
        what: format!("cannot create {}", dir.display()),
        source,
    })?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        AgentError::Io {
            what: format!("cannot restrict {}", dir.display()),
            source,
        }
    })
}

/// Writes `bytes` to `path` as a file only its owner may read (0600, also when it existed).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
}
