//! Bodies: the request body sent upstream (streamed, size-limited, replayable until first
//! read) and the response body sent to the client (counted, logged when it ends).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::{AccessLogSink, RequestLog};
use crate::client::ResponseBody;
use crate::metrics::RouteStats;
use crate::server::InFlight;
use crate::stall::Stall;
use crate::upstream::EndpointGuard;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a client's request body stopped before its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFailure {
    /// The client sent none of it for the body timeout.
    TimedOut,
    /// The client closed or broke its connection, or framed the body wrongly.
    Broken,
    /// It went over the body size limit.
    TooLarge,
}

/// Where a request body comes from: hyper's body of an HTTP/2 request, or the client's
/// HTTP/1.1 connection itself.
pub(crate) trait BodySource: Send {
    /// The body's next bytes; `None` at its end, `Err` when the client's side failed.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyFailure>>>;
}

/// An HTTP/2 request's body, with the body timeout between its frames.
pub(crate) struct Http2Body {
    incoming: Incoming,
    stall: Stall,
}

impl Http2Body {
    pub(crate) fn new(incoming: Incoming, body_timeout: Duration) -> Self {
        Http2Body {
            incoming,
            stall: Stall::new(body_timeout),
        }
    }
}

impl BodySource for Http2Body {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyFailure>>> {
        loop {
            let frame = match Pin::new(&mut self.incoming).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    ready!(self.stall.poll_expired(cx));
                    return Poll::Ready(Some(Err(BodyFailure::TimedOut)));
                }
            };
            self.stall.moved();
            match frame {
                // Trailers are not forwarded.
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => return Poll::Ready(Some(Ok(data))),
                    Err(_trailers) => continue,
                },
                Some(Err(_)) => return Poll::Ready(Some(Err(BodyFailure::Broken))),
                None => return Poll::Ready(None),
            }
        }
    }
}

/// A client's request body as it goes upstream: size-limited, and sent again to another
/// endpoint when the first attempt failed before reading any of it.
pub(crate) struct RequestBody<'a> {
    source: Option<&'a mut dyn BodySource>,
    /// Its length is not known: it goes upstream chunked.
    chunked: bool,
    started: bool,
    failure: Option<BodyFailure>,
    received: u64,
    limit: u64,
}

impl<'a> RequestBody<'a> {
    /// No body.
    pub(crate) fn empty() -> Self {
        RequestBody {
            source: None,
            chunked: false,
            started: false,
            failure: None,
            received: 0,
            limit: 0,
        }
    }

    /// A body from `source`; `chunked` when its length is not known.
    pub(crate) fn new(source: &'a mut dyn BodySource, chunked: bool, limit: u64) -> Self {
        RequestBody {
            source: Some(source),
            chunked,
            started: false,
            failure: None,
            received: 0,
            limit,
        }
    }

    /// Another size limit (a route's own), before any of the body was read.
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Whether there is no body to send.
    pub(crate) fn is_empty(&self) -> bool {
        self.source.is_none() && !self.started
    }

    pub(crate) fn is_chunked(&self) -> bool {
        self.chunked
    }

    /// Whether any of the body was read (and so sent upstream).
    pub(crate) fn started(&self) -> bool {
        self.started
    }

    /// Why the client's body stopped before its end, if it did.
    pub(crate) fn failure(&self) -> Option<BodyFailure> {
        self.failure
    }

    /// The body's next bytes; `None` at its end, `Err` when the client's body failed or
    /// went over the limit (see [`RequestBody::failure`]).
    pub(crate) fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BodyFailure>>> {
        self.started = true;
        loop {
            let Some(source) = self.source.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(source.poll_data(cx)) {
                Some(Ok(data)) => {
                    self.received += data.len() as u64;
                    if self.received > self.limit {
                        self.failure = Some(BodyFailure::TooLarge);
                        self.source = None;
                        return Poll::Ready(Some(Err(BodyFailure::TooLarge)));
                    }
                    if data.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Some(Err(failure)) => {
                    self.failure = Some(failure);
                    self.source = None;
                    return Poll::Ready(Some(Err(failure)));
                }
                None => {
                    self.source = None;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

/// What is known about a request by the time it is answered; recorded (access log and
/// metrics) when dropped, that is when the response body or the tunnel ended.
pub(crate) struct RequestRecord {
    pub(crate) started: Instant,
    pub(crate) time: SystemTime,
    pub(crate) host: Arc<str>,
    pub(crate) method: http::Method,
    /// The path of the request target, without the query.
    pub(crate) path: String,
    pub(crate) protocol: &'static str,
    pub(crate) client: SocketAddr,
    pub(crate) status: u16,
    pub(crate) bytes: u64,
    pub(crate) service: Option<Arc<str>>,
    pub(crate) trace: crate::TraceContext,
    pub(crate) stats: Option<Arc<RouteStats>>,
    pub(crate) endpoint: Option<EndpointGuard>,
    pub(crate) sink: Arc<dyn AccessLogSink>,
    /// Held for its drop: the connection is busy while the request lives.
    pub(crate) _in_flight: InFlight,
}

impl RequestRecord {
    /// Counts the request in `stats` (the route it goes to) from now on, and no longer in
    /// the route it was counted in before.
    pub(crate) fn count_in(&mut self, stats: &Arc<RouteStats>) {
        stats.begin();
        if let Some(before) = self.stats.replace(stats.clone()) {
            before.abandon();
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        if let Some(stats) = &self.stats {
            stats.observe(&self.method, self.status, self.bytes, elapsed);
        }
        self.sink.record_request(&RequestLog {
            time: self.time,
            host: &self.host,
            method: self.method.as_str(),
            path: &self.path,
            status: self.status,
            bytes: self.bytes,
            duration: elapsed,
            service: self.service.as_deref(),
            upstream: self.endpoint.as_ref().map(|guard| &*guard.endpoint().id),
            client: self.client,
            protocol: self.protocol,
            trace: self.trace,
        });
        // The endpoint guard and the in-flight mark drop after the entry was recorded.
    }
}

enum Content {
    Full(Option<Bytes>),
    /// An upstream's response body, read from its connection; the upstream may go silent in
    /// it for `limit` at most (the timer is made at the first wait).
    Proxied {
        body: ResponseBody,
        stall: Option<Stall>,
        limit: Duration,
    },
}

/// The body of every response the edge sends on HTTPS.
pub(crate) struct EdgeBody {
    content: Content,
    record: Option<RequestRecord>,
}

impl EdgeBody {
    pub(crate) fn full(bytes: Bytes, record: Option<RequestRecord>) -> Self {
        EdgeBody {
            content: Content::Full(Some(bytes).filter(|bytes| !bytes.is_empty())),
            record,
        }
    }

    /// `body` from an upstream that may go silent in it for `upstream_timeout` at most.
    pub(crate) fn proxied(
        body: ResponseBody,
        record: RequestRecord,
        upstream_timeout: Duration,
    ) -> Self {
        EdgeBody {
            content: Content::Proxied {
                body,
                stall: None,
                limit: upstream_timeout,
            },
            record: Some(record),
        }
    }

    fn count(&mut self, frame: &Frame<Bytes>) {
        if let (Some(record), Some(data)) = (self.record.as_mut(), frame.data_ref()) {
            record.bytes += data.len() as u64;
        }
    }
}

impl Body for EdgeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.content {
            Content::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Content::Proxied { body, stall, limit } => match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => {
                    let stall = stall.get_or_insert_with(|| Stall::new(*limit));
                    ready!(stall.poll_expired(cx));
                    Poll::Ready(Some(Err(stalled_upstream(*limit))))
                }
                polled => {
                    if let Some(stall) = stall {
                        stall.moved();
                    }
                    polled
                }
            },
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.count(&frame);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                // Record at once rather than when hyper gets round to dropping the body.
                this.record = None;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.content {
            Content::Full(bytes) => bytes.is_none(),
            Content::Proxied { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.content {
            Content::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |bytes| bytes.len() as u64))
            }
            Content::Proxied { body, .. } => body.size_hint(),
        }
    }
}

/// The error a response body ends with when its upstream went silent for `limit`.
pub(crate) fn stalled_upstream(limit: Duration) -> BoxError {
    format!(
        "the upstream sent nothing of the response body for {}s",
        limit.as_secs_f64()
    )
    .into()
}
