//! The plain-HTTP port: a 308 redirect to HTTPS for everything except ACME HTTP-01
//! challenges, which go to a pluggable [`AcmeChallengeHandler`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::EdgeBody;
use crate::metrics::MetricsRegistry;

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
}

impl Redirect {
    pub(crate) fn new(
        https_port: u16,
        acme: Arc<dyn AcmeChallengeHandler>,
        metrics: Arc<MetricsRegistry>,
    ) -> Self {
        Redirect {
            https_port,
            acme,
            metrics,
        }
    }

    pub(crate) fn handle(&self, request: Request<Incoming>) -> Response<EdgeBody> {
        self.metrics
            .http_port_requests
            .fetch_add(1, Ordering::Relaxed);
        let host = request
            .uri()
            .host()
            .map(str::to_string)
            .or_else(|| {
                request
                    .headers()
                    .get(header::HOST)
                    .and_then(|value| value.to_str().ok())
                    .map(|host| strip_port(host).to_string())
            })
            .filter(|host| !host.is_empty());
        let Some(host) = host else {
            return text(StatusCode::BAD_REQUEST, "400 missing host header");
        };
        let path = request.uri().path();
        if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
            return match self.acme.key_authorization(&host, token) {
                Some(answer) => text(StatusCode::OK, &answer),
                None => text(StatusCode::NOT_FOUND, "404 unknown acme challenge"),
            };
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
