//! One JSON line per request, handed to a pluggable [`AccessLogSink`].

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// What the edge records about one request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AccessLogEntry {
    /// When the request head arrived, RFC 3339 in UTC.
    pub time: String,
    /// The requested host, without port.
    pub host: String,
    /// The method.
    pub method: String,
    /// The path, without the query (queries may carry tokens).
    pub path: String,
    /// The status sent to the client.
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// From the request head to the end of the response body (or of the tunnel).
    pub duration_ms: f64,
    /// The service of the matched route, if any.
    pub service: Option<String>,
    /// The instance id of the endpoint that answered, if any.
    pub upstream: Option<String>,
    /// The client's address, `ip:port`.
    pub client: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    /// The W3C trace id (32 hex digits) the upstream got in `traceparent`.
    pub trace_id: String,
}

impl AccessLogEntry {
    /// The entry as one line of JSON, without the newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|error| {
            format!("{{\"error\":\"access log entry not serialisable: {error}\"}}")
        })
    }
}

/// One request as the edge hands it to [`AccessLogSink::record_request`]: borrowed, so that
/// a sink that only writes it out copies nothing first.
#[derive(Clone, Copy, Debug)]
pub struct RequestLog<'a> {
    /// When the request head arrived.
    pub time: SystemTime,
    /// The requested host, without port.
    pub host: &'a str,
    /// The method.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The status sent to the client.
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// From the request head to the end of the response body (or of the tunnel).
    pub duration: Duration,
    /// The service of the matched route, if any.
    pub service: Option<&'a str>,
    /// The instance id of the endpoint that answered, if any.
    pub upstream: Option<&'a str>,
    /// The client's address.
    pub client: SocketAddr,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: &'a str,
    /// The trace the request belongs to.
    pub trace: crate::TraceContext,
}

impl RequestLog<'_> {
    /// The owned entry.
    pub fn to_entry(&self) -> AccessLogEntry {
        let mut time = Vec::with_capacity(24);
        push_rfc3339(&mut time, self.time);
        AccessLogEntry {
            time: String::from_utf8(time).unwrap_or_default(),
            host: self.host.to_string(),
            method: self.method.to_string(),
            path: self.path.to_string(),
            status: self.status,
            bytes: self.bytes,
            duration_ms: self.duration.as_secs_f64() * 1000.0,
            service: self.service.map(str::to_string),
            upstream: self.upstream.map(str::to_string),
            client: self.client.to_string(),
            protocol: self.protocol.to_string(),
            trace_id: self.trace.to_hex(),
        }
    }

    /// Appends the entry as one line of JSON, without the newline: the fields and order of
    /// [`AccessLogEntry::to_json`], `duration_ms` with microsecond precision.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut digits = itoa::Buffer::new();
        out.extend_from_slice(b"{\"time\":\"");
        push_rfc3339(out, self.time);
        out.extend_from_slice(b"\",\"host\":");
        push_json_str(out, self.host);
        out.extend_from_slice(b",\"method\":");
        push_json_str(out, self.method);
        out.extend_from_slice(b",\"path\":");
        push_json_str(out, self.path);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(digits.format(self.status).as_bytes());
        out.extend_from_slice(b",\"bytes\":");
        out.extend_from_slice(digits.format(self.bytes).as_bytes());
        out.extend_from_slice(b",\"duration_ms\":");
        let micros = self.duration.as_micros();
        out.extend_from_slice(digits.format(micros / 1000).as_bytes());
        out.push(b'.');
        push_padded(out, (micros % 1000) as u64, 3);
        out.extend_from_slice(b",\"service\":");
        push_json_opt(out, self.service);
        out.extend_from_slice(b",\"upstream\":");
        push_json_opt(out, self.upstream);
        out.extend_from_slice(b",\"client\":\"");
        match self.client {
            SocketAddr::V4(v4) => {
                for (index, octet) in v4.ip().octets().into_iter().enumerate() {
                    if index > 0 {
                        out.push(b'.');
                    }
                    out.extend_from_slice(digits.format(octet).as_bytes());
                }
                out.push(b':');
                out.extend_from_slice(digits.format(v4.port()).as_bytes());
            }
            SocketAddr::V6(v6) => {
                let _ = write!(out, "{v6}");
            }
        }
        out.extend_from_slice(b"\",\"protocol\":");
        push_json_str(out, self.protocol);
        out.extend_from_slice(b",\"trace_id\":\"");
        self.trace.write_hex(out);
        out.extend_from_slice(b"\"}");
    }
}

/// Where access-log entries go. Called on the request path: it must not block.
pub trait AccessLogSink: Send + Sync + 'static {
    /// Takes one entry.
    fn record(&self, entry: AccessLogEntry);

    /// Takes one request as the edge sees it; by default as an owned [`AccessLogEntry`]
    /// passed to [`AccessLogSink::record`]. Sinks that serialise override it to skip the copy.
    fn record_request(&self, request: &RequestLog<'_>) {
        self.record(request.to_entry());
    }
}

/// Writes JSON lines to a writer from a thread of its own. Requests append their line to a
/// shared buffer (no wake-up per request); the thread writes the buffer out every
/// [`JsonLinesSink::FLUSH_EVERY`], or sooner once it holds [`JsonLinesSink::WAKE_AT`] bytes.
/// When the writer falls behind by more than [`JsonLinesSink::MAX_PENDING`] bytes, lines are
/// dropped and counted rather than slowing requests. Dropping the sink writes what is left.
#[derive(Debug)]
pub struct JsonLinesSink {
    shared: Arc<Pending>,
    dropped: AtomicU64,
    flusher: Option<thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Pending {
    lines: Mutex<Vec<u8>>,
    closed: AtomicBool,
}

impl JsonLinesSink {
    /// How often buffered lines are written out.
    pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
    /// Buffered bytes that wake the writer early.
    pub const WAKE_AT: usize = 256 * 1024;
    /// Buffered bytes beyond which new lines are dropped.
    pub const MAX_PENDING: usize = 16 * 1024 * 1024;

    /// A sink writing to standard error.
    pub fn stderr() -> Self {
        JsonLinesSink::new(io::stderr())
    }

    /// A sink writing to any writer.
    pub fn new<W: Write + Send + 'static>(writer: W) -> Self {
        let shared = Arc::new(Pending::default());
        let flusher = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("bow-edge-access-log".to_string())
                .spawn(move || write_lines(&shared, writer))
                .map_err(|error| eprintln!("access log thread did not start: {error}"))
                .ok()
        };
        JsonLinesSink {
            shared,
            dropped: AtomicU64::new(0),
            flusher,
        }
    }

    /// Entries dropped because the writer fell behind or failed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl JsonLinesSink {
    /// Appends one line made by `write` (without its newline) unless the writer fell behind.
    fn append(&self, write: impl FnOnce(&mut Vec<u8>)) {
        let Some(flusher) = &self.flusher else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut lines = self
            .shared
            .lines
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let before = lines.len();
        write(&mut lines);
        if lines.len() >= Self::MAX_PENDING {
            lines.truncate(before);
            drop(lines);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        lines.push(b'\n');
        let wake = lines.len() >= Self::WAKE_AT;
        drop(lines);
        if wake {
            flusher.thread().unpark();
        }
    }
}

impl AccessLogSink for JsonLinesSink {
    fn record(&self, entry: AccessLogEntry) {
        let line = entry.to_json();
        self.append(|lines| lines.extend_from_slice(line.as_bytes()));
    }

    fn record_request(&self, request: &RequestLog<'_>) {
        self.append(|lines| request.write_json(lines));
    }
}

impl Drop for JsonLinesSink {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(flusher) = self.flusher.take() {
            flusher.thread().unpark();
            let _ = flusher.join();
        }
    }
}

/// How much lower than the process the writer thread runs: it yields the core to the threads
/// serving requests (its writes and a rotated file's deletion cost the kernel milliseconds)
/// and catches up in their idle time; [`JsonLinesSink::MAX_PENDING`] bounds what waits.
const WRITER_NICENESS: libc::c_int = 10;

fn write_lines<W: Write>(shared: &Pending, mut writer: W) {
    lower_own_priority(WRITER_NICENESS);
    // Two buffers take turns, so that neither is grown from empty again on every batch.
    let mut batch = Vec::new();
    loop {
        let closed = shared.closed.load(Ordering::SeqCst);
        batch.clear();
        std::mem::swap(
            &mut batch,
            &mut *shared
                .lines
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        if !batch.is_empty() && (writer.write_all(&batch).is_err() || writer.flush().is_err()) {
            return;
        }
        if closed {
            return;
        }
        thread::park_timeout(JsonLinesSink::FLUSH_EVERY);
    }
}

/// Sets the calling thread's nice value (Linux keeps one per thread) `by` above the process's.
fn lower_own_priority(by: libc::c_int) {
    // SAFETY: plain system calls on the calling thread; failure leaves the priority as it was.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let process = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, tid, (process + by).min(19));
    }
}

/// A sink that forgets every entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiscardAccessLog;

impl AccessLogSink for DiscardAccessLog {
    fn record(&self, _entry: AccessLogEntry) {}

    fn record_request(&self, _request: &RequestLog<'_>) {}
}

/// `time` as RFC 3339 in UTC with milliseconds, such as `2026-11-22T03:01:54.120Z`.
pub fn push_rfc3339(out: &mut Vec<u8>, time: SystemTime) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (days, of_day) = ((seconds / 86_400) as i64, seconds % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant, "chrono-compatible low-level date
    // algorithms", days_from_civil inverted).
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    push_padded(out, year.max(0) as u64, 4);
    out.push(b'-');
    push_padded(out, month as u64, 2);
    out.push(b'-');
    push_padded(out, day as u64, 2);
    out.push(b'T');
    push_padded(out, of_day / 3600, 2);
    out.push(b':');
    push_padded(out, of_day % 3600 / 60, 2);
    out.push(b':');
    push_padded(out, of_day % 60, 2);
    out.push(b'.');
    push_padded(out, u64::from(since_epoch.subsec_millis()), 3);
    out.push(b'Z');
}

/// `value` in decimal, zero-padded to at least `width` digits.
fn push_padded(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(value);
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(text.len())));
    out.extend_from_slice(text.as_bytes());
}

fn push_json_opt(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => push_json_str(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string literal, escaped as serde_json escapes.
fn push_json_str(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let bytes = value.as_bytes();
    let mut clean = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean..index]);
        clean = index + 1;
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
    }
    out.extend_from_slice(&bytes[clean..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn entries_become_json_lines() {
        let buffer = Shared::default();
        let sink = JsonLinesSink::new(buffer.clone());
        sink.record(AccessLogEntry {
            time: "2026-11-22T03:01:54.120Z".into(),
            host: "a.com".into(),
            method: "GET".into(),
            path: "/x".into(),
            status: 200,
            bytes: 5,
            duration_ms: 1.5,
            service: Some("web".into()),
            upstream: Some("web.1".into()),
            client: "127.0.0.1:5000".into(),
            protocol: "HTTP/1.1".into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while buffer.0.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            thread::sleep(std::time::Duration::from_millis(5));
        }
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let value: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(value["status"], 200);
        assert_eq!(value["upstream"], "web.1");
        assert!(value["time"].as_str().unwrap().ends_with('Z'));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn request_lines_are_the_entries_json() {
        let request = RequestLog {
            time: UNIX_EPOCH + Duration::from_millis(1_709_164_800_042),
            host: "a.com",
            method: "GET",
            path: "/we\"ird\\\u{1}/ü",
            status: 404,
            bytes: 12,
            duration: Duration::from_micros(1_234_567),
            service: None,
            upstream: Some("web.1"),
            client: "127.0.0.1:5000".parse().unwrap(),
            protocol: "HTTP/2.0",
            trace: crate::TraceContext {
                trace: crate::TraceId([0xab; 16]),
                ..Default::default()
            },
        };
        let mut line = Vec::new();
        request.write_json(&mut line);
        let mut written: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let entry = request.to_entry();
        assert_eq!(entry.time, "2024-02-29T00:00:00.042Z");
        let mut expected: serde_json::Value = serde_json::from_str(&entry.to_json()).unwrap();
        let duration = written["duration_ms"].take().as_f64().unwrap();
        assert!((duration - expected["duration_ms"].take().as_f64().unwrap()).abs() < 1e-9);
        assert_eq!(written, expected);
        assert_eq!(written["trace_id"], "ab".repeat(16));
        let v6 = RequestLog {
            client: "[::1]:443".parse().unwrap(),
            time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            ..request
        };
        let mut line = Vec::new();
        v6.write_json(&mut line);
        let written: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(written["client"], "[::1]:443");
        assert_eq!(written["time"], "2023-11-14T22:13:20.000Z");
    }
}
