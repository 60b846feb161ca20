//! `bow chaos`: a drill, refused unless the environment says `chaos: allow`. `kill` SIGKILLs a
//! random running instance at every interval, `pause` SIGSTOPs one for a while; each is
//! bounded in time and ends with a report: what the edge answered during the drill, restarts,
//! how long until every service was healthy again, and whether the system is where it was
//! (same release and instance count per service, no process of the stack that status does
//! not show).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bow_agent::api::{EdgeRequests, Health, Request, Response, StatusReport};
use bow_spec::Chaos;

use crate::cli::{ChaosDrill, StackArgs};
use crate::session::Session;

/// No drill runs longer than this.
const MAX_DRILL: Duration = Duration::from_secs(3600);
/// How long the system gets after the drill to be where it was.
const SETTLE: Duration = Duration::from_secs(120);

pub fn run(args: &StackArgs, drill: &ChaosDrill) -> Result<ExitCode> {
    let session = Session::load(args)?;
    if session.spec.chaos != Chaos::Allow {
        bail!(
            "chaos drills are refused in environment `{}`: set `chaos: allow` for it in {} (under `environments: {{{}: {{chaos: allow}}}}`, or at the top for every environment)",
            session.spec.environment,
            session.file.display(),
            session.spec.environment
        );
    }
    let before = status(&session)?;
    let service = match drill {
        ChaosDrill::Kill { service, .. } => service.as_deref(),
        ChaosDrill::Pause { service, .. }
        | ChaosDrill::Latency { service, .. }
        | ChaosDrill::Loss { service, .. } => Some(service.as_str()),
        ChaosDrill::Agent { .. } => None,
    };
    if let Some(name) = service
        && !before.services.iter().any(|s| s.name == name)
    {
        let names: Vec<&str> = before.services.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "no service `{name}` in {}: services are {}",
            session.spec.project,
            names.join(", ")
        );
    }
    let seed = match drill {
        ChaosDrill::Kill { seed, .. }
        | ChaosDrill::Pause { seed, .. }
        | ChaosDrill::Agent { seed, .. } => seed.unwrap_or_else(clock_seed),
        ChaosDrill::Latency { .. } | ChaosDrill::Loss { .. } => 0,
    };
    let mut random = Random(seed);
    let what = match drill {
        ChaosDrill::Kill {
            every, duration, ..
        } => {
            let (every, duration) = (every.as_std(), bounded(duration.as_std())?);
            if every.is_zero() {
                bail!("--every must be longer than 0s");
            }
            eprintln!(
                "chaos: SIGKILL a random instance of {} every {} for {} (seed {seed})",
                service.unwrap_or("any service"),
                bow_spec::units::Duration(every),
                bow_spec::units::Duration(duration)
            );
            let started = Instant::now();
            let mut kills = Vec::new();
            while started.elapsed() < duration {
                if let Some((id, pid)) = pick(&status(&session)?, service, &mut random) {
                    signal(pid, libc::SIGKILL);
                    kills.push(id);
                }
                std::thread::sleep(every.min(duration.saturating_sub(started.elapsed())));
            }
            format!("{} kills: {}", kills.len(), summarise(&kills))
        }
        ChaosDrill::Agent {
            every, duration, ..
        } => {
            let (every, duration) = (every.as_std(), bounded(duration.as_std())?);
            if every.is_zero() {
                bail!("--every must be longer than 0s");
            }
            eprintln!(
                "chaos: SIGKILL the agent about every {} for {}, starting it again each time (seed {seed})",
                bow_spec::units::Duration(every),
                bow_spec::units::Duration(duration)
            );
            crate::commands::chaos_agent::drill(&session, every, duration, &mut random)?
        }
        ChaosDrill::Latency { add, duration, .. } => {
            let duration = bounded(duration.as_std())?;
            fault(
                &session,
                service.unwrap_or_default(),
                add.as_std(),
                0,
                duration,
            )?;
            format!(
                "{} added to every request of {} for {}",
                bow_spec::units::Duration(add.as_std()),
                service.unwrap_or_default(),
                bow_spec::units::Duration(duration)
            )
        }
        ChaosDrill::Loss {
            percent, duration, ..
        } => {
            let duration = bounded(duration.as_std())?;
            if !(0.0..=100.0).contains(percent) {
                bail!("--percent is between 0 and 100");
            }
            let per_million = (percent * 10_000.0).round() as u32;
            fault(
                &session,
                service.unwrap_or_default(),
                Duration::ZERO,
                per_million,
                duration,
            )?;
            format!(
                "{percent}% of the attempts to {} lost for {}",
                service.unwrap_or_default(),
                bow_spec::units::Duration(duration)
            )
        }
        ChaosDrill::Pause { duration, .. } => {
            let duration = bounded(duration.as_std())?;
            let Some((id, pid)) = pick(&before, service, &mut random) else {
                bail!("no running instance of {} to pause", service.unwrap_or(""));
            };
            eprintln!(
                "chaos: SIGSTOP {id} (pid {pid}) for {} (seed {seed})",
                bow_spec::units::Duration(duration)
            );
            signal(pid, libc::SIGSTOP);
            let started = Instant::now();
            let mut out_of_edge = None;
            while started.elapsed() < duration {
                let now = status(&session)?;
                if out_of_edge.is_none() && !is_healthy(&now, &id, pid) {
                    out_of_edge = Some(started.elapsed());
                }
                std::thread::sleep(Duration::from_millis(100).min(duration - started.elapsed()));
            }
            signal(pid, libc::SIGCONT);
            match out_of_edge {
                Some(after) => format!(
                    "{id} paused: marked unhealthy and out of the edge after {}",
                    seconds(after)
                ),
                None => format!(
                    "{id} paused: never marked unhealthy in {} (no health check, or retries × interval is longer)",
                    seconds(duration)
                ),
            }
        }
    };
    let drill_ended = Instant::now();
    let (after, settled) = settle(&session, &before)?;
    let report = Report {
        what,
        before: &before,
        after: &after,
        settled: settled.then(|| drill_ended.elapsed()),
        orphans: orphans(&session, &after),
    };
    println!("{report}");
    Ok(if report.came_back() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Asks the agent for a fault on `service`'s traffic, then waits the drill out.
fn fault(
    session: &Session,
    service: &str,
    delay: Duration,
    loss_per_million: u32,
    duration: Duration,
) -> Result<()> {
    let request = Request::Fault {
        service: service.to_string(),
        delay_ms: delay.as_millis() as u64,
        loss_per_million,
        for_ms: duration.as_millis() as u64,
    };
    match session.call(&request, Duration::from_secs(10))? {
        Some(Response::FaultOn { .. }) => {}
        Some(Response::Error { message }) => bail!("{message}"),
        Some(other) => bail!("unexpected answer from the agent: {other:?}"),
        None => return Err(crate::session::no_agent(&session.state_dir)),
    }
    eprintln!(
        "chaos: fault on {service} for {}",
        bow_spec::units::Duration(duration)
    );
    std::thread::sleep(duration);
    Ok(())
}

fn bounded(duration: Duration) -> Result<Duration> {
    if duration > MAX_DRILL {
        bail!("a drill lasts at most 1h");
    }
    Ok(duration)
}

fn status(session: &Session) -> Result<StatusReport> {
    match session.call(&Request::Status, Duration::from_secs(10))? {
        Some(Response::Status(report)) => Ok(*report),
        _ => Err(crate::session::no_agent(&session.state_dir)),
    }
}

/// A random running instance (of `service`, else of any): its id and pid.
fn pick(
    report: &StatusReport,
    service: Option<&str>,
    random: &mut Random,
) -> Option<(String, i32)> {
    let running: Vec<(String, i32)> = report
        .services
        .iter()
        .filter(|s| service.is_none_or(|name| s.name == name))
        .flat_map(|s| &s.instances)
        .filter_map(|i| Some((i.id.clone(), i.pid?)))
        .collect();
    if running.is_empty() {
        return None;
    }
    Some(running[random.below(running.len())].clone())
}

fn is_healthy(report: &StatusReport, id: &str, pid: i32) -> bool {
    report
        .services
        .iter()
        .flat_map(|s| &s.instances)
        .any(|i| i.id == id && i.pid == Some(pid) && i.health == Health::Healthy)
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) with a pid the agent reported for an instance of this stack.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Waits until every service runs its release of before with as many healthy instances;
/// the last status, and whether that happened within `SETTLE`.
fn settle(session: &Session, before: &StatusReport) -> Result<(StatusReport, bool)> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = status(session)?;
        if shape(&now, true) == shape(before, false) {
            return Ok((now, true));
        }
        if Instant::now() > deadline {
            return Ok((now, false));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Per service: (release, instances), counting only healthy ones when `healthy_only`.
fn shape(report: &StatusReport, healthy_only: bool) -> BTreeMap<String, (i64, usize)> {
    report
        .services
        .iter()
        .map(|s| {
            let count = s
                .instances
                .iter()
                .filter(|i| !healthy_only || i.health == Health::Healthy)
                .count();
            (s.name.clone(), (s.release, count))
        })
        .collect()
}

/// Processes of this stack's instances that status does not account for: an instance id it
/// does not show, or a second process group under an id it shows.
fn orphans(session: &Session, report: &StatusReport) -> Vec<String> {
    let run_dir = session.state_dir.join("run");
    let environment = [
        ("BOW_PROJECT", report.project.as_str()),
        ("BOW_ENV", report.environment.as_str()),
    ];
    let markers = bow_driver::strays::Markers {
        run_dir: &run_dir,
        environment: &environment,
        instance_variable: "BOW_INSTANCE",
    };
    let groups: BTreeMap<&str, i32> = report
        .services
        .iter()
        .flat_map(|s| &s.instances)
        .filter_map(|i| {
            // SAFETY: getpgid(2) only reads.
            let group = unsafe { libc::getpgid(i.pid?) };
            Some((i.id.as_str(), group))
        })
        .collect();
    let shown: Vec<&str> = report
        .services
        .iter()
        .flat_map(|s| &s.instances)
        .map(|i| i.id.as_str())
        .collect();
    bow_driver::strays::list(&markers)
        .into_iter()
        .filter(|p| {
            !shown.contains(&p.instance_id.as_str())
                || (!p.shim
                    && groups
                        .get(p.instance_id.as_str())
                        .is_some_and(|group| *group != p.pgid))
        })
        .map(|p| format!("pid {} ({})", p.pid, p.instance_id))
        .collect()
}

struct Report<'a> {
    /// Whether the edge's counters span the drill (not when the agent was restarted).
    what: String,
    before: &'a StatusReport,
    after: &'a StatusReport,
    settled: Option<Duration>,
    orphans: Vec<String>,
}

impl Report<'_> {
    fn came_back(&self) -> bool {
        self.settled.is_some() && self.orphans.is_empty()
    }
}

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "drill: {}", self.what)?;
        let requests = |report: &StatusReport| {
            report
                .edge
                .as_ref()
                .map(|edge| edge.requests.clone())
                .unwrap_or_default()
        };
        let (first, last) = (requests(self.before), requests(self.after));
        for (service, now) in &last {
            let then = first.get(service).copied().unwrap_or_default();
            let delta = EdgeRequests {
                total: now.total.saturating_sub(then.total),
                client_errors: now.client_errors.saturating_sub(then.client_errors),
                server_errors: now.server_errors.saturating_sub(then.server_errors),
            };
            writeln!(
                f,
                "edge: {service}: {} requests answered, {} failed (5xx), {} refused (4xx)",
                delta.total, delta.server_errors, delta.client_errors
            )?;
        }
        let restarts = |report: &StatusReport| -> BTreeMap<String, u64> {
            report
                .services
                .iter()
                .map(|s| {
                    let total = s.instances.iter().map(|i| u64::from(i.restarts)).sum();
                    (s.name.clone(), total)
                })
                .collect()
        };
        let (first, last) = (restarts(self.before), restarts(self.after));
        for (service, now) in &last {
            let then = first.get(service).copied().unwrap_or_default();
            if *now > then {
                writeln!(f, "restarts: {service}: {}", now - then)?;
            }
        }
        match self.settled {
            Some(after) => writeln!(
                f,
                "healthy again: every service at its release and instance count {} after the drill",
                seconds(after)
            )?,
            None => {
                writeln!(
                    f,
                    "not back: after {} the system differs from before the drill:",
                    seconds(SETTLE)
                )?;
                let (then, now) = (shape(self.before, false), shape(self.after, true));
                for (service, (release, count)) in &then {
                    let (release_now, count_now) = now.get(service).copied().unwrap_or((0, 0));
                    if (release_now, count_now) != (*release, *count) {
                        writeln!(
                            f,
                            "  {service}: release {release} with {count} instances before, release {release_now} with {count_now} healthy now"
                        )?;
                    }
                }
            }
        }
        if self.orphans.is_empty() {
            write!(f, "orphans: none")
        } else {
            write!(
                f,
                "orphans: {} (processes of the stack bow status does not show)",
                self.orphans.join(", ")
            )
        }
    }
}

/// `web.1 ×3, web.2 ×1`.
fn summarise(ids: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    counts
        .iter()
        .map(|(id, n)| format!("{id} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// splitmix64: seeded, so a drill can be replayed.
pub(crate) struct Random(u64);

impl Random {
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}
