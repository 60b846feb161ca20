//! `/metrics`: every `bow_*` series (docs/metrics.md lists them) gathered from what the agent
//! already keeps — the edge's atomic counters, the slots' status, the drivers' usage, the
//! releases in the store, health-check counters and the agent's own process usage — into one
//! [`Scrape`], then written in the Prometheus text or OpenMetrics format by
//! `prometheus-client`. Nothing here runs on a request's path: a scrape reads, it never locks
//! the edge.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::agent::Agent;
use crate::api::Health;

/// Upper bounds of the health-check duration buckets, in seconds.
const CHECK_BUCKETS_SECONDS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];
/// Upper bounds of the deploy duration buckets, in seconds.
const DEPLOY_BUCKETS_SECONDS: [f64; 8] = [1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
/// Every state an instance can be in, so a state's series exists (at 0) before it is seen.
const STATES: [Health; 8] = [
    Health::Healthy,
    Health::Starting,
    Health::Stopping,
    Health::Stopped,
    Health::Unhealthy,
    Health::Backoff,
    Health::CrashLooping,
    Health::Failed,
];

/// A histogram as counts per bucket (not cumulative; the last is +Inf), a count and a sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Histogram {
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Histogram {
        Histogram {
            counts: vec![0; bounds.len() + 1],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, bounds: &[f64], value: f64) {
        let bucket = bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(bounds.len());
        self.counts[bucket] += 1;
        self.count += 1;
        self.sum += value;
    }

    fn buckets(&self, bounds: &[f64]) -> Vec<(f64, u64)> {
        bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().copied())
            .collect()
    }
}

/// Health-check results per service, counted by the checks themselves (a few a second).
#[derive(Debug, Default)]
pub(crate) struct HealthCheckCounters {
    by_service: Mutex<BTreeMap<String, CheckStats>>,
}

#[derive(Clone, Debug, Default)]
struct CheckStats {
    passed: u64,
    failed: u64,
    duration: Histogram,
}

impl HealthCheckCounters {
    pub(crate) fn record(&self, service: &str, passed: bool, took: Duration) {
        let mut by_service = self.by_service.lock().unwrap_or_else(|e| e.into_inner());
        let stats = by_service
            .entry(service.to_string())
            .or_insert_with(|| CheckStats {
                duration: Histogram::new(&CHECK_BUCKETS_SECONDS),
                ..CheckStats::default()
            });
        if passed {
            stats.passed += 1;
        } else {
            stats.failed += 1;
        }
        stats
            .duration
            .observe(&CHECK_BUCKETS_SECONDS, took.as_secs_f64());
    }

    fn snapshot(&self) -> BTreeMap<String, CheckStats> {
        self.by_service
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// One instance as a scrape sees it.
#[derive(Debug)]
struct InstanceSample {
    service: String,
    instance: String,
    health: Health,
    restarts: u32,
    release: i64,
    usage: bow_driver::Usage,
    memory_limit: Option<u64>,
}

/// One service's deploys, from its releases in the store.
#[derive(Debug, Default)]
struct DeploySample {
    succeeded: u64,
    failed: u64,
    in_progress: u64,
    duration: Histogram,
    /// The release that serves (`live`), 0 before the first one.
    live_release: i64,
    /// When its deploy finished, in seconds since the epoch.
    last_finished: Option<f64>,
}

/// The agent process itself.
#[derive(Debug, Default)]
struct ProcessSample {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    open_fds: Option<u64>,
    threads: Option<u64>,
    start_time_seconds: Option<f64>,
}

/// Everything one scrape writes, read once.
#[derive(Debug)]
pub(crate) struct Scrape {
    project: String,
    environment: String,
    revision: i64,
    edge: Option<bow_edge::MetricsSnapshot>,
    instances: Vec<InstanceSample>,
    deploys: BTreeMap<String, DeploySample>,
    checks: BTreeMap<String, CheckStats>,
    process: ProcessSample,
    admin_scrapes: u64,
    certificates: Vec<crate::certificates::Served>,
    backups: Vec<(String, crate::backup_state::BackupRecord)>,
}

impl Scrape {
    /// Reads what the agent knows now; blocking reads (cgroup files, process usage, the store) run
    /// off the async threads.
    pub(crate) async fn gather(agent: &Arc<Agent>, admin_scrapes: u64) -> Scrape {
        let edge = {
            let agent = agent.clone();
            tokio::task::spawn_blocking(move || agent.edge_metrics())
                .await
                .ok()
                .flatten()
        };
        let agent = agent.clone();
        let blocking = tokio::task::spawn_blocking(move || {
            let (revision, slots) = {
                let inner = agent.lock();
                let slots: Vec<(String, u32, crate::api::InstanceStatus, Option<u64>)> = inner
                    .services
                    .iter()
                    .flat_map(|(service, runtime)| {
                        runtime.slots.iter().map(move |(index, slot)| {
                            let limit = slot.definition.resources.memory.map(|size| size.bytes());
                            (service.clone(), *index, slot.status.clone(), limit)
                        })
                    })
                    .collect();
                (inner.revision, slots)
            };
            let instances = slots
                .into_iter()
                .map(|(service, _, status, memory_limit)| {
                    let usage = crate::adopt::live_handle(&agent, &status.id)
                        .map(|handle| agent.drivers.for_handle(&handle).usage(&handle))
                        .unwrap_or_default();
                    InstanceSample {
                        service,
                        instance: status.id,
                        health: status.health,
                        restarts: status.restarts,
                        release: status.release,
                        usage,
                        memory_limit,
                    }
                })
                .collect();
            let releases = agent.store().releases(None).unwrap_or_default();
            Scrape {
                project: agent.project.clone(),
                environment: agent.environment.clone(),
                revision,
                edge,
                instances,
                deploys: deploys(&releases),
                checks: agent.health_checks.snapshot(),
                process: process_sample(),
                admin_scrapes,
                certificates: crate::certificates::served(&agent),
                backups: crate::backup_state::read_all(&agent.state_dir),
            }
        });
        blocking
            .await
            .expect("a scrape's blocking reads do not panic")
    }

    /// The exposition: OpenMetrics text when `openmetrics`, else Prometheus text 0.0.4.
    pub(crate) fn encode(self, openmetrics: bool) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        let written = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        };
        written.expect("writing to a String does not fail");
        out
    }
}

/// The counters `bow top` turns into rates: each instance's cpu time and memory, each
/// service's requests, 5xx answers and latency buckets at the edge.
pub(crate) async fn usage(agent: &Arc<Agent>) -> crate::api::UsageReport {
    let scrape = Scrape::gather(agent, 0).await;
    let traffic = scrape
        .edge
        .as_ref()
        .map(|edge| {
            edge.services
                .iter()
                .map(|s| crate::api::ServiceTraffic {
                    service: s.service.clone(),
                    requests: s.requests.total(),
                    server_errors: s.requests.server_error,
                    latency: s.latency.counts.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    crate::api::UsageReport {
        project: scrape.project,
        environment: scrape.environment,
        revision: scrape.revision,
        at_ms: crate::agent::now_ms(),
        instances: scrape
            .instances
            .into_iter()
            .map(|i| crate::api::InstanceUsage {
                service: i.service,
                instance: i.instance,
                health: i.health,
                cpu_seconds: i.usage.cpu_micros.map(|us| us as f64 / 1e6),
                memory_bytes: i.usage.memory_bytes,
            })
            .collect(),
        traffic,
        latency_bounds: bow_edge::LATENCY_BUCKETS_SECONDS.to_vec(),
    }
}

/// Deploys per service from its releases: a release that went live (live, or since
/// superseded) succeeded, a failed one failed, a deploying one is in progress.
fn deploys(releases: &[bow_store::ReleaseRow]) -> BTreeMap<String, DeploySample> {
    use bow_store::ReleaseStatus;
    let mut out: BTreeMap<String, DeploySample> = BTreeMap::new();
    for release in releases {
        let sample = out
            .entry(release.service.clone())
            .or_insert_with(|| DeploySample {
                duration: Histogram::new(&DEPLOY_BUCKETS_SECONDS),
                ..DeploySample::default()
            });
        match release.status {
            ReleaseStatus::Deploying => sample.in_progress += 1,
            ReleaseStatus::Failed => sample.failed += 1,
            ReleaseStatus::Live | ReleaseStatus::Superseded => sample.succeeded += 1,
        }
        if release.status == ReleaseStatus::Live && release.number > sample.live_release {
            sample.live_release = release.number;
            sample.last_finished = release.finished_at_ms.map(|ms| ms as f64 / 1000.0);
        }
        if let Some(finished) = release.finished_at_ms
            && release.status != ReleaseStatus::Deploying
        {
            let seconds = (finished - release.created_at_ms).max(0) as f64 / 1000.0;
            sample.duration.observe(&DEPLOY_BUCKETS_SECONDS, seconds);
        }
    }
    out
}

/// The agent's CPU time, memory, descriptors, threads and start time.
fn process_sample() -> ProcessSample {
    let usage = bow_driver::own_usage();
    ProcessSample {
        cpu_seconds: usage.cpu_micros.map(|us| us as f64 / 1e6),
        resident_bytes: usage.resident_bytes,
        open_fds: usage.open_fds,
        threads: usage.threads,
        start_time_seconds: usage.start_time_seconds,
    }
}

pub(crate) type Labels = Vec<(&'static str, String)>;

/// Writes one family: its descriptor, then each labelled sample.
pub(crate) struct Family<'e, 'w> {
    encoder: &'e mut DescriptorEncoder<'w>,
}

impl Family<'_, '_> {
    pub(crate) fn counter<T>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: impl IntoIterator<Item = (Labels, T)>,
    ) -> std::fmt::Result
    where
        T: prometheus_client::encoding::EncodeCounterValue,
    {
        let mut metric =
            self.encoder
                .encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
        for (labels, value) in samples {
            let mut sample = metric.encode_family(&labels)?;
            sample.encode_counter::<Labels, T, f64>(&value, None)?;
        }
        Ok(())
    }

    pub(crate) fn gauge<T>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: impl IntoIterator<Item = (Labels, T)>,
    ) -> std::fmt::Result
    where
        T: prometheus_client::encoding::EncodeGaugeValue,
    {
        let mut metric =
            self.encoder
                .encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
        for (labels, value) in samples {
            let mut sample = metric.encode_family(&labels)?;
            sample.encode_gauge(&value)?;
        }
        Ok(())
    }

    pub(crate) fn histogram<'h>(
        &mut self,
        name: &str,
        help: &str,
        bounds: &[f64],
        samples: impl IntoIterator<Item = (Labels, &'h Histogram)>,
    ) -> std::fmt::Result {
        let mut metric = self.encoder.encode_descriptor(
            name,
            help,
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (labels, histogram) in samples {
            let mut sample = metric.encode_family(&labels)?;
            sample.encode_histogram::<Labels>(
                histogram.sum,
                histogram.count,
                &histogram.buckets(bounds),
                None,
            )?;
        }
        Ok(())
    }
}

pub(crate) fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs
        .into_iter()
        .map(|(key, value)| (key, value.to_string()))
        .collect()
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut family = Family {
            encoder: &mut encoder,
        };
        self.encode_agent(&mut family)?;
        self.encode_instances(&mut family)?;
        self.encode_deploys(&mut family)?;
        crate::metrics_backup::encode(&self.backups, &mut family)?;
        if let Some(edge) = &self.edge {
            crate::metrics_edge::encode(edge, &mut family)?;
        }
        Ok(())
    }
}

impl Scrape {
    fn encode_agent(&self, family: &mut Family<'_, '_>) -> std::fmt::Result {
        let info = labels([
            ("version", env!("CARGO_PKG_VERSION")),
            ("project", &self.project),
            ("environment", &self.environment),
        ]);
        family.gauge(
            "bow_agent_info",
            "The agent's version, project and environment (always 1).",
            None,
            [(info, 1u64)],
        )?;
        family.gauge(
            "bow_agent_revision",
            "The spec revision the agent runs (bow history).",
            None,
            [(Labels::new(), self.revision)],
        )?;
        let process = &self.process;
        family.counter(
            "bow_agent_cpu",
            "CPU time the agent process used, user and system.",
            Some(Unit::Seconds),
            process.cpu_seconds.map(|v| (Labels::new(), v)),
        )?;
        family.gauge(
            "bow_agent_resident_memory",
            "Resident memory of the agent process (the edge runs inside it).",
            Some(Unit::Bytes),
            process.resident_bytes.map(|v| (Labels::new(), v)),
        )?;
        family.gauge(
            "bow_agent_open_fds",
            "File descriptors the agent process holds open.",
            None,
            process.open_fds.map(|v| (Labels::new(), v)),
        )?;
        family.gauge(
            "bow_agent_threads",
            "Threads of the agent process.",
            None,
            process.threads.map(|v| (Labels::new(), v)),
        )?;
        family.gauge(
            "bow_agent_start_time",
            "When the agent process started, in seconds since the epoch.",
            Some(Unit::Seconds),
            process.start_time_seconds.map(|v| (Labels::new(), v)),
        )?;
        family.counter(
            "bow_admin_scrapes",
            "Requests for /metrics the admin listener answered.",
            None,
            [(Labels::new(), self.admin_scrapes)],
        )?;
        family.gauge(
            "bow_certificate_expiry_timestamp",
            "When a certificate the edge serves (ACME or a file) ends, in seconds since the epoch.",
            Some(Unit::Seconds),
            self.certificates.iter().map(|c| {
                (
                    labels([("host", &c.host), ("source", c.source)]),
                    c.not_after_ms as f64 / 1000.0,
                )
            }),
        )
    }

    fn encode_instances(&self, family: &mut Family<'_, '_>) -> std::fmt::Result {
        let mut by_state: BTreeMap<(&str, &'static str), u64> = BTreeMap::new();
        for instance in &self.instances {
            for state in STATES {
                *by_state
                    .entry((&instance.service, state.label()))
                    .or_default() += u64::from(instance.health == state);
            }
        }
        family.gauge(
            "bow_instances",
            "Instances by service and state (healthy, starting, unhealthy, backoff, crash-looping...).",
            None,
            by_state
                .into_iter()
                .map(|((service, state), count)| (labels([("service", service), ("state", state)]), count)),
        )?;
        let each = |value: &dyn Fn(&InstanceSample) -> Option<f64>| {
            self.instances
                .iter()
                .filter_map(|i| {
                    value(i).map(|v| {
                        (
                            labels([("service", &i.service), ("instance", &i.instance)]),
                            v,
                        )
                    })
                })
                .collect::<Vec<_>>()
        };
        family.counter(
            "bow_instance_restarts",
            "Restarts of the instance since the agent took it over.",
            None,
            each(&|i| Some(f64::from(i.restarts))),
        )?;
        family.gauge(
            "bow_instance_release",
            "The release the instance runs.",
            None,
            each(&|i| Some(i.release as f64)),
        )?;
        family.counter(
            "bow_instance_cpu",
            "CPU time the instance used (its cgroup, or the container's).",
            Some(Unit::Seconds),
            each(&|i| i.usage.cpu_micros.map(|us| us as f64 / 1e6)),
        )?;
        family.gauge(
            "bow_instance_memory",
            "Memory the instance uses now (its cgroup, or the container's).",
            Some(Unit::Bytes),
            each(&|i| i.usage.memory_bytes.map(|b| b as f64)),
        )?;
        family.gauge(
            "bow_instance_memory_limit",
            "The instance's memory limit (resources.memory), when it has one.",
            Some(Unit::Bytes),
            each(&|i| i.memory_limit.map(|b| b as f64)),
        )?;
        family.gauge(
            "bow_instance_open_fds",
            "File descriptors the instance's main process holds open (processes only).",
            None,
            each(&|i| i.usage.open_fds.map(|n| n as f64)),
        )?;
        let checks = || self.checks.iter();
        family.counter(
            "bow_health_checks",
            "Health checks run, by service and result (passed, failed).",
            None,
            checks().flat_map(|(service, stats)| {
                [("passed", stats.passed), ("failed", stats.failed)]
                    .map(|(result, n)| (labels([("service", service), ("result", result)]), n))
            }),
        )?;
        family.histogram(
            "bow_health_check_duration",
            "How long health checks took, by service.",
            &CHECK_BUCKETS_SECONDS,
            checks().map(|(service, stats)| (labels([("service", service)]), &stats.duration)),
        )
    }

    fn encode_deploys(&self, family: &mut Family<'_, '_>) -> std::fmt::Result {
        let deploys = || self.deploys.iter();
        family.counter(
            "bow_deploys",
            "Deploys (releases) by service and result: succeeded (went live) or failed (rolled back, or never healthy).",
            None,
            deploys().flat_map(|(service, d)| {
                [("succeeded", d.succeeded), ("failed", d.failed)]
                    .map(|(result, n)| (labels([("service", service), ("result", result)]), n))
            }),
        )?;
        family.gauge(
            "bow_deploys_in_progress",
            "Deploys under way, by service.",
            None,
            deploys().map(|(service, d)| (labels([("service", service)]), d.in_progress)),
        )?;
        family.histogram(
            "bow_deploy_duration",
            "From a release's creation to its deploy's end (live or failed), by service.",
            &DEPLOY_BUCKETS_SECONDS,
            deploys().map(|(service, d)| (labels([("service", service)]), &d.duration)),
        )?;
        family.gauge(
            "bow_service_release",
            "The release that serves, by service (0 before the first went live).",
            None,
            deploys().map(|(service, d)| (labels([("service", service)]), d.live_release)),
        )?;
        family.gauge(
            "bow_service_last_deploy",
            "When the serving release's deploy finished, in seconds since the epoch.",
            Some(Unit::Seconds),
            deploys().filter_map(|(service, d)| {
                d.last_finished
                    .map(|at| (labels([("service", service)]), at))
            }),
        )
    }
}
