//! TLS handshakes with the edge's local CA: a rustls client (TLS 1.3 and 1.2) and curl.

mod support;

use std::sync::Arc;

use bow_edge::crypto_provider;
use rustls_pki_types::ServerName;
use support::{HOST, TestEdge, Upstream, root_store, table};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[tokio::test]
async fn rustls_client_trusting_the_local_ca_gets_through() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|_| {}).await;
    edge.edge.set_routes(table("web", &[&upstream]));

    let tls = edge.tls(&[b"h2", b"http/1.1"]).await.unwrap();
    let (_, session) = tls.get_ref();
    assert_eq!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    drop(tls);

    let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(root_store(&[&edge.ca_pem()]))
        .with_no_client_auth();
    let stream = TcpStream::connect(edge.edge.https_addr()).await.unwrap();
    let tls12 = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(HOST).unwrap(), stream)
        .await
        .unwrap();
    assert_eq!(
        tls12.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    let reply = edge.get("/hello").await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.starts_with("web.1\n"), "{}", reply.body);
}

#[tokio::test]
async fn curl_with_cacert_gets_through() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|_| {}).await;
    edge.edge.set_routes(table("web", &[&upstream]));
    let output = edge.curl(&[], "/curl").await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("web.1\n"), "{stdout}");
}
