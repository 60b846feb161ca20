//! The plane's service listeners: each service's discovery address (on loopback and on the
//! containers' bridge) and the TCP routes, run as the state lists them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bow_edge::{DrainOutcome, ServiceListener, ServiceListenerConfig, ServiceProtocol};
use bow_reconcile::EventKind;

use super::serve::Plane;
use super::{ListenerSet, PlaneListener, PlaneState};

pub(crate) struct RunningListener {
    listener: ServiceListener,
    want: PlaneListener,
}

/// The running listeners, by set and name.
pub(crate) type Listeners = BTreeMap<(ListenerSet, String), Arc<RunningListener>>;

/// TLS passthrough on `port`: each server name of the services' `tcp: {port, sni}` with the
/// healthy instances of its service.
fn sni_routes(state: &PlaneState, port: u16) -> Vec<(String, bow_edge::Backend)> {
    let Some(spec) = &state.spec else {
        return Vec::new();
    };
    let mut routes = Vec::new();
    for (name, service) in &spec.services {
        let Some(tcp) = service.tcp.as_ref().filter(|tcp| tcp.port == port) else {
            continue;
        };
        let endpoints = super::edge::endpoints(state.endpoints.get(name));
        for server in &tcp.sni {
            routes.push((
                server.clone(),
                bow_edge::Backend::new(name.clone(), endpoints.clone()),
            ));
        }
    }
    routes
}

impl Plane {
    /// Starts, restarts (address, protocol or drain timeout changed) or stops listeners to
    /// match `state`, then gives each its name's healthy endpoints.
    pub(crate) async fn ensure_listeners(&self, state: &PlaneState) {
        let wanted: BTreeMap<(ListenerSet, String), &PlaneListener> = state
            .listeners
            .iter()
            .map(|want| ((want.set, want.name.clone()), want))
            .collect();
        let running: Vec<((ListenerSet, String), Arc<RunningListener>)> = self
            .listeners()
            .iter()
            .map(|(key, running)| (key.clone(), running.clone()))
            .collect();
        for (key, running) in running {
            if wanted.get(&key).is_some_and(|want| **want == running.want) {
                continue;
            }
            self.listeners().remove(&key);
            running.listener.shutdown().await;
        }
        for (key, want) in wanted {
            if self.listeners().contains_key(&key) {
                continue;
            }
            let protocol = if want.sni {
                ServiceProtocol::Sni
            } else if want.http {
                ServiceProtocol::Http
            } else {
                ServiceProtocol::Tcp
            };
            let mut config = ServiceListenerConfig::new(want.addr, want.name.clone(), protocol);
            config.drain_timeout = Duration::from_millis(want.drain_timeout_ms);
            config.sockets = Some(self.sockets.clone());
            match ServiceListener::start(config).await {
                Ok(listener) => {
                    self.errors().remove(&want.name);
                    self.listeners().insert(
                        key,
                        Arc::new(RunningListener {
                            listener,
                            want: want.clone(),
                        }),
                    );
                }
                Err(error) => {
                    let reason = format!("cannot listen on {}: {error}", want.addr);
                    let known = self.errors().get(&want.name) == Some(&reason);
                    if !known {
                        self.emit(&want.name, "", EventKind::DiscoveryFailed, &reason);
                        self.errors().insert(want.name.clone(), reason);
                    }
                }
            }
        }
        self.set_listener_endpoints(state);
    }

    /// Gives every listener the healthy endpoints of its name (a passthrough listener: those
    /// of each server name of its port).
    pub(crate) fn set_listener_endpoints(&self, state: &PlaneState) {
        for ((_, name), running) in self.listeners().iter() {
            if running.want.sni {
                running
                    .listener
                    .set_sni_routes(sni_routes(state, running.want.addr.port()));
            } else {
                running
                    .listener
                    .set_endpoints(super::edge::endpoints(state.endpoints.get(name)));
            }
        }
    }

    /// Waits (at most `timeout`) for `instance_id`'s open requests and connections on every
    /// listener; `None` when there is no listener.
    pub(crate) async fn drain_listeners(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Option<DrainOutcome> {
        let all: Vec<Arc<RunningListener>> = self.listeners().values().cloned().collect();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut outcome = None;
        // Instance ids are unique: only the instance's own service has it, the others
        // answer at once.
        for running in all {
            let drained = tokio::time::timeout_at(deadline, running.listener.drain(instance_id))
                .await
                .ok();
            outcome = crate::discovery::both_drained(outcome, drained);
        }
        outcome
    }

    /// Closes every listener gracefully.
    pub(crate) async fn stop_listeners(&self) {
        let all: Vec<Arc<RunningListener>> = std::mem::take(&mut *self.listeners())
            .into_values()
            .collect();
        for running in all {
            running.listener.shutdown().await;
        }
    }

    /// The addresses of the running listeners.
    pub(crate) fn listener_addresses(&self) -> Vec<SocketAddr> {
        self.listeners()
            .values()
            .map(|running| running.want.addr)
            .collect()
    }

    /// Names with a running discovery listener (on loopback).
    pub(crate) fn listening(&self) -> Vec<String> {
        self.listeners()
            .keys()
            .filter(|(set, _)| *set == ListenerSet::Discovery)
            .map(|(_, name)| name.clone())
            .collect()
    }
}
