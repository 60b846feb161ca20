//! Restarts back off only for a program that cannot start: the first at once, then 100 ms
//! doubling; three or more restarts in a row without becoming healthy show as `crash-looping`.
//! An instance killed after it served is restarted at once, every time (issue 16: a kill every
//! 1.7 s used to back three healthy replicas off into a 30 s outage).

mod support;

use std::time::{Duration, Instant};

use support::procs::{LogLine, kill, now_micros};
use support::stack::{Stack, UP_TIMEOUT, WAIT, instance, show_events};

/// The first `<number>[ ]<unit>` in `text`, in milliseconds (`ms`, `s`, `m`).
fn first_duration_ms(text: &str) -> Option<f64> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            let number: Option<f64> = text[start..i].parse().ok();
            let rest = text[i..].trim_start_matches(' ');
            let unit = rest
                .split(|c: char| !c.is_ascii_alphabetic())
                .next()
                .unwrap_or("");
            let factor = match unit {
                "ms" => Some(1.0),
                "s" | "sec" | "secs" => Some(1000.0),
                "m" | "min" => Some(60_000.0),
                _ => None,
            };
            if let (Some(number), Some(factor)) = (number, factor) {
                return Some(number * factor);
            }
        } else {
            i += 1;
        }
    }
    None
}

/// Milliseconds from each "crashing" line to the next "listening" line.
fn restart_gaps_ms(lines: &[LogLine]) -> Vec<f64> {
    let mut gaps = Vec::new();
    let mut crashed_at = None;
    for line in lines {
        if line.text.starts_with("crashing with exit code") {
            crashed_at = Some(line.micros);
        } else if line.text.starts_with("listening on")
            && let Some(crashed) = crashed_at.take()
        {
            gaps.push((line.micros - crashed) as f64 / 1000.0);
        }
    }
    gaps
}

#[test]
fn a_crashing_instance_backs_off_doubling_and_shows_as_crash_looping() {
    let stack = Stack::new(
        "backoff",
        "
services:
  flappy:
    command: {testapp}
    env: { TESTAPP_CRASH_AFTER: 200ms }
",
    );
    // It never becomes healthy, so `up -d` must fail; it runs aside while the test watches.
    let up = {
        let command = stack.command(&["up", "-d"]);
        std::thread::spawn(move || {
            let mut command = command;
            support::stack::run_for(&mut command, UP_TIMEOUT)
        })
    };

    // Six starts are five restarts: delays 0, 100, 200, 400, 800 ms.
    let mut states = Vec::new();
    let deadline = Instant::now() + WAIT;
    let lines = loop {
        if let Some(status) = stack.status()
            && let Some(flappy) = instance(&status, "flappy.1")
        {
            let state = flappy["health"].as_str().unwrap_or("?").to_string();
            if states.last() != Some(&state) {
                states.push(state);
            }
        }
        let lines = stack.log_lines("flappy.1");
        if lines
            .iter()
            .filter(|l| l.text.starts_with("listening on"))
            .count()
            >= 6
            && states.iter().any(|s| s == "crash-looping")
        {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "flappy.1 did not restart 5 times and show crash-looping within {WAIT:?}; states seen: {states:?}; restart gaps {:?}\n{}",
            restart_gaps_ms(&lines),
            stack.diagnose()
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    let gaps = restart_gaps_ms(&lines);
    let expected = [0.0, 100.0, 200.0, 400.0, 800.0];
    assert!(gaps.len() >= 5, "{gaps:?}");
    assert!(
        gaps[0] < 200.0,
        "the first restart should be at once, took {gaps:?} ms"
    );
    for k in 1..5 {
        assert!(
            gaps[k] >= 0.9 * expected[k] && gaps[k] <= expected[k] + 1000.0,
            "restart {} came {:.0} ms after the crash, expected about {} ms (all: {gaps:?})",
            k + 1,
            gaps[k],
            expected[k]
        );
        assert!(gaps[k] > gaps[k - 1], "delays should grow: {gaps:?}");
    }

    eprintln!("restart gaps (ms): {gaps:?}; states seen: {states:?}");
    // Between attempts it shows as crash-looping (seen above); it is never healthy.
    assert!(!states.iter().any(|s| s == "healthy"), "{states:?}");
    let events = stack.events();
    assert!(
        events.iter().any(|e| e.is("crash-looping", "flappy.1")),
        "no `crash-looping` event:\n{}",
        show_events(&events)
    );
    let delays: Vec<f64> = events
        .iter()
        .filter(|e| e.is("backoff", "flappy.1"))
        .map(|e| {
            first_duration_ms(&e.message)
                .unwrap_or_else(|| panic!("a backoff event should say how long: {e}"))
        })
        .filter(|delay| *delay > 0.0) // a `backoff` event for the immediate first restart
        .collect();
    assert!(
        delays.len() >= 3,
        "expected a `backoff` event per delayed restart:\n{}",
        show_events(&events)
    );
    for pair in delays.windows(2) {
        if pair[1] < 30_000.0 {
            assert!(
                (pair[1] - 2.0 * pair[0]).abs() <= 0.1 * pair[1],
                "backoff delays should double: {delays:?}\n{}",
                show_events(&events)
            );
        }
    }
    assert!(
        delays[0] >= 90.0 && delays[0] <= 110.0,
        "the first delay should be 100 ms: {delays:?}"
    );

    let up = up.join().unwrap();
    assert!(
        up.code == 1 && up.output().contains("flappy.1"),
        "bow up -d should fail naming flappy.1: {}",
        up.describe()
    );
}

#[test]
fn an_instance_killed_after_it_served_restarts_at_once_every_time() {
    let stack = Stack::new(
        "backoff-reset",
        "
services:
  steady:
    command: {testapp}
    health: { http: /healthz, interval: 100ms, timeout: 1s, retries: 3 }
",
    );
    stack.up_ok();

    // Kills the healthy instance; returns ms from the kill until its successor listened.
    let kill_and_time = |label: &str| -> f64 {
        let status = stack.wait_status("steady.1 healthy", WAIT, |s| {
            instance(s, "steady.1").is_some_and(|i| i["health"] == "healthy")
        });
        let pid = instance(&status, "steady.1").unwrap()["pid"]
            .as_i64()
            .unwrap() as i32;
        let before = stack
            .log_lines("steady.1")
            .iter()
            .filter(|l| l.text.starts_with("listening on"))
            .count();
        let killed_at = now_micros();
        kill(pid, libc::SIGKILL);
        let lines = stack.wait_log("steady.1", "listening on", before + 1, WAIT);
        let listening = lines
            .iter()
            .filter(|l| l.text.starts_with("listening on"))
            .nth(before)
            .unwrap();
        let gap = (listening.micros - killed_at) as f64 / 1000.0;
        eprintln!("{label}: listening again {gap:.1} ms after SIGKILL");
        gap
    };

    // Each kill comes as soon as the successor is healthy: before, the delays grew 0, 100,
    // 200, 400, 800 ms and the instance showed as crash-looping from the third kill.
    let gaps: Vec<f64> = (1..=6)
        .map(|round| kill_and_time(&format!("kill {round}")))
        .collect();
    let events = stack.events();
    let delayed: Vec<_> = events
        .iter()
        .filter(|e| e.is("backoff", "steady.1"))
        .filter(|e| first_duration_ms(&e.message).is_some_and(|ms| ms > 0.0))
        .collect();
    assert!(
        delayed.is_empty(),
        "no delayed restart of an instance that served (gaps {gaps:?} ms):\n{}",
        show_events(&events)
    );
    assert!(
        !events.iter().any(|e| e.is("crash-looping", "steady.1")),
        "an instance that served between kills is not crash-looping:\n{}",
        show_events(&events)
    );
    // From the kill to listening again: the restart itself, no wait (generous for a busy box).
    let slowest = gaps.iter().cloned().fold(0.0, f64::max);
    assert!(slowest < 1000.0, "restart gaps {gaps:?} ms");
    let status = stack.wait_status("steady.1 healthy", WAIT, |s| {
        instance(s, "steady.1").is_some_and(|i| i["health"] == "healthy")
    });
    assert_eq!(
        instance(&status, "steady.1").unwrap()["restarts"],
        6,
        "{status}"
    );
}
