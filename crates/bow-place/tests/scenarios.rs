//! Scenarios of the placement function, in the style of Nomad's scheduler tests and
//! `bow-reconcile`'s: scripted snapshots of the cluster in (hosts, spec, what runs where),
//! a transcript of the placement out, compared with `tests/snapshots/<name>.expected`
//! (`UPDATE_EXPECT=1` rewrites them).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use bow_place::{Capacity, Host, MoveReason, Placement, Scheduling, Unplaceable, place};
use bow_reconcile::{
    Assignment, AssignmentSource, Core, Desired, Effect, Observation, PlacedAssignments,
};
use bow_spec::Spec;

/// Three hosts with roles (main+worker, worker, data) and a stack that uses each.
const STACK: &str = r#"
project: shop
hosts:
  etcd: [https://10.0.0.1:2379]
  members:
    a: { address: 10.0.0.11, roles: [main, worker] }
    b: { address: 10.0.0.12, roles: [worker] }
    c: { address: 10.0.0.13, roles: [data] }
services:
  db:
    command: db-server
    placement: { roles: [data], singleton: true }
  web:
    command: web-server
    replicas: 3
    placement: { roles: [worker], spread: true }
  admin:
    command: admin-server
    placement: { roles: [main] }
  cron:
    command: cron-runner
"#;

fn spec(text: &str) -> Spec {
    bow_spec::load(text, &bow_spec::LoadOptions::default())
        .unwrap_or_else(|d| panic!("test spec is invalid: {d:?}"))
}

fn targets(spec: &Spec) -> BTreeMap<String, i64> {
    spec.services.keys().map(|s| (s.clone(), 1)).collect()
}

fn run(spec: &Spec, hosts: &[Host], current: &[Assignment]) -> Placement {
    let targets = targets(spec);
    place(
        Desired {
            spec,
            targets: &targets,
        },
        hosts,
        current,
    )
}

/// A transcript: one line per placed slot, unplaced slot and move.
struct Transcript(String);

impl Transcript {
    fn new() -> Transcript {
        Transcript(String::new())
    }

    fn step(&mut self, title: &str, placement: &Placement) {
        let _ = writeln!(self.0, "-- {title}");
        let mut by_host: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for a in &placement.assignments {
            by_host
                .entry(&a.host)
                .or_default()
                .push(format!("{}.{}", a.service, a.slot));
        }
        for (host, slots) in by_host {
            let _ = writeln!(self.0, "   {host}: {}", slots.join(" "));
        }
        for m in &placement.moves {
            let to = m.to.as_deref().unwrap_or("(nowhere)");
            let _ = writeln!(
                self.0,
                "   move {}.{} {} → {to} ({})",
                m.service, m.slot, m.from, m.why
            );
        }
        for u in &placement.unplaced {
            let _ = writeln!(self.0, "   unplaced {}.{}: {}", u.service, u.slot, u.reason);
        }
    }

    fn check(&self, name: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/snapshots")
            .join(format!("{name}.expected"));
        if std::env::var_os("UPDATE_EXPECT").is_some() {
            std::fs::create_dir_all(path.parent().expect("a directory")).expect("snapshots dir");
            std::fs::write(&path, &self.0).expect("write snapshot");
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "{}: missing snapshot; run with UPDATE_EXPECT=1 to create it\n{}",
                path.display(),
                self.0
            )
        });
        assert!(
            expected == self.0,
            "{}: snapshot differs (UPDATE_EXPECT=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{}",
            path.display(),
            self.0
        );
    }
}

fn hosts_of(placement: &Placement, service: &str) -> Vec<String> {
    placement
        .assignments
        .iter()
        .filter(|a| a.service == service)
        .map(|a| a.host.clone())
        .collect()
}

fn slots(placement: &Placement) -> Vec<(String, u32, String)> {
    placement
        .assignments
        .iter()
        .map(|a| (a.service.clone(), a.slot, a.host.clone()))
        .collect()
}

fn with(hosts: &[Host], name: &str, change: impl Fn(&mut Host)) -> Vec<Host> {
    let mut hosts = hosts.to_vec();
    change(hosts.iter_mut().find(|h| h.name == name).expect("host"));
    hosts
}

#[test]
fn three_hosts_by_role_then_a_host_lost_then_back() {
    let spec = spec(STACK);
    let hosts = Host::declared(&spec);
    let mut transcript = Transcript::new();

    let first = run(&spec, &hosts, &[]);
    transcript.step("3 hosts × roles, nothing runs yet", &first);
    assert_eq!(hosts_of(&first, "db"), ["c"]);
    assert_eq!(hosts_of(&first, "admin"), ["a"]);
    let web = hosts_of(&first, "web");
    assert!(web.iter().all(|h| h == "a" || h == "b"), "{web:?}");
    assert!(
        web.contains(&"a".into()) && web.contains(&"b".into()),
        "spread: {web:?}"
    );
    assert!(first.moves.is_empty() && first.unplaced.is_empty());

    let lost = with(&hosts, "b", |h| h.alive = false);
    let second = run(&spec, &lost, &first.assignments);
    transcript.step("b lost", &second);
    assert!(second.assignments.iter().all(|a| a.host != "b"));
    assert!(second.moves.iter().all(|m| m.from == "b"
        && m.why == MoveReason::HostDown
        && m.to.as_ref().is_some_and(|to| to != "b")));
    // web may run on workers only: a is the one left.
    assert!(hosts_of(&second, "web").iter().all(|h| h == "a"));
    assert_eq!(
        second.moves.len(),
        first.assignments.iter().filter(|a| a.host == "b").count()
    );
    // Everything that ran elsewhere stayed where it was.
    for a in first.assignments.iter().filter(|a| a.host != "b") {
        assert!(slots(&second).contains(&(a.service.clone(), a.slot, a.host.clone())));
    }

    let third = run(&spec, &hosts, &second.assignments);
    transcript.step("b back: nothing moves back", &third);
    assert!(third.moves.is_empty(), "{:?}", third.moves);
    assert_eq!(slots(&third), slots(&second));
    transcript.check("host_lost_and_back");
}

#[test]
fn drain_moves_everything_away_and_cordon_keeps_it() {
    let spec = spec(STACK);
    let hosts = Host::declared(&spec);
    let first = run(&spec, &hosts, &[]);
    let mut transcript = Transcript::new();
    transcript.step("placed", &first);

    let draining = with(&hosts, "a", |h| h.scheduling = Scheduling::Draining);
    let drained = run(&spec, &draining, &first.assignments);
    transcript.step("a draining", &drained);
    assert!(drained.assignments.iter().all(|a| a.host != "a"));
    assert!(
        drained
            .moves
            .iter()
            .all(|m| m.why == MoveReason::HostDraining)
    );
    // admin may run on main hosts only, and a is the one.
    assert_eq!(drained.unplaced.len(), 1);
    assert_eq!(drained.unplaced[0].service, "admin");
    assert!(matches!(
        drained.unplaced[0].reason,
        Unplaceable::NoEligibleHost { .. }
    ));

    let cordoned = with(&hosts, "a", |h| h.scheduling = Scheduling::Cordoned);
    let kept = run(&spec, &cordoned, &first.assignments);
    transcript.step("a cordoned: keeps what it runs", &kept);
    assert_eq!(slots(&kept), slots(&first));
    assert!(kept.moves.is_empty());
    transcript.check("drain");
}

#[test]
fn capacity_exhausted_names_a_reason_per_slot() {
    let spec = spec(
        r#"
project: shop
hosts:
  etcd: [https://10.0.0.1:2379]
  members:
    a: { address: 10.0.0.11, roles: [worker], capacity: { cpu: 2, memory: 4G } }
    b: { address: 10.0.0.12, roles: [worker], capacity: { cpu: 2, memory: 2G } }
services:
  big:
    command: big
    replicas: 3
    resources: { memory: 2G, cpu: 1 }
    placement: { roles: [worker] }
  small:
    command: small
    replicas: 2
    resources: { memory: 512M, cpu: 0.5 }
"#,
    );
    let hosts = Host::declared(&spec);
    let placement = run(&spec, &hosts, &[]);
    let mut transcript = Transcript::new();
    transcript.step("big (2G each) and small (512M each) on 4G + 2G", &placement);
    transcript.check("capacity");
    assert_eq!(hosts_of(&placement, "big").len(), 3);
    assert!(hosts_of(&placement, "small").is_empty());
    assert_eq!(placement.unplaced.len(), 2);
    for unplaced in &placement.unplaced {
        let text = unplaced.reason.to_string();
        assert!(
            text.starts_with("cannot place: needs 0.5 CPU and 512M memory"),
            "{text}"
        );
    }
    // Capacity is never exceeded.
    for host in &hosts {
        let used: u64 = placement
            .assignments
            .iter()
            .filter(|a| a.host == host.name)
            .map(|a| a.definition.resources.memory.map_or(0, |m| m.bytes()))
            .sum();
        assert!(used <= host.capacity.memory.unwrap(), "{}", host.name);
    }
}

#[test]
fn spread_with_fewer_hosts_than_replicas_evens_out() {
    let spec = spec(
        r#"
project: shop
hosts:
  etcd: [https://10.0.0.1:2379]
  members:
    a: { address: 10.0.0.11 }
    b: { address: 10.0.0.12 }
    c: { address: 10.0.0.13 }
services:
  web:
    command: web-server
    replicas: 5
    placement: { spread: true }
"#,
    );
    let hosts = Host::declared(&spec);
    let placement = run(&spec, &hosts, &[]);
    let mut transcript = Transcript::new();
    transcript.step("5 replicas, 3 hosts", &placement);
    transcript.check("spread");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for host in hosts_of(&placement, "web") {
        *counts.entry(host).or_default() += 1;
    }
    let mut spread: Vec<usize> = counts.values().copied().collect();
    spread.sort();
    assert_eq!(spread, [1, 2, 2]);
    assert!(placement.unplaced.is_empty());
}

#[test]
fn a_singleton_is_placed_once_and_moves_only_when_its_host_is_down() {
    let text = STACK.replace(
        "    c: { address: 10.0.0.13, roles: [data] }",
        "    c: { address: 10.0.0.13, roles: [data] }\n    d: { address: 10.0.0.14, roles: [data] }",
    );
    let spec = spec(&text);
    let hosts = Host::declared(&spec);
    let first = run(&spec, &hosts, &[]);
    assert_eq!(hosts_of(&first, "db"), ["c"]);
    let down = with(&hosts, "c", |h| h.alive = false);
    let second = run(&spec, &down, &first.assignments);
    assert_eq!(hosts_of(&second, "db"), ["d"]);
    let back = run(&spec, &hosts, &second.assignments);
    assert_eq!(hosts_of(&back, "db"), ["d"], "it stays where it runs");
    // Even with two claims on its one slot, one instance comes out.
    let mut claims = second.assignments.clone();
    claims.extend(
        first
            .assignments
            .iter()
            .filter(|a| a.service == "db")
            .cloned(),
    );
    let one = run(&spec, &hosts, &claims);
    assert_eq!(hosts_of(&one, "db"), ["c"], "the first claim by host name");
}

#[test]
fn roles_changed_or_unknown_and_no_host_up() {
    let spec = spec(STACK);
    let hosts = Host::declared(&spec);
    let first = run(&spec, &hosts, &[]);
    let mut transcript = Transcript::new();
    transcript.step("placed", &first);
    let relabelled = with(&hosts, "a", |h| h.roles = vec!["main".into()]);
    let second = run(&spec, &relabelled, &first.assignments);
    transcript.step("a is no longer a worker", &second);
    assert!(
        second
            .moves
            .iter()
            .all(|m| m.why == MoveReason::RolesChanged)
    );
    assert!(hosts_of(&second, "web").iter().all(|h| h == "b"));

    let all_down: Vec<Host> = hosts
        .iter()
        .cloned()
        .map(|mut h| {
            h.alive = false;
            h
        })
        .collect();
    let none = run(&spec, &all_down, &first.assignments);
    transcript.step("every host down", &none);
    assert!(none.assignments.is_empty());
    assert_eq!(none.unplaced.len(), 6);

    let no_data: Vec<Host> = hosts.iter().filter(|h| h.name != "c").cloned().collect();
    let gone = run(&spec, &no_data, &first.assignments);
    transcript.step("c is no member any more", &gone);
    assert_eq!(
        gone.unplaced[0].reason,
        Unplaceable::NoHostWithRole {
            roles: vec!["data".into()]
        }
    );
    assert_eq!(gone.moves[0].why, MoveReason::HostGone);
    transcript.check("roles");
}

#[test]
fn output_does_not_depend_on_input_order() {
    let spec = spec(STACK);
    let mut hosts = Host::declared(&spec);
    let first = run(&spec, &hosts, &[]);
    hosts.reverse();
    let mut current = first.assignments.clone();
    current.reverse();
    let again = run(&spec, &hosts, &current);
    assert_eq!(slots(&again), slots(&first));
    assert_eq!(slots(&run(&spec, &hosts, &[])), slots(&first));
}

#[test]
fn each_host_runs_its_share_through_placed_assignments() {
    let spec = spec(STACK);
    let hosts = Host::declared(&spec);
    let placement = run(&spec, &hosts, &[]);
    let targets = targets(&spec);
    let desired = Desired {
        spec: &spec,
        targets: &targets,
    };
    let mut union = Vec::new();
    for host in &hosts {
        let source = PlacedAssignments {
            host: host.name.clone(),
            placed: placement.assignments.clone(),
        };
        let mine = source.assignments(desired);
        assert!(mine.iter().all(|a| a.host == host.name));
        union.extend(mine.into_iter().map(|a| (a.service, a.slot, a.host)));
        // The core of that host starts exactly its share.
        let mut core = Core::new(&host.name, Box::new(source));
        let effects = core
            .step(
                0,
                Observation::Apply {
                    spec: Box::new(spec.clone()),
                },
            )
            .expect("apply");
        let started: Vec<String> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Start { key, .. } => Some(key.service.clone()),
                _ => None,
            })
            .collect();
        // Dependencies aside, every service with a slot here starts one instance at once
        // (a rolling start), and services with none here start nothing.
        for service in &started {
            assert!(
                placement
                    .assignments
                    .iter()
                    .any(|a| &a.service == service && a.host == host.name),
                "{} started {service} without an assignment",
                host.name
            );
        }
        assert!(!started.is_empty(), "{} starts its share", host.name);
    }
    union.sort();
    let mut all = slots(&placement);
    all.sort();
    assert_eq!(union, all);
}

#[test]
fn capacity_units_round_up_to_a_thousandth_of_a_core() {
    let capacity = Capacity::of(Some(0.0005), None);
    assert_eq!(capacity.millicpu, Some(1));
}
