//! TLS passthrough by SNI (`tcp: {port, sni: [names]}`): the routes of the one listener
//! `discovery.rs` runs per passthrough port, by server name. The listener (a `bow-edge`
//! `ServiceListener` of protocol `Sni`) reads each ClientHello's name and passes the
//! connection, still encrypted, to the healthy instances of the service listing that name.

use crate::agent::Inner;
use crate::discovery::healthy_endpoints;

/// TLS passthrough on `port`: each server name of the services' `tcp: {port, sni}` with the
/// healthy instances of its service.
pub(crate) fn sni_routes(inner: &Inner, port: u16) -> Vec<(String, bow_edge::Backend)> {
    let Some(spec) = &inner.spec else {
        return Vec::new();
    };
    let mut routes = Vec::new();
    for (name, service) in &spec.services {
        let Some(tcp) = service.tcp.as_ref().filter(|tcp| tcp.port == port) else {
            continue;
        };
        let endpoints = healthy_endpoints(inner, name);
        for server in &tcp.sni {
            routes.push((
                server.clone(),
                bow_edge::Backend::new(name.clone(), endpoints.clone()),
            ));
        }
    }
    routes
}
