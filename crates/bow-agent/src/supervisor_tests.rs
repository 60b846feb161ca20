//! The supervisor on the fake driver: restarts, backoff, down.
use std::sync::Arc;

use bow_driver::DriverError;
use bow_driver::fake::{DriverCall, FakeProcessDriver, exited_with};

use crate::fake_world::FakeWorld;

const WORKER: &str = "project: p\nservices:\n  worker:\n    command: work --hard\n";

fn starts(world: &FakeWorld) -> usize {
    world
        .driver
        .calls()
        .iter()
        .filter(|c| matches!(c, DriverCall::Start { .. }))
        .count()
}

#[tokio::test]
async fn a_crashed_instance_is_started_again_through_its_driver() {
    let world = FakeWorld::start(Arc::new(FakeProcessDriver::new())).await;
    world.apply(WORKER);
    world
        .until("worker runs", |w| w.driver.running().len() == 1)
        .await;
    let first = world.driver.running()[0].clone();
    assert_eq!(first.instance_id(), "worker.1");
    world.driver.end(&first, exited_with(3));
    world
        .until("a new worker.1", |w| {
            w.driver
                .running()
                .first()
                .is_some_and(|h| !h.same_as(&first))
        })
        .await;
    assert_eq!(starts(&world), 2);
    world
        .until("restarted", |w| w.saw("worker.1", "restarted"))
        .await;
    let events = world.events();
    assert!(
        events.contains("worker.1 exited exited with code 3"),
        "{events}"
    );
    assert!(
        events.contains(&format!("worker.1 started {first} port ")),
        "{events}"
    );
}

#[tokio::test]
async fn a_start_the_driver_refuses_is_retried_after_a_backoff() {
    let driver = Arc::new(FakeProcessDriver::new());
    driver.fail_next_start(DriverError::CommandNotFound {
        command: "work".into(),
        path: "/bin".into(),
    });
    let world = FakeWorld::start(driver).await;
    world.apply(WORKER);
    world
        .until("worker runs", |w| w.driver.running().len() == 1)
        .await;
    assert_eq!(starts(&world), 2);
    assert!(world.saw("worker.1", "start-failed"), "{}", world.events());
    assert!(world.saw("worker.1", "backoff"), "{}", world.events());
}

#[tokio::test]
async fn down_stops_every_instance_through_its_driver_then_cleans_up() {
    let world = FakeWorld::start(Arc::new(FakeProcessDriver::new())).await;
    world.apply(&WORKER.replace("work --hard", "work --hard\n    replicas: 2"));
    world
        .until("two workers run", |w| w.driver.running().len() == 2)
        .await;
    let mut stopped = world.agent.down().await;
    stopped.sort();
    assert_eq!(stopped, ["worker.1", "worker.2"]);
    assert!(world.driver.running().is_empty());
    let calls = world.driver.calls();
    let stops = calls
        .iter()
        .filter(|c| matches!(c, DriverCall::Stop { .. }))
        .count();
    assert_eq!(stops, 2);
    assert_eq!(calls.last(), Some(&DriverCall::CleanUp));
}

#[tokio::test]
async fn a_held_service_is_stopped_and_nothing_restarts_it_until_resumed() {
    let world = FakeWorld::start(Arc::new(FakeProcessDriver::new())).await;
    world.apply(&WORKER.replace("work --hard", "work --hard\n    replicas: 2"));
    world
        .until("two workers run", |w| w.driver.running().len() == 2)
        .await;
    let held = world.agent.hold(&["worker".to_string()]).await.unwrap();
    assert_eq!(held, ["worker.1", "worker.2"]);
    assert!(world.driver.running().is_empty());
    let before = starts(&world);
    // Held: nothing restarts it (a backoff would have by now).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(starts(&world), before);
    assert!(
        world.events().contains("stopped and held"),
        "{}",
        world.events()
    );
    let resumed = world.agent.resume(&["worker".to_string()]).await.unwrap();
    assert_eq!(resumed, ["worker.1", "worker.2"]);
    assert_eq!(world.driver.running().len(), 2);
    assert_eq!(starts(&world), before + 2);
    // An unknown service is an error that names the services.
    let error = world.agent.hold(&["nope".to_string()]).await.unwrap_err();
    assert!(error.to_string().contains("worker"), "{error}");
}
