//! One JSON POST to a webhook URL (`alerts.webhook`): HTTP/1.1 over TCP, or TLS with the
//! system's trust store (`/etc/ssl/certs/ca-certificates.crt`), with a time limit. The URL may
//! carry a token in its path (Slack's do): it is never logged whole, only its scheme and host.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The longest one delivery may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Where Debian keeps the trusted roots.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A parsed `http(s)://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, `/` at least.
    pub target: String,
}

impl Url {
    pub(crate) fn parse(text: &str) -> Result<Url, String> {
        let (tls, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err("the webhook is not an http:// or https:// URL".to_string());
        };
        let (authority, target) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or("the webhook's IPv6 host has no closing bracket")?;
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse().map_err(|_| "bad port in the webhook URL")?,
                None => default_port,
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_string(),
                    port.parse().map_err(|_| "bad port in the webhook URL")?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err("the webhook URL has no host".to_string());
        }
        Ok(Url {
            tls,
            host,
            port,
            target: target.to_string(),
        })
    }

    /// `https://host:port`, without the path that may hold a token.
    pub(crate) fn shown(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }
}

/// POSTs `body` (JSON) to `url`; `Ok` on any 2xx answer.
pub(crate) async fn post_json(url: &Url, body: Vec<u8>) -> Result<u16, String> {
    match tokio::time::timeout(TIMEOUT, post(url, body)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {}s", TIMEOUT.as_secs())),
    }
}

async fn post(url: &Url, body: Vec<u8>) -> Result<u16, String> {
    let stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let host_header = if (url.tls && url.port == 443) || (!url.tls && url.port == 80) {
        url.host.clone()
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let request = Request::post(url.target.as_str())
        .header(header::HOST, host_header)
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("bow/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    if url.tls {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config()?));
        let name = rustls_pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| format!("bad host name: {e}"))?;
        let tls = connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(TokioIo::new(tls), request).await
    } else {
        send(TokioIo::new(stream), request).await
    }
}

async fn send<T>(io: T, request: Request<Full<Bytes>>) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status().as_u16();
    // Read the answer through, so the receiver sees its response taken.
    let _ = response.into_body().collect().await;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!("the receiver answered {status}"))
    }
}

fn client_config() -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certificates = rustls_pki_types::CertificateDer::pem_file_iter(SYSTEM_ROOTS)
        .map_err(|e| format!("cannot read {SYSTEM_ROOTS}: {e}"))?;
    for certificate in certificates.flatten() {
        let _ = roots.add(certificate);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_host_port_and_target() {
        let url = Url::parse("https://hooks.example.com/services/T0/B0/secret?x=1").unwrap();
        assert_eq!(
            url,
            Url {
                tls: true,
                host: "hooks.example.com".into(),
                port: 443,
                target: "/services/T0/B0/secret?x=1".into(),
            }
        );
        assert_eq!(url.shown(), "https://hooks.example.com:443");
        let url = Url::parse("http://127.0.0.1:9999").unwrap();
        assert_eq!((url.port, url.target.as_str()), (9999, "/"));
        let url = Url::parse("http://[::1]:81/x").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 81));
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("http://:80/").is_err());
        assert!(Url::parse("http://h:port/").is_err());
    }
}
