//! TLS for the HTTPS listener: TLS 1.2 and 1.3 only, ALPN h2 and http/1.1, SNI, with the
//! certificate lookup behind [`CertificateSource`] (local CA, files, later ACME).

mod cert_files;
mod local_ca;

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use cert_files::CertFiles;
pub use local_ca::LocalCa;

use crate::error::EdgeError;
use crate::routes::normalize_host;
use crate::upstream::ActiveTable;

/// Where server certificates come from. The edge asks on every handshake, so
/// implementations answer from memory (issuing or reloading at most now and then).
pub trait CertificateSource: Send + Sync + fmt::Debug + 'static {
    /// The certificate for `host`: the client's SNI name when it is a routed host, `None`
    /// when the client sent no SNI or an unrouted name. `None` back fails the handshake.
    fn certificate_for(&self, host: Option<&str>) -> Option<Arc<CertifiedKey>>;

    /// The ACME TLS-ALPN-01 challenge certificate for a routed `host` (RFC 8737), while a
    /// validation of it is under way; the edge asks when a client offers only `acme-tls/1`.
    fn challenge_certificate(&self, _host: &str) -> Option<Arc<CertifiedKey>> {
        None
    }
}

/// The ALPN protocol of ACME's TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The crypto provider the edge uses everywhere: *ring*.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Bridges rustls to a [`CertificateSource`], passing on only routed host names so that
/// a client cannot make the edge mint certificates for arbitrary names.
pub(crate) struct EdgeCertResolver {
    source: Arc<dyn CertificateSource>,
    table: Arc<ArcSwap<ActiveTable>>,
}

impl EdgeCertResolver {
    pub(crate) fn new(
        source: Arc<dyn CertificateSource>,
        table: Arc<ArcSwap<ActiveTable>>,
    ) -> Self {
        EdgeCertResolver { source, table }
    }
}

impl fmt::Debug for EdgeCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeCertResolver")
            .field("source", &self.source)
            .finish()
    }
}

impl ResolvesServerCert for EdgeCertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = client_hello
            .server_name()
            .map(normalize_host)
            .filter(|host| self.table.load().has_host(host));
        // A validator offers `acme-tls/1` alone; browsers never offer it.
        let acme = client_hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        if acme {
            return self.source.challenge_certificate(host.as_deref()?);
        }
        self.source.certificate_for(host.as_deref())
    }
}

/// The server configuration: TLS 1.3 and 1.2 with *ring*'s suites (AEAD only, forward
/// secret), ALPN h2 then http/1.1, stateless session tickets.
pub(crate) fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, EdgeError> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // `acme-tls/1` last: only an ACME validator, which offers nothing else, gets it.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    // The server's order of cipher suites (strongest first) wins over the client's.
    config.ignore_client_order = true;
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}
