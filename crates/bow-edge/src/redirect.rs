//! The plain-HTTP port: a 308 redirect to HTTPS for everything except ACME HTTP-01
//! challenges, which go to a pluggable [`AcmeChallengeHandler`]. Only a host the route table
//! serves is redirected to: any other (or a malformed one) gets 4xx, so the port never
//! echoes an arbitrary `Host` into `Location`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use arc_swap::ArcSwap;

use crate::body::EdgeBody;
use crate::metrics::MetricsRegistry;
use crate::routes::normalized_host;
use crate::upstream::ActiveTable;

/// Where ACME HTTP-01 challenge tokens are answered (`/.well-known/acme-challenge/TOKEN`).
pub trait AcmeChallengeHandler: Send + Sync + 'static {
    /// The key authorization for `token` on `host`, or `None` (answered 404).
    fn key_authorization(&self, host: &str, token: &str) -> Option<String>;
}

/// Knows no challenge: every challenge path gets 404.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAcmeChallenges;

impl AcmeChallengeHandler for NoAcmeChallenges {
    fn key_authorization(&self, _host: &str, _token: &str) -> Option<String> {
        None
    }
}

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

pub(crate) struct Redirect {
    https_port: u16,
    acme: Arc<dyn AcmeChallengeHandler>,
    metrics: Arc<MetricsRegistry>,
    /// The routes: which hosts are served.
    table: Arc<ArcSwap<ActiveTable>>,
}

impl Redirect {
    pub(crate) fn new(
        https_port: u16,
        acme: Arc<dyn AcmeChallengeHandler>,
        metrics: Arc<MetricsRegistry>,
        table: Arc<ArcSwap<ActiveTable>>,
    ) -> Self {
        Redirect {
            https_port,
            acme,
            metrics,
            table,
        }
    }

    pub(crate) fn handle(&self, request: Request<Incoming>) -> Response<EdgeBody> {
        self.metrics
            .http_port_requests
            .fetch_add(1, Ordering::Relaxed);
        let named = match request.uri().authority() {
            Some(authority) => Some(authority.as_str()),
            None => request
                .headers()
                .get(header::HOST)
                .and_then(|value| value.to_str().ok()),
        };
        let Some(named) = named.filter(|host| !host.is_empty()) else {
            return text(StatusCode::BAD_REQUEST, "400 missing host header");
        };
        if !crate::uri::valid_host(named.as_bytes()) {
            return text(StatusCode::BAD_REQUEST, "400 invalid host header");
        }
        let host = normalized_host(strip_port(named)).into_owned();
        let path = request.uri().path();
        if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
            return match self.acme.key_authorization(&host, token) {
                Some(answer) => text(StatusCode::OK, &answer),
                None => text(StatusCode::NOT_FOUND, "404 unknown acme challenge"),
            };
        }
        let table = self.table.load();
        if !(table.has_host(&host) || table.has_host(crate::ANY_HOST)) {
            return text(StatusCode::NOT_FOUND, "404 no route for this host");
        }
        let path_and_query = request
            .uri()
            .path_and_query()
            .map(|value| value.as_str())
            .unwrap_or("/");
        let location = location(&host, self.https_port, path_and_query);
        let Ok(location) = HeaderValue::from_str(&location) else {
            return text(StatusCode::BAD_REQUEST, "400 invalid host header");
        };
        let mut response = text(StatusCode::PERMANENT_REDIRECT, "308 use https");
        response.headers_mut().insert(header::LOCATION, location);
        response
    }
}

/// `https://host[:port]/path?query`; the port only when it is not 443.
fn location(host: &str, https_port: u16, path_and_query: &str) -> String {
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if https_port == 443 {
        format!("https://{host}{path_and_query}")
    } else {
        format!("https://{host}:{https_port}{path_and_query}")
    }
}

/// `example.com:80` → `example.com`; `[::1]:80` → `[::1]`.
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|byte| byte.is_ascii_digit()) => name,
        _ => host,
    }
}

fn text(status: StatusCode, message: &str) -> Response<EdgeBody> {
    let mut response = Response::new(EdgeBody::full(Bytes::from(format!("{message}\n")), None));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_keep_host_path_and_query() {
        assert_eq!(location("a.com", 443, "/x?y=1"), "https://a.com/x?y=1");
        assert_eq!(location("a.com", 8443, "/"), "https://a.com:8443/");
        assert_eq!(location("[::1]", 443, "/"), "https://[::1]/");
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.com"), "a.com");
    }
}
