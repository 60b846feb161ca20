//! Keep-alive HTTP/1.1 connections to upstream endpoints: per endpoint a stack of idle
//! connections (the most recently used on top), one taken for each request and given back
//! once its response ended cleanly. A connection's I/O runs in a task of its own.

use std::error::Error as _;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::UpstreamBody;
use crate::upstream::EndpointState;

/// A connection to an upstream endpoint, ready to send one request.
pub(crate) type Sender = http1::SendRequest<UpstreamBody>;

/// Idle connections unused for this long are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle connections kept per endpoint at most.
const MAX_IDLE: usize = 1024;

/// The idle connections of one endpoint.
#[derive(Default)]
pub(crate) struct IdleConnections {
    stack: Mutex<Vec<(Sender, Instant)>>,
}

impl fmt::Debug for IdleConnections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleConnections").finish_non_exhaustive()
    }
}

impl IdleConnections {
    /// The most recently used idle connection that is still open, if any.
    pub(crate) fn take(&self) -> Option<Sender> {
        let mut stack = self
            .stack
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        while let Some((sender, since)) = stack.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps a connection whose last response ended cleanly for the next request.
    pub(crate) fn give_back(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut stack = self
            .stack
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if stack.len() < MAX_IDLE {
            stack.push((sender, Instant::now()));
        }
    }
}

/// A connection lent to one request; given back to its endpoint by [`Lent::give_back`].
pub(crate) struct Lent {
    endpoint: Arc<EndpointState>,
    sender: Sender,
}

impl Lent {
    pub(crate) fn new(endpoint: Arc<EndpointState>, sender: Sender) -> Self {
        Lent { endpoint, sender }
    }

    pub(crate) fn give_back(self) {
        self.endpoint.connections.give_back(self.sender);
    }
}

/// Why an attempt to get an answer from an endpoint failed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// Connecting failed.
    Connect(io::Error),
    /// Connecting took longer than the connect timeout.
    ConnectTimedOut,
    /// The connection failed while sending the request or reading the response head.
    Http(hyper::Error),
}

impl AttemptError {
    /// Nothing reached the endpoint: the request may go to another one in any case.
    pub(crate) fn is_connect(&self) -> bool {
        matches!(
            self,
            AttemptError::Connect(_) | AttemptError::ConnectTimedOut
        )
    }

    /// Whether the endpoint refused, reset or closed the connection (as opposed to, say,
    /// sending a malformed response): such an endpoint is marked down.
    pub(crate) fn connection_broken(&self) -> bool {
        let error = match self {
            AttemptError::Connect(_) | AttemptError::ConnectTimedOut => return true,
            AttemptError::Http(error) => error,
        };
        if error.is_incomplete_message() || error.is_canceled() {
            return true;
        }
        let mut source = error.source();
        while let Some(cause) = source {
            if let Some(io_error) = cause.downcast_ref::<io::Error>() {
                return matches!(
                    io_error.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::UnexpectedEof
                );
            }
            source = cause.source();
        }
        false
    }

    /// A short lowercase reason, for the 502 body.
    pub(crate) fn reason(&self) -> String {
        let error = match self {
            AttemptError::Connect(io_error) => return io_reason(io_error),
            AttemptError::ConnectTimedOut => return "connect timed out".to_string(),
            AttemptError::Http(error) => error,
        };
        if error.is_incomplete_message() {
            return "connection closed before the response".to_string();
        }
        if error.is_parse() {
            return "invalid http response".to_string();
        }
        let mut source = error.source();
        while let Some(cause) = source {
            if let Some(io_error) = cause.downcast_ref::<io::Error>() {
                return io_reason(io_error);
            }
            source = cause.source();
        }
        error.to_string().to_lowercase()
    }
}

fn io_reason(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::ConnectionReset => "connection reset".to_string(),
        io::ErrorKind::TimedOut => "connect timed out".to_string(),
        _ => error.to_string().to_lowercase(),
    }
}

/// Opens a new connection to `endpoint` and starts its I/O task.
pub(crate) async fn connect(
    endpoint: &EndpointState,
    timeout: Duration,
) -> Result<Sender, AttemptError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(endpoint.addr))
        .await
        .map_err(|_elapsed| AttemptError::ConnectTimedOut)?
        .map_err(AttemptError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(AttemptError::Http)?;
    tokio::spawn(async move {
        // Errors reach the request that was in flight; an idle connection just ends.
        let _ = connection.with_upgrades().await;
    });
    Ok(sender)
}
