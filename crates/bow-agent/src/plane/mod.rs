//! The edge's own process ("the plane"): the HTTPS edge, the discovery listeners and the TCP
//! routes run in a process of the bow binary apart from the agent (`bow edge-plane`), so that
//! an agent crash, restart or upgrade drops no request.
//!
//! - The agent sends it plain data over a private socket (`<state-dir>/edge/plane.sock`,
//!   0600, JSON lines): the applied spec (edge settings, routes, their checks), each name's
//!   healthy endpoints, chaos faults and the listeners to run ([`PlaneState`], whole each
//!   time, numbered). The plane keeps serving its last state while no agent runs.
//! - Per request nothing crosses: the hop is configuration only.
//! - A new agent adopts a running plane and holds its first state back until its own view of
//!   the instances has settled (or 10 s passed), so the plane never serves a table emptier
//!   than the one it had.
//! - An upgrade: a plane of another binary is replaced by one of the agent's binary, which
//!   takes the listening sockets over (SCM_RIGHTS), gets the state, and only then is the old
//!   one told to retire (stop accepting, close keep-alive connections gracefully, finish
//!   in-flight requests, exit). No socket is ever closed in between.

pub(crate) mod edge;
mod fds;
pub(crate) mod link;
pub(crate) mod listeners;
mod serve;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use link::PlaneCommand;
pub(crate) use serve::Plane;
pub use serve::{PlaneConfig, serve};

/// `<state-dir>/edge`: the plane's socket, log and the access log.
pub fn plane_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("edge")
}

/// The socket agents talk to the plane on.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    plane_dir(state_dir).join("plane.sock")
}

/// Where a new plane listens while it takes over from the old one.
pub(crate) fn next_socket_path(state_dir: &Path) -> PathBuf {
    plane_dir(state_dir).join("plane.next.sock")
}

/// The plane's own log (its stderr).
pub fn log_path(state_dir: &Path) -> PathBuf {
    plane_dir(state_dir).join("plane.log")
}

/// One instance the plane may send traffic to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaneEndpoint {
    pub id: String,
    pub addr: SocketAddr,
}

/// Which set a listener belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerSet {
    /// A service's discovery address on loopback.
    Discovery,
    /// Its twin on the containers' bridge.
    Bridge,
    /// A TCP route (`tcp: {port}`) on every address.
    TcpRoute,
}

/// One service listener the plane should run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaneListener {
    pub set: ListenerSet,
    /// The name it serves (a service, or `<service>-ro`).
    pub name: String,
    pub addr: SocketAddr,
    /// HTTP (else TCP forwarding).
    pub http: bool,
    /// TLS passthrough by server name (a TCP route's `sni:`): the services of this port.
    #[serde(default)]
    pub sni: bool,
    pub drain_timeout_ms: u64,
}

/// A chaos drill's fault on a service's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaneFault {
    pub delay_ms: u64,
    pub loss_per_million: u32,
}

/// Everything the plane serves, sent whole by the agent at every change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PlaneState {
    /// Increases with every state the agent makes.
    pub seq: u64,
    /// The applied spec: edge settings, routes and their checks, drain timeouts.
    pub spec: Option<bow_spec::Spec>,
    /// Healthy endpoints by name (a service, or `<service>-ro`).
    pub endpoints: BTreeMap<String, Vec<PlaneEndpoint>>,
    /// Faults by service.
    pub faults: BTreeMap<String, PlaneFault>,
    pub listeners: Vec<PlaneListener>,
    /// Each service's discovery address (an auth service's, for forward auth).
    pub names: BTreeMap<String, SocketAddr>,
    /// Each outside API's (`proxy:` service's) addresses: internal, and on the bridge.
    #[serde(default)]
    pub outside_apis: BTreeMap<String, Vec<SocketAddr>>,
    /// Whether the agent's view of its instances has settled (see the module's docs).
    pub settled: bool,
}

/// What the plane says about itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PlaneReport {
    pub pid: u32,
    /// The binary it runs.
    pub exe: String,
    /// The binary's identity (device, inode): a different one means another binary.
    pub exe_id: (u64, u64),
    /// The state it serves.
    pub seq: u64,
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// Why the edge is not serving.
    pub edge_error: Option<String>,
    /// Names with a running discovery listener.
    pub listening: Vec<String>,
    /// Why a name's listener could not start.
    pub listener_errors: BTreeMap<String, String>,
}

/// A drain's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Drained {
    Drained,
    TimedOut { in_flight: usize },
}

impl From<bow_edge::DrainOutcome> for Drained {
    fn from(outcome: bow_edge::DrainOutcome) -> Self {
        match outcome {
            bow_edge::DrainOutcome::Drained => Drained::Drained,
            bow_edge::DrainOutcome::TimedOut { in_flight } => Drained::TimedOut { in_flight },
        }
    }
}

impl From<Drained> for bow_edge::DrainOutcome {
    fn from(outcome: Drained) -> Self {
        match outcome {
            Drained::Drained => bow_edge::DrainOutcome::Drained,
            Drained::TimedOut { in_flight } => bow_edge::DrainOutcome::TimedOut { in_flight },
        }
    }
}

/// What the agent (or a new plane) asks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Request {
    /// Who are you?
    Report,
    /// Serve this from now on.
    Sync(Box<PlaneState>),
    /// Take an instance out (once the state `seq` is served) and wait for its requests.
    Drain {
        id: String,
        timeout_ms: u64,
        seq: u64,
    },
    /// The edge's counters.
    Metrics,
    /// Close everything gracefully and exit (`bow down`).
    Shutdown,
    /// A new plane asks for the listening sockets (sent with SCM_RIGHTS on this connection).
    HandOver,
    /// Stop accepting, finish what is in flight, exit: a new plane serves now.
    Retire,
    /// The new plane: move your socket to the usual path, you are the plane now.
    Promote,
}

/// The plane's answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Response {
    Report(PlaneReport),
    Drained(Option<Drained>),
    Metrics(Option<bow_edge::MetricsSnapshot>),
    /// The addresses of the descriptors that come with this line, in order.
    Sockets(Vec<SocketAddr>),
    Done,
    Error(String),
}

/// The running binary's identity (device, inode).
pub(crate) fn own_exe_id() -> (u64, u64) {
    bow_driver::running_binary().1
}
