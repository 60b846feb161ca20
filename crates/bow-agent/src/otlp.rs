//! `edge.otlp`: the edge's spans exported to an OpenTelemetry collector over OTLP/HTTP with
//! JSON (`POST <endpoint>/v1/traces`). The access-log sink the edge already calls once per
//! request is wrapped: besides its JSON line, a sampled request becomes one span record in a
//! bounded queue (dropped and counted when the collector falls behind — never a wait on the
//! request's path); one task sends them in batches (up to 512, at least every second). Spans
//! are of kind SERVER, named `METHOD host`, with the client's span as parent when it sent a
//! `traceparent`, the edge's span id being the parent the instance saw. Without `otlp:` none of
//! this exists.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use bow_edge::{AccessLogEntry, AccessLogSink, JsonLinesSink, RequestLog};
use bow_reconcile::EventKind;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::plane::Plane;
use crate::webhook::Url;

/// Spans waiting to be sent; more are dropped (and counted).
const QUEUE: usize = 8192;
/// Spans per POST.
const BATCH: usize = 512;
/// The longest a span waits for its batch.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// What one request's span needs, copied off the request's path.
struct SpanRecord {
    trace: [u8; 16],
    span: u64,
    parent: u64,
    start_ns: u128,
    duration_ns: u128,
    method: String,
    host: String,
    path: String,
    status: u16,
    service: Option<String>,
    upstream: Option<String>,
    client: String,
    protocol: &'static str,
}

/// The edge's access-log sink, exporting sampled requests as spans too.
pub(crate) struct OtlpSink {
    log: JsonLinesSink,
    queue: mpsc::Sender<SpanRecord>,
    /// Traces whose id's low 64 bits are at or under this are exported.
    threshold: u64,
    dropped: Arc<AtomicU64>,
}

impl AccessLogSink for OtlpSink {
    fn record(&self, entry: AccessLogEntry) {
        self.log.record(entry);
    }

    fn record_request(&self, request: &RequestLog<'_>) {
        self.log.record_request(request);
        let trace = request.trace;
        if !trace.sampled || trace.is_empty() {
            return;
        }
        let low = u64::from_be_bytes(trace.trace.0[8..].try_into().unwrap_or([0; 8]));
        if low > self.threshold {
            return;
        }
        let start_ns = request
            .time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let record = SpanRecord {
            trace: trace.trace.0,
            span: trace.span,
            parent: trace.parent,
            start_ns,
            duration_ns: request.duration.as_nanos(),
            method: request.method.to_string(),
            host: request.host.to_string(),
            path: request.path.to_string(),
            status: request.status,
            service: request.service.map(str::to_string),
            upstream: request.upstream.map(str::to_string),
            client: request.client.ip().to_string(),
            protocol: if request.protocol == "HTTP/2.0" {
                "2"
            } else {
                "1.1"
            },
        };
        if self.queue.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The sink for an edge with `otlp` settings, and its sender task (ends with the sink).
pub(crate) fn sink(
    agent: &Arc<Plane>,
    settings: &bow_spec::Otlp,
    log: JsonLinesSink,
) -> Result<OtlpSink, String> {
    let url = Url::parse(&format!("{}/v1/traces", settings.endpoint))
        .map_err(|e| format!("edge.otlp.endpoint: {e}"))?;
    let (queue, receiver) = mpsc::channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    tokio::spawn(send_forever(
        Arc::downgrade(agent),
        url,
        receiver,
        dropped.clone(),
    ));
    Ok(OtlpSink {
        log,
        queue,
        threshold: (settings.sample * u64::MAX as f64) as u64,
        dropped,
    })
}

async fn send_forever(
    agent: std::sync::Weak<Plane>,
    url: Url,
    mut receiver: mpsc::Receiver<SpanRecord>,
    dropped: Arc<AtomicU64>,
) {
    let mut failing = false;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let Some(first) = receiver.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(record)) => batch.push(record),
                Ok(None) | Err(_) => break,
            }
        }
        let (project, environment) = match agent.upgrade() {
            Some(agent) => (agent.project.clone(), agent.environment.clone()),
            None => return,
        };
        let body = serde_json::to_vec(&export(&project, &environment, &batch)).unwrap_or_default();
        let sent = batch.len();
        batch.clear();
        let result = crate::webhook::post_json(&url, body).await;
        let Some(agent) = agent.upgrade() else { return };
        match result {
            Ok(_) if failing => {
                failing = false;
                agent.emit(
                    "",
                    "",
                    EventKind::EdgeWarning,
                    &format!("spans reach {} again", url.shown()),
                );
            }
            Ok(_) => {}
            Err(reason) if !failing => {
                failing = true;
                let lost = dropped.load(Ordering::Relaxed);
                agent.emit(
                    "",
                    "",
                    EventKind::EdgeWarning,
                    &format!(
                        "{sent} spans not taken by {}: {reason} ({lost} dropped so far)",
                        url.shown()
                    ),
                );
            }
            Err(_) => {}
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(key: &str, value: Value) -> Value {
    json!({ "key": key, "value": value })
}

/// One `ExportTraceServiceRequest` in OTLP's JSON encoding.
fn export(project: &str, environment: &str, spans: &[SpanRecord]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut attributes = vec![
                attribute("http.request.method", json!({ "stringValue": s.method })),
                attribute("server.address", json!({ "stringValue": s.host })),
                attribute("url.path", json!({ "stringValue": s.path })),
                attribute(
                    "http.response.status_code",
                    json!({ "intValue": s.status.to_string() }),
                ),
                attribute(
                    "network.protocol.version",
                    json!({ "stringValue": s.protocol }),
                ),
                attribute("client.address", json!({ "stringValue": s.client })),
            ];
            if let Some(service) = &s.service {
                attributes.push(attribute("bow.service", json!({ "stringValue": service })));
            }
            if let Some(upstream) = &s.upstream {
                attributes.push(attribute(
                    "bow.instance",
                    json!({ "stringValue": upstream }),
                ));
            }
            let mut span = json!({
                "traceId": hex(&s.trace),
                "spanId": hex(&s.span.to_be_bytes()),
                "name": format!("{} {}", s.method, s.host),
                "kind": 2,
                "startTimeUnixNano": s.start_ns.to_string(),
                "endTimeUnixNano": (s.start_ns + s.duration_ns).to_string(),
                "attributes": attributes,
                // ERROR for 5xx (the server failed), UNSET otherwise (OTel's HTTP conventions).
                "status": if s.status >= 500 { json!({ "code": 2 }) } else { json!({}) },
            });
            if s.parent != 0 {
                span["parentSpanId"] = json!(hex(&s.parent.to_be_bytes()));
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                attribute("service.name", json!({ "stringValue": "bow-edge" })),
                attribute("service.namespace", json!({ "stringValue": project })),
                attribute("deployment.environment.name", json!({ "stringValue": environment })),
            ]},
            "scopeSpans": [{
                "scope": { "name": "bow-edge", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now_ns() -> u128 {
        std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    }

    #[test]
    fn a_batch_is_otlp_json_with_parents_only_where_the_client_had_one() {
        let record = |parent, status| SpanRecord {
            trace: [0xab; 16],
            span: 0x0102_0304_0506_0708,
            parent,
            start_ns: now_ns(),
            duration_ns: 1_500_000,
            method: "GET".into(),
            host: "shop.example.com".into(),
            path: "/cart".into(),
            status,
            service: Some("web".into()),
            upstream: Some("web.2".into()),
            client: "203.0.113.9".into(),
            protocol: "2",
        };
        let body = export("shop", "production", &[record(0, 200), record(0x1122, 503)]);
        let spans = &body["resourceSpans"][0]["scopeSpans"][0]["spans"];
        assert_eq!(spans[0]["traceId"], "abababababababababababababababab");
        assert_eq!(spans[0]["spanId"], "0102030405060708");
        assert!(spans[0].get("parentSpanId").is_none());
        assert_eq!(spans[1]["parentSpanId"], "0000000000001122");
        assert_eq!(spans[0]["kind"], 2);
        assert_eq!(spans[0]["name"], "GET shop.example.com");
        assert_eq!(spans[1]["status"]["code"], 2);
        let start: u128 = spans[0]["startTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let end: u128 = spans[0]["endTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(end - start, 1_500_000);
        let resource = &body["resourceSpans"][0]["resource"]["attributes"];
        assert_eq!(resource[0]["value"]["stringValue"], "bow-edge");
    }
}
