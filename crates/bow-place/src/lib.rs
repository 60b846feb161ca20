//! Where instances run when an environment has several hosts: a pure placement function.
//!
//! `place(desired, hosts, current) -> Placement`: the applied spec with each service's
//! target release, the hosts as membership sees them (roles, capacity, alive, draining or
//! cordoned) and the assignments in force go in; every service slot's host comes out, as
//! `bow_reconcile::Assignment`s (what each host's reconcile core runs, through
//! `bow_reconcile::PlacedAssignments`), with a reason for each slot that fits nowhere and
//! the moves made. No I/O, no clock, no async runtime; the same input gives the same output
//! whatever the order of `hosts` and `current`.
//!
//! The rules, in the order they decide:
//! 1. **Singleton**: a `placement.singleton` service has at most one slot placed.
//! 2. **Stickiness**: a slot stays on the host it runs on while that host is alive, not
//!    draining, has one of the service's roles and still has room (a cordoned host keeps
//!    its instances). Nothing moves back to a host that returns, nothing moves to even out
//!    load: a move costs a start, a health check and a drain.
//! 3. **Roles**: a slot to place goes only to a host with one of `placement.roles` (any host
//!    when it names none) that is alive and schedulable (neither cordoned nor draining).
//! 4. **Capacity**: the `resources` of a host's instances never add up past its declared
//!    `capacity` (a dimension it does not declare is not limited).
//! 5. **Spread**: a `placement.spread` service's slot goes to an eligible host with the
//!    fewest of its instances first (5 replicas on 3 hosts: 2, 2, 1).
//! 6. **Load**: then to the host that is least loaded afterwards (its largest used share of
//!    a declared capacity), then with the fewest instances, then by name. Balancing rather
//!    than best-fit packing: on a few hosts, a host lost should take as little as possible
//!    with it.
//!
//! Slots to place are taken service by service, the largest requests first (packing the
//! big ones while room is whole), slots in order. Kept slots are counted before any new one.

mod place;
mod reason;

use bow_reconcile::Assignment;
use bow_spec::Spec;

pub use crate::place::place;
pub use crate::reason::{MoveReason, Unplaceable};

/// A host as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub name: String,
    /// Its roles (labels): `main`, `worker`, `data`.
    pub roles: Vec<String>,
    pub capacity: Capacity,
    /// Its agent holds its membership lease. A host that is not alive runs nothing.
    pub alive: bool,
    pub scheduling: Scheduling,
}

/// Whether a host takes new instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduling {
    /// Takes new instances.
    #[default]
    Eligible,
    /// Keeps what it runs, takes nothing new (`bow host drain` ended, until `uncordon`).
    Cordoned,
    /// Its instances move away, it takes nothing new (`bow host drain`).
    Draining,
}

/// What a host offers, or an instance asks: CPU in thousandths of a core, memory in bytes.
/// `None` in a host's capacity: not limited; in a request: nothing asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    pub millicpu: Option<u64>,
    pub memory: Option<u64>,
}

impl Capacity {
    /// From `cpu` cores and a memory size as bow.yaml writes them.
    pub fn of(cpu: Option<f64>, memory: Option<bow_spec::units::Size>) -> Capacity {
        Capacity {
            // Round up: a request of 0.0005 cores still asks for something.
            millicpu: cpu.map(|cores| (cores * 1000.0).ceil().max(0.0) as u64),
            memory: memory.map(|size| size.bytes()),
        }
    }
}

impl Host {
    /// A live, eligible host.
    pub fn new(name: &str, roles: &[&str], capacity: Capacity) -> Host {
        Host {
            name: name.to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            capacity,
            alive: true,
            scheduling: Scheduling::Eligible,
        }
    }

    /// The hosts `hosts.members` declares, each alive and eligible (membership says
    /// otherwise later); empty without `hosts:`.
    pub fn declared(spec: &Spec) -> Vec<Host> {
        let Some(hosts) = &spec.hosts else {
            return Vec::new();
        };
        hosts
            .members
            .iter()
            .map(|(name, member)| Host {
                name: name.clone(),
                roles: member.roles.clone(),
                capacity: Capacity::of(member.capacity.cpu, member.capacity.memory),
                alive: true,
                scheduling: Scheduling::Eligible,
            })
            .collect()
    }
}

/// What `place` decided.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Every placed slot, by service and slot.
    pub assignments: Vec<Assignment>,
    /// Slots that fit nowhere, each with why.
    pub unplaced: Vec<Unplaced>,
    /// Slots that left the host they ran on (to another, or to none), with why.
    pub moves: Vec<Move>,
}

/// A slot placement could not put anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    pub service: String,
    pub slot: u32,
    pub reason: Unplaceable,
}

/// A slot that ran on `from` and runs on `to` now (`None`: nowhere, see `unplaced`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub service: String,
    pub slot: u32,
    pub from: String,
    pub to: Option<String>,
    pub why: MoveReason,
}
