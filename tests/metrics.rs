//! The admin listener's `/metrics`: a real Prometheus (Debian's package), configured with the
//! job `bow metrics scrape-config` prints, scrapes the agent with the bearer token from a bow secret, reports `up == 1` and has the `bow_` series with their
//! labels after traffic through the edge; `promtool check metrics` passes on both formats;
//! without the token the listener answers 401; docs/metrics.md lists exactly the series written;
//! the Grafana dashboard in contrib/ queries them.

mod support;

use std::process::Command;
use std::time::Duration;

use support::procs::free_port;
use support::prometheus::{Prometheus, promtool_check_metrics};
use support::secrets::{init_and_set, use_key};
use support::stack::Stack;

const TOKEN: &str = "tok-metrics-7d1e";

fn curl(args: &[&str]) -> (String, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_string(), code.to_string())
}

#[test]
fn prometheus_scrapes_the_agent_with_its_token() {
    let (http, https, admin) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "edge: {{ http_port: {http}, https_port: {https} }}\n\
         admin: {{ listen: 127.0.0.1:{admin}, token_secret: admin_token }}\n\
         services:\n  web:\n    command: {{testapp}}\n    replicas: 2\n    routes: [\"metrics.bow.localhost\"]\n    \
         health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n"
    );
    let stack = Stack::new("metrics", &yaml);
    use_key(&stack, "me");
    init_and_set(&stack, &[("admin_token", TOKEN)]);
    stack.up_ok();

    let url = format!("http://127.0.0.1:{admin}/metrics");
    let (body, code) = curl(&[&url]);
    assert_eq!(code, "401", "{body}");
    let (_, code) = curl(&["-H", "Authorization: Bearer wrong-token", &url]);
    assert_eq!(code, "401");
    let bearer = format!("Authorization: Bearer {TOKEN}");

    let resolve = format!("metrics.bow.localhost:{https}:127.0.0.1");
    let site = format!("https://metrics.bow.localhost:{https}/");
    for _ in 0..5 {
        let (_, code) = curl(&["-k", "--resolve", &resolve, &site]);
        assert_eq!(code, "200");
    }
    let (_, code) = curl(&["-k", "-X", "DELETE", "--resolve", &resolve, &site]);
    assert!(code.starts_with('4') || code.starts_with('2'), "{code}");

    let (text, code) = curl(&["-H", &bearer, &url]);
    assert_eq!(code, "200", "{text}");
    let (promtool, output) = promtool_check_metrics(&text);
    assert_eq!(promtool, 0, "promtool check metrics: {output}\n{text}");
    for series in [
        "bow_edge_requests_total{service=\"web\",route=\"metrics.bow.localhost/\",method=\"GET\",code=\"2xx\"} 5",
        "bow_edge_requests_total{service=\"web\",route=\"metrics.bow.localhost/\",method=\"DELETE\",",
        "bow_instances{service=\"web\",state=\"healthy\"} 2",
        "bow_deploys_total{service=\"web\",result=\"succeeded\"} 1",
        "bow_edge_request_duration_seconds_bucket{service=\"web\",route=\"metrics.bow.localhost/\",le=\"+Inf\"} 6",
        "bow_instance_memory_bytes{service=\"web\",instance=\"web.1\"}",
        "bow_instance_cpu_seconds_total{service=\"web\",instance=\"web.2\"}",
        "bow_health_checks_total{service=\"web\",result=\"passed\"}",
        "bow_agent_resident_memory_bytes ",
    ] {
        assert!(text.contains(series), "no {series} in\n{text}");
    }
    documented_series_match(&text);
    let (open, code) = curl(&[
        "-H",
        &bearer,
        "-H",
        "Accept: application/openmetrics-text; version=1.0.0",
        &url,
    ]);
    assert_eq!(code, "200");
    assert!(
        open.ends_with("# EOF\n") || open.ends_with("# EOF"),
        "{open}"
    );

    // The job `bow metrics scrape-config` prints, scraping every second.
    let token_file = stack.write("prometheus/token", TOKEN);
    let job = stack.run(
        &[
            "metrics",
            "scrape-config",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(job.code, 0, "{}", job.describe());
    assert!(!job.stdout.contains(TOKEN), "{}", job.stdout);
    assert!(
        job.stdout.contains("scrape_interval: 15s"),
        "{}",
        job.stdout
    );
    let prometheus = Prometheus::start(
        &stack.dir.path().join("prometheus"),
        &job.stdout
            .replace("scrape_interval: 15s", "scrape_interval: 1s"),
    );
    let wait = Duration::from_secs(30);
    prometheus.wait_value("up", wait, |up| up == 1.0);
    let requests = prometheus.wait_value(
        "sum(bow_edge_requests_total{service=\"web\",code=\"2xx\"})",
        wait,
        |n| n >= 5.0,
    );
    assert_eq!(requests, 5.0);
    prometheus.wait_value(
        "bow_instances{service=\"web\",state=\"healthy\"}",
        wait,
        |n| n == 2.0,
    );
    let routes = prometheus.query("bow_edge_request_duration_seconds_count");
    assert_eq!(routes.len(), 1, "{routes:?}");
    let labels = &routes[0]["metric"];
    assert_eq!(labels["service"], "web");
    assert_eq!(labels["route"], "metrics.bow.localhost/");
    let instances = prometheus.query("bow_instance_memory_bytes{service=\"web\"} > 0");
    assert_eq!(instances.len(), 2, "{instances:?}");
    // Every query of the Grafana dashboard in contrib/ is valid PromQL over these series.
    let grafana: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(support::root().join("contrib/grafana/bow.json")).unwrap(),
    )
    .unwrap();
    // Rates need two scrapes in their window.
    prometheus.wait_value(
        "count_over_time(bow_agent_cpu_seconds_total[1m])",
        wait,
        |n| n >= 3.0,
    );
    let mut answered = 0;
    for panel in grafana["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m");
            if !prometheus.query(&expr).is_empty() {
                answered += 1;
            }
        }
    }
    assert!(answered >= 8, "only {answered} dashboard queries had data");
    drop(prometheus);

    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}

/// docs/metrics.md names every series the agent writes, and writes no series it lacks.
fn documented_series_match(text: &str) {
    let page = std::fs::read_to_string(support::root().join("docs/metrics.md")).unwrap();
    let written: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    let undocumented: Vec<&&str> = written
        .iter()
        .filter(|name| !page.contains(&format!("`{name}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/metrics.md does not list {undocumented:?}"
    );
    let listed: Vec<&str> = page
        .lines()
        .filter_map(|line| line.strip_prefix("| `bow_"))
        .filter_map(|rest| rest.split('`').next())
        .collect();
    let missing: Vec<&&str> = listed
        .iter()
        .filter(|name| !written.contains(&format!("bow_{name}").as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/metrics.md lists series /metrics does not write: {missing:?}"
    );
}

#[test]
fn an_admin_listener_off_loopback_speaks_https_only_and_prometheus_scrapes_it() {
    let admin = free_port();
    let yaml = format!(
        "admin: {{ listen: \"0.0.0.0:{admin}\", token_secret: admin_token }}\n\
         services:\n  web:\n    command: {{testapp}}\n"
    );
    let stack = Stack::new("metrics-tls", &yaml);
    use_key(&stack, "me");
    init_and_set(&stack, &[("admin_token", TOKEN)]);
    stack.up_ok();
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let ca = stack.state_dir.join("ca/ca.pem");
    let url = format!("https://127.0.0.1:{admin}/metrics");

    // Plain HTTP gets no answer: the listener speaks TLS only.
    let (_, code) = curl(&["-H", &bearer, &format!("http://127.0.0.1:{admin}/metrics")]);
    assert_ne!(code, "200");
    // TLS with bow's CA (the certificate names the address connected to), and the token.
    let (text, code) = curl(&["--cacert", ca.to_str().unwrap(), "-H", &bearer, &url]);
    assert_eq!(code, "200", "{text}");
    assert!(text.contains("bow_agent_info{"), "{text}");
    let (_, code) = curl(&["--cacert", ca.to_str().unwrap(), &url]);
    assert_eq!(code, "401");
    // A name (SNI) gets a certificate for that name.
    let (_, code) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "-H",
        &bearer,
        "--resolve",
        &format!("agent.example.internal:{admin}:127.0.0.1"),
        &format!("https://agent.example.internal:{admin}/metrics"),
    ]);
    assert_eq!(code, "200");

    let token_file = stack.write("prometheus/token", TOKEN);
    let job = stack.run(
        &[
            "metrics",
            "scrape-config",
            "--token-file",
            token_file.to_str().unwrap(),
            "--ca-file",
            ca.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(job.code, 0, "{}", job.describe());
    assert!(job.stdout.contains("scheme: https"), "{}", job.stdout);
    // The job names this host; Prometheus here reaches it on loopback.
    let config = job
        .stdout
        .lines()
        .map(|line| match line.trim_start().strip_prefix("- targets: ") {
            Some(_) => format!("    - targets: ['127.0.0.1:{admin}']"),
            None => line.replace("scrape_interval: 15s", "scrape_interval: 1s"),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let prometheus = Prometheus::start(&stack.dir.path().join("prometheus"), &config);
    prometheus.wait_value("up", Duration::from_secs(30), |up| up == 1.0);
    drop(prometheus);
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}
