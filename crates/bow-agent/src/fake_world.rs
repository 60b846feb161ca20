//! For the agent's unit tests: an agent on a temporary state dir whose instances run on the
//! fake driver, with every event it emits kept for the test to read.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bow_driver::fake::FakeProcessDriver;

use crate::agent::{Agent, AgentConfig};
use crate::drivers::Drivers;

/// A valid spec from `yaml`.
pub fn spec(yaml: &str) -> bow_spec::Spec {
    bow_spec::load(yaml, &bow_spec::LoadOptions::default()).unwrap_or_else(|d| panic!("{d:?}"))
}

pub struct FakeWorld {
    pub agent: Arc<Agent>,
    pub driver: Arc<FakeProcessDriver>,
    events: Arc<Mutex<Vec<(String, String, String)>>>,
    _dir: tempfile::TempDir,
}

impl FakeWorld {
    /// An agent with nothing applied, over `driver` (which may already run instances).
    pub async fn start(driver: Arc<FakeProcessDriver>) -> FakeWorld {
        FakeWorld::restart(driver, None).await
    }

    /// An agent over `driver` whose store already holds `applied` as its last revision, as a
    /// previous agent left it.
    pub async fn restart(driver: Arc<FakeProcessDriver>, applied: Option<&str>) -> FakeWorld {
        let dir = tempfile::tempdir().unwrap();
        if let Some(yaml) = applied {
            let state_dir = dir.path().join("state");
            std::fs::create_dir_all(&state_dir).unwrap();
            let store = bow_store::Store::open(&state_dir).unwrap();
            store.record_revision(&spec(yaml), 0).unwrap();
        }
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let agent = Agent::start(AgentConfig {
            state_dir: dir.path().join("state"),
            project: "p".into(),
            environment: "e".into(),
            drivers: Drivers::new(driver.clone()),
            event_sink: Some(Box::new(move |event| {
                sink.lock().unwrap().push((
                    event.instance.clone(),
                    event.kind.clone(),
                    event.message.clone(),
                ));
            })),
            reconcile_on_start: true,
            secrets: None,
            plane: None,
        })
        .await
        .unwrap();
        FakeWorld {
            agent,
            driver,
            events,
            _dir: dir,
        }
    }

    pub fn apply(&self, yaml: &str) {
        self.agent.apply(spec(yaml)).unwrap();
    }

    /// `instance kind message` of every event so far, one a line.
    pub fn events(&self) -> String {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(instance, kind, message)| format!("{instance} {kind} {message}\n"))
            .collect()
    }

    pub fn saw(&self, instance: &str, kind: &str) -> bool {
        self.events
            .lock()
            .unwrap()
            .iter()
            .any(|(i, k, _)| i == instance && k == kind)
    }

    /// Waits (up to 5 s) until `done` holds; fails with the events otherwise.
    pub async fn until(&self, what: &str, done: impl Fn(&FakeWorld) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within 5 s; events:\n{}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
