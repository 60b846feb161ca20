//! `TlsSource::Files`: the edge serves a certificate from PEM files and picks up new files
//! without a restart.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bow_edge::{DiscardAccessLog, Edge, EdgeConfig, EdgeHooks, NoAcmeChallenges, TlsSource};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::ServerName;
use std::sync::Arc;
use support::{HOST, tls_client_config};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A CA (PEM) and a leaf for HOST signed by it (cert PEM, key PEM).
fn ca_and_leaf() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![HOST.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    (ca_cert.pem(), leaf.pem(), leaf_key.serialize_pem())
}

fn write_pair(dir: &Path, cert: &str, key: &str) {
    // Key first, then certificate, each replaced atomically as a deploy tool would.
    std::fs::write(dir.join("key.tmp"), key).unwrap();
    std::fs::rename(dir.join("key.tmp"), dir.join("key.pem")).unwrap();
    std::fs::write(dir.join("cert.tmp"), cert).unwrap();
    std::fs::rename(dir.join("cert.tmp"), dir.join("cert.pem")).unwrap();
}

async fn presented_certificate(edge: &Edge, cas: &[&str]) -> Vec<u8> {
    let connector = TlsConnector::from(Arc::new(tls_client_config(cas, &[b"http/1.1"])));
    let stream = TcpStream::connect(edge.https_addr()).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from(HOST).unwrap(), stream)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn certificate_files_are_served_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, cert1, key1) = ca_and_leaf();
    let (ca2, cert2, key2) = ca_and_leaf();
    write_pair(dir.path(), &cert1, &key1);
    let config = EdgeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        TlsSource::Files {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        },
    );
    let hooks = EdgeHooks {
        access_log: Arc::new(DiscardAccessLog),
        acme_challenges: Arc::new(NoAcmeChallenges),
    };
    let edge = Edge::start_with(config, hooks).await.unwrap();
    assert_eq!(
        presented_certificate(&edge, &[&ca1, &ca2]).await,
        der(&cert1)
    );
    assert!(edge.ca_certificate_pem().is_none());

    write_pair(dir.path(), &cert2, &key2);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if presented_certificate(&edge, &[&ca1, &ca2]).await == der(&cert2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_key_that_does_not_fit_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert1, _) = ca_and_leaf();
    let (_, _, key2) = ca_and_leaf();
    write_pair(dir.path(), &cert1, &key2);
    let config = EdgeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        TlsSource::Files {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        },
    );
    let error = Edge::start(config)
        .await
        .err()
        .expect("a mismatched pair is refused");
    assert!(error.to_string().contains("does not fit"), "{error}");
}
