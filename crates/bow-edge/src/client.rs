//! HTTP/1.1 to upstream endpoints, run in the task of the request that uses the connection:
//! no task per connection and no channels between tasks. The request head (and body) is
//! written, the response head parsed with httparse, and the response body read as the
//! client's connection asks for it. A connection whose response ended cleanly goes back to
//! its endpoint's idle stack ([`crate::pool`]).

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::body::{BoxError, RequestBody};
use crate::forwarded::HopByHop;
use crate::pool::AttemptError;
use crate::stall::Stall;
use crate::upstream::EndpointState;

/// Free buffer space asked of the allocator before a read, when less is left.
const READ_SIZE: usize = 8 * 1024;

/// Largest response head taken from an upstream.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Most response headers taken from an upstream.
const MAX_RESPONSE_HEADERS: usize = 128;

/// Bodies up to this size that came whole with their head are copied out of the buffer.
const SMALL_BODY: usize = 4 * 1024;

/// Longest chunk-size or trailer line of a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Most bytes of trailers after a chunked body.
const MAX_TRAILERS: usize = 16 * 1024;

/// One keep-alive connection to an upstream endpoint.
pub(crate) struct Connection {
    stream: TcpStream,
    /// Bytes read and not used yet: a response head, what follows it, a body's next bytes.
    buffer: BytesMut,
    /// The length of the response head at the front of `buffer` (0 when none is).
    head_length: usize,
    /// Where each header of that head sits in it: name start, name end, value start, end.
    spans: Vec<[u32; 4]>,
    /// When the last request on it began (or it was opened): its idle age in the pool.
    pub(crate) last_used: Instant,
    /// Its place among the endpoint's connections ([`crate::pool`]); a tunnel gives it up.
    pub(crate) slot: Option<crate::pool::Slot>,
}

/// Opens a connection to `addr`.
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Connection, AttemptError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_elapsed| AttemptError::ConnectTimedOut)?
        .map_err(AttemptError::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(Connection {
        stream,
        buffer: BytesMut::new(),
        head_length: 0,
        spans: Vec::new(),
        last_used: Instant::now(),
        slot: None,
    })
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body: HEAD, 1xx, 204, 304.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// A response head from an upstream; its headers stay in the connection's buffer
/// ([`Connection::response_headers`]) until [`Connection::consume_head`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) framing: Framing,
    /// Whether the connection may take another request once the body was read.
    pub(crate) keep_alive: bool,
    /// The `Content-Length` the upstream declared (one value, duplicates collapsed): passed
    /// on by the edge itself, also where there is no body (HEAD, 304).
    pub(crate) declared_length: Option<u64>,
}

impl Connection {
    /// Whether this idle connection can take a request: the upstream neither closed it nor
    /// wrote to it since its last response. Costs a system call only when the reactor saw
    /// the socket become readable.
    pub(crate) fn is_usable(&mut self) -> bool {
        if !self.buffer.is_empty() {
            return false;
        }
        let mut context = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut context) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(error) if error.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Whether any byte of a response came in on the current exchange.
    pub(crate) fn answered(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// Sends a request (its whole head in `head`, then `body`) and reads the response head,
    /// which stays at the front of the buffer. Skips interim (1xx) responses except 101
    /// Switching Protocols. When the upstream answers before the whole body was sent, the
    /// rest is not sent and the connection is not reused. `upstream` limits how long the
    /// upstream may keep it waiting (time waiting for the client's body does not count).
    pub(crate) async fn exchange(
        &mut self,
        method: &Method,
        head: &[u8],
        body: &mut RequestBody<'_>,
        upstream: &mut Stall,
    ) -> Result<ResponseHead, AttemptError> {
        let chunked = body.is_chunked();
        let mut sender = Sending {
            head_written: 0,
            pending: [Bytes::new(), Bytes::new(), Bytes::new()],
            next: 3,
            body_done: body.is_empty(),
            chunked,
        };
        let early = poll_fn(|cx| self.poll_send(cx, head, &mut sender, body, upstream)).await?;
        loop {
            if let Some(mut response) = self.parse_head(method)? {
                if response.status.is_informational()
                    && response.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    self.consume_head();
                    continue;
                }
                if early == Sent::Partly {
                    response.keep_alive = false;
                }
                return Ok(response);
            }
            if self.buffer.len() >= MAX_RESPONSE_HEAD {
                return Err(AttemptError::Invalid("response head too large"));
            }
            let filled = poll_fn(|cx| match self.poll_fill(cx) {
                Poll::Pending => upstream
                    .poll_expired(cx)
                    .map(|()| Err(AttemptError::TimedOut)),
                Poll::Ready(filled) => {
                    upstream.moved();
                    Poll::Ready(filled.map_err(AttemptError::Io))
                }
            })
            .await?;
            if filled == 0 {
                return Err(AttemptError::Closed);
            }
        }
    }

    /// The response head's headers as received, hop-by-hop ones included.
    pub(crate) fn response_headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        let head = &self.buffer[..self.head_length];
        self.spans
            .iter()
            .map(move |&[name, name_end, value, value_end]| {
                (
                    &head[name as usize..name_end as usize],
                    &head[value as usize..value_end as usize],
                )
            })
    }

    /// The response headers a client gets: all but hop-by-hop ones and `Content-Length`,
    /// which the edge writes itself ([`ResponseHead::length_to_pass_on`]).
    pub(crate) fn headers_to_pass_on(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let hop = HopByHop::new(self.response_headers());
        self.response_headers().filter(move |(name, _)| {
            !hop.contains(name) && !name.eq_ignore_ascii_case(b"content-length")
        })
    }

    /// Drops the response head from the buffer once it was passed on.
    pub(crate) fn consume_head(&mut self) {
        self.buffer.advance(self.head_length);
        self.head_length = 0;
        self.spans.clear();
    }

    /// A response head from the front of the buffer, or `None` when it is not all in yet.
    fn parse_head(&mut self, method: &Method) -> Result<Option<ResponseHead>, AttemptError> {
        let parsed = parse_response_head(&self.buffer, method, &mut self.spans)?;
        Ok(parsed.map(|(length, head)| {
            self.head_length = length;
            head
        }))
    }

    /// Writes what `sender` holds and the body after it. While waiting (on the socket or the
    /// client's body) it watches for an early answer from the upstream; while waiting on the
    /// socket, for the upstream timeout too.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        head: &[u8],
        sender: &mut Sending,
        body: &mut RequestBody<'_>,
        upstream: &mut Stall,
    ) -> Poll<Result<Sent, AttemptError>> {
        while sender.head_written < head.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &head[sender.head_written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(AttemptError::Io(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(written)) => sender.head_written += written,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(AttemptError::Io(error))),
                Poll::Pending => return self.poll_blocked(cx, upstream),
            }
        }
        loop {
            while sender.next < sender.pending.len() {
                let piece = &mut sender.pending[sender.next];
                if piece.is_empty() {
                    sender.next += 1;
                    continue;
                }
                match Pin::new(&mut self.stream).poll_write(cx, piece) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(AttemptError::Io(io::ErrorKind::WriteZero.into())));
                    }
                    Poll::Ready(Ok(written)) => {
                        piece.advance(written);
                        upstream.moved();
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(AttemptError::Io(error))),
                    Poll::Pending => return self.poll_blocked(cx, upstream),
                }
            }
            if sender.body_done {
                return Poll::Ready(Ok(Sent::Whole));
            }
            match body.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => sender.load(data),
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(AttemptError::Body)),
                Poll::Ready(None) => sender.finish(),
                Poll::Pending => return self.poll_early_answer(cx),
            }
        }
    }

    /// The upstream does not take the request: pending, unless it answered early or the
    /// upstream timeout passed.
    fn poll_blocked(
        &mut self,
        cx: &mut Context<'_>,
        upstream: &mut Stall,
    ) -> Poll<Result<Sent, AttemptError>> {
        match self.poll_early_answer(cx) {
            Poll::Pending => upstream
                .poll_expired(cx)
                .map(|()| Err(AttemptError::TimedOut)),
            answered => answered,
        }
    }

    /// Pending, unless the upstream answered (or closed) while the request was still going out.
    fn poll_early_answer(&mut self, cx: &mut Context<'_>) -> Poll<Result<Sent, AttemptError>> {
        loop {
            match self.stream.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(AttemptError::Io(error))),
                Poll::Ready(Ok(())) => {}
            }
            self.reserve();
            match self.stream.try_read_buf(&mut self.buffer) {
                Ok(0) => return Poll::Ready(Err(AttemptError::Closed)),
                Ok(_) => return Poll::Ready(Ok(Sent::Partly)),
                // The readiness was stale; polling again registers for the next one.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(AttemptError::Io(error))),
            }
        }
    }

    fn reserve(&mut self) {
        if self.buffer.capacity() - self.buffer.len() < READ_SIZE / 4 {
            self.buffer.reserve(READ_SIZE);
        }
    }

    /// Reads more into the buffer; `Ok(0)` when the upstream closed the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.reserve();
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buffer)
    }

    /// Gives the connection back to `endpoint` for the next request once its response was read
    /// whole, when the response allows and nothing came after it; else closes it.
    pub(crate) fn release(self, keep_alive: bool, endpoint: &EndpointState) {
        if keep_alive && self.buffer.is_empty() {
            endpoint.connections.give_back(self);
        }
    }

    /// The socket and what was read past the response head: the upstream side of a tunnel.
    pub(crate) fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.buffer)
    }

    /// Takes the whole body off the buffer (after the head) when all of it is there already.
    pub(crate) fn take_whole_body(&mut self, framing: Framing) -> Option<Bytes> {
        self.consume_head();
        match framing {
            Framing::Empty => Some(Bytes::new()),
            Framing::Length(length) if (self.buffer.len() as u64) >= length => {
                let length = length as usize;
                // A small body is copied, so the buffer stays unshared and is reused as is.
                if length <= SMALL_BODY {
                    let body = Bytes::copy_from_slice(&self.buffer[..length]);
                    self.buffer.advance(length);
                    Some(body)
                } else {
                    Some(self.buffer.split_to(length).freeze())
                }
            }
            _ => None,
        }
    }
}

/// Whether a request went out whole or the upstream answered before its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    Whole,
    Partly,
}

/// How far a request went out: the head, then the body a piece at a
/// time, each in up to three parts (a chunk's size line, its data and the line end after it).
struct Sending {
    head_written: usize,
    pending: [Bytes; 3],
    next: usize,
    body_done: bool,
    chunked: bool,
}

impl Sending {
    fn load(&mut self, data: Bytes) {
        self.next = 0;
        if self.chunked {
            self.pending = [
                Bytes::from(format!("{:x}\r\n", data.len())),
                data,
                Bytes::from_static(b"\r\n"),
            ];
        } else {
            self.pending = [data, Bytes::new(), Bytes::new()];
        }
    }

    fn finish(&mut self) {
        self.body_done = true;
        self.next = 0;
        let last = if self.chunked {
            Bytes::from_static(b"0\r\n\r\n")
        } else {
            Bytes::new()
        };
        self.pending = [last, Bytes::new(), Bytes::new()];
    }
}

impl ResponseHead {
    /// The `Content-Length` a client gets: the body's length, or for a response without a
    /// body (HEAD, 304) the one the upstream declared; none for a body of unknown length,
    /// 1xx and 204.
    pub(crate) fn length_to_pass_on(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(length) => Some(length),
            Framing::Empty
                if !self.status.is_informational() && self.status != StatusCode::NO_CONTENT =>
            {
                self.declared_length
            }
            _ => None,
        }
    }
}

/// A response head at the front of `buffer`: its length and what it says, with where its
/// headers are in `spans`; `None` when it is not all in yet.
fn parse_response_head(
    buffer: &[u8],
    method: &Method,
    spans: &mut Vec<[u32; 4]>,
) -> Result<Option<(usize, ResponseHead)>, AttemptError> {
    if buffer.is_empty() {
        return Ok(None);
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buffer,
        &mut slots,
    );
    let length = match parsed {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(AttemptError::Invalid("too many response headers"));
        }
        Err(_) => return Err(AttemptError::Invalid("invalid http response")),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(AttemptError::Invalid("invalid http response status"))?;
    let base = buffer.as_ptr() as usize;
    let mut facts = HeadFacts::default();
    spans.clear();
    for parsed in response.headers.iter() {
        let name = parsed.name.as_ptr() as usize - base;
        let value = parsed.value.as_ptr() as usize - base;
        spans.push([
            name as u32,
            (name + parsed.name.len()) as u32,
            value as u32,
            (value + parsed.value.len()) as u32,
        ]);
        facts.note(parsed.name.as_bytes(), parsed.value)?;
    }
    let keep_alive = if response.version == Some(0) {
        facts.keep_alive
    } else {
        !facts.close
    };
    let framing = facts.framing(method, status)?;
    let head = ResponseHead {
        status,
        framing,
        keep_alive: keep_alive && framing != Framing::UntilClose,
        declared_length: facts.length.filter(|_| !facts.transfer_encoding),
    };
    Ok(Some((length, head)))
}

/// What the response headers say about the connection and the body, noted while parsing.
#[derive(Default)]
struct HeadFacts {
    close: bool,
    keep_alive: bool,
    transfer_encoding: bool,
    chunked_last: bool,
    length: Option<u64>,
}

impl HeadFacts {
    fn note(&mut self, name: &[u8], value: &[u8]) -> Result<(), AttemptError> {
        if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&byte| byte == b',') {
                let token = token.trim_ascii();
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = true;
            let last = value
                .rsplit(|&byte| byte == b',')
                .next()
                .unwrap_or_default();
            self.chunked_last = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = crate::forwarded::content_length(value)
                .ok_or(AttemptError::Invalid("invalid content-length"))?;
            if self.length.is_some_and(|seen| seen != parsed) {
                return Err(AttemptError::Invalid("conflicting content-length"));
            }
            self.length = Some(parsed);
        }
        Ok(())
    }

    /// How the body of a response to `method` with `status` is delimited (RFC 9112 §6.3).
    fn framing(&self, method: &Method, status: StatusCode) -> Result<Framing, AttemptError> {
        if method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Empty);
        }
        if self.transfer_encoding {
            return Ok(if self.chunked_last {
                Framing::Chunked
            } else {
                Framing::UntilClose
            });
        }
        Ok(match self.length {
            Some(0) => Framing::Empty,
            Some(length) => Framing::Length(length),
            None => Framing::UntilClose,
        })
    }
}

/// Where a chunked body's decoding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// Bytes left of the current chunk's data.
    Data(u64),
    /// The line end after a chunk's data.
    DataEnd,
    /// Trailer lines, up to an empty one (trailers are not forwarded), and their bytes so far.
    Trailers(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reading {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// What a [`BodyDecoder`] got out of the buffer.
pub(crate) enum Decoded {
    Data(Bytes),
    /// The body ended.
    End,
    /// More bytes are needed.
    More,
}

/// Takes a body off a connection's read buffer as its framing delimits it: a length, the
/// chunked coding, or the end of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BodyDecoder {
    reading: Reading,
}

impl BodyDecoder {
    pub(crate) fn new(framing: Framing) -> Self {
        let reading = match framing {
            Framing::Empty | Framing::Length(0) => Reading::Done,
            Framing::Length(length) => Reading::Length(length),
            Framing::Chunked => Reading::Chunked(Chunk::Size),
            Framing::UntilClose => Reading::UntilClose,
        };
        BodyDecoder { reading }
    }

    /// Whether the whole body was taken.
    pub(crate) fn is_done(&self) -> bool {
        self.reading == Reading::Done
    }

    /// Bytes left of a body of known length.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.reading {
            Reading::Done => Some(0),
            Reading::Length(left) => Some(left),
            _ => None,
        }
    }

    /// The connection ended: true when that ends the body (one delimited by the close).
    pub(crate) fn end_of_input(&mut self) -> bool {
        if self.reading == Reading::UntilClose {
            self.reading = Reading::Done;
        }
        self.reading == Reading::Done
    }

    /// The next piece of the body from the front of `buffer`.
    pub(crate) fn decode(&mut self, buffer: &mut BytesMut) -> Result<Decoded, &'static str> {
        loop {
            match self.reading {
                Reading::Done => return Ok(Decoded::End),
                Reading::Length(left) | Reading::Chunked(Chunk::Data(left)) => {
                    if buffer.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let take = left.min(buffer.len() as u64);
                    let data = buffer.split_to(take as usize).freeze();
                    let left = left - take;
                    self.reading = match self.reading {
                        Reading::Length(_) if left == 0 => Reading::Done,
                        Reading::Length(_) => Reading::Length(left),
                        _ if left == 0 => Reading::Chunked(Chunk::DataEnd),
                        _ => Reading::Chunked(Chunk::Data(left)),
                    };
                    return Ok(Decoded::Data(data));
                }
                Reading::UntilClose => {
                    if buffer.is_empty() {
                        return Ok(Decoded::More);
                    }
                    return Ok(Decoded::Data(buffer.split().freeze()));
                }
                Reading::Chunked(Chunk::DataEnd) => {
                    if buffer.starts_with(b"\r\n") {
                        buffer.advance(2);
                    } else if buffer.is_empty() || &buffer[..] == b"\r" {
                        return Ok(Decoded::More);
                    } else {
                        return Err("no CRLF after chunk data");
                    }
                    self.reading = Reading::Chunked(Chunk::Size);
                }
                Reading::Chunked(state @ (Chunk::Size | Chunk::Trailers(_))) => {
                    let Some(end) = buffer.iter().position(|&byte| byte == b'\n') else {
                        if buffer.len() > MAX_CHUNK_LINE {
                            return Err("chunk line too long");
                        }
                        return Ok(Decoded::More);
                    };
                    if end > MAX_CHUNK_LINE {
                        return Err("chunk line too long");
                    }
                    let line = buffer.split_to(end + 1);
                    // CRLF only (a bare LF is read another way by some), and no other
                    // control character but a tab in the line.
                    let Some(line) = line.strip_suffix(b"\r\n") else {
                        return Err("chunk line without CRLF");
                    };
                    if line
                        .iter()
                        .any(|&byte| (byte < b' ' && byte != b'\t') || byte == 0x7f)
                    {
                        return Err("control character in a chunk line");
                    }
                    self.reading = match state {
                        Chunk::Trailers(_) if line.is_empty() => Reading::Done,
                        Chunk::Trailers(seen) => {
                            let seen = seen + end + 1;
                            if seen > MAX_TRAILERS {
                                return Err("trailers too large");
                            }
                            Reading::Chunked(Chunk::Trailers(seen))
                        }
                        _ => match chunk_size(line) {
                            Some(0) => Reading::Chunked(Chunk::Trailers(0)),
                            Some(size) => Reading::Chunked(Chunk::Data(size)),
                            None => return Err("invalid chunk size"),
                        },
                    };
                }
            }
        }
    }
}

/// The size a chunk-size line gives (RFC 9112 §7.1): hex digits only (no sign, `0x` or
/// space before them; leading zeros are fine), then nothing or extensions after optional
/// spaces and a `;`. At most 15 significant digits.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line
        .iter()
        .position(|byte| !byte.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits);
    if digits.is_empty() {
        return None;
    }
    let rest = rest.trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return None;
    }
    let significant = &digits[digits.iter().take_while(|&&digit| digit == b'0').count()..];
    if significant.len() > 15 {
        return None;
    }
    let mut size = 0u64;
    for &digit in significant {
        let value = (digit as char).to_digit(16)? as u64;
        size = size << 4 | value;
    }
    Some(size)
}

/// A response body read from the upstream connection as the client's side polls it; the
/// connection goes back to its endpoint when the body ended cleanly and the response allows.
pub(crate) struct ResponseBody {
    connection: Option<Connection>,
    decoder: BodyDecoder,
    keep_alive: bool,
    endpoint: Arc<EndpointState>,
}

impl ResponseBody {
    /// The body after the head `connection` just read (consumed here if still there).
    pub(crate) fn new(
        mut connection: Connection,
        framing: Framing,
        keep_alive: bool,
        endpoint: Arc<EndpointState>,
    ) -> Self {
        connection.consume_head();
        let mut body = ResponseBody {
            connection: Some(connection),
            decoder: BodyDecoder::new(framing),
            keep_alive,
            endpoint,
        };
        if body.decoder.is_done() {
            body.finish();
        }
        body
    }

    /// The body ended: the connection goes back when nothing else came after it.
    fn finish(&mut self) {
        if let Some(connection) = self.connection.take() {
            connection.release(self.keep_alive, &self.endpoint);
        }
    }

    /// The next piece of the body, read from the connection as needed.
    pub(crate) fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BoxError>>> {
        loop {
            let Some(connection) = self.connection.as_mut() else {
                return Poll::Ready(None);
            };
            match self.decoder.decode(&mut connection.buffer) {
                Ok(Decoded::Data(data)) => {
                    if self.decoder.is_done() {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(Decoded::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(error) => {
                    self.connection = None;
                    return Poll::Ready(Some(Err(format!("{error} from the upstream").into())));
                }
            }
            match ready!(connection.poll_fill(cx)) {
                Ok(0) => {
                    self.connection = None;
                    if self.decoder.end_of_input() {
                        return Poll::Ready(None);
                    }
                    let message = "the upstream closed the connection before the end of the body";
                    return Poll::Ready(Some(Err(message.into())));
                }
                Ok(_) => {}
                Err(error) => {
                    self.connection = None;
                    return Poll::Ready(Some(Err(Box::new(error))));
                }
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut()
            .poll_data(cx)
            .map(|data| data.map(|data| data.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str, method: Method) -> (ResponseHead, Vec<(String, String)>) {
        let mut spans = Vec::new();
        let (length, head) = parse_response_head(text.as_bytes(), &method, &mut spans)
            .unwrap()
            .unwrap();
        let bytes = &text.as_bytes()[..length];
        let headers = spans
            .iter()
            .map(|&[name, name_end, value, value_end]| {
                let part = |from: u32, to: u32| {
                    String::from_utf8(bytes[from as usize..to as usize].to_vec()).unwrap()
                };
                (part(name, name_end), part(value, value_end))
            })
            .collect();
        (head, headers)
    }

    #[test]
    fn response_heads_give_status_headers_and_framing() {
        let (head, headers) = parsed(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello",
            Method::GET,
        );
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        assert_eq!(headers[2], ("X-A".to_string(), "2".to_string()));

        let text =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n";
        assert_eq!(parsed(text, Method::GET).0.framing, Framing::Chunked);
        let text = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(parsed(text, Method::GET).0.framing, Framing::UntilClose);

        let text = "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n";
        assert!(
            !parsed(text, Method::GET).0.keep_alive,
            "HTTP/1.0 closes unless it says keep-alive"
        );
        let text = "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n";
        assert!(parsed(text, Method::GET).0.keep_alive);
        let text = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n";
        assert!(!parsed(text, Method::GET).0.keep_alive);
        let (head, _) = parsed("HTTP/1.1 200 OK\r\n\r\n", Method::GET);
        assert_eq!(head.framing, Framing::UntilClose);
        assert!(!head.keep_alive);
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n";
        assert_eq!(parsed(text, Method::HEAD).0.framing, Framing::Empty);
        let (head, _) = parsed("HTTP/1.1 304 Not Modified\r\n\r\n", Method::GET);
        assert_eq!(head.framing, Framing::Empty);
        assert!(head.keep_alive);
    }

    #[test]
    fn partial_and_bad_heads() {
        let mut spans = Vec::new();
        let partial = b"HTTP/1.1 200 OK\r\nContent-Le";
        assert!(
            parse_response_head(partial, &Method::GET, &mut spans)
                .unwrap()
                .is_none()
        );
        let conflicting = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(
            parse_response_head(conflicting, &Method::GET, &mut spans),
            Err(AttemptError::Invalid(_))
        ));
        assert!(matches!(
            parse_response_head(b"SMTP ready\r\n\r\n", &Method::GET, &mut spans),
            Err(AttemptError::Invalid(_))
        ));
    }

    fn decode_all(framing: Framing, pieces: &[&str]) -> (String, bool) {
        let mut decoder = BodyDecoder::new(framing);
        let mut buffer = BytesMut::new();
        let mut body = String::new();
        for piece in pieces {
            buffer.extend_from_slice(piece.as_bytes());
            while let Decoded::Data(data) = decoder.decode(&mut buffer).unwrap() {
                body.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
        (body, decoder.is_done())
    }

    #[test]
    fn chunked_bodies_are_decoded_across_reads() {
        let (body, done) = decode_all(
            Framing::Chunked,
            &[
                "5\r\nhel",
                "lo\r",
                "\n6;ext=1\r\n wor",
                "ld\r\n0\r\nX-T: 1\r\n",
                "\r\n",
            ],
        );
        assert_eq!(body, "hello world");
        assert!(done);
        let (body, done) = decode_all(Framing::Chunked, &["3\r\nabc\r\n"]);
        assert_eq!(body, "abc");
        assert!(!done);
        let (body, done) = decode_all(Framing::Length(4), &["ab", "cdEXTRA"]);
        assert_eq!(body, "abcd");
        assert!(done);
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        let mut buffer = BytesMut::from("zz\r\n");
        assert!(decoder.decode(&mut buffer).is_err());
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"0;ext=1"), Some(0));
        assert_eq!(chunk_size(b"FF "), Some(255));
        assert_eq!(chunk_size(b"5 ;x"), Some(5));
        assert_eq!(chunk_size(b"00000000000000000005"), Some(5));
        assert_eq!(chunk_size(b"fffffffffffffff"), Some(0xfffffffffffffff));
        for bad in [
            &b""[..],
            b"zz",
            b"ffffffffffffffffff",
            b"+5",
            b"-5",
            b" 5",
            b"0x5",
            b"5 x",
            b";x",
        ] {
            assert_eq!(chunk_size(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
