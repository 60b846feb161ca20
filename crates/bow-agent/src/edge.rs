//! The agent's side of the edge: what the edge process serves (crate::plane) — the healthy
//! instances of each routed service —, draining an instance before it is stopped, chaos
//! faults, the status; and the edge's files (local CA, access log).

use bow_reconcile::EventKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bow_spec::{Spec, Tls};

use crate::agent::{Agent, Inner};
use crate::api::{EdgeRequests, EdgeStatus};

/// `<state-dir>/ca`: bow's local certificate authority (`bow trust` shows it).
pub fn ca_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("ca")
}

/// The local CA's certificate, to hand to clients (`curl --cacert`).
pub fn ca_certificate(state_dir: &Path) -> PathBuf {
    bow_edge::LocalCa::certificate_path(&ca_dir(state_dir))
}

/// `<state-dir>/edge/access.log`: one JSON line per request.
pub fn access_log(state_dir: &Path) -> PathBuf {
    state_dir.join("edge").join("access.log")
}

impl Agent {
    /// Brings the edge process up to date with `spec` (started, restarted or stopped there).
    pub(crate) async fn ensure_edge(self: &Arc<Self>, _spec: &Spec) {
        self.refresh_routes();
    }

    /// Sends the edge process what it serves now: the spec, each name's healthy instances,
    /// faults and listeners. Returns the state's number.
    pub(crate) fn refresh_routes(&self) -> u64 {
        let state = {
            let inner = self.lock();
            let mut state = crate::plane::PlaneState {
                spec: inner.spec.clone(),
                settled: settled(&inner),
                ..Default::default()
            };
            if let Some(spec) = &inner.spec {
                // Every service (routes, TCP routes, discovery), and `<service>-ro` names.
                for name in spec.services.keys() {
                    state
                        .endpoints
                        .insert(name.clone(), plane_endpoints(&inner, name));
                }
                for (name, _) in crate::discovery::discovery_names(spec) {
                    let endpoints = plane_endpoints(&inner, &name);
                    state.endpoints.insert(name, endpoints);
                }
                let now = std::time::Instant::now();
                for (service, (fault, until)) in &inner.faults {
                    if *until > now {
                        state.faults.insert(
                            service.clone(),
                            crate::plane::PlaneFault {
                                delay_ms: fault.delay.as_millis() as u64,
                                loss_per_million: fault.loss_per_million,
                            },
                        );
                    }
                }
            }
            state
        };
        let mut state = state;
        (state.listeners, state.outside_apis) = self.discovery.wanted();
        state.names = self
            .names()
            .services
            .into_iter()
            .map(|(name, (addr, _))| (name, addr))
            .collect();
        self.push_plane_state(state)
    }

    /// Takes an instance out of the edge and its service listener and waits (at most
    /// `timeout`) for its in-flight requests. The caller has already marked it as not healthy.
    pub(crate) async fn drain_instance(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Option<bow_edge::DrainOutcome> {
        let seq = self.refresh_routes();
        self.plane_drain(instance_id, timeout, seq).await
    }

    pub(crate) async fn edge_status(self: &Arc<Self>) -> Option<EdgeStatus> {
        let report = self.plane.report()?;
        let (https, http) = (report.https?, report.http?);
        let settings = self.lock().spec.as_ref()?.edge.clone();
        let routes = {
            let inner = self.lock();
            let spec = inner.spec.as_ref()?;
            let mut routes = Vec::new();
            for (name, service) in &spec.services {
                let healthy = crate::discovery::healthy_endpoints(&inner, name).len();
                for route in &service.routes {
                    routes.push(format!(
                        "{}{} → {name} ({healthy} healthy)",
                        route.host, route.path
                    ));
                }
            }
            routes.sort();
            routes
        };
        let agent = self.clone();
        let metrics = tokio::task::spawn_blocking(move || agent.edge_metrics())
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let requests = metrics
            .services
            .into_iter()
            .map(|service| {
                let counts = service.requests;
                let requests = EdgeRequests {
                    total: counts.total(),
                    client_errors: counts.client_error,
                    server_errors: counts.server_error,
                };
                (service.service, requests)
            })
            .collect();
        Some(EdgeStatus {
            requests,
            https: https.to_string(),
            http: http.to_string(),
            ca_certificate: matches!(settings.tls, Tls::SelfSigned | Tls::Acme)
                .then(|| ca_certificate(&self.state_dir)),
            routes,
            process: Some(format!("pid {} ({})", report.pid, report.exe)),
        })
    }

    pub(crate) async fn stop_edge(&self) {
        self.stop_plane().await;
    }
}

/// Whether every instance the agent knows has had its first health verdict (an adopted one
/// starts as `starting`), and every service of the spec has its slots.
fn settled(inner: &Inner) -> bool {
    let Some(spec) = &inner.spec else {
        return false;
    };
    spec.services.iter().all(|(name, service)| {
        let runtime = inner.services.get(name);
        let slots = runtime.map_or(0, |r| r.slots.len());
        (service.replicas == 0 || slots > 0)
            && runtime.is_none_or(|r| {
                r.slots
                    .values()
                    .all(|slot| slot.status.health != crate::api::Health::Starting)
            })
    })
}

fn plane_endpoints(inner: &Inner, name: &str) -> Vec<crate::plane::PlaneEndpoint> {
    crate::discovery::healthy_endpoints(inner, name)
        .into_iter()
        .map(|endpoint| crate::plane::PlaneEndpoint {
            id: endpoint.id.clone(),
            addr: endpoint.addr,
        })
        .collect()
}

/// An append-only file rotated by size: `path` → `path.1` → … → `path.<keep>`.
pub(crate) struct RotatingFile {
    path: PathBuf,
    file: std::fs::File,
    written: u64,
    max_bytes: u64,
    keep: u32,
}

impl RotatingFile {
    pub(crate) fn open(path: PathBuf, max_bytes: u64, keep: u32) -> std::io::Result<RotatingFile> {
        let file = open_private(&path)?;
        let written = file.metadata()?.len();
        Ok(RotatingFile {
            path,
            file,
            written,
            max_bytes,
            keep,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = open_private(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

/// Opens `path` for appending, readable and writable by its owner only (0600): the access
/// log holds client addresses and paths. A file made earlier with a wider mode is narrowed.
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

impl std::io::Write for RotatingFile {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        if self.written > 0 && self.written + buffer.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let written = self.file.write(buffer)?;
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Agent {
    /// Starts a chaos drill's fault on `service`'s traffic at the edge; it lifts after
    /// `for_ms` (the routes are refreshed then).
    pub(crate) fn inject_fault(
        self: &Arc<Self>,
        service: &str,
        delay_ms: u64,
        loss_per_million: u32,
        for_ms: u64,
    ) -> Result<(), String> {
        {
            let mut inner = self.lock();
            let Some(spec) = &inner.spec else {
                return Err("nothing is applied".to_string());
            };
            if spec.chaos != bow_spec::Chaos::Allow {
                return Err(format!(
                    "chaos drills are refused in environment `{}` (chaos: allow is not set)",
                    spec.environment
                ));
            }
            if spec
                .services
                .get(service)
                .is_none_or(|s| s.routes.is_empty())
            {
                return Err(format!(
                    "service {service} has no routes: the edge carries none of its traffic"
                ));
            }
            if loss_per_million > 1_000_000 || for_ms > 3_600_000 {
                return Err("a loss is at most 100% and a drill lasts at most 1h".to_string());
            }
            let until = std::time::Instant::now() + std::time::Duration::from_millis(for_ms);
            let fault = bow_edge::Fault {
                delay: std::time::Duration::from_millis(delay_ms),
                loss_per_million,
            };
            inner.faults.insert(service.to_string(), (fault, until));
        }
        self.emit(
            service,
            "",
            EventKind::ChaosFault,
            &format!(
                "{delay_ms} ms added, {:.1}% of attempts lost, for {}",
                f64::from(loss_per_million) / 10_000.0,
                bow_spec::units::Duration(std::time::Duration::from_millis(for_ms))
            ),
        );
        self.refresh_routes();
        let agent = self.clone();
        let service = service.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(for_ms)).await;
            let lifted = {
                let mut inner = agent.lock();
                let expired = inner
                    .faults
                    .get(&service)
                    .is_some_and(|(_, until)| *until <= std::time::Instant::now());
                if expired {
                    inner.faults.remove(&service);
                }
                expired
            };
            if lifted {
                agent.refresh_routes();
                agent.emit(&service, "", EventKind::ChaosFault, "lifted");
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::RotatingFile;

    #[test]
    fn access_logs_are_private_to_their_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let fresh = dir.path().join("access.log");
        let mut file = RotatingFile::open(fresh.clone(), 100, 2).unwrap();
        assert_eq!(mode(&fresh), 0o600);
        for line in 0..10 {
            file.write_all(format!("{line:040}\n").as_bytes()).unwrap();
        }
        assert_eq!(mode(&fresh), 0o600, "after rotation");
        assert_eq!(mode(&dir.path().join("access.log.1")), 0o600);
        // A file an older bow made world-readable is narrowed when opened.
        let old = dir.path().join("old.log");
        std::fs::write(&old, "x\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        RotatingFile::open(old.clone(), 100, 2).unwrap();
        assert_eq!(mode(&old), 0o600);
    }

    #[test]
    fn access_log_rotates_by_size_and_keeps_a_few() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut file = RotatingFile::open(path.clone(), 100, 2).unwrap();
        for line in 0..30 {
            file.write_all(format!("{line:040}\n").as_bytes()).unwrap();
        }
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) <= 100 && size(&path) > 0);
        assert!(dir.path().join("access.log.1").exists());
        assert!(dir.path().join("access.log.2").exists());
        assert!(!dir.path().join("access.log.3").exists());
        let newest = std::fs::read_to_string(&path).unwrap();
        assert!(newest.ends_with(&format!("{:040}\n", 29)));
    }
}
