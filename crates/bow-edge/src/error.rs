//! The one error type of the edge crate.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong while configuring or starting the edge.
///
/// Failures while serving a request never surface here: they become 4xx/5xx responses
/// and access-log lines.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A listener could not be bound.
    #[error(
        "cannot listen on {addr}: {source}; pick a free port or run with the privileges it needs"
    )]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },
    /// A file of the certificate store could not be read or written.
    #[error("cannot access {path}: {source}")]
    File {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A PEM file held no certificate.
    #[error("{path} holds no PEM certificate; give a file with the certificate chain, leaf first")]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// A PEM file held no usable private key.
    #[error("{path} holds no usable private key: {reason}")]
    BadPrivateKey {
        /// The key file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// The local certificate authority could not be created, loaded or used.
    #[error("local certificate authority in {path}: {reason}; delete its files to make a new one")]
    CertificateAuthority {
        /// The CA directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A leaf certificate could not be issued.
    #[error("cannot issue a certificate for {host}: {reason}")]
    Issue {
        /// The host name the certificate was for.
        host: String,
        /// What failed.
        reason: String,
    },
    /// A route table was refused.
    #[error("route {route}: {reason}")]
    InvalidRoute {
        /// The route, as `host/prefix`.
        route: String,
        /// Why it was refused.
        reason: String,
    },
    /// The configuration holds an impossible value.
    #[error("edge configuration: {0}")]
    InvalidConfig(String),
    /// rustls refused the TLS configuration.
    #[error("tls configuration refused: {0}")]
    Tls(#[from] rustls::Error),
}

/// An error and its causes, `: `-joined (hyper's own says only "client error (Connect)").
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}
