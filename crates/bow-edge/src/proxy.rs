//! The HTTPS request path: route, rewrite headers, pick an endpoint, forward with a safe
//! retry, stream the answer back (or tunnel an upgrade), and answer errors in plain text.

use std::cell::OnceCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::access_log::AccessLogSink;
use crate::body::{BodySlot, EdgeBody, RequestRecord, UpstreamBody};
use crate::config::EdgeConfig;
use crate::forwarded::{
    add_forwarded, join_cookies, restore_upgrade, strip_hop_by_hop, upgrade_request,
};
use crate::metrics::MetricsRegistry;
use crate::pool::{self, AttemptError, Lent};
use crate::redirect::strip_port;
use crate::routes::normalized_host;
use crate::server::{ConnContext, InFlight, Phase, closed};
use crate::upstream::{ActiveTable, EndpointGuard, EndpointState, Upstreams};

/// Attempts per request at most (the first one and its retries).
const MAX_ATTEMPTS: usize = 3;

/// How long an endpoint that refused or reset a connection is skipped.
pub(crate) const DOWN_COOLOFF: Duration = Duration::from_secs(2);

pub(crate) struct Proxy {
    config: Arc<EdgeConfig>,
    table: Arc<ArcSwap<ActiveTable>>,
    upstreams: Arc<Upstreams>,
    metrics: Arc<MetricsRegistry>,
    access_log: Arc<dyn AccessLogSink>,
    hsts: Option<HeaderValue>,
    phase: watch::Receiver<Phase>,
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
        let hsts = (!config.hsts_max_age.is_zero()).then(|| {
            let value = format!(
                "max-age={}; includeSubDomains",
                config.hsts_max_age.as_secs()
            );
            HeaderValue::from_str(&value).expect("digits and ascii make a header value")
        });
        Proxy {
            config,
            table,
            upstreams,
            metrics,
            access_log,
            hsts,
            phase,
        }
    }

    pub(crate) async fn handle(
        &self,
        context: Arc<ConnContext>,
        mut request: Request<Incoming>,
    ) -> Response<EdgeBody> {
        let started = Instant::now();
        let time = SystemTime::now();
        // HTTP/2 names the host in the request target, HTTP/1.1 in the Host header.
        let host_value = match request.uri().authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => request.headers().get(header::HOST).cloned(),
        }
        .unwrap_or_else(|| HeaderValue::from_static(""));
        let host = normalized_host(strip_port(host_value.to_str().unwrap_or_default()));
        let table = self.table.load_full();
        // A table that replaced `table` while this request started, looked at when none of
        // `table`'s endpoints could be picked because the swap had just retired them.
        let newer: OnceCell<Arc<ActiveTable>> = OnceCell::new();
        let found = table.lookup(&host, request.uri().path());
        let mut record = RequestRecord {
            started,
            time,
            host: found.map_or_else(|| Arc::from(&*host), |route| route.host.clone()),
            method: request.method().clone(),
            target: request.uri().clone(),
            protocol: if request.version() == Version::HTTP_2 {
                "HTTP/2.0"
            } else {
                "HTTP/1.1"
            },
            client: context.client,
            status: 0,
            bytes: 0,
            service: None,
            stats: None,
            endpoint: None,
            sink: self.access_log.clone(),
            in_flight: Some(InFlight::new(&context.activity)),
        };
        let Some(mut route) = found else {
            self.metrics
                .unrouted_requests
                .fetch_add(1, Ordering::Relaxed);
            let message = format!("404 no route for {host}");
            return self.local(StatusCode::NOT_FOUND, message, record);
        };
        let mut service = route.service.clone();
        record.service = Some(service.clone());
        record.stats = Some(route.stats.clone());

        let limit = self.config.max_body_size;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit) {
            let message = format!("413 request body larger than {limit} bytes");
            return self.local(StatusCode::PAYLOAD_TOO_LARGE, message, record);
        }
        let upgrade = (request.version() == Version::HTTP_11)
            .then(|| upgrade_request(request.headers()))
            .flatten();
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));

        let (parts, body) = request.into_parts();
        let body = if body.is_end_stream() {
            None
        } else {
            Some(Arc::new(BodySlot::new(body, limit)))
        };
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        join_cookies(&mut headers);
        add_forwarded(&mut headers, &context.forwarding, &host_value);
        if headers.get(header::HOST) != Some(&host_value) {
            headers.insert(header::HOST, host_value.clone());
        }
        if let Some(protocol) = upgrade {
            restore_upgrade(&mut headers, protocol);
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let idempotent = matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );

        let mut tried: Vec<Arc<EndpointState>> = Vec::new();
        let mut failure: Option<Failure> = None;
        while tried.len() < MAX_ATTEMPTS {
            let Some(guard) = self.upstreams.pick(route, &tried) else {
                if tried.is_empty() && newer.get().is_none() {
                    let fresh = self.table.load_full();
                    if !Arc::ptr_eq(&fresh, &table)
                        && let Some(next) =
                            newer.get_or_init(|| fresh).lookup(&host, parts.uri.path())
                    {
                        route = next;
                        service = route.service.clone();
                        record.service = Some(service.clone());
                        record.stats = Some(route.stats.clone());
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
            let Some(uri) = upstream_uri(&path_and_query) else {
                let message = "400 the request target is not a valid path".to_string();
                return self.local(StatusCode::BAD_REQUEST, message, record);
            };
            let upstream_body = match &body {
                None => UpstreamBody::Empty,
                Some(slot) => UpstreamBody::Streaming(slot.clone()),
            };
            let mut upstream_request = Request::new(upstream_body);
            *upstream_request.method_mut() = parts.method.clone();
            *upstream_request.uri_mut() = uri;
            *upstream_request.version_mut() = Version::HTTP_11;
            // The last attempt the route allows takes the headers; an earlier one sends a copy
            // the retry needs (with a single instance every request is its own last attempt).
            let last = tried.len() >= MAX_ATTEMPTS.min(route.endpoint_count());
            *upstream_request.headers_mut() = if last {
                std::mem::take(&mut headers)
            } else {
                headers.clone()
            };

            let sent = self.send(&endpoint, upstream_request);
            let answered = tokio::time::timeout(self.config.upstream_timeout, sent).await;
            let error = match answered {
                Ok(Ok((response, connection))) => {
                    return self.respond(
                        response,
                        connection,
                        guard,
                        record,
                        client_upgrade,
                        context,
                    );
                }
                Err(_elapsed) => {
                    record.endpoint = Some(guard);
                    let message = format!(
                        "504 service {service} did not answer within {}s (instance {})",
                        self.config.upstream_timeout.as_secs_f64(),
                        endpoint.id
                    );
                    return self.local(StatusCode::GATEWAY_TIMEOUT, message, record);
                }
                Ok(Err(error)) => error,
            };
            if body.as_ref().is_some_and(|slot| slot.too_large()) {
                let message = format!("413 request body larger than {limit} bytes");
                return self.local(StatusCode::PAYLOAD_TOO_LARGE, message, record);
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
            let replayable = body.as_ref().is_none_or(|slot| !slot.started());
            let body_empty = body.is_none();
            if !(replayable && (connect || (idempotent && body_empty))) {
                break;
            }
        }
        match failure {
            None => {
                let message = format!("503 no healthy instance of service {service}");
                self.local(StatusCode::SERVICE_UNAVAILABLE, message, record)
            }
            Some(Failure { endpoint, reason }) => {
                let message = format!(
                    "502 instance {} of service {service} failed: {reason}",
                    endpoint.id
                );
                self.local(StatusCode::BAD_GATEWAY, message, record)
            }
        }
    }

    /// Sends `request` to `endpoint` over an idle keep-alive connection, or a new one when
    /// none is left or the idle ones closed before taking the request.
    async fn send(
        &self,
        endpoint: &Arc<EndpointState>,
        mut request: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Lent), AttemptError> {
        loop {
            let (mut sender, reused) = match endpoint.connections.take() {
                Some(sender) => (sender, true),
                None => {
                    let timeout = self.config.upstream_connect_timeout;
                    (pool::connect(endpoint, timeout).await?, false)
                }
            };
            if let Err(error) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(AttemptError::Http(error));
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Lent::new(endpoint.clone(), sender))),
                Err(mut error) => match error.take_message() {
                    // An idle connection the upstream had just closed: nothing was sent.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(AttemptError::Http(error.into_error())),
                },
            }
        }
    }

    fn respond(
        &self,
        mut response: Response<Incoming>,
        connection: Lent,
        guard: EndpointGuard,
        mut record: RequestRecord,
        client_upgrade: Option<OnUpgrade>,
        context: Arc<ConnContext>,
    ) -> Response<EdgeBody> {
        record.status = response.status().as_u16();
        record.endpoint = Some(guard);
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                let message = "502 the upstream switched protocols unasked".to_string();
                return self.local(StatusCode::BAD_GATEWAY, message, record);
            };
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let protocol = response.headers().get(header::UPGRADE).cloned();
            let (mut parts, _body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            if let Some(protocol) = protocol {
                restore_upgrade(&mut parts.headers, protocol);
            }
            // The connection no longer counts as busy; the tunnel holds its slot instead.
            record.in_flight = None;
            tokio::spawn(tunnel(
                client_upgrade,
                upstream_upgrade,
                record,
                context,
                self.phase.clone(),
            ));
            return Response::from_parts(parts, EdgeBody::full(Bytes::new(), None));
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        self.add_hsts(&mut parts.headers);
        Response::from_parts(parts, EdgeBody::proxied(body, connection, record))
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
        self.add_hsts(response.headers_mut());
        response
    }

    fn add_hsts(&self, headers: &mut http::HeaderMap) {
        if let Some(hsts) = &self.hsts {
            headers
                .entry(header::STRICT_TRANSPORT_SECURITY)
                .or_insert_with(|| hsts.clone());
        }
    }
}

/// Copies bytes both ways between the upgraded client and upstream connections until
/// either side closes or the edge closes. The record (and with it the endpoint's in-flight
/// count and the connection slot) lives as long as the tunnel.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    mut record: RequestRecord,
    context: Arc<ConnContext>,
    phase: watch::Receiver<Phase>,
) {
    let (client, upstream) = tokio::join!(client, upstream);
    let (Ok(client), Ok(upstream)) = (client, upstream) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Ok((_to_upstream, to_client)) = copied {
                record.bytes = to_client;
            }
        }
        () = closed(phase) => {}
    }
    drop(record);
    drop(context);
}

/// The request target for the upstream in origin form (`/path?query`), or `None` for one
/// that is not a path (`*`).
fn upstream_uri(path_and_query: &PathAndQuery) -> Option<Uri> {
    path_and_query
        .as_str()
        .starts_with('/')
        .then(|| Uri::from(path_and_query.clone()))
}
