//! Internal service listeners: one address where other services reach a service, balanced
//! over its healthy instances with the edge's own machinery.
//!
//! An HTTP listener serves plain HTTP/1.1 through the edge's proxy with a one-route table
//! (host [`crate::ANY_HOST`], prefix `/`): keep-alive to clients and upstreams,
//! least-outstanding balancing, passive down-marking with safe retries, draining, WebSocket
//! upgrades. A TCP listener forwards byte streams: each connection goes to the endpoint with
//! the fewest open connections, and to the next one when an endpoint refuses to connect.
//! Both drain alike: a drained endpoint gets no new request or connection, and
//! [`ServiceListener::drain`] resolves once its open ones are done.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::access_log::DiscardAccessLog;
use crate::config::{EdgeConfig, Scheme, TlsSource};
use crate::error::EdgeError;
use crate::metrics::MetricsRegistry;
use crate::pool::PoolLimits;
use crate::proxy::{DOWN_COOLOFF, Proxy};
use crate::routes::{Backend, Endpoint, Route, RouteTable};
use crate::server::{ConnContext, Phase, accept_connections, closed, serve_plain};
use crate::upstream::{self, ActiveTable, DrainOutcome, EndpointState, Upstreams};
use crate::{MetricsSnapshot, close_gracefully, install_table, listen, local_addr};

/// What a service listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceProtocol {
    /// HTTP/1.1, proxied request by request.
    Http,
    /// Any TCP stream, forwarded connection by connection.
    Tcp,
    /// TLS passthrough: each connection goes, still encrypted, to the service whose server
    /// name its ClientHello asks for ([`ServiceListener::set_sni_routes`]); one without a
    /// known name is closed.
    Sni,
}

/// Everything [`ServiceListener::start`] needs. [`ServiceListenerConfig::new`] fills in the
/// defaults.
#[derive(Clone, Debug)]
pub struct ServiceListenerConfig {
    /// Where to listen, e.g. the service's internal address and port.
    pub addr: SocketAddr,
    /// The service's name, used in error bodies and metrics.
    pub service: String,
    /// HTTP request by request, or TCP connection by connection.
    pub protocol: ServiceProtocol,
    /// How long [`ServiceListener::drain`] and [`ServiceListener::shutdown`] wait.
    pub drain_timeout: Duration,
    /// How long connecting to an instance may take before another one is tried.
    pub connect_timeout: Duration,
    /// HTTP: how long an instance may keep a request waiting: to take it, to send its
    /// response head (then 504) and between two reads of its response body.
    pub upstream_timeout: Duration,
    /// HTTP: how long a client may keep a request waiting: between two reads of its body
    /// (then 408) and between two writes of a response it does not take.
    pub body_timeout: Duration,
    /// HTTP: a client connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP: largest request body accepted (larger ones get 413).
    pub max_body_size: u64,
    /// Connections served at once; further ones are closed at once.
    pub max_connections: usize,
    /// Where the listening socket comes from and is kept (see [`crate::Sockets`]).
    pub sockets: Option<crate::Sockets>,
}

impl ServiceListenerConfig {
    /// Defaults for traffic between services, more patient than the public edge's: drain
    /// 30 s, connect 5 s, upstream and body timeouts 10 min, idle 75 s, bodies up to 1 GiB,
    /// 10 000 connections.
    pub fn new(addr: SocketAddr, service: impl Into<String>, protocol: ServiceProtocol) -> Self {
        ServiceListenerConfig {
            addr,
            service: service.into(),
            protocol,
            drain_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(600),
            body_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(75),
            max_body_size: 1024 * 1024 * 1024,
            max_connections: 10_000,
            sockets: None,
        }
    }

    /// The edge configuration the shared proxy machinery reads (TLS is never used).
    fn edge_config(&self) -> EdgeConfig {
        let mut config = EdgeConfig::new(
            self.addr,
            self.addr,
            TlsSource::Files {
                cert: Default::default(),
                key: Default::default(),
            },
        );
        config.hsts_max_age = Duration::ZERO;
        // Internal calls pass as they are.
        config.security_headers = Vec::new();
        config.max_body_size = self.max_body_size;
        config.idle_timeout = self.idle_timeout;
        config.max_connections = self.max_connections;
        config.drain_timeout = self.drain_timeout;
        config.upstream_connect_timeout = self.connect_timeout;
        config.upstream_timeout = self.upstream_timeout;
        config.body_timeout = self.body_timeout;
        config.scheme = Scheme::Http;
        config
    }
}

/// A running service listener.
pub struct ServiceListener {
    config: Arc<EdgeConfig>,
    service: String,
    addr: SocketAddr,
    table: Arc<ArcSwap<ActiveTable>>,
    upstreams: Arc<Upstreams>,
    metrics: Arc<MetricsRegistry>,
    connections: Arc<Semaphore>,
    phase: watch::Sender<Phase>,
    accept_tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// Closes idle upstream connections on a timer.
    reaper: JoinHandle<()>,
    endpoints_update: std::sync::Mutex<()>,
}

/// What the accept loop shares with each connection.
struct Shared {
    config: Arc<EdgeConfig>,
    protocol: ServiceProtocol,
    proxy: Arc<Proxy>,
    table: Arc<ArcSwap<ActiveTable>>,
    upstreams: Arc<Upstreams>,
    metrics: Arc<MetricsRegistry>,
    connections: Arc<Semaphore>,
    phase: watch::Receiver<Phase>,
}

impl ServiceListener {
    /// Binds the listener; every request (or connection) fails at once until
    /// [`ServiceListener::set_endpoints`] gives it instances.
    pub async fn start(config: ServiceListenerConfig) -> Result<ServiceListener, EdgeError> {
        let edge_config = config.edge_config();
        edge_config.validate()?;
        let edge_config = Arc::new(edge_config);
        let listener = listen(config.sockets.as_ref(), config.addr)?;
        let addr = local_addr(&listener, config.addr)?;
        let table = Arc::new(ArcSwap::from_pointee(ActiveTable::default()));
        let upstreams = Arc::new(Upstreams::new(
            DOWN_COOLOFF,
            PoolLimits {
                max_connections: edge_config.max_upstream_connections,
                idle_timeout: edge_config.upstream_idle_timeout,
            },
        ));
        let reaper = upstream::spawn_reaper(&upstreams);
        let metrics = Arc::new(MetricsRegistry::default());
        let connections = Arc::new(Semaphore::new(config.max_connections));
        let (phase, phase_receiver) = watch::channel(Phase::Running);
        let proxy = Arc::new(Proxy::new(
            edge_config.clone(),
            table.clone(),
            upstreams.clone(),
            metrics.clone(),
            Arc::new(DiscardAccessLog),
            phase_receiver.clone(),
        ));
        let shared = Arc::new(Shared {
            config: edge_config.clone(),
            protocol: config.protocol,
            proxy,
            table: table.clone(),
            upstreams: upstreams.clone(),
            metrics: metrics.clone(),
            connections: connections.clone(),
            phase: phase_receiver,
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared));
        let listener = ServiceListener {
            config: edge_config,
            service: config.service,
            addr,
            table,
            upstreams,
            metrics,
            connections,
            phase,
            accept_tasks: std::sync::Mutex::new(vec![accept_task]),
            reaper,
            endpoints_update: std::sync::Mutex::new(()),
        };
        listener.set_endpoints(Vec::new());
        Ok(listener)
    }

    /// The address the listener got.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Balances over `endpoints` from now on; endpoints no longer listed get no new request
    /// or connection (see [`ServiceListener::drain`]).
    pub fn set_endpoints(&self, endpoints: Vec<Endpoint>) {
        let backend = Backend::new(self.service.clone(), endpoints);
        let table = RouteTable::new(vec![Route::new(crate::ANY_HOST, "/", backend)])
            .expect("one catch-all route with one service's endpoints is a valid table");
        install_table(
            &table,
            &self.endpoints_update,
            &self.upstreams,
            &self.metrics,
            &self.table,
        );
    }

    /// TLS passthrough ([`ServiceProtocol::Sni`]): connections asking for each server name
    /// go to that backend's endpoints from now on.
    pub fn set_sni_routes(&self, routes: Vec<(String, Backend)>) {
        let routes = routes
            .into_iter()
            .map(|(name, backend)| Route::new(name, "/", backend))
            .collect();
        if let Ok(table) = RouteTable::new(routes) {
            install_table(
                &table,
                &self.endpoints_update,
                &self.upstreams,
                &self.metrics,
                &self.table,
            );
        }
    }

    /// Stops sending new requests or connections to `endpoint_id` and resolves when the open
    /// ones finished or the drain timeout passed.
    pub fn drain(&self, endpoint_id: &str) -> impl Future<Output = DrainOutcome> + Send + 'static {
        let upstreams = self.upstreams.clone();
        let endpoint_id = endpoint_id.to_string();
        let timeout = self.config.drain_timeout;
        async move { upstreams.drain(&endpoint_id, timeout).await }
    }

    /// A copy of the counters (one route, labelled `*/`).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Closes the listener, lets open requests and connections finish for up to the drain
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

impl Drop for ServiceListener {
    fn drop(&mut self) {
        self.reaper.abort();
        self.phase.send_replace(Phase::Closed);
        let tasks = self
            .accept_tasks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for task in tasks.iter() {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let connections = shared.connections.clone();
    let metrics = shared.metrics.clone();
    let phase = shared.phase.clone();
    accept_connections(
        listener,
        connections,
        metrics,
        phase,
        Scheme::Http,
        move |stream, context| {
            let shared = shared.clone();
            async move {
                match shared.protocol {
                    ServiceProtocol::Http => {
                        let config = shared.config.clone();
                        let proxy = shared.proxy.clone();
                        serve_plain(stream, context, config, proxy, shared.phase.clone()).await;
                    }
                    ServiceProtocol::Tcp | ServiceProtocol::Sni => {
                        forward(stream, context, &shared).await
                    }
                }
            }
        },
    )
    .await;
}

/// How many endpoints a TCP connection tries before it is closed.
const TCP_ATTEMPTS: usize = 3;

/// Connects to the endpoint with the fewest open connections (the next one when it refuses)
/// and copies bytes both ways until either side closes or the listener closes.
async fn forward(mut client: TcpStream, context: Arc<ConnContext>, shared: &Shared) {
    // TLS passthrough: the ClientHello's server name picks the route; what was read of it
    // goes to the service first.
    let mut hello = Vec::new();
    let host = match shared.protocol {
        ServiceProtocol::Sni => match crate::sni::read_server_name(&mut client, &mut hello).await {
            Some(name) => name,
            None => return,
        },
        _ => String::new(),
    };
    let table = shared.table.load_full();
    let Some(route) = table.lookup(&host, "/") else {
        return;
    };
    let mut tried: Vec<Arc<EndpointState>> = Vec::new();
    while tried.len() < TCP_ATTEMPTS {
        let Some(guard) = shared.upstreams.pick(route, &tried) else {
            return;
        };
        let endpoint = guard.endpoint().clone();
        tried.push(endpoint.clone());
        if tried.len() > 1 {
            shared
                .metrics
                .upstream_retries
                .fetch_add(1, Ordering::Relaxed);
        }
        let connecting = TcpStream::connect(endpoint.addr);
        let mut upstream =
            match tokio::time::timeout(shared.config.upstream_connect_timeout, connecting).await {
                Ok(Ok(upstream)) => upstream,
                Ok(Err(_)) | Err(_) => {
                    shared.upstreams.mark_down(&endpoint);
                    shared
                        .metrics
                        .endpoints_marked_down
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
        let _ = upstream.set_nodelay(true);
        if !hello.is_empty() {
            use tokio::io::AsyncWriteExt;
            if upstream.write_all(&hello).await.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            () = closed(shared.phase.clone()) => {}
        }
        drop(guard);
        drop(context);
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TCP server answering each connection with `name` and closing.
    async fn named_server(name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = stream.write_all(name.as_bytes()).await;
                });
            }
        });
        addr
    }

    async fn read_all(addr: SocketAddr) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text).await;
        text
    }

    #[tokio::test]
    async fn tcp_skips_refusing_endpoints_and_stops_at_drain() {
        let refusing = {
            let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            listener.local_addr().unwrap()
        };
        let alive = named_server("alive").await;
        let config = ServiceListenerConfig::new(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            "db",
            ServiceProtocol::Tcp,
        );
        let listener = ServiceListener::start(config).await.unwrap();
        let addr = listener.local_addr();
        assert_eq!(read_all(addr).await, "", "no endpoint: closed at once");
        listener.set_endpoints(vec![
            Endpoint::new("db.1", refusing),
            Endpoint::new("db.2", alive),
        ]);
        for _ in 0..6 {
            assert_eq!(read_all(addr).await, "alive");
        }
        assert_eq!(listener.drain("db.2").await, DrainOutcome::Drained);
        assert_eq!(read_all(addr).await, "", "only a refusing endpoint is left");
        listener.shutdown().await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
