//! Forward auth (nginx `auth_request`, Traefik forwardAuth): before a request goes upstream,
//! the edge asks an auth service with a `GET` that carries the request's headers and where it
//! was going (`X-Forwarded-Method`, `-Proto`, `-Host`, `-Uri`, `-For`). A 2xx lets the
//! request through, with the auth service's answer to the configured headers put on it (the
//! client's own headers of those names are dropped, so that it cannot forge them); any other
//! answer (401, 403, a redirect to a sign-in page) goes back to the client as it came.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::guard::Refusal;

/// The largest answer read from an auth service.
const MAX_ANSWER: usize = 64 * 1024;

/// Headers of a refusing answer that go back to the client.
const PASSED_BACK: [&str; 5] = [
    "location",
    "www-authenticate",
    "set-cookie",
    "content-type",
    "cache-control",
];

/// Where and how a route asks.
#[derive(Debug, Clone)]
pub struct ForwardAuth {
    /// The auth service's name (for error messages).
    pub service: String,
    /// Its address (the service's internal listener, balanced over healthy instances).
    pub addr: SocketAddr,
    /// The path asked (`/` by default).
    pub path: String,
    /// Headers of a 2xx answer put on the request upstream (lower case).
    pub headers: Vec<HeaderName>,
    /// How long the auth service may take.
    pub timeout: Duration,
}

impl ForwardAuth {
    /// Asks about the request whose upstream head (as the edge wrote it) is `head`: `Ok`
    /// with the headers to put on it, or the answer the client gets.
    pub(crate) async fn check(&self, head: &[u8]) -> Result<Vec<(HeaderName, Vec<u8>)>, Refusal> {
        let failed = |why: String| Refusal {
            status: StatusCode::BAD_GATEWAY,
            message: format!("502 auth service {} failed: {why}", self.service),
            headers: Vec::new(),
        };
        let request = self.sub_request(head);
        let answer = tokio::time::timeout(self.timeout, exchange(self.addr, &request))
            .await
            .map_err(|_| failed(format!("no answer within {}s", self.timeout.as_secs_f64())))?
            .map_err(|e| failed(e.to_string()))?;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let body_at = match response.parse(&answer) {
            Ok(httparse::Status::Complete(at)) => at,
            _ => return Err(failed("an answer that is not HTTP".to_string())),
        };
        let status = StatusCode::from_u16(response.code.unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_success() {
            let mut pass = Vec::new();
            for header in response.headers.iter() {
                if let Some(name) = self
                    .headers
                    .iter()
                    .find(|name| name.as_str().eq_ignore_ascii_case(header.name))
                {
                    pass.push((name.clone(), header.value.to_vec()));
                }
            }
            return Ok(pass);
        }
        let mut refusal = Refusal {
            status,
            message: String::from_utf8_lossy(&answer[body_at..])
                .trim_end()
                .to_string(),
            headers: Vec::new(),
        };
        for header in response.headers.iter() {
            let name = header.name.to_ascii_lowercase();
            if PASSED_BACK.contains(&name.as_str())
                && let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_bytes(header.value),
                )
            {
                refusal.headers.push((name, value));
            }
        }
        if refusal.message.is_empty() {
            refusal.message = format!("{} signed out by {}", status.as_u16(), self.service);
        }
        Err(refusal)
    }

    /// `GET <path>` with the request's headers (not its body's framing) and where it went.
    fn sub_request(&self, head: &[u8]) -> Vec<u8> {
        let mut lines = head
            .split(|&byte| byte == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(|&byte| byte == b' ');
        let method = parts.next().unwrap_or(b"GET");
        let target = parts.next().unwrap_or(b"/");
        let mut out = Vec::with_capacity(head.len() + 128);
        out.extend_from_slice(b"GET ");
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for line in lines.take_while(|line| !line.is_empty()) {
            let name = line.split(|&byte| byte == b':').next().unwrap_or_default();
            let skipped = [
                &b"content-length"[..],
                b"transfer-encoding",
                b"connection",
                b"upgrade",
                b"x-forwarded-method",
                b"x-forwarded-uri",
            ];
            if skipped.iter().any(|skip| name.eq_ignore_ascii_case(skip)) {
                continue;
            }
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        crate::forwarded::push_header(&mut out, b"x-forwarded-method", method);
        crate::forwarded::push_header(&mut out, b"x-forwarded-uri", target);
        out.extend_from_slice(b"connection: close\r\n\r\n");
        out
    }
}

/// Sends `request` on a new connection and reads the answer until the server closes.
async fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut answer = Vec::with_capacity(1024);
    let mut limited = (&mut stream).take(MAX_ANSWER as u64);
    limited.read_to_end(&mut answer).await?;
    Ok(answer)
}

/// `head` with the headers named in `add` replaced by the given values.
pub(crate) fn with_headers(head: &[u8], add: &[(HeaderName, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + 64);
    let body = head.len().saturating_sub(2);
    let mut first = true;
    for line in head[..body].split_inclusive(|&byte| byte == b'\n') {
        let name = line.split(|&byte| byte == b':').next().unwrap_or_default();
        if !first
            && add
                .iter()
                .any(|(added, _)| name.eq_ignore_ascii_case(added.as_str().as_bytes()))
        {
            continue;
        }
        first = false;
        out.extend_from_slice(line);
    }
    for (name, value) in add {
        crate::forwarded::push_header(&mut out, name.as_str().as_bytes(), value);
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_replace_the_clients_own() {
        let head = b"GET /x HTTP/1.1\r\nhost: a\r\nX-User: mallory\r\nx-y: 1\r\n\r\n";
        let user = HeaderName::from_static("x-user");
        let out = with_headers(head, &[(user, b"alice".to_vec())]);
        assert_eq!(
            out,
            b"GET /x HTTP/1.1\r\nhost: a\r\nx-y: 1\r\nx-user: alice\r\n\r\n"
        );
    }

    #[test]
    fn the_sub_request_says_where_the_request_went() {
        let auth = ForwardAuth {
            service: "auth".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            path: "/verify".into(),
            headers: vec![],
            timeout: Duration::from_secs(1),
        };
        let head = b"POST /a?b=1 HTTP/1.1\r\nhost: app\r\ncookie: s=1\r\ncontent-length: 5\r\n\r\n";
        let sub = String::from_utf8(auth.sub_request(head)).unwrap();
        assert!(sub.starts_with("GET /verify HTTP/1.1\r\nhost: app\r\ncookie: s=1\r\n"));
        assert!(sub.contains("x-forwarded-method: POST\r\nx-forwarded-uri: /a?b=1\r\n"));
        assert!(!sub.contains("content-length"));
    }
}
