//! What the executor tells the core: [`Observation`]s, each delivered with the time it was
//! made.

use std::fmt;

use bow_spec::Spec;

use crate::effect::Timer;
use crate::model::{ExitInfo, InstanceKey, Listed, Process, ReleaseRecord};

/// One fact or request. Observations about an instance name the process `handle` they are
/// about; the core ignores those about an incarnation that is no longer current.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// The agent started: what its store recorded and what the driver lists as running.
    /// Delivered once, first.
    Restored {
        /// The last applied revision and its spec (`None`: nothing applied yet).
        applied: Option<(i64, Box<Spec>)>,
        releases: Vec<ReleaseRecord>,
        running: Vec<Listed>,
    },
    /// `bow up` / `bow apply`: a validated spec to run.
    Apply {
        spec: Box<Spec>,
    },
    /// `bow rollback SERVICE [--to N]`.
    Rollback {
        service: String,
        to: Option<i64>,
    },
    /// `bow restart SERVICE`: one instance at a time, each healthy before the next.
    Restart {
        service: String,
    },
    /// `bow down`: every instance stops, dependants first; later requests are refused.
    Down,
    /// The driver found an instance running that the core may not know of: it refused a
    /// `Start` because that instance id is live (delivered instead of `Started` or
    /// `StartFailed`), or a later look found it. The core adopts it or stops it, with an event.
    Found {
        listed: Listed,
    },
    Started {
        key: InstanceKey,
        process: Process,
    },
    StartFailed {
        key: InstanceKey,
        reason: String,
    },
    /// The process ended by itself (`exit`: `None` when its status was not recorded).
    Exited {
        key: InstanceKey,
        handle: String,
        exit: Option<ExitInfo>,
    },
    /// Its health check passed (after failing or for the first time).
    Healthy {
        key: InstanceKey,
        handle: String,
        message: String,
    },
    /// One check failed, not yet `retries` in a row (kept as the last error).
    Failing {
        key: InstanceKey,
        handle: String,
        reason: String,
    },
    /// Its check failed `retries` times in a row; the executor stopped probing it.
    Unhealthy {
        key: InstanceKey,
        handle: String,
        reason: String,
    },
    /// A `Stop` effect was carried out (`outcome`: `exit code 0`, `ignored SIGTERM for 10s,
    /// killed by SIGKILL`, `already gone, …`, `stop failed: …`).
    StopFinished {
        key: InstanceKey,
        outcome: String,
    },
    TimerFired(Timer),
    /// A `Prepare` effect succeeded (`detail`: what was made, e.g. the venv's path).
    Prepared {
        service: String,
        detail: String,
    },
    PrepareFailed {
        service: String,
        reason: String,
    },
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observation::Restored {
                applied,
                releases,
                running,
            } => {
                write!(f, "restored")?;
                if let Some((revision, _)) = applied {
                    write!(f, " revision {revision}")?;
                }
                write!(f, ", {} releases, running [", releases.len())?;
                for (i, listed) in running.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{} r{:?}", listed.key, listed.release)?;
                }
                write!(f, "]")
            }
            Observation::Apply { spec } => {
                write!(f, "apply")?;
                for (name, service) in &spec.services {
                    write!(f, " {name}x{}", service.replicas)?;
                }
                Ok(())
            }
            Observation::Rollback { service, to } => write!(f, "rollback {service} to {to:?}"),
            Observation::Restart { service } => write!(f, "restart {service}"),
            Observation::Found { listed } => write!(
                f,
                "found {} {} release {:?}",
                listed.key, listed.process.handle, listed.release
            ),
            Observation::Down => write!(f, "down"),
            Observation::Started { key, process } => write!(
                f,
                "started {key} {} {}:{}",
                process.handle, process.address, process.port
            ),
            Observation::StartFailed { key, reason } => write!(f, "start-failed {key}: {reason}"),
            Observation::Exited { key, handle, exit } => write!(
                f,
                "exited {key} {handle}: {}",
                exit.as_ref()
                    .map_or("not recorded", |e| e.description.as_str())
            ),
            Observation::Healthy { key, handle, .. } => write!(f, "healthy {key} {handle}"),
            Observation::Failing {
                key,
                handle,
                reason,
            } => {
                write!(f, "failing {key} {handle}: {reason}")
            }
            Observation::Unhealthy {
                key,
                handle,
                reason,
            } => {
                write!(f, "unhealthy {key} {handle}: {reason}")
            }
            Observation::StopFinished { key, outcome } => {
                write!(f, "stop-finished {key}: {outcome}")
            }
            Observation::TimerFired(timer) => write!(f, "timer {timer}"),
            Observation::Prepared { service, .. } => write!(f, "prepared {service}"),
            Observation::PrepareFailed { service, reason } => {
                write!(f, "prepare-failed {service}: {reason}")
            }
        }
    }
}
