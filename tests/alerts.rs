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
