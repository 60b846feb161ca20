//! Bodies: the request body sent upstream (streamed, size-limited, replayable until first
//! read) and the response body sent to the client (counted, logged when it ends).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::{AccessLogSink, RequestLog};
use crate::metrics::RouteStats;
use crate::pool::Lent;
use crate::server::InFlight;
use crate::upstream::EndpointGuard;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client sent more body than allowed.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {limit} bytes")]
pub(crate) struct BodyTooLarge {
    limit: u64,
}

/// A client's request body, shared so that it can be sent again to another endpoint when
/// the first attempt failed before reading any of it.
#[derive(Debug)]
pub(crate) struct BodySlot {
    inner: Mutex<Option<Incoming>>,
    started: AtomicBool,
    received: AtomicU64,
    too_large: AtomicBool,
    limit: u64,
}

impl BodySlot {
    pub(crate) fn new(body: Incoming, limit: u64) -> Self {
        BodySlot {
            inner: Mutex::new(Some(body)),
            started: AtomicBool::new(false),
            received: AtomicU64::new(0),
            too_large: AtomicBool::new(false),
            limit,
        }
    }

    /// Whether any of the body was read (and so sent upstream).
    pub(crate) fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    pub(crate) fn too_large(&self) -> bool {
        self.too_large.load(Ordering::SeqCst)
    }
}

/// The body of a request sent upstream.
#[derive(Debug)]
pub(crate) enum UpstreamBody {
    Empty,
    Streaming(Arc<BodySlot>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let slot = match &*self {
            UpstreamBody::Empty => return Poll::Ready(None),
            UpstreamBody::Streaming(slot) => slot,
        };
        slot.started.store(true, Ordering::SeqCst);
        let mut inner = slot
            .inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let Some(body) = inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total = slot.received.fetch_add(data.len() as u64, Ordering::SeqCst)
                        + data.len() as u64;
                    if total > slot.limit {
                        slot.too_large.store(true, Ordering::SeqCst);
                        *inner = None;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: slot.limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(Box::new(error)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Streaming(slot) => slot
                .inner
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .as_ref()
                .is_none_or(|body| body.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Streaming(slot) => slot
                .inner
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .as_ref()
                .map(|body| body.size_hint())
                .unwrap_or_else(|| SizeHint::with_exact(0)),
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
    /// The request target as received; the log shows its path only.
    pub(crate) target: http::Uri,
    pub(crate) protocol: &'static str,
    pub(crate) client: SocketAddr,
    pub(crate) status: u16,
    pub(crate) bytes: u64,
    pub(crate) service: Option<Arc<str>>,
    pub(crate) stats: Option<Arc<RouteStats>>,
    pub(crate) endpoint: Option<EndpointGuard>,
    pub(crate) sink: Arc<dyn AccessLogSink>,
    pub(crate) in_flight: Option<InFlight>,
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        if let Some(stats) = &self.stats {
            stats.observe(self.status, elapsed);
        }
        self.sink.record_request(&RequestLog {
            time: self.time,
            host: &self.host,
            method: self.method.as_str(),
            path: self.target.path(),
            status: self.status,
            bytes: self.bytes,
            duration: elapsed,
            service: self.service.as_deref(),
            upstream: self.endpoint.as_ref().map(|guard| &*guard.endpoint().id),
            client: self.client,
            protocol: self.protocol,
        });
        // The endpoint guard and the in-flight mark drop after the entry was recorded.
    }
}

enum Content {
    Full(Option<Bytes>),
    /// An upstream's response body, and its connection until the body ended.
    Proxied(Incoming, Option<Lent>),
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

    pub(crate) fn proxied(body: Incoming, connection: Lent, record: RequestRecord) -> Self {
        EdgeBody {
            content: Content::Proxied(body, Some(connection)),
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
            Content::Proxied(body, connection) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(BoxError::from(error)))),
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(None) => {
                    // The whole response was read: the connection can take another request.
                    if let Some(connection) = connection.take() {
                        connection.give_back();
                    }
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
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
            Content::Proxied(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.content {
            Content::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |bytes| bytes.len() as u64))
            }
            Content::Proxied(body, _) => body.size_hint(),
        }
    }
}

impl Drop for EdgeBody {
    fn drop(&mut self) {
        // A body that was empty from the start may never be polled; a connection whose
        // response was cut short is closed (dropped) instead.
        if let Content::Proxied(body, connection) = &mut self.content
            && body.is_end_stream()
            && let Some(connection) = connection.take()
        {
            connection.give_back();
        }
    }
}
