//! Keep-alive HTTP/1.1 connections to upstream endpoints: per endpoint a stack of idle
//! connections (the most recently used on top), one taken for each request and given back
//! once its response ended cleanly. Connections have no task of their own: the request that
//! holds one does its I/O ([`crate::client`]). Each endpoint has at most
//! [`PoolLimits::max_connections`] connections (open, idle or being opened; a tunnel leaves
//! the count) and at most [`MAX_CONNECTING`] being opened at once; requests beyond wait for
//! one. Idle connections past [`PoolLimits::idle_timeout`] are closed by a timer
//! ([`crate::upstream::spawn_reaper`]) as well as when found on the stack.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::client::Connection;

/// Idle connections kept per endpoint at most.
const MAX_IDLE: usize = 1024;

/// Connections being opened to one endpoint at once, at most. A burst of requests that find
/// no idle connection (after the app closed its idle ones, or at a load spike) would
/// otherwise open hundreds at once and overflow the app's accept queue: a dropped SYN is
/// sent again only after a second. Requests beyond this wait for a connection given back
/// or an opening that ended.
pub(crate) const MAX_CONNECTING: usize = 16;

/// The bounds of one endpoint's connections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolLimits {
    /// Connections at most, in use, idle or being opened.
    pub(crate) max_connections: usize,
    /// Idle connections unused for this long are closed rather than reused.
    pub(crate) idle_timeout: Duration,
}

/// The counts shared by an endpoint's pool and the connections it let open.
#[derive(Debug, Default)]
struct Counts {
    /// Connections open or being opened (tunnels left the count).
    open: AtomicUsize,
    connecting: AtomicUsize,
    /// Requests waiting for a connection.
    waiting: AtomicUsize,
    /// A connection was given back or closed, or an opening ended.
    available: Notify,
}

impl Counts {
    fn wake_one(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.available.notify_one();
        }
    }
}

/// One of an endpoint's [`PoolLimits::max_connections`], held by a connection (or an
/// opening) for its life.
pub(crate) struct Slot(Arc<Counts>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.wake_one();
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Slot")
    }
}

/// The idle connections of one endpoint, and the openings of new ones.
pub(crate) struct IdleConnections {
    stack: Mutex<Vec<Connection>>,
    counts: Arc<Counts>,
    limits: PoolLimits,
}

/// What a request may use to reach an endpoint.
pub(crate) enum Checkout<'a> {
    /// A kept-alive connection.
    Idle(Connection),
    /// The right to open a new one.
    Open(OpenPermit<'a>),
}

/// One of [`MAX_CONNECTING`] openings, held while connecting, with the slot the new
/// connection will hold.
pub(crate) struct OpenPermit<'a> {
    pool: &'a IdleConnections,
    slot: Option<Slot>,
}

impl OpenPermit<'_> {
    /// The opening succeeded: the connection holds the slot from now on.
    pub(crate) fn opened(mut self, connection: &mut Connection) {
        connection.slot = self.slot.take();
    }
}

impl Drop for OpenPermit<'_> {
    fn drop(&mut self) {
        self.pool.counts.connecting.fetch_sub(1, Ordering::SeqCst);
        self.pool.counts.wake_one();
    }
}

/// A request counted as waiting while it lives.
struct Waiting<'a>(&'a Counts);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl fmt::Debug for IdleConnections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleConnections").finish_non_exhaustive()
    }
}

impl IdleConnections {
    pub(crate) fn new(limits: PoolLimits) -> Self {
        IdleConnections {
            stack: Mutex::new(Vec::new()),
            counts: Arc::default(),
            limits,
        }
    }

    fn stack(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.stack
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The most recently used idle connection that is still open, if any, for a request
    /// that began at `now`.
    pub(crate) fn take(&self, now: Instant) -> Option<Connection> {
        let mut stack = self.stack();
        while let Some(mut connection) = stack.pop() {
            let idle = now.saturating_duration_since(connection.last_used);
            if idle < self.limits.idle_timeout && connection.is_usable() {
                connection.last_used = now;
                return Some(connection);
            }
        }
        None
    }

    /// Keeps a connection whose last response ended cleanly for the next request.
    pub(crate) fn give_back(&self, connection: Connection) {
        let mut stack = self.stack();
        if stack.len() < MAX_IDLE {
            stack.push(connection);
        }
        drop(stack);
        self.counts.wake_one();
    }

    /// Closes the idle connections unused for the idle timeout, or that the upstream closed.
    pub(crate) fn reap(&self, now: Instant) {
        let closed: Vec<Connection> = {
            let mut stack = self.stack();
            let (keep, close): (Vec<Connection>, Vec<Connection>) = std::mem::take(&mut *stack)
                .into_iter()
                .partition(|connection| {
                    now.saturating_duration_since(connection.last_used) < self.limits.idle_timeout
                });
            *stack = keep;
            stack.retain_mut(Connection::is_usable);
            close
        };
        drop(closed);
    }

    /// A slot and an opening, when both bounds allow. A failed try changes no count for
    /// long and wakes no one (waking would only pass the failure on).
    fn reserve(&self) -> Option<OpenPermit<'_>> {
        let counts = &self.counts;
        let max = self.limits.max_connections;
        if counts.open.load(Ordering::SeqCst) >= max {
            return None;
        }
        counts
            .connecting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |count| {
                (count < MAX_CONNECTING).then_some(count + 1)
            })
            .ok()?;
        let slot = counts
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < max).then_some(open + 1)
            });
        if slot.is_err() {
            counts.connecting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(OpenPermit {
            pool: self,
            slot: Some(Slot(counts.clone())),
        })
    }

    /// Takes an idle connection (unless `fresh`), or the right to open one. A `fresh`
    /// request at the bound closes the least recently used idle connection to make room.
    fn try_checkout(&self, fresh: bool, now: Instant) -> Option<Checkout<'_>> {
        if !fresh && let Some(connection) = self.take(now) {
            return Some(Checkout::Idle(connection));
        }
        if let Some(permit) = self.reserve() {
            return Some(Checkout::Open(permit));
        }
        if fresh {
            let oldest = {
                let mut stack = self.stack();
                (!stack.is_empty()).then(|| stack.remove(0))
            };
            if oldest.is_some() {
                drop(oldest);
                return self.reserve().map(Checkout::Open);
            }
        }
        None
    }

    /// An idle connection (unless `fresh`) for a request that began at `now`, or else the
    /// right to open one, waiting while the endpoint is at its bound of connections or of
    /// openings under way.
    pub(crate) async fn checkout(&self, fresh: bool, now: Instant) -> Checkout<'_> {
        loop {
            let available = self.counts.available.notified();
            tokio::pin!(available);
            available.as_mut().enable();
            if let Some(checkout) = self.try_checkout(fresh, now) {
                return checkout;
            }
            // Counted as waiting, then looked again: whatever freed a connection after the
            // first look sees the count and wakes this request.
            self.counts.waiting.fetch_add(1, Ordering::SeqCst);
            let _waiting = Waiting(&self.counts);
            if let Some(checkout) = self.try_checkout(fresh, now) {
                return checkout;
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
