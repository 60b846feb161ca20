//! Keep-alive HTTP/1.1 connections to upstream endpoints: per endpoint a stack of idle
//! connections (the most recently used on top), one taken for each request and given back
//! once its response ended cleanly. Connections have no task of their own: the request that
//! holds one does its I/O ([`crate::client`]).

use std::fmt;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::client::Connection;

/// Idle connections unused for this long are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle connections kept per endpoint at most.
const MAX_IDLE: usize = 1024;

/// Connections being opened to one endpoint at once, at most. A burst of requests that find
/// no idle connection (after the app closed its idle ones, or at a load spike) would
/// otherwise open hundreds at once and overflow the app's accept queue: a dropped SYN is
/// sent again only after a second. Requests beyond this wait for a connection given back
/// or an opening that ended.
pub(crate) const MAX_CONNECTING: usize = 16;

/// The idle connections of one endpoint, and the openings of new ones.
#[derive(Default)]
pub(crate) struct IdleConnections {
    stack: Mutex<Vec<Connection>>,
    connecting: AtomicUsize,
    /// A connection was given back or an opening ended.
    available: Notify,
}

/// What a request may use to reach an endpoint.
pub(crate) enum Checkout<'a> {
    /// A kept-alive connection.
    Idle(Connection),
    /// The right to open a new one.
    Open(OpenPermit<'a>),
}

/// One of [`MAX_CONNECTING`] openings, held while connecting.
pub(crate) struct OpenPermit<'a>(&'a IdleConnections);

impl Drop for OpenPermit<'_> {
    fn drop(&mut self) {
        self.0.connecting.fetch_sub(1, Ordering::SeqCst);
        self.0.available.notify_one();
    }
}

impl fmt::Debug for IdleConnections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleConnections").finish_non_exhaustive()
    }
}

impl IdleConnections {
    /// The most recently used idle connection that is still open, if any, for a request
    /// that began at `now`.
    pub(crate) fn take(&self, now: Instant) -> Option<Connection> {
        let mut stack = self
            .stack
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        while let Some(mut connection) = stack.pop() {
            let idle = now.saturating_duration_since(connection.last_used);
            if idle < IDLE_TIMEOUT && connection.is_usable() {
                connection.last_used = now;
                return Some(connection);
            }
        }
        None
    }

    /// Keeps a connection whose last response ended cleanly for the next request.
    pub(crate) fn give_back(&self, connection: Connection) {
        let mut stack = self
            .stack
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if stack.len() < MAX_IDLE {
            stack.push(connection);
        }
        drop(stack);
        if self.connecting.load(Ordering::SeqCst) >= MAX_CONNECTING {
            self.available.notify_one();
        }
    }

    /// An idle connection (unless `fresh`) for a request that began at `now`, or else the
    /// right to open one, waiting while [`MAX_CONNECTING`] openings are under way.
    pub(crate) async fn checkout(&self, fresh: bool, now: Instant) -> Checkout<'_> {
        loop {
            let available = self.available.notified();
            tokio::pin!(available);
            available.as_mut().enable();
            if !fresh && let Some(connection) = self.take(now) {
                return Checkout::Idle(connection);
            }
            let opening =
                self.connecting
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |count| {
                        (count < MAX_CONNECTING).then_some(count + 1)
                    });
            if opening.is_ok() {
                return Checkout::Open(OpenPermit(self));
            }
            available.await;
        }
    }
}

/// Why an attempt to get an answer from an endpoint failed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// Connecting failed.
    Connect(io::Error),
    /// Connecting took longer than the connect timeout.
    ConnectTimedOut,
    /// Writing the request or reading the response head failed.
    Io(io::Error),
    /// The upstream closed the connection before a whole response head.
    Closed,
    /// The response head is not HTTP/1.1 the edge can forward.
    Invalid(&'static str),
    /// The client's request body failed (or went over the limit) while it was sent.
    Body,
    /// The endpoint kept the request waiting longer than the upstream timeout.
    TimedOut,
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
        match self {
            AttemptError::Connect(_) | AttemptError::ConnectTimedOut | AttemptError::Closed => true,
            AttemptError::Io(error) => matches!(
                error.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            AttemptError::Invalid(_) | AttemptError::Body | AttemptError::TimedOut => false,
        }
    }

    /// A short lowercase reason, for the 502 body.
    pub(crate) fn reason(&self) -> String {
        match self {
            AttemptError::Connect(error) | AttemptError::Io(error) => io_reason(error),
            AttemptError::ConnectTimedOut => "connect timed out".to_string(),
            AttemptError::Closed => "connection closed before the response".to_string(),
            AttemptError::Invalid(what) => what.to_string(),
            AttemptError::Body => "the client's request body failed".to_string(),
            AttemptError::TimedOut => "timed out".to_string(),
        }
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
