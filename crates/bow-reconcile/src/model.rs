//! The data the core reasons about: instance keys, assignments (the multi-host seam),
//! endpoints, releases, deploy strategies and phases, instance health.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use bow_spec::{Service, Spec};

/// Milliseconds on the executor's clock (the agent passes Unix milliseconds). The core never
/// reads a clock: every observation comes with `now`.
pub type Millis = i64;

/// One instance of a service on this host: `<service>.<index>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceKey {
    pub service: String,
    pub index: u32,
}

impl InstanceKey {
    pub fn new(service: &str, index: u32) -> InstanceKey {
        InstanceKey {
            service: service.to_string(),
            index,
        }
    }
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.service, self.index)
    }
}

/// "Run one instance of `service` at `release` with `definition` on `host`", in slot `slot`
/// (1..=replicas across all hosts). The reconciler of a host runs the assignments whose
/// `host` is its own; instance indexes are its own business (a rolling deploy runs more
/// instances than slots for a while).
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub service: String,
    pub slot: u32,
    pub release: i64,
    pub definition: Arc<Service>,
    pub host: String,
}

/// What is applied, as the assignment source sees it: the spec and each service's target
/// release.
#[derive(Debug, Clone, Copy)]
pub struct Desired<'a> {
    pub spec: &'a Spec,
    pub targets: &'a BTreeMap<String, i64>,
}

/// Where "the instances this host should run" come from. Today: [`LocalAssignments`], every
/// slot of every service on this host. Later: what a placement leader wrote to etcd.
pub trait AssignmentSource {
    fn assignments(&self, desired: Desired<'_>) -> Vec<Assignment>;
}

/// One host runs everything: each service's `replicas` slots, at its target release.
#[derive(Debug, Clone)]
pub struct LocalAssignments {
    pub host: String,
}

impl AssignmentSource for LocalAssignments {
    fn assignments(&self, desired: Desired<'_>) -> Vec<Assignment> {
        let mut out = Vec::new();
        for (name, definition) in &desired.spec.services {
            let Some(release) = desired.targets.get(name) else {
                continue;
            };
            let definition = Arc::new(definition.clone());
            for slot in 1..=definition.replicas {
                out.push(Assignment {
                    service: name.clone(),
                    slot,
                    release: *release,
                    definition: definition.clone(),
                    host: self.host.clone(),
                });
            }
        }
        out
    }
}

/// What a placement decided for every host (`bow_place::place`'s assignments), of which this
/// host runs its own: the seam a leader's assignments (etcd) come through. Each assignment
/// carries its release and definition, so a host runs what it was given, not what it
/// guesses; a service with no assignment here runs no instance here.
#[derive(Debug, Clone)]
pub struct PlacedAssignments {
    pub host: String,
    pub placed: Vec<Assignment>,
}

impl AssignmentSource for PlacedAssignments {
    fn assignments(&self, desired: Desired<'_>) -> Vec<Assignment> {
        self.placed
            .iter()
            .filter(|a| a.host == self.host && desired.spec.services.contains_key(&a.service))
            .cloned()
            .collect()
    }
}

/// A healthy, routable instance the edge and discovery may send traffic to. The address is
/// whatever the driver reported (a loopback address today, a host's address later).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub instance: String,
    pub address: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:{}", self.instance, self.address, self.port)
    }
}

/// Where a release stands (the store keeps the same four).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseStatus {
    Deploying,
    Live,
    Failed,
    Superseded,
}

impl ReleaseStatus {
    pub fn label(&self) -> &'static str {
        match self {
            ReleaseStatus::Deploying => "deploying",
            ReleaseStatus::Live => "live",
            ReleaseStatus::Failed => "failed",
            ReleaseStatus::Superseded => "superseded",
        }
    }
}

/// How a release replaces the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeployStrategy {
    /// The first release of a service: start its replicas.
    Initial,
    /// Only what the agent itself does changed (replicas, checks, timeouts): no restart.
    InPlace,
    Rolling,
    BlueGreen,
}

impl DeployStrategy {
    pub fn label(&self) -> &'static str {
        match self {
            DeployStrategy::Initial => "initial",
            DeployStrategy::InPlace => "in-place",
            DeployStrategy::Rolling => "rolling",
            DeployStrategy::BlueGreen => "blue-green",
        }
    }

    /// How `definition` replaces `live` (`None`: nothing runs yet). The class of the change
    /// is `bow_plan`'s, the one source of truth.
    pub fn of(definition: &Service, live: Option<&Service>) -> DeployStrategy {
        let Some(live) = live else {
            return DeployStrategy::Initial;
        };
        match bow_plan::classify_service_change(live, definition) {
            Some(bow_plan::ChangeClass::Replace) => match definition.deploy.strategy {
                bow_spec::Strategy::Rolling => DeployStrategy::Rolling,
                bow_spec::Strategy::BlueGreen => DeployStrategy::BlueGreen,
            },
            _ => DeployStrategy::InPlace,
        }
    }
}

/// One release of a service, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseRecord {
    pub service: String,
    pub number: i64,
    pub revision: i64,
    pub created_at: Millis,
    pub status: ReleaseStatus,
    pub strategy: DeployStrategy,
    /// `created`, or the changed fields (`command, env`).
    pub changes: String,
    /// Why it was made or how it ended (`rollback to release 2`, a failure).
    pub reason: String,
    pub definition: Service,
}

/// The steps of a deploy, in order (the API shows them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Waiting for the services it depends on to be healthy.
    Waiting,
    /// Preparing what its instances need (a python environment).
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

/// Why a deploy failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployFailure {
    pub reason: String,
    /// The instance that failed, when one did (the executor adds its last log lines).
    pub instance: Option<String>,
    /// The release that serves instead, after an automatic rollback.
    pub serving: Option<i64>,
}

/// Where one service's deploy stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceProgress {
    pub service: String,
    pub release: i64,
    pub strategy: DeployStrategy,
    pub phase: Phase,
    /// What the phase is about (`web.4`, `3 of 3 healthy`).
    pub detail: String,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    pub failure: Option<DeployFailure>,
}

/// An instance's state as `bow status` shows it. Ordered: the largest is the worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

/// A running process as its driver describes it. `handle` is opaque to the core (the
/// driver's id of this incarnation); observations about an older incarnation are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub handle: String,
    /// `pid 4242` (a container driver: `container 3f2a…`).
    pub process: String,
    pub user: String,
    pub port: u16,
    pub address: String,
}

/// An instance the driver lists as running when the agent starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: InstanceKey,
    pub process: Process,
    /// The release its handle records (`None`: from a bow without releases).
    pub release: Option<i64>,
    pub restarts: u32,
}

/// How a process ended, as its driver recorded it (`None` in observations: not recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// `exit code 1`, `killed by SIGKILL`.
    pub description: String,
    pub oom_killed: bool,
}

/// An instance's status for `bow status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    pub key: InstanceKey,
    pub release: i64,
    pub health: Health,
    pub restarts: u32,
    pub process: Option<Process>,
    pub started_at: Option<Millis>,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
    pub routable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml_fields: &str) -> Service {
        let text = format!("project: p\nservices:\n  web:\n    command: run\n{yaml_fields}");
        let spec = bow_spec::load(&text, &bow_spec::LoadOptions::default()).expect("valid");
        spec.services["web"].clone()
    }

    #[test]
    fn strategy_follows_bow_plans_change_class() {
        let base = service("    replicas: 2\n");
        assert_eq!(DeployStrategy::of(&base, None), DeployStrategy::Initial);
        let scaled = service("    replicas: 3\n");
        assert_eq!(
            DeployStrategy::of(&scaled, Some(&base)),
            DeployStrategy::InPlace
        );
        let mut changed = base.clone();
        changed.env.insert("A".into(), "1".into());
        assert_eq!(
            DeployStrategy::of(&changed, Some(&base)),
            DeployStrategy::Rolling
        );
        let blue_green =
            service("    replicas: 2\n    deploy: { strategy: blue-green }\n    env: { A: '1' }\n");
        assert_eq!(
            DeployStrategy::of(&blue_green, Some(&base)),
            DeployStrategy::BlueGreen
        );
        let mut routes = base.clone();
        routes
            .routes
            .push(bow_spec::Route::plain("a.localhost", "/"));
        assert_eq!(
            DeployStrategy::of(&routes, Some(&base)),
            DeployStrategy::InPlace
        );
        // Where instances may run moves them between hosts; on one host nothing restarts.
        let mut placed = base.clone();
        placed.placement.roles = vec!["worker".into()];
        assert_eq!(
            DeployStrategy::of(&placed, Some(&base)),
            DeployStrategy::InPlace
        );
    }

    #[test]
    fn placed_assignments_give_this_host_its_own_slots_only() {
        let text = "project: p\nservices:\n  web:\n    command: run\n    replicas: 3\n";
        let spec = bow_spec::load(text, &bow_spec::LoadOptions::default()).expect("valid");
        let targets = BTreeMap::from([("web".to_string(), 2)]);
        let definition = Arc::new(spec.services["web"].clone());
        let at = |slot: u32, host: &str, service: &str| Assignment {
            service: service.into(),
            slot,
            release: 2,
            definition: definition.clone(),
            host: host.into(),
        };
        let placed = vec![
            at(1, "a", "web"),
            at(2, "b", "web"),
            at(3, "a", "web"),
            at(1, "a", "gone"),
        ];
        let desired = Desired {
            spec: &spec,
            targets: &targets,
        };
        let mine = |host: &str| -> Vec<(String, u32)> {
            PlacedAssignments {
                host: host.into(),
                placed: placed.clone(),
            }
            .assignments(desired)
            .into_iter()
            .map(|a| (a.host, a.slot))
            .collect()
        };
        assert_eq!(mine("a"), [("a".into(), 1), ("a".into(), 3)]);
        assert_eq!(mine("b"), [("b".into(), 2)]);
        assert!(mine("c").is_empty());
    }

    #[test]
    fn local_assignments_put_every_slot_on_this_host() {
        let text = "project: p\nservices:\n  web:\n    command: run\n    replicas: 2\n  db:\n    command: db\n";
        let spec = bow_spec::load(text, &bow_spec::LoadOptions::default()).expect("valid");
        let targets = BTreeMap::from([("web".to_string(), 4), ("db".to_string(), 1)]);
        let source = LocalAssignments { host: "h1".into() };
        let got: Vec<(String, u32, i64, String)> = source
            .assignments(Desired {
                spec: &spec,
                targets: &targets,
            })
            .into_iter()
            .map(|a| (a.service, a.slot, a.release, a.host))
            .collect();
        assert_eq!(
            got,
            [
                ("db".into(), 1, 1, "h1".into()),
                ("web".into(), 1, 4, "h1".into()),
                ("web".into(), 2, 4, "h1".into()),
            ]
        );
    }
}
