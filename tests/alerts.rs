//! Alerts reach a webhook receiver in Alertmanager's format (version 4): a crash loop is one
//! firing notification and, once the service is fixed, one resolved notification, whatever
//! the number of restarts; `bow alerts` lists it while it fires; `bow alerts test` sends a
//! test notification.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::stack::{Stack, UP_TIMEOUT, run_for, service, testapp};

/// An HTTP receiver on a free loopback port that keeps every JSON body POSTed to it.
struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let kept = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok()
                    && request_line.starts_with("POST /hook ")
                    && let Ok(json) = serde_json::from_slice::<Value>(&body)
                {
                    kept.lock().unwrap().push(json);
                }
                let mut stream = stream;
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Receiver { port, received }
    }

    /// The notifications about `alertname`, in the order they came.
    fn about(&self, alertname: &str) -> Vec<Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n["alerts"][0]["labels"]["alertname"] == alertname)
            .cloned()
            .collect()
    }

    fn wait_for(&self, alertname: &str, status: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self
                .about(alertname)
                .into_iter()
                .find(|n| n["status"] == status)
            {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no {status} {alertname} in {timeout:?}; received: {:?}",
                self.received.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn stack_yaml(receiver: &Receiver, crash: bool) -> String {
    let env = if crash {
        "    env: { TESTAPP_CRASH_AT_START: \"1\" }\n"
    } else {
        ""
    };
    format!(
        "alerts: {{ webhook: \"http://127.0.0.1:{}/hook\", no_healthy_for: 10m }}\n\
         services:\n  steady:\n    command: {{testapp}}\n  \
         flappy:\n    command: {{testapp}}\n{env}    deploy: {{ timeout: 10m }}\n",
        receiver.port
    )
}

/// `bow up -d` in a thread (a crash-looping service keeps it waiting).
fn up_aside(stack: &Stack) -> std::thread::JoinHandle<support::stack::Ran> {
    let mut command = stack.command(&["up", "-d"]);
    std::thread::spawn(move || run_for(&mut command, UP_TIMEOUT))
}

#[test]
fn a_crash_loop_is_one_firing_and_one_resolved_notification() {
    let receiver = Receiver::start();
    let stack = Stack::new("alerts", &stack_yaml(&receiver, true));
    let first_up = up_aside(&stack);

    let firing = receiver.wait_for("InstanceCrashLooping", "firing", Duration::from_secs(60));
    assert_eq!(firing["version"], "4");
    assert_eq!(firing["receiver"], "bow");
    let alert = &firing["alerts"][0];
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["labels"]["service"], "flappy");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["labels"]["project"], stack.project.as_str());
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("flappy.1 crash-looping"),
        "{firing}"
    );
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert!(alert["startsAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(alert["fingerprint"].as_str().unwrap().len(), 16);
    assert!(
        firing["text"]
            .as_str()
            .unwrap()
            .starts_with("[FIRING] InstanceCrashLooping"),
        "{firing}"
    );

    let listed = stack.run(&["alerts"], Duration::from_secs(30));
    assert_eq!(listed.code, 0, "{}", listed.describe());
    assert!(
        listed.stdout.contains("InstanceCrashLooping") && listed.stdout.contains("flappy"),
        "{}",
        listed.describe()
    );

    // The fix: the same service without the crash.
    let text = format!(
        "project: {}\n{}",
        stack.project,
        stack_yaml(&receiver, false).replace("{testapp}", testapp().to_str().unwrap())
    );
    std::fs::write(&stack.file, text).unwrap();
    let second_up = up_aside(&stack);
    stack.wait_status("flappy healthy", Duration::from_secs(60), |status| {
        service(status, "flappy").is_some_and(|s| s["state"] == "healthy")
    });
    let resolved = receiver.wait_for("InstanceCrashLooping", "resolved", Duration::from_secs(60));
    assert_eq!(
        resolved["alerts"][0]["fingerprint"], alert["fingerprint"],
        "{resolved}"
    );
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    // Nothing more comes about it: exactly one firing and one resolved.
    std::thread::sleep(Duration::from_secs(5));
    let statuses: Vec<Value> = receiver
        .about("InstanceCrashLooping")
        .iter()
        .map(|n| n["status"].clone())
        .collect();
    assert_eq!(statuses, ["firing", "resolved"]);
    let listed = stack.run(&["alerts", "--output", "json"], Duration::from_secs(30));
    let firing: Value = serde_json::from_str(&listed.stdout).expect("bow alerts --output json");
    // Others may fire on this machine (its disk); the crash loop is over.
    assert!(
        firing
            .as_array()
            .unwrap()
            .iter()
            .all(|alert| alert["name"] != "InstanceCrashLooping"),
        "{firing}"
    );

    let test = stack.run(&["alerts", "test"], Duration::from_secs(30));
    assert_eq!(test.code, 0, "{}", test.describe());
    assert!(test.stderr.contains("answered 200"), "{}", test.describe());
    receiver.wait_for("BowTestAlert", "firing", Duration::from_secs(10));

    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
    let _ = first_up.join();
    let _ = second_up.join();
}

/// A certificate file for `host` that ends in two days.
fn short_certificate(dir: &std::path::Path, host: &str) -> (String, String) {
    let (cert, key) = (dir.join("edge.pem"), dir.join("edge.key"));
    let ran = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={host}")])
        .args(["-addext", &format!("subjectAltName=DNS:{host}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    (
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
    )
}

#[test]
fn slow_answers_a_certificate_near_its_end_and_a_rule_of_ones_own_alert() {
    let receiver = Receiver::start();
    let host = "alerts-more.bow.localhost";
    let keys = tempfile::tempdir().unwrap();
    let (cert, key) = short_certificate(keys.path(), host);
    let (http, https, admin) = (
        support::procs::free_port(),
        support::procs::free_port(),
        support::procs::free_port(),
    );
    let yaml = format!(
        "edge: {{ http_port: {http}, https_port: {https}, tls: {{ cert: \"{cert}\", key: \"{key}\" }} }}\n\
         admin: {{ listen: \"127.0.0.1:{admin}\" }}\n\
         alerts:\n  webhook: \"http://127.0.0.1:{}/hook\"\n  p99_over: 100ms\n  \
         certificate_expiry: 14d\n  rules:\n    - name: WebRestarted\n      \
         metric: bow_instance_restarts_total\n      labels: {{ service: web }}\n      \
         above: 0\n      severity: info\n      summary: web restarted\n\
         services:\n  web:\n    command: {{testapp}}\n    routes: [\"{host}\"]\n",
        receiver.port
    );
    let stack = Stack::new("alerts-more", &yaml);
    let up = stack.up();
    assert_eq!(up.code, 0, "{}", up.describe());

    // The certificate file ends in 2 days: within 14, and critical under 3.
    let expiring = receiver.wait_for("CertificateExpiring", "firing", Duration::from_secs(30));
    let labels = &expiring["alerts"][0]["labels"];
    assert_eq!(labels["host"], host, "{expiring}");
    assert_eq!(labels["severity"], "critical", "{expiring}");
    let metrics = std::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{admin}/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let series = metrics
        .lines()
        .find(|l| l.starts_with("bow_certificate_expiry_timestamp_seconds{"))
        .unwrap_or_else(|| panic!("no certificate series in\n{metrics}"));
    assert!(series.contains(&format!("host=\"{host}\"")), "{series}");
    let ends: f64 = series.rsplit(' ').next().unwrap().parse().unwrap();
    let left = ends - support::stack::now_ms() as f64 / 1000.0;
    assert!(
        (86_400.0..2.0 * 86_400.0 + 60.0).contains(&left),
        "{series}"
    );

    // The dashboard lists it, marked as ending soon.
    let page = std::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{admin}/")])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(
        page.contains(&format!("<li class=\"soon\"><b>{host}</b> ends in 4")),
        "{page}"
    );

    // 30 answers of 200 ms through the edge: p99 over 100 ms.
    let mut slow = 0;
    for _ in 0..30 {
        let ran = std::process::Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--resolve", &format!("{host}:{https}:127.0.0.1")])
            .arg(format!("https://{host}:{https}/slow?ms=200"))
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&ran.stdout).into_owned();
        assert_eq!(code, "200", "{}", String::from_utf8_lossy(&ran.stderr));
        slow += 1;
    }
    assert_eq!(slow, 30);
    let latency = receiver.wait_for("HighLatency", "firing", Duration::from_secs(30));
    assert_eq!(
        latency["alerts"][0]["labels"]["service"], "web",
        "{latency}"
    );
    let summary = latency["alerts"][0]["annotations"]["summary"]
        .as_str()
        .unwrap();
    assert!(summary.starts_with("p99 2"), "{summary}");
    assert!(
        receiver.about("WebRestarted").is_empty(),
        "nothing restarted yet"
    );

    // The operator's own rule: web's restart counter above 0.
    let pid = stack.pid("web.1");
    support::procs::kill(pid, libc::SIGKILL);
    let restarted = receiver.wait_for("WebRestarted", "firing", Duration::from_secs(30));
    let alert = &restarted["alerts"][0];
    assert_eq!(alert["labels"]["service"], "web", "{restarted}");
    assert_eq!(alert["labels"]["instance"], "web.1", "{restarted}");
    assert_eq!(alert["labels"]["severity"], "info", "{restarted}");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("web restarted (bow_instance_restarts_total = 1)"),
        "{restarted}"
    );
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}
