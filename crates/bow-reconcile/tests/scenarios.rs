//! Scenarios of the reconcile core, in the style of Nomad's scheduler tests: scripted
//! observations in, a transcript of effects out, compared with a snapshot
//! (`tests/snapshots/<name>.expected`; `UPDATE_EXPECT=1` rewrites them).

mod world;

use bow_reconcile::{Health, InstanceKey, Observation, Phase, ReleaseStatus};
use world::{Behaviour, World, spec};

const DB_AND_WEB: &str = r#"
project: shop
services:
  db:
    command: db-server
    health: { tcp: true, start_period: 5s }
  web:
    command: web-server --port ${PORT}
    replicas: 2
    port: 8000
    depends_on: [db]
    health: { http: /healthz }
"#;

/// One web service: `replicas` instances of `command`, deployed with `strategy`.
fn web(command: &str, replicas: u32, strategy: &str) -> bow_spec::Spec {
    spec(&format!(
        r#"
project: shop
services:
  web:
    command: {command}
    replicas: {replicas}
    routes: [shop.localhost]
    health: {{ http: /healthz, interval: 1s }}
    deploy: {{ strategy: {strategy}, max_surge: 1, timeout: 5s }}
"#
    ))
}

fn health(world: &World, service: &str) -> Vec<Health> {
    world
        .core
        .instances(service)
        .iter()
        .map(|i| i.health)
        .collect()
}

#[test]
fn cold_start_waits_for_dependencies() {
    let mut world = World::new();
    world.behave("db", None, Behaviour::Healthy { after: 500 });
    world.apply(spec(DB_AND_WEB));
    world.run_until(2_000);
    world.snapshot("cold_start");
    let endpoints = world.core.endpoints();
    assert_eq!(endpoints["web"].len(), 2);
    assert_eq!(endpoints["db"].len(), 1);
    let (deploys, done) = world.core.deploys(1).expect("deploys of revision 1");
    assert!(done);
    assert!(deploys.iter().all(|d| d.phase == Phase::Done));
}

#[test]
fn a_dependency_that_never_gets_healthy_holds_its_dependants() {
    let mut world = World::new();
    world.behave("db", None, Behaviour::Hangs);
    world.apply(spec(DB_AND_WEB));
    world.run_until(3_000);
    assert!(world.processes() == ["db.1"], "{:?}", world.processes());
    let (deploys, _) = world.core.deploys(1).unwrap();
    let web = deploys.iter().find(|d| d.service == "web").unwrap();
    assert_eq!((web.phase, web.detail.as_str()), (Phase::Waiting, "db"));
}

#[test]
fn crash_backoff_and_crash_loop() {
    let mut world = World::new();
    world.behave("web", None, Behaviour::Exits { after: 300 });
    world.apply(web("web-server", 1, "rolling"));
    world.run_until(3_000);
    assert_eq!(health(&world, "web"), [Health::CrashLooping]);
    // It gets better: healthy, then killed: a run that served restarts at once (its backoff
    // starts afresh, however briefly it served) — the agent's one restart policy.
    world.behave("web", None, Behaviour::Healthy { after: 100 });
    world.run_until(20_000);
    world.note("healthy, then killed");
    world.kill("web", 1);
    world.run_for(500);
    world.note("healthy for 400 ms, then killed again: at once again");
    world.kill("web", 1);
    world.run_for(500);
    world.snapshot("crash_backoff");
    assert_eq!(health(&world, "web"), [Health::Healthy]);
}

#[test]
fn a_start_that_fails_backs_off_from_100ms() {
    let mut world = World::new();
    world.behave(
        "web",
        None,
        Behaviour::StartFails("user web-server does not exist"),
    );
    world.apply(web("web-server", 1, "rolling"));
    world.run_until(1_000);
    world.snapshot("start_failed");
    assert_eq!(health(&world, "web"), [Health::Failed]);
}

#[test]
fn an_unhealthy_instance_leaves_the_edge_and_restarts() {
    let mut world = World::new();
    world.apply(web("web-server", 2, "rolling"));
    world.run_until(1_000);
    world.note("web.2 fails its checks");
    let handle = world.handle("web", 2);
    world.deliver(Observation::Failing {
        key: InstanceKey::new("web", 2),
        handle: handle.clone(),
        reason: "connection refused".into(),
    });
    world.deliver(Observation::Unhealthy {
        key: InstanceKey::new("web", 2),
        handle,
        reason: "http check failed 3 times in a row: connection refused".into(),
    });
    assert_eq!(world.core.endpoints()["web"].len(), 1);
    world.run_until(2_000);
    world.snapshot("health_failure");
    assert_eq!(world.core.endpoints()["web"].len(), 2);
    assert_eq!(world.core.instances("web")[1].restarts, 1);
}

#[test]
fn rolling_deploy_keeps_serving() {
    let mut world = World::new();
    world.apply(web("web-server v1", 3, "rolling"));
    world.run_until(1_000);
    world.floor = Some(("web".into(), 3));
    world.note("deploy v2");
    world.apply(web("web-server v2", 3, "rolling"));
    world.run_until(5_000);
    world.snapshot("rolling");
    let releases: Vec<i64> = world.releases_running("web").iter().map(|r| r.1).collect();
    assert_eq!(releases, [2, 2, 2]);
    assert_eq!(
        world.release_status("web", 1),
        Some(ReleaseStatus::Superseded)
    );
    assert_eq!(world.release_status("web", 2), Some(ReleaseStatus::Live));
}

#[test]
fn blue_green_switches_at_once() {
    let mut world = World::new();
    world.apply(web("web-server v1", 2, "blue-green"));
    world.run_until(1_000);
    world.floor = Some(("web".into(), 2));
    world.note("deploy v2");
    world.apply(web("web-server v2", 2, "blue-green"));
    world.run_until(5_000);
    world.snapshot("blue_green");
    assert_eq!(
        world.releases_running("web"),
        [("web.3".into(), 2), ("web.4".into(), 2)]
    );
}

#[test]
fn a_failed_rolling_deploy_rolls_back() {
    let mut world = World::new();
    world.apply(web("web-server v1", 2, "rolling"));
    world.run_until(1_000);
    world.floor = Some(("web".into(), 2));
    world.note("deploy v2, whose instances exit before they are healthy");
    world.behave("web", Some(2), Behaviour::Exits { after: 300 });
    world.apply(web("web-server v2", 2, "rolling"));
    world.run_until(5_000);
    world.snapshot("rollback");
    assert_eq!(
        world.releases_running("web"),
        [("web.1".into(), 1), ("web.2".into(), 1)]
    );
    assert_eq!(world.release_status("web", 2), Some(ReleaseStatus::Failed));
    // The applied spec is the old definition again (a restarted agent does not retry).
    let (revision, applied) = world.applied.clone().unwrap();
    assert_eq!(revision, 3);
    assert_eq!(applied, web("web-server v1", 2, "rolling"));
    let (deploys, done) = world.core.deploys(2).unwrap();
    assert!(done);
    assert_eq!(deploys[0].failure.as_ref().unwrap().serving, Some(1));
}

#[test]
fn a_blue_green_set_that_never_gets_healthy_never_serves() {
    let mut world = World::new();
    world.apply(web("web-server v1", 2, "blue-green"));
    world.run_until(1_000);
    world.floor = Some(("web".into(), 1));
    world.note("deploy v2: one new instance never gets healthy");
    world.behave("web", Some(2), Behaviour::Hangs);
    world.apply(web("web-server v2", 2, "blue-green"));
    world.run_until(8_000);
    world.snapshot("rollback_blue_green");
    assert_eq!(
        world.releases_running("web"),
        [("web.1".into(), 1), ("web.2".into(), 1)]
    );
    assert_eq!(world.core.endpoints()["web"].len(), 2);
}

#[test]
fn a_rollback_restores_the_old_release_before_new_instances_leave() {
    let mut world = World::new();
    world.apply(web("web-server v1", 2, "rolling"));
    world.run_until(1_000);
    world.floor = Some(("web".into(), 2));
    world.note("deploy v2: its first instance serves, the second exits");
    world.apply(web("web-server v2", 2, "rolling"));
    world.run_until(1_215);
    world.behave("web", Some(2), Behaviour::Exits { after: 300 });
    world.run_until(5_000);
    world.snapshot("rollback_after_serving");
    assert_eq!(
        world.releases_running("web"),
        [("web.1".into(), 1), ("web.2".into(), 1)]
    );
    assert_eq!(world.release_status("web", 2), Some(ReleaseStatus::Failed));
}

#[test]
fn scale_up_then_down_newest_first() {
    let mut world = World::new();
    world.apply(web("web-server", 2, "rolling"));
    world.run_until(1_000);
    world.note("scale to 4");
    world.apply(web("web-server", 4, "rolling"));
    world.run_until(2_000);
    world.note("scale to 1");
    world.apply(web("web-server", 1, "rolling"));
    world.run_until(3_000);
    world.snapshot("scale");
    assert_eq!(world.processes(), ["web.1"]);
}

#[test]
fn an_in_place_change_restarts_nothing() {
    let mut world = World::new();
    world.apply(web("web-server", 2, "rolling"));
    world.run_until(1_000);
    let before = world.running.clone();
    let mut changed = web("web-server", 2, "rolling");
    let check = changed
        .services
        .get_mut("web")
        .unwrap()
        .health
        .as_mut()
        .unwrap();
    check.interval = bow_spec::units::Duration::from_secs(5);
    world.note("health interval 1s → 5s");
    world.apply(changed);
    world.run_until(2_000);
    world.snapshot("in_place");
    let handles = |r: &std::collections::BTreeMap<InstanceKey, (String, i64, u16)>| {
        r.values().map(|v| v.0.clone()).collect::<Vec<_>>()
    };
    assert_eq!(handles(&world.running), handles(&before));
    assert_eq!(world.release_status("web", 2), Some(ReleaseStatus::Live));
}

#[test]
fn a_changed_secret_is_a_rolling_deploy() {
    let yaml = r#"
project: shop
services:
  web:
    command: web-server
    replicas: 2
    secrets: [api_key]
    health: { http: /healthz }
"#;
    let with_digest = |digest: &str| {
        let mut spec = spec(yaml);
        spec.services
            .get_mut("web")
            .unwrap()
            .secret_digests
            .insert("api_key".into(), digest.into());
        spec
    };
    let mut world = World::new();
    world.apply(with_digest("d1"));
    world.run_until(1_000);
    world.floor = Some(("web".into(), 2));
    world.note("api_key's value changed");
    world.apply(with_digest("d2"));
    world.run_until(3_000);
    world.snapshot("secret_change");
    assert_eq!(
        world
            .releases_running("web")
            .iter()
            .filter(|r| r.1 == 2)
            .count(),
        2
    );
}

#[test]
fn a_second_apply_mid_deploy_takes_over() {
    let mut world = World::new();
    world.apply(web("web-server v1", 3, "rolling"));
    world.run_until(1_000);
    world.floor = Some(("web".into(), 2));
    world.behave("web", None, Behaviour::Healthy { after: 800 });
    world.note("deploy v2");
    world.apply(web("web-server v2", 3, "rolling"));
    world.run_until(2_000);
    world.note("deploy v3 while v2 is under way");
    world.apply(web("web-server v3", 3, "rolling"));
    world.run_until(10_000);
    world.snapshot("two_applies");
    let releases: Vec<i64> = world.releases_running("web").iter().map(|r| r.1).collect();
    assert_eq!(releases, [3, 3, 3]);
    assert_eq!(
        world.release_status("web", 2),
        Some(ReleaseStatus::Superseded)
    );
    assert_eq!(world.release_status("web", 3), Some(ReleaseStatus::Live));
}

#[test]
fn an_agent_restarted_mid_deploy_adopts_every_instance() {
    // Issue 25: killed mid-rolling-deploy, the next agent found web.1, web.2 (new) and web.4
    // (surge, new) and web.3 of the OLD release still running.
    let mut world = World::new();
    world.apply(web("web-server v1", 3, "rolling"));
    world.run_until(1_000);
    world.apply(web("web-server v2", 3, "rolling"));
    world.run_until(1_500);
    world.note(&format!(
        "the agent dies; running: {:?}",
        world.releases_running("web")
    ));
    world.restart_agent();
    world.run_until(5_000);
    world.snapshot("adoption_mid_deploy");
    let releases: Vec<i64> = world.releases_running("web").iter().map(|r| r.1).collect();
    assert_eq!(releases, [2, 2, 2]);
    assert_eq!(world.release_status("web", 2), Some(ReleaseStatus::Live));
    world.note("the next deploy works");
    world.apply(web("web-server v3", 3, "rolling"));
    world.run_until(10_000);
    let releases: Vec<i64> = world.releases_running("web").iter().map(|r| r.1).collect();
    assert_eq!(releases, [3, 3, 3]);
}

#[test]
fn an_orphan_of_a_removed_service_is_stopped_on_restart() {
    let mut world = World::new();
    world.apply(spec(DB_AND_WEB));
    world.run_until(2_000);
    // The store says only db is applied (web was removed while no agent ran).
    let (revision, mut applied) = world.applied.clone().unwrap();
    applied.services.remove("web");
    world.applied = Some((revision + 1, applied));
    world.restart_agent();
    world.run_until(3_000);
    world.snapshot("orphan_stopped");
    assert_eq!(world.processes(), ["db.1"]);
}

#[test]
fn restart_goes_one_instance_at_a_time() {
    let mut world = World::new();
    world.apply(web("web-server", 2, "rolling"));
    world.run_until(1_000);
    world.floor = Some(("web".into(), 1));
    world.deliver(Observation::Restart {
        service: "web".into(),
    });
    world.run_until(3_000);
    world.deliver(Observation::Restart {
        service: "nope".into(),
    });
    world.snapshot("restart");
}

#[test]
fn rollback_request_deploys_the_previous_release_again() {
    let mut world = World::new();
    world.apply(web("web-server v1", 2, "rolling"));
    world.run_until(1_000);
    world.apply(web("web-server v2", 2, "rolling"));
    world.run_until(3_000);
    world.deliver(Observation::Rollback {
        service: "web".into(),
        to: None,
    });
    world.run_until(6_000);
    world.deliver(Observation::Rollback {
        service: "web".into(),
        to: Some(9),
    });
    world.snapshot("rollback_request");
    assert_eq!(world.release_status("web", 3), Some(ReleaseStatus::Live));
    assert_eq!(
        world.core.spec().unwrap(),
        &web("web-server v1", 2, "rolling")
    );
}

/// Slot 1 of every service here, the others on another host.
struct FirstSlotHere;

impl bow_reconcile::AssignmentSource for FirstSlotHere {
    fn assignments(&self, desired: bow_reconcile::Desired<'_>) -> Vec<bow_reconcile::Assignment> {
        let local = bow_reconcile::LocalAssignments {
            host: "local".into(),
        };
        let mut all = local.assignments(desired);
        for assignment in &mut all {
            if assignment.slot > 1 {
                assignment.host = "other".into();
            }
        }
        all
    }
}

#[test]
fn a_host_runs_only_its_assignments_and_publishes_its_addresses() {
    let mut world = World::new();
    world.core = bow_reconcile::Core::new("local", Box::new(FirstSlotHere));
    world.address = "10.0.0.7".into();
    world.apply(web("web-server", 3, "rolling"));
    world.run_until(1_000);
    world.snapshot("assignments");
    assert_eq!(world.processes(), ["web.1"]);
    let endpoints = world.core.endpoints();
    assert_eq!(endpoints["web"][0].to_string(), "web.1@10.0.0.7:5001");
}

#[test]
fn a_python_service_is_prepared_before_it_starts() {
    let yaml = r#"
project: shop
services:
  api:
    command: python app.py
    dir: /srv/api
    python: { requirements: requirements.txt }
"#;
    let mut world = World::new();
    world.apply(spec(yaml));
    world.run_until(2_000);
    world.snapshot("prepare");
    assert_eq!(health(&world, "api"), [Health::Healthy]);
}

#[test]
fn a_removed_service_stops() {
    let mut world = World::new();
    world.apply(spec(DB_AND_WEB));
    world.run_until(2_000);
    let mut without_web = spec(DB_AND_WEB);
    without_web.services.remove("web");
    world.apply(without_web);
    world.run_until(3_000);
    assert_eq!(world.processes(), ["db.1"]);
    assert!(!world.core.endpoints().contains_key("web"));
    assert!(world.core.retiring().is_empty());
}

#[test]
fn down_stops_dependants_first() {
    let mut world = World::new();
    world.apply(spec(DB_AND_WEB));
    world.run_until(2_000);
    world.deliver(Observation::Down);
    world.run_until(3_000);
    world.apply(spec(DB_AND_WEB));
    world.snapshot("down");
    assert!(world.processes().is_empty());
}

#[test]
fn an_untracked_orphan_in_the_way_of_a_deploy_is_stopped_not_a_failure() {
    // Issue 25 as it happened: the listing after the crash missed web.3 of the old release,
    // so the next agent tracked three new instances and the old one ran on, untracked; the
    // next deploy picked web.3 and the driver refused to start it.
    let mut world = World::new();
    world.apply(web("web-server v1", 3, "rolling"));
    world.run_until(1_000);
    world.apply(web("web-server v2", 3, "rolling"));
    world.run_until(1_500);
    world.hidden.insert(InstanceKey::new("web", 3));
    world.restart_agent();
    world.run_until(3_000);
    assert_eq!(world.releases_running("web").len(), 4, "the orphan runs on");
    world.hidden.clear();
    world.note("the next deploy");
    world.apply(web("web-server v3", 3, "rolling"));
    world.run_until(10_000);
    world.snapshot("orphan_in_the_way");
    let releases: Vec<i64> = world.releases_running("web").iter().map(|r| r.1).collect();
    assert_eq!(releases, [3, 3, 3]);
    assert_eq!(world.release_status("web", 3), Some(ReleaseStatus::Live));
}
