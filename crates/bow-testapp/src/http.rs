//! A small HTTP/1.1 server: one thread per connection, keep-alive, Content-Length and chunked bodies.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::Config;

/// Largest request head (request line and headers) the server accepts.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Idle keep-alive connections are closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// State shared by all connection threads.
pub struct App {
    pub config: Config,
    pub started: Instant,
    /// Requests being answered right now; graceful shutdown waits for zero.
    pub in_flight: AtomicUsize,
}

impl App {
    fn healthy(&self) -> bool {
        if self.config.fail_health {
            return false;
        }
        match self.config.fail_health_after {
            Some(after) => self.started.elapsed() < after,
            None => true,
        }
    }
}

/// A parsed request head; the body has already been read and dropped.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub keep_alive: bool,
    /// The W3C `traceparent` header, echoed by `/` (the edge's trace test).
    pub traceparent: Option<String>,
}

/// A response ready to be written.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// Serves requests on one connection until the client closes it or asks to.
pub fn serve_connection(app: Arc<App>, stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let request = match read_request(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                let response = Response {
                    status: 400,
                    content_type: "text/plain",
                    body: format!("bad request: {error}\n"),
                };
                let _ = write_response(&mut writer, &response, "GET", false);
                return;
            }
            Err(_) => return,
        };
        app.in_flight.fetch_add(1, Ordering::SeqCst);
        let response = respond(&app, &request);
        if !app.config.quiet {
            println!("{} {} {}", request.method, request.path, response.status);
        }
        let written = write_response(&mut writer, &response, &request.method, request.keep_alive);
        app.in_flight.fetch_sub(1, Ordering::SeqCst);
        if written.is_err() || !request.keep_alive {
            return;
        }
    }
}

/// Decides the answer to one request.
pub fn respond(app: &App, request: &Request) -> Response {
    let path = request.path.split('?').next().unwrap_or("");
    let is_read = request.method == "GET" || request.method == "HEAD";
    match path {
        "/healthz" if is_read => {
            if app.healthy() {
                Response {
                    status: 200,
                    content_type: "text/plain",
                    body: "ok\n".into(),
                }
            } else {
                Response {
                    status: 503,
                    content_type: "text/plain",
                    body: "unhealthy\n".into(),
                }
            }
        }
        "/" if is_read => Response {
            status: 200,
            content_type: "application/json",
            body: format!(
                "{{\"version\":{},\"instance\":{},\"service\":{},\"pid\":{}{}}}\n",
                json_string(&app.config.version),
                json_string(&app.config.instance),
                json_string(&app.config.service),
                std::process::id(),
                request
                    .traceparent
                    .as_deref()
                    .map_or(String::new(), |value| format!(
                        ",\"traceparent\":{}",
                        json_string(value)
                    ))
            ),
        },
        "/slow" if is_read => {
            // `GET /slow?ms=N`: answers after N ms (at most 10 s), for latency tests.
            let ms = request
                .path
                .split_once("?ms=")
                .and_then(|(_, n)| n.split('&').next()?.parse::<u64>().ok())
                .unwrap_or(100)
                .min(10_000);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Response {
                status: 200,
                content_type: "text/plain",
                body: format!("slept {ms} ms\n"),
            }
        }
        "/" | "/healthz" | "/slow" => Response {
            status: 405,
            content_type: "text/plain",
            body: "method not allowed\n".into(),
        },
        _ => Response {
            status: 404,
            content_type: "text/plain",
            body: "not found\n".into(),
        },
    }
}

/// Reads one request head and discards its body. `Ok(None)` means the client closed cleanly.
pub fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut head_bytes = 0;
    let mut request_line = String::new();
    // Tolerate empty lines before a request (RFC 9112 section 2.2).
    loop {
        request_line.clear();
        let read = read_head_line(reader, &mut request_line, &mut head_bytes)?;
        if read == 0 {
            return Ok(None);
        }
        if !request_line.trim().is_empty() {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!(
            "malformed request line {:?}",
            request_line.trim_end()
        )));
    };
    let http_1_0 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        other => return Err(invalid(format!("unsupported version {other:?}"))),
    };
    let mut content_length: u64 = 0;
    let mut chunked = false;
    let mut connection = String::new();
    let mut traceparent = None;
    loop {
        let mut line = String::new();
        if read_head_line(reader, &mut line, &mut head_bytes)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "eof in headers",
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(invalid(format!("malformed header {line:?}")));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = value
                    .parse()
                    .map_err(|_| invalid(format!("bad content-length {value:?}")))?;
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => connection = value.to_ascii_lowercase(),
            "traceparent" => traceparent = Some(value.to_string()),
            _ => {}
        }
    }
    if chunked {
        discard_chunked_body(reader)?;
    } else if content_length > 0 {
        let copied = io::copy(&mut reader.take(content_length), &mut io::sink())?;
        if copied != content_length {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in body"));
        }
    }
    let keep_alive = if http_1_0 {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };
    Ok(Some(Request {
        method: method.to_string(),
        path: target.to_string(),
        keep_alive,
        traceparent,
    }))
}

fn read_head_line(
    reader: &mut impl BufRead,
    line: &mut String,
    total: &mut usize,
) -> io::Result<usize> {
    let read = reader
        .take((MAX_HEAD_BYTES - *total) as u64 + 1)
        .read_line(line)?;
    *total += read;
    if *total > MAX_HEAD_BYTES {
        return Err(invalid("request head too large".to_string()));
    }
    Ok(read)
}

fn discard_chunked_body(reader: &mut impl BufRead) -> io::Result<()> {
    let mut budget = 0;
    loop {
        let mut size_line = String::new();
        read_head_line(reader, &mut size_line, &mut budget)?;
        let size_text = size_line.trim().split(';').next().unwrap_or("");
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                let mut trailer = String::new();
                if read_head_line(reader, &mut trailer, &mut budget)? == 0
                    || trailer.trim().is_empty()
                {
                    return Ok(());
                }
            }
        }
        io::copy(&mut reader.take(size), &mut io::sink())?;
        let mut crlf = String::new();
        read_head_line(reader, &mut crlf, &mut budget)?;
        budget = 0;
    }
}

/// Writes a response with Content-Length; HEAD responses carry no body.
pub fn write_response(
    writer: &mut impl Write,
    response: &Response,
    method: &str,
    keep_alive: bool,
) -> io::Result<()> {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Unknown",
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        response.status,
        reason,
        response.content_type,
        response.body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    if method != "HEAD" {
        out.push_str(&response.body);
    }
    writer.write_all(out.as_bytes())?;
    writer.flush()
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Encodes a string as a JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn app(extra: &[(&str, &str)]) -> App {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PORT".into(), "1".into());
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        App {
            config: Config::from_env(&env).unwrap(),
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn parse(raw: &str) -> io::Result<Option<Request>> {
        read_request(&mut BufReader::new(raw.as_bytes()))
    }

    #[test]
    fn keep_alive_follows_the_http_version() {
        let r = parse("GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().unwrap();
        assert!(r.keep_alive);
        let r = parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive);
        let r = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive);
        let r = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.keep_alive);
    }

    #[test]
    fn bodies_are_consumed_so_the_next_request_parses() {
        let raw = "POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /healthz HTTP/1.1\r\n\r\n\
                   POST /y HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
                   GET /z HTTP/1.1\r\n\r\n";
        let mut reader = BufReader::new(raw.as_bytes());
        let paths: Vec<String> = std::iter::from_fn(|| read_request(&mut reader).unwrap())
            .map(|r| r.path)
            .collect();
        assert_eq!(paths, ["/x", "/healthz", "/y", "/z"]);
    }

    #[test]
    fn malformed_requests_are_invalid_data() {
        let error = parse("NONSENSE\r\n\r\n").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(parse("").unwrap().is_none());
    }

    #[test]
    fn routes_answer_as_documented() {
        let app = app(&[("APP_VERSION", "v2"), ("BOW_SERVICE", "back")]);
        let get = |path: &str| Request {
            method: "GET".into(),
            path: path.into(),
            keep_alive: true,
            traceparent: None,
        };
        assert_eq!(respond(&app, &get("/healthz")).status, 200);
        let root = respond(&app, &get("/?x=1"));
        assert_eq!(root.status, 200);
        assert!(
            root.body
                .starts_with("{\"version\":\"v2\",\"instance\":\"\",\"service\":\"back\",\"pid\":")
        );
        assert_eq!(respond(&app, &get("/nope")).status, 404);
    }

    #[test]
    fn failing_health_answers_503() {
        let app = app(&[("TESTAPP_FAIL_HEALTH", "1")]);
        let get = Request {
            method: "GET".into(),
            path: "/healthz".into(),
            keep_alive: true,
            traceparent: None,
        };
        assert_eq!(respond(&app, &get).status, 503);
        let app = self::app(&[("TESTAPP_FAIL_HEALTH_AFTER", "0ms")]);
        assert_eq!(respond(&app, &get).status, 503);
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
