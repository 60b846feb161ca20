//! One instance slot's life as data: start, run (exit, health), restart with backoff, stop.
//! What `supervisor.rs` did in a task per slot, here as transitions that push effects.

use std::sync::Arc;
use std::time::Duration;

use bow_spec::Service;

use crate::backoff::{Backoff, FIRST_DELAY, NO_CHECK_HEALTHY_AFTER};
use crate::effect::{Effect, Event, EventKind, StopReason, Timer, show};
use crate::model::{ExitInfo, Health, InstanceKey, InstanceView, Listed, Millis, Process};

/// The effects of one step, the time it runs at and the timer tokens handed out so far.
#[derive(Debug, Default)]
pub(crate) struct Out {
    pub now: Millis,
    pub effects: Vec<Effect>,
    tokens: u64,
}

impl Out {
    pub fn token(&mut self) -> u64 {
        self.tokens += 1;
        self.tokens
    }

    pub fn emit(&mut self, service: &str, instance: &str, kind: EventKind, message: String) {
        self.effects.push(Effect::Event(Event {
            service: service.to_string(),
            instance: instance.to_string(),
            kind,
            message,
        }));
    }

    pub fn timer(&mut self, after: Duration, timer: Timer) {
        self.effects.push(Effect::ArmTimer {
            at: self.now + after.as_millis() as Millis,
            timer,
        });
    }
}

/// What a slot is doing.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Run {
    /// `Start` went out; `Started` or `StartFailed` comes back.
    Launching,
    Running {
        process: Process,
        /// The token of the "up long enough" timer of an instance without a health check.
        check_token: u64,
        healthy_since: Option<Millis>,
    },
    /// Its process is being stopped (unhealthy, or `bow restart`); what follows is `then`.
    Stopping {
        process: Process,
        reason: StopReason,
        healthy_for: Option<Millis>,
    },
    /// Waiting out a backoff; the timer with `token` starts it again.
    Waiting { token: u64 },
}

/// What is left of a slot a deploy took away: a stop under way, or a start to stop once it
/// answers. Its index stays taken until it is gone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Retiring {
    pub reason: StopReason,
    pub awaiting_start: bool,
    pub drain: Option<Duration>,
    pub stop_timeout: Duration,
}

/// How long an instance whose definition is unknown gets to stop.
pub(crate) const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Retiring {
    fn new(reason: StopReason, awaiting_start: bool, definition: &Service) -> Retiring {
        let served = !definition.routes.is_empty() || definition.port.is_some();
        Retiring {
            reason,
            awaiting_start,
            drain: served.then(|| definition.deploy.drain_timeout.as_std()),
            stop_timeout: definition.stop_timeout.as_std(),
        }
    }

    /// Found running but wanted by nobody (`Unwanted`), or in another instance's way
    /// (`Orphan`): stopped without draining.
    pub fn unwanted(awaiting_start: bool) -> Retiring {
        Retiring::untracked(StopReason::Unwanted, awaiting_start)
    }

    pub fn untracked(reason: StopReason, awaiting_start: bool) -> Retiring {
        Retiring {
            reason,
            awaiting_start,
            drain: None,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        }
    }

    pub fn stop(&self, key: &InstanceKey, process: &Process) -> Effect {
        Effect::Stop {
            key: key.clone(),
            handle: process.handle.clone(),
            reason: self.reason,
            drain: self.drain,
            stop_timeout: self.stop_timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub key: InstanceKey,
    pub release: i64,
    pub definition: Arc<Service>,
    /// Whether the edge may send it traffic once healthy (a blue-green set waits).
    pub routable: bool,
    pub health: Health,
    /// Restarts in its whole life (an adopted instance brings its count along).
    pub restarts: u32,
    /// Restarts this core saw (a deploy waiting on it fails at the first).
    pub restarts_seen: u32,
    pub run: Run,
    backoff: Backoff,
    first_start: bool,
    reported_crash_loop: bool,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
    /// The port to keep on a restart (it was healthy on it).
    port: Option<u16>,
    pub started_at: Option<Millis>,
    /// `bow restart` requests so far, and the one the current process answers to.
    pub generation: u64,
    pub answered: u64,
}

impl Slot {
    /// A new slot; it starts at once.
    pub fn launch(
        key: InstanceKey,
        release: i64,
        definition: Arc<Service>,
        routable: bool,
        out: &mut Out,
    ) -> Slot {
        let mut slot = Slot {
            key,
            release,
            definition,
            routable,
            health: Health::Starting,
            restarts: 0,
            restarts_seen: 0,
            run: Run::Launching,
            backoff: Backoff::default(),
            first_start: true,
            reported_crash_loop: false,
            last_exit: None,
            last_error: None,
            port: None,
            started_at: None,
            generation: 0,
            answered: 0,
        };
        slot.start(out);
        slot
    }

    /// A slot for an instance found running at start.
    pub fn adopt(listed: Listed, release: i64, definition: Arc<Service>, out: &mut Out) -> Slot {
        let Listed {
            key,
            process,
            restarts,
            ..
        } = listed;
        out.emit(
            &key.service,
            &key.to_string(),
            EventKind::Adopted,
            format!(
                "{} port {} (still running from a previous agent)",
                process.process, process.port
            ),
        );
        out.effects.push(Effect::Adopt {
            key: key.clone(),
            release,
            definition: definition.clone(),
            handle: process.handle.clone(),
        });
        let mut slot = Slot {
            key,
            release,
            definition,
            routable: true,
            health: Health::Starting,
            restarts,
            restarts_seen: 0,
            run: Run::Launching,
            backoff: Backoff::default(),
            first_start: false,
            reported_crash_loop: false,
            last_exit: None,
            last_error: None,
            port: Some(process.port),
            started_at: Some(out.now),
            generation: 0,
            answered: 0,
        };
        slot.run = slot.running(process, out);
        slot
    }

    fn id(&self) -> String {
        self.key.to_string()
    }

    fn emit(&self, out: &mut Out, kind: EventKind, message: String) {
        out.emit(&self.key.service, &self.id(), kind, message);
    }

    /// Starts again after an orphan in the way of its start is gone.
    pub fn relaunch(&mut self, out: &mut Out) {
        if self.run == Run::Launching {
            self.start(out);
        }
    }

    fn start(&mut self, out: &mut Out) {
        out.effects.push(Effect::Start {
            key: self.key.clone(),
            release: self.release,
            definition: self.definition.clone(),
            routable: self.routable,
            port: self.port,
        });
        self.run = Run::Launching;
    }

    /// The state of a process that runs now; one without a health check is healthy once it
    /// has stayed up long enough.
    fn running(&self, process: Process, out: &mut Out) -> Run {
        let check_token = if self.definition.health.is_none() {
            let token = out.token();
            out.timer(
                NO_CHECK_HEALTHY_AFTER,
                Timer::UpLongEnough {
                    key: self.key.clone(),
                    token,
                },
            );
            token
        } else {
            0
        };
        Run::Running {
            process,
            check_token,
            healthy_since: None,
        }
    }

    pub fn process(&self) -> Option<&Process> {
        match &self.run {
            Run::Running { process, .. } | Run::Stopping { process, .. } => Some(process),
            _ => None,
        }
    }

    fn current(&self, handle: &str) -> bool {
        matches!(&self.run, Run::Running { process, .. } if process.handle == handle)
    }

    pub fn on_started(&mut self, process: Process, out: &mut Out) {
        if self.run != Run::Launching {
            return;
        }
        if !self.first_start {
            self.emit(
                out,
                EventKind::Restarted,
                format!("restart {}", self.restarts),
            );
        }
        self.first_start = false;
        self.emit(
            out,
            EventKind::Started,
            format!(
                "{} port {} user {}",
                process.process, process.port, process.user
            ),
        );
        // A crash-looping instance shows so until it is healthy again.
        self.health = if self.backoff.crash_looping() {
            Health::CrashLooping
        } else {
            Health::Starting
        };
        self.last_error = None;
        self.started_at = Some(out.now);
        self.answered = self.generation;
        self.run = self.running(process, out);
    }

    pub fn on_start_failed(&mut self, reason: String, out: &mut Out) {
        if self.run != Run::Launching {
            return;
        }
        self.first_start = false;
        self.emit(out, EventKind::StartFailed, reason.clone());
        self.health = Health::Failed;
        self.last_error = Some(reason);
        let delay = self.backoff.next_delay().max(FIRST_DELAY);
        self.emit(
            out,
            EventKind::Backoff,
            format!("next start in {}", show(delay)),
        );
        self.wait(delay, out);
    }

    fn wait(&mut self, delay: Duration, out: &mut Out) {
        let token = out.token();
        out.timer(
            delay,
            Timer::Backoff {
                key: self.key.clone(),
                token,
            },
        );
        self.run = Run::Waiting { token };
    }

    fn healthy_for(&self, now: Millis) -> Option<Millis> {
        match &self.run {
            Run::Running { healthy_since, .. } => healthy_since.map(|since| now - since),
            _ => None,
        }
    }

    pub fn on_healthy(&mut self, handle: &str, message: String, out: &mut Out) {
        if !self.current(handle) {
            return;
        }
        if let Run::Running { healthy_since, .. } = &mut self.run {
            *healthy_since = Some(out.now);
        }
        self.health = Health::Healthy;
        self.emit(out, EventKind::Healthy, message);
    }

    pub fn on_up_long_enough(&mut self, token: u64, out: &mut Out) {
        let handle = match &self.run {
            Run::Running {
                process,
                check_token,
                ..
            } if *check_token == token => process.handle.clone(),
            _ => return,
        };
        let message = format!("up for {} (no health check)", show(NO_CHECK_HEALTHY_AFTER));
        self.on_healthy(&handle, message, out);
    }

    pub fn on_exited(&mut self, handle: &str, exit: Option<ExitInfo>, out: &mut Out) {
        if !self.current(handle) {
            return;
        }
        let healthy_for = self.healthy_for(out.now);
        let (kind, message) = match &exit {
            Some(exit) if exit.oom_killed => (
                EventKind::OomKilled,
                format!("{}: the memory limit was reached", exit.description),
            ),
            Some(exit) => (EventKind::Exited, exit.description.clone()),
            None => (
                EventKind::Exited,
                "ended; its exit status was not recorded".to_string(),
            ),
        };
        self.emit(out, kind, message.clone());
        // A restarted instance keeps its port while the port is free; one that never became
        // healthy gets a fresh port.
        if let Run::Running { process, .. } = &self.run {
            self.port = healthy_for.map(|_| process.port);
        }
        self.last_exit = Some(message);
        self.health = Health::Stopped;
        self.ended(healthy_for, out);
    }

    pub fn on_unhealthy(&mut self, handle: &str, reason: String, out: &mut Out) {
        if !self.current(handle) {
            return;
        }
        let healthy_for = self.healthy_for(out.now);
        self.emit(out, EventKind::Unhealthy, reason.clone());
        // It shows unhealthy (not stopping) while it is stopped: a deploy waiting on it
        // fails at once.
        self.health = Health::Unhealthy;
        self.last_error = Some(reason);
        self.stop(StopReason::Unhealthy, healthy_for, out);
    }

    fn stop(&mut self, reason: StopReason, healthy_for: Option<Millis>, out: &mut Out) {
        let Run::Running { process, .. } = std::mem::replace(&mut self.run, Run::Launching) else {
            return;
        };
        let retiring = Retiring::new(reason, false, &self.definition);
        out.effects.push(retiring.stop(&self.key, &process));
        self.run = Run::Stopping {
            process,
            reason,
            healthy_for,
        };
    }

    /// `bow restart`: stops the running process to start it again at once. Returns false
    /// when nothing runs (the next start answers the request).
    pub fn request_restart(&mut self, out: &mut Out) -> bool {
        self.generation += 1;
        if !matches!(self.run, Run::Running { .. }) {
            return false;
        }
        let healthy_for = self.healthy_for(out.now);
        self.health = Health::Stopping;
        self.stop(StopReason::Restart, healthy_for, out);
        true
    }

    pub fn on_stop_finished(&mut self, outcome: &str, out: &mut Out) {
        let Run::Stopping {
            reason,
            healthy_for,
            ..
        } = self.run
        else {
            return;
        };
        self.emit(
            out,
            EventKind::Stopped,
            format!("{}: {outcome}", reason.label()),
        );
        if let Run::Stopping { process, .. } = &self.run {
            self.port = healthy_for.map(|_| process.port);
        }
        if reason == StopReason::Restart {
            self.count_restart();
            self.backoff.reset();
            self.health = Health::Starting;
            self.start(out);
        } else {
            self.ended(healthy_for, out);
        }
    }

    /// The process is gone by itself or as unhealthy: start again after the backoff.
    fn ended(&mut self, healthy_for: Option<Millis>, out: &mut Out) {
        // The one restart policy (backoff.rs): a run that served restarts at once, afresh.
        let served = healthy_for.is_some();
        if served {
            self.reported_crash_loop = false;
        }
        let delay = self.backoff.after_run(served);
        self.count_restart();
        let crash_looping = self.backoff.crash_looping();
        self.health = if crash_looping {
            Health::CrashLooping
        } else if delay.is_zero() {
            Health::Starting
        } else {
            Health::Backoff
        };
        if crash_looping && !self.reported_crash_loop {
            self.reported_crash_loop = true;
            self.emit(
                out,
                EventKind::CrashLooping,
                format!(
                    "{} restarts in a row without becoming healthy",
                    self.backoff.consecutive()
                ),
            );
        }
        if delay.is_zero() {
            self.start(out);
        } else {
            self.emit(
                out,
                EventKind::Backoff,
                format!("restart in {}", show(delay)),
            );
            self.wait(delay, out);
        }
    }

    fn count_restart(&mut self) {
        self.restarts += 1;
        self.restarts_seen += 1;
    }

    pub fn on_backoff_over(&mut self, token: u64, out: &mut Out) {
        if self.run == (Run::Waiting { token }) {
            self.start(out);
        }
    }

    /// The definition changed in place: a running process keeps running.
    pub fn reconfigure(&mut self, release: i64, definition: Arc<Service>, out: &mut Out) {
        self.release = release;
        self.definition = definition.clone();
        if let Run::Running { process, .. } = &self.run {
            let message = format!(
                "release {release}: checks and timeouts changed in place, {} keeps running",
                process.process
            );
            self.emit(out, EventKind::Reconfigured, message);
            out.effects.push(Effect::Reconfigure {
                key: self.key.clone(),
                release,
                definition,
            });
        }
    }

    /// A deploy takes the slot away: what remains to be stopped, if anything.
    pub fn retire(self, out: &mut Out) -> Option<Retiring> {
        match &self.run {
            Run::Launching => Some(Retiring::new(StopReason::Retired, true, &self.definition)),
            Run::Running { process, .. } => {
                let retiring = Retiring::new(StopReason::Retired, false, &self.definition);
                out.effects.push(retiring.stop(&self.key, process));
                Some(retiring)
            }
            Run::Stopping { reason, .. } => Some(Retiring::new(*reason, false, &self.definition)),
            Run::Waiting { .. } => None,
        }
    }

    /// Why it is not healthy, in a few words.
    pub fn describe_failure(&self) -> String {
        if let Some(error) = &self.last_error {
            return error.clone();
        }
        if let Some(exit) = &self.last_exit {
            return format!("exited: {exit}");
        }
        self.health.label().to_string()
    }

    pub fn view(&self) -> InstanceView {
        InstanceView {
            key: self.key.clone(),
            release: self.release,
            health: self.health,
            restarts: self.restarts,
            process: self.process().cloned(),
            started_at: self.started_at,
            last_exit: self.last_exit.clone(),
            last_error: self.last_error.clone(),
            routable: self.routable,
        }
    }
}
