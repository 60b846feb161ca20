//! The dashboard on the admin listener, in headless Chromium (Debian's package): every service
//! and instance with its health; after an instance is killed the open page shows the restart
//! without a reload (its live updates); a screenshot is kept in target/test-artifacts/. The
//! page reads without JavaScript too: the server renders it whole.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::chromium::Chromium;
use support::procs::{free_port, http_get, kill};
use support::stack::Stack;

/// `{id: [health, restarts]}` of every instance row the page shows.
const ROWS: &str = "JSON.stringify(Object.fromEntries([...document.querySelectorAll('tr[id^=instance-]')]\
    .map(r => [r.id.slice(9), [r.dataset.health, r.dataset.restarts]])))";

#[test]
fn the_dashboard_shows_every_instance_and_a_restart_live() {
    let (http, https, admin) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "edge: {{ http_port: {http}, https_port: {https} }}\n\
         admin: {{ listen: 127.0.0.1:{admin} }}\n\
         services:\n  web:\n    command: {{testapp}}\n    replicas: 2\n    routes: [\"dash.bow.localhost\"]\n    \
         health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n  \
         worker:\n    command: {{testapp}}\n"
    );
    let stack = Stack::new("dashboard", &yaml);
    stack.up_ok();

    // Without JavaScript: the server's page names every service and instance.
    let (code, html) = http_get(admin, "/");
    assert_eq!(code, 200, "{html}");
    for id in [
        "service-web",
        "service-worker",
        "instance-web.1",
        "instance-web.2",
        "instance-worker.1",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "no {id} in {html}");
    }

    let mut browser = Chromium::start(&stack.dir.path().join("chromium"));
    browser.navigate(&format!("http://127.0.0.1:{admin}/"));
    let rows: Value = serde_json::from_str(browser.evaluate(ROWS).as_str().unwrap()).unwrap();
    for id in ["web.1", "web.2", "worker.1"] {
        assert_eq!(rows[id][0], "healthy", "{rows}");
        assert_eq!(rows[id][1], "0", "{rows}");
    }
    // A mark in the page's own state: a reload would lose it.
    browser.evaluate("window.bowMark = 'kept'");

    let pid = stack.pid("web.1");
    kill(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows: Value = serde_json::from_str(browser.evaluate(ROWS).as_str().unwrap()).unwrap();
        if rows["web.1"] == serde_json::json!(["healthy", "1"]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed web.1 restarted: {rows}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        browser.evaluate("window.bowMark"),
        "kept",
        "the page was reloaded"
    );
    let updates = browser.evaluate("Number(document.getElementById('live').dataset.updates)");
    assert!(
        updates.as_f64().unwrap_or(0.0) >= 1.0,
        "no live update: {updates}"
    );

    let shot = browser.screenshot();
    assert!(shot.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let artifacts = support::root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("dashboard.png"), &shot).unwrap();
    drop(browser);

    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}
