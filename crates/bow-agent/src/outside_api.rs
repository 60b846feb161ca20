//! Outside APIs (`proxy: {to, inject_headers}` services): no instance runs; the edge process
//! (crate::plane) listens at the service's internal address (and its twin on the containers' bridge) with
//! a `bow-edge` [`OutsideApi`], which calls the outside URL with the injected headers.
//!
//! The `${secret:NAME}` references in header values are resolved here, in memory, when the
//! listener is made; a listener is made again when the URL, the headers, a secret's digest
//! or an address changes (a new key is taken without a restart of anything else). The
//! values never leave the edge process's memory but towards the outside API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bow_edge::{InjectedHeader, OutsideApi, OutsideApiConfig};
use bow_reconcile::EventKind;
use bow_spec::{Service, Spec, Workload};

use crate::plane::Plane;

/// What a running listener was made from.
#[derive(Clone, PartialEq)]
struct Made {
    addrs: Vec<SocketAddr>,
    api: bow_spec::OutsideApi,
    digests: BTreeMap<String, String>,
}

/// The running outside-API listeners, by service.
#[derive(Default)]
pub(crate) struct OutsideApis {
    running: Mutex<BTreeMap<String, (Made, OutsideApi)>>,
}

/// The outside API a service is, if it is one.
pub(crate) fn of(service: &Service) -> Option<&bow_spec::OutsideApi> {
    match &service.workload {
        Workload::Proxy(api) => Some(api),
        _ => None,
    }
}

impl Plane {
    /// Starts, remakes or stops the outside-API listeners: `addrs` are each proxy
    /// service's addresses (internal, bridge).
    pub(crate) async fn ensure_outside_apis(
        self: &Arc<Self>,
        spec: &Spec,
        addrs: BTreeMap<String, Vec<SocketAddr>>,
    ) {
        let mut wanted = BTreeMap::new();
        for (name, addrs) in addrs {
            let Some(service) = spec.services.get(&name) else {
                continue;
            };
            let Some(api) = of(service) else { continue };
            let digests = bow_spec::route_secrets(service)
                .into_iter()
                .filter_map(|secret| {
                    Some((
                        secret.to_string(),
                        service.secret_digests.get(secret)?.clone(),
                    ))
                })
                .collect();
            wanted.insert(
                name,
                Made {
                    addrs,
                    api: api.clone(),
                    digests,
                },
            );
        }
        let stale: Vec<String> = {
            let running = self
                .outside_apis
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            running
                .iter()
                .filter(|(name, (made, _))| wanted.get(*name) != Some(made))
                .map(|(name, _)| name.clone())
                .collect()
        };
        for name in stale {
            let removed = self
                .outside_apis
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            if let Some((_, listener)) = removed {
                listener.shutdown().await;
            }
        }
        for (name, made) in wanted {
            let running = self
                .outside_apis
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&name);
            if running {
                continue;
            }
            match self.start_outside_api(&name, &made).await {
                Ok(listener) => {
                    self.outside_apis
                        .running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name, (made, listener));
                }
                Err(reason) => {
                    self.emit(&name, "", EventKind::DiscoveryFailed, &reason);
                }
            }
        }
    }

    async fn start_outside_api(
        self: &Arc<Self>,
        name: &str,
        made: &Made,
    ) -> Result<OutsideApi, String> {
        let mut inject = Vec::new();
        for (header, template) in &made.api.inject_headers {
            let secret = !bow_spec::secret_references(template).is_empty();
            let value = self.resolve_secrets(template)?;
            let name = http::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("{header:?} is not a header name"))?;
            let mut value = http::HeaderValue::from_bytes(&value).map_err(|_| {
                format!("the value of header {header} holds a byte a header cannot carry (a line break?)")
            })?;
            value.set_sensitive(secret);
            inject.push(InjectedHeader {
                name,
                value,
                secret,
            });
        }
        let roots = bow_edge::trusted_roots()?;
        let agent = Arc::downgrade(self);
        let service = name.to_string();
        let config = OutsideApiConfig {
            addrs: made.addrs.clone(),
            service: name.to_string(),
            to: made.api.to.clone(),
            inject_headers: inject,
            roots: Arc::new(roots),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            on_failure: Arc::new(move |reason: &str| {
                if let Some(agent) = agent.upgrade() {
                    agent.emit(&service, "", EventKind::EdgeWarning, reason);
                }
            }),
        };
        OutsideApi::start(config)
            .await
            .map_err(|e| format!("outside API {name}: {e}"))
    }

    /// `template` with each `${secret:NAME}` replaced by the secret's value.
    fn resolve_secrets(&self, template: &str) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut rest = template;
        while let Some(at) = rest.find("${secret:") {
            out.extend_from_slice(&rest.as_bytes()[..at]);
            let tail = &rest[at + "${secret:".len()..];
            let Some(end) = tail.find('}') else {
                out.extend_from_slice(&rest.as_bytes()[at..]);
                rest = "";
                break;
            };
            let value = crate::secrets::reveal_from(self.secrets.as_ref(), &tail[..end])?;
            out.extend_from_slice(&value);
            rest = &tail[end + 1..];
        }
        out.extend_from_slice(rest.as_bytes());
        Ok(out)
    }

    /// The services whose outside-API listener runs.
    pub(crate) fn outside_api_names(&self) -> Vec<String> {
        let running = self
            .outside_apis
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        running.keys().cloned().collect()
    }

    /// Stops every outside-API listener (`bow down`).
    pub(crate) async fn stop_outside_apis(&self) {
        let running = std::mem::take(
            &mut *self
                .outside_apis
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (_, (_, listener)) in running {
            listener.shutdown().await;
        }
    }
}
