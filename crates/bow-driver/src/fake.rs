//! A [`Driver`] that runs nothing: it records calls and plays scripted outcomes, for unit
//! tests of the agent (start errors, crashes, services that ignore SIGTERM, adoption).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::driver::{BoxFuture, Driver, Found, Handle, Listing, Stray, Usage};
use crate::error::{DriverError, Result};
use crate::handle::{InstanceExit, InstanceHandle, StopOutcome};
use crate::logs::{LogLine, LogStream};
use crate::spec::InstanceSpec;
use crate::timestamp::unix_millis;

/// One call the fake received, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum DriverCall {
    Start {
        instance_id: String,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
    },
    Stop {
        instance_id: String,
        timeout: Duration,
    },
    List,
    CleanUp,
}

/// The recording, scriptable fake driver. Pids start at 1000 and are never reused.
#[derive(Debug, Default)]
pub struct FakeProcessDriver {
    state: Arc<Mutex<FakeState>>,
    /// Woken whenever an instance ends.
    ended: Arc<Notify>,
}

#[derive(Debug, Default)]
struct FakeState {
    calls: Vec<DriverCall>,
    start_failures: VecDeque<DriverError>,
    exit_on_start: BTreeMap<String, InstanceExit>,
    ignores_sigterm: BTreeSet<String>,
    /// By pid: the handle, its `PORT`, and how it ended once it has.
    instances: BTreeMap<i32, Instance>,
    logs: BTreeMap<String, Vec<String>>,
    next_pid: i32,
}

#[derive(Debug, Clone)]
struct Instance {
    handle: InstanceHandle,
    port: Option<u16>,
    exit: Option<InstanceExit>,
}

/// An exit with `code`, stamped now.
pub fn exited_with(code: i32) -> InstanceExit {
    InstanceExit {
        code: Some(code),
        signal: None,
        oom_killed: false,
        exited_at_unix_ms: unix_millis(SystemTime::now()),
    }
}

/// An exit by `signal`, stamped now.
pub fn killed_by(signal: i32) -> InstanceExit {
    InstanceExit {
        code: None,
        signal: Some(signal),
        oom_killed: false,
        exited_at_unix_ms: unix_millis(SystemTime::now()),
    }
}

/// A process handle of `<service>.<index>` at `pid`, for tests that need one.
pub fn handle_for_tests(service: &str, index: u32, pid: i32) -> InstanceHandle {
    InstanceHandle {
        project: "p".into(),
        service: service.into(),
        index,
        instance_id: format!("{service}.{index}"),
        release: 1,
        pid,
        start_time: pid as u64 * 100,
        pgid: pid,
        shim_pid: pid + 1_000_000,
        shim_start_time: pid as u64 * 100,
        run_dir: format!("/run/p/{service}.{index}").into(),
        log_path: format!("/log/p/{service}.{index}.log").into(),
        cgroup: None,
        user: service.into(),
        uid: 0,
        gid: 0,
        started_at_unix_ms: 0,
        secrets_dir: None,
        sandbox: None,
        stop_signal: None,
    }
}

impl FakeProcessDriver {
    pub fn new() -> FakeProcessDriver {
        FakeProcessDriver::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        lock(&self.state)
    }

    /// The next `start` (of any instance) fails with `error`; queued errors are used in order.
    pub fn fail_next_start(&self, error: DriverError) {
        self.state().start_failures.push_back(error);
    }

    /// Every instance of `service` started from now on ends at once with `exit` (a crash loop).
    pub fn exit_immediately(&self, service: &str, exit: InstanceExit) {
        self.state().exit_on_start.insert(service.to_string(), exit);
    }

    /// Instances of `service` ignore SIGTERM: `stop` reports them as SIGKILLed.
    pub fn ignore_sigterm(&self, service: &str) {
        self.state().ignores_sigterm.insert(service.to_string());
    }

    /// Simulates the instance ending on its own (a crash, an OOM kill, a clean exit).
    pub fn end(&self, handle: &Handle, exit: InstanceExit) {
        if let Some(instance) = self.state().instances.get_mut(&handle.as_process().pid) {
            instance.exit.get_or_insert(exit);
        }
        self.ended.notify_waiters();
    }

    /// `line` as the next line of an instance's output.
    pub fn write_log(&self, instance_id: &str, line: &str) {
        self.state()
            .logs
            .entry(instance_id.to_string())
            .or_default()
            .push(line.to_string());
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<DriverCall> {
        self.state().calls.clone()
    }

    /// The instances that are running now, in start order.
    pub fn running(&self) -> Vec<Handle> {
        self.state()
            .instances
            .values()
            .filter(|i| i.exit.is_none())
            .map(|i| Handle::process(i.handle.clone()))
            .collect()
    }

    fn record(&self, call: DriverCall) {
        self.state().calls.push(call);
    }

    fn start_now(&self, spec: &InstanceSpec) -> Result<Handle> {
        self.record(DriverCall::Start {
            instance_id: spec.instance_id.clone(),
            argv: spec.argv.clone(),
            env: spec.env.clone(),
        });
        spec.validate()?;
        let mut state = self.state();
        if let Some(error) = state.start_failures.pop_front() {
            return Err(error);
        }
        if let Some(running) = state.instances.values().find(|i| {
            i.exit.is_none()
                && i.handle.project == spec.project
                && i.handle.instance_id == spec.instance_id
        }) {
            return Err(DriverError::AlreadyRunning {
                instance: spec.instance_id.clone(),
                pid: running.handle.pid,
            });
        }
        state.next_pid = state.next_pid.max(999) + 1;
        let pid = state.next_pid;
        let handle = InstanceHandle {
            project: spec.project.clone(),
            service: spec.service.clone(),
            index: spec.index,
            instance_id: spec.instance_id.clone(),
            release: spec.release,
            pid,
            start_time: pid as u64 * 100,
            pgid: pid,
            shim_pid: pid + 1_000_000,
            shim_start_time: pid as u64 * 100,
            run_dir: spec.instance_run_dir(),
            log_path: spec.log_path(),
            cgroup: None,
            user: spec.user.clone().unwrap_or_else(|| "root".into()),
            uid: 0,
            gid: 0,
            started_at_unix_ms: unix_millis(SystemTime::now()),
            secrets_dir: None,
            sandbox: spec.sandbox.clone().map(Box::new),
            stop_signal: None,
        };
        let exit = state.exit_on_start.get(&spec.service).cloned();
        let port = spec.env.get("PORT").and_then(|p| p.parse().ok());
        state.instances.insert(
            pid,
            Instance {
                handle: handle.clone(),
                port,
                exit,
            },
        );
        Ok(Handle::process(handle))
    }

    fn stop_now(&self, handle: &Handle, timeout: Duration) -> StopOutcome {
        let handle = handle.as_process();
        self.record(DriverCall::Stop {
            instance_id: handle.instance_id.clone(),
            timeout,
        });
        let outcome = {
            let mut state = self.state();
            let ignores_sigterm = state.ignores_sigterm.contains(&handle.service);
            match state.instances.get_mut(&handle.pid) {
                Some(known) if known.handle.start_time == handle.start_time => {
                    if let Some(exit) = &known.exit {
                        StopOutcome::AlreadyGone(Some(exit.clone()))
                    } else if ignores_sigterm {
                        let exit = killed_by(libc::SIGKILL);
                        known.exit = Some(exit.clone());
                        StopOutcome::Killed(Some(exit))
                    } else {
                        let exit = exited_with(0);
                        known.exit = Some(exit.clone());
                        StopOutcome::Terminated(Some(exit))
                    }
                }
                _ => StopOutcome::AlreadyGone(None),
            }
        };
        self.ended.notify_waiters();
        outcome
    }

    fn instance(&self, handle: &Handle) -> Option<Instance> {
        let handle = handle.as_process();
        self.state()
            .instances
            .get(&handle.pid)
            .filter(|i| i.handle.start_time == handle.start_time)
            .cloned()
    }
}

fn lock(state: &Mutex<FakeState>) -> std::sync::MutexGuard<'_, FakeState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Driver for FakeProcessDriver {
    fn start(&self, spec: InstanceSpec) -> BoxFuture<Result<Handle>> {
        let started = self.start_now(&spec);
        Box::pin(async move { started })
    }

    fn stop(&self, handle: &Handle, timeout: Duration) -> BoxFuture<Result<StopOutcome>> {
        let outcome = self.stop_now(handle, timeout);
        Box::pin(async move { Ok(outcome) })
    }

    fn wait_exit(&self, handle: &Handle) -> BoxFuture<Option<InstanceExit>> {
        let state = self.state.clone();
        let ended = self.ended.clone();
        let handle = handle.as_process().clone();
        Box::pin(async move {
            loop {
                let notified = ended.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                match lock(&state).instances.get(&handle.pid) {
                    Some(known) if known.handle.start_time == handle.start_time => {
                        if let Some(exit) = &known.exit {
                            return Some(exit.clone());
                        }
                    }
                    _ => return None,
                }
                notified.await;
            }
        })
    }

    fn is_running(&self, handle: &Handle) -> bool {
        self.instance(handle).is_some_and(|i| i.exit.is_none())
    }

    fn exit_status(&self, handle: &Handle) -> Option<InstanceExit> {
        self.instance(handle).and_then(|i| i.exit)
    }

    fn live(&self, instance_id: &str) -> Option<Handle> {
        self.state()
            .instances
            .values()
            .find(|i| i.exit.is_none() && i.handle.instance_id == instance_id)
            .map(|i| Handle::process(i.handle.clone()))
    }

    fn list(&self) -> BoxFuture<Listing> {
        self.record(DriverCall::List);
        let instances = self
            .state()
            .instances
            .values()
            .map(|i| Found {
                handle: Handle::process(i.handle.clone()),
                running: i.exit.is_none(),
            })
            .collect();
        Box::pin(async move {
            Listing {
                instances,
                strays: Vec::new(),
            }
        })
    }

    fn stop_stray(&self, _stray: Stray, _timeout: Duration) -> BoxFuture<()> {
        Box::pin(async {})
    }

    fn port_of(&self, handle: &Handle) -> Option<u16> {
        self.instance(handle)?.port
    }

    fn log_tail(&self, instance_id: &str, lines: usize) -> Vec<LogLine> {
        let state = self.state();
        let all = state.logs.get(instance_id).map_or(&[][..], Vec::as_slice);
        all[all.len().saturating_sub(lines)..]
            .iter()
            .map(|text| LogLine {
                time: SystemTime::now(),
                stream: LogStream::Stdout,
                text: text.clone(),
            })
            .collect()
    }

    fn usage(&self, _handle: &Handle) -> Usage {
        Usage::default()
    }

    fn check_command(
        &self,
        _handle: &Handle,
        check: &str,
        dir: &std::path::Path,
    ) -> std::process::Command {
        // The fake's instances are not processes: the check runs as the agent does.
        let mut command = std::process::Command::new("/bin/sh");
        command.arg("-c").arg(check).current_dir(dir);
        command
    }

    fn clean_up(&self) -> BoxFuture<()> {
        self.record(DriverCall::CleanUp);
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec(service: &str, index: u32) -> InstanceSpec {
        InstanceSpec::new(
            "p",
            service,
            index,
            vec!["app".into()],
            Path::new("/run/p"),
            Path::new("/log/p"),
        )
    }

    #[tokio::test]
    async fn records_calls_and_tracks_instances() {
        let driver = FakeProcessDriver::new();
        let web = driver.start(spec("web", 0)).await.unwrap();
        assert!(driver.is_running(&web));
        assert_eq!(driver.running(), vec![web.clone()]);
        let exit = driver.wait_exit(&web);
        let outcome = driver.stop(&web, Duration::from_secs(3)).await.unwrap();
        assert_eq!(outcome.exit().unwrap().code, Some(0));
        assert_eq!(exit.await.unwrap().code, Some(0));
        assert!(!driver.is_running(&web));
        assert!(matches!(
            driver.stop(&web, Duration::ZERO).await.unwrap(),
            StopOutcome::AlreadyGone(Some(_))
        ));
        let calls = driver.calls();
        assert!(
            matches!(&calls[0], DriverCall::Start { instance_id, .. } if instance_id == "web.0")
        );
        assert_eq!(
            calls[1],
            DriverCall::Stop {
                instance_id: "web.0".into(),
                timeout: Duration::from_secs(3)
            }
        );
    }

    #[tokio::test]
    async fn scripted_failures_and_exits_are_played_back() {
        let driver = FakeProcessDriver::new();
        driver.fail_next_start(DriverError::CommandNotFound {
            command: "x".into(),
            path: "/bin".into(),
        });
        assert!(matches!(
            driver.start(spec("web", 0)).await,
            Err(DriverError::CommandNotFound { .. })
        ));
        driver.exit_immediately("crashy", exited_with(3));
        let crashy = driver.start(spec("crashy", 0)).await.unwrap();
        assert!(!driver.is_running(&crashy));
        assert_eq!(driver.exit_status(&crashy).unwrap().code, Some(3));
        assert_eq!(driver.wait_exit(&crashy).await.unwrap().code, Some(3));
        driver.ignore_sigterm("stubborn");
        let stubborn = driver.start(spec("stubborn", 0)).await.unwrap();
        assert!(matches!(
            driver.stop(&stubborn, Duration::ZERO).await.unwrap(),
            StopOutcome::Killed(_)
        ));
    }

    #[tokio::test]
    async fn duplicate_starts_are_refused_and_listings_show_every_instance() {
        let driver = FakeProcessDriver::new();
        let web = driver.start(spec("web", 0)).await.unwrap();
        assert!(matches!(
            driver.start(spec("web", 0)).await,
            Err(DriverError::AlreadyRunning { .. })
        ));
        assert_eq!(driver.live("web.0"), Some(web.clone()));
        driver.end(&web, killed_by(libc::SIGSEGV));
        assert_eq!(
            driver.exit_status(&web).unwrap().signal,
            Some(libc::SIGSEGV)
        );
        assert_eq!(driver.live("web.0"), None);
        let again = driver.start(spec("web", 0)).await.unwrap();
        assert!(!again.same_as(&web));
        let listing = driver.list().await;
        let running: Vec<bool> = listing.instances.iter().map(|f| f.running).collect();
        assert_eq!(running, [false, true]);
    }
}
