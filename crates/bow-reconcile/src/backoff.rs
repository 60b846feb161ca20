//! Restart delays: the first restart at once, then 100 ms doubling up to 30 s; reset once an
//! instance has stayed healthy for the stable period.

use std::time::Duration;

pub const FIRST_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// Healthy this long after a restart and the next crash counts as the first again.
pub const STABLE_PERIOD: Duration = Duration::from_secs(10);
/// Restarts in a row without a stable period before an instance shows as crash-looping.
pub const CRASH_LOOP_AFTER: u32 = 3;
/// Without a health check, an instance is healthy once it has stayed up this long.
pub const NO_CHECK_HEALTHY_AFTER: Duration = Duration::from_secs(1);

/// Consecutive restarts of one instance since it was last stable.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Backoff {
    consecutive: u32,
}

impl Backoff {
    /// The delay before the next restart, counting it.
    pub fn next_delay(&mut self) -> Duration {
        let delay = match self.consecutive {
            0 => Duration::ZERO,
            n => FIRST_DELAY
                .saturating_mul(1 << (n - 1).min(16))
                .min(MAX_DELAY),
        };
        self.consecutive += 1;
        delay
    }

    pub fn reset(&mut self) {
        self.consecutive = 0;
    }

    pub fn consecutive(&self) -> u32 {
        self.consecutive
    }

    pub fn crash_looping(&self) -> bool {
        self.consecutive >= CRASH_LOOP_AFTER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_at_once_then_doubling_capped_and_reset() {
        let mut backoff = Backoff::default();
        let delays: Vec<u128> = (0..12).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays[..6], [0, 100, 200, 400, 800, 1600]);
        assert_eq!(*delays.last().unwrap(), 30_000);
        assert!(backoff.crash_looping());
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::ZERO);
        assert!(!backoff.crash_looping());
    }
}
