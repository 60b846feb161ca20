//! The certificates the edge serves that expire on their own: ACME certificates (their
//! records in `<state-dir>/acme`) and certificate files (`edge.tls: {cert, key}`). The local
//! CA's leaves are issued and replaced by bow itself and are not listed. Read by the metrics
//! (`bow_certificate_expiry_timestamp_seconds`), the `CertificateExpiring` alert and the
//! dashboard.

use bow_spec::Tls;

use crate::agent::Agent;

/// One certificate the edge serves.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Served {
    /// The host it is for (a file's first name).
    pub host: String,
    /// `acme` or `file`.
    pub source: &'static str,
    pub issuer: String,
    pub not_after_ms: i64,
}

/// What the edge of the applied spec serves now, by host.
pub(crate) fn served(agent: &Agent) -> Vec<Served> {
    let Some(spec) = agent.applied_spec() else {
        return Vec::new();
    };
    match &spec.edge.tls {
        Tls::Acme => bow_acme::read_records(&crate::acme::acme_dir(&agent.state_dir))
            .into_iter()
            .filter_map(|(host, record)| {
                Some(Served {
                    not_after_ms: record.not_after_ms?,
                    host,
                    source: "acme",
                    issuer: record.issuer,
                })
            })
            .collect(),
        Tls::Files { cert, .. } => std::fs::read(cert)
            .ok()
            .and_then(|pem| bow_acme::leaf_info(&pem))
            .map(|leaf| Served {
                host: leaf.names.first().cloned().unwrap_or_else(|| cert.clone()),
                source: "file",
                issuer: leaf.issuer,
                not_after_ms: leaf.not_after_ms,
            })
            .into_iter()
            .collect(),
        Tls::SelfSigned => Vec::new(),
    }
}
