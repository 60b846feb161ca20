//! The route table: host + path prefix → a backend (a service and its upstream endpoints).

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::error::EdgeError;

/// One upstream instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The instance id, such as `web.1`; [`crate::Edge::drain`] names endpoints by it.
    pub id: String,
    /// Where the instance listens.
    pub addr: SocketAddr,
}

impl Endpoint {
    /// An endpoint from its instance id and address.
    pub fn new(id: impl Into<String>, addr: SocketAddr) -> Self {
        Endpoint {
            id: id.into(),
            addr,
        }
    }
}

/// A service and the endpoints that may serve it (the healthy instances).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The service name, used in error bodies, logs and metrics.
    pub service: String,
    /// The instances requests are balanced over; empty means every request gets 503.
    pub endpoints: Vec<Endpoint>,
    /// A fault a chaos drill injects on the way to the service (`None` normally).
    pub fault: Option<Fault>,
}

impl Backend {
    /// A backend from its service name and endpoints.
    pub fn new(service: impl Into<String>, endpoints: Vec<Endpoint>) -> Self {
        Backend {
            service: service.into(),
            endpoints,
            fault: None,
        }
    }
}

/// What a chaos drill (`bow chaos latency|loss`) does to a service's traffic at the edge:
/// each request waits `delay` before it goes upstream, and each attempt is lost with the
/// probability `loss_per_million` / 1e6 as if the instance had refused the connection (the
/// edge's retry rules then apply; the endpoint is not marked down).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    pub delay: std::time::Duration,
    pub loss_per_million: u32,
}

impl Fault {
    /// Whether this attempt is lost (a cheap per-thread xorshift; drills need no better).
    pub(crate) fn loses(&self) -> bool {
        use std::cell::Cell;
        thread_local! {
            static STATE: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) };
        }
        if self.loss_per_million == 0 {
            return false;
        }
        STATE.with(|state| {
            let mut x = state.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            state.set(x);
            (x % 1_000_000) < u64::from(self.loss_per_million)
        })
    }
}

/// Requests for `host` whose path starts with `path_prefix` go to `backend`.
#[derive(Clone, Debug)]
pub struct Route {
    /// The host name, matched exactly (case-insensitively, without port).
    pub host: String,
    /// The path prefix, matched on whole segments: `/api` matches `/api` and `/api/x`, not `/apix`.
    pub path_prefix: String,
    /// Where matching requests go.
    pub backend: Backend,
    /// What the route asks of a request first (sign-in, limits); `None`: nothing. Keep the
    /// same `Arc` across tables while the settings stay, as it holds the route's rate
    /// buckets and verified credentials.
    pub policy: Option<std::sync::Arc<crate::guard::RoutePolicy>>,
}

impl PartialEq for Route {
    fn eq(&self, other: &Route) -> bool {
        let same_policy = match (&self.policy, &other.policy) {
            (None, None) => true,
            (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        };
        self.host == other.host
            && self.path_prefix == other.path_prefix
            && self.backend == other.backend
            && same_policy
    }
}

impl Eq for Route {}

impl Route {
    /// A route; the host is normalised (lower case, no trailing dot).
    pub fn new(host: impl Into<String>, path_prefix: impl Into<String>, backend: Backend) -> Self {
        Route {
            host: normalize_host(&host.into()),
            path_prefix: path_prefix.into(),
            backend,
            policy: None,
        }
    }

    /// The bounded label metrics use for this route: `host/prefix`, e.g. `example.com/api`.
    pub fn label(&self) -> String {
        format!("{}{}", self.host, self.path_prefix)
    }
}

/// A validated set of routes. The edge swaps whole tables atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// A table from routes. Each path prefix is put in the normal form request paths are
    /// matched in (`/a/./b` → `/a/b`, `%7e` → `~`). Refused: an empty host, a prefix not
    /// starting with `/` or that the normaliser refuses, the same host and prefix twice, or
    /// one endpoint id with two different addresses.
    pub fn new(mut routes: Vec<Route>) -> Result<Self, EdgeError> {
        for route in routes
            .iter_mut()
            .filter(|route| route.path_prefix.starts_with('/'))
        {
            match crate::uri::normalize_path(&route.path_prefix) {
                Ok(std::borrow::Cow::Borrowed(_)) => {}
                Ok(std::borrow::Cow::Owned(normal)) => route.path_prefix = normal,
                Err(error) => {
                    return Err(EdgeError::InvalidRoute {
                        route: route.label(),
                        reason: error.reason().replace("the path", "the path prefix"),
                    });
                }
            }
        }
        let mut seen = HashMap::new();
        let mut endpoint_addrs: HashMap<&str, SocketAddr> = HashMap::new();
        for route in &routes {
            let invalid = |reason: &str| EdgeError::InvalidRoute {
                route: route.label(),
                reason: reason.to_string(),
            };
            if route.host.is_empty() || route.host.contains(['/', ' ', ':']) {
                return Err(invalid("expected a plain host name such as example.com"));
            }
            if !route.path_prefix.starts_with('/') {
                return Err(invalid("the path prefix must start with /"));
            }
            if seen
                .insert((route.host.as_str(), route.path_prefix.as_str()), ())
                .is_some()
            {
                return Err(invalid("the same host and path prefix appear twice"));
            }
            for endpoint in &route.backend.endpoints {
                let known = endpoint_addrs
                    .entry(endpoint.id.as_str())
                    .or_insert(endpoint.addr);
                if *known != endpoint.addr {
                    return Err(invalid(&format!(
                        "endpoint {} has two addresses, {} and {}",
                        endpoint.id, known, endpoint.addr
                    )));
                }
            }
        }
        Ok(RouteTable { routes })
    }

    /// The routes, in the order given.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for a request: exact host, then the longest prefix matching its normalised
    /// path (none for a path the normaliser refuses).
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Route> {
        let host = normalize_host(host);
        let path = crate::uri::normalize_path(path).ok()?;
        let path = &*path;
        self.routes
            .iter()
            .filter(|route| route.host == host && prefix_matches(&route.path_prefix, path))
            .max_by_key(|route| route.path_prefix.len())
    }
}

/// Lower case, without a trailing dot.
pub(crate) fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// [`normalize_host`] without a copy when `host` is normal already (the usual case).
pub(crate) fn normalized_host(host: &str) -> std::borrow::Cow<'_, str> {
    if host.ends_with('.') || host.bytes().any(|byte| byte.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(normalize_host(host))
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// Whether `prefix` matches `path` on segment boundaries.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(service: &str) -> Backend {
        Backend::new(service, vec![])
    }

    #[test]
    fn longest_prefix_wins_on_whole_segments() {
        let table = RouteTable::new(vec![
            Route::new("Example.com", "/", backend("front")),
            Route::new("example.com", "/api", backend("back")),
            Route::new("example.com", "/api/v2/", backend("v2")),
        ])
        .unwrap();
        let service = |path| {
            table
                .lookup("example.com", path)
                .unwrap()
                .backend
                .service
                .clone()
        };
        assert_eq!(service("/"), "front");
        assert_eq!(service("/api"), "back");
        assert_eq!(service("/api/users"), "back");
        assert_eq!(service("/apix"), "front");
        assert_eq!(service("/api/v2/x"), "v2");
        assert_eq!(service("/x/../api/y"), "back");
        assert_eq!(service("/api/%2e%2e/secret"), "front");
        assert!(table.lookup("example.com", "/api/..%2fsecret").is_none());
        assert!(table.lookup("other.com", "/").is_none());
        assert!(table.lookup("EXAMPLE.com.", "/").is_some());
    }

    #[test]
    fn bad_tables_are_refused() {
        let dup = RouteTable::new(vec![
            Route::new("a.com", "/", backend("x")),
            Route::new("a.com", "/", backend("y")),
        ]);
        assert!(dup.unwrap_err().to_string().contains("appear twice"));
        let normalised = RouteTable::new(vec![Route::new("a.com", "/a/./b/%7e", backend("x"))]);
        assert_eq!(normalised.unwrap().routes()[0].path_prefix, "/a/b/~");
        let refused = RouteTable::new(vec![Route::new("a.com", "/a/%zz", backend("x"))]);
        assert!(refused.unwrap_err().to_string().contains("percent escape"));
        let prefix = RouteTable::new(vec![Route::new("a.com", "api", backend("x"))]);
        assert!(
            prefix
                .unwrap_err()
                .to_string()
                .contains("must start with /")
        );
        let addr1: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let addr2: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let two_addrs = RouteTable::new(vec![
            Route::new(
                "a.com",
                "/",
                Backend::new("x", vec![Endpoint::new("x.1", addr1)]),
            ),
            Route::new(
                "b.com",
                "/",
                Backend::new("x", vec![Endpoint::new("x.1", addr2)]),
            ),
        ]);
        assert!(two_addrs.unwrap_err().to_string().contains("two addresses"));
    }
}
