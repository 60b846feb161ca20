//! One JSON line per request, handed to a pluggable [`AccessLogSink`].

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

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
}

impl AccessLogEntry {
    /// The entry as one line of JSON, without the newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|error| {
            format!("{{\"error\":\"access log entry not serialisable: {error}\"}}")
        })
    }
}

/// Where access-log entries go. Called on the request path: it must not block.
pub trait AccessLogSink: Send + Sync + 'static {
    /// Takes one entry.
    fn record(&self, entry: AccessLogEntry);
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

impl AccessLogSink for JsonLinesSink {
    fn record(&self, entry: AccessLogEntry) {
        let line = entry.to_json();
        let mut lines = self
            .shared
            .lines
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if lines.len() + line.len() > Self::MAX_PENDING || self.flusher.is_none() {
            drop(lines);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        lines.extend_from_slice(line.as_bytes());
        lines.push(b'\n');
        let wake = lines.len() >= Self::WAKE_AT;
        drop(lines);
        if wake && let Some(flusher) = &self.flusher {
            flusher.thread().unpark();
        }
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

fn write_lines<W: Write>(shared: &Pending, mut writer: W) {
    loop {
        let closed = shared.closed.load(Ordering::SeqCst);
        let batch = std::mem::take(
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

/// A sink that forgets every entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiscardAccessLog;

impl AccessLogSink for DiscardAccessLog {
    fn record(&self, _entry: AccessLogEntry) {}
}

/// Current time as RFC 3339 in UTC, with milliseconds.
pub(crate) fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.millisecond() as u32 * 1_000_000)
        .unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
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
            time: now_rfc3339(),
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
}
