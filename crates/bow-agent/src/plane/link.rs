//! The agent's side of the plane: starts or adopts the edge process, sends it every new state
//! (the latest one: a state is never skipped, only replaced by a newer one before it was
//! sent), restarts it at once when it dies, and replaces it when it runs another binary.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bow_reconcile::EventKind;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::watch;

use super::{PlaneReport, PlaneState, Request, Response};
use crate::agent::Agent;

/// How the agent starts an edge process: the bow binary (`<exe> edge-plane …`).
#[derive(Clone, Debug)]
pub struct PlaneCommand {
    pub exe: PathBuf,
    /// Passed on as `--secrets-file` (the key comes from the environment, as the agent's).
    pub secrets_file: Option<PathBuf>,
}

/// A new agent holds its first state back from an adopted plane at most this long.
const SETTLE_AT_MOST: Duration = Duration::from_secs(10);
/// A started plane must answer on its socket within this.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's link to its plane.
pub(crate) struct Link {
    command: Option<PlaneCommand>,
    state: watch::Sender<Arc<PlaneState>>,
    seq: AtomicU64,
    /// The plane's last report.
    report: Mutex<Option<PlaneReport>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// `bow down` is closing the plane: its end is not a crash.
    stopping: AtomicBool,
    /// A drain waits: send the state now, settled or not.
    urgent: AtomicBool,
    started: Instant,
    /// When the edge process last ended by itself, and its pid.
    crashed: Mutex<Option<(i64, u32)>>,
    /// The agent, for the link's task (set once it exists).
    pub(crate) agent: std::sync::OnceLock<Weak<Agent>>,
}

impl Link {
    pub(crate) fn new(command: Option<PlaneCommand>) -> Link {
        // Numbers that grow across agents: a new agent's states come after the old one's.
        let seq = (crate::now_ms().max(0) as u64) << 16;
        Link {
            command,
            state: watch::channel(Arc::new(PlaneState::default())).0,
            seq: AtomicU64::new(seq),
            report: Mutex::new(None),
            task: Mutex::new(None),
            stopping: AtomicBool::new(false),
            urgent: AtomicBool::new(false),
            started: Instant::now(),
            agent: std::sync::OnceLock::new(),
            crashed: Mutex::new(None),
        }
    }

    /// The plane's last report (`None`: no plane runs).
    pub(crate) fn report(&self) -> Option<PlaneReport> {
        self.report
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Whether the edge process serves the latest state (or none is needed): what a
    /// command waits for before it says a deploy is done.
    pub(crate) fn synced(&self) -> bool {
        let latest = self.state.borrow().clone();
        if self.command.is_none() || !needs_plane(&latest) {
            return true;
        }
        self.report().is_some_and(|report| report.seq >= latest.seq)
    }

    /// When the edge process last ended by itself (ms since the epoch), and its pid.
    pub(crate) fn last_crash(&self) -> Option<(i64, u32)> {
        *self
            .crashed
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn set_report(&self, report: Option<PlaneReport>) {
        *self
            .report
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = report;
    }
}

impl Agent {
    /// Sends the plane `state` (numbered here); starts the link's task the first time a state
    /// needs a plane. Returns the state's number.
    pub(crate) fn push_plane_state(&self, mut state: PlaneState) -> u64 {
        let link = &self.plane;
        let needed = needs_plane(&state);
        let seq = link.seq.fetch_add(1, Ordering::SeqCst) + 1;
        state.seq = seq;
        link.state.send_replace(Arc::new(state));
        if needed && link.command.is_some() && !link.stopping.load(Ordering::SeqCst) {
            let mut task = link
                .task
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if task.as_ref().is_none_or(|task| task.is_finished())
                && let Some(agent) = link.agent.get()
            {
                *task = Some(tokio::spawn(run(agent.clone())));
            }
        }
        seq
    }

    /// Takes `instance_id` out (the caller pushed a state without it, numbered `seq`) and
    /// waits at most `timeout` for its requests in the edge and the listeners.
    pub(crate) async fn plane_drain(
        &self,
        instance_id: &str,
        timeout: Duration,
        seq: u64,
    ) -> Option<bow_edge::DrainOutcome> {
        self.plane.report()?;
        self.plane.urgent.store(true, Ordering::SeqCst);
        self.plane.state.send_modify(|_| {});
        let request = Request::Drain {
            id: instance_id.to_string(),
            timeout_ms: timeout.as_millis() as u64,
            seq,
        };
        let state_dir = self.state_dir.clone();
        let answer = tokio::task::spawn_blocking(move || {
            ask(&state_dir, &request, timeout + Duration::from_secs(5))
        })
        .await
        .ok()?;
        match answer {
            Ok(Response::Drained(outcome)) => outcome.map(Into::into),
            _ => None,
        }
    }

    /// The edge's counters (blocking: call off the async threads).
    pub(crate) fn edge_metrics(&self) -> Option<bow_edge::MetricsSnapshot> {
        self.plane.report()?.https?;
        match ask(&self.state_dir, &Request::Metrics, Duration::from_secs(2)) {
            Ok(Response::Metrics(metrics)) => metrics,
            _ => None,
        }
    }

    /// Closes the plane (`bow down`): its edge and listeners finish their requests, then it
    /// exits. Also closes a plane a previous agent left.
    pub(crate) async fn stop_plane(&self) {
        let link = &self.plane;
        link.stopping.store(true, Ordering::SeqCst);
        if let Some(task) = link
            .task
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
        {
            task.abort();
        }
        let state_dir = self.state_dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let socket = super::socket_path(&state_dir);
            if ask(&state_dir, &Request::Shutdown, Duration::from_secs(5)).is_ok() {
                // Gone once its socket is: it removes it after closing everything.
                let deadline = Instant::now() + Duration::from_secs(120);
                while socket.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
        .await;
        link.set_report(None);
    }
}

/// Whether `state` has anything for an edge process to serve.
fn needs_plane(state: &PlaneState) -> bool {
    !state.listeners.is_empty()
        || !state.outside_apis.is_empty()
        || state
            .spec
            .as_ref()
            .is_some_and(|spec| spec.services.values().any(|s| !s.routes.is_empty()))
}

/// One request on a connection of its own, with a deadline (blocking).
pub(crate) fn ask(
    state_dir: &std::path::Path,
    request: &Request,
    timeout: Duration,
) -> std::io::Result<Response> {
    use std::io::{BufRead, Write};
    let stream = std::os::unix::net::UnixStream::connect(super::socket_path(state_dir))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}

/// A connection to a plane.
struct Connection {
    stream: BufReader<UnixStream>,
}

impl Connection {
    async fn open(path: &std::path::Path) -> std::io::Result<Connection> {
        Ok(Connection {
            stream: BufReader::new(UnixStream::connect(path).await?),
        })
    }

    async fn ask(&mut self, request: &Request) -> std::io::Result<Response> {
        let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.stream.get_mut().write_all(&line).await?;
        let mut answer = String::new();
        if self.stream.read_line(&mut answer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        serde_json::from_str(&answer).map_err(std::io::Error::other)
    }

    async fn report(&mut self) -> std::io::Result<PlaneReport> {
        match self.ask(&Request::Report).await? {
            Response::Report(report) => Ok(report),
            other => Err(std::io::Error::other(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Resolves when the plane closed the connection (it never speaks unasked).
    async fn closed(&mut self) {
        let mut line = String::new();
        loop {
            match self.stream.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => line.clear(),
            }
        }
    }
}

/// The link's task: runs while the agent does.
async fn run(agent: Weak<Agent>) {
    let mut receiver = match agent.upgrade() {
        Some(agent) => agent.plane.state.subscribe(),
        None => return,
    };
    loop {
        let Some(strong) = agent.upgrade() else {
            return;
        };
        let (mut connection, adopted) = match connect_or_start(&strong).await {
            Ok(found) => found,
            Err(reason) => {
                strong.emit("", "", EventKind::EdgeFailed, &reason);
                *strong.edge_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                drop(strong);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        drop(strong);
        // An adopted plane serves the previous agent's last state: keep it until this
        // agent's view has settled.
        if adopted && !wait_settled(&agent, &mut receiver, &mut connection).await {
            continue;
        }
        if adopted
            && let Some(strong) = agent.upgrade()
            && let Some(report) = strong.plane.report()
            && report.exe_id != super::own_exe_id()
        {
            match upgrade(&strong, &mut connection, &report).await {
                Ok(new) => connection = new,
                Err(reason) => strong.emit(
                    "",
                    "",
                    EventKind::EdgeFailed,
                    &format!("the edge process of the new binary: {reason}; the old one serves on"),
                ),
            }
        }
        // Send every new state; a closed connection means the plane died.
        loop {
            let state = receiver.borrow_and_update().clone();
            let Some(strong) = agent.upgrade() else {
                return;
            };
            strong.plane.urgent.store(false, Ordering::SeqCst);
            match connection
                .ask(&Request::Sync(Box::new((*state).clone())))
                .await
            {
                Ok(Response::Report(report)) => {
                    *strong.edge_error.lock().unwrap_or_else(|e| e.into_inner()) =
                        report.edge_error.clone();
                    strong.plane.set_report(Some(report));
                }
                Ok(_) => {}
                Err(_) => break,
            }
            drop(strong);
            tokio::select! {
                changed = receiver.changed() => if changed.is_err() { return },
                () = connection.closed() => break,
            }
        }
        let Some(strong) = agent.upgrade() else {
            return;
        };
        if strong.plane.stopping.load(Ordering::SeqCst) {
            return;
        }
        let pid = strong.plane.report().map_or(0, |r| r.pid);
        strong.plane.set_report(None);
        *strong
            .plane
            .crashed
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some((crate::now_ms(), pid));
        strong.emit(
            "",
            "",
            EventKind::EdgeCrashed,
            &format!("the edge process (pid {pid}) ended; starting it again"),
        );
    }
}

/// Connects to the running plane, or starts one; says whether it was running already.
async fn connect_or_start(agent: &Arc<Agent>) -> Result<(Connection, bool), String> {
    let socket = super::socket_path(&agent.state_dir);
    if let Ok(mut connection) = Connection::open(&socket).await
        && let Ok(report) = connection.report().await
    {
        agent.emit(
            "",
            "",
            EventKind::EdgeStarted,
            &format!(
                "adopted the running edge process (pid {}); it serves on meanwhile",
                report.pid
            ),
        );
        agent.plane.set_report(Some(report));
        return Ok((connection, true));
    }
    let connection = start(agent, false, &socket).await?;
    Ok((connection, false))
}

/// Starts a plane of this agent's binary and connects to it on `socket`.
async fn start(
    agent: &Arc<Agent>,
    take_over: bool,
    socket: &std::path::Path,
) -> Result<Connection, String> {
    let command = agent
        .plane
        .command
        .clone()
        .ok_or("this agent cannot start an edge process")?;
    let log = super::log_path(&agent.state_dir);
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let log = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?
    };
    let mut process = tokio::process::Command::new(&command.exe);
    process
        .arg("edge-plane")
        .arg("--state-dir")
        .arg(&agent.state_dir)
        .arg("--project")
        .arg(&agent.project)
        .arg("--environment")
        .arg(&agent.environment);
    if let Some(file) = &command.secrets_file {
        process.arg("--secrets-file").arg(file);
    }
    if take_over {
        process.arg("--take-over");
    }
    process
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // Its own session: a signal to the agent's process group does not reach it.
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        process.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = process
        .spawn()
        .map_err(|e| format!("cannot start {} edge-plane: {e}", command.exe.display()))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(mut connection) = Connection::open(socket).await
            && let Ok(report) = connection.report().await
        {
            agent.plane.set_report(Some(report));
            // Reaped in the background once it ends (tokio's orphan queue).
            drop(child);
            return Ok(connection);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the edge process exited at start ({status}); see {}",
                super::log_path(&agent.state_dir).display()
            ));
        }
        if Instant::now() > deadline {
            let _ = child.start_kill();
            return Err(format!(
                "the edge process did not answer within {START_TIMEOUT:?}; see {}",
                super::log_path(&agent.state_dir).display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the agent's state has settled (or [`SETTLE_AT_MOST`] since the agent started,
/// or a drain needs it); false when the plane died meanwhile.
async fn wait_settled(
    agent: &Weak<Agent>,
    receiver: &mut watch::Receiver<Arc<PlaneState>>,
    connection: &mut Connection,
) -> bool {
    loop {
        let Some(strong) = agent.upgrade() else {
            return false;
        };
        let deadline = strong.plane.started + SETTLE_AT_MOST;
        let settled = receiver.borrow().settled;
        if settled || Instant::now() >= deadline || strong.plane.urgent.load(Ordering::SeqCst) {
            return true;
        }
        drop(strong);
        tokio::select! {
            changed = receiver.changed() => if changed.is_err() { return false },
            () = tokio::time::sleep_until(deadline.into()) => {}
            () = connection.closed() => return false,
        }
    }
}

/// Replaces the running plane (another binary) by one of this agent's binary: the new one
/// takes the listening sockets over and gets the state, then the old one retires.
async fn upgrade(
    agent: &Arc<Agent>,
    old: &mut Connection,
    old_report: &PlaneReport,
) -> Result<Connection, String> {
    let next = super::next_socket_path(&agent.state_dir);
    let mut new = start(agent, true, &next).await?;
    let state = agent.plane.state.borrow().clone();
    match new.ask(&Request::Sync(Box::new((*state).clone()))).await {
        Ok(Response::Report(_)) => {}
        other => {
            return Err(format!(
                "the new edge process did not take the state: {other:?}"
            ));
        }
    }
    match new.ask(&Request::Promote).await {
        Ok(Response::Done) => {}
        other => {
            return Err(format!(
                "the new edge process did not take the socket: {other:?}"
            ));
        }
    }
    let _ = old.ask(&Request::Retire).await;
    let report = new.report().await.map_err(|e| e.to_string())?;
    agent.emit(
        "",
        "",
        EventKind::EdgeUpgraded,
        &format!(
            "edge process {} ({}) took over from {} ({}), which drains and exits",
            report.pid, report.exe, old_report.pid, old_report.exe
        ),
    );
    agent.plane.set_report(Some(report));
    Ok(new)
}
