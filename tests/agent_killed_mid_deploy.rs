//! The agent SIGKILLed at seeded random moments of rolling and blue-green deploys and of scale
//! changes, then `bow up -d`: after each restart exactly `replicas` app processes run, all of
//! one release, all healthy, one release live, no run dir names a live process bow does not
//! show, and the next deploy succeeds. `BOW_KILL_SEED=<n>` replays a run (the seed is printed).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::procs::{kill, start_time, wait_gone};
use support::stack::{Stack, WAIT, all_healthy, instances, show_events};

/// How many times each test kills the agent.
const KILLS: usize = 10;

/// The seed of this run: `BOW_KILL_SEED`, or one made from the clock (printed either way).
fn seed(test: &str) -> u64 {
    let seed = match std::env::var("BOW_KILL_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("BOW_KILL_SEED: expected a number, found {text:?}")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("{test}: seed {seed} (replay with BOW_KILL_SEED={seed})");
    seed
}

/// splitmix64: small, seeded, good enough to place kills.
struct Random(u64);

impl Random {
    fn new(seed: u64, stream: u64) -> Random {
        Random(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the stack file asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wanted {
    version: u32,
    replicas: u32,
}

/// One slow-starting (300 ms), slow-stopping (SIGTERM ignored, SIGKILL after 200 ms) service:
/// every phase of a deploy lasts long enough for a kill to land in it.
fn stack(label: &str, strategy: &str, wanted: Wanted) -> Stack {
    let stack = Stack::new(label, "");
    write_file(&stack, strategy, wanted);
    stack
}

fn write_file(stack: &Stack, strategy: &str, wanted: Wanted) {
    let text = format!(
        "project: {}\n\
         services:\n  web:\n    command: {}\n    replicas: {}\n    \
         env: {{ APP_VERSION: v{}, TESTAPP_START_DELAY: 300ms, TESTAPP_IGNORE_SIGTERM: \"1\" }}\n    \
         stop_timeout: 200ms\n    \
         health: {{ http: /healthz, interval: 100ms, timeout: 1s, retries: 3, start_period: 10s }}\n    \
         deploy: {{ strategy: {strategy}, timeout: 30s }}\n",
        stack.project,
        support::stack::testapp().display(),
        wanted.replicas,
        wanted.version,
    );
    std::fs::write(&stack.file, text).unwrap();
}

fn history(stack: &Stack) -> Vec<Value> {
    let ran = stack.run(&["history", "web", "--output", "json"], WAIT);
    assert_eq!(ran.code, 0, "{}", ran.describe());
    serde_json::from_str(&ran.stdout).unwrap()
}

/// The app processes of the stack (by the `BOW_INSTANCE` every instance carries): instance →
/// (pid, APP_VERSION).
fn app_processes(stack: &Stack) -> Vec<(String, i32, String)> {
    let mut found: Vec<(String, i32, String)> = stack
        .processes()
        .iter()
        .filter_map(|p| {
            let id = p.env("BOW_INSTANCE")?.to_string();
            Some((id, p.pid, p.env("APP_VERSION").unwrap_or("").to_string()))
        })
        .collect();
    found.sort();
    found
}

/// `run/<id>/state.json` whose process is alive (pid and start time match): id → pid.
fn live_run_dirs(stack: &Stack) -> BTreeMap<String, i32> {
    let mut live = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(stack.state_dir.join("run")) else {
        return live;
    };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("state.json")) else {
            continue;
        };
        let Ok(handle) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let pid = handle["pid"].as_i64().unwrap_or(0) as i32;
        let start = handle["start_time"].as_u64();
        if pid > 0 && start.is_some() && start_time(pid) == start {
            live.insert(entry.file_name().to_string_lossy().into_owned(), pid);
        }
    }
    live
}

/// What is wrong with the stack now, measured against `wanted`; `None` when it is settled.
fn problems(stack: &Stack, wanted: Wanted) -> Option<String> {
    let Some(status) = stack.status() else {
        return Some("no status".into());
    };
    let mut wrong = Vec::new();
    let service = &status["services"][0];
    let release = service["release"].as_i64().unwrap_or(-1);
    let shown: BTreeMap<String, (i64, i64)> = instances(&status)
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap_or("").to_string(),
                (
                    i["pid"].as_i64().unwrap_or(-1),
                    i["release"].as_i64().unwrap_or(-1),
                ),
            )
        })
        .collect();
    if !all_healthy(&status) || shown.len() != wanted.replicas as usize {
        wrong.push(format!(
            "want {} healthy instances, status shows {}",
            wanted.replicas,
            instances(&status)
                .iter()
                .map(|i| format!(
                    "{} {} pid {} r{}",
                    i["id"], i["health"], i["pid"], i["release"]
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if shown.values().any(|(_, r)| *r != release) {
        wrong.push(format!(
            "instances of several releases (target {release}): {shown:?}"
        ));
    }
    let releases = history(stack);
    let live: Vec<i64> = releases
        .iter()
        .filter(|r| r["status"] == "live")
        .filter_map(|r| r["release"].as_i64())
        .collect();
    if live != [release] {
        wrong.push(format!("live releases {live:?}, target {release}"));
    }
    let failed: Vec<String> = releases
        .iter()
        .filter(|r| r["status"] == "failed")
        .map(|r| format!("release {}: {}", r["release"], r["reason"]))
        .collect();
    if !failed.is_empty() {
        wrong.push(format!("failed releases: {failed:?}"));
    }
    let processes = app_processes(stack);
    let version = format!("v{}", wanted.version);
    if processes.len() != wanted.replicas as usize
        || processes.iter().any(|(_, _, v)| *v != version)
        || processes
            .iter()
            .any(|(id, pid, _)| shown.get(id).map(|s| s.0) != Some(i64::from(*pid)))
    {
        wrong.push(format!(
            "want {} app processes of {version}, all shown by status; running: {processes:?}",
            wanted.replicas
        ));
    }
    let orphans: Vec<String> = live_run_dirs(stack)
        .into_iter()
        .filter(|(id, pid)| shown.get(id).map(|s| s.0) != Some(i64::from(*pid)))
        .map(|(id, pid)| format!("{id} (pid {pid})"))
        .collect();
    if !orphans.is_empty() {
        wrong.push(format!(
            "run dirs of live processes bow does not show: {orphans:?}"
        ));
    }
    (!wrong.is_empty()).then(|| wrong.join("\n"))
}

/// Waits (up to 40 s) until the stack is settled on `wanted`; panics with everything known.
fn assert_settles(stack: &Stack, wanted: Wanted, context: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let Some(wrong) = problems(stack, wanted) else {
            return;
        };
        if Instant::now() >= deadline {
            panic!(
                "{context}: not settled on {wanted:?} after 40 s:\n{wrong}\nevents:\n{}\nhistory: {}\n{}",
                show_events(&stack.events()),
                stack.run(&["history"], WAIT).stdout,
                stack.diagnose()
            );
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}

/// `bow apply --yes` to the end; must succeed. Returns how long it took.
fn apply_ok(stack: &Stack, context: &str) -> Duration {
    let ran = stack.run(&["apply", "--yes"], Duration::from_secs(90));
    assert_eq!(
        ran.code,
        0,
        "{context}: apply failed: {}\nevents:\n{}",
        ran.describe(),
        show_events(&stack.events())
    );
    ran.took
}

/// `bow apply --yes` in the background, the agent SIGKILLed `after` it began, then `bow up -d`.
/// Returns a description of where the deploy was when the agent died.
fn apply_and_kill(stack: &Stack, after: Duration) -> String {
    let last_before = stack
        .events()
        .last()
        .and_then(|e| e.id.as_i64())
        .unwrap_or(0);
    let agent = stack.agent_pid_file().expect("the agent's pid");
    let mut apply = stack.command(&["apply", "--yes"]);
    let mut child = apply
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    kill(agent, libc::SIGKILL);
    wait_gone(agent, WAIT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let events = stack.events();
    let during: Vec<String> = events
        .iter()
        .filter(|e| e.id.as_i64().unwrap_or(0) > last_before)
        .filter(|e| !matches!(e.kind.as_str(), "healthy" | "backoff"))
        .map(|e| format!("{} {}", e.instance.as_deref().unwrap_or("-"), e.kind))
        .collect();
    let ran = stack.up();
    assert!(
        ran.code == 0 && !ran.timed_out,
        "bow up -d after the kill: {}\n{}",
        ran.describe(),
        stack.diagnose()
    );
    if during.is_empty() {
        "before the apply reached the agent".to_string()
    } else {
        during.join(", ")
    }
}

/// Runs `KILLS` kill iterations over `next` (the file each iteration applies), each kill at
/// a moment drawn from its own slice of the deploy's duration, then one uninterrupted deploy.
fn kill_at_random_moments(
    label: &str,
    strategy: &str,
    stream: u64,
    next: impl Fn(&mut Random, Wanted) -> Wanted,
) {
    let seed = seed(label);
    let mut random = Random::new(seed, stream);
    let mut wanted = Wanted {
        version: 1,
        replicas: 3,
    };
    let stack = stack(label, strategy, wanted);
    stack.up_ok();
    assert_settles(&stack, wanted, "after up -d");
    // One uninterrupted deploy of a new version (the longest change) measures how long the
    // kills have to spread over.
    wanted = new_version(&mut random, wanted);
    write_file(&stack, strategy, wanted);
    let took = apply_ok(&stack, "the first deploy");
    assert_settles(&stack, wanted, "after the first deploy");
    for kill_number in 0..KILLS {
        wanted = next(&mut random, wanted);
        write_file(&stack, strategy, wanted);
        let slice = (kill_number as f64 + random.unit()) / KILLS as f64;
        let after = took.mul_f64(slice);
        let phase = apply_and_kill(&stack, after);
        eprintln!(
            "{label} (seed {seed}) kill {}: {after:?} into a deploy of ~{took:?} to {wanted:?}: {phase}",
            kill_number + 1
        );
        assert_settles(
            &stack,
            wanted,
            &format!(
                "seed {seed}, kill {} at {after:?} ({phase})",
                kill_number + 1
            ),
        );
    }
    wanted = next(&mut random, wanted);
    write_file(&stack, strategy, wanted);
    apply_ok(&stack, &format!("seed {seed}: the deploy after the kills"));
    assert_settles(
        &stack,
        wanted,
        &format!("seed {seed}: after the last deploy"),
    );
}

fn new_version(_: &mut Random, wanted: Wanted) -> Wanted {
    Wanted {
        version: wanted.version + 1,
        ..wanted
    }
}

#[test]
fn rolling_deploys_survive_agent_kills() {
    kill_at_random_moments("kill-roll", "rolling", 1, new_version);
}

#[test]
fn blue_green_deploys_survive_agent_kills() {
    kill_at_random_moments("kill-bg", "blue-green", 2, new_version);
}

#[test]
fn scale_changes_survive_agent_kills() {
    // Replicas between 1 and 4, never the same twice in a row; every other change also
    // deploys a new version (a rolling deploy to another replica count).
    kill_at_random_moments("kill-scale", "rolling", 3, |random, wanted| {
        let mut replicas = wanted.replicas;
        while replicas == wanted.replicas {
            replicas = 1 + random.below(4) as u32;
        }
        let version = wanted.version + u32::from(random.below(2) == 0);
        Wanted { version, replicas }
    });
}
