//! The request path every front end shares: route, pick an endpoint, forward with a safe
//! retry, or answer with the edge's own plain-text error. Also the HTTP/2 front end (hyper),
//! which turns its requests into that path and its outcomes into hyper responses; HTTP/1.1
//! clients are served by [`crate::h1`].

use std::cell::OnceCell;
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::{Body as _, Incoming};
use tokio::sync::watch;

use crate::access_log::AccessLogSink;
use crate::body::{BodyFailure, EdgeBody, Http2Body, RequestBody, RequestRecord};
use crate::client::{self, Connection, ResponseBody, ResponseHead};
use crate::config::EdgeConfig;
use crate::forwarded::{UpstreamBody, UpstreamHead, write_upstream_head};
use crate::metrics::MetricsRegistry;
use crate::pool::{AttemptError, Checkout};
use crate::redirect::strip_port;
use crate::routes::normalized_host;
use crate::server::{ConnContext, InFlight, Phase};
use crate::stall::Stall;
use crate::upstream::{ActiveTable, EndpointState, Upstreams};

/// Attempts per request at most (the first one and its retries).
const MAX_ATTEMPTS: usize = 3;

/// How long an endpoint that refused or reset a connection is skipped.
pub(crate) const DOWN_COOLOFF: Duration = Duration::from_secs(2);

pub(crate) struct Proxy {
    pub(crate) config: Arc<EdgeConfig>,
    table: Arc<ArcSwap<ActiveTable>>,
    upstreams: Arc<Upstreams>,
    metrics: Arc<MetricsRegistry>,
    access_log: Arc<dyn AccessLogSink>,
    /// The `Strict-Transport-Security` value, when HSTS is on.
    /// HSTS and the security headers: added to an answer that does not carry them.
    pub(crate) added: AddedHeaders,
    pub(crate) phase: watch::Receiver<Phase>,
}

/// A request as the shared path sees it, whatever protocol the client spoke.
pub(crate) struct Inbound<'a> {
    pub(crate) method: &'a Method,
    /// The host as the client named it (`Host`, or the authority of the target), port included.
    pub(crate) host: &'a str,
    /// The path of the target (no query).
    pub(crate) path: &'a str,
    /// `HTTP/1.1` or `HTTP/2.0`, for the access log.
    pub(crate) protocol: &'static str,
    /// The length the client declared for its body.
    pub(crate) declared_length: Option<u64>,
    /// The trace of the request (its `traceparent` upstream).
    pub(crate) trace: crate::TraceContext,
}

/// How a request ended on the shared path.
pub(crate) enum Outcome {
    /// An endpoint answered; its response head is at the front of the connection's buffer.
    Answered {
        record: RequestRecord,
        head: ResponseHead,
        connection: Connection,
        endpoint: Arc<EndpointState>,
    },
    /// The edge answers itself: `message` as the plain-text body.
    Local {
        record: RequestRecord,
        status: StatusCode,
        message: String,
        /// Headers of its own (`WWW-Authenticate`, `Retry-After`, a sign-in redirect's).
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

thread_local! {
    /// A wall-clock reading and the monotonic instant it was taken at, renewed every second.
    static WALL_CLOCK: std::cell::Cell<Option<(Instant, SystemTime)>> = const { std::cell::Cell::new(None) };
}

/// The wall-clock time at `now` for the access log, without a clock read of its own but
/// once a second.
fn wall_clock(now: Instant) -> SystemTime {
    WALL_CLOCK.with(|clock| match clock.get() {
        Some((at, wall)) if now >= at && now - at < Duration::from_secs(1) => wall + (now - at),
        _ => {
            let wall = SystemTime::now();
            clock.set(Some((now, wall)));
            wall
        }
    })
}

/// Why an attempt failed, for the 502 body.
struct Failure {
    endpoint: Arc<EndpointState>,
    reason: String,
}

impl Proxy {
    pub(crate) fn new(
        config: Arc<EdgeConfig>,
        table: Arc<ArcSwap<ActiveTable>>,
        upstreams: Arc<Upstreams>,
        metrics: Arc<MetricsRegistry>,
        access_log: Arc<dyn AccessLogSink>,
        phase: watch::Receiver<Phase>,
    ) -> Self {
        let added = AddedHeaders::new(&config);
        Proxy {
            config,
            table,
            upstreams,
            metrics,
            access_log,
            added,
            phase,
        }
    }

    /// Routes `inbound` and sends it (its head already written for the upstream in `head`,
    /// then `body`) to an endpoint of the route, retrying elsewhere when that is safe.
    /// `upstream` (the upstream timeout) limits how long each attempt's endpoint may keep the
    /// request waiting: a connection keeps one timer for all its requests, so a request
    /// costs no timer of its own.
    pub(crate) async fn forward(
        &self,
        context: &ConnContext,
        inbound: &Inbound<'_>,
        head: &[u8],
        body: &mut RequestBody<'_>,
        upstream: &mut Stall,
    ) -> Outcome {
        let host = normalized_host(strip_port(inbound.host));
        let table = self.table.load_full();
        // A table that replaced `table` while this request started, looked at when none of
        // `table`'s endpoints could be picked because the swap had just retired them.
        let newer: OnceCell<Arc<ActiveTable>> = OnceCell::new();
        let found = table.lookup(&host, inbound.path);
        let started = Instant::now();
        let mut record = RequestRecord {
            started,
            time: wall_clock(started),
            host: found.map_or_else(|| Arc::from(&*host), |route| route.host.clone()),
            method: inbound.method.clone(),
            path: inbound.path.to_string(),
            protocol: inbound.protocol,
            client: context.client,
            status: 0,
            bytes: 0,
            service: None,
            trace: inbound.trace,
            stats: None,
            endpoint: None,
            sink: self.access_log.clone(),
            _in_flight: InFlight::new(&context.activity),
        };
        let local = |record, status, message| Outcome::Local {
            record,
            status,
            message,
            headers: Vec::new(),
        };
        let Some(mut route) = found else {
            self.metrics
                .unrouted_requests
                .fetch_add(1, Ordering::Relaxed);
            return local(
                record,
                StatusCode::NOT_FOUND,
                format!("404 no route for {host}"),
            );
        };
        let mut service = route.service.clone();
        record.service = Some(service.clone());
        if let Some(stats) = &route.stats {
            record.count_in(stats);
        }
        let mut limit = self.config.max_body_size;
        let rewritten: Vec<u8>;
        let mut head = head;
        if let Some(policy) = &route.policy {
            match guard(policy, context, inbound, head, body).await {
                Ok(Some(changed)) => {
                    rewritten = changed;
                    head = &rewritten;
                }
                Ok(None) => {}
                Err(refusal) => {
                    return Outcome::Local {
                        record,
                        status: refusal.status,
                        message: refusal.message,
                        headers: refusal.headers,
                    };
                }
            }
            limit = policy.max_body_size.unwrap_or(limit);
        }
        if inbound.declared_length.is_some_and(|length| length > limit) {
            let message = format!("413 request body larger than {limit} bytes");
            return local(record, StatusCode::PAYLOAD_TOO_LARGE, message);
        }
        let idempotent = matches!(
            *inbound.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );

        if let Some(fault) = route.fault
            && !fault.delay.is_zero()
        {
            tokio::time::sleep(fault.delay).await;
        }
        let mut tried: Vec<Arc<EndpointState>> = Vec::new();
        let mut failure: Option<Failure> = None;
        while tried.len() < MAX_ATTEMPTS {
            let Some(guard) = self.upstreams.pick(route, &tried) else {
                if tried.is_empty() && newer.get().is_none() {
                    let fresh = self.table.load_full();
                    if !Arc::ptr_eq(&fresh, &table)
                        && let Some(next) = newer.get_or_init(|| fresh).lookup(&host, inbound.path)
                    {
                        route = next;
                        service = route.service.clone();
                        record.service = Some(service.clone());
                        if let Some(stats) = &route.stats {
                            record.count_in(stats);
                        }
                        continue;
                    }
                }
                break;
            };
            let endpoint = guard.endpoint().clone();
            tried.push(endpoint.clone());
            if tried.len() > 1 {
                self.metrics
                    .upstream_retries
                    .fetch_add(1, Ordering::Relaxed);
            }
            let now = if tried.len() == 1 {
                started
            } else {
                Instant::now()
            };
            upstream.begin(now);
            if route.fault.is_some_and(|fault| fault.loses()) {
                // A chaos drill's lost attempt: refused, as an instance that died would.
                failure = Some(Failure {
                    endpoint,
                    reason: "connection refused (chaos drill)".to_string(),
                });
                continue;
            }
            let answered = self
                .send(
                    &endpoint,
                    inbound.method,
                    head,
                    body,
                    idempotent,
                    now,
                    upstream,
                )
                .await;
            let error = match answered {
                Ok((response, connection)) => {
                    record.status = response.status.as_u16();
                    record.endpoint = Some(guard);
                    return Outcome::Answered {
                        record,
                        head: response,
                        connection,
                        endpoint,
                    };
                }
                Err(AttemptError::TimedOut) => {
                    record.endpoint = Some(guard);
                    let message = format!(
                        "504 service {service} did not answer within {}s (instance {})",
                        upstream.limit().as_secs_f64(),
                        endpoint.id
                    );
                    return local(record, StatusCode::GATEWAY_TIMEOUT, message);
                }
                Err(error) => error,
            };
            if let Some(failure) = body.failure() {
                record.endpoint = Some(guard);
                let (status, message) = match failure {
                    BodyFailure::TooLarge => (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("413 request body larger than {limit} bytes"),
                    ),
                    BodyFailure::TimedOut => (
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "408 no byte of the request body came for {}s",
                            self.config.body_timeout.as_secs_f64()
                        ),
                    ),
                    BodyFailure::Broken => (
                        StatusCode::BAD_REQUEST,
                        "400 the request body ended before its end".to_string(),
                    ),
                };
                return local(record, status, message);
            }
            let connect = error.is_connect();
            if connect || error.connection_broken() {
                self.upstreams.mark_down(&endpoint);
                self.metrics
                    .endpoints_marked_down
                    .fetch_add(1, Ordering::Relaxed);
            }
            failure = Some(Failure {
                endpoint,
                reason: error.reason(),
            });
            let replayable = !body.started();
            if !(replayable && (connect || (idempotent && body.is_empty()))) {
                break;
            }
        }
        match failure {
            None => {
                let message = format!("503 no healthy instance of service {service}");
                local(record, StatusCode::SERVICE_UNAVAILABLE, message)
            }
            Some(Failure { endpoint, reason }) => {
                let message = format!(
                    "502 instance {} of service {service} failed: {reason}",
                    endpoint.id
                );
                local(record, StatusCode::BAD_GATEWAY, message)
            }
        }
    }

    /// Sends a request to `endpoint` over an idle keep-alive connection, or a new one when
    /// none is left. A request the upstream dropped unanswered on a kept-alive connection (one
    /// the upstream was closing as it went out) goes once more on a new connection, when it
    /// may be sent twice.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        endpoint: &Arc<EndpointState>,
        method: &Method,
        head: &[u8],
        body: &mut RequestBody<'_>,
        idempotent: bool,
        now: Instant,
        upstream: &mut Stall,
    ) -> Result<(ResponseHead, Connection), AttemptError> {
        let mut fresh = false;
        loop {
            // Waiting for a connection to the endpoint counts as the endpoint's time.
            let checkout = {
                let checkout = endpoint.connections.checkout(fresh, now);
                tokio::pin!(checkout);
                poll_fn(|cx| match checkout.as_mut().poll(cx) {
                    Poll::Ready(checkout) => Poll::Ready(Ok(checkout)),
                    Poll::Pending => upstream
                        .poll_expired(cx)
                        .map(|()| Err(AttemptError::TimedOut)),
                })
                .await?
            };
            let (mut connection, reused) = match checkout {
                Checkout::Idle(connection) => (connection, true),
                Checkout::Open(permit) => {
                    let timeout = self.config.upstream_connect_timeout;
                    let mut connection = client::connect(endpoint.addr, timeout).await?;
                    permit.opened(&mut connection);
                    (connection, false)
                }
            };
            match connection.exchange(method, head, body, upstream).await {
                Ok(response) => return Ok((response, connection)),
                Err(error)
                    if reused
                        && idempotent
                        && !body.started()
                        && !connection.answered()
                        && error.connection_broken() =>
                {
                    fresh = true;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The HTTP/2 front end: one request of a client's HTTP/2 connection.
    pub(crate) async fn handle_http2(
        &self,
        context: Arc<ConnContext>,
        request: Request<Incoming>,
    ) -> Response<EdgeBody> {
        let (parts, incoming) = request.into_parts();
        // HTTP/2 names the host in the request target; a Host header may stand in for it.
        let host = match parts.uri.authority() {
            Some(authority) => authority.as_str(),
            None => parts
                .headers
                .get(header::HOST)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default(),
        };
        // The same rules as HTTP/1.1 for what the edge decides (h2 itself refuses
        // connection-specific headers and a body that disagrees with its length).
        let refuse = |why: &str| {
            let mut response =
                Response::new(EdgeBody::full(Bytes::from(format!("400 {why}\n")), None));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            response
        };
        if parts.method == Method::CONNECT {
            return refuse("CONNECT is not proxied");
        }
        if !crate::uri::valid_host(host.as_bytes()) {
            return refuse("invalid host");
        }
        let mut declared_length = None;
        for value in parts.headers.get_all(header::CONTENT_LENGTH) {
            let Some(length) = crate::forwarded::content_length(value.as_bytes()) else {
                return refuse("invalid content-length");
            };
            if declared_length.is_some_and(|seen| seen != length) {
                return refuse("conflicting content-length");
            }
            declared_length = Some(length);
        }
        let path = parts.uri.path();
        let normal = match crate::uri::normalize_path(path) {
            Ok(normal) => normal,
            Err(error) => return refuse(error.reason()),
        };
        let target = match (&normal, parts.uri.query()) {
            (std::borrow::Cow::Borrowed(_), _) => std::borrow::Cow::Borrowed(
                parts
                    .uri
                    .path_and_query()
                    .map_or("/", |target| target.as_str()),
            ),
            (std::borrow::Cow::Owned(normal), None) => std::borrow::Cow::Borrowed(normal.as_str()),
            (std::borrow::Cow::Owned(normal), Some(query)) => {
                std::borrow::Cow::Owned(format!("{normal}?{query}"))
            }
        };

        let empty = incoming.is_end_stream();
        let headers: Vec<(&[u8], &[u8])> = parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
            .collect();
        let mut head = Vec::with_capacity(512);
        let trace = write_upstream_head(
            &mut head,
            &UpstreamHead {
                method: parts.method.as_str(),
                target: target.as_bytes(),
                host: host.as_bytes(),
                upgrade: None,
                body: match declared_length {
                    Some(length) => UpstreamBody::Length(length),
                    None if empty => UpstreamBody::None,
                    None => UpstreamBody::Chunked,
                },
                forwarding: &context.forwarding,
            },
            headers.iter().copied(),
        );
        let inbound = Inbound {
            method: &parts.method,
            host,
            path: &normal,
            protocol: "HTTP/2.0",
            declared_length,
            trace,
        };
        // A body's source (and its body-timeout timer) is made only when there is a body.
        let mut source;
        let mut body = if empty {
            RequestBody::empty()
        } else {
            source = Http2Body::new(incoming, self.config.body_timeout);
            let limit = self.config.max_body_size;
            RequestBody::new(&mut source, declared_length.is_none(), limit)
        };
        let mut upstream = Stall::new(self.config.upstream_timeout);
        let outcome = self
            .forward(&context, &inbound, &head, &mut body, &mut upstream)
            .await;
        match outcome {
            Outcome::Local {
                record,
                status,
                message,
                headers,
            } => {
                let mut response = self.local(status, message, record);
                for (name, value) in headers {
                    response.headers_mut().append(name, value);
                }
                response
            }
            Outcome::Answered {
                record,
                head,
                connection,
                endpoint,
            } => self.respond_http2(head, connection, endpoint, record),
        }
    }

    fn respond_http2(
        &self,
        head: ResponseHead,
        mut connection: Connection,
        endpoint: Arc<EndpointState>,
        record: RequestRecord,
    ) -> Response<EdgeBody> {
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            let message = "502 the upstream switched protocols unasked".to_string();
            return self.local(StatusCode::BAD_GATEWAY, message, record);
        }
        let mut headers = HeaderMap::new();
        {
            for (name, value) in connection.headers_to_pass_on() {
                let (Ok(name), Ok(value)) =
                    (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
                else {
                    continue;
                };
                headers.append(name, value);
            }
            if let Some(length) = head.length_to_pass_on() {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
        }
        self.added.add_missing(&mut headers);
        // Usually the whole body came with the head: the connection is free at once.
        let body = match connection.take_whole_body(head.framing) {
            Some(whole) => {
                connection.release(head.keep_alive, &endpoint);
                EdgeBody::full(whole, Some(record))
            }
            None => {
                let body = ResponseBody::new(connection, head.framing, head.keep_alive, endpoint);
                EdgeBody::proxied(body, record, self.config.upstream_timeout)
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.headers_mut() = headers;
        response
    }

    /// A response made by the edge itself: `text` as a plain-text body.
    fn local(
        &self,
        status: StatusCode,
        text: String,
        mut record: RequestRecord,
    ) -> Response<EdgeBody> {
        record.status = status.as_u16();
        let body = Bytes::from(format!("{text}\n"));
        let mut response = Response::new(EdgeBody::full(body, Some(record)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        self.added.add_missing(response.headers_mut());
        response
    }
}

/// A route's checks ([`crate::guard`]) of a request: refused, or let through with its
/// upstream head changed (identity headers of a sign-in) or not.
async fn guard(
    policy: &crate::guard::RoutePolicy,
    context: &ConnContext,
    inbound: &Inbound<'_>,
    head: &[u8],
    body: &mut RequestBody<'_>,
) -> Result<Option<Vec<u8>>, crate::guard::Refusal> {
    use crate::guard::Auth;
    policy.admit(
        crate::guard::client_ip(context.client),
        inbound.declared_length,
    )?;
    if let Some(limit) = policy.max_body_size {
        body.set_limit(limit);
    }
    match &policy.auth {
        None => Ok(None),
        Some(Auth::Basic(basic)) => {
            let authorization = crate::guard::header_value(head, b"authorization");
            let user = basic.check(authorization).await?;
            let identity = [(HeaderName::from_static("x-bow-user"), user.into_bytes())];
            Ok(Some(crate::forward_auth::with_headers(head, &identity)))
        }
        Some(Auth::Forward(forward)) => {
            let add = forward.check(head).await?;
            Ok((!add.is_empty()).then(|| crate::forward_auth::with_headers(head, &add)))
        }
        Some(Auth::Oidc(oidc)) => {
            let identity = oidc.check(inbound.method, head).await?;
            Ok(Some(crate::forward_auth::with_headers(head, &identity)))
        }
    }
}

/// Headers the edge adds to every HTTPS answer that lacks them: HSTS, then the security
/// headers. Validated once, at start.
pub(crate) struct AddedHeaders {
    /// Lower-case name, its `HeaderName`, the value.
    pub(crate) headers: Vec<(Vec<u8>, HeaderName, HeaderValue)>,
}

impl AddedHeaders {
    fn new(config: &EdgeConfig) -> AddedHeaders {
        let mut headers = Vec::new();
        if !config.hsts_max_age.is_zero() {
            let value = format!(
                "max-age={}; includeSubDomains",
                config.hsts_max_age.as_secs()
            );
            headers.push((
                b"strict-transport-security".to_vec(),
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_str(&value).expect("digits and ascii make a header value"),
            ));
        }
        for (name, value) in &config.security_headers {
            let lower = name.to_ascii_lowercase();
            if let (Ok(header), Ok(value)) = (
                HeaderName::from_bytes(lower.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.push((lower.into_bytes(), header, value));
            }
        }
        AddedHeaders { headers }
    }

    fn add_missing(&self, headers: &mut HeaderMap) {
        for (_, name, value) in &self.headers {
            headers.entry(name).or_insert_with(|| value.clone());
        }
    }
}
