//! A strict HTTP/1.1 request reader written apart from the edge's (RFC 9112 read literally,
//! heads split by httparse), used as the second opinion of the framing tests: what a careful
//! upstream would read from bytes, request by request.

/// One request as the reference reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, decoded.
    pub body: Vec<u8>,
    /// How the body was framed: `length N`, `chunked` or `none`.
    pub framing: String,
    /// Bytes the request took, head and body.
    pub consumed: usize,
}

impl Request {
    /// The values of every `name` header.
    pub fn values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
            .collect()
    }

    /// The one value of `name` as text, if there is exactly one.
    pub fn value(&self, name: &str) -> Option<String> {
        match self.values(name).as_slice() {
            [one] => Some(String::from_utf8_lossy(one).into_owned()),
            _ => None,
        }
    }
}

/// What the reference reads at the front of some bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// A whole request.
    Request(Request),
    /// Not all of it is in yet.
    Partial,
    /// Not a valid request, or one an intermediary could read two ways.
    Invalid(String),
}

/// Headers whose removal would change a request's framing or where it goes.
const DECIDING: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "upgrade",
];

fn tokens(value: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(value)
        .split(',')
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

/// Reads one request from the front of `bytes`.
pub fn read(bytes: &[u8]) -> Read {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    let head_length = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Read::Partial,
        Err(error) => return Read::Invalid(format!("head: {error}")),
    };
    // RFC 9112 §2.2: lines end with CRLF; a bare LF is tolerated by some and not others.
    let head = &bytes[..head_length];
    for (at, &byte) in head.iter().enumerate() {
        if byte == b'\n' && (at == 0 || head[at - 1] != b'\r') {
            return Read::Invalid("bare LF in the head".into());
        }
    }
    let method = request.method.unwrap_or_default().to_string();
    let target = request.path.unwrap_or_default().to_string();
    let version = request.version.unwrap_or(1);
    let headers: Vec<(String, Vec<u8>)> = request
        .headers
        .iter()
        .map(|header| (header.name.to_string(), header.value.to_vec()))
        .collect();
    let named = |name: &str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
            .collect()
    };
    let hosts = named("host");
    if version == 1 && hosts.len() != 1 {
        return Read::Invalid(format!("{} host headers", hosts.len()));
    }
    if hosts.len() > 1 {
        return Read::Invalid("two host headers".into());
    }
    for value in named("connection") {
        for token in tokens(value) {
            if DECIDING.contains(&token.as_str()) && token != "upgrade" {
                return Read::Invalid(format!("connection names {token}"));
            }
        }
    }
    let codings: Vec<String> = named("transfer-encoding")
        .into_iter()
        .flat_map(tokens)
        .collect();
    let lengths = named("content-length");
    if !codings.is_empty() && !lengths.is_empty() {
        return Read::Invalid("both transfer-encoding and content-length".into());
    }
    let mut framing = "none".to_string();
    let body_start = head_length;
    if !named("transfer-encoding").is_empty() {
        if version == 0 {
            return Read::Invalid("transfer-encoding in HTTP/1.0".into());
        }
        if codings.last().map(String::as_str) != Some("chunked") {
            return Read::Invalid("transfer-encoding without chunked last".into());
        }
        if codings.iter().filter(|coding| *coding == "chunked").count() > 1 {
            return Read::Invalid("chunked twice".into());
        }
        return match read_chunked(&bytes[body_start..]) {
            Chunked::Body(body, used) => Read::Request(Request {
                method,
                target,
                version,
                headers,
                body,
                framing: "chunked".into(),
                consumed: body_start + used,
            }),
            Chunked::Partial => Read::Partial,
            Chunked::Invalid(why) => Read::Invalid(why),
        };
    }
    let mut length = None;
    for value in lengths {
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || value.len() > 18 {
            return Read::Invalid("content-length is not digits".into());
        }
        let parsed: u64 = std::str::from_utf8(value).unwrap().parse().unwrap();
        if length.is_some_and(|seen| seen != parsed) {
            return Read::Invalid("two different content-lengths".into());
        }
        length = Some(parsed);
    }
    let length = length.unwrap_or(0) as usize;
    if length > 0 {
        framing = format!("length {length}");
    }
    if bytes.len() < body_start + length {
        return Read::Partial;
    }
    Read::Request(Request {
        method,
        target,
        version,
        headers,
        body: bytes[body_start..body_start + length].to_vec(),
        framing,
        consumed: body_start + length,
    })
}

enum Chunked {
    Body(Vec<u8>, usize),
    Partial,
    Invalid(String),
}

/// A line ending in CRLF at the front of `bytes`: its content and the bytes it took.
fn line(bytes: &[u8]) -> Result<Option<(&[u8], usize)>, String> {
    let Some(end) = bytes.iter().position(|&byte| byte == b'\n') else {
        return Ok(None);
    };
    if end == 0 || bytes[end - 1] != b'\r' {
        return Err("bare LF in the chunked body".into());
    }
    let content = &bytes[..end - 1];
    if content.contains(&b'\r') {
        return Err("bare CR in the chunked body".into());
    }
    Ok(Some((content, end + 1)))
}

/// RFC 9112 §7.1: `1*HEXDIG [ chunk-ext ] CRLF`, data, CRLF; a last chunk, trailers, CRLF.
fn read_chunked(bytes: &[u8]) -> Chunked {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let (size_line, used) = match line(&bytes[at..]) {
            Ok(Some(found)) => found,
            Ok(None) => return Chunked::Partial,
            Err(why) => return Chunked::Invalid(why),
        };
        at += used;
        let digits_end = size_line
            .iter()
            .position(|byte| !byte.is_ascii_hexdigit())
            .unwrap_or(size_line.len());
        let (digits, rest) = size_line.split_at(digits_end);
        if digits.is_empty() {
            return Chunked::Invalid("chunk size is not hex".into());
        }
        let rest_ok = rest.is_empty() || rest.trim_ascii_start().starts_with(b";");
        if !rest_ok {
            return Chunked::Invalid("junk after the chunk size".into());
        }
        let significant = digits.iter().skip_while(|&&digit| digit == b'0').count();
        if significant > 15 {
            return Chunked::Invalid("chunk size overflows".into());
        }
        let size = u64::from_str_radix(std::str::from_utf8(digits).unwrap(), 16).unwrap() as usize;
        if size == 0 {
            loop {
                match line(&bytes[at..]) {
                    Ok(Some((content, used))) => {
                        at += used;
                        if content.is_empty() {
                            return Chunked::Body(body, at);
                        }
                    }
                    Ok(None) => return Chunked::Partial,
                    Err(why) => return Chunked::Invalid(why),
                }
            }
        }
        if bytes.len() < at + size + 2 {
            return Chunked::Partial;
        }
        body.extend_from_slice(&bytes[at..at + size]);
        at += size;
        if &bytes[at..at + 2] != b"\r\n" {
            return Chunked::Invalid("no CRLF after chunk data".into());
        }
        at += 2;
    }
}

/// Reads requests one after the other: the whole ones, and what follows them.
pub fn read_all(mut bytes: &[u8]) -> (Vec<Request>, Read) {
    let mut requests = Vec::new();
    loop {
        if bytes.is_empty() {
            return (requests, Read::Partial);
        }
        match read(bytes) {
            Read::Request(request) => {
                bytes = &bytes[request.consumed..];
                requests.push(request);
            }
            other => return (requests, other),
        }
    }
}

/// The reference's own check, run by the framing tests.
pub fn self_check() {
    let (requests, rest) = read_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body, b"abc");
    assert_eq!(rest, Read::Partial);
    let chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\n";
    match read(chunked) {
        Read::Request(request) => assert_eq!(request.body, b"hello"),
        other => panic!("{other:?}"),
    }
    for bad in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    ] {
        assert!(
            matches!(read(bad), Read::Invalid(_)),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}
