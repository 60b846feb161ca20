//! Only TLS 1.2 and 1.3 are spoken: `openssl s_client -tls1_1` fails, 1.2 and 1.3 succeed.

mod support;

use support::{HOST, TestEdge, run};

async fn s_client(edge: &TestEdge, version_flag: &str) -> (bool, String) {
    let output = run(
        "openssl",
        vec![
            "s_client".into(),
            version_flag.into(),
            // Lets this OpenSSL offer TLS 1.1 at all, so that a refusal is the edge's.
            "-cipher".into(),
            "DEFAULT@SECLEVEL=0".into(),
            "-connect".into(),
            edge.edge.https_addr().to_string(),
            "-servername".into(),
            HOST.into(),
            "-CAfile".into(),
            edge.ca_file(),
            "-verify_return_error".into(),
        ],
    )
    .await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn tls_1_1_is_refused_and_1_2_and_1_3_are_accepted() {
    let edge = TestEdge::start(|_| {}).await;
    edge.edge.set_routes(support::table("web", &[]));

    let (ok, text) = s_client(&edge, "-tls1_1").await;
    assert!(!ok, "tls 1.1 handshake succeeded:\n{text}");
    // The client did offer TLS 1.1 (a ClientHello went out) and the edge answered with
    // an alert instead of a ServerHello: no cipher was ever agreed.
    assert!(text.contains("Cipher is (NONE)"), "{text}");
    assert!(
        text.contains("alert protocol version") || text.contains("alert handshake failure"),
        "the edge did not refuse with an alert:\n{text}"
    );

    for flag in ["-tls1_2", "-tls1_3"] {
        let (ok, text) = s_client(&edge, flag).await;
        assert!(ok, "{flag} handshake failed:\n{text}");
        assert!(
            text.contains("Verify return code: 0 (ok)"),
            "{flag}:\n{text}"
        );
    }
}
