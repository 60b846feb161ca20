//! A scripted world for the core: it answers each effect the way a driver, a prober and a
//! clock would (a start with `Started` 10 ms later, a health check passing after a while, a
//! timer at its time), lets a test inject its own observations, and writes everything down
//! as a transcript that is compared with a snapshot (`UPDATE_EXPECT=1` rewrites it).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use bow_reconcile::{
    Core, Effect, ExitInfo, InstanceKey, Listed, LocalAssignments, Millis, Observation, Process,
    ReleaseRecord,
};
use bow_spec::Spec;

/// How an instance of a service (and release) behaves once started.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Its health check passes this long after start (ignored without a check).
    Healthy { after: Millis },
    /// The driver cannot start it.
    StartFails(&'static str),
    /// It exits with code 1 this long after start.
    Exits { after: Millis },
    /// Its check fails `retries` times: unhealthy this long after start.
    Unhealthy { after: Millis },
    /// Never passes, never exits.
    Hangs,
}

/// A test's world: the core, a queue of observations due, and the transcript.
pub struct World {
    pub core: Core,
    pub now: Millis,
    queue: BTreeMap<(Millis, u64), Observation>,
    seq: u64,
    next_handle: u64,
    next_port: u16,
    rules: Vec<(String, Option<i64>, Behaviour)>,
    /// The live process of each instance: handle, release and port.
    pub running: BTreeMap<InstanceKey, (String, i64, u16)>,
    /// What the store holds: releases and the last revision (the executor writes them).
    pub releases: Vec<ReleaseRecord>,
    pub applied: Option<(i64, Spec)>,
    /// The address endpoints get (a host's address, to show it is not assumed).
    pub address: String,
    transcript: String,
    /// While set: every step must leave at least this many endpoints of the service (a
    /// deploy that keeps serving).
    pub floor: Option<(String, usize)>,
    /// Live processes the driver's listing misses (issue 25: a run dir entry not found).
    pub hidden: std::collections::BTreeSet<InstanceKey>,
}

pub const START_TAKES: Millis = 10;
pub const STOP_TAKES: Millis = 20;
pub const PREPARE_TAKES: Millis = 50;
pub const DEFAULT_HEALTHY_AFTER: Millis = 200;

/// A spec from `bow.yaml` text (development environment).
pub fn spec(yaml: &str) -> Spec {
    bow_spec::load(yaml, &bow_spec::LoadOptions::default())
        .unwrap_or_else(|d| panic!("test spec is invalid: {d:?}"))
}

impl World {
    pub fn new() -> World {
        World {
            core: Core::new(
                "local",
                Box::new(LocalAssignments {
                    host: "local".to_string(),
                }),
            ),
            now: 0,
            queue: BTreeMap::new(),
            seq: 0,
            next_handle: 0,
            next_port: 5000,
            rules: Vec::new(),
            running: BTreeMap::new(),
            releases: Vec::new(),
            applied: None,
            address: "127.0.0.1".to_string(),
            transcript: String::new(),
            floor: None,
            hidden: Default::default(),
        }
    }

    /// Instances of `service` (at `release`, or any) behave so from now on.
    pub fn behave(&mut self, service: &str, release: Option<i64>, behaviour: Behaviour) {
        self.rules.push((service.to_string(), release, behaviour));
    }

    fn behaviour(&self, service: &str, release: i64) -> Behaviour {
        self.rules
            .iter()
            .rev()
            .find(|(s, r, _)| s == service && r.is_none_or(|r| r == release))
            .map_or(
                Behaviour::Healthy {
                    after: DEFAULT_HEALTHY_AFTER,
                },
                |(_, _, b)| b.clone(),
            )
    }

    pub fn note(&mut self, text: &str) {
        let _ = writeln!(self.transcript, "-- {text}");
    }

    /// Delivers `observation` now and answers its effects.
    pub fn deliver(&mut self, observation: Observation) {
        let _ = writeln!(self.transcript, "{:>6} {observation}", self.now);
        match self.core.step(self.now, observation) {
            Ok(effects) => {
                for effect in effects {
                    let _ = writeln!(self.transcript, "         {effect}");
                    self.answer(effect);
                }
            }
            Err(refused) => {
                let _ = writeln!(self.transcript, "         refused: {refused}");
            }
        }
        if let Some((service, least)) = &self.floor {
            let serving = self.core.endpoints().get(service).map_or(0, Vec::len);
            assert!(
                serving >= *least,
                "{service} has {serving} endpoints, fewer than {least}:\n{}",
                self.transcript
            );
        }
    }

    /// The handle of the live process of `service.index`.
    pub fn handle(&self, service: &str, index: u32) -> String {
        self.running[&InstanceKey::new(service, index)].0.clone()
    }

    /// Releases of the live processes of `service`, by instance id.
    pub fn releases_running(&self, service: &str) -> Vec<(String, i64)> {
        self.running
            .iter()
            .filter(|(k, _)| k.service == service)
            .map(|(k, (_, release, _))| (k.to_string(), *release))
            .collect()
    }

    /// The recorded status of a release.
    pub fn release_status(
        &self,
        service: &str,
        number: i64,
    ) -> Option<bow_reconcile::ReleaseStatus> {
        self.releases
            .iter()
            .find(|r| r.service == service && r.number == number)
            .map(|r| r.status)
    }

    fn at(&mut self, at: Millis, observation: Observation) {
        self.seq += 1;
        self.queue.insert((at, self.seq), observation);
    }

    fn answer(&mut self, effect: Effect) {
        let now = self.now;
        match effect {
            Effect::Start { key, .. } if self.running.contains_key(&key) => {
                // The driver refuses: this id's process still runs.
                let listed = self.listed(&key);
                self.at(now + START_TAKES, Observation::Found { listed });
            }
            Effect::Start {
                key,
                release,
                definition,
                port,
                ..
            } => match self.behaviour(&key.service, release) {
                Behaviour::StartFails(reason) => self.at(
                    now + START_TAKES,
                    Observation::StartFailed {
                        key,
                        reason: reason.to_string(),
                    },
                ),
                behaviour => {
                    self.next_handle += 1;
                    let handle = format!("h{}", self.next_handle);
                    let port = port.unwrap_or_else(|| {
                        self.next_port += 1;
                        self.next_port
                    });
                    let process = Process {
                        handle: handle.clone(),
                        process: format!("pid {}", 1000 + self.next_handle),
                        user: key.service.clone(),
                        port,
                        address: self.address.clone(),
                    };
                    let started = now + START_TAKES;
                    self.running
                        .insert(key.clone(), (handle.clone(), release, port));
                    self.at(
                        started,
                        Observation::Started {
                            key: key.clone(),
                            process,
                        },
                    );
                    self.schedule(key, handle, started, behaviour, definition.health.is_some());
                }
            },
            Effect::Adopt {
                key,
                release,
                definition,
                handle,
            } => {
                let behaviour = self.behaviour(&key.service, release);
                self.schedule(key, handle, now, behaviour, definition.health.is_some());
            }
            Effect::Stop { key, handle, .. } => {
                self.forget(&handle);
                self.running.remove(&key);
                self.at(
                    now + STOP_TAKES,
                    Observation::StopFinished {
                        key,
                        outcome: "exit code 0".to_string(),
                    },
                );
            }
            // The process stays; what it runs is the new release's (in place).
            Effect::Reconfigure { key, release, .. } => {
                if let Some(live) = self.running.get_mut(&key) {
                    live.1 = release;
                }
            }
            Effect::ArmTimer { at, timer } => self.at(at, Observation::TimerFired(timer)),
            Effect::RecordRelease(record) => self.releases.push(*record),
            Effect::SetReleaseStatus {
                service,
                number,
                status,
                reason,
            } => {
                if let Some(row) = self
                    .releases
                    .iter_mut()
                    .find(|r| r.service == service && r.number == number)
                {
                    row.status = status;
                    if let Some(reason) = reason {
                        row.reason = reason;
                    }
                }
            }
            Effect::RecordRevision { revision, spec } => self.applied = Some((revision, *spec)),
            Effect::Prepare { service, .. } => self.at(
                now + PREPARE_TAKES,
                Observation::Prepared {
                    service,
                    detail: "/state/venvs/abc".to_string(),
                },
            ),
            _ => {}
        }
    }

    /// What a started (or adopted) process will do.
    fn schedule(
        &mut self,
        key: InstanceKey,
        handle: String,
        started: Millis,
        behaviour: Behaviour,
        checked: bool,
    ) {
        match behaviour {
            Behaviour::Healthy { after } if checked => self.at(
                started + after,
                Observation::Healthy {
                    key,
                    handle,
                    message: format!("http check passed after {after} ms"),
                },
            ),
            Behaviour::Exits { after } => self.at(
                started + after,
                Observation::Exited {
                    key,
                    handle,
                    exit: Some(ExitInfo {
                        description: "exit code 1".to_string(),
                        oom_killed: false,
                    }),
                },
            ),
            Behaviour::Unhealthy { after } => self.at(
                started + after,
                Observation::Unhealthy {
                    key,
                    handle,
                    reason: "http check failed 3 times in a row: connection refused".to_string(),
                },
            ),
            _ => {}
        }
    }

    /// Drops what was due about a process that is gone.
    fn forget(&mut self, handle: &str) {
        self.queue.retain(|_, o| match o {
            Observation::Exited { handle: h, .. }
            | Observation::Healthy { handle: h, .. }
            | Observation::Unhealthy { handle: h, .. } => h != handle,
            _ => true,
        });
    }

    /// Delivers everything due up to `until`, in time order.
    pub fn run_until(&mut self, until: Millis) {
        while let Some((&(at, seq), _)) = self.queue.iter().next() {
            if at > until {
                break;
            }
            let observation = self.queue.remove(&(at, seq)).expect("queued");
            self.now = self.now.max(at);
            if let Observation::Exited { key, handle, .. } = &observation
                && self.running.get(key).is_some_and(|(h, _, _)| h == handle)
            {
                self.running.remove(key);
            }
            self.deliver(observation);
        }
        self.now = self.now.max(until);
    }

    /// Runs `for_ms` more.
    pub fn run_for(&mut self, for_ms: Millis) {
        self.run_until(self.now + for_ms);
    }

    pub fn apply(&mut self, spec: Spec) {
        self.deliver(Observation::Apply {
            spec: Box::new(spec),
        });
    }

    /// The instance's process dies now (SIGKILL from outside).
    pub fn kill(&mut self, service: &str, index: u32) {
        let key = InstanceKey::new(service, index);
        let (handle, _, _) = self
            .running
            .remove(&key)
            .expect("a running instance to kill");
        self.forget(&handle);
        self.deliver(Observation::Exited {
            key,
            handle,
            exit: Some(ExitInfo {
                description: "killed by SIGKILL".to_string(),
                oom_killed: false,
            }),
        });
    }

    /// What a driver would list if the agent died now: every live process with its release
    /// (but the hidden ones).
    pub fn listing(&self) -> Vec<Listed> {
        self.running
            .keys()
            .filter(|key| !self.hidden.contains(*key))
            .map(|key| self.listed(key))
            .collect()
    }

    fn listed(&self, key: &InstanceKey) -> Listed {
        let (handle, release, port) = &self.running[key];
        Listed {
            key: key.clone(),
            process: Process {
                handle: handle.clone(),
                process: format!("pid {}", 1000 + handle[1..].parse::<u64>().unwrap()),
                user: key.service.clone(),
                port: *port,
                address: self.address.clone(),
            },
            release: Some(*release),
            restarts: 0,
        }
    }

    /// The agent dies and a new one starts: a fresh core restored from what the store holds
    /// and the processes still running; what the old core had under way is lost.
    pub fn restart_agent(&mut self) {
        let running = self.listing();
        let applied = self.applied.clone();
        let releases = self.releases.clone();
        self.queue.clear();
        self.core = Core::new(
            "local",
            Box::new(LocalAssignments {
                host: "local".to_string(),
            }),
        );
        let _ = writeln!(self.transcript, "-- the agent restarts");
        // Adopted processes go on behaving as before.
        self.deliver(Observation::Restored {
            applied: applied.map(|(revision, spec)| (revision, Box::new(spec))),
            releases,
            running,
        });
    }

    /// Compares the transcript with `tests/snapshots/<name>.expected`.
    pub fn snapshot(&self, name: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/snapshots")
            .join(format!("{name}.expected"));
        if std::env::var_os("UPDATE_EXPECT").is_some() {
            std::fs::write(&path, &self.transcript).expect("write snapshot");
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "{}: missing snapshot; run with UPDATE_EXPECT=1 to create it\n{}",
                path.display(),
                self.transcript
            )
        });
        if expected != self.transcript {
            panic!(
                "{}: snapshot differs (UPDATE_EXPECT=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{}",
                path.display(),
                self.transcript
            );
        }
    }

    pub fn transcript(&self) -> &str {
        &self.transcript
    }

    /// Ids of instances that run (a process exists), sorted.
    pub fn processes(&self) -> Vec<String> {
        self.running.keys().map(ToString::to_string).collect()
    }
}
