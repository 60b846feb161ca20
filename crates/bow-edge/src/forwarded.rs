//! Header rewriting between client and upstream: hop-by-hop headers out, the
//! `X-Forwarded-*` and `Forwarded` headers in.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::Scheme;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers: the fixed list, every `Proxy-*` header and the headers the
/// `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let proxy_headers: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy_headers {
        headers.remove(name);
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` + `Upgrade`).
pub(crate) fn upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Puts back what an upgrade needs after hop-by-hop headers were stripped.
pub(crate) fn restore_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// HTTP/2 may split cookies over several headers; HTTP/1.1 wants one, joined by `; `.
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().count() < 2 {
        return;
    }
    let joined = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|value| value.as_bytes())
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Adds the client's address and the original host and scheme: `X-Forwarded-For` is
/// appended to, `X-Forwarded-Proto` and `X-Forwarded-Host` are replaced, and a
/// `Forwarded: for=…;proto=<proto>;host=…` element is appended.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, host: &str, proto: Scheme) {
    let client_text = client.to_string();
    let forwarded_for = match headers
        .get(&X_FORWARDED_FOR)
        .and_then(|value| value.to_str().ok())
    {
        Some(earlier) if !earlier.trim().is_empty() => format!("{earlier}, {client_text}"),
        _ => client_text,
    };
    set(headers, &X_FORWARDED_FOR, &forwarded_for);
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto.as_str()));
    set(headers, &X_FORWARDED_HOST, host);
    let node = match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let element = format!(
        "for={node};proto={};host={}",
        proto.as_str(),
        forwarded_value(host)
    );
    let forwarded = match headers
        .get(header::FORWARDED)
        .and_then(|value| value.to_str().ok())
    {
        Some(earlier) if !earlier.trim().is_empty() => format!("{earlier}, {element}"),
        _ => element,
    };
    set(headers, &header::FORWARDED, &forwarded);
}

fn set(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name.clone(), value);
    }
}

/// A `Forwarded` parameter value: a token as is, anything else quoted (RFC 7239 §4).
fn forwarded_value(value: &str) -> String {
    let token = !value.is_empty()
        && value
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte));
    if token {
        value.to_string()
    } else {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("proxy-authorization", HeaderValue::from_static("basic x"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("accept"));
    }

    #[test]
    fn forwarded_headers_name_the_client() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(
            &mut headers,
            "::1".parse().unwrap(),
            "app.example.com:8443",
            Scheme::Https,
        );
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, ::1");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "app.example.com:8443");
        assert_eq!(
            headers["forwarded"],
            "for=\"[::1]\";proto=https;host=\"app.example.com:8443\""
        );
        let mut internal = HeaderMap::new();
        add_forwarded(
            &mut internal,
            "127.0.0.1".parse().unwrap(),
            "api:5001",
            Scheme::Http,
        );
        assert_eq!(internal["x-forwarded-proto"], "http");
        assert_eq!(
            internal["forwarded"],
            "for=127.0.0.1;proto=http;host=\"api:5001\""
        );
    }

    #[test]
    fn upgrades_and_cookies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        assert_eq!(upgrade_request(&headers).unwrap(), "websocket");
        headers.append("cookie", HeaderValue::from_static("a=1"));
        headers.append("cookie", HeaderValue::from_static("b=2"));
        join_cookies(&mut headers);
        assert_eq!(headers["cookie"], "a=1; b=2");
    }
}
