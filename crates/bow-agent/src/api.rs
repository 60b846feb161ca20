//! The agent's API: one JSON request per line on `agent.sock`, one JSON response per line.
//! Types only; the server is in `server`, the blocking client in `client`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use bow_spec::Spec;

/// The socket's file name in the state dir.
pub const SOCKET_FILE: &str = "agent.sock";
/// The agent's pid file in the state dir.
pub const PID_FILE: &str = "agent.pid";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    Ping,
    /// Apply a validated spec whose paths are already absolute.
    Apply {
        spec: Box<Spec>,
    },
    Status,
    /// Events with an id above `after_id` (0: from the start), at most `limit`; `last` takes
    /// the newest `limit` instead.
    Events {
        after_id: i64,
        limit: usize,
        last: bool,
    },
    Restart {
        service: String,
    },
    /// How the deploys of revision `revision` are going.
    Progress {
        revision: i64,
    },
    /// Deploy a previous release of a service again: `to`, or the last good one before the
    /// live release.
    Rollback {
        service: String,
        to: Option<i64>,
    },
    /// Stop every instance, then the agent.
    Down,
    /// The alerts firing now (`bow alerts`).
    Alerts,
    /// Send a test notification to the alerts webhook (`bow alerts test`).
    AlertTest,
    /// A chaos drill's fault on a service's traffic at the edge for `for_ms` (then it lifts
    /// by itself; a new fault replaces the old one). Refused unless the applied spec has
    /// `chaos: allow`.
    Fault {
        service: String,
        delay_ms: u64,
        loss_per_million: u32,
        for_ms: u64,
    },
    /// `bow db switchover`: a caught-up replica of a postgres service becomes its primary
    /// (`to`, or the least lagging one), the old primary its replica.
    Switchover {
        service: String,
        to: Option<u32>,
    },
    /// What each instance uses and what each service's traffic at the edge counts now
    /// (`bow top` takes two and shows the rates).
    Usage,
    /// Stop every instance of `services`, in this order, and keep them stopped until
    /// `Resume` (`bow backup`: a volume's tar, a restore and its dependants).
    Hold {
        services: Vec<String>,
    },
    /// Start held services again, in this order, each healthy before the next.
    Resume {
        services: Vec<String>,
    },
    /// Record a `backup` event (`bow backup run|verify|restore` by hand).
    BackupEvent {
        service: String,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "kebab-case")]
pub enum Response {
    Pong {
        pid: u32,
        project: String,
        environment: String,
    },
    Applied {
        revision: i64,
        /// Services this apply changes (their progress is in `Progress`).
        #[serde(default)]
        services: Vec<String>,
    },
    Progress(DeployReport),
    Status(Box<StatusReport>),
    Events {
        events: Vec<Event>,
    },
    Restarted {
        service: String,
        instances: Vec<String>,
    },
    Down {
        stopped: Vec<String>,
    },
    /// Instances held (`Hold`) or started again and healthy (`Resume`).
    Held {
        instances: Vec<String>,
    },
    /// An event was recorded.
    Recorded,
    /// A fault is on (`bow chaos latency|loss`).
    FaultOn {
        service: String,
    },
    /// A switchover is done; what happened.
    SwitchedOver {
        message: String,
    },
    Alerts {
        /// `false` when the applied file has no `alerts:`.
        configured: bool,
        alerts: Vec<AlertStatus>,
    },
    /// A test notification was taken by the receiver (`https://host:port`) with `status`.
    AlertSent {
        receiver: String,
        status: u16,
    },
    Usage(Box<UsageReport>),
    Error {
        message: String,
    },
}

/// Counters read at one moment (`bow top`): rates come from two of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub project: String,
    pub environment: String,
    pub revision: i64,
    pub at_ms: i64,
    pub instances: Vec<InstanceUsage>,
    /// Per routed service, its traffic at the edge since the edge started.
    pub traffic: Vec<ServiceTraffic>,
    /// The upper bounds (seconds) of `ServiceTraffic::latency`'s buckets; one more for +Inf.
    pub latency_bounds: Vec<f64>,
}

/// One instance's use of the machine, as the metrics read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceUsage {
    pub service: String,
    pub instance: String,
    pub health: Health,
    pub cpu_seconds: Option<f64>,
    pub memory_bytes: Option<u64>,
}

/// One service's counters at the edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceTraffic {
    pub service: String,
    pub requests: u64,
    pub server_errors: u64,
    /// Per-bucket (not cumulative) counts of request durations.
    pub latency: Vec<u64>,
}

/// One firing alert (docs/alerts.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertStatus {
    /// The rule: `InstanceCrashLooping`, `ServiceDown`, ...
    pub name: String,
    /// Empty for alerts about the whole system (the state dir's disk).
    pub service: String,
    pub severity: String,
    pub summary: String,
    pub since_ms: i64,
    pub fingerprint: String,
}

/// The deploys one apply (or rollback) started, service by service.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeployReport {
    pub revision: i64,
    pub services: Vec<ServiceProgress>,
    /// Every service is done or failed.
    pub done: bool,
}

/// Where one service's deploy stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceProgress {
    pub service: String,
    /// The release being deployed.
    pub release: i64,
    /// `initial`, `rolling`, `blue-green`, `in-place`.
    pub strategy: String,
    pub phase: Phase,
    /// What the phase is about (`web.4`, `3 of 3 healthy`).
    pub detail: String,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// Why the release failed, when it did.
    pub failure: Option<DeployFailure>,
}

/// The steps of a deploy, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Waiting for the services it depends on to be healthy.
    Waiting,
    /// Building its python environment.
    Building,
    Starting,
    /// Waiting for new instances to pass their health check.
    Health,
    /// Moving the edge from the old set to the new one.
    Switching,
    /// Old instances finish their in-flight requests, then stop.
    Draining,
    /// New instances failed: the old release is being restored.
    RollingBack,
    Done,
    Failed,
}

impl Phase {
    pub fn label(&self) -> &'static str {
        match self {
            Phase::Waiting => "waiting for dependencies",
            Phase::Building => "building",
            Phase::Starting => "starting",
            Phase::Health => "waiting for health",
            Phase::Switching => "switching",
            Phase::Draining => "draining",
            Phase::RollingBack => "rolling back",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }

    pub fn finished(&self) -> bool {
        matches!(self, Phase::Done | Phase::Failed)
    }
}

/// Why a release did not go live.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployFailure {
    pub reason: String,
    /// The instance that failed, and the last lines it wrote.
    pub instance: Option<String>,
    pub last_lines: Vec<String>,
    /// The release serving instead (rolled back to), if any.
    pub serving: Option<i64>,
}

/// `bow status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusReport {
    pub project: String,
    pub environment: String,
    pub agent_pid: u32,
    /// Revision of the applied spec, 0 when nothing was applied.
    pub revision: i64,
    pub services: Vec<ServiceStatus>,
    /// The HTTPS edge, when services have routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeStatus>,
    /// Each service's internal address (services with a `port:`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discovery: Vec<DiscoveryStatus>,
    /// Notes about capabilities (e.g. "not root: services run as the agent's user").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Where other services reach a service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiscoveryStatus {
    pub service: String,
    /// `address:port`, e.g. `127.64.12.7:5001`.
    pub address: String,
    /// `http` (request by request) or `tcp` (connection by connection).
    pub protocol: String,
    /// The names instances resolve to the address; `None` when names are not available (not
    /// root), and the `BOW_<SERVICE>_*` variables are the way.
    pub names: Option<Vec<String>>,
    /// Whether the agent listens on the address.
    pub listening: bool,
    /// Healthy instances traffic goes to.
    pub healthy: usize,
    /// Why the agent does not listen, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where the edge listens and what it serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EdgeStatus {
    pub https: String,
    pub http: String,
    /// The local CA's certificate when the edge uses it (`bow trust`).
    pub ca_certificate: Option<PathBuf>,
    /// `host/prefix → service (N healthy)`.
    pub routes: Vec<String>,
    /// What the edge answered per service since it started.
    #[serde(default)]
    pub requests: std::collections::BTreeMap<String, EdgeRequests>,
    /// The edge's own process: `pid N (binary)`.
    #[serde(default)]
    pub process: Option<String>,
}

/// Requests of one service the edge answered, by outcome (counters since the edge started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRequests {
    /// Every answered request.
    pub total: u64,
    /// 4xx answers (the client's request, or the edge's own refusals).
    pub client_errors: u64,
    /// 5xx answers: the instance failed, or none could take the request (502, 503, 504).
    pub server_errors: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub kind: String,
    pub replicas: u32,
    /// The release the service runs (or is deploying).
    #[serde(default)]
    pub release: i64,
    pub state: Health,
    pub instances: Vec<InstanceStatus>,
    /// How its instances are confined (`default`, `strict +caps net_bind_service`, `off`);
    /// `None` for a service that is not a process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: String,
    pub service: String,
    pub index: u32,
    pub pid: Option<i32>,
    pub port: Option<u16>,
    /// Where the agent reaches it when not at 127.0.0.1:`port` (a container's address on
    /// the engine network and the port it listens on inside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<std::net::SocketAddr>,
    /// What runs it: `process` or `container`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub health: Health,
    pub restarts: u32,
    pub started_at_ms: Option<u64>,
    pub uptime_ms: Option<u64>,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
    pub user: Option<String>,
    pub log_path: Option<PathBuf>,
    /// The release this instance runs.
    #[serde(default)]
    pub release: i64,
    /// A postgres instance's part in its cluster, as its last health check saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseRole>,
    /// The restart generation this instance's process answers to (internal).
    #[serde(skip)]
    pub generation: u64,
}

/// What a postgres instance is in its cluster: the primary (`<service>`) or a streaming
/// replica (`<service>-ro`, while it serves reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseRole {
    /// `primary` or `replica`.
    pub role: String,
    /// How far a replica's replay is behind what the primary sent it (0 when caught up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// A replica within `max_lag` that streams from the primary: in `<service>-ro`.
    #[serde(default)]
    pub serving_reads: bool,
}

impl DatabaseRole {
    pub const PRIMARY: &str = "primary";
    pub const REPLICA: &str = "replica";

    pub fn is_primary(&self) -> bool {
        self.role == Self::PRIMARY
    }
}

/// An instance's (or service's) state. Ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Healthy,
    Starting,
    Stopping,
    Stopped,
    Unhealthy,
    Backoff,
    CrashLooping,
    Failed,
}

impl Health {
    pub fn label(&self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Starting => "starting",
            Health::Stopping => "stopping",
            Health::Stopped => "stopped",
            Health::Unhealthy => "unhealthy",
            Health::Backoff => "backoff",
            Health::CrashLooping => "crash-looping",
            Health::Failed => "failed",
        }
    }
}

/// One event, as `bow events` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at_ms: i64,
    pub service: String,
    pub instance: String,
    pub kind: String,
    pub message: String,
}
