//! An HTTP/1.1 request head from a client: parsed in place with httparse, checked, its body's
//! framing decided, and the upstream's request head written from it. This is the one place
//! that decides where a request ends and where it goes; what cannot be decided one way only
//! is refused (docs/agent.md, "What the edge refuses").

use std::mem::MaybeUninit;

use http::{Method, StatusCode};

use crate::client::Framing;
use crate::forwarded::{
    ClientForwarding, UpstreamBody, UpstreamHead, content_length, decides, tokens, upgrade_request,
    write_upstream_head,
};
use crate::uri::{normalize_path, valid_host};

/// Most request headers taken from a client.
pub(crate) const MAX_REQUEST_HEADERS: usize = 100;

/// What a request head says besides what went into the upstream head.
#[derive(Debug)]
pub(crate) struct RequestFacts {
    pub(crate) method: Method,
    pub(crate) http10: bool,
    /// The client asked to keep the connection open (HTTP/1.1 by default).
    pub(crate) keep_alive: bool,
    pub(crate) body: Framing,
    pub(crate) declared_length: Option<u64>,
    pub(crate) expect_continue: bool,
    pub(crate) upgrade: bool,
    /// The trace the upstream head's `traceparent` belongs to.
    pub(crate) trace: crate::TraceContext,
}

/// Why a request head cannot be served: the status it is answered with, and why.
#[derive(Debug)]
pub(crate) struct BadRequest {
    pub(crate) status: StatusCode,
    pub(crate) why: String,
}

impl BadRequest {
    fn new(status: StatusCode, why: &str) -> Self {
        BadRequest {
            status,
            why: why.to_string(),
        }
    }
}

/// Buffers a connection reuses from request to request.
#[derive(Debug, Default)]
pub(crate) struct HeadBuffers {
    /// The request head for the upstream.
    pub(crate) upstream: Vec<u8>,
    /// The host as the client named it (port included).
    pub(crate) host: String,
    /// The normalised path, which routing matches.
    pub(crate) path: String,
    /// A normalised target being put together (when the client's was not normal).
    target: String,
}

/// Reads the head at the front of `input`. `Ok(None)` while it is not all in; else its
/// length and facts, with `buffers` holding the upstream head, host and path.
pub(crate) fn read_request_head(
    input: &[u8],
    limit: usize,
    forwarding: &ClientForwarding,
    buffers: &mut HeadBuffers,
) -> Result<Option<(usize, RequestFacts)>, BadRequest> {
    let bad = |why: &str| BadRequest::new(StatusCode::BAD_REQUEST, why);
    let too_large = || {
        let why = format!("request head larger than {limit} bytes");
        BadRequest::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &why)
    };
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_REQUEST_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let length = match request.parse_with_uninit_headers(input, &mut slots) {
        Ok(httparse::Status::Complete(length)) if length > limit => return Err(too_large()),
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if input.len() >= limit => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(BadRequest::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many request headers",
            ));
        }
        Err(_) => return Err(bad("invalid request head")),
    };
    let head = &input[..length];
    let method_text = request.method.unwrap_or_default();
    // Every line ends in CRLF: httparse also takes a bare LF, which another parser may not.
    let line_ends = |offset: usize| offset >= 2 && &head[offset - 2..offset] == b"\r\n";
    let method_at = method_text.as_ptr() as usize - head.as_ptr() as usize;
    let crlf_before_method = head[..method_at].chunks(2).all(|pair| pair == b"\r\n");
    let headers_crlf = request
        .headers
        .iter()
        .all(|header| line_ends(header.name.as_ptr() as usize - head.as_ptr() as usize));
    if !(crlf_before_method && headers_crlf && head.ends_with(b"\r\n\r\n")) {
        return Err(bad("a line of the request head does not end in CRLF"));
    }
    let method = Method::from_bytes(method_text.as_bytes()).map_err(|_| bad("invalid method"))?;
    if method == Method::CONNECT {
        return Err(bad("CONNECT is not proxied"));
    }
    let http10 = request.version == Some(0);
    let raw_target = request.path.unwrap_or_default();
    let headers = request
        .headers
        .iter()
        .map(|header| (header.name.as_bytes(), header.value));
    let mut facts = RequestFacts {
        method,
        http10,
        keep_alive: !http10,
        body: Framing::Empty,
        declared_length: None,
        expect_continue: false,
        upgrade: false,
        trace: crate::TraceContext::default(),
    };
    let mut host: Option<&[u8]> = None;
    let mut chunked_codings = 0;
    let mut chunked_last = false;
    let mut transfer_encoding = false;
    for (name, value) in headers.clone() {
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Err(bad("more than one host header"));
            }
            host = Some(value.trim_ascii());
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    facts.keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    facts.keep_alive = true;
                } else if !token.eq_ignore_ascii_case(b"upgrade") && decides(token) {
                    // Dropping it as hop-by-hop would change the request's framing or route.
                    let why = format!(
                        "the connection header names {}, which the edge decides",
                        String::from_utf8_lossy(token).to_ascii_lowercase()
                    );
                    return Err(bad(&why));
                }
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let length = content_length(value).ok_or_else(|| bad("invalid content-length"))?;
            if facts.declared_length.is_some_and(|seen| seen != length) {
                return Err(bad("conflicting content-length"));
            }
            facts.declared_length = Some(length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            for coding in tokens(value) {
                chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                chunked_codings += usize::from(chunked_last);
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            facts.expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    if transfer_encoding {
        if http10 {
            return Err(bad("transfer-encoding in an HTTP/1.0 request"));
        }
        if !chunked_last {
            return Err(bad("transfer-encoding without chunked last"));
        }
        if chunked_codings > 1 {
            return Err(bad("transfer-encoding with chunked twice"));
        }
        if facts.declared_length.is_some() {
            return Err(bad("both transfer-encoding and content-length"));
        }
    }
    facts.body = if transfer_encoding {
        Framing::Chunked
    } else {
        match facts.declared_length {
            None | Some(0) => Framing::Empty,
            Some(length) => Framing::Length(length),
        }
    };
    facts.expect_continue &= !http10 && facts.body != Framing::Empty;
    // Origin form as usual; absolute form names the host itself, and Host must agree.
    let target = if raw_target.starts_with('/') {
        raw_target
    } else if let Some(rest) = raw_target
        .strip_prefix("http://")
        .or_else(|| raw_target.strip_prefix("https://"))
    {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(end);
        if !valid_host(authority.as_bytes()) {
            return Err(bad("invalid host in the request target"));
        }
        match host {
            Some(named) if !named.eq_ignore_ascii_case(authority.as_bytes()) => {
                return Err(bad("the host header and the request target disagree"));
            }
            None if http10 => host = Some(authority.as_bytes()),
            _ => {}
        }
        match target.as_bytes().first() {
            None => "/",
            Some(b'/') => target,
            Some(_) => return Err(bad("the request target is not a path")),
        }
    } else {
        return Err(bad("the request target is not a path"));
    };
    let host = match host {
        Some(host) if valid_host(host) => {
            std::str::from_utf8(host).map_err(|_| bad("invalid host"))?
        }
        Some(_) => return Err(bad("invalid host")),
        None if http10 => "",
        None => return Err(bad("no host header")),
    };
    let (path, query) = target.split_at(target.find('?').unwrap_or(target.len()));
    if query.contains('#') {
        return Err(bad(crate::uri::TargetError::Fragment.reason()));
    }
    let normal = normalize_path(path).map_err(|error| bad(error.reason()))?;
    let upgrade = if http10 {
        None
    } else {
        upgrade_request(headers.clone())
    };
    if upgrade.is_some() && facts.body != Framing::Empty {
        return Err(bad("an upgrade request with a body"));
    }
    facts.upgrade = upgrade.is_some();
    let target = match &normal {
        std::borrow::Cow::Borrowed(_) => target,
        std::borrow::Cow::Owned(normal) => {
            buffers.target.clear();
            buffers.target.push_str(normal);
            buffers.target.push_str(query);
            buffers.target.as_str()
        }
    };
    facts.trace = write_upstream_head(
        &mut buffers.upstream,
        &UpstreamHead {
            method: facts.method.as_str(),
            target: target.as_bytes(),
            host: host.as_bytes(),
            upgrade,
            body: match facts.body {
                Framing::Chunked => UpstreamBody::Chunked,
                _ => match facts.declared_length {
                    Some(length) => UpstreamBody::Length(length),
                    None => UpstreamBody::None,
                },
            },
            forwarding,
        },
        headers,
    );
    buffers.host.clear();
    buffers.host.push_str(host);
    buffers.path.clear();
    buffers.path.push_str(&normal);
    Ok(Some((length, facts)))
}
