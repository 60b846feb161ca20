//! The agent's edge: starts `bow-edge` when services have routes, feeds it the healthy
//! instances of each routed service, and drains an instance before it is stopped.

use bow_reconcile::EventKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bow_edge::{Backend, Edge, EdgeConfig, EdgeHooks, JsonLinesSink, Route, RouteTable, TlsSource};
use bow_spec::{Spec, Tls};

use crate::agent::{Agent, Inner};
use crate::api::{EdgeRequests, EdgeStatus};

/// The running edge and the settings it was started with.
pub(crate) struct EdgeRuntime {
    pub edge: Arc<Edge>,
    pub settings: bow_spec::Edge,
    /// With `tls: acme`: who issues the edge's certificates.
    pub acme: Option<crate::acme::AcmeRuntime>,
}

/// `<state-dir>/ca`: bow's local certificate authority (`bow trust` shows it).
pub fn ca_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("ca")
}

/// The local CA's certificate, to hand to clients (`curl --cacert`).
pub fn ca_certificate(state_dir: &Path) -> PathBuf {
    bow_edge::LocalCa::certificate_path(&ca_dir(state_dir))
}

/// `<state-dir>/edge/access.log`: one JSON line per request.
pub fn access_log(state_dir: &Path) -> PathBuf {
    state_dir.join("edge").join("access.log")
}

impl Agent {
    /// Starts, restarts (settings changed) or stops the edge to match `spec`.
    pub(crate) async fn ensure_edge(self: &Arc<Self>, spec: &Spec) {
        let routed = spec.services.values().any(|s| !s.routes.is_empty());
        let mut guard = self.edge.lock().await;
        if guard
            .as_ref()
            .is_some_and(|runtime| routed && runtime.settings == spec.edge)
        {
            if let Some(acme) = guard.as_ref().and_then(|r| r.acme.as_ref()) {
                acme.set_hosts(spec);
            }
            drop(guard);
            self.refresh_routes();
            return;
        }
        if let Some(old) = guard.take() {
            self.set_edge_handle(None);
            old.edge.shutdown().await;
            self.emit(
                "",
                "",
                EventKind::EdgeStopped,
                "edge settings changed, or no service has routes",
            );
        }
        if !routed {
            return;
        }
        match self.start_edge(spec).await {
            Ok((edge, acme)) => {
                let message = format!(
                    "https on {}, http on {} (redirects to https)",
                    edge.https_addr(),
                    edge.http_addr()
                );
                *self.edge_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let edge = Arc::new(edge);
                self.set_edge_handle(Some(edge.clone()));
                *guard = Some(EdgeRuntime {
                    edge,
                    settings: spec.edge.clone(),
                    acme,
                });
                drop(guard);
                self.emit("", "", EventKind::EdgeStarted, &message);
                self.refresh_routes();
            }
            Err(reason) => {
                self.emit("", "", EventKind::EdgeFailed, &reason);
                *self.edge_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
            }
        }
    }

    async fn start_edge(
        self: &Arc<Self>,
        spec: &Spec,
    ) -> Result<(Edge, Option<crate::acme::AcmeRuntime>), String> {
        let settings = &spec.edge;
        let mut acme = None;
        let tls = match &settings.tls {
            Tls::SelfSigned => TlsSource::SelfSigned {
                ca_dir: ca_dir(&self.state_dir),
            },
            Tls::Files { cert, key } => TlsSource::Files {
                cert: cert.into(),
                key: key.into(),
            },
            Tls::Acme => {
                // The local CA serves every host until (and unless) the ACME CA issued its
                // certificate: the edge never waits for a CA.
                let fallback = Arc::new(
                    bow_edge::LocalCa::open_or_create(&ca_dir(&self.state_dir))
                        .map_err(|e| format!("the local CA: {e}"))?,
                );
                let runtime = self.start_acme(spec, fallback)?;
                let source = TlsSource::Custom(runtime.acme.clone());
                acme = Some(runtime);
                source
            }
        };
        let any = Ipv4Addr::UNSPECIFIED;
        let mut config = EdgeConfig::new(
            SocketAddr::from((any, settings.http_port)),
            SocketAddr::from((any, settings.https_port)),
            tls,
        );
        config.hsts_max_age = settings.hsts_max_age.as_std();
        // The defaults, changed by `security_headers:` (an empty value drops one).
        let mut headers: std::collections::BTreeMap<String, String> =
            bow_edge::default_security_headers().into_iter().collect();
        for (name, value) in &settings.security_headers {
            headers.insert(name.clone(), value.clone());
        }
        config.security_headers = headers.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        config.max_body_size = settings.max_body_size.bytes();
        config.max_header_size = settings.max_header_size.bytes() as usize;
        config.header_timeout = settings.header_timeout.as_std();
        config.body_timeout = settings.body_timeout.as_std();
        config.upstream_timeout = settings.upstream_timeout.as_std();
        config.idle_timeout = settings.idle_timeout.as_std();
        config.max_connections = settings.max_connections as usize;
        config.drain_timeout = spec
            .services
            .values()
            .map(|s| s.deploy.drain_timeout.as_std())
            .max()
            .unwrap_or(Duration::from_secs(30));
        let log_path = access_log(&self.state_dir);
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let log = RotatingFile::open(log_path.clone(), ACCESS_LOG_MAX_BYTES, ACCESS_LOG_KEEP)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        // With `otlp`, the access log's sink also exports spans.
        let access_log: Arc<dyn bow_edge::AccessLogSink> = match &settings.otlp {
            Some(otlp) => Arc::new(crate::otlp::sink(self, otlp, JsonLinesSink::new(log))?),
            None => Arc::new(JsonLinesSink::new(log)),
        };
        let mut hooks = EdgeHooks {
            access_log,
            ..EdgeHooks::default()
        };
        if let Some(runtime) = &acme {
            hooks.acme_challenges = runtime.acme.clone();
        }
        let edge = Edge::start_with(config, hooks)
            .await
            .map_err(|e| format!("cannot start the edge: {e}"))?;
        Ok((edge, acme))
    }

    /// Gives the edge the healthy instances of every routed service.
    pub(crate) fn refresh_routes(&self) {
        self.refresh_discovery();
        let Some(edge) = self
            .edge_handle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
        else {
            // Not running (or being started: it refreshes once it runs).
            return;
        };
        // Computed and installed under the state lock: of two refreshes at once, the one
        // that saw the newer state installs last.
        let spec = self.lock().spec.clone();
        let policies = self.route_policies(spec.as_ref());
        let inner = self.lock();
        match RouteTable::new(route_table(&inner, &policies)) {
            Ok(table) => edge.set_routes(table),
            Err(error) => eprintln!("bow agent: route table rejected: {error}"),
        }
    }

    fn set_edge_handle(&self, edge: Option<Arc<Edge>>) {
        *self
            .edge_handle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = edge;
    }

    /// Takes an instance out of the edge and its service listener and waits (at most
    /// `timeout`) for its in-flight requests. The caller has already marked it as not healthy.
    pub(crate) async fn drain_instance(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Option<bow_edge::DrainOutcome> {
        self.refresh_routes();
        let edge = self.edge.lock().await.as_ref().map(|r| r.edge.clone());
        let edge_drained = async {
            let edge = edge?;
            tokio::time::timeout(timeout, edge.drain(instance_id))
                .await
                .ok()
        };
        let (edge, internal) =
            tokio::join!(edge_drained, self.drain_discovery(instance_id, timeout));
        crate::discovery::both_drained(edge, internal)
    }

    pub(crate) async fn edge_status(&self) -> Option<EdgeStatus> {
        let guard = self.edge.lock().await;
        let runtime = guard.as_ref()?;
        let routes = route_table(&self.lock(), &Default::default())
            .iter()
            .map(|route| {
                format!(
                    "{} → {} ({} healthy)",
                    route.label(),
                    route.backend.service,
                    route.backend.endpoints.len()
                )
            })
            .collect();
        let requests = runtime
            .edge
            .metrics()
            .services
            .into_iter()
            .map(|service| {
                let counts = service.requests;
                let requests = EdgeRequests {
                    total: counts.total(),
                    client_errors: counts.client_error,
                    server_errors: counts.server_error,
                };
                (service.service, requests)
            })
            .collect();
        Some(EdgeStatus {
            requests,
            https: runtime.edge.https_addr().to_string(),
            http: runtime.edge.http_addr().to_string(),
            ca_certificate: matches!(runtime.settings.tls, Tls::SelfSigned | Tls::Acme)
                .then(|| ca_certificate(&self.state_dir)),
            routes,
        })
    }

    pub(crate) async fn stop_edge(&self) {
        if let Some(runtime) = self.edge.lock().await.take() {
            self.set_edge_handle(None);
            runtime.edge.shutdown().await;
        }
    }
}

/// The access log is rotated at this size…
const ACCESS_LOG_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// …keeping this many old files (`access.log.1` newest).
const ACCESS_LOG_KEEP: u32 = 3;

/// An append-only file rotated by size: `path` → `path.1` → … → `path.<keep>`.
pub(crate) struct RotatingFile {
    path: PathBuf,
    file: std::fs::File,
    written: u64,
    max_bytes: u64,
    keep: u32,
}

impl RotatingFile {
    pub(crate) fn open(path: PathBuf, max_bytes: u64, keep: u32) -> std::io::Result<RotatingFile> {
        let file = open_private(&path)?;
        let written = file.metadata()?.len();
        Ok(RotatingFile {
            path,
            file,
            written,
            max_bytes,
            keep,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = open_private(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

/// Opens `path` for appending, readable and writable by its owner only (0600): the access
/// log holds client addresses and paths. A file made earlier with a wider mode is narrowed.
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

impl std::io::Write for RotatingFile {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        if self.written > 0 && self.written + buffer.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let written = self.file.write(buffer)?;
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The edge's routes: each service's healthy endpoints, and each route's checks from
/// `policies` (by label; [`crate::edge_policy`]).
fn route_table(
    inner: &Inner,
    policies: &std::collections::HashMap<String, Arc<bow_edge::RoutePolicy>>,
) -> Vec<Route> {
    let Some(spec) = &inner.spec else {
        return Vec::new();
    };
    let mut routes = Vec::new();
    for (name, service) in &spec.services {
        if service.routes.is_empty() {
            continue;
        }
        let endpoints = crate::discovery::healthy_endpoints(inner, name);
        let fault = inner
            .faults
            .get(name)
            .filter(|(_, until)| *until > std::time::Instant::now())
            .map(|(fault, _)| *fault);
        for route in &service.routes {
            let mut backend = Backend::new(name.clone(), endpoints.clone());
            backend.fault = fault;
            let mut edge_route = Route::new(route.host.clone(), route.path.clone(), backend);
            edge_route.policy = policies.get(&crate::edge_policy::label(route)).cloned();
            routes.push(edge_route);
        }
    }
    routes
}

impl Agent {
    /// Starts a chaos drill's fault on `service`'s traffic at the edge; it lifts after
    /// `for_ms` (the routes are refreshed then).
    pub(crate) fn inject_fault(
        self: &Arc<Self>,
        service: &str,
        delay_ms: u64,
        loss_per_million: u32,
        for_ms: u64,
    ) -> Result<(), String> {
        {
            let mut inner = self.lock();
            let Some(spec) = &inner.spec else {
                return Err("nothing is applied".to_string());
            };
            if spec.chaos != bow_spec::Chaos::Allow {
                return Err(format!(
                    "chaos drills are refused in environment `{}` (chaos: allow is not set)",
                    spec.environment
                ));
            }
            if spec
                .services
                .get(service)
                .is_none_or(|s| s.routes.is_empty())
            {
                return Err(format!(
                    "service {service} has no routes: the edge carries none of its traffic"
                ));
            }
            if loss_per_million > 1_000_000 || for_ms > 3_600_000 {
                return Err("a loss is at most 100% and a drill lasts at most 1h".to_string());
            }
            let until = std::time::Instant::now() + std::time::Duration::from_millis(for_ms);
            let fault = bow_edge::Fault {
                delay: std::time::Duration::from_millis(delay_ms),
                loss_per_million,
            };
            inner.faults.insert(service.to_string(), (fault, until));
        }
        self.emit(
            service,
            "",
            EventKind::ChaosFault,
            &format!(
                "{delay_ms} ms added, {:.1}% of attempts lost, for {}",
                f64::from(loss_per_million) / 10_000.0,
                bow_spec::units::Duration(std::time::Duration::from_millis(for_ms))
            ),
        );
        self.refresh_routes();
        let agent = self.clone();
        let service = service.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(for_ms)).await;
            let lifted = {
                let mut inner = agent.lock();
                let expired = inner
                    .faults
                    .get(&service)
                    .is_some_and(|(_, until)| *until <= std::time::Instant::now());
                if expired {
                    inner.faults.remove(&service);
                }
                expired
            };
            if lifted {
                agent.refresh_routes();
                agent.emit(&service, "", EventKind::ChaosFault, "lifted");
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::RotatingFile;

    #[test]
    fn access_logs_are_private_to_their_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let fresh = dir.path().join("access.log");
        let mut file = RotatingFile::open(fresh.clone(), 100, 2).unwrap();
        assert_eq!(mode(&fresh), 0o600);
        for line in 0..10 {
            file.write_all(format!("{line:040}\n").as_bytes()).unwrap();
        }
        assert_eq!(mode(&fresh), 0o600, "after rotation");
        assert_eq!(mode(&dir.path().join("access.log.1")), 0o600);
        // A file an older bow made world-readable is narrowed when opened.
        let old = dir.path().join("old.log");
        std::fs::write(&old, "x\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        RotatingFile::open(old.clone(), 100, 2).unwrap();
        assert_eq!(mode(&old), 0o600);
    }

    #[test]
    fn access_log_rotates_by_size_and_keeps_a_few() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut file = RotatingFile::open(path.clone(), 100, 2).unwrap();
        for line in 0..30 {
            file.write_all(format!("{line:040}\n").as_bytes()).unwrap();
        }
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) <= 100 && size(&path) > 0);
        assert!(dir.path().join("access.log.1").exists());
        assert!(dir.path().join("access.log.2").exists());
        assert!(!dir.path().join("access.log.3").exists());
        let newest = std::fs::read_to_string(&path).unwrap();
        assert!(newest.ends_with(&format!("{:040}\n", 29)));
    }
}
