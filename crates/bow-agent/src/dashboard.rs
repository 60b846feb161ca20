//! The dashboard on the admin listener: the whole system on one read-only page — services,
//! instances with health, restarts, uptime, cpu and memory, release and last deploy, request
//! rate, 5xx share, p50/p99, cpu and memory sparklines over the last hour
//! (`dashboard_history.rs`), recent events and each service's log tail. Rendered on the
//! server, so it reads without JavaScript; with it, `/events` (server-sent events) sends the
//! same `<main>` again every two seconds and the page swaps it in. Assets are compiled in.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use crate::agent::{Agent, now_ms};
use crate::api::{InstanceStatus, StatusReport};
use crate::dashboard_history::{History, Sample, Series};

const STYLE: &str = include_str!("dashboard/style.css");
const SCRIPT: &str = include_str!("dashboard/live.js");
/// Log lines shown per service, and events on the page.
const LOG_LINES: usize = 8;
const EVENTS: usize = 15;

/// What one rendering shows, read at once.
struct View {
    status: StatusReport,
    usage: BTreeMap<String, bow_driver::Usage>,
    /// Per service: the newest release's number, status and when it finished.
    releases: BTreeMap<String, (i64, &'static str, Option<i64>)>,
    events: Vec<bow_store::EventRow>,
    logs: BTreeMap<String, Vec<String>>,
    series: BTreeMap<String, Series>,
    certificates: Vec<crate::certificates::Served>,
}

fn gather(agent: &Arc<Agent>, history: &Mutex<History>) -> View {
    let status = agent.status();
    let mut usage = BTreeMap::new();
    let mut logs = BTreeMap::new();
    let definitions: BTreeMap<String, bow_spec::Service> = agent
        .lock()
        .spec
        .as_ref()
        .map(|spec| spec.services.clone())
        .unwrap_or_default();
    for service in &status.services {
        for instance in &service.instances {
            if let Some(handle) = crate::adopt::live_handle(agent, &instance.id) {
                let used = agent.drivers.for_handle(&handle).usage(&handle);
                usage.insert(instance.id.clone(), used);
            }
        }
        if let (Some(first), Some(definition)) =
            (service.instances.first(), definitions.get(&service.name))
            && let Ok(driver) = agent.drivers.for_service(definition)
        {
            let lines = driver
                .log_tail(&first.id, LOG_LINES)
                .into_iter()
                .map(|line| line.text)
                .collect();
            logs.insert(service.name.clone(), lines);
        }
    }
    let mut releases = BTreeMap::new();
    let store = agent.store();
    for release in store.releases(None).unwrap_or_default() {
        let newer = releases
            .get(&release.service)
            .is_none_or(|(number, _, _)| *number < release.number);
        if newer {
            releases.insert(
                release.service.clone(),
                (
                    release.number,
                    release.status.as_str(),
                    release.finished_at_ms,
                ),
            );
        }
    }
    let events = store.last_events(EVENTS).unwrap_or_default();
    drop(store);
    let history = history.lock().unwrap_or_else(|e| e.into_inner());
    let series = status
        .services
        .iter()
        .map(|s| (s.name.clone(), history.series(&s.name)))
        .collect();
    View {
        status,
        usage,
        releases,
        events,
        logs,
        series,
        certificates: crate::certificates::served(agent),
    }
}

/// Takes one sample per service into `history` (the sampler's tick).
pub(crate) fn sample(agent: &Arc<Agent>, history: &Mutex<History>) {
    let edge = agent.edge_metrics();
    let status = agent.status();
    let at_ms = now_ms();
    let mut samples = BTreeMap::new();
    for service in &status.services {
        let mut sample = Sample {
            at_ms,
            ..Sample::default()
        };
        if let Some(edge) = edge
            .as_ref()
            .and_then(|e| e.services.iter().find(|s| s.service == service.name))
        {
            sample.requests = edge.requests.total();
            sample.errors = edge.requests.server_error;
            sample.latency = edge.latency.counts.clone();
        }
        for instance in &service.instances {
            if let Some(handle) = crate::adopt::live_handle(agent, &instance.id) {
                let used = agent.drivers.for_handle(&handle).usage(&handle);
                sample.cpu_seconds += used.cpu_micros.unwrap_or(0) as f64 / 1e6;
                sample.memory_bytes += used.memory_bytes.unwrap_or(0);
            }
        }
        samples.insert(service.name.clone(), sample);
    }
    history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record(samples);
}

/// The whole page.
pub(crate) fn page(agent: &Arc<Agent>, history: &Mutex<History>) -> String {
    let view = gather(agent, history);
    let status = &view.status;
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>bow · {} ({})</title><style>{STYLE}</style></head><body>\
         <header><h1>{} <small>{}</small></h1></header>",
        esc(&status.project),
        esc(&status.environment),
        esc(&status.project),
        esc(&status.environment),
    );
    out.push_str("<main id=\"live\" data-updates=\"0\">");
    main_fragment(&view, &mut out);
    out.push_str("</main>");
    let _ = writeln!(out, "<script>{SCRIPT}</script></body></html>");
    out
}

/// The `<main>` content alone (what `/events` sends).
pub(crate) fn fragment(agent: &Arc<Agent>, history: &Mutex<History>) -> String {
    let view = gather(agent, history);
    let mut out = String::with_capacity(16 * 1024);
    main_fragment(&view, &mut out);
    out
}

fn main_fragment(view: &View, out: &mut String) {
    let status = &view.status;
    let _ = write!(
        out,
        "<p class=\"meta\">revision {} · agent pid {} · {} · updated <time>{}</time></p>",
        status.revision,
        status.agent_pid,
        plural(status.services.len(), "service"),
        crate::agent::clock(now_ms())
    );
    for note in &status.notes {
        let _ = write!(out, "<p class=\"note\">{}</p>", esc(note));
    }
    out.push_str("<section class=\"services\">");
    for service in &status.services {
        let state = service.state.label();
        let _ = write!(
            out,
            "<article class=\"service\" id=\"service-{name}\" data-state=\"{state}\">\
             <h2>{name} <span class=\"badge s-{state}\">{state}</span></h2>",
            name = esc(&service.name),
        );
        let deploy = match view.releases.get(&service.name) {
            Some((number, status, finished)) => format!(
                "release {number} ({status}{})",
                finished.map_or(String::new(), |at| format!(" {}", crate::agent::clock(at)))
            ),
            None => "no release yet".to_string(),
        };
        let _ = write!(
            out,
            "<p class=\"meta\">{} · {} · {}</p>",
            esc(&service.kind),
            plural(service.replicas as usize, "replica"),
            esc(&deploy)
        );
        if let Some(series) = view.series.get(&service.name) {
            sparklines(series, out);
        }
        instances_table(&service.instances, &view.usage, out);
        if let Some(lines) = view.logs.get(&service.name).filter(|l| !l.is_empty()) {
            let _ = write!(
                out,
                "<details><summary>log tail ({})</summary><pre>",
                esc(&service.instances[0].id)
            );
            for line in lines {
                let _ = writeln!(out, "{}", esc(line));
            }
            out.push_str("</pre></details>");
        }
        out.push_str("</article>");
    }
    out.push_str("</section>");
    if !view.certificates.is_empty() {
        out.push_str("<section class=\"certificates\"><h2>Certificates</h2><ul>");
        let now = now_ms();
        for certificate in &view.certificates {
            let left = (certificate.not_after_ms - now) / 1000;
            let when = if left <= 0 {
                "expired".to_string()
            } else {
                format!("ends in {}", duration(left as u64))
            };
            let _ = write!(
                out,
                "<li class=\"{}\"><b>{}</b> {} ({}, {})</li>",
                if left < 14 * 86_400 { "soon" } else { "ok" },
                esc(&certificate.host),
                when,
                certificate.source,
                esc(&certificate.issuer)
            );
        }
        out.push_str("</ul></section>");
    }
    out.push_str("<section class=\"events\"><h2>Recent events</h2><ol>");
    for event in view.events.iter().rev() {
        let _ = write!(
            out,
            "<li><time>{}</time> <b>{}</b> {} {}</li>",
            crate::agent::clock(event.at_ms),
            esc(&event.kind),
            esc(&event.instance),
            esc(&event.message)
        );
    }
    out.push_str("</ol></section>");
}

fn instances_table(
    instances: &[InstanceStatus],
    usage: &BTreeMap<String, bow_driver::Usage>,
    out: &mut String,
) {
    out.push_str(
        "<table><thead><tr><th>instance</th><th>health</th><th>restarts</th><th>pid</th>\
         <th>uptime</th><th>cpu</th><th>memory</th></tr></thead><tbody>",
    );
    for instance in instances {
        let health = instance.health.label();
        let used = usage.get(&instance.id).copied().unwrap_or_default();
        let _ = write!(
            out,
            "<tr id=\"instance-{id}\" data-health=\"{health}\" data-restarts=\"{restarts}\">\
             <td>{id}</td><td class=\"s-{health}\">{health}</td><td>{restarts}</td><td>{pid}</td>\
             <td>{uptime}</td><td>{cpu}</td><td>{memory}</td></tr>",
            id = esc(&instance.id),
            restarts = instance.restarts,
            pid = instance.pid.map_or("-".to_string(), |p| p.to_string()),
            uptime = instance
                .uptime_ms
                .map_or("-".to_string(), |ms| duration(ms / 1000)),
            cpu = used
                .cpu_micros
                .map_or("-".to_string(), |us| format!("{:.1} s", us as f64 / 1e6)),
            memory = used.memory_bytes.map_or("-".to_string(), bytes),
        );
    }
    out.push_str("</tbody></table>");
    if instances.is_empty() {
        out.push_str("<p class=\"meta\">no instance</p>");
    }
}

fn sparklines(series: &Series, out: &mut String) {
    let last = |values: &[f64]| values.last().copied().unwrap_or(0.0);
    let lines: [(&str, &[f64], String); 6] = [
        (
            "req/s",
            &series.requests_per_second,
            format!("{:.1}", last(&series.requests_per_second)),
        ),
        (
            "5xx",
            &series.error_percent,
            format!("{:.1}%", last(&series.error_percent)),
        ),
        (
            "p50",
            &series.p50_seconds,
            format!("{:.1} ms", last(&series.p50_seconds) * 1000.0),
        ),
        (
            "p99",
            &series.p99_seconds,
            format!("{:.1} ms", last(&series.p99_seconds) * 1000.0),
        ),
        (
            "cpu",
            &series.cpu_cores,
            format!("{:.2} cores", last(&series.cpu_cores)),
        ),
        (
            "memory",
            &series.memory_bytes,
            bytes(last(&series.memory_bytes) as u64),
        ),
    ];
    out.push_str("<div class=\"sparks\">");
    for (name, values, now) in lines {
        let _ = write!(
            out,
            "<figure><figcaption>{name} <b>{}</b></figcaption>",
            esc(&now)
        );
        svg(values, out);
        out.push_str("</figure>");
    }
    out.push_str("</div>");
}

/// A 120×24 polyline of `values` (the last hour), scaled to its own maximum.
fn svg(values: &[f64], out: &mut String) {
    out.push_str(
        "<svg viewBox=\"0 0 120 24\" width=\"120\" height=\"24\" role=\"img\" aria-hidden=\"true\">",
    );
    if values.len() >= 2 {
        let max = values.iter().copied().fold(0.0f64, f64::max).max(1e-9);
        let step = 120.0 / (crate::dashboard_history::SAMPLES - 1) as f64;
        let start = 120.0 - step * (values.len() - 1) as f64;
        out.push_str("<polyline points=\"");
        for (index, value) in values.iter().enumerate() {
            let x = start + step * index as f64;
            let y = 23.0 - 22.0 * (value / max);
            let _ = write!(out, "{x:.1},{y:.1} ");
        }
        out.push_str("\"/>");
    }
    out.push_str("</svg>");
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n => format!("{} KiB", n >> 10),
    }
}

/// Text safe inside HTML elements and double-quoted attributes.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One server-sent event carrying `html` (each line a `data:` line).
pub(crate) fn event(html: &str) -> String {
    let mut out = String::with_capacity(html.len() + 64);
    out.push_str("event: state\n");
    for line in html.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("<b a=\"1\">&'"), "&lt;b a=&quot;1&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn events_carry_every_line_as_data() {
        assert_eq!(
            event("<p>a</p>\n<p>b</p>"),
            "event: state\ndata: <p>a</p>\ndata: <p>b</p>\n\n"
        );
    }

    #[test]
    fn sparklines_scale_to_their_maximum() {
        let mut out = String::new();
        svg(&[0.0, 2.0, 1.0], &mut out);
        assert!(out.contains("polyline"), "{out}");
        assert!(out.contains(",1.0 "), "the maximum at the top: {out}");
        let mut out = String::new();
        svg(&[], &mut out);
        assert!(!out.contains("polyline"));
    }
}
