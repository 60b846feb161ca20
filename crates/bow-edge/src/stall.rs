//! How long one side of a request may keep it waiting: a deadline that moves with progress,
//! for the body timeout (a client that stops sending its body or taking its response) and
//! the upstream timeout (an upstream that does not take the request, answer it, or go on
//! with its response body).
//!
//! The timer is looked at only when an operation is about to wait, and the clock is read
//! only when bytes moved after a wait: a request served without waiting costs no clock
//! read and no timer change.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// A limit on how long a side may go without moving any byte.
pub(crate) struct Stall {
    /// One timer reused for every wait (and by a connection for all its requests).
    timer: Pin<Box<Sleep>>,
    limit: Duration,
    since: Since,
}

/// Where the current wait is counted from.
#[derive(Clone, Copy)]
enum Since {
    /// The timer is set for the current wait.
    Armed,
    /// From this instant (known without a clock read).
    At(Instant),
    /// Bytes moved (or a phase began) since: from the next wait's start.
    Moved,
}

impl Stall {
    pub(crate) fn new(limit: Duration) -> Self {
        Stall {
            timer: Box::pin(tokio::time::sleep(limit)),
            limit,
            since: Since::Moved,
        }
    }

    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// A new phase begins at `at`: waits count from there until bytes move.
    pub(crate) fn begin(&mut self, at: Instant) {
        self.since = Since::At(at);
    }

    /// Bytes moved: a later wait gets the whole limit again (the clock is read then).
    pub(crate) fn moved(&mut self) {
        self.since = Since::Moved;
    }

    /// Called when the side is about to be waited on: ready once the limit passed since the
    /// phase began or bytes last moved.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = match self.since {
            Since::Armed => None,
            Since::At(at) => Some(at + self.limit),
            Since::Moved => Some(Instant::now() + self.limit),
        };
        if let Some(deadline) = deadline {
            // A later deadline than the timer's is only noted; the wheel is not touched.
            self.timer.as_mut().reset(deadline.into());
            self.since = Since::Armed;
        }
        self.timer.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    const LIMIT: Duration = Duration::from_millis(200);

    async fn expired(stall: &mut Stall) {
        poll_fn(|cx| stall.poll_expired(cx)).await;
    }

    #[tokio::test]
    async fn expires_after_the_limit_without_progress() {
        let mut stall = Stall::new(LIMIT);
        let start = Instant::now();
        stall.begin(start);
        expired(&mut stall).await;
        let waited = start.elapsed();
        assert!(waited >= LIMIT && waited < LIMIT * 3, "{waited:?}");
    }

    #[tokio::test]
    async fn progress_moves_the_deadline() {
        let mut stall = Stall::new(LIMIT);
        let start = Instant::now();
        stall.begin(start);
        let early = tokio::time::timeout(LIMIT / 2, expired(&mut stall)).await;
        assert!(early.is_err(), "expired before the limit");
        stall.moved();
        expired(&mut stall).await;
        let waited = start.elapsed();
        assert!(waited >= LIMIT * 3 / 2 && waited < LIMIT * 4, "{waited:?}");
    }

    #[tokio::test]
    async fn a_phase_that_began_earlier_has_less_left() {
        let mut stall = Stall::new(LIMIT);
        let start = Instant::now();
        tokio::time::sleep(LIMIT / 2).await;
        stall.begin(start);
        expired(&mut stall).await;
        let waited = start.elapsed();
        assert!(
            waited >= LIMIT && waited < LIMIT * 3 / 2 + LIMIT,
            "{waited:?}"
        );
    }
}
