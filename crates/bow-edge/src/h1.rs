//! HTTP/1.1 clients, served without hyper: each request head is parsed in place with
//! httparse, the upstream request head written straight from it, and the upstream's response
//! head and body passed on from the upstream connection's buffer. Serves the edge's HTTPS
//! connections that chose http/1.1 and the service listeners' plain ones: keep-alive and
//! pipelining, `Content-Length` and chunked request bodies (streamed), `Expect:
//! 100-continue`, HTTP/1.0 clients, upgrades (WebSocket tunnels), the head and body size
//! limits. The head and idle timeouts are the watchdog's of [`crate::server`].

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::body::{BodyFailure, BodySource, RequestBody, RequestRecord, stalled_upstream};
use crate::client::{BodyDecoder, Connection, Decoded, Framing, ResponseBody, ResponseHead};
use crate::forwarded::push_header;
use crate::h1_wire::{hex_line, push_connection, push_date, push_status_line};
use crate::proxy::{Inbound, Outcome, Proxy};
use crate::request_head::{BadRequest, HeadBuffers, RequestFacts, read_request_head};
use crate::server::{Activity, ConnContext, closed};
use crate::stall::Stall;

/// Free input buffer space asked of the allocator before a read, when less is left.
const READ_SIZE: usize = 8 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How long a connection asked to finish waits, between requests, for a request the client
/// may already be sending.
const LAST_CALL: std::time::Duration = std::time::Duration::from_millis(500);

/// A client's HTTP/1.1 connection being served; asked to finish gracefully it closes after
/// the response in progress (or at once when it is between requests).
pub(crate) struct Http1Connection {
    activity: Arc<Activity>,
    serving: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Http1Connection {
    pub(crate) fn begin_shutdown(&mut self) {
        self.activity.closing.store(true, Ordering::SeqCst);
    }
}

impl Future for Http1Connection {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.serving.as_mut().poll(cx)
    }
}

/// Serves `io` (a client connection) through `proxy`.
pub(crate) fn serve<IO>(io: IO, context: Arc<ConnContext>, proxy: Arc<Proxy>) -> Http1Connection
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = context.activity.clone();
    let client = Client {
        io,
        upstream: Stall::new(proxy.config.upstream_timeout),
        stall: Stall::new(proxy.config.body_timeout),
        input: BytesMut::new(),
        output: Vec::new(),
        head: HeadBuffers::default(),
        unread_body: false,
    };
    Http1Connection {
        activity,
        serving: Box::pin(run(client, context, proxy)),
    }
}

/// One client connection and the buffers its requests reuse.
struct Client<IO> {
    io: IO,
    /// The upstream timeout of the request in progress (one timer for the connection).
    upstream: Stall,
    /// The body timeout: how long the client may keep the request in progress waiting on it.
    stall: Stall,
    /// Bytes read from the client and not used yet.
    input: BytesMut,
    /// The response being written.
    output: Vec<u8>,
    /// The current request's upstream head, host and path.
    head: HeadBuffers,
    /// The last request was answered before its body was read to its end.
    unread_body: bool,
}

async fn run<IO>(mut client: Client<IO>, context: Arc<ConnContext>, proxy: Arc<Proxy>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let limit = proxy.config.max_header_size;
    loop {
        let facts = match client.read_head(limit, &context).await {
            Ok(Some(facts)) => facts,
            Ok(None) => return,
            Err(BadRequest { status, why }) => {
                let message = format!("{} {why}", status.as_u16());
                if client.answer_bad(&proxy, status, &message).await.is_ok() {
                    crate::linger::linger(&mut client.io).await;
                }
                return;
            }
        };
        match client.serve_request(facts, &context, &proxy).await {
            Ok(true) if !context.activity.closing.load(Ordering::SeqCst) => {}
            served => {
                // Answered before its body was read (413, 401…): linger, so the client
                // reads the answer instead of meeting a reset while it still sends.
                let unread = served.is_ok() && client.unread_body;
                if client.io.shutdown().await.is_ok() && unread {
                    crate::linger::linger(&mut client.io).await;
                }
                return;
            }
        }
    }
}

impl<IO> Client<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Reads until a whole request head is in the input and takes it ([`Client::take_head`]);
    /// `None` when the client closed, the connection failed, or it is to close with nothing
    /// pending.
    async fn read_head(
        &mut self,
        limit: usize,
        context: &ConnContext,
    ) -> Result<Option<RequestFacts>, BadRequest> {
        loop {
            if !self.input.is_empty()
                && let Some(facts) = self.take_head(limit, context)?
            {
                return Ok(Some(facts));
            }
            let closing = &context.activity.closing;
            let mut last_call: Option<Pin<Box<tokio::time::Sleep>>> = None;
            let read = poll_fn(|cx| {
                // Asked to finish between requests: a client may be sending its next request
                // now. Wait a moment for it (answered with `connection: close`), then close.
                if self.input.is_empty() && closing.load(Ordering::SeqCst) {
                    let timer =
                        last_call.get_or_insert_with(|| Box::pin(tokio::time::sleep(LAST_CALL)));
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Ok(0));
                    }
                }
                reserve(&mut self.input);
                tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.input)
            })
            .await;
            match read {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// Parses the head at the front of the input ([`read_request_head`]: the upstream's
    /// request head written, host and path noted) and takes it off the input; `None` while
    /// it is not all in yet.
    fn take_head(
        &mut self,
        limit: usize,
        context: &ConnContext,
    ) -> Result<Option<RequestFacts>, BadRequest> {
        let Some((length, facts)) =
            read_request_head(&self.input, limit, &context.forwarding, &mut self.head)?
        else {
            return Ok(None);
        };
        self.input.advance(length);
        Ok(Some(facts))
    }

    /// Forwards one request and writes its response. `Ok(true)` when the connection may
    /// take the next request.
    async fn serve_request(
        &mut self,
        facts: RequestFacts,
        context: &ConnContext,
        proxy: &Proxy,
    ) -> io::Result<bool> {
        let inbound = Inbound {
            method: &facts.method,
            host: &self.head.host,
            path: &self.head.path,
            protocol: "HTTP/1.1",
            declared_length: facts.declared_length,
            trace: facts.trace,
        };
        let mut decoder = BodyDecoder::new(facts.body);
        let outcome = {
            self.stall.moved();
            let mut source = ClientBody {
                io: &mut self.io,
                input: &mut self.input,
                decoder: &mut decoder,
                stall: &mut self.stall,
                continue_written: if facts.expect_continue {
                    0
                } else {
                    CONTINUE.len()
                },
            };
            let mut body = if facts.body == Framing::Empty {
                RequestBody::empty()
            } else {
                let limit = proxy.config.max_body_size;
                RequestBody::new(&mut source, facts.body == Framing::Chunked, limit)
            };
            proxy
                .forward(
                    context,
                    &inbound,
                    &self.head.upstream,
                    &mut body,
                    &mut self.upstream,
                )
                .await
        };
        // A body not read to its end leaves the connection's framing unknown; a connection
        // asked to finish says so in this answer (the client opens another for the next).
        self.unread_body = !decoder.is_done();
        let keep_alive = facts.keep_alive
            && !self.unread_body
            && !context.activity.closing.load(Ordering::SeqCst);
        match outcome {
            Outcome::Local {
                mut record,
                status,
                message,
                headers,
            } => {
                record.status = status.as_u16();
                let body = format!("{message}\n");
                record.bytes = body.len() as u64;
                self.write_local(proxy, status, &body, record.time, keep_alive, facts.http10);
                if !headers.is_empty() {
                    // After the status line: the edge's own headers of this answer.
                    let line = self
                        .output
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(0, |at| at + 1);
                    let mut extra = Vec::new();
                    for (name, value) in &headers {
                        push_header(&mut extra, name.as_str().as_bytes(), value.as_bytes());
                    }
                    self.output.splice(line..line, extra);
                }
                self.send_output(true).await?;
                drop(record);
                Ok(keep_alive)
            }
            Outcome::Answered {
                record,
                head,
                connection,
                endpoint,
            } => {
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    return self.tunnel(facts, record, head, connection, proxy).await;
                }
                self.relay(facts, record, head, connection, endpoint, keep_alive, proxy)
                    .await
            }
        }
    }

    /// Writes the upstream's response head and body to the client.
    #[allow(clippy::too_many_arguments)]
    async fn relay(
        &mut self,
        facts: RequestFacts,
        mut record: RequestRecord,
        head: ResponseHead,
        mut connection: Connection,
        endpoint: Arc<crate::upstream::EndpointState>,
        keep_alive: bool,
        proxy: &Proxy,
    ) -> io::Result<bool> {
        // A body of unknown length goes chunked to an HTTP/1.1 client; an HTTP/1.0 one reads
        // it until the connection closes.
        let known_length = matches!(head.framing, Framing::Empty | Framing::Length(_));
        let chunked = !known_length && !facts.http10;
        let keep_alive = keep_alive && (known_length || chunked);
        self.write_response_head(
            &connection,
            head,
            &record,
            keep_alive,
            chunked,
            facts.http10,
            proxy,
        );
        if let Some(whole) = connection.take_whole_body(head.framing) {
            connection.release(head.keep_alive, &endpoint);
            record.bytes = whole.len() as u64;
            self.output.extend_from_slice(&whole);
            self.send_output(true).await?;
            drop(record);
            return Ok(keep_alive);
        }
        let mut body = ResponseBody::new(connection, head.framing, head.keep_alive, endpoint);
        self.upstream.moved();
        loop {
            // Bytes already read go out with what is pending; wait for more only after a
            // flush, and for the upstream timeout at most.
            let next = poll_fn(|cx| match body.poll_data(cx) {
                Poll::Pending if !self.output.is_empty() => Poll::Ready(None),
                Poll::Pending => {
                    ready!(self.upstream.poll_expired(cx));
                    let stalled = stalled_upstream(self.upstream.limit());
                    Poll::Ready(Some(Some(Err(stalled))))
                }
                polled => {
                    self.upstream.moved();
                    polled.map(Some)
                }
            })
            .await;
            match next {
                None => {
                    self.send_output(true).await?;
                    self.output.clear();
                }
                Some(Some(Ok(data))) => {
                    record.bytes += data.len() as u64;
                    if chunked {
                        let mut size = [0u8; 18];
                        let size = hex_line(&mut size, data.len());
                        self.output.extend_from_slice(size);
                        self.output.extend_from_slice(&data);
                        self.output.extend_from_slice(b"\r\n");
                    } else {
                        self.output.extend_from_slice(&data);
                    }
                    if self.output.len() >= 64 * 1024 {
                        self.send_output(false).await?;
                        self.output.clear();
                    }
                }
                Some(None) => {
                    if chunked {
                        self.output.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.send_output(true).await?;
                    self.output.clear();
                    drop(record);
                    return Ok(keep_alive);
                }
                // The upstream broke off: the client can only tell by the connection closing.
                Some(Some(Err(_))) => {
                    self.send_output(true).await?;
                    return Ok(false);
                }
            }
        }
    }

    /// Writes the output to the client (and flushes it when `flush`), failing with
    /// `TimedOut` when the client takes none of it for the body timeout.
    async fn send_output(&mut self, flush: bool) -> io::Result<()> {
        let mut written = 0;
        self.stall.moved();
        poll_fn(|cx| {
            let stalled = |stall: &mut Stall, cx: &mut Context<'_>| {
                ready!(stall.poll_expired(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client took nothing of the response for the body timeout",
                )))
            };
            while written < self.output.len() {
                match Pin::new(&mut self.io).poll_write(cx, &self.output[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(count)) => {
                        written += count;
                        self.stall.moved();
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => return stalled(&mut self.stall, cx),
                }
            }
            if !flush {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Pending => stalled(&mut self.stall, cx),
                flushed => flushed,
            }
        })
        .await
    }

    /// Status line and headers: the upstream's without hop-by-hop ones, HSTS and `Date` when
    /// it sent none, the body's framing and what becomes of the connection.
    #[allow(clippy::too_many_arguments)]
    fn write_response_head(
        &mut self,
        connection: &Connection,
        head: ResponseHead,
        record: &RequestRecord,
        keep_alive: bool,
        chunked: bool,
        http10: bool,
        proxy: &Proxy,
    ) {
        let out = &mut self.output;
        out.clear();
        push_status_line(out, head.status);
        // Which of the added headers the upstream sent itself (a bit each; at most 64).
        let added = &proxy.added.headers;
        let mut sent: u64 = 0;
        let mut date = true;
        for (name, value) in connection.headers_to_pass_on() {
            for (bit, (lower, _, _)) in added.iter().enumerate().take(64) {
                if name.eq_ignore_ascii_case(lower) {
                    sent |= 1 << bit;
                }
            }
            date &= !name.eq_ignore_ascii_case(b"date");
            push_header(out, name, value);
        }
        if let Some(length) = head.length_to_pass_on() {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        for (bit, (lower, _, value)) in added.iter().enumerate().take(64) {
            if sent & (1 << bit) == 0 {
                push_header(out, lower, value.as_bytes());
            }
        }
        if date {
            push_date(out, record.time);
        }
        if chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        push_connection(out, keep_alive, http10);
        out.extend_from_slice(b"\r\n");
    }

    /// An answer of the edge's own: `body` as plain text.
    fn write_local(
        &mut self,
        proxy: &Proxy,
        status: StatusCode,
        body: &str,
        time: SystemTime,
        keep_alive: bool,
        http10: bool,
    ) {
        let out = &mut self.output;
        out.clear();
        push_status_line(out, status);
        out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\ncontent-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        for (lower, _, value) in &proxy.added.headers {
            push_header(out, lower, value.as_bytes());
        }
        push_date(out, time);
        push_connection(out, keep_alive, http10);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body.as_bytes());
    }

    /// Answers a head that cannot be served, and the connection closes.
    async fn answer_bad(
        &mut self,
        proxy: &Proxy,
        status: StatusCode,
        message: &str,
    ) -> io::Result<()> {
        let body = format!("{message}\n");
        self.write_local(proxy, status, &body, SystemTime::now(), false, false);
        self.send_output(true).await?;
        self.io.shutdown().await
    }

    /// The upstream switched protocols: its 101 goes to the client, then bytes are copied both
    /// ways until either side closes or the edge closes. The record (and with it the
    /// endpoint's in-flight count and the connection's slot) lives as long as the tunnel.
    async fn tunnel(
        &mut self,
        facts: RequestFacts,
        mut record: RequestRecord,
        head: ResponseHead,
        mut connection: Connection,
        proxy: &Proxy,
    ) -> io::Result<bool> {
        if !facts.upgrade {
            let status = StatusCode::BAD_GATEWAY;
            let body = "502 the upstream switched protocols unasked\n";
            record.status = status.as_u16();
            self.write_local(proxy, status, body, record.time, false, facts.http10);
            self.send_output(true).await?;
            return Ok(false);
        }
        let out = &mut self.output;
        out.clear();
        push_status_line(out, head.status);
        let mut protocol: Vec<u8> = Vec::new();
        for (name, value) in connection.response_headers() {
            if name.eq_ignore_ascii_case(b"upgrade") {
                protocol = value.to_vec();
            }
        }
        for (name, value) in connection.headers_to_pass_on() {
            push_header(out, name, value);
        }
        out.extend_from_slice(b"connection: upgrade\r\n");
        if !protocol.is_empty() {
            push_header(out, b"upgrade", &protocol);
        }
        out.extend_from_slice(b"\r\n");
        connection.consume_head();
        let (mut upstream, early) = connection.into_parts();
        self.io.write_all(&self.output).await?;
        let pending_from_client = self.input.split();
        let copied = async {
            if !early.is_empty() {
                self.io.write_all(&early).await?;
            }
            self.io.flush().await?;
            if !pending_from_client.is_empty() {
                upstream.write_all(&pending_from_client).await?;
            }
            let (_to_upstream, to_client) =
                tokio::io::copy_bidirectional(&mut self.io, &mut upstream).await?;
            Ok::<u64, io::Error>(early.len() as u64 + to_client)
        };
        tokio::select! {
            copied = copied => {
                if let Ok(to_client) = copied {
                    record.bytes = to_client;
                }
            }
            () = closed(proxy.phase.clone()) => {}
        }
        drop(record);
        Ok(false)
    }
}

fn reserve(buffer: &mut BytesMut) {
    if buffer.capacity() - buffer.len() < READ_SIZE / 8 {
        buffer.reserve(READ_SIZE);
    }
}

/// A request body read from the client's connection: after its head, in the input buffer
/// and then from the socket, as its framing delimits it.
struct ClientBody<'c, IO> {
    io: &'c mut IO,
    input: &'c mut BytesMut,
    decoder: &'c mut BodyDecoder,
    /// The body timeout.
    stall: &'c mut Stall,
    /// How much of `100 Continue` went out (all of it when none was asked for).
    continue_written: usize,
}

impl<IO> BodySource for ClientBody<'_, IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyFailure>>> {
        // The client waits for the go-ahead before sending the body it announced.
        while self.continue_written < CONTINUE.len() {
            let written =
                match Pin::new(&mut *self.io).poll_write(cx, &CONTINUE[self.continue_written..]) {
                    Poll::Pending => return self.poll_stalled(cx),
                    Poll::Ready(written) => written,
                };
            match written {
                Ok(0) | Err(_) => return Poll::Ready(Some(Err(BodyFailure::Broken))),
                Ok(written) => self.continue_written += written,
            }
            if self.continue_written == CONTINUE.len() {
                match Pin::new(&mut *self.io).poll_flush(cx) {
                    Poll::Pending => return self.poll_stalled(cx),
                    Poll::Ready(Err(_)) => return Poll::Ready(Some(Err(BodyFailure::Broken))),
                    Poll::Ready(Ok(())) => {}
                }
            }
        }
        loop {
            match self.decoder.decode(self.input) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => {}
                Err(_) => return Poll::Ready(Some(Err(BodyFailure::Broken))),
            }
            reserve(self.input);
            let read = match tokio_util::io::poll_read_buf(Pin::new(&mut *self.io), cx, self.input)
            {
                Poll::Pending => return self.poll_stalled(cx),
                Poll::Ready(read) => read,
            };
            match read {
                Ok(0) | Err(_) => return Poll::Ready(Some(Err(BodyFailure::Broken))),
                Ok(_) => self.stall.moved(),
            }
        }
    }
}

impl<IO> ClientBody<'_, IO> {
    /// Waiting on the client: pending until the body timeout passes.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyFailure>>> {
        ready!(self.stall.poll_expired(cx));
        Poll::Ready(Some(Err(BodyFailure::TimedOut)))
    }
}
