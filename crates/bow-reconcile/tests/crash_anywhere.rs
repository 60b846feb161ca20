//! The agent killed at random moments of a deploy (seeded, so a failure replays): after each
//! restart the next agent finishes or rolls back the deploy from what runs, leaving exactly
//! `replicas` instances of one release, all serving, none untracked; the next deploy works.

mod world;

use world::{World, spec};

fn web(version: u32, replicas: u32, strategy: &str) -> bow_spec::Spec {
    spec(&format!(
        r#"
project: shop
services:
  web:
    command: web-server v{version}
    replicas: {replicas}
    routes: [shop.localhost]
    health: {{ http: /healthz, interval: 1s }}
    deploy: {{ strategy: {strategy}, max_surge: 1, timeout: 5s }}
"#
    ))
}

/// A small deterministic generator (xorshift).
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs the world until everything due has happened (timers included).
fn settle(world: &mut World) {
    world.run_for(40_000);
}

fn check(world: &World, seed: u64, replicas: usize, what: &str) {
    let running = world.releases_running("web");
    let target = world.core.target("web").expect("web has a target");
    assert!(
        running.len() == replicas && running.iter().all(|(_, r)| *r == target),
        "seed {seed}, {what}: expected {replicas} instances of release {target}, running {running:?}\n{}",
        world.transcript()
    );
    assert_eq!(
        world.core.endpoints()["web"].len(),
        replicas,
        "seed {seed}, {what}: every instance serves"
    );
    assert!(
        world.core.retiring().is_empty(),
        "seed {seed}, {what}: nothing left stopping"
    );
}

#[test]
fn killed_at_random_moments_of_deploys_and_scaling() {
    for seed in 1..=120u64 {
        let mut random = Seeded(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let strategy = ["rolling", "blue-green"][random.below(2) as usize];
        let replicas = 1 + random.below(3) as u32;
        let mut world = World::new();
        world.apply(web(1, replicas, strategy));
        settle(&mut world);
        // A replacing deploy, or a scale change.
        let (next, next_replicas) = if random.below(3) == 0 {
            (1, 1 + random.below(4) as u32)
        } else {
            (2, replicas)
        };
        world.apply(web(next, next_replicas, strategy));
        let crash_at = world.now + random.below(900) as i64;
        world.run_until(crash_at);
        world.restart_agent();
        settle(&mut world);
        check(&world, seed, next_replicas as usize, "after the restart");
        world.apply(web(3, next_replicas, strategy));
        settle(&mut world);
        check(
            &world,
            seed,
            next_replicas as usize,
            "after the next deploy",
        );
    }
}
