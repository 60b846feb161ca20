//! `bow top`: one view over an interval shows each service with its healthy instances, cpu,
//! memory and its traffic at the edge (requests per second, p99, share of 5xx), and each
//! instance under it.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::procs::free_port;
use support::stack::Stack;

#[test]
fn one_view_shows_services_instances_and_their_traffic() {
    let (http, https) = (free_port(), free_port());
    let host = "top.bow.localhost";
    let yaml = format!(
        "edge: {{ http_port: {http}, https_port: {https} }}\n\
         services:\n  web:\n    command: {{testapp}}\n    replicas: 2\n    routes: [\"{host}\"]\n  \
         worker:\n    command: {{testapp}}\n"
    );
    let stack = Stack::new("top", &yaml);
    stack.up_ok();
    // Traffic through the edge while top looks: slow answers, so p99 is about 50 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ran = Command::new("curl")
                    .args(["-sk", "-o", "/dev/null", "--max-time", "5"])
                    .args(["--resolve", &format!("{host}:{https}:127.0.0.1")])
                    .arg(format!("https://{host}:{https}/slow?ms=50"))
                    .status()
                    .unwrap();
                if ran.success() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let top = stack.run(
        &["top", "--once", "--interval", "3s"],
        Duration::from_secs(30),
    );
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    assert_eq!(top.code, 0, "{}", top.describe());
    assert!(sent.load(Ordering::Relaxed) > 5);
    let lines: Vec<&str> = top.stdout.lines().collect();
    let header = lines.iter().find(|l| l.starts_with("SERVICE")).unwrap();
    for column in ["HEALTH", "CPU", "MEMORY", "REQ/S", "P99", "5XX"] {
        assert!(header.contains(column), "{}", top.stdout);
    }
    let web: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("{}", top.stdout))
        .split_whitespace()
        .collect();
    // web  2/2  cpu%  N.N MiB  req/s  NN ms  0.0%
    assert_eq!(web[1], "2/2", "{}", top.stdout);
    assert!(web[2].ends_with('%') && web[4] == "MiB", "{}", top.stdout);
    let rate: f64 = web[5].parse().unwrap();
    assert!(rate > 1.0, "{}", top.stdout);
    let p99: f64 = web[6].parse().unwrap();
    assert!((40.0..1000.0).contains(&p99), "{}", top.stdout);
    assert_eq!(web[8], "0.0%", "{}", top.stdout);
    for instance in ["  web.1 ", "  web.2 ", "  worker.1 "] {
        let row = lines
            .iter()
            .find(|l| l.starts_with(instance))
            .unwrap_or_else(|| panic!("no {instance} in {}", top.stdout));
        assert!(row.contains("healthy") && row.contains("MiB"), "{row}");
    }
    // A service without routes has no traffic columns.
    let worker = lines.iter().find(|l| l.starts_with("worker ")).unwrap();
    let cells: Vec<&str> = worker.split_whitespace().collect();
    assert_eq!(cells[cells.len() - 3..], ["-", "-", "-"], "{worker}");
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}
