//! Upstream endpoints at run time: the active route table, least-outstanding balancing,
//! passive down-marking and draining.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::metrics::{MetricsRegistry, RouteStats};
use crate::pool::{IdleConnections, PoolLimits};
use crate::routes::{RouteTable, normalize_host, prefix_matches};

/// How a call to [`crate::Edge::drain`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// No request is in flight on the endpoint any more.
    Drained,
    /// The drain timeout passed with requests still in flight.
    TimedOut {
        /// Requests still in flight when the timeout passed.
        in_flight: usize,
    },
}

/// The run-time state of one endpoint, shared by every route that lists it.
#[derive(Debug)]
pub(crate) struct EndpointState {
    pub(crate) id: Arc<str>,
    pub(crate) addr: SocketAddr,
    outstanding: AtomicUsize,
    /// Set when the endpoint left the table or is being drained: it gets no new request.
    retired: AtomicBool,
    /// Milliseconds since the registry's epoch until which the endpoint counts as down.
    down_until_ms: AtomicU64,
    idle: Notify,
    /// Keep-alive connections to the endpoint not in use now.
    pub(crate) connections: IdleConnections,
}

impl EndpointState {
    fn new(id: &str, addr: SocketAddr, limits: PoolLimits) -> Self {
        EndpointState {
            id: Arc::from(id),
            addr,
            outstanding: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            down_until_ms: AtomicU64::new(0),
            idle: Notify::new(),
            connections: IdleConnections::new(limits),
        }
    }

    fn in_flight(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst)
    }
}

/// One request in flight on an endpoint; dropping it ends the request for balancing and draining.
#[derive(Debug)]
pub(crate) struct EndpointGuard(Arc<EndpointState>);

impl EndpointGuard {
    pub(crate) fn endpoint(&self) -> &Arc<EndpointState> {
        &self.0
    }
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        if self.0.outstanding.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A route of the active table, with its endpoints resolved to their shared state.
#[derive(Debug)]
pub(crate) struct ActiveRoute {
    /// The normalised host, shared with the access-log records of its requests.
    pub(crate) host: Arc<str>,
    prefix: String,
    pub(crate) service: Arc<str>,
    endpoints: Vec<Arc<EndpointState>>,
    /// `None` when per-route counters are off.
    pub(crate) stats: Option<Arc<RouteStats>>,
    /// A chaos drill's fault on this route's traffic.
    pub(crate) fault: Option<crate::routes::Fault>,
    /// What the route asks of a request first.
    pub(crate) policy: Option<Arc<crate::guard::RoutePolicy>>,
    next: AtomicUsize,
}

/// The route table as the proxy reads it; swapped whole by [`crate::Edge::set_routes`].
#[derive(Debug, Default)]
pub(crate) struct ActiveTable {
    hosts: HashMap<String, Vec<ActiveRoute>>,
}

impl ActiveTable {
    /// The route for a normalised host and a path: longest matching prefix. Routes of the
    /// host [`crate::ANY_HOST`] serve hosts no route names.
    pub(crate) fn lookup(&self, host: &str, path: &str) -> Option<&ActiveRoute> {
        let routes = self
            .hosts
            .get(host)
            .or_else(|| self.hosts.get(crate::ANY_HOST))?;
        routes
            .iter()
            .find(|route| prefix_matches(&route.prefix, path))
    }

    /// Whether any route names this (normalised) host.
    pub(crate) fn has_host(&self, host: &str) -> bool {
        self.hosts.contains_key(host)
    }
}

/// Every endpoint the edge knows, including removed ones that still have requests in flight.
#[derive(Debug)]
pub(crate) struct Upstreams {
    epoch: Instant,
    cooloff: Duration,
    limits: PoolLimits,
    states: Mutex<HashMap<String, Arc<EndpointState>>>,
}

impl Upstreams {
    pub(crate) fn new(cooloff: Duration, limits: PoolLimits) -> Self {
        Upstreams {
            epoch: Instant::now(),
            cooloff,
            limits,
            states: Mutex::new(HashMap::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Resolves a table against the known endpoints: an endpoint that is new, changed
    /// address or was drained gets fresh state. Endpoints that left the table keep serving
    /// until [`Upstreams::retire_absent`] is called with the returned ids, once the new
    /// table is in place (so no request ever sees a table whose endpoints are all retired).
    pub(crate) fn activate(
        &self,
        table: &RouteTable,
        metrics: &MetricsRegistry,
    ) -> (ActiveTable, HashSet<String>) {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut listed = HashSet::new();
        let mut hosts: HashMap<String, Vec<ActiveRoute>> = HashMap::new();
        for route in table.routes() {
            let mut endpoints = Vec::with_capacity(route.backend.endpoints.len());
            for endpoint in &route.backend.endpoints {
                listed.insert(endpoint.id.clone());
                let reusable = states.get(&endpoint.id).filter(|state| {
                    state.addr == endpoint.addr && !state.retired.load(Ordering::SeqCst)
                });
                let state = match reusable {
                    Some(state) => state.clone(),
                    None => {
                        let state =
                            Arc::new(EndpointState::new(&endpoint.id, endpoint.addr, self.limits));
                        if let Some(old) = states.insert(endpoint.id.clone(), state.clone()) {
                            old.retired.store(true, Ordering::SeqCst);
                        }
                        state
                    }
                };
                endpoints.push(state);
            }
            let label = route.label();
            let host = normalize_host(&route.host);
            hosts.entry(host.clone()).or_default().push(ActiveRoute {
                host: Arc::from(host),
                prefix: route.path_prefix.clone(),
                service: Arc::from(route.backend.service.as_str()),
                stats: metrics.route_stats(&route.backend.service, &label),
                endpoints,
                fault: route.backend.fault,
                policy: route.policy.clone(),
                next: AtomicUsize::new(0),
            });
        }
        for routes in hosts.values_mut() {
            routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        }
        (ActiveTable { hosts }, listed)
    }

    /// Retires every endpoint not in `listed`: it gets no new request, and is forgotten
    /// once it has none in flight.
    pub(crate) fn retire_absent(&self, listed: &HashSet<String>) {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        states.retain(|id, state| {
            if listed.contains(id) {
                return true;
            }
            state.retired.store(true, Ordering::SeqCst);
            state.in_flight() > 0
        });
    }

    /// Takes the endpoint with the fewest requests in flight, preferring endpoints not marked
    /// down (a down one is used only when no other is left), skipping `tried` and retired ones.
    pub(crate) fn pick(
        &self,
        route: &ActiveRoute,
        tried: &[Arc<EndpointState>],
    ) -> Option<EndpointGuard> {
        let count = route.endpoints.len();
        if count == 0 {
            return None;
        }
        let now = self.now_ms();
        loop {
            let start = route.next.fetch_add(1, Ordering::Relaxed);
            let mut best: Option<(&Arc<EndpointState>, bool, usize)> = None;
            for offset in 0..count {
                let endpoint = &route.endpoints[(start + offset) % count];
                if endpoint.retired.load(Ordering::SeqCst)
                    || tried.iter().any(|done| Arc::ptr_eq(done, endpoint))
                {
                    continue;
                }
                let up = endpoint.down_until_ms.load(Ordering::Relaxed) <= now;
                let load = endpoint.outstanding.load(Ordering::Relaxed);
                let better = match best {
                    None => true,
                    Some((_, best_up, best_load)) => {
                        (up && !best_up) || (up == best_up && load < best_load)
                    }
                };
                if better {
                    best = Some((endpoint, up, load));
                }
            }
            let endpoint = best?.0;
            endpoint.outstanding.fetch_add(1, Ordering::SeqCst);
            let guard = EndpointGuard(endpoint.clone());
            // A table swap or a drain may have retired it between the scan and the count.
            if endpoint.retired.load(Ordering::SeqCst) {
                drop(guard);
                continue;
            }
            return Some(guard);
        }
    }

    /// Closes every endpoint's idle connections past the idle timeout.
    pub(crate) fn reap_idle(&self) {
        let endpoints: Vec<Arc<EndpointState>> = self
            .states
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .values()
            .cloned()
            .collect();
        let now = Instant::now();
        for endpoint in endpoints {
            endpoint.connections.reap(now);
        }
    }

    /// Takes an endpoint out for the cool-off after it refused or reset a connection.
    pub(crate) fn mark_down(&self, endpoint: &EndpointState) {
        let until = self.now_ms() + self.cooloff.as_millis() as u64;
        endpoint.down_until_ms.store(until, Ordering::Relaxed);
    }

    /// Retires the endpoint and waits until its in-flight requests finished or `timeout` passed.
    pub(crate) async fn drain(&self, endpoint_id: &str, timeout: Duration) -> DrainOutcome {
        let state = {
            let states = self
                .states
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            states.get(endpoint_id).cloned()
        };
        let Some(state) = state else {
            return DrainOutcome::Drained;
        };
        state.retired.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + timeout;
        let outcome = loop {
            let notified = state.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let in_flight = state.in_flight();
            if in_flight == 0 {
                break DrainOutcome::Drained;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break DrainOutcome::TimedOut {
                    in_flight: state.in_flight(),
                };
            }
        };
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let same = states
            .get(endpoint_id)
            .is_some_and(|current| Arc::ptr_eq(current, &state));
        if same && state.in_flight() == 0 {
            states.remove(endpoint_id);
        }
        outcome
    }
}

/// Closes idle upstream connections on a timer (every half idle timeout), so that they do
/// not outlive the idle timeout when no request touches their endpoint again. Ends when
/// the upstreams are dropped; the owner aborts it sooner.
pub(crate) fn spawn_reaper(upstreams: &Arc<Upstreams>) -> tokio::task::JoinHandle<()> {
    let every = (upstreams.limits.idle_timeout / 2).max(Duration::from_millis(10));
    let upstreams = Arc::downgrade(upstreams);
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer.tick().await;
        loop {
            timer.tick().await;
            let Some(upstreams) = upstreams.upgrade() else {
                return;
            };
            upstreams.reap_idle();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{Backend, Endpoint, Route};

    const LIMITS: PoolLimits = PoolLimits {
        max_connections: 4,
        idle_timeout: Duration::from_secs(60),
    };

    fn table(ids: &[(&str, u16)]) -> RouteTable {
        let endpoints = ids
            .iter()
            .map(|(id, port)| Endpoint::new(*id, SocketAddr::from(([127, 0, 0, 1], *port))))
            .collect();
        RouteTable::new(vec![Route::new(
            "a.com",
            "/",
            Backend::new("web", endpoints),
        )])
        .unwrap()
    }

    #[test]
    fn least_outstanding_and_down_endpoints_are_avoided() {
        let upstreams = Upstreams::new(Duration::from_secs(60), LIMITS);
        let metrics = MetricsRegistry::default();
        let (active, _) = upstreams.activate(&table(&[("web.1", 1), ("web.2", 2)]), &metrics);
        let route = active.lookup("a.com", "/").unwrap();
        let first = upstreams.pick(route, &[]).unwrap();
        let second = upstreams.pick(route, &[]).unwrap();
        assert_ne!(first.endpoint().id, second.endpoint().id);
        upstreams.mark_down(second.endpoint());
        drop(first);
        for _ in 0..4 {
            let guard = upstreams.pick(route, &[]).unwrap();
            assert_ne!(guard.endpoint().id, second.endpoint().id);
        }
        let only_down_left = upstreams
            .pick(route, &[route.endpoints[0].clone()])
            .unwrap();
        assert_eq!(only_down_left.endpoint().id, second.endpoint().id);
    }

    #[tokio::test]
    async fn removed_endpoints_get_no_requests_and_drain() {
        let upstreams = Upstreams::new(Duration::from_secs(2), LIMITS);
        let metrics = MetricsRegistry::default();
        let (active, _) = upstreams.activate(&table(&[("web.1", 1)]), &metrics);
        let guard = upstreams
            .pick(active.lookup("a.com", "/x").unwrap(), &[])
            .unwrap();
        let (next, listed) = upstreams.activate(&table(&[("web.2", 2)]), &metrics);
        let before_retiring = upstreams.pick(active.lookup("a.com", "/").unwrap(), &[]);
        assert!(before_retiring.is_some());
        drop(before_retiring);
        upstreams.retire_absent(&listed);
        assert!(
            upstreams
                .pick(active.lookup("a.com", "/").unwrap(), &[])
                .is_none()
        );
        assert!(
            upstreams
                .pick(next.lookup("a.com", "/").unwrap(), &[])
                .is_some()
        );
        let timed_out = upstreams.drain("web.1", Duration::from_millis(20)).await;
        assert_eq!(timed_out, DrainOutcome::TimedOut { in_flight: 1 });
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(guard);
        });
        let drained = upstreams.drain("web.1", Duration::from_secs(5)).await;
        assert_eq!(drained, DrainOutcome::Drained);
        release.await.unwrap();
        assert_eq!(
            upstreams.drain("web.9", Duration::from_secs(5)).await,
            DrainOutcome::Drained
        );
    }
}
