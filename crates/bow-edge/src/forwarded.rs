//! Header rewriting between client and upstream: hop-by-hop headers out, the
//! `X-Forwarded-*` and `Forwarded` headers in.

use std::net::IpAddr;
use std::sync::Mutex;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::Scheme;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1); with them go
/// every `Proxy-*` header (such as `Proxy-Connection`) and the headers `Connection` names.
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers: the fixed list, every `Proxy-*` header and the headers the
/// `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests and responses carry none: one pass over the names tells.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // What `Connection` lists goes too. Usually it is one value (`keep-alive`, `close`):
    // that needs no list of names, and removing by `&str` parses each name on the stack.
    let (first, more) = {
        let mut values = headers.get_all(header::CONNECTION).iter();
        (values.next().cloned(), values.next().is_some())
    };
    if more {
        let listed: Vec<HeaderValue> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        for value in &listed {
            remove_listed(headers, value);
        }
    } else if let Some(value) = first {
        remove_listed(headers, &value);
    }
    while let Some(name) = headers.keys().find(|name| is_hop_by_hop(name)).cloned() {
        headers.remove(name);
    }
}

/// Removes the headers a `Connection` value names.
fn remove_listed(headers: &mut HeaderMap, connection: &HeaderValue) {
    let Ok(names) = connection.to_str() else {
        return;
    };
    for name in names.split(',') {
        let name = name.trim();
        if !name.is_empty() {
            headers.remove(name);
        }
    }
}

/// Whether `name` is one of [`HOP_BY_HOP`] or a `Proxy-*` header.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-")
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

/// What the forwarding headers say about one client connection, made once per connection.
#[derive(Debug)]
pub(crate) struct ClientForwarding {
    /// The client's address as `X-Forwarded-For` names it.
    address: HeaderValue,
    /// The client as the `for=` node of a `Forwarded` element.
    node: String,
    /// The host last asked for on the connection and its `Forwarded` element.
    last: Mutex<Option<(HeaderValue, HeaderValue)>>,
    /// The scheme the client used (`https` at the edge, `http` at a service listener).
    proto: Scheme,
}

impl ClientForwarding {
    pub(crate) fn new(client: IpAddr, proto: Scheme) -> Self {
        let node = match client {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        ClientForwarding {
            address: HeaderValue::from_str(&client.to_string())
                .expect("an ip address is a header value"),
            node,
            last: Mutex::new(None),
            proto,
        }
    }

    /// `for=…;proto=<scheme>;host=…` for `host`; remembered, as a connection keeps to one host.
    fn element(&self, host: &HeaderValue) -> Option<HeaderValue> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some((last_host, element)) = &*last
            && last_host == host
        {
            return Some(element.clone());
        }
        let text = format!(
            "for={};proto={};host={}",
            self.node,
            self.proto.as_str(),
            forwarded_value(host.to_str().ok()?)
        );
        let element = HeaderValue::from_str(&text).ok()?;
        *last = Some((host.clone(), element.clone()));
        Some(element)
    }
}

/// Adds the client's address and the original host and scheme: `X-Forwarded-For` is
/// appended to, `X-Forwarded-Proto` and `X-Forwarded-Host` are replaced, and a
/// `Forwarded: for=…;proto=<scheme>;host=…` element is appended.
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    client: &ClientForwarding,
    host: &HeaderValue,
) {
    match earlier(headers, &X_FORWARDED_FOR) {
        Some(earlier) => {
            let client_text = client.address.to_str().unwrap_or_default();
            set(
                headers,
                &X_FORWARDED_FOR,
                &format!("{earlier}, {client_text}"),
            );
        }
        None => {
            headers.insert(&X_FORWARDED_FOR, client.address.clone());
        }
    }
    headers.insert(
        &X_FORWARDED_PROTO,
        HeaderValue::from_static(client.proto.as_str()),
    );
    headers.insert(&X_FORWARDED_HOST, host.clone());
    let Some(element) = client.element(host) else {
        return;
    };
    match earlier(headers, &header::FORWARDED) {
        Some(earlier) => {
            let element = element.to_str().unwrap_or_default();
            set(
                headers,
                &header::FORWARDED,
                &format!("{earlier}, {element}"),
            );
        }
        None => {
            headers.insert(header::FORWARDED, element);
        }
    }
}

/// A forwarding header's value from an earlier proxy, when there is a non-blank one.
fn earlier(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.trim().is_empty())
        .map(str::to_string)
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
        let client = ClientForwarding::new("::1".parse().unwrap(), Scheme::Https);
        let host = HeaderValue::from_static("app.example.com:8443");
        add_forwarded(&mut headers, &client, &host);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, ::1");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "app.example.com:8443");
        assert_eq!(
            headers["forwarded"],
            "for=\"[::1]\";proto=https;host=\"app.example.com:8443\""
        );
        // The next request on the connection, to another host, with no earlier proxy.
        let mut headers = HeaderMap::new();
        add_forwarded(
            &mut headers,
            &client,
            &HeaderValue::from_static("b.example.com"),
        );
        assert_eq!(headers["x-forwarded-for"], "::1");
        assert_eq!(
            headers["forwarded"],
            "for=\"[::1]\";proto=https;host=b.example.com"
        );
        let v4 = ClientForwarding::new("10.1.2.3".parse().unwrap(), Scheme::Https);
        let mut headers = HeaderMap::new();
        headers.insert("forwarded", HeaderValue::from_static("for=1.1.1.1"));
        add_forwarded(
            &mut headers,
            &v4,
            &HeaderValue::from_static("b.example.com"),
        );
        assert_eq!(
            headers["forwarded"],
            "for=1.1.1.1, for=10.1.2.3;proto=https;host=b.example.com"
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
