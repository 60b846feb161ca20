//! The agent's reconcile core: pure decisions over data.
//!
//! `Core::step(now, observation) -> Vec<Effect>` compares what should run on this host (its
//! [`Assignment`]s, from an [`AssignmentSource`]) with what runs (instances, their health,
//! the deploys under way) every time something is observed, and says what to do. No I/O, no
//! clock, no async runtime: time is the `now` of each observation, waiting is a [`Timer`]
//! the executor arms. The data flow:
//!
//! ```text
//! bow.yaml → bow-spec → Spec → bow-plan (change classes) ─┐
//!                                                         ▼
//!            AssignmentSource (this host's slots) → Core::step → Vec<Effect> → executor
//!                  ▲                                    ▲          (driver, edge, store, events)
//!                  └──── later: etcd assignments        └── observations (exits, health, timers)
//! ```
//!
//! # The executor contract
//!
//! One executor owns a `Core` and calls `step` for one observation at a time (never two at
//! once), with the time it was made. It applies the returned effects in order and delivers
//! what they lead to as later observations. Effects never block the core: a start, a stop,
//! a drain or a build is carried out asynchronously and answered by an observation.
//!
//! What the executor delivers, and when:
//! - `Restored`, first and once: the last applied revision and spec from the store, every
//!   recorded release, and every instance the driver lists as running (with the release its
//!   handle records). The core adopts each into its service or stops it, with an event.
//! - `Apply`, `Rollback`, `Restart`: requests. A `Refused` is the answer to give the caller;
//!   after `Apply`, `Core::revision()` is the revision to report, `Core::deploys(revision)`
//!   the progress to show. `Restart` is answered by an `Effect::Restarted` later.
//! - For each `Effect::Start`: `Started` (with the driver's opaque handle, the port, the
//!   address endpoints use, and how to name the process in events) or `StartFailed`; or
//!   `Found` when the driver refuses because a process still runs at that instance id (the
//!   core stops that orphan with an event and starts again; issue 25). `Found` is also how a
//!   later look at the driver reports an instance the core may not know.
//! - For each running instance (started or adopted) until it is stopped: `Exited` when its
//!   process ends by itself; health results from probing with the definition of its last
//!   `Start`/`Adopt`/`Reconfigure`: `Healthy` on each passing after not passing (the first
//!   one included), `Failing` for a failure that does not count yet, `Unhealthy` after
//!   `retries` failures in a row, after which probing stops. Instances without a health
//!   check are not probed: the core counts them healthy after a timer.
//! - For each `Effect::Stop`: `StopFinished` once the process is gone, with how it ended.
//! - For each `Effect::ArmTimer`: `TimerFired` at (or after) `at`. Timers need no
//!   cancelling; stale ones are ignored.
//! - For each `Effect::Prepare`: `Prepared` or `PrepareFailed`.
//!
//! How each effect is applied:
//! - `Start`: build the instance from the definition (port: the given one when free, else a
//!   fresh one), start it through the driver chosen by the workload kind, record it in the
//!   store. `Adopt`: watch an instance found running. `Reconfigure`: keep the process,
//!   probe with the new definition.
//! - `Stop`: when `drain` is set, wait for the edge's in-flight requests to the instance
//!   (it already left the endpoints; emit `drain-timeout` if they outlive it), emit
//!   `stopping` with the process detail, stop it (`stop_timeout` before a kill), forget it
//!   in the store.
//! - `SetEndpoints`: install the service's endpoints in the edge and discovery at once.
//! - `RecordRelease`, `SetReleaseStatus`, `RecordRevision`: write them to the store (the
//!   core numbers releases and revisions after the ones it was given).
//! - `Event`: record it and show it. `Progress`: keep it for the API.
//!
//! Where the next pieces plug in: a container driver is chosen by the executor for
//! `Start`/`Stop`/`Adopt` of an `image:` workload and reports the same observations; the
//! core does not change. Several hosts: [`PlacedAssignments`] (this host's share of what the
//! pure placement function `bow_place::place` decided, later read from what the placement
//! leader wrote to etcd) replaces [`LocalAssignments`], and the endpoints this core publishes
//! (with the driver's addresses, never assumed to be 127.0.0.1) are written where every
//! host's edge reads them.

//! # Where it differs from the agent of today
//!
//! The core keeps the agent's decisions (the scenarios in `tests/` show them), except where
//! the agent's were wrong or depended on timing:
//! - Instances found at start are adopted at once (probed and routed while their service still
//!   waits for its dependencies), not when their service's deploy begins.
//! - A rolling deploy counts new instances that already run (an interrupted deploy, adopted)
//!   as replacements only once they are healthy; the agent counted them at once and could stop
//!   the last serving old instance before any new one was healthy.
//! - A deploy fails at the first restart of a new instance that this core saw; restarts an
//!   adopted instance had before do not count.
//! - An instance that failed its checks shows `unhealthy` while it is being stopped, so a
//!   deploy waiting on it fails at once.
//! - A deploy that starts after another apply interrupted a blue-green one makes the held set
//!   routable again (the agent left it out of the edge).
//! - An instance id stays taken until its stop finished, also when another apply interrupted
//!   the deploy that stopped it (the agent's aborted starter left the id taken for good).
//! - A failed deploy with no older release to return to is recorded failed (the agent left
//!   it `deploying`).
//! - `bow restart` of an instance waiting out its backoff is answered by its next healthy
//!   start (the agent waited out the whole timeout).

pub mod backoff;
mod core;
mod deploy;
mod effect;
mod model;
mod observe;
mod releases;
mod requests;
mod rollout;
mod slot;

pub use crate::backoff::{
    Backoff, CRASH_LOOP_AFTER, FIRST_DELAY, LAST_INSTANCE_FLOOR, MAX_DELAY, NO_CHECK_HEALTHY_AFTER,
};
pub use crate::core::{Core, Refused};
pub use crate::effect::{Effect, Event, EventKind, StopReason, Timer};
pub use crate::model::{
    Assignment, AssignmentSource, DeployFailure, DeployStrategy, Desired, Endpoint, ExitInfo,
    Health, InstanceKey, InstanceView, Listed, LocalAssignments, Millis, Phase, PlacedAssignments,
    Process, ReleaseRecord, ReleaseStatus, ServiceProgress,
};
pub use crate::observe::Observation;
