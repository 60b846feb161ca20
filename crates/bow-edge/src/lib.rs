//! bow's edge: the HTTPS reverse proxy the agent embeds.
//!
//! It knows nothing of `bow.yaml`: it starts from a plain [`EdgeConfig`] and serves a
//! [`RouteTable`] (host + path prefix → a service's endpoints) that the agent swaps
//! whole with [`Edge::set_routes`] whenever routes or the healthy set change, without
//! touching listeners or connections.
//!
//! - The HTTP listener answers 308 to `https://host/path?query`, except ACME HTTP-01
//!   challenges ([`AcmeChallengeHandler`]).
//! - The HTTPS listener speaks TLS 1.2 and 1.3 only (rustls with *ring*), ALPN h2 and
//!   http/1.1, picks certificates by SNI from a [`CertificateSource`] (bow's [`LocalCa`],
//!   [`CertFiles`], or any other such as ACME), and adds HSTS.
//! - Requests are balanced over a route's endpoints by least outstanding requests. An
//!   endpoint that refuses or resets a connection is skipped for a short cool-off, and the
//!   request is retried elsewhere when that is safe: nothing was sent yet, or the method is
//!   idempotent and the body empty. Removed endpoints get no new request; [`Edge::drain`]
//!   waits for their in-flight ones.
//! - Each request yields one [`AccessLogEntry`] and feeds per-route counters and latency
//!   histograms ([`Edge::metrics`]).
//! - A [`ServiceListener`] serves one service on an internal address with the same
//!   balancing, retries and draining: plain HTTP through the same proxy, or TCP forwarding.

mod access_log;
mod body;
mod client;
mod config;
mod error;
mod forward_auth;
mod forwarded;
#[doc(hidden)]
pub mod fuzzing;
mod guard;
mod h1;
mod h1_wire;
mod linger;
mod metrics;
mod oidc;
mod outside_api;
mod passwords;
mod pool;
mod proxy;
mod redirect;
mod request_head;
mod routes;
mod server;
mod service_listener;
mod sni;
mod sockets;
mod stall;
mod tls;
mod trace;
mod upstream;
mod uri;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use access_log::{
    AccessLogEntry, AccessLogSink, DiscardAccessLog, JsonLinesSink, RequestLog, push_rfc3339,
};
pub use config::{EdgeConfig, Scheme, TlsSource, default_security_headers};
pub use error::EdgeError;
pub use forward_auth::ForwardAuth;
pub use guard::{Auth, BasicAuth, RateLimit, RoutePolicy};
pub use metrics::{
    HistogramSnapshot, LATENCY_BUCKETS_SECONDS, METHODS, MetricsSnapshot, RouteMetrics,
    ServiceMetrics, StatusClassCounts,
};
pub use oidc::{OidcAuth, OidcSettings};
pub use outside_api::{FailureReport, InjectedHeader, OutsideApi, OutsideApiConfig, trusted_roots};
pub use redirect::{AcmeChallengeHandler, NoAcmeChallenges};
pub use routes::{Backend, Endpoint, Fault, Route, RouteTable};
pub use service_listener::{ServiceListener, ServiceListenerConfig, ServiceProtocol};
pub use sockets::Sockets;
pub use tls::{ACME_TLS_ALPN, CertFiles, CertificateSource, LocalCa, crypto_provider};
pub use trace::{TraceContext, TraceId, span_hex};
pub use upstream::DrainOutcome;

use metrics::MetricsRegistry;
use pool::PoolLimits;
use proxy::{DOWN_COOLOFF, Proxy};
use redirect::Redirect;
use server::{Listeners, Phase, Port, accept_loop};
use upstream::{ActiveTable, Upstreams};

/// A route host that matches every host no other route names.
pub const ANY_HOST: &str = "*";

/// The pluggable parts of the edge.
pub struct EdgeHooks {
    /// Where access-log lines go; the default writes JSON lines to standard error.
    pub access_log: Arc<dyn AccessLogSink>,
    /// Who answers ACME HTTP-01 challenges on the HTTP port; the default answers 404.
    pub acme_challenges: Arc<dyn AcmeChallengeHandler>,
}

impl Default for EdgeHooks {
    fn default() -> Self {
        EdgeHooks {
            access_log: Arc::new(JsonLinesSink::stderr()),
            acme_challenges: Arc::new(NoAcmeChallenges),
        }
    }
}

/// A running edge: both listeners bound and serving.
pub struct Edge {
    config: Arc<EdgeConfig>,
    http_addr: SocketAddr,
    https_addr: SocketAddr,
    table: Arc<ArcSwap<ActiveTable>>,
    upstreams: Arc<Upstreams>,
    metrics: Arc<MetricsRegistry>,
    local_ca: Option<Arc<LocalCa>>,
    connections: Arc<Semaphore>,
    phase: watch::Sender<Phase>,
    accept_tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// Closes idle upstream connections on a timer.
    reaper: JoinHandle<()>,
    routes_update: std::sync::Mutex<()>,
}

impl Edge {
    /// Binds both listeners and serves an empty route table (every request gets 404)
    /// until [`Edge::set_routes`]; access log to standard error, no ACME challenges.
    pub async fn start(config: EdgeConfig) -> Result<Edge, EdgeError> {
        Edge::start_with(config, EdgeHooks::default()).await
    }

    /// [`Edge::start`] with chosen hooks.
    pub async fn start_with(config: EdgeConfig, hooks: EdgeHooks) -> Result<Edge, EdgeError> {
        config.validate()?;
        let config = Arc::new(config);
        let (source, local_ca): (Arc<dyn CertificateSource>, Option<Arc<LocalCa>>) =
            match &config.tls {
                TlsSource::SelfSigned { ca_dir } => {
                    let ca = Arc::new(LocalCa::open_or_create(ca_dir)?);
                    (ca.clone(), Some(ca))
                }
                TlsSource::Files { cert, key } => (Arc::new(CertFiles::load(cert, key)?), None),
                TlsSource::Custom(source) => (source.clone(), None),
            };
        let table = Arc::new(ArcSwap::from_pointee(ActiveTable::default()));
        let resolver = Arc::new(tls::EdgeCertResolver::new(source, table.clone()));
        let tls = TlsAcceptor::from(tls::server_config(resolver)?);

        let https = listen(config.sockets.as_ref(), config.https_addr)?;
        let http = listen(config.sockets.as_ref(), config.http_addr)?;
        let https_addr = local_addr(&https, config.https_addr)?;
        let http_addr = local_addr(&http, config.http_addr)?;

        let metrics = Arc::new(MetricsRegistry::new(config.route_metrics));
        let upstreams = Arc::new(Upstreams::new(
            DOWN_COOLOFF,
            PoolLimits {
                max_connections: config.max_upstream_connections,
                idle_timeout: config.upstream_idle_timeout,
            },
        ));
        let reaper = upstream::spawn_reaper(&upstreams);
        let (phase, phase_receiver) = watch::channel(Phase::Running);
        let connections = Arc::new(Semaphore::new(config.max_connections));
        let proxy = Arc::new(Proxy::new(
            config.clone(),
            table.clone(),
            upstreams.clone(),
            metrics.clone(),
            hooks.access_log,
            phase_receiver.clone(),
        ));
        let redirect = Arc::new(Redirect::new(
            https_addr.port(),
            hooks.acme_challenges,
            metrics.clone(),
            table.clone(),
        ));
        let listeners = Arc::new(Listeners {
            config: config.clone(),
            proxy,
            redirect,
            tls,
            connections: connections.clone(),
            metrics: metrics.clone(),
            phase: phase_receiver,
        });
        let accept_tasks = vec![
            tokio::spawn(accept_loop(https, listeners.clone(), Port::Https)),
            tokio::spawn(accept_loop(http, listeners, Port::Http)),
        ];
        Ok(Edge {
            config,
            http_addr,
            https_addr,
            table,
            upstreams,
            metrics,
            local_ca,
            connections,
            phase,
            accept_tasks: std::sync::Mutex::new(accept_tasks),
            reaper,
            routes_update: std::sync::Mutex::new(()),
        })
    }

    /// The address the HTTP listener got (useful when port 0 was asked for).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The address the HTTPS listener got.
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// The local CA's certificate (PEM) when the edge uses [`TlsSource::SelfSigned`].
    pub fn ca_certificate_pem(&self) -> Option<String> {
        self.local_ca
            .as_ref()
            .map(|ca| ca.certificate_pem().to_string())
    }

    /// Serves `table` from now on. Requests already running finish where they are;
    /// endpoints absent from `table` get no new request (see [`Edge::drain`]).
    pub fn set_routes(&self, table: RouteTable) {
        install_table(
            &table,
            &self.routes_update,
            &self.upstreams,
            &self.metrics,
            &self.table,
        );
    }

    /// Stops sending new requests to `endpoint_id` and resolves when its in-flight
    /// requests finished or the drain timeout passed. Await it before stopping the
    /// instance. An endpoint that a later table lists again is served again.
    pub fn drain(&self, endpoint_id: &str) -> impl Future<Output = DrainOutcome> + Send + 'static {
        let upstreams = self.upstreams.clone();
        let endpoint_id = endpoint_id.to_string();
        let timeout = self.config.drain_timeout;
        async move { upstreams.drain(&endpoint_id, timeout).await }
    }

    /// A copy of the counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Closes the listeners, lets connections finish their requests for up to the drain
    /// timeout, then closes whatever is left.
    pub async fn shutdown(&self) {
        close_gracefully(
            &self.phase,
            &self.accept_tasks,
            &self.connections,
            &self.config,
        )
        .await;
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.reaper.abort();
        self.phase.send_replace(Phase::Closed);
    }
}

/// Serves `table` from now on (one swap at a time): endpoints are resolved against the known
/// ones, the table is stored, then endpoints no longer listed are retired.
fn install_table(
    table: &RouteTable,
    update: &std::sync::Mutex<()>,
    upstreams: &Upstreams,
    metrics: &MetricsRegistry,
    active: &ArcSwap<ActiveTable>,
) {
    let _one_at_a_time = update.lock().unwrap_or_else(|poison| poison.into_inner());
    let (resolved, listed) = upstreams.activate(table, metrics);
    active.store(Arc::new(resolved));
    upstreams.retire_absent(&listed);
}

/// Closes the listeners (their accept tasks end), lets connections finish their requests for
/// up to the drain timeout, then closes whatever is left.
async fn close_gracefully(
    phase: &watch::Sender<Phase>,
    accept_tasks: &std::sync::Mutex<Vec<JoinHandle<()>>>,
    connections: &Semaphore,
    config: &EdgeConfig,
) {
    phase.send_replace(Phase::Draining);
    let tasks: Vec<JoinHandle<()>> = std::mem::take(
        &mut *accept_tasks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()),
    );
    for task in tasks {
        let _ = task.await;
    }
    let all = config.max_connections as u32;
    let idle = tokio::time::timeout(config.drain_timeout, connections.acquire_many(all));
    if let Ok(Ok(permits)) = idle.await {
        drop(permits);
    }
    phase.send_replace(Phase::Closed);
}

/// A listener on `addr`, from `sockets` when given.
fn listen(sockets: Option<&Sockets>, addr: SocketAddr) -> Result<TcpListener, EdgeError> {
    match sockets {
        Some(sockets) => sockets.listener(addr),
        None => bind(addr),
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, EdgeError> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|source| EdgeError::Bind { addr, source })?;
    socket
        .set_reuseaddr(true)
        .and_then(|()| socket.bind(addr))
        .and_then(|()| socket.listen(4096))
        .map_err(|source| EdgeError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, asked: SocketAddr) -> Result<SocketAddr, EdgeError> {
    listener.local_addr().map_err(|source| EdgeError::Bind {
        addr: asked,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shareable<T: Send + Sync + 'static>() {}

    #[test]
    fn the_edge_can_be_shared_across_tasks() {
        shareable::<Edge>();
        shareable::<EdgeHooks>();
        shareable::<EdgeConfig>();
    }
}
