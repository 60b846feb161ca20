//! The placement function: kept slots first (stickiness), then every other slot by roles,
//! capacity, spread and load (the rules are the crate doc's).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use bow_reconcile::{Assignment, Desired};
use bow_spec::Service;

use crate::reason::{MoveReason, Unplaceable};
use crate::{Capacity, Host, Move, Placement, Scheduling, Unplaced};

/// Places every slot of every service that has a target release in `desired`.
pub fn place(desired: Desired<'_>, hosts: &[Host], current: &[Assignment]) -> Placement {
    let mut cluster = Cluster::new(hosts);
    let mut wanted: Vec<Wanted<'_>> = desired
        .spec
        .services
        .iter()
        .filter_map(|(name, service)| {
            let release = *desired.targets.get(name)?;
            Some(Wanted::new(name, service, release, &cluster))
        })
        .collect();
    // Where each (service, slot) runs now; of two claims, the first host by name.
    let mut now: HashMap<(&str, u32), &str> = HashMap::with_capacity(current.len());
    for assignment in current {
        now.entry((assignment.service.as_str(), assignment.slot))
            .and_modify(|host| *host = (*host).min(assignment.host.as_str()))
            .or_insert(assignment.host.as_str());
    }
    let mut out = Placement::default();
    let mut pending_moves: Vec<(usize, u32, String, MoveReason)> = Vec::new();

    // 1. Stickiness: every slot stays where it runs unless a rule says otherwise.
    for (index, service) in wanted.iter_mut().enumerate() {
        for slot in 1..=service.slots.len() as u32 {
            let Some(from) = now.get(&(service.name, slot)).copied() else {
                continue;
            };
            let Some(&host) = cluster.by_name.get(from) else {
                pending_moves.push((index, slot, from.to_string(), MoveReason::HostGone));
                continue;
            };
            let why = if !cluster.hosts[host].alive {
                Some(MoveReason::HostDown)
            } else if cluster.hosts[host].scheduling == Scheduling::Draining {
                Some(MoveReason::HostDraining)
            } else if !cluster.matches(host, &service.filter) {
                Some(MoveReason::RolesChanged)
            } else if !cluster.fits(host, &service.request) {
                Some(MoveReason::NoRoom)
            } else {
                None
            };
            match why {
                Some(why) => pending_moves.push((index, slot, from.to_string(), why)),
                None => {
                    cluster.take(host, &service.request);
                    service.slots[slot as usize - 1] = Some(host);
                }
            }
        }
    }

    // 2. The other slots, the largest requests first.
    let mut order: Vec<usize> = (0..wanted.len())
        .filter(|&i| wanted[i].slots.iter().any(Option::is_none))
        .collect();
    order.sort_by_key(|&i| {
        let w = &wanted[i];
        (
            Reverse(w.request.memory),
            Reverse(w.request.millicpu),
            w.name,
        )
    });
    let mut candidates: HashMap<Filter, Vec<usize>> = HashMap::new();
    for index in order {
        let service = &mut wanted[index];
        let eligible = candidates
            .entry(service.filter.clone())
            .or_insert_with(|| cluster.eligible(&service.filter));
        let mut spread = Spread::default();
        if service.spread {
            for host in service.slots.iter().flatten() {
                spread.add(*host);
            }
        }
        let mut heap: BinaryHeap<Reverse<Score>> = eligible
            .iter()
            .filter(|&&host| cluster.fits(host, &service.request))
            .map(|&host| Reverse(cluster.score(host, service, &spread)))
            .collect();
        let mut reason = None;
        for slot in 0..service.slots.len() {
            if service.slots[slot].is_some() {
                continue;
            }
            let Some(Reverse(best)) = heap.pop() else {
                let why = reason
                    .get_or_insert_with(|| cluster.why_not(service, eligible))
                    .clone();
                out.unplaced.push(Unplaced {
                    service: service.name.to_string(),
                    slot: slot as u32 + 1,
                    reason: why,
                });
                continue;
            };
            let host = best.host;
            cluster.take(host, &service.request);
            service.slots[slot] = Some(host);
            if service.spread {
                spread.add(host);
            }
            if cluster.fits(host, &service.request) {
                heap.push(Reverse(cluster.score(host, service, &spread)));
            }
        }
    }

    for service in &wanted {
        for slot in service.slots.len() as u32 + 1..=service.replicas {
            out.unplaced.push(Unplaced {
                service: service.name.to_string(),
                slot,
                reason: Unplaceable::Singleton,
            });
        }
    }
    for (index, slot, from, why) in pending_moves {
        let to = wanted[index].slots[slot as usize - 1].map(|h| cluster.hosts[h].name.clone());
        if to.as_deref() != Some(from.as_str()) {
            out.moves.push(Move {
                service: wanted[index].name.to_string(),
                slot,
                from,
                to,
                why,
            });
        }
    }
    for service in &wanted {
        for (slot, host) in service.slots.iter().enumerate() {
            if let Some(host) = host {
                out.assignments.push(Assignment {
                    service: service.name.to_string(),
                    slot: slot as u32 + 1,
                    release: service.release,
                    definition: service.definition.clone(),
                    host: cluster.hosts[*host].name.clone(),
                });
            }
        }
    }
    out.unplaced
        .sort_by(|a, b| (&a.service, a.slot).cmp(&(&b.service, b.slot)));
    out.moves
        .sort_by(|a, b| (&a.service, a.slot).cmp(&(&b.service, b.slot)));
    out
}

/// How many instances of the service being placed each host has (few hosts: a short list
/// beats hashing on the hot path).
#[derive(Default)]
struct Spread(Vec<(usize, u32)>);

impl Spread {
    fn add(&mut self, host: usize) {
        match self.0.iter_mut().find(|(h, _)| *h == host) {
            Some((_, count)) => *count += 1,
            None => self.0.push((host, 1)),
        }
    }

    fn get(&self, host: usize) -> u32 {
        self.0
            .iter()
            .find(|(h, _)| *h == host)
            .map_or(0, |(_, count)| *count)
    }
}

/// Which hosts a service may run on: any, the hosts with one of its roles (a bit set over
/// the roles hosts have), or none (it names only roles no host has).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Filter {
    Any,
    Roles(Vec<u64>),
    Nothing,
}

/// A host's rank for one more instance of a service; the smallest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Score {
    /// Instances of this service already there (spread services; else 0).
    spread: u32,
    /// Its largest used share of a declared capacity afterwards, in millionths.
    load: u64,
    /// Instances of any service there.
    count: u32,
    /// Its position by name.
    host: usize,
}

/// A request in integer units (0: nothing asked).
#[derive(Debug, Clone, Copy, Default)]
struct Request {
    millicpu: u64,
    memory: u64,
}

/// One service to place.
struct Wanted<'s> {
    name: &'s str,
    definition: Arc<Service>,
    release: i64,
    replicas: u32,
    /// The host of each slot that can be placed (a singleton has one), once known.
    slots: Vec<Option<usize>>,
    request: Request,
    filter: Filter,
    roles: &'s [String],
    spread: bool,
}

impl<'s> Wanted<'s> {
    fn new(name: &'s str, service: &'s Service, release: i64, cluster: &Cluster<'_>) -> Self {
        let placement = &service.placement;
        let placeable = if placement.singleton {
            service.replicas.min(1)
        } else {
            service.replicas
        };
        let request = Capacity::of(service.resources.cpu, service.resources.memory);
        Wanted {
            name,
            definition: Arc::new(service.clone()),
            release,
            replicas: service.replicas,
            slots: vec![None; placeable as usize],
            request: Request {
                millicpu: request.millicpu.unwrap_or(0),
                memory: request.memory.unwrap_or(0),
            },
            filter: cluster.filter(&placement.roles),
            roles: &placement.roles,
            spread: placement.spread,
        }
    }
}

/// The hosts, sorted by name, with what is placed on them so far.
struct Cluster<'h> {
    hosts: Vec<&'h Host>,
    by_name: HashMap<&'h str, usize>,
    role_bits: HashMap<&'h str, usize>,
    /// `words` u64s of role bits per host.
    words: usize,
    roles: Vec<u64>,
    used: Vec<Request>,
    count: Vec<u32>,
}

impl<'h> Cluster<'h> {
    fn new(hosts: &'h [Host]) -> Cluster<'h> {
        let mut sorted: Vec<&Host> = hosts.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        sorted.dedup_by(|a, b| a.name == b.name);
        let mut role_bits = HashMap::new();
        for host in &sorted {
            for role in &host.roles {
                let next = role_bits.len();
                role_bits.entry(role.as_str()).or_insert(next);
            }
        }
        let words = role_bits.len().div_ceil(64).max(1);
        let mut roles = vec![0u64; sorted.len() * words];
        for (index, host) in sorted.iter().enumerate() {
            for role in &host.roles {
                let bit = role_bits[role.as_str()];
                roles[index * words + bit / 64] |= 1 << (bit % 64);
            }
        }
        Cluster {
            by_name: sorted
                .iter()
                .enumerate()
                .map(|(i, h)| (h.name.as_str(), i))
                .collect(),
            used: vec![Request::default(); sorted.len()],
            count: vec![0; sorted.len()],
            hosts: sorted,
            role_bits,
            words,
            roles,
        }
    }

    fn filter(&self, roles: &[String]) -> Filter {
        if roles.is_empty() {
            return Filter::Any;
        }
        let mut bits = vec![0u64; self.words];
        for role in roles {
            if let Some(&bit) = self.role_bits.get(role.as_str()) {
                bits[bit / 64] |= 1 << (bit % 64);
            }
        }
        if bits.iter().all(|w| *w == 0) {
            Filter::Nothing
        } else {
            Filter::Roles(bits)
        }
    }

    fn matches(&self, host: usize, filter: &Filter) -> bool {
        match filter {
            Filter::Any => true,
            Filter::Nothing => false,
            Filter::Roles(bits) => self.roles[host * self.words..(host + 1) * self.words]
                .iter()
                .zip(bits)
                .any(|(a, b)| a & b != 0),
        }
    }

    /// The hosts that take new instances of a service with `filter`.
    fn eligible(&self, filter: &Filter) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&h| {
                let host = self.hosts[h];
                host.alive && host.scheduling == Scheduling::Eligible && self.matches(h, filter)
            })
            .collect()
    }

    fn fits(&self, host: usize, request: &Request) -> bool {
        let capacity = &self.hosts[host].capacity;
        let used = &self.used[host];
        capacity
            .millicpu
            .is_none_or(|c| used.millicpu + request.millicpu <= c)
            && capacity
                .memory
                .is_none_or(|c| used.memory + request.memory <= c)
    }

    fn take(&mut self, host: usize, request: &Request) {
        self.used[host].millicpu += request.millicpu;
        self.used[host].memory += request.memory;
        self.count[host] += 1;
    }

    fn score(&self, host: usize, service: &Wanted<'_>, spread: &Spread) -> Score {
        let capacity = &self.hosts[host].capacity;
        let used = &self.used[host];
        // IEEE division: the same inputs give the same share on every machine.
        let share = |used: u64, asked: u64, capacity: Option<u64>| {
            capacity.map_or(0, |c| {
                ((used + asked) as f64 / c.max(1) as f64 * 1_000_000.0) as u64
            })
        };
        Score {
            spread: spread.get(host),
            load: share(used.millicpu, service.request.millicpu, capacity.millicpu).max(share(
                used.memory,
                service.request.memory,
                capacity.memory,
            )),
            count: self.count[host],
            host,
        }
    }

    /// Why no eligible host takes one more instance of `service`.
    fn why_not(&self, service: &Wanted<'_>, eligible: &[usize]) -> Unplaceable {
        let roles = service.roles.to_vec();
        if service.filter == Filter::Nothing {
            return Unplaceable::NoHostWithRole { roles };
        }
        if eligible.is_empty() {
            let hosts: Vec<(String, &'static str)> = (0..self.hosts.len())
                .filter(|&h| self.matches(h, &service.filter))
                .map(|h| {
                    let host = self.hosts[h];
                    let state = match (host.alive, host.scheduling) {
                        (false, _) => "down",
                        (true, Scheduling::Draining) => "draining",
                        _ => "cordoned",
                    };
                    (host.name.clone(), state)
                })
                .collect();
            if hosts.is_empty() && !roles.is_empty() {
                return Unplaceable::NoHostWithRole { roles };
            }
            return Unplaceable::NoEligibleHost { roles, hosts };
        }
        let free = |h: usize| {
            let capacity = &self.hosts[h].capacity;
            Capacity {
                millicpu: capacity
                    .millicpu
                    .map(|c| c.saturating_sub(self.used[h].millicpu)),
                memory: capacity
                    .memory
                    .map(|c| c.saturating_sub(self.used[h].memory)),
            }
        };
        let most_free = eligible
            .iter()
            .map(|&h| (h, free(h)))
            .max_by_key(|(h, free)| {
                (
                    free.memory.unwrap_or(u64::MAX),
                    free.millicpu.unwrap_or(u64::MAX),
                    Reverse(*h),
                )
            })
            .map(|(h, free)| (self.hosts[h].name.clone(), free));
        let request = service.request;
        Unplaceable::NoRoom {
            roles,
            needs: Capacity {
                millicpu: (request.millicpu > 0).then_some(request.millicpu),
                memory: (request.memory > 0).then_some(request.memory),
            },
            eligible: eligible.len(),
            most_free,
        }
    }
}
