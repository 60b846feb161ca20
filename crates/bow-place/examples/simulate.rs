//! The scheduler simulation (bench/scheduler.sh): places `INSTANCES` instances of generated
//! services on `HOSTS` simulated hosts with roles, capacity and spread, then loses 5% of the
//! hosts and places again (the failover path: everything else stays), and prints
//! placements per second for both against Nomad's C1M (~3,750/s).
//!   cargo run --release -p bow-place --example simulate -- [HOSTS] [INSTANCES]

use std::collections::BTreeMap;
use std::time::Instant;

use bow_place::{Capacity, Host, place};
use bow_reconcile::Desired;

/// A small deterministic generator (xorshift64*): the same stack every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let hosts_wanted: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5_000);
    let instances_wanted: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    // Hosts: 10% main+worker, 60% worker, 30% data; 16 cores and 64G each.
    let hosts: Vec<Host> = (0..hosts_wanted)
        .map(|i| {
            let roles: &[&str] = match i % 10 {
                0 => &["main", "worker"],
                1..=6 => &["worker"],
                _ => &["data"],
            };
            Host::new(
                &format!("host-{i:05}"),
                roles,
                Capacity {
                    millicpu: Some(16_000),
                    memory: Some(64 << 30),
                },
            )
        })
        .collect();

    // Services of 1 to 9 replicas: a quarter each for worker, data, main-or-worker and any
    // host; half of them spread; 0.1-0.5 cores and 128M-512M each.
    let template = bow_spec::load(
        "project: sim\nservices:\n  t:\n    command: run\n",
        &bow_spec::LoadOptions::default(),
    )
    .expect("template");
    let base = template.services["t"].clone();
    let mut spec = template.clone();
    spec.services.clear();
    let mut total = 0u32;
    let mut index = 0;
    while total < instances_wanted {
        let mut service = base.clone();
        service.replicas = (1 + rng.below(9) as u32).min(instances_wanted - total);
        service.resources.cpu = Some(0.1 * (1 + rng.below(5)) as f64);
        service.resources.memory = Some(bow_spec::units::Size((128 << 20) * (1 + rng.below(4))));
        service.placement.roles = match index % 4 {
            0 => vec!["worker".to_string()],
            1 => vec!["data".to_string()],
            2 => vec!["main".to_string(), "worker".to_string()],
            _ => Vec::new(),
        };
        service.placement.spread = index % 2 == 0;
        total += service.replicas;
        spec.services.insert(format!("svc-{index:06}"), service);
        index += 1;
    }
    let targets: BTreeMap<String, i64> = spec.services.keys().map(|s| (s.clone(), 1)).collect();
    let desired = Desired {
        spec: &spec,
        targets: &targets,
    };

    let started = Instant::now();
    let first = place(desired, &hosts, &[]);
    let took = started.elapsed();
    let placed = first.assignments.len();
    println!(
        "cold: placed {placed} of {total} instances ({} services) on {} hosts in {:.0} ms: {:.0} placements/s; {} unplaced",
        spec.services.len(),
        hosts.len(),
        took.as_secs_f64() * 1000.0,
        placed as f64 / took.as_secs_f64(),
        first.unplaced.len()
    );

    // Lose every 20th host: its instances move, the rest stay.
    let mut lost = hosts.clone();
    for host in lost.iter_mut().step_by(20) {
        host.alive = false;
    }
    let started = Instant::now();
    let second = place(desired, &lost, &first.assignments);
    let took = started.elapsed();
    println!(
        "failover: {} hosts lost, {} instances moved, {} kept, in {:.0} ms: {:.0} placements/s over all slots, {:.0} moves/s; {} unplaced",
        hosts.len().div_ceil(20),
        second.moves.len(),
        second.assignments.len() - second.moves.iter().filter(|m| m.to.is_some()).count(),
        took.as_secs_f64() * 1000.0,
        second.assignments.len() as f64 / took.as_secs_f64(),
        second.moves.len() as f64 / took.as_secs_f64(),
        second.unplaced.len()
    );
    // Check what came out: no host over its capacity, no instance on a host without its role.
    let mut used: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for a in &first.assignments {
        let host = &hosts[a.host[5..].parse::<usize>().expect("host index")];
        let roles = &a.definition.placement.roles;
        assert!(roles.is_empty() || host.roles.iter().any(|r| roles.contains(r)));
        let entry = used.entry(&host.name).or_default();
        entry.0 += Capacity::of(a.definition.resources.cpu, None)
            .millicpu
            .unwrap_or(0);
        entry.1 += a.definition.resources.memory.map_or(0, |m| m.bytes());
    }
    assert!(
        used.values()
            .all(|(cpu, memory)| *cpu <= 16_000 && *memory <= 64 << 30)
    );
    println!("checked: roles honoured, no host over its capacity");
    println!("goal ≥ 10,000 placements/s; Nomad C1M ≈ 3,750/s, kube-scheduler 100-300 pods/s");
}
