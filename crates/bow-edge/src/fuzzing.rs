//! Entry points for the fuzz targets (`fuzz/`, `scripts/fuzz.sh`): each runs one of the
//! edge's parsers on arbitrary bytes and asserts what must hold whatever the input, so a
//! fuzzer finds both panics and wrong decisions. Not an API: nothing else calls these.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;

use bytes::BytesMut;

use crate::client::{BodyDecoder, Decoded, Framing};
use crate::config::Scheme;
use crate::forwarded::ClientForwarding;
use crate::request_head::{HeadBuffers, read_request_head};
use crate::routes::{Backend, Endpoint, Route, RouteTable};
use crate::uri::normalize_path;

/// The request-head limit the fuzz targets use (the default `max_header_size`).
const HEAD_LIMIT: usize = 32 * 1024;

/// The HTTP/1.1 request-head parser and the body framing it decides. For a head the edge
/// takes: the head it writes for the upstream is one a strict parser reads whole, with
/// exactly the framing the edge decided (one `Content-Length` or a final `chunked`, never
/// both), `Host` once, and the normalised path; the body after the head is then taken off
/// with the decided framing, and nothing it yields is longer than what came.
pub fn request_head(input: &[u8]) {
    let forwarding = ClientForwarding::new(IpAddr::V4(Ipv4Addr::LOCALHOST), Scheme::Https);
    let mut buffers = HeadBuffers::default();
    let Ok(Some((length, facts))) = read_request_head(input, HEAD_LIMIT, &forwarding, &mut buffers)
    else {
        return;
    };
    assert!(length <= input.len() && length <= HEAD_LIMIT);
    // The path routing matches is in normal form already.
    assert_eq!(
        normalize_path(&buffers.path).as_deref(),
        Ok(buffers.path.as_str()),
        "the routed path is not normal"
    );
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut upstream = httparse::Request::new(&mut headers);
    let parsed = upstream.parse(&buffers.upstream);
    assert!(
        matches!(parsed, Ok(httparse::Status::Complete(n)) if n == buffers.upstream.len()),
        "the upstream head does not parse whole: {parsed:?}\n{}",
        String::from_utf8_lossy(&buffers.upstream)
    );
    let target = upstream.path.unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    assert_eq!(
        path, buffers.path,
        "the upstream gets another path than was routed"
    );
    let count = |name: &str| {
        upstream
            .headers
            .iter()
            .filter(|header| header.name.eq_ignore_ascii_case(name))
            .count()
    };
    assert!(count("host") == 1, "host headers: {}", count("host"));
    let lengths = count("content-length");
    let encodings = count("transfer-encoding");
    assert!(lengths <= 1 && encodings <= 1 && lengths + encodings <= 1);
    match facts.body {
        Framing::Chunked => assert_eq!(encodings, 1, "a chunked body without its coding"),
        Framing::Length(_) => assert_eq!(lengths, 1, "a body without its length"),
        _ => assert_eq!(encodings, 0),
    }
    let mut body = BytesMut::from(&input[length..]);
    let available = body.len();
    let mut decoder = BodyDecoder::new(facts.body);
    let mut taken = 0;
    while let Ok(Decoded::Data(data)) = decoder.decode(&mut body) {
        taken += data.len();
    }
    assert!(taken <= available);
}

/// The chunked decoder: fed the same bytes whole or in pieces (the first byte of the input
/// picks where they are cut), it yields the same body and the same verdict; the data it
/// yields is never more than the bytes it was given.
pub fn chunked_body(input: &[u8]) {
    let Some((&cut, bytes)) = input.split_first() else {
        return;
    };
    let whole = decode_chunked(bytes, usize::MAX);
    let pieces = decode_chunked(bytes, usize::from(cut % 16) + 1);
    assert_eq!(whole, pieces, "the verdict depends on how the bytes arrive");
    if let Ok((body, _)) = &whole {
        assert!(body.len() <= bytes.len());
    }
}

/// A chunked body fed `piece` bytes at a time: its data and whether it ended, or the error.
fn decode_chunked(bytes: &[u8], piece: usize) -> Result<(Vec<u8>, bool), &'static str> {
    let mut decoder = BodyDecoder::new(Framing::Chunked);
    let mut buffer = BytesMut::new();
    let mut body = Vec::new();
    let mut rest = bytes;
    loop {
        match decoder.decode(&mut buffer)? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::End => return Ok((body, true)),
            Decoded::More if rest.is_empty() => return Ok((body, false)),
            Decoded::More => {
                let (next, after) = rest.split_at(piece.min(rest.len()));
                buffer.extend_from_slice(next);
                rest = after;
            }
        }
    }
}

/// The path normaliser and the route matcher: normalising is idempotent and the normal form
/// is refused by nothing; a path and its normal form go to the same route; a normal path
/// has no dot segment, no raw `\` and no escape of an unreserved character; and a route is
/// only ever matched on whole segments of the normal path.
pub fn path_and_route(input: &[u8]) {
    let Ok(path) = std::str::from_utf8(input) else {
        return;
    };
    let Ok(normal) = normalize_path(path) else {
        assert!(table().lookup("app.localhost", path).is_none());
        return;
    };
    assert_eq!(
        normalize_path(&normal).as_deref(),
        Ok(&*normal),
        "normalising {path:?} is not idempotent"
    );
    assert!(normal.starts_with('/'));
    for segment in normal.split('/') {
        assert!(
            segment != "." && segment != "..",
            "{normal:?} has a dot segment"
        );
    }
    assert!(!normal.contains('\\'));
    let table = table();
    let route = table
        .lookup("app.localhost", path)
        .map(|route| &route.path_prefix);
    let normal_route = table
        .lookup("app.localhost", &normal)
        .map(|route| &route.path_prefix);
    assert_eq!(route, normal_route, "{path:?} and {normal:?} route apart");
    if let Some(prefix) = route {
        let rest = &normal[prefix.len().min(normal.len())..];
        assert!(
            normal.starts_with(prefix.as_str())
                && (prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/')),
            "{normal:?} matched {prefix:?} not on a segment"
        );
    }
}

/// Routes with nested and look-alike prefixes.
fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let backend = |name: &str| {
            let addr = SocketAddr::from(([127, 0, 0, 1], 1));
            Backend::new(name, vec![Endpoint::new(format!("{name}.1"), addr)])
        };
        let routes = ["/", "/files", "/api", "/api/v2", "/a.b", "/~u", "/%2F"]
            .into_iter()
            .map(|prefix| Route::new("app.localhost", prefix, backend(prefix)))
            .collect();
        RouteTable::new(routes).expect("the fuzz route table is valid")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The requests of the differential framing corpus (`\r \n \t \0 \\ \xNN` unescaped).
    fn framing_cases() -> Vec<Vec<u8>> {
        let table = include_str!("../tests/framing/cases.txt");
        let unescape = |text: &str| {
            let (mut out, bytes, mut at) = (Vec::new(), text.as_bytes(), 0);
            while at < bytes.len() {
                let (byte, used) = match (bytes[at], bytes.get(at + 1)) {
                    (b'\\', Some(b'r')) => (b'\r', 2),
                    (b'\\', Some(b'n')) => (b'\n', 2),
                    (b'\\', Some(b't')) => (b'\t', 2),
                    (b'\\', Some(b'0')) => (0, 2),
                    (b'\\', Some(b'\\')) => (b'\\', 2),
                    (b'\\', Some(b'x')) => {
                        let hex = std::str::from_utf8(&bytes[at + 2..at + 4]).unwrap();
                        (u8::from_str_radix(hex, 16).unwrap(), 4)
                    }
                    (byte, _) => (byte, 1),
                };
                out.push(byte);
                at += used;
            }
            out
        };
        table
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| unescape(line.splitn(3, " | ").nth(2).unwrap()))
            .collect()
    }

    /// The fuzz targets' properties hold on their seeds (and on what the fuzzers found).
    #[test]
    fn fuzz_targets_hold_on_their_seeds() {
        let cases = framing_cases();
        assert!(cases.len() > 50);
        for case in &cases {
            request_head(case);
            let body = case
                .windows(4)
                .position(|window| window == b"\r\n\r\n")
                .map_or(&case[..], |end| &case[end + 4..]);
            for cut in 0..4u8 {
                let mut input = vec![cut];
                input.extend_from_slice(body);
                chunked_body(&input);
            }
        }
        for path in [
            "/",
            "/files/../secret.txt",
            "/files/%2e%2e/x",
            "/files/..%2fx",
            "/x/../api/y",
            "/api/v2/../v2x",
            "/a.b/./c",
            "/%7eu/x",
            "/%2f",
            "/%2F/a",
            "/a%zz",
            "/a\\b",
            "x",
            "/api%2Fv2",
            "/api/v2/",
            "//api",
            "/files%2f..",
        ] {
            path_and_route(path.as_bytes());
        }
    }
}
