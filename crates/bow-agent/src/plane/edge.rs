//! The plane's edge: started, restarted (settings changed) or stopped to match the state's
//! spec, and fed each route's healthy endpoints and checks.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bow_edge::{Backend, Edge, EdgeConfig, EdgeHooks, JsonLinesSink, Route, RouteTable, TlsSource};
use bow_reconcile::EventKind;
use bow_spec::{Spec, Tls};

use super::serve::Plane;
use super::{PlaneEndpoint, PlaneState};
use crate::edge::{RotatingFile, access_log, ca_dir};

/// The running edge and the settings it was started with.
pub(crate) struct EdgeRuntime {
    pub edge: Arc<Edge>,
    pub settings: bow_spec::Edge,
    /// With `tls: acme`: who issues the edge's certificates.
    pub acme: Option<crate::acme::AcmeRuntime>,
}

/// The access log is rotated at this size…
const ACCESS_LOG_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// …keeping this many old files (`access.log.1` newest).
const ACCESS_LOG_KEEP: u32 = 3;

impl Plane {
    /// Starts, restarts (settings changed) or stops the edge to match `spec`.
    pub(crate) async fn ensure_edge(self: &Arc<Self>, spec: Option<&Spec>) {
        let routed = spec.is_some_and(|spec| spec.services.values().any(|s| !s.routes.is_empty()));
        let mut guard = self.edge.lock().await;
        if let (Some(runtime), Some(spec)) = (guard.as_ref(), spec)
            && routed
            && runtime.settings == spec.edge
        {
            if let Some(acme) = &runtime.acme {
                acme.set_hosts(spec);
            }
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
        let Some(spec) = spec.filter(|_| routed) else {
            return;
        };
        match self.start_edge(spec).await {
            Ok((edge, acme)) => {
                let message = format!(
                    "https on {}, http on {} (redirects to https); edge process {}",
                    edge.https_addr(),
                    edge.http_addr(),
                    std::process::id()
                );
                *self.edge_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let edge = Arc::new(edge);
                self.set_edge_handle(Some(edge.clone()));
                *guard = Some(EdgeRuntime {
                    edge,
                    settings: spec.edge.clone(),
                    acme,
                });
                self.emit("", "", EventKind::EdgeStarted, &message);
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
        config.sockets = Some(self.sockets.clone());
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

    pub(crate) fn set_edge_handle(&self, edge: Option<Arc<Edge>>) {
        *self
            .edge_handle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = edge;
    }

    pub(crate) fn edge(&self) -> Option<Arc<Edge>> {
        self.edge_handle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Gives the edge `state`'s routes.
    pub(crate) fn install_routes(&self, state: &PlaneState) {
        let Some(edge) = self.edge() else { return };
        let policies = self.route_policies(state.spec.as_ref(), &state.names);
        match RouteTable::new(route_table(state, &policies)) {
            Ok(table) => edge.set_routes(table),
            Err(error) => eprintln!("bow edge: route table rejected: {error}"),
        }
    }

    pub(crate) async fn stop_edge(&self) {
        if let Some(runtime) = self.edge.lock().await.take() {
            self.set_edge_handle(None);
            runtime.edge.shutdown().await;
        }
    }
}

/// The edge's endpoints from the plane's.
pub(crate) fn endpoints(list: Option<&Vec<PlaneEndpoint>>) -> Vec<bow_edge::Endpoint> {
    list.map(|list| {
        list.iter()
            .map(|e| bow_edge::Endpoint::new(e.id.clone(), e.addr))
            .collect()
    })
    .unwrap_or_default()
}

/// The edge's routes: each service's healthy endpoints, and each route's checks from
/// `policies` (by label; [`crate::edge_policy`]).
fn route_table(
    state: &PlaneState,
    policies: &std::collections::HashMap<String, Arc<bow_edge::RoutePolicy>>,
) -> Vec<Route> {
    let Some(spec) = &state.spec else {
        return Vec::new();
    };
    let mut routes = Vec::new();
    for (name, service) in &spec.services {
        if service.routes.is_empty() {
            continue;
        }
        let endpoints = endpoints(state.endpoints.get(name));
        let fault = state.faults.get(name).map(|fault| bow_edge::Fault {
            delay: Duration::from_millis(fault.delay_ms),
            loss_per_million: fault.loss_per_million,
        });
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
