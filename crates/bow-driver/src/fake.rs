//! A [`ProcessDriver`] that runs nothing: it records calls and plays scripted outcomes, for
//! unit tests of the agent (start errors, crashes, services that ignore SIGTERM).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::ProcessDriver;
use crate::error::{DriverError, Result};
use crate::handle::{InstanceExit, InstanceHandle, ProcessState, StopOutcome};
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
    Verify {
        instance_id: String,
    },
    ExitStatus {
        instance_id: String,
    },
    Kill {
        instance_id: String,
    },
}

/// The recording, scriptable fake driver. Pids start at 1000 and are never reused.
#[derive(Debug, Default)]
pub struct FakeProcessDriver {
    state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
struct FakeState {
    calls: Vec<DriverCall>,
    start_failures: VecDeque<DriverError>,
    exit_on_start: BTreeMap<String, InstanceExit>,
    ignores_sigterm: BTreeSet<String>,
    /// By pid: the handle and, once it ended, how.
    instances: BTreeMap<i32, (InstanceHandle, Option<InstanceExit>)>,
    next_pid: i32,
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

impl FakeProcessDriver {
    pub fn new() -> FakeProcessDriver {
        FakeProcessDriver::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    pub fn end(&self, handle: &InstanceHandle, exit: InstanceExit) {
        if let Some((_, ended)) = self.state().instances.get_mut(&handle.pid) {
            ended.get_or_insert(exit);
        }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<DriverCall> {
        self.state().calls.clone()
    }

    /// The instances that are running now, in start order.
    pub fn running(&self) -> Vec<InstanceHandle> {
        let state = self.state();
        state
            .instances
            .values()
            .filter(|(_, exit)| exit.is_none())
            .map(|(handle, _)| handle.clone())
            .collect()
    }

    fn record(&self, call: DriverCall) {
        self.state().calls.push(call);
    }
}

impl ProcessDriver for FakeProcessDriver {
    fn start(&self, spec: &InstanceSpec) -> Result<InstanceHandle> {
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
        if let Some(running) = state.instances.values().find(|(handle, exit)| {
            exit.is_none()
                && handle.project == spec.project
                && handle.instance_id == spec.instance_id
        }) {
            return Err(DriverError::AlreadyRunning {
                instance: spec.instance_id.clone(),
                pid: running.0.pid,
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
        };
        let exit = state.exit_on_start.get(&spec.service).cloned();
        state.instances.insert(pid, (handle.clone(), exit));
        Ok(handle)
    }

    fn stop(&self, handle: &InstanceHandle, timeout: Duration) -> Result<StopOutcome> {
        self.record(DriverCall::Stop {
            instance_id: handle.instance_id.clone(),
            timeout,
        });
        let mut state = self.state();
        let ignores_sigterm = state.ignores_sigterm.contains(&handle.service);
        let Some((known, ended)) = state.instances.get_mut(&handle.pid) else {
            return Ok(StopOutcome::AlreadyGone(None));
        };
        if known.start_time != handle.start_time {
            return Ok(StopOutcome::AlreadyGone(None));
        }
        if let Some(exit) = ended {
            return Ok(StopOutcome::AlreadyGone(Some(exit.clone())));
        }
        if ignores_sigterm {
            let exit = killed_by(libc::SIGKILL);
            *ended = Some(exit.clone());
            Ok(StopOutcome::Killed(Some(exit)))
        } else {
            let exit = exited_with(0);
            *ended = Some(exit.clone());
            Ok(StopOutcome::Terminated(Some(exit)))
        }
    }

    fn verify(&self, handle: &InstanceHandle) -> Result<ProcessState> {
        self.record(DriverCall::Verify {
            instance_id: handle.instance_id.clone(),
        });
        Ok(match self.state().instances.get(&handle.pid) {
            None => ProcessState::Gone,
            Some((known, _)) if known.start_time != handle.start_time => ProcessState::PidReused,
            Some((_, Some(_))) => ProcessState::Gone,
            Some((_, None)) => ProcessState::Running,
        })
    }

    fn exit_status(&self, handle: &InstanceHandle) -> Result<Option<InstanceExit>> {
        self.record(DriverCall::ExitStatus {
            instance_id: handle.instance_id.clone(),
        });
        Ok(self
            .state()
            .instances
            .get(&handle.pid)
            .filter(|(known, _)| known.start_time == handle.start_time)
            .and_then(|(_, exit)| exit.clone()))
    }

    fn kill(&self, handle: &InstanceHandle) -> Result<()> {
        self.record(DriverCall::Kill {
            instance_id: handle.instance_id.clone(),
        });
        self.end(handle, killed_by(libc::SIGKILL));
        Ok(())
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

    #[test]
    fn records_calls_and_tracks_instances() {
        let driver = FakeProcessDriver::new();
        let web = driver.start(&spec("web", 0)).unwrap();
        assert_eq!(driver.verify(&web).unwrap(), ProcessState::Running);
        assert_eq!(driver.running(), vec![web.clone()]);
        let outcome = driver.stop(&web, Duration::from_secs(3)).unwrap();
        assert_eq!(outcome.exit().unwrap().code, Some(0));
        assert_eq!(driver.verify(&web).unwrap(), ProcessState::Gone);
        assert!(matches!(
            driver.stop(&web, Duration::ZERO).unwrap(),
            StopOutcome::AlreadyGone(Some(_))
        ));
        let calls = driver.calls();
        assert!(
            matches!(&calls[0], DriverCall::Start { instance_id, .. } if instance_id == "web.0")
        );
        assert_eq!(
            calls[2],
            DriverCall::Stop {
                instance_id: "web.0".into(),
                timeout: Duration::from_secs(3)
            }
        );
    }

    #[test]
    fn scripted_failures_and_exits_are_played_back() {
        let driver = FakeProcessDriver::new();
        driver.fail_next_start(DriverError::CommandNotFound {
            command: "x".into(),
            path: "/bin".into(),
        });
        assert!(matches!(
            driver.start(&spec("web", 0)),
            Err(DriverError::CommandNotFound { .. })
        ));
        driver.exit_immediately("crashy", exited_with(3));
        let crashy = driver.start(&spec("crashy", 0)).unwrap();
        assert_eq!(driver.verify(&crashy).unwrap(), ProcessState::Gone);
        assert_eq!(driver.exit_status(&crashy).unwrap().unwrap().code, Some(3));
        driver.ignore_sigterm("stubborn");
        let stubborn = driver.start(&spec("stubborn", 0)).unwrap();
        assert!(matches!(
            driver.stop(&stubborn, Duration::ZERO).unwrap(),
            StopOutcome::Killed(_)
        ));
    }

    #[test]
    fn duplicate_starts_and_reused_pids_are_caught() {
        let driver = FakeProcessDriver::new();
        let web = driver.start(&spec("web", 0)).unwrap();
        assert!(matches!(
            driver.start(&spec("web", 0)),
            Err(DriverError::AlreadyRunning { .. })
        ));
        let stale = InstanceHandle {
            start_time: web.start_time + 1,
            ..web.clone()
        };
        assert_eq!(driver.verify(&stale).unwrap(), ProcessState::PidReused);
        driver.end(&web, killed_by(libc::SIGSEGV));
        assert_eq!(
            driver.exit_status(&web).unwrap().unwrap().signal,
            Some(libc::SIGSEGV)
        );
        assert!(driver.start(&spec("web", 0)).is_ok());
    }
}
