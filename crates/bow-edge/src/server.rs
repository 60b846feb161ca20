//! Listeners and connections: accept with a connection cap, TLS handshake under the header
//! timeout, HTTP/1.1 or HTTP/2 by ALPN, idle timeout, graceful and forced shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;

use crate::config::EdgeConfig;
use crate::forwarded::ClientForwarding;
use crate::h1;
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

/// What a connection is doing, counted without reading the clock on every read and write:
/// [`drive`] looks at it to close idle connections and slow request heads.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Reads and writes that moved bytes (and requests that ended).
    moves: AtomicU64,
    in_flight: AtomicUsize,
    /// Requests begun on the connection.
    requests: AtomicU64,
    /// Bytes came in while no request was in flight and no request began since: a request
    /// head is (partly) in.
    head_pending: AtomicBool,
    /// The connection is to close once the response in progress is written.
    pub(crate) closing: AtomicBool,
}

impl Activity {
    fn touch(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) {
        self.touch();
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            self.head_pending.store(true, Ordering::Relaxed);
        }
    }

    /// Which request a partly read head belongs to (the count of requests begun), or `None`
    /// when no head is pending.
    fn pending_head(&self) -> Option<u64> {
        let pending =
            self.in_flight.load(Ordering::SeqCst) == 0 && self.head_pending.load(Ordering::Relaxed);
        pending.then(|| self.requests.load(Ordering::Relaxed))
    }
}

/// A request in flight on a connection: the connection is not idle while one exists.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl InFlight {
    pub(crate) fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        activity.requests.fetch_add(1, Ordering::Relaxed);
        activity.head_pending.store(false, Ordering::Relaxed);
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
                    activity: Arc::new(Activity::default()),
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
    let alpn = tls.get_ref().1.alpn_protocol();
    // An ACME TLS-ALPN-01 validation: the handshake (with the challenge certificate) was all.
    if alpn == Some(crate::tls::ACME_TLS_ALPN) {
        return;
    }
    let h2 = alpn == Some(b"h2");
    let proxy = shared.proxy.clone();
    if h2 {
        let service_context = context.clone();
        let service = service_fn(move |request| {
            let proxy = proxy.clone();
            let context = service_context.clone();
            async move { Ok::<_, std::convert::Infallible>(proxy.handle_http2(context, request).await) }
        });
        let connection = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(config.max_header_size as u32)
            .max_concurrent_streams(256)
            .serve_connection(TokioIo::new(tls), service);
        drive(
            connection,
            &context.activity,
            config.idle_timeout,
            None,
            shared.phase.clone(),
        )
        .await;
    } else {
        let connection = h1::serve(tls, context.clone(), proxy);
        drive(
            connection,
            &context.activity,
            config.idle_timeout,
            Some(config.header_timeout),
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
    // The redirect begins no request in flight, so hyper's own timer guards its heads.
    let connection = http1_builder(&shared.config).serve_connection(io, service);
    drive(
        connection,
        &context.activity,
        shared.config.idle_timeout,
        None,
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
    let io = ActivityIo::new(stream, context.activity.clone());
    let connection = h1::serve(io, context.clone(), proxy);
    drive(
        connection,
        &context.activity,
        config.idle_timeout,
        Some(config.header_timeout),
        phase,
    )
    .await;
}

/// hyper's HTTP/1.1 server, for the redirecting HTTP port only: it begins no request in
/// flight, so hyper's own timer guards its heads.
fn http1_builder(config: &EdgeConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .max_header_size(config.max_header_size)
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    builder
}

/// Something served that can be asked to finish gracefully.
trait Graceful: Future {
    fn begin_shutdown(self: Pin<&mut Self>);
}

impl Graceful for h1::Http1Connection {
    fn begin_shutdown(self: Pin<&mut Self>) {
        self.get_mut().begin_shutdown();
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

/// How a connection's own checks turned out.
enum Step {
    /// The connection future ended.
    Done,
    /// No request in flight and no traffic for the idle timeout: close gracefully.
    Idle,
    /// A request head took longer than the header timeout: drop the connection.
    SlowHead,
}

/// The idle and slow-head checks of one connection, with one timer each for the whole
/// connection (not one per request): the idle timer looks every quarter idle timeout at
/// whether bytes moved since it last looked, the head timer runs only while a request head
/// is partly in.
struct Watchdog<'a> {
    activity: &'a Activity,
    idle_timeout: Duration,
    header_timeout: Option<Duration>,
    idle_timer: Pin<Box<Sleep>>,
    /// `activity.moves` when the idle timer last fired.
    moves_seen: u64,
    /// The last time the idle timer saw traffic or a request in flight.
    active_at: Instant,
    /// The request count a pending head was first seen at, and the head timer for it.
    head: Option<(u64, Pin<Box<Sleep>>)>,
}

impl<'a> Watchdog<'a> {
    fn new(
        activity: &'a Activity,
        idle_timeout: Duration,
        header_timeout: Option<Duration>,
    ) -> Self {
        let now = Instant::now();
        Watchdog {
            activity,
            idle_timeout,
            header_timeout,
            idle_timer: Box::pin(tokio::time::sleep_until((now + idle_timeout / 4).into())),
            moves_seen: activity.moves.load(Ordering::Relaxed),
            active_at: now,
            head: None,
        }
    }

    /// Looks at the connection after each poll of it; ready when it must close.
    fn poll(&mut self, cx: &mut Context<'_>, closing: bool) -> Poll<Step> {
        if let Some(limit) = self.header_timeout {
            match (self.activity.pending_head(), &mut self.head) {
                (Some(requests), Some((seen, timer))) if *seen == requests => {
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Step::SlowHead);
                    }
                }
                (Some(requests), _) => {
                    let mut timer = Box::pin(tokio::time::sleep(limit));
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Step::SlowHead);
                    }
                    self.head = Some((requests, timer));
                }
                (None, _) => self.head = None,
            }
        }
        if closing {
            return Poll::Pending;
        }
        while self.idle_timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let moves = self.activity.moves.load(Ordering::Relaxed);
            if moves != self.moves_seen || self.activity.in_flight.load(Ordering::SeqCst) > 0 {
                self.moves_seen = moves;
                self.active_at = now;
            }
            let idle_at = self.active_at + self.idle_timeout;
            if now >= idle_at {
                return Poll::Ready(Step::Idle);
            }
            let next = idle_at.min(now + self.idle_timeout / 4);
            self.idle_timer.as_mut().reset(next.into());
        }
        Poll::Pending
    }
}

/// Runs a connection to its end: closes it gracefully when idle too long or when the edge
/// drains, drops it when a request head is slower than `header_timeout` (slowloris; `None`
/// when hyper or the protocol guards that) and at once when the edge closes.
async fn drive<C: Graceful>(
    connection: C,
    activity: &Activity,
    idle_timeout: Duration,
    header_timeout: Option<Duration>,
    mut phase: watch::Receiver<Phase>,
) {
    tokio::pin!(connection);
    let mut closing = false;
    if *phase.borrow_and_update() != Phase::Running {
        closing = true;
        connection.as_mut().begin_shutdown();
    }
    let mut watchdog = Watchdog::new(activity, idle_timeout, header_timeout);
    loop {
        let step = {
            let served = std::future::poll_fn(|cx| {
                if connection.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Step::Done);
                }
                watchdog.poll(cx, closing)
            });
            tokio::select! {
                biased;
                step = served => Some(step),
                changed = phase.changed() => {
                    let now = if changed.is_err() { Phase::Closed } else { *phase.borrow_and_update() };
                    match now {
                        Phase::Closed => return,
                        Phase::Draining if !closing => Some(Step::Idle),
                        _ => None,
                    }
                }
            }
        };
        match step {
            Some(Step::Done | Step::SlowHead) => return,
            Some(Step::Idle) => {
                closing = true;
                connection.as_mut().begin_shutdown();
            }
            None => {}
        }
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
            self.activity.read();
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
