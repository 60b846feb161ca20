//! The restart policy, one for the agent and the pure core. A run that served (became healthy) and then died is restarted at once
//! with its backoff reset: it was killed or crashed under load, not broken. Only deaths before
//! serving back off: the first restart at once, then 100 ms doubling up to 30 s; three in a row
//! show as crash-looping. And a service whose last instances all wait in backoff, though they
//! have served in this release, retries them at a small floor instead of backing off into an
//! outage. (docs/agent.md, "Supervision", compares it with Kubernetes and systemd.)

use std::time::Duration;

pub const FIRST_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// Restarts in a row without serving before an instance shows as crash-looping.
pub const CRASH_LOOP_AFTER: u32 = 3;
/// Without a health check, an instance is healthy once it has stayed up this long.
pub const NO_CHECK_HEALTHY_AFTER: Duration = Duration::from_secs(1);
/// The longest an instance that has served in this release waits while no other instance of
/// its service serves or starts.
pub const LAST_INSTANCE_FLOOR: Duration = Duration::from_millis(200);

/// Consecutive restarts of one instance since it last served.
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

    /// The delay after a run ended: a run that `served` starts the count afresh.
    pub fn after_run(&mut self, served: bool) -> Duration {
        if served {
            self.reset();
        }
        self.next_delay()
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

/// What the rest of a service is doing when one of its instances is about to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    /// This instance served (was healthy) in the release it runs: the program works.
    pub served_in_release: bool,
    /// Other instances of the service that serve or are starting.
    pub others_up: usize,
}

/// `delay`, unless waiting it would leave a working service with nothing up.
pub fn delay_for(delay: Duration, service: Service) -> Duration {
    if service.served_in_release && service.others_up == 0 {
        delay.min(LAST_INSTANCE_FLOOR)
    } else {
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deaths_before_serving_double_capped() {
        let mut backoff = Backoff::default();
        let delays: Vec<u128> = (0..12)
            .map(|_| backoff.after_run(false).as_millis())
            .collect();
        assert_eq!(delays[..6], [0, 100, 200, 400, 800, 1600]);
        assert_eq!(*delays.last().unwrap(), 30_000);
        assert!(backoff.crash_looping());
    }

    #[test]
    fn a_run_that_served_restarts_at_once_every_time() {
        let mut backoff = Backoff::default();
        for _ in 0..20 {
            assert_eq!(backoff.after_run(true), Duration::ZERO);
            assert!(!backoff.crash_looping());
        }
        // Killed once more before it served again: the count starts from that served run.
        assert_eq!(backoff.after_run(false), FIRST_DELAY);
        assert_eq!(backoff.after_run(false), FIRST_DELAY * 2);
        assert!(backoff.crash_looping());
        assert_eq!(backoff.after_run(true), Duration::ZERO);
        assert!(!backoff.crash_looping());
    }

    #[test]
    fn the_last_instances_of_a_working_service_wait_only_the_floor() {
        let long = Duration::from_secs(25);
        let alone = Service {
            served_in_release: true,
            others_up: 0,
        };
        assert_eq!(delay_for(long, alone), LAST_INSTANCE_FLOOR);
        assert_eq!(delay_for(Duration::ZERO, alone), Duration::ZERO);
        // Another instance serves: the usual delay.
        let covered = Service {
            others_up: 1,
            ..alone
        };
        assert_eq!(delay_for(long, covered), long);
        // A program that never served in this release keeps backing off, even alone.
        let broken = Service {
            served_in_release: false,
            others_up: 0,
        };
        assert_eq!(delay_for(long, broken), long);
    }
}
