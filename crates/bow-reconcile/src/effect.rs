//! What the core asks the executor to do: [`Effect`]s, the typed [`EventKind`]s it records,
//! the [`Timer`]s it arms and why it stops an instance ([`StopReason`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use bow_spec::{Service, Spec};

use crate::model::{Endpoint, InstanceKey, Millis, ReleaseRecord, ReleaseStatus, ServiceProgress};

/// One thing to carry out. The executor applies a step's effects in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Start a new process for `key` (answer: `Started` or `StartFailed`). `port`: the port it
    /// had, to keep when it is still free.
    Start {
        key: InstanceKey,
        release: i64,
        definition: Arc<Service>,
        routable: bool,
        port: Option<u16>,
    },
    /// Watch an instance found running (its exit, its health checks) under `definition`.
    Adopt {
        key: InstanceKey,
        release: i64,
        definition: Arc<Service>,
        handle: String,
    },
    /// The running process of `key` stays; probe it with the new definition from now on.
    Reconfigure {
        key: InstanceKey,
        release: i64,
        definition: Arc<Service>,
    },
    /// Stop the process `handle` of `key` (answer: `StopFinished`): when `drain` is set,
    /// wait (up to it) for its in-flight requests first (it already left the endpoints).
    Stop {
        key: InstanceKey,
        handle: String,
        reason: StopReason,
        drain: Option<Duration>,
        stop_timeout: Duration,
    },
    /// Prepare what the service's instances need before any starts (a python environment;
    /// answer: `Prepared` or `PrepareFailed`).
    Prepare {
        service: String,
        definition: Arc<Service>,
    },
    /// The healthy, routable endpoints of a service, whole (the edge and discovery install
    /// them at once: a blue-green switch is one of these).
    SetEndpoints {
        service: String,
        endpoints: Vec<Endpoint>,
    },
    RecordRelease(Box<ReleaseRecord>),
    SetReleaseStatus {
        service: String,
        number: i64,
        status: ReleaseStatus,
        reason: Option<String>,
    },
    /// Record `spec` as applied revision `revision` (a failed deploy reverts its service's
    /// definition, so a restarted agent does not retry it).
    RecordRevision {
        revision: i64,
        spec: Box<Spec>,
    },
    Event(Event),
    /// Deliver `TimerFired(timer)` at `at` (or later). Timers are never cancelled: a stale
    /// one is ignored by its token.
    ArmTimer {
        at: Millis,
        timer: Timer,
    },
    /// A deploy's progress changed.
    Progress(ServiceProgress),
    /// A `bow restart SERVICE` finished: each instance restarted (healthy again, or its
    /// deploy timeout passed).
    Restarted {
        service: String,
        instances: Vec<String>,
    },
    /// A `bow down` finished: every instance is gone.
    Down {
        stopped: Vec<String>,
    },
}

/// One event: what happened and why, for `bow events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub service: String,
    /// `web.2`, or empty for a service-wide or agent-wide event.
    pub instance: String,
    pub kind: EventKind,
    pub message: String,
}

/// Every kind of event the agent records. The core emits the ones about decisions; the
/// executor emits the ones about how an effect was carried out (marked "executor").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// Executor: the admin listener (`/metrics`) could not start.
    AdminFailed,
    /// Executor.
    AdminStarted,
    /// Executor.
    AdminStopped,
    Adopted,
    /// Executor: an alert rule started firing (docs/alerts.md).
    AlertFiring,
    /// Executor: a webhook notification could not be delivered after its retries.
    AlertNotSent,
    /// Executor: a firing alert resolved.
    AlertResolved,
    Applied,
    Backoff,
    /// Executor: a scheduled backup ran (`backup.schedule`), or failed and why.
    Backup,
    Building,
    Built,
    /// Executor: an ACME certificate issued, renewed, or an attempt that failed (the old
    /// certificate, or the local CA's, keeps serving).
    Certificate,
    /// Executor: a chaos drill's fault on a service's traffic started or lifted.
    ChaosFault,
    /// Executor: the secrets of an instance that no longer runs were removed.
    Cleaned,
    CrashLooping,
    DeployFailed,
    Deployed,
    Deploying,
    /// Executor: a discovery listener could not start.
    DiscoveryFailed,
    /// Executor: in-flight requests outlived the drain timeout.
    DrainTimeout,
    /// Executor: the previous agent ended without shutting down (a crash or a kill); the
    /// next agent reports it at its start.
    AgentCrashed,
    /// Executor: the edge process ended by itself (it is started again at once).
    EdgeCrashed,
    /// Executor: the edge could not start.
    EdgeFailed,
    /// Executor.
    EdgeStarted,
    /// Executor.
    EdgeStopped,
    /// Executor: a new edge process took the listening sockets over from the old one
    /// (an upgrade of the bow binary); the old one drains and exits.
    EdgeUpgraded,
    /// Executor.
    EdgeWarning,
    Exited,
    /// Executor: `bow up --follow` fetched, applied, skipped or paused (dirty, diverged, a
    /// commit that failed, a rollback).
    Follow,
    Healthy,
    OomKilled,
    /// A process of the state dir that no instance could take over, stopped.
    OrphanStopped,
    Reconfigured,
    Restarted,
    Rollback,
    RollbackDegraded,
    RolledBack,
    /// Executor: a secret's value differs from the applied release at an instance's start.
    SecretChanged,
    StartFailed,
    Started,
    Stopped,
    /// The core when it decides a stop for a reason worth saying; the executor with the
    /// process detail (signal, timeout) of every stop.
    Stopping,
    /// Executor: the store could not be read or written.
    StoreError,
    Switched,
    /// Executor: `bow db switchover` moved a postgres service's primary (or gave up).
    Switchover,
    Unhealthy,
}

impl EventKind {
    /// Every kind, in order (docs/agent.md lists them; a test checks it).
    pub const ALL: [EventKind; 47] = [
        EventKind::AdminFailed,
        EventKind::AdminStarted,
        EventKind::AdminStopped,
        EventKind::Adopted,
        EventKind::AgentCrashed,
        EventKind::AlertFiring,
        EventKind::AlertNotSent,
        EventKind::AlertResolved,
        EventKind::Applied,
        EventKind::Backoff,
        EventKind::Backup,
        EventKind::Building,
        EventKind::Built,
        EventKind::Certificate,
        EventKind::ChaosFault,
        EventKind::Cleaned,
        EventKind::CrashLooping,
        EventKind::DeployFailed,
        EventKind::Deployed,
        EventKind::Deploying,
        EventKind::DiscoveryFailed,
        EventKind::DrainTimeout,
        EventKind::EdgeCrashed,
        EventKind::EdgeFailed,
        EventKind::EdgeStarted,
        EventKind::EdgeStopped,
        EventKind::EdgeUpgraded,
        EventKind::EdgeWarning,
        EventKind::Exited,
        EventKind::Follow,
        EventKind::Healthy,
        EventKind::OomKilled,
        EventKind::OrphanStopped,
        EventKind::Reconfigured,
        EventKind::Restarted,
        EventKind::Rollback,
        EventKind::RollbackDegraded,
        EventKind::RolledBack,
        EventKind::SecretChanged,
        EventKind::StartFailed,
        EventKind::Started,
        EventKind::Stopped,
        EventKind::Stopping,
        EventKind::StoreError,
        EventKind::Switched,
        EventKind::Switchover,
        EventKind::Unhealthy,
    ];

    /// The name `bow events` shows (`crash-looping`).
    pub fn label(&self) -> &'static str {
        match self {
            EventKind::AdminFailed => "admin-failed",
            EventKind::AdminStarted => "admin-started",
            EventKind::AdminStopped => "admin-stopped",
            EventKind::AlertFiring => "alert-firing",
            EventKind::AlertNotSent => "alert-not-sent",
            EventKind::AlertResolved => "alert-resolved",
            EventKind::Adopted => "adopted",
            EventKind::Applied => "applied",
            EventKind::Backoff => "backoff",
            EventKind::Backup => "backup",
            EventKind::Building => "building",
            EventKind::Built => "built",
            EventKind::Certificate => "certificate",
            EventKind::ChaosFault => "chaos-fault",
            EventKind::Cleaned => "cleaned",
            EventKind::CrashLooping => "crash-looping",
            EventKind::DeployFailed => "deploy-failed",
            EventKind::Deployed => "deployed",
            EventKind::Deploying => "deploying",
            EventKind::DiscoveryFailed => "discovery-failed",
            EventKind::DrainTimeout => "drain-timeout",
            EventKind::AgentCrashed => "agent-crashed",
            EventKind::EdgeCrashed => "edge-crashed",
            EventKind::EdgeUpgraded => "edge-upgraded",
            EventKind::EdgeFailed => "edge-failed",
            EventKind::EdgeStarted => "edge-started",
            EventKind::EdgeStopped => "edge-stopped",
            EventKind::EdgeWarning => "edge-warning",
            EventKind::Exited => "exited",
            EventKind::Follow => "follow",
            EventKind::Healthy => "healthy",
            EventKind::OomKilled => "oom-killed",
            EventKind::OrphanStopped => "orphan-stopped",
            EventKind::Reconfigured => "reconfigured",
            EventKind::Restarted => "restarted",
            EventKind::Rollback => "rollback",
            EventKind::RollbackDegraded => "rollback-degraded",
            EventKind::RolledBack => "rolled-back",
            EventKind::SecretChanged => "secret-changed",
            EventKind::StartFailed => "start-failed",
            EventKind::Started => "started",
            EventKind::Stopped => "stopped",
            EventKind::Stopping => "stopping",
            EventKind::StoreError => "store-error",
            EventKind::Switched => "switched",
            EventKind::Switchover => "switchover",
            EventKind::Unhealthy => "unhealthy",
        }
    }
}

/// Why an instance is stopped; its `label` begins the `stopped` event's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A deploy, a scale-down or a removed service took it away.
    Retired,
    /// `bow restart`: it starts again at once.
    Restart,
    /// It failed its health checks: it restarts after its backoff.
    Unhealthy,
    /// Found running at start, but the applied file does not want it.
    Unwanted,
    /// Found running at an id the core had given to another instance (a start was refused
    /// because of it): that instance starts once it is gone.
    Orphan,
}

impl StopReason {
    pub fn label(&self) -> &'static str {
        match self {
            StopReason::Retired | StopReason::Unwanted | StopReason::Orphan => "stopped",
            StopReason::Restart => "stopped for a restart",
            StopReason::Unhealthy => "stopped as unhealthy",
        }
    }
}

/// A wake-up the core asked for. `token` tells a current timer from a stale one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timer {
    /// An instance's backoff is over: start it again.
    Backoff { key: InstanceKey, token: u64 },
    /// An instance without a health check has stayed up long enough to count as healthy.
    UpLongEnough { key: InstanceKey, token: u64 },
    /// A deploy's wait for health ran out.
    Deadline { service: String, token: u64 },
    /// `bow restart`: one instance had its deploy timeout to become healthy again.
    RestartWait { service: String, token: u64 },
}

impl fmt::Display for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Timer::Backoff { key, token } => write!(f, "backoff {key} #{token}"),
            Timer::UpLongEnough { key, token } => write!(f, "up-long-enough {key} #{token}"),
            Timer::Deadline { service, token } => write!(f, "deadline {service} #{token}"),
            Timer::RestartWait { service, token } => write!(f, "restart-wait {service} #{token}"),
        }
    }
}

/// `1.5s`, `100ms`: a duration as bow writes it.
pub(crate) fn show(duration: Duration) -> String {
    bow_spec::units::Duration(duration).to_string()
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::Start {
                key,
                release,
                routable,
                port,
                ..
            } => {
                write!(f, "start {key} release {release}")?;
                if !routable {
                    write!(f, " (held out of the edge)")?;
                }
                if let Some(port) = port {
                    write!(f, " port {port}")?;
                }
                Ok(())
            }
            Effect::Adopt {
                key,
                release,
                handle,
                ..
            } => write!(f, "adopt {key} release {release} handle {handle}"),
            Effect::Reconfigure { key, release, .. } => {
                write!(f, "reconfigure {key} release {release}")
            }
            Effect::Stop {
                key,
                handle,
                reason,
                drain,
                stop_timeout,
            } => {
                write!(f, "stop {key} handle {handle} ({reason:?}")?;
                if let Some(drain) = drain {
                    write!(f, ", drain {}", show(*drain))?;
                }
                write!(f, ", kill after {})", show(*stop_timeout))
            }
            Effect::Prepare { service, .. } => write!(f, "prepare {service}"),
            Effect::SetEndpoints { service, endpoints } => {
                write!(f, "endpoints {service}: [")?;
                for (i, endpoint) in endpoints.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{endpoint}")?;
                }
                write!(f, "]")
            }
            Effect::RecordRelease(r) => write!(
                f,
                "record release {} {} ({}, {}, revision {}): {}{}",
                r.service,
                r.number,
                r.status.label(),
                r.strategy.label(),
                r.revision,
                r.changes,
                if r.reason.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", r.reason)
                }
            ),
            Effect::SetReleaseStatus {
                service,
                number,
                status,
                reason,
            } => {
                write!(f, "release {service} {number} {}", status.label())?;
                if let Some(reason) = reason {
                    write!(f, ": {reason}")?;
                }
                Ok(())
            }
            Effect::RecordRevision { revision, spec } => {
                write!(f, "record revision {revision}:")?;
                for (name, service) in &spec.services {
                    write!(f, " {name}={}", describe_definition(service))?;
                }
                Ok(())
            }
            Effect::Event(e) => {
                let who = if e.instance.is_empty() {
                    &e.service
                } else {
                    &e.instance
                };
                write!(f, "event {who} {}: {}", e.kind.label(), e.message)
            }
            Effect::ArmTimer { at, timer } => write!(f, "timer at {at}: {timer}"),
            Effect::Progress(p) => {
                write!(
                    f,
                    "progress {} release {} {}: {}",
                    p.service,
                    p.release,
                    p.phase.label(),
                    p.detail
                )?;
                if let Some(failure) = &p.failure
                    && let Some(serving) = failure.serving
                {
                    write!(f, " (release {serving} serves)")?;
                }
                Ok(())
            }
            Effect::Restarted { service, instances } => {
                write!(f, "restarted {service}: {}", instances.join(", "))
            }
            Effect::Down { stopped } => write!(f, "down: {}", stopped.join(", ")),
        }
    }
}

/// A definition in a few words for snapshots: its command and replicas.
fn describe_definition(service: &Service) -> String {
    let command = match &service.workload {
        bow_spec::Workload::Command(bow_spec::CommandLine::Shell(s)) => s.clone(),
        bow_spec::Workload::Command(bow_spec::CommandLine::Argv(a)) => a.join(" "),
        other => other.kind().to_string(),
    };
    format!("{:?}x{}", command, service.replicas)
}
