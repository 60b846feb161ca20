//! Listeners and connections: accept with a connection cap, TLS handshake under the header
//! timeout, HTTP/1.1 or HTTP/2 by ALPN, idle timeout, graceful and forced shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::EdgeConfig;
use crate::forwarded::ClientForwarding;
use crate::metrics::MetricsRegistry;
use crate::proxy::Proxy;
use crate::redirect::Redirect;

/// Where the edge is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    /// Listeners closed; connections finish what they have and close.
    Draining,
    /// Every connection and tunnel is closed now.
    Closed,
}

/// When a connection last moved bytes and how many of its requests are in flight.
#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// When the connection becomes idle if nothing happens, or `None` if it is idle now.
    fn idle_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        let now = Instant::now();
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Some(now + idle_timeout);
        }
        let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(last + idle_timeout).filter(|deadline| *deadline > now)
    }
}

/// A request in flight on a connection: the connection is not idle while one exists.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl InFlight {
    pub(crate) fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One client connection; holds its slot of `max_connections` as long as it (or a tunnel
/// made from it) lives.
#[derive(Debug)]
pub(crate) struct ConnContext {
    pub(crate) client: SocketAddr,
    pub(crate) forwarding: ClientForwarding,
    pub(crate) activity: Arc<Activity>,
    metrics: Arc<MetricsRegistry>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for ConnContext {
    fn drop(&mut self) {
        self.metrics
            .open_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the accept loops share.
pub(crate) struct Listeners {
    pub(crate) config: Arc<EdgeConfig>,
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) redirect: Arc<Redirect>,
    pub(crate) tls: TlsAcceptor,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) metrics: Arc<MetricsRegistry>,
    pub(crate) phase: watch::Receiver<Phase>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Port {
    Http,
    Https,
}

/// Accepts until the edge stops running; over-limit connections are closed at once.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Listeners>, port: Port) {
    let connections = shared.connections.clone();
    let metrics = shared.metrics.clone();
    let phase = shared.phase.clone();
    accept_connections(
        listener,
        connections,
        metrics,
        phase,
        crate::config::Scheme::Https,
        move |stream, context| {
            let shared = shared.clone();
            async move {
                match port {
                    Port::Https => serve_https(stream, context, shared).await,
                    Port::Http => serve_http(stream, context, shared).await,
                }
            }
        },
    )
    .await;
}

/// The accept loop of every listener (the edge's and [`crate::ServiceListener`]s): accepts
/// until `phase` leaves `Running`, closes connections over the `connections` limit at once,
/// and serves each other one in a task of its own.
pub(crate) async fn accept_connections<F, Fut>(
    listener: TcpListener,
    connections: Arc<Semaphore>,
    metrics: Arc<MetricsRegistry>,
    mut phase: watch::Receiver<Phase>,
    scheme: crate::config::Scheme,
    serve: F,
) where
    F: Fn(TcpStream, Arc<ConnContext>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() != Phase::Running {
                    return;
                }
            }
            accepted = listener.accept() => {
                let (stream, client) = match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => {
                        // Out of descriptors or a connection reset while queued: go on shortly.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    metrics.rejected_connections.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                };
                metrics.open_connections.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                let context = Arc::new(ConnContext {
                    client,
                    forwarding: ClientForwarding::new(client.ip(), scheme),
                    activity: Arc::new(Activity::new()),
                    metrics: metrics.clone(),
                    _permit: permit,
                });
                tokio::spawn(serve(stream, context));
            }
        }
    }
}

async fn serve_https(stream: TcpStream, context: Arc<ConnContext>, shared: Arc<Listeners>) {
    let config = &shared.config;
    let io = ActivityIo::new(stream, context.activity.clone());
    let handshake = tokio::time::timeout(config.header_timeout, shared.tls.accept(io)).await;
    let Ok(Ok(tls)) = handshake else {
        shared
            .metrics
            .failed_handshakes
            .fetch_add(1, Ordering::Relaxed);
        return;
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let proxy = shared.proxy.clone();
    let service_context = context.clone();
    let service = service_fn(move |request| {
        let proxy = proxy.clone();
        let context = service_context.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy.handle(context, request).await) }
    });
    let io = TokioIo::new(tls);
    if h2 {
        let connection = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(config.max_header_size as u32)
            .max_concurrent_streams(256)
            .serve_connection(io, service);
        drive(
            connection,
            &context.activity,
            config.idle_timeout,
            shared.phase.clone(),
        )
        .await;
    } else {
        let connection = http1_builder(config)
            .serve_connection(io, service)
            .with_upgrades();
        drive(
            connection,
            &context.activity,
            config.idle_timeout,
            shared.phase.clone(),
        )
        .await;
    }
}

async fn serve_http(stream: TcpStream, context: Arc<ConnContext>, shared: Arc<Listeners>) {
    let redirect = shared.redirect.clone();
    let service = service_fn(move |request| {
        let redirect = redirect.clone();
        async move { Ok::<_, std::convert::Infallible>(redirect.handle(request)) }
    });
    let io = TokioIo::new(ActivityIo::new(stream, context.activity.clone()));
    let connection = http1_builder(&shared.config).serve_connection(io, service);
    drive(
        connection,
        &context.activity,
        shared.config.idle_timeout,
        shared.phase.clone(),
    )
    .await;
}

/// Serves plain HTTP/1.1 (with upgrades) through `proxy`: a [`crate::ServiceListener`]'s
/// connections, with the same idle timeout and graceful close as the edge's.
pub(crate) async fn serve_plain(
    stream: TcpStream,
    context: Arc<ConnContext>,
    config: Arc<EdgeConfig>,
    proxy: Arc<Proxy>,
    phase: watch::Receiver<Phase>,
) {
    let service_context = context.clone();
    let service = service_fn(move |request| {
        let proxy = proxy.clone();
        let context = service_context.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy.handle(context, request).await) }
    });
    let io = TokioIo::new(ActivityIo::new(stream, context.activity.clone()));
    let connection = http1_builder(&config)
        .serve_connection(io, service)
        .with_upgrades();
    drive(connection, &context.activity, config.idle_timeout, phase).await;
}

fn http1_builder(config: &EdgeConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_header_size(config.max_header_size)
        .keep_alive(true);
    builder
}

/// Something hyper serves that can be asked to finish gracefully.
trait Graceful: Future {
    fn begin_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn begin_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> Graceful for http1::Connection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn begin_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn begin_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs a connection to its end: closes it gracefully when idle too long or when the edge
/// drains, and drops it at once when the edge closes.
async fn drive<C: Graceful>(
    connection: C,
    activity: &Activity,
    idle_timeout: Duration,
    mut phase: watch::Receiver<Phase>,
) {
    tokio::pin!(connection);
    let mut closing = false;
    if *phase.borrow_and_update() != Phase::Running {
        closing = true;
        connection.as_mut().begin_shutdown();
    }
    loop {
        let idle_deadline = activity.idle_deadline(idle_timeout);
        tokio::select! {
            _ = connection.as_mut() => return,
            changed = phase.changed() => {
                let now = if changed.is_err() { Phase::Closed } else { *phase.borrow_and_update() };
                match now {
                    Phase::Closed => return,
                    Phase::Draining if !closing => {
                        closing = true;
                        connection.as_mut().begin_shutdown();
                    }
                    _ => {}
                }
            }
            _ = sleep_until(idle_deadline), if !closing => {
                if activity.idle_deadline(idle_timeout).is_none() {
                    closing = true;
                    connection.as_mut().begin_shutdown();
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// Resolves when the edge closes (or is gone).
pub(crate) async fn closed(mut phase: watch::Receiver<Phase>) {
    let _ = phase.wait_for(|phase| *phase == Phase::Closed).await;
}

/// An I/O stream that notes when bytes last moved.
struct ActivityIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> ActivityIo<T> {
    fn new(inner: T, activity: Arc<Activity>) -> Self {
        activity.touch();
        ActivityIo { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
