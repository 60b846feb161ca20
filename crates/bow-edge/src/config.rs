//! The plain configuration the edge starts from; it knows nothing of `bow.yaml`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::EdgeError;
use crate::tls::CertificateSource;

/// Everything [`crate::Edge::start`] needs. [`EdgeConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// Where the plain-HTTP listener binds (redirects and ACME challenges only).
    pub http_addr: SocketAddr,
    /// Where the HTTPS listener binds.
    pub https_addr: SocketAddr,
    /// `Strict-Transport-Security: max-age=N; includeSubDomains` on HTTPS answers; zero turns it off.
    pub hsts_max_age: Duration,
    /// Security headers every HTTPS answer gets unless the upstream sent its own (name, value):
    /// by default `X-Content-Type-Options: nosniff`, `X-Frame-Options: SAMEORIGIN`,
    /// `Referrer-Policy: strict-origin-when-cross-origin`.
    pub security_headers: Vec<(String, String)>,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_size: u64,
    /// Largest request head (request line and headers) accepted, in bytes.
    pub max_header_size: usize,
    /// Time a client has to complete the TLS handshake and each request head (slowloris guard).
    pub header_timeout: Duration,
    /// How long a client may keep a request waiting on itself: between two reads of its
    /// request body (then 408), and between two writes of a response it does not take (then
    /// the connection closes).
    pub body_timeout: Duration,
    /// A connection with no request in flight and no traffic for this long is closed (looked
    /// at every quarter of it, so within 1.25× of it).
    pub idle_timeout: Duration,
    /// Connections served at once over both listeners; further ones are closed at once.
    pub max_connections: usize,
    /// How long [`crate::Edge::drain`] and [`crate::Edge::shutdown`] wait for in-flight requests.
    pub drain_timeout: Duration,
    /// How long connecting to an upstream instance may take before another one is tried.
    pub upstream_connect_timeout: Duration,
    /// How long an upstream may keep a request waiting on itself: to take the request, to
    /// send its response head once it has the request (else 504), and between two reads of
    /// its response body (else the connection closes). Time spent waiting for the client's
    /// body does not count.
    pub upstream_timeout: Duration,
    /// Connections the edge keeps to one upstream instance at most, in use or idle (a
    /// WebSocket tunnel no longer counts); requests beyond it wait for one to be free.
    pub max_upstream_connections: usize,
    /// An idle connection to an instance unused for this long is closed (looked at on a
    /// timer every half of it, so within 1.5× of it).
    pub upstream_idle_timeout: Duration,
    /// Where server certificates come from.
    pub tls: TlsSource,
    /// The scheme clients used, as told to upstreams in `X-Forwarded-Proto` and `Forwarded`.
    pub scheme: Scheme,
    /// Where the listening sockets come from and are kept (an upgrade hands them to the next
    /// process); `None`: bound by the edge and closed with it.
    pub sockets: Option<crate::Sockets>,
    /// Per-route request counters and latency histograms (on by default; off only to measure
    /// what they cost: bench/observability.sh).
    pub route_metrics: bool,
}

/// The scheme a proxied request came in with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// The edge's HTTPS listener.
    Https,
    /// A plain-HTTP [`crate::ServiceListener`] (internal traffic between services).
    Http,
}

impl Scheme {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

impl EdgeConfig {
    /// The default of [`EdgeConfig::max_upstream_connections`].
    pub const DEFAULT_MAX_UPSTREAM_CONNECTIONS: usize = 256;

    /// A configuration with the documented defaults: HSTS one year, bodies up to 16 MiB,
    /// heads up to 32 KiB, header timeout 10 s, body timeout 60 s, idle timeout 75 s,
    /// 10 000 connections, drain timeout 30 s, upstream connect timeout 5 s, upstream
    /// timeout 60 s, 256 connections per upstream instance, idle ones closed after 60 s.
    pub fn new(http_addr: SocketAddr, https_addr: SocketAddr, tls: TlsSource) -> Self {
        EdgeConfig {
            http_addr,
            https_addr,
            hsts_max_age: Duration::from_secs(365 * 24 * 3600),
            security_headers: default_security_headers(),
            max_body_size: 16 * 1024 * 1024,
            max_header_size: 32 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(75),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(30),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            max_upstream_connections: Self::DEFAULT_MAX_UPSTREAM_CONNECTIONS,
            upstream_idle_timeout: Duration::from_secs(60),
            tls,
            scheme: Scheme::Https,
            sockets: None,
            route_metrics: true,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), EdgeError> {
        let positive = [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
            ("idle_timeout", self.idle_timeout),
            ("upstream_connect_timeout", self.upstream_connect_timeout),
            ("upstream_timeout", self.upstream_timeout),
            ("upstream_idle_timeout", self.upstream_idle_timeout),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(EdgeError::InvalidConfig(format!(
                    "{name} must be longer than zero"
                )));
            }
        }
        if self.max_connections == 0 || self.max_connections > u32::MAX as usize / 2 {
            return Err(EdgeError::InvalidConfig(format!(
                "max_connections must be between 1 and {}, found {}",
                u32::MAX / 2,
                self.max_connections
            )));
        }
        if self.max_upstream_connections == 0 {
            return Err(EdgeError::InvalidConfig(
                "max_upstream_connections must be at least 1".to_string(),
            ));
        }
        if self.max_header_size < 1024 || self.max_header_size > u32::MAX as usize {
            return Err(EdgeError::InvalidConfig(format!(
                "max_header_size must be at least 1024 bytes, found {}",
                self.max_header_size
            )));
        }
        Ok(())
    }
}

/// Where the HTTPS listener's certificates come from.
#[derive(Clone)]
pub enum TlsSource {
    /// bow's local certificate authority: made once in `ca_dir` (key mode 0600), then a leaf
    /// certificate per routed host, issued on first use and cached.
    SelfSigned {
        /// Directory of `ca.pem` and `ca-key.pem`.
        ca_dir: PathBuf,
    },
    /// A certificate chain and key from PEM files, reloaded when either file changes.
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// Any other source, such as an ACME client.
    Custom(Arc<dyn CertificateSource>),
}

impl fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSource::SelfSigned { ca_dir } => f
                .debug_struct("SelfSigned")
                .field("ca_dir", ca_dir)
                .finish(),
            TlsSource::Files { cert, key } => f
                .debug_struct("Files")
                .field("cert", cert)
                .field("key", key)
                .finish(),
            TlsSource::Custom(source) => f.debug_tuple("Custom").field(source).finish(),
        }
    }
}

/// The security headers the edge adds unless told otherwise (safe for any site: they forbid
/// MIME sniffing, framing by other origins and full referrers to other origins).
pub fn default_security_headers() -> Vec<(String, String)> {
    [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "SAMEORIGIN"),
        ("referrer-policy", "strict-origin-when-cross-origin"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect()
}
