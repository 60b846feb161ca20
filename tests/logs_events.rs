//! `bow logs` merges the instances' captured output in time order with `service.N | `
//! prefixes, filters by service, `--tail` and `--since`, and follows with `-f`; `bow events`
//! and `bow status` say what runs; instances get the documented environment.

mod support;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::procs::{LogLine, format_rfc3339_seconds, http_get, now_micros};
use support::stack::{Stack, WAIT, instance, instances};

const STACK: &str = "
services:
  chatty:
    command: {testapp}
    replicas: 3
    env: { TESTAPP_ECHO_ENV: \"BOW_INSTANCE,BOW_SERVICE,BOW_PROJECT,BOW_ENV\" }
  other:
    command: {testapp}
    env: { TESTAPP_ECHO_ENV: \"BOW_INSTANCE,BOW_SERVICE,BOW_ENV\" }
";

const INSTANCES: [&str; 4] = ["chatty.1", "chatty.2", "chatty.3", "other.1"];

/// Splits a `bow logs` line into its instance and the rest (prefixes may be padded to align).
fn split(line: &str) -> (&str, &str) {
    let (id, rest) = line
        .split_once(" | ")
        .unwrap_or_else(|| panic!("a bow logs line should start with `service.N | `: {line:?}"));
    (id.trim_end(), rest)
}

/// Checks that `output` holds exactly the lines of `files`, each prefixed with its instance,
/// in time order.
fn assert_merged(output: &str, files: &BTreeMap<&str, Vec<LogLine>>) {
    let mut next: BTreeMap<&str, usize> = files.keys().map(|k| (*k, 0)).collect();
    let mut last_time = i64::MIN;
    for line in output.lines() {
        let (id, rest) = split(line);
        let index = next
            .get_mut(id)
            .unwrap_or_else(|| panic!("unexpected instance {id:?} in {line:?}"));
        let expected = files[id]
            .get(*index)
            .unwrap_or_else(|| panic!("more lines of {id} than its log file has: {line:?}"));
        assert!(
            rest.ends_with(&expected.text),
            "line {} of {id} should be {:?}, bow logs printed {line:?}",
            *index + 1,
            expected.text
        );
        assert!(
            expected.micros >= last_time,
            "bow logs is not in time order at {line:?}:\n{output}"
        );
        last_time = expected.micros;
        *index += 1;
    }
    for (id, count) in next {
        assert_eq!(
            count,
            files[id].len(),
            "bow logs missed lines of {id}:\n{output}"
        );
    }
}

fn log_files<'a>(stack: &Stack, ids: &[&'a str]) -> BTreeMap<&'a str, Vec<LogLine>> {
    ids.iter().map(|id| (*id, stack.log_lines(id))).collect()
}

fn port(stack: &Stack, id: &str) -> u16 {
    instance(&stack.status_ok(), id).unwrap()["port"]
        .as_u64()
        .unwrap() as u16
}

#[test]
fn logs_are_merged_in_time_order_filtered_and_tailed() {
    let stack = Stack::new("logs", STACK);
    stack.up_ok();
    for id in INSTANCES {
        stack.wait_log(id, "listening on", 1, WAIT);
    }
    let files = log_files(&stack, &INSTANCES);

    // Instances get the documented environment.
    let chatty2: Vec<&str> = files["chatty.2"].iter().map(|l| l.text.as_str()).collect();
    for expected in [
        "env BOW_INSTANCE=chatty.2".to_string(),
        "env BOW_SERVICE=chatty".to_string(),
        format!("env BOW_PROJECT={}", stack.project),
        "env BOW_ENV=development".to_string(),
    ] {
        assert!(
            chatty2.contains(&expected.as_str()),
            "{chatty2:?} lacks {expected}"
        );
    }

    let all = stack.run(&["logs"], WAIT);
    assert_eq!(all.code, 0, "{}", all.describe());
    assert_merged(&all.stdout, &files);

    let other = stack.run(&["logs", "other"], WAIT);
    assert_eq!(other.code, 0, "{}", other.describe());
    assert_merged(&other.stdout, &log_files(&stack, &["other.1"]));

    let tail = stack.run(&["logs", "other", "--tail", "2"], WAIT);
    assert_eq!(tail.code, 0, "{}", tail.describe());
    let other_file = &files["other.1"];
    let last_two: Vec<String> = other_file[other_file.len() - 2..]
        .iter()
        .map(|l| l.text.clone())
        .collect();
    let tailed: Vec<&str> = tail.stdout.lines().collect();
    assert_eq!(tailed.len(), 2, "--tail 2 printed:\n{}", tail.stdout);
    for (line, text) in tailed.iter().zip(&last_two) {
        assert!(
            line.starts_with("other.1 | ") && line.ends_with(text.as_str()),
            "{line:?} should be other.1's {text:?}"
        );
    }
}

#[test]
fn logs_since_a_time_show_only_later_lines() {
    let stack = Stack::new("logs-since", STACK);
    stack.up_ok();
    stack.wait_log("other.1", "listening on", 1, WAIT);
    // A whole second strictly after every line so far, then a request after it.
    let since = now_micros() / 1_000_000 + 1;
    while now_micros() < since * 1_000_000 + 300_000 {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(http_get(port(&stack, "other.1"), "/since-marker").0, 404);
    stack.wait_log("other.1", "GET /since-marker 404", 1, WAIT);

    let stamp = format_rfc3339_seconds(since);
    let later = stack.run(&["logs", "other", "--since", &stamp], WAIT);
    assert_eq!(later.code, 0, "{}", later.describe());
    let lines: Vec<&str> = later.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "--since {stamp} should print the request only:\n{}",
        later.stdout
    );
    assert!(lines[0].starts_with("other.1 | ") && lines[0].ends_with("GET /since-marker 404"));

    let relative = stack.run(&["logs", "other", "--since", "10m"], WAIT);
    assert_eq!(relative.code, 0, "{}", relative.describe());
    assert_merged(&relative.stdout, &log_files(&stack, &["other.1"]));
}

/// A `bow logs -f` running aside; killed when dropped.
struct Follower {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Follower {
    /// Waits for a line containing `needle`; returns it.
    fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("bow logs -f printed no line with {needle:?} within {timeout:?}"),
            }
        }
    }
}

#[test]
fn logs_follow_prints_new_lines() {
    let stack = Stack::new("logs-follow", STACK);
    stack.up_ok();
    stack.wait_log("chatty.2", "listening on", 1, WAIT);
    let mut child = stack
        .command(&["logs", "-f", "chatty"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let follower = Follower { child, lines };
    // It starts with what is there already...
    follower.wait_for("chatty.2 | ", WAIT);
    // ...and then prints what comes.
    assert_eq!(http_get(port(&stack, "chatty.2"), "/follow-marker").0, 404);
    let line = follower.wait_for("GET /follow-marker 404", WAIT);
    assert!(line.starts_with("chatty.2 | "), "{line}");
    drop(follower);
}

#[test]
fn events_and_status_say_what_runs() {
    let stack = Stack::new("events", STACK);
    let status = stack.up_ok();
    assert_eq!(status["project"], stack.project.as_str());
    assert_eq!(status["environment"], "development");
    let events = stack.events();
    // The spawned agent applies the file and `up -d` applies the same file: one revision.
    let applied = events.iter().filter(|e| e.kind == "applied").count();
    assert_eq!(
        applied,
        1,
        "`up -d` on a new state dir applied {applied} times:\n{}",
        support::stack::show_events(&events)
    );
    for id in INSTANCES {
        for kind in ["started", "healthy"] {
            assert!(
                events.iter().any(|e| e.is(kind, id)),
                "no {kind} event for {id}:\n{}",
                support::stack::show_events(&events)
            );
        }
    }
    let text = stack.run(&["events"], WAIT);
    assert_eq!(text.code, 0, "{}", text.describe());
    for needle in ["started", "healthy", "chatty.3", "other.1"] {
        assert!(
            text.stdout.contains(needle),
            "bow events lacks {needle}:\n{}",
            text.stdout
        );
    }

    // Without a health check an instance is healthy once it has been up for 1 s.
    for id in INSTANCES {
        let at = |kind: &str| events.iter().find(|e| e.is(kind, id)).unwrap().at_ms;
        assert!(
            at("healthy") - at("started") >= 950,
            "{id} was healthy {} ms after it started, expected 1 s",
            at("healthy") - at("started")
        );
    }

    // `bow events --since` keeps only later events.
    let last_at = events.last().unwrap().at_ms;
    let since = format_rfc3339_seconds(last_at / 1000 + 2);
    let later = stack.run(&["events", "--output", "json", "--since", &since], WAIT);
    assert_eq!(later.code, 0, "{}", later.describe());
    assert_eq!(later.stdout.trim(), "[]", "no event is newer than {since}");

    // Every documented status field is there.
    for key in ["project", "environment", "agent_pid", "services"] {
        assert!(status.get(key).is_some(), "status lacks {key}: {status}");
    }
    for service in status["services"].as_array().unwrap() {
        for key in ["name", "kind", "replicas", "state", "instances"] {
            assert!(service.get(key).is_some(), "service lacks {key}: {service}");
        }
    }
    for i in instances(&status) {
        for key in [
            "id",
            "service",
            "index",
            "pid",
            "port",
            "health",
            "restarts",
            "started_at_ms",
            "uptime_ms",
            "last_exit",
            "last_error",
            "user",
        ] {
            assert!(i.get(key).is_some(), "instance lacks {key}: {i}");
        }
    }
    let chatty2 = instance(&status, "chatty.2").unwrap();
    assert_eq!(chatty2["service"], "chatty");
    assert_eq!(chatty2["index"], 2);

    // The socket is the agent's alone; agent.pid names the agent.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(stack.state_dir.join("agent.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "agent.sock mode {:o}", mode & 0o777);
    assert_eq!(
        stack.agent_pid_file().map(i64::from),
        status["agent_pid"].as_i64()
    );

    let text = stack.run(&["status"], WAIT);
    assert_eq!(text.code, 0, "{}", text.describe());
    for i in instances(&status) {
        for field in ["id", "pid", "port"] {
            let value = i[field].to_string().trim_matches('"').to_string();
            assert!(
                text.stdout.contains(&value),
                "bow status lacks {field} {value}:\n{}",
                text.stdout
            );
        }
    }
}
