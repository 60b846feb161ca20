//! The `edge:` section: ports, TLS, limits and timeouts of the proxy.

use crate::LoadOptions;
use crate::reader::{Reader, join};
use crate::schema::*;
use crate::yaml::{Node, NodeKind};

use super::*;

pub(super) fn default_edge(options: &LoadOptions) -> Edge {
    let (http_port, https_port) = if options.privileged {
        defaults::PRIVILEGED_PORTS
    } else {
        defaults::UNPRIVILEGED_PORTS
    };
    Edge {
        http_port,
        https_port,
        tls: Tls::SelfSigned,
        acme: None,
        hsts_max_age: defaults::HSTS_MAX_AGE,
        security_headers: Default::default(),
        max_body_size: defaults::MAX_BODY_SIZE,
        max_header_size: defaults::MAX_HEADER_SIZE,
        header_timeout: defaults::HEADER_TIMEOUT,
        body_timeout: defaults::BODY_TIMEOUT,
        upstream_timeout: defaults::UPSTREAM_TIMEOUT,
        idle_timeout: defaults::IDLE_TIMEOUT,
        max_connections: defaults::MAX_CONNECTIONS,
        otlp: None,
    }
}

pub(super) fn edge(node: &Node, path: &str, options: &LoadOptions, reader: &mut Reader) -> Edge {
    let mut edge = default_edge(options);
    let Some(fields) = reader.fields(node, path, "a mapping of edge settings", EDGE_KEYS) else {
        return edge;
    };
    if let Some((n, p)) = fields.get("http_port") {
        edge.http_port = reader.port(n, &p).unwrap_or(edge.http_port);
    }
    if let Some((n, p)) = fields.get("https_port") {
        edge.https_port = reader.port(n, &p).unwrap_or(edge.https_port);
    }
    if edge.http_port == edge.https_port {
        let span = fields
            .get("https_port")
            .or(fields.get("http_port"))
            .map_or(node.span, |(n, _)| n.span);
        reader.error(
            &join(path, "https_port"),
            span,
            format!("http_port and https_port are both {}", edge.https_port),
            Some("give the edge two different ports".to_string()),
        );
    }
    if let Some((n, p)) = fields.get("tls")
        && let Some(tls) = tls(n, &p, reader)
    {
        edge.tls = tls;
    }
    if let Some((n, p)) = fields.get("acme")
        && let Some(acme_fields) =
            reader.fields(n, &p, "a mapping with email and directory", ACME_KEYS)
    {
        let email = match acme_fields.get("email") {
            Some((n, p)) => reader.nonempty(n, &p, "an email address").filter(|email| {
                let ok = email.contains('@') && !email.contains(char::is_whitespace);
                if !ok {
                    reader.error(
                        &p,
                        n.span,
                        format!("expected an email address, found {email:?}"),
                        None,
                    );
                }
                ok
            }),
            None => {
                reader.error(
                    &p,
                    n.span,
                    "missing required key `email`",
                    Some("the ACME CA sends expiry notices there".to_string()),
                );
                None
            }
        };
        let directory = match acme_fields.get("directory") {
            Some((n, p)) => reader
                .nonempty(n, &p, "an ACME directory URL")
                .filter(|url| {
                    let ok = url.starts_with("https://") || url.starts_with("http://");
                    if !ok {
                        reader.error(
                            &p,
                            n.span,
                            format!("expected an http(s) URL, found {url:?}"),
                            None,
                        );
                    }
                    ok
                }),
            None => Some(LETS_ENCRYPT_DIRECTORY.to_string()),
        };
        let directory_ca = acme_fields
            .get("directory_ca")
            .and_then(|(n, p)| reader.nonempty(n, &p, "a PEM file of the directory's CA"));
        let challenge = match acme_fields.get("challenge") {
            Some((n, p)) => match n.scalar() {
                Some("http-01") => Some(AcmeChallenge::Http01),
                Some("tls-alpn-01") => Some(AcmeChallenge::TlsAlpn01),
                other => {
                    reader.error(
                        &p,
                        n.span,
                        format!(
                            "expected `http-01` or `tls-alpn-01`, found {}",
                            other.map_or("a non-string".to_string(), |o| format!("{o:?}"))
                        ),
                        Some(
                            "http-01 answers on the HTTP port, tls-alpn-01 on the HTTPS port"
                                .to_string(),
                        ),
                    );
                    None
                }
            },
            None => Some(AcmeChallenge::Http01),
        };
        let renew_before = match acme_fields.get("renew_before") {
            Some((n, p)) => reader.duration(n, &p).map(Some),
            None => Some(None),
        };
        if let (Some(email), Some(directory), Some(challenge), Some(renew_before)) =
            (email, directory, challenge, renew_before)
        {
            edge.acme = Some(Acme {
                email,
                directory,
                directory_ca,
                challenge,
                renew_before,
            });
        }
    }
    if edge.tls == Tls::Acme && fields.get("acme").is_none() {
        let span = fields.get("tls").map_or(node.span, |(n, _)| n.span);
        reader.error(
            &join(path, "acme"),
            span,
            "tls: acme needs an `acme:` section",
            Some("add `acme: { email: ops@example.com }`".to_string()),
        );
    }
    if let Some((n, p)) = fields.get("hsts_max_age") {
        edge.hsts_max_age = reader.duration(n, &p).unwrap_or(edge.hsts_max_age);
    }
    if let Some((n, p)) = fields.get("security_headers") {
        for (key, value) in reader
            .map(n, &p, "a mapping of header names to values")
            .unwrap_or_default()
        {
            let name = key.scalar().unwrap_or_default().to_ascii_lowercase();
            let header_path = join(&p, &name);
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token
                || ["strict-transport-security", "set-cookie", "content-length"]
                    .contains(&name.as_str())
            {
                reader.error(
                    &header_path,
                    key.span,
                    format!("{name:?} is not a security header bow can add"),
                    Some("name a response header like x-frame-options or content-security-policy (HSTS is hsts_max_age)".to_string()),
                );
                continue;
            }
            let text = if value.is_null() {
                Some(String::new())
            } else {
                reader.string(value, &header_path, "a header value (empty: not added)")
            };
            let Some(text) = text else { continue };
            if text.bytes().any(|b| b.is_ascii_control()) {
                reader.error(
                    &header_path,
                    value.span,
                    "a header value is one line of text",
                    None,
                );
                continue;
            }
            edge.security_headers.insert(name, text);
        }
    }
    if let Some((n, p)) = fields.get("otlp") {
        edge.otlp = otlp(n, &p, reader);
    }
    if let Some((n, p)) = fields.get("max_body_size") {
        edge.max_body_size = reader.size(n, &p).unwrap_or(edge.max_body_size);
    }
    if let Some((n, p)) = fields.get("max_header_size") {
        edge.max_header_size = reader.size(n, &p).unwrap_or(edge.max_header_size);
    }
    if let Some((n, p)) = fields.get("header_timeout") {
        edge.header_timeout = positive_duration(reader, n, &p).unwrap_or(edge.header_timeout);
    }
    if let Some((n, p)) = fields.get("body_timeout") {
        edge.body_timeout = positive_duration(reader, n, &p).unwrap_or(edge.body_timeout);
    }
    if let Some((n, p)) = fields.get("upstream_timeout") {
        edge.upstream_timeout = positive_duration(reader, n, &p).unwrap_or(edge.upstream_timeout);
    }
    if let Some((n, p)) = fields.get("idle_timeout") {
        edge.idle_timeout = positive_duration(reader, n, &p).unwrap_or(edge.idle_timeout);
    }
    if let Some((n, p)) = fields.get("max_connections") {
        edge.max_connections = reader
            .integer(n, &p, "a connection count", 1, 10_000_000)
            .map_or(edge.max_connections, |v| v as u32);
    }
    edge
}

fn tls(node: &Node, path: &str, reader: &mut Reader) -> Option<Tls> {
    match &node.kind {
        NodeKind::Plain(text) | NodeKind::Quoted(text) => match text.as_str() {
            "self-signed" => Some(Tls::SelfSigned),
            "acme" => Some(Tls::Acme),
            other => {
                reader.error(
                    path,
                    node.span,
                    format!("expected self-signed, acme or {{cert, key}}, found {other:?}"),
                    Some("use `tls: self-signed` for development".to_string()),
                );
                None
            }
        },
        _ => {
            let fields = reader.fields(
                node,
                path,
                "self-signed, acme or {cert, key}",
                TLS_FILE_KEYS,
            )?;
            let cert = required(&fields, "cert", "a certificate file path", reader);
            let key = required(&fields, "key", "a private key file path", reader);
            Some(Tls::Files {
                cert: cert?,
                key: key?,
            })
        }
    }
}

/// `otlp: { endpoint, sample }`.
fn otlp(node: &Node, path: &str, reader: &mut Reader) -> Option<Otlp> {
    let fields = reader.fields(node, path, "a mapping with endpoint and sample", OTLP_KEYS)?;
    let Some((n, p)) = fields.get("endpoint") else {
        reader.error(
            &join(path, "endpoint"),
            node.blame(),
            "missing `endpoint`: the collector's OTLP/HTTP receiver",
            Some(
                "add endpoint: http://127.0.0.1:4318 (spans go to <endpoint>/v1/traces)"
                    .to_string(),
            ),
        );
        return None;
    };
    let endpoint = reader.nonempty(n, &p, "an http:// or https:// URL")?;
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"));
    if rest.is_none_or(|r| r.is_empty() || r.starts_with('/') || r.contains(char::is_whitespace)) {
        reader.error(
            &p,
            n.span,
            format!("expected an http:// or https:// URL with a host, found {endpoint:?}"),
            Some("for example endpoint: http://127.0.0.1:4318".to_string()),
        );
        return None;
    }
    let sample = match fields.get("sample") {
        Some((n, p)) => {
            let text = n.scalar().unwrap_or("").trim().to_string();
            let value = match text.strip_suffix('%') {
                Some(percent) => percent.trim().parse::<f64>().ok().map(|v| v / 100.0),
                None => text.parse::<f64>().ok(),
            };
            match value {
                Some(v) if v.is_finite() && v > 0.0 && v <= 1.0 => v,
                _ => {
                    reader.error(
                        &p,
                        n.span,
                        format!("expected a share like 10% or 0.1, found {}", n.describe()),
                        Some("more than 0 and at most 100% of the sampled traces".to_string()),
                    );
                    return None;
                }
            }
        }
        None => 1.0,
    };
    Some(Otlp {
        endpoint: endpoint.trim_end_matches('/').to_string(),
        sample,
    })
}
