//! Header rewriting between client and upstream, on the bytes of the heads: hop-by-hop
//! headers out (RFC 9110 §7.6.1: the fixed list, every `Proxy-*` header and the headers
//! `Connection` names, never one the edge decides), `Host`, the body's framing and the
//! `X-Forwarded-*` and `Forwarded` headers in, each written by the edge itself.

use std::net::IpAddr;
use std::sync::Mutex;

use crate::config::Scheme;
use crate::trace::{TraceContext, write_traceparent};

/// Headers that describe one connection, never forwarded.
const HOP_BY_HOP: [&[u8]; 6] = [
    b"connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];

/// Whether `name` is a hop-by-hop header of the fixed list or a `Proxy-*` one.
fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop))
        || (name.len() > 6 && name[..6].eq_ignore_ascii_case(b"proxy-"))
}

/// The comma-separated tokens of a header value, trimmed, empty ones left out.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&byte| byte == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// Headers the edge itself decides or writes for the upstream (framing, routing, forwarding,
/// upgrades): a `Connection` header may not name them. A request that does is refused
/// ([`crate::request_head`]), and in a response the name is ignored.
const DECIDED: [&[u8]; 8] = [
    b"content-length",
    b"transfer-encoding",
    b"host",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"forwarded",
    b"upgrade",
];

/// Whether `name` is a header the edge decides ([`DECIDED`]).
pub(crate) fn decides(name: &[u8]) -> bool {
    DECIDED
        .iter()
        .any(|decided| name.eq_ignore_ascii_case(decided))
}

/// Whether a `Connection` value names headers besides the options every connection has.
fn names_headers(connection: &[u8]) -> bool {
    tokens(connection).any(|token| {
        !(token.eq_ignore_ascii_case(b"close")
            || token.eq_ignore_ascii_case(b"keep-alive")
            || token.eq_ignore_ascii_case(b"upgrade"))
    })
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6). `+5`, `5, 5` or ` 0x5` are refused,
/// as a peer reading them another way would frame the body differently (request smuggling).
pub(crate) fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Decides which of a head's headers are hop-by-hop: the fixed list, `Proxy-*`, and what
/// its `Connection` headers name.
#[derive(Clone, Copy)]
pub(crate) struct HopByHop<'h, I> {
    headers: I,
    /// Some `Connection` value names other headers (rare): those are looked up in `headers`.
    listed: bool,
    _head: std::marker::PhantomData<&'h [u8]>,
}

impl<'h, I> HopByHop<'h, I>
where
    I: Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
{
    pub(crate) fn new(headers: I) -> Self {
        let listed = headers
            .clone()
            .any(|(name, value)| name.eq_ignore_ascii_case(b"connection") && names_headers(value));
        HopByHop {
            headers,
            listed,
            _head: std::marker::PhantomData,
        }
    }

    pub(crate) fn contains(&self, name: &[u8]) -> bool {
        if is_hop_by_hop(name) {
            return true;
        }
        self.listed
            && !decides(name)
            && self.headers.clone().any(|(header, value)| {
                header.eq_ignore_ascii_case(b"connection")
                    && tokens(value).any(|token| token.eq_ignore_ascii_case(name))
            })
    }
}

/// What the forwarding headers say about one client connection, made once per connection.
#[derive(Debug)]
pub(crate) struct ClientForwarding {
    /// The client's address as `X-Forwarded-For` names it.
    address: String,
    /// The client as the `for=` node of a `Forwarded` element.
    node: String,
    /// The host last asked for on the connection and its `Forwarded` element.
    last: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
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
            address: client.to_string(),
            node,
            last: Mutex::new(None),
            proto,
        }
    }

    /// Appends `for=…;proto=<scheme>;host=…` for `host`; remembered, as a connection keeps to
    /// one host.
    fn write_element(&self, out: &mut Vec<u8>, host: &[u8]) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some((last_host, element)) = &*last
            && last_host == host
        {
            out.extend_from_slice(element);
            return;
        }
        let mut element = Vec::new();
        element.extend_from_slice(b"for=");
        element.extend_from_slice(self.node.as_bytes());
        element.extend_from_slice(b";proto=");
        element.extend_from_slice(self.proto.as_str().as_bytes());
        element.extend_from_slice(b";host=");
        push_forwarded_value(&mut element, host);
        out.extend_from_slice(&element);
        *last = Some((host.to_vec(), element));
    }
}

/// A `Forwarded` parameter value: a token as is, anything else quoted (RFC 7239 §4).
fn push_forwarded_value(out: &mut Vec<u8>, value: &[u8]) {
    let token = !value.is_empty()
        && value
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(byte));
    if token {
        out.extend_from_slice(value);
        return;
    }
    out.push(b'"');
    for &byte in value {
        if byte == b'\\' || byte == b'"' {
            out.push(b'\\');
        }
        out.push(byte);
    }
    out.push(b'"');
}

/// What goes into the head of a request sent upstream besides the client's headers.
pub(crate) struct UpstreamHead<'a> {
    pub(crate) method: &'a str,
    /// In origin form (`/path?query`).
    pub(crate) target: &'a [u8],
    /// The host the client asked for, as it named it (with a port, if it gave one).
    pub(crate) host: &'a [u8],
    /// The protocol of an HTTP/1.1 upgrade the client asked for.
    pub(crate) upgrade: Option<&'a [u8]>,
    /// How the body is framed, as the edge decided.
    pub(crate) body: UpstreamBody,
    pub(crate) forwarding: &'a ClientForwarding,
}

/// The framing of a request body as it goes upstream, written by the edge (the client's
/// `Content-Length` and `Transfer-Encoding` headers never go through as they are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UpstreamBody {
    /// No body, and no framing header.
    None,
    /// `Content-Length` (zero included, when the client declared it).
    Length(u64),
    /// Chunked: the client's transfer codings before its final `chunked` are kept (`gzip,
    /// chunked`), as the edge only takes the chunked coding off and puts it back on.
    Chunked,
}

/// Writes the request head for the upstream: the request line, `Host`, the client's
/// headers without hop-by-hop ones, `Expect` (the edge answers it) and its own framing,
/// `Cookie` headers joined into one (as HTTP/2 may split them), `X-Forwarded-For` and
/// `Forwarded` appended to, `X-Forwarded-Proto` and `X-Forwarded-Host` replaced, and
/// `traceparent` the edge's own span of the client's trace or of a new one ([`crate::trace`]);
/// `X-Bow-*` headers are dropped (the edge writes them for a signed-in user).
/// Returns the edge's span.
pub(crate) fn write_upstream_head<'h, I>(
    out: &mut Vec<u8>,
    head: &UpstreamHead<'_>,
    headers: I,
) -> TraceContext
where
    I: Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
{
    let hop = HopByHop::new(headers.clone());
    out.clear();
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(head.host);
    out.extend_from_slice(b"\r\n");
    let mut forwarded_for = false;
    let mut forwarded = false;
    let mut cookies = 0;
    // The client's `traceparent`, when it sent exactly one.
    let mut traceparent: Option<Option<&[u8]>> = None;
    for (name, value) in headers.clone() {
        if name.eq_ignore_ascii_case(b"traceparent") {
            traceparent = Some(match traceparent {
                None => Some(value),
                Some(_) => None,
            });
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            forwarded_for |= !value.trim_ascii().is_empty();
            continue;
        }
        if name.eq_ignore_ascii_case(b"forwarded") {
            forwarded |= !value.trim_ascii().is_empty();
            continue;
        }
        if name.eq_ignore_ascii_case(b"cookie") {
            cookies += 1;
            continue;
        }
        if name.len() > 6 && name[..6].eq_ignore_ascii_case(b"x-bow-") {
            // The identity a sign-in gives (`X-Bow-User`) is the edge's to write, never a
            // client's.
            continue;
        }
        let replaced = name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"x-forwarded-proto")
            || name.eq_ignore_ascii_case(b"x-forwarded-host")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"content-length");
        if replaced || hop.contains(name) {
            continue;
        }
        push_header(out, name, value);
    }
    if cookies > 0 {
        out.extend_from_slice(b"cookie: ");
        join_values(out, headers.clone(), b"cookie", b"; ");
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if forwarded_for {
        join_values(out, headers.clone(), b"x-forwarded-for", b", ");
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(head.forwarding.address.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(head.forwarding.proto.as_str().as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-host: ");
    out.extend_from_slice(head.host);
    out.extend_from_slice(b"\r\nforwarded: ");
    if forwarded {
        join_values(out, headers.clone(), b"forwarded", b", ");
        out.extend_from_slice(b", ");
    }
    head.forwarding.write_element(out, head.host);
    out.extend_from_slice(b"\r\n");
    let trace = write_traceparent(out, traceparent.flatten());
    if let Some(protocol) = head.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: ");
        out.extend_from_slice(protocol);
        out.extend_from_slice(b"\r\n");
    }
    match head.body {
        UpstreamBody::None => {}
        UpstreamBody::Length(length) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        UpstreamBody::Chunked => {
            out.extend_from_slice(b"transfer-encoding: ");
            for (name, value) in headers {
                if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    for coding in tokens(value) {
                        if !coding.eq_ignore_ascii_case(b"chunked") {
                            out.extend_from_slice(coding);
                            out.extend_from_slice(b", ");
                        }
                    }
                }
            }
            out.extend_from_slice(b"chunked\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    trace
}

/// `name: value\r\n`.
pub(crate) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The non-blank values of every `name` header, joined by `separator`.
fn join_values<'h, I>(out: &mut Vec<u8>, headers: I, name: &[u8], separator: &[u8])
where
    I: Iterator<Item = (&'h [u8], &'h [u8])>,
{
    let mut first = true;
    for (header, value) in headers {
        let value = value.trim_ascii();
        if !header.eq_ignore_ascii_case(name) || value.is_empty() {
            continue;
        }
        if !first {
            out.extend_from_slice(separator);
        }
        out.extend_from_slice(value);
        first = false;
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` + `Upgrade`),
/// when it is `websocket`: the only upgrade passed on. Others (`h2c` above all, which would
/// let a client talk to the upstream past the edge's routing) are dropped with the
/// hop-by-hop headers, and the request goes on as a plain one.
pub(crate) fn upgrade_request<'h, I>(headers: I) -> Option<&'h [u8]>
where
    I: Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
{
    let asks = headers.clone().any(|(name, value)| {
        name.eq_ignore_ascii_case(b"connection")
            && tokens(value).any(|token| token.eq_ignore_ascii_case(b"upgrade"))
    });
    if !asks {
        return None;
    }
    headers
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"upgrade"))
        .map(|(_, value)| value.trim_ascii())
        .find(|value| !value.is_empty())
        .filter(|protocol| protocol.eq_ignore_ascii_case(b"websocket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)], upstream: &UpstreamHead<'_>) -> String {
        let list: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(name, value)| (name.as_bytes(), value.as_bytes()))
            .collect();
        let mut out = Vec::new();
        write_upstream_head(&mut out, upstream, list.iter().copied());
        // The edge's traceparent has a random span id: left out here, checked on its own.
        String::from_utf8(out)
            .unwrap()
            .split_inclusive("\r\n")
            .filter(|line| !line.starts_with("traceparent: "))
            .collect()
    }

    #[test]
    fn the_clients_trace_goes_on_in_one_traceparent_of_the_edge() {
        let client = ClientForwarding::new("10.1.2.3".parse().unwrap(), Scheme::Https);
        let upstream = UpstreamHead {
            method: "GET",
            target: b"/",
            host: b"app.example.com",
            upgrade: None,
            body: UpstreamBody::None,
            forwarding: &client,
        };
        let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let write = |headers: &[(&[u8], &[u8])]| {
            let mut out = Vec::new();
            let trace = write_upstream_head(&mut out, &upstream, headers.iter().copied());
            let text = String::from_utf8(out).unwrap();
            let lines: Vec<String> = text
                .lines()
                .filter_map(|line| line.strip_prefix("traceparent: "))
                .map(str::to_string)
                .collect();
            assert_eq!(lines.len(), 1, "{text}");
            assert!(text.contains("tracestate: vendor=1\r\n"), "{text}");
            (trace.to_hex(), lines[0].clone())
        };
        let (trace, line) = write(&[
            (b"traceparent", sent.as_bytes()),
            (b"tracestate", b"vendor=1"),
        ]);
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(line.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(
            line.ends_with("-01") && !line.contains("00f067aa0ba902b7"),
            "{line}"
        );
        // Two traceparent headers are no trace to continue: a new one starts.
        let (trace, line) = write(&[
            (b"traceparent", sent.as_bytes()),
            (b"Traceparent", sent.as_bytes()),
            (b"tracestate", b"vendor=1"),
        ]);
        assert_ne!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(line.contains(&trace), "{line}");
    }

    #[test]
    fn hop_by_hop_headers_go_and_forwarding_headers_come() {
        let client = ClientForwarding::new("10.1.2.3".parse().unwrap(), Scheme::Https);
        let upstream = UpstreamHead {
            method: "GET",
            target: b"/a?b=1",
            host: b"app.example.com",
            upgrade: None,
            body: UpstreamBody::None,
            forwarding: &client,
        };
        let text = head(
            &[
                ("Host", "app.example.com"),
                ("Connection", "keep-alive, X-Secret"),
                ("X-Secret", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authorization", "basic x"),
                ("TE", "trailers"),
                ("Expect", "100-continue"),
                ("X-Forwarded-Proto", "http"),
                ("Accept", "*/*"),
            ],
            &upstream,
        );
        assert_eq!(
            text,
            "GET /a?b=1 HTTP/1.1\r\nhost: app.example.com\r\nAccept: */*\r\n\
             x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: app.example.com\r\n\
             forwarded: for=10.1.2.3;proto=https;host=app.example.com\r\n\r\n"
        );
    }

    #[test]
    fn earlier_proxies_are_kept_and_cookies_joined() {
        let client = ClientForwarding::new("::1".parse().unwrap(), Scheme::Https);
        let upstream = UpstreamHead {
            method: "POST",
            target: b"/",
            host: b"app.example.com:8443",
            upgrade: None,
            body: UpstreamBody::Chunked,
            forwarding: &client,
        };
        let text = head(
            &[
                ("x-forwarded-for", "10.0.0.1"),
                ("forwarded", "for=1.1.1.1"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
                ("content-length", "5"),
            ],
            &upstream,
        );
        assert!(text.contains("\r\ncookie: a=1; b=2\r\n"), "{text}");
        assert!(
            text.contains("\r\nx-forwarded-for: 10.0.0.1, ::1\r\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "\r\nforwarded: for=1.1.1.1, for=\"[::1]\";proto=https;host=\"app.example.com:8443\"\r\n"
            ),
            "{text}"
        );
        assert!(!text.contains("content-length"), "{text}");
        assert!(
            text.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{text}"
        );
        // The element is remembered per connection and made anew for another host.
        let other = UpstreamHead {
            host: b"b.example.com",
            body: UpstreamBody::None,
            ..upstream
        };
        assert!(
            head(&[], &other)
                .contains("forwarded: for=\"[::1]\";proto=https;host=b.example.com\r\n")
        );
    }

    #[test]
    fn upgrades_are_asked_with_connection_and_upgrade() {
        let list: Vec<(&[u8], &[u8])> = vec![
            (b"Connection", b"keep-alive, Upgrade"),
            (b"Upgrade", b"websocket"),
        ];
        assert_eq!(
            upgrade_request(list.iter().copied()),
            Some(&b"websocket"[..])
        );
        let list: Vec<(&[u8], &[u8])> = vec![(b"Upgrade", b"websocket")];
        assert_eq!(upgrade_request(list.iter().copied()), None);
        let client = ClientForwarding::new("10.1.2.3".parse().unwrap(), Scheme::Http);
        let upstream = UpstreamHead {
            method: "GET",
            target: b"/ws",
            host: b"a",
            upgrade: Some(b"websocket"),
            body: UpstreamBody::None,
            forwarding: &client,
        };
        let text = head(
            &[("Connection", "Upgrade"), ("Upgrade", "websocket")],
            &upstream,
        );
        assert!(
            text.contains("\r\nconnection: upgrade\r\nupgrade: websocket\r\n"),
            "{text}"
        );
        assert_eq!(text.matches("pgrade").count(), 2, "{text}");
    }

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(content_length(b"42"), Some(42));
        assert_eq!(content_length(b" 0 "), Some(0));
        for bad in [
            &b"+5"[..],
            b"-1",
            b"5, 5",
            b"",
            b"0x5",
            b"1e3",
            b"99999999999999999999",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn hop_by_hop_lookup_covers_what_connection_names() {
        let list: Vec<(&[u8], &[u8])> = vec![(b"connection", b"close, x-private")];
        let hop = HopByHop::new(list.iter().copied());
        assert!(hop.contains(b"X-Private"));
        assert!(hop.contains(b"proxy-connection"));
        assert!(!hop.contains(b"content-type"));
        assert!(!hop.contains(b"proxy"));
    }
}
