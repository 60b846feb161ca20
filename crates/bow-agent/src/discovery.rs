//! Service discovery: every service with a `port:` is reachable at `<address>:<port>`, where
//! `<address>` is a loopback IP of its own from 127.64.0.0/10, and by name.
//!
//! - Addresses are picked once per service (a hash of project, environment and service, the
//!   next candidate on a collision) and kept in the store for good.
//! - The agent listens on each address with a `bow-edge` [`ServiceListener`] fed the same
//!   healthy set as the edge, and drains it the same way before an instance stops.
//! - Names: `<state-dir>/discovery/hosts` is the host's `/etc/hosts` plus one line per
//!   service (`<address> <service> <service>.<project>.internal`). As root, every instance
//!   sees it as its `/etc/hosts` (the driver bind-mounts it in a mount namespace of the
//!   instance's own); the agent rewrites it in place, so running instances learn names of
//!   services added later. Every instance also gets `BOW_<SERVICE>_HOST`, `_PORT` and `_URL`.

use bow_reconcile::EventKind;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bow_edge::{DrainOutcome, Endpoint, ServiceListener, ServiceListenerConfig, ServiceProtocol};
use bow_spec::{Check, Service, Spec};
use sha2::{Digest, Sha256};

use crate::agent::{Agent, Inner};
use crate::api::{DiscoveryStatus, Health};

/// The block internal addresses come from: 127.64.0.0/10 (127.64.0.0 – 127.127.255.255).
const BLOCK_BASE: u32 = u32::from_be_bytes([127, 64, 0, 0]);
const BLOCK_BITS: u32 = 22;
/// Candidates tried for one service before giving up.
const MAX_CANDIDATES: u32 = 256;

/// The discovery state the agent keeps.
#[derive(Default)]
pub(crate) struct Discovery {
    /// Every address ever given (from the store), by service.
    addresses: Mutex<BTreeMap<String, Ipv4Addr>>,
    /// The running listeners, by service.
    listeners: Mutex<BTreeMap<String, Arc<RunningListener>>>,
    /// The listeners on the containers' bridge, by service (crate::container_net).
    bridge: crate::container_net::BridgeListeners,
    /// The listeners of TCP routes (`tcp: {port}`, on every address), by service.
    tcp: Mutex<BTreeMap<String, Arc<RunningListener>>>,
    /// Why a service's listener could not start, by service.
    errors: Mutex<BTreeMap<String, String>>,
    /// One `ensure_discovery` at a time.
    ensure: tokio::sync::Mutex<()>,
    /// One `assign_addresses` at a time: two applies at once would both find a service
    /// without an address, the second one's insert would fail, and it would then publish a
    /// hosts file and names without that service.
    assigning: Mutex<()>,
    /// Whether mount namespaces can be made (checked once, as root).
    mount_namespaces: std::sync::OnceLock<Result<(), String>>,
}

pub(crate) struct RunningListener {
    listener: ServiceListener,
    addr: SocketAddr,
    protocol: ServiceProtocol,
    drain_timeout: std::time::Duration,
}

/// What an instance is told about the other services: their addresses and the hosts file.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// Service → (address, port, protocol) for every service with a `port:`.
    pub services: BTreeMap<String, (SocketAddr, ServiceProtocol)>,
    /// Bind-mounted over `/etc/hosts` (as root).
    pub hosts_file: Option<PathBuf>,
}

/// What `bow status` says when services cannot find each other by name.
pub const NO_NAMES_NOTE: &str = "not running as root: service names are not in the instances' /etc/hosts; services reach each other through BOW_<SERVICE>_HOST, BOW_<SERVICE>_PORT and BOW_<SERVICE>_URL";

impl Agent {
    /// The status note about names, when there is one to give.
    pub(crate) fn discovery_note(&self, spec: Option<&Spec>) -> Option<String> {
        let ports = spec.is_some_and(|spec| spec.services.values().any(|s| s.port.is_some()));
        if !ports {
            return None;
        }
        if !self.root {
            return Some(NO_NAMES_NOTE.to_string());
        }
        self.names_available().err().map(|reason| {
            format!(
                "service names are not available: {reason}; services reach each other through BOW_<SERVICE>_HOST, BOW_<SERVICE>_PORT and BOW_<SERVICE>_URL"
            )
        })
    }

    /// Whether instances can get the names: root, and mount namespaces can be made here (a
    /// container without CAP_SYS_ADMIN cannot); checked once.
    fn names_available(&self) -> Result<(), String> {
        if !self.root {
            return Err("not running as root".to_string());
        }
        self.discovery
            .mount_namespaces
            .get_or_init(mount_namespaces_work)
            .clone()
    }
}

/// Runs `/bin/true` in a mount namespace of its own, as the shim would run a service.
fn mount_namespaces_work() -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new("/bin/true");
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: unshare is async-signal-safe; the closure does not allocate.
    unsafe {
        command.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match command.status() {
        Ok(_) => Ok(()),
        Err(error) => Err(format!("cannot create a mount namespace ({error})")),
    }
}

/// `<state-dir>/discovery/hosts`: the file instances see as `/etc/hosts`.
pub fn hosts_file(state_dir: &Path) -> PathBuf {
    state_dir.join("discovery").join("hosts")
}

/// How discovery speaks to a service: HTTP when it has an http health check or routes (the
/// edge already treats it as HTTP), TCP otherwise.
pub(crate) fn protocol(service: &Service) -> ServiceProtocol {
    let http_check = service
        .health
        .as_ref()
        .is_some_and(|health| matches!(health.check, Check::Http(_)));
    let outside_api = crate::outside_api::of(service).is_some();
    if http_check || outside_api || !service.routes.is_empty() {
        ServiceProtocol::Http
    } else {
        ServiceProtocol::Tcp
    }
}

/// The `attempt`-th candidate address of a service: deterministic, inside 127.64.0.0/10,
/// never ending in .0 or .255 (`None` then: take the next attempt).
pub(crate) fn candidate(
    project: &str,
    environment: &str,
    service: &str,
    attempt: u32,
) -> Option<Ipv4Addr> {
    let digest = Sha256::digest(format!("{project}/{environment}/{service}/{attempt}"));
    let bits = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let address = Ipv4Addr::from(BLOCK_BASE | (bits >> (32 - BLOCK_BITS)));
    let last = address.octets()[3];
    (last != 0 && last != 255).then_some(address)
}

/// `BOW_<SERVICE>_*` for a service name: upper case, `-` → `_`.
pub(crate) fn env_prefix(service: &str) -> String {
    format!("BOW_{}", service.to_ascii_uppercase().replace('-', "_"))
}

/// The variables every instance gets for every service with a port.
pub(crate) fn environment(names: &Names) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (service, (addr, protocol)) in &names.services {
        let prefix = env_prefix(service);
        let scheme = match protocol {
            ServiceProtocol::Http => "http",
            ServiceProtocol::Tcp | ServiceProtocol::Sni => "tcp",
        };
        env.insert(format!("{prefix}_HOST"), addr.ip().to_string());
        env.insert(format!("{prefix}_PORT"), addr.port().to_string());
        env.insert(format!("{prefix}_URL"), format!("{scheme}://{addr}"));
    }
    env
}

/// The hosts file: the host's `/etc/hosts`, then bow's lines.
pub(crate) fn hosts_text(
    host_hosts: &str,
    project: &str,
    environment: &str,
    addresses: &BTreeMap<String, Ipv4Addr>,
) -> String {
    let mut text = host_hosts.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "\n# bow service discovery ({project}, {environment}); rewritten by the bow agent\n"
    ));
    for (service, address) in addresses {
        text.push_str(&format!(
            "{address}\t{service} {service}.{project}.internal\n"
        ));
    }
    text
}

/// Rewrites `path` in place (same inode: bind mounts of it see the new text): the new text
/// over the old from the start, then the file cut to its length. Readers never find it empty
/// or without the host's lines; for a moment they may see a stale tail of old bow lines.
pub(crate) fn rewrite_in_place(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Unchanged (most applies): leave it alone, so no reader ever races a rewrite.
    if std::fs::read_to_string(path).is_ok_and(|current| current == text) {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.set_len(text.len() as u64)?;
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
}

/// Every name other services reach: each service with a port, and `<service>-ro`, the read
/// replicas of a postgres service that has them.
pub(crate) fn discovery_names(spec: &Spec) -> Vec<(String, &Service)> {
    let mut names = Vec::new();
    for (name, service) in spec.services.iter().filter(|(_, s)| s.port.is_some()) {
        names.push((name.clone(), service));
        if let Some(replicas) = crate::postgres::of(service).and_then(|p| p.replica_name(name)) {
            names.push((replicas, service));
        }
    }
    names
}

/// The service behind a discovery name (`db-ro` is served by `db`).
pub(crate) fn named<'s>(spec: &'s Spec, name: &str) -> Option<&'s Service> {
    match spec.database(name) {
        Some((service, _, _)) => spec.services.get(service),
        None => spec.services.get(name),
    }
}

/// The healthy instances behind a name: what the edge and the service listener balance over.
/// For a postgres service, the name is its primary's and `<service>-ro` its replicas' that
/// stream within `max_lag`.
pub(crate) fn healthy_endpoints(inner: &Inner, name: &str) -> Vec<Endpoint> {
    let (service, reads) = match name.strip_suffix(bow_spec::REPLICA_SUFFIX) {
        Some(base) if !inner.services.contains_key(name) => (base, true),
        _ => (name, false),
    };
    inner
        .services
        .get(service)
        .map(|runtime| {
            runtime
                .slots
                .values()
                .filter(|slot| slot.status.health == Health::Healthy && slot.routable)
                .filter(|slot| match &slot.status.database {
                    None => !reads,
                    Some(role) if reads => !role.is_primary() && role.serving_reads,
                    Some(role) => role.is_primary(),
                })
                .filter_map(|slot| {
                    Some(Endpoint::new(
                        slot.status.id.clone(),
                        slot.status.endpoint.or_else(|| {
                            Some(SocketAddr::from((Ipv4Addr::LOCALHOST, slot.status.port?)))
                        })?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One outcome of two drains: timed out when either did (with both in-flight counts).
pub(crate) fn both_drained(
    first: Option<DrainOutcome>,
    second: Option<DrainOutcome>,
) -> Option<DrainOutcome> {
    let in_flight = |outcome: Option<DrainOutcome>| match outcome {
        Some(DrainOutcome::TimedOut { in_flight }) => Some(in_flight),
        _ => None,
    };
    match (in_flight(first), in_flight(second)) {
        (None, None) => first.or(second),
        (a, b) => Some(DrainOutcome::TimedOut {
            in_flight: a.unwrap_or(0) + b.unwrap_or(0),
        }),
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn bindable(address: Ipv4Addr, port: u16) -> bool {
    std::net::TcpListener::bind((address, port)).is_ok()
}

impl Agent {
    /// Gives every service with a port its address (recorded for good) and rewrites the hosts
    /// file. Runs before the spec's instances start, so they get every name.
    pub(crate) fn assign_addresses(&self, spec: &Spec) {
        // Decided here, once, before any instance starts (it runs a short probe process).
        let _ = self.names_available();
        let _one_at_a_time = locked(&self.discovery.assigning);
        let mut known: BTreeMap<String, Ipv4Addr> = match self.store().service_addresses() {
            Ok(rows) => rows
                .into_iter()
                .filter_map(|(service, address)| Some((service, address.parse().ok()?)))
                .collect(),
            Err(error) => {
                eprintln!("bow agent: cannot read service addresses: {error}");
                BTreeMap::new()
            }
        };
        for (name, service) in discovery_names(spec) {
            let name = &name;
            let Some(port) = service.port else { continue };
            if known.contains_key(name) {
                continue;
            }
            let free = (0..MAX_CANDIDATES)
                .filter_map(|attempt| candidate(&self.project, &self.environment, name, attempt))
                .find(|address| !known.values().any(|a| a == address) && bindable(*address, port));
            let Some(address) = free else {
                self.emit(
                    name,
                    "",
                    EventKind::DiscoveryFailed,
                    "no free internal address in 127.64.0.0/10",
                );
                continue;
            };
            match self
                .store()
                .record_service_address(name, &address.to_string(), crate::now_ms())
            {
                Ok(()) => {
                    known.insert(name.clone(), address);
                }
                Err(error) => eprintln!("bow agent: cannot record the address of {name}: {error}"),
            }
        }
        let current: BTreeMap<String, Ipv4Addr> = known
            .into_iter()
            .filter(|(name, _)| named(spec, name).is_some_and(|s| s.port.is_some()))
            .collect();
        let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let text = hosts_text(&host_hosts, &self.project, &self.environment, &current);
        let path = hosts_file(&self.state_dir);
        if let Err(error) = rewrite_in_place(&path, &text) {
            self.emit(
                "",
                "",
                EventKind::DiscoveryFailed,
                &format!("cannot write {}: {error}", path.display()),
            );
        }
        *locked(&self.discovery.addresses) = current;
    }

    /// What instances started from now on are told about the other services.
    pub(crate) fn names(&self) -> Names {
        let addresses = locked(&self.discovery.addresses).clone();
        let inner = self.lock();
        let mut services = BTreeMap::new();
        if let Some(spec) = &inner.spec {
            for (name, address) in addresses {
                if let Some(service) = named(spec, &name)
                    && let Some(port) = service.port
                {
                    services.insert(name, (SocketAddr::from((address, port)), protocol(service)));
                }
            }
        }
        Names {
            services,
            hosts_file: self
                .names_available()
                .is_ok()
                .then(|| hosts_file(&self.state_dir)),
        }
    }

    /// Starts, restarts (address, port, protocol or drain timeout changed) or stops the
    /// service listeners to match `spec`.
    pub(crate) async fn ensure_discovery(self: &Arc<Self>, spec: &Spec) {
        let _one_at_a_time = self.discovery.ensure.lock().await;
        // An outside API (`proxy:`) is served by a listener of its own (crate::outside_api).
        let (outside, wanted): (BTreeMap<_, _>, BTreeMap<_, _>) =
            self.names().services.into_iter().partition(|(name, _)| {
                named(spec, name).and_then(crate::outside_api::of).is_some()
            });
        self.reconcile_listeners(&self.discovery.listeners, wanted.clone(), spec)
            .await;
        // Containers reach the same listeners' twins on their bridge.
        let bridge_addresses = self.bridge_listen_addresses(spec).await;
        let bridge: BTreeMap<String, (SocketAddr, ServiceProtocol)> = bridge_addresses
            .iter()
            .filter_map(|(name, addr)| Some((name.clone(), (*addr, wanted.get(name)?.1))))
            .collect();
        self.reconcile_listeners(&self.discovery.bridge, bridge, spec)
            .await;
        let outside = outside
            .into_iter()
            .map(|(name, (addr, _))| {
                let mut addrs = vec![addr];
                addrs.extend(bridge_addresses.get(&name).copied());
                (name, addrs)
            })
            .collect();
        self.ensure_outside_apis(spec, outside).await;
        // TCP routes: the same listeners, on the host's every address at the route's port.
        // TLS passthrough routes (`sni:`) of one port share one listener, named after the
        // first of its services.
        let mut routes: BTreeMap<String, (SocketAddr, ServiceProtocol)> = BTreeMap::new();
        let mut passthrough_ports = std::collections::BTreeSet::new();
        for (name, service) in &spec.services {
            let Some(tcp) = &service.tcp else { continue };
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, tcp.port));
            if tcp.sni.is_empty() {
                routes.insert(name.clone(), (addr, ServiceProtocol::Tcp));
            } else if passthrough_ports.insert(tcp.port) {
                routes.insert(name.clone(), (addr, ServiceProtocol::Sni));
            }
        }
        self.reconcile_listeners(&self.discovery.tcp, routes, spec)
            .await;
        self.refresh_discovery();
    }

    async fn reconcile_listeners(
        &self,
        listeners: &Mutex<BTreeMap<String, Arc<RunningListener>>>,
        wanted: BTreeMap<String, (SocketAddr, ServiceProtocol)>,
        spec: &Spec,
    ) {
        let running: Vec<(String, Arc<RunningListener>)> = locked(listeners)
            .iter()
            .map(|(name, running)| (name.clone(), running.clone()))
            .collect();
        for (name, running) in running {
            let drain_timeout = named(spec, &name).map(|s| s.deploy.drain_timeout.as_std());
            let keep = wanted.get(&name).is_some_and(|(addr, protocol)| {
                *addr == running.addr
                    && *protocol == running.protocol
                    && Some(running.drain_timeout) == drain_timeout
            });
            if !keep {
                locked(listeners).remove(&name);
                running.listener.shutdown().await;
            }
        }
        for (name, (addr, protocol)) in &wanted {
            if locked(listeners).contains_key(name) {
                continue;
            }
            let Some(drain_timeout) = named(spec, name).map(|s| s.deploy.drain_timeout.as_std())
            else {
                continue;
            };
            let mut config = ServiceListenerConfig::new(*addr, name.clone(), *protocol);
            config.drain_timeout = drain_timeout;
            match ServiceListener::start(config).await {
                Ok(listener) => {
                    locked(&self.discovery.errors).remove(name);
                    locked(listeners).insert(
                        name.clone(),
                        Arc::new(RunningListener {
                            listener,
                            addr: *addr,
                            protocol: *protocol,
                            drain_timeout,
                        }),
                    );
                }
                Err(error) => {
                    let reason = format!("cannot listen on {addr}: {error}");
                    self.emit(name, "", EventKind::DiscoveryFailed, &reason);
                    locked(&self.discovery.errors).insert(name.clone(), reason);
                }
            }
        }
    }

    /// Every running service listener, on loopback and on the containers' bridge.
    fn all_listeners(&self) -> Vec<(String, Arc<RunningListener>)> {
        let mut all: Vec<(String, Arc<RunningListener>)> = locked(&self.discovery.listeners)
            .iter()
            .map(|(name, running)| (name.clone(), running.clone()))
            .collect();
        for listeners in [&self.discovery.bridge, &self.discovery.tcp] {
            all.extend(
                locked(listeners)
                    .iter()
                    .map(|(name, running)| (name.clone(), running.clone())),
            );
        }
        all
    }

    /// Gives every service listener the healthy instances of its service.
    pub(crate) fn refresh_discovery(&self) {
        let listeners = self.all_listeners();
        if listeners.is_empty() {
            return;
        }
        let inner = self.lock();
        for (name, running) in listeners {
            if running.protocol == ServiceProtocol::Sni {
                running
                    .listener
                    .set_sni_routes(crate::passthrough::sni_routes(&inner, running.addr.port()));
            } else {
                running
                    .listener
                    .set_endpoints(healthy_endpoints(&inner, &name));
            }
        }
    }

    /// Takes an instance out of the service listeners and waits (at most `timeout`) for its
    /// open requests and connections. `None` when no service has a listener.
    pub(crate) async fn drain_discovery(
        &self,
        instance_id: &str,
        timeout: std::time::Duration,
    ) -> Option<DrainOutcome> {
        self.refresh_discovery();
        let listeners: Vec<Arc<RunningListener>> = self
            .all_listeners()
            .into_iter()
            .map(|(_, running)| running)
            .collect();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut outcome = None;
        // Instance ids are unique: only the instance's own service has it, the others
        // answer at once.
        for running in listeners {
            let drained = tokio::time::timeout_at(deadline, running.listener.drain(instance_id))
                .await
                .ok();
            outcome = both_drained(outcome, drained);
        }
        outcome
    }

    /// Closes every service listener (`bow down`).
    pub(crate) async fn stop_discovery(&self) {
        self.stop_outside_apis().await;
        let listeners = std::mem::take(&mut *locked(&self.discovery.listeners));
        let mut all: Vec<Arc<RunningListener>> = listeners.into_values().collect();
        for other in [&self.discovery.bridge, &self.discovery.tcp] {
            all.extend(std::mem::take(&mut *locked(other)).into_values());
        }
        let listeners = all;
        for running in listeners {
            running.listener.shutdown().await;
        }
    }

    /// Each service's internal address for `bow status`.
    pub(crate) fn discovery_status(&self, inner: &Inner) -> Vec<DiscoveryStatus> {
        let Some(spec) = &inner.spec else {
            return Vec::new();
        };
        let addresses = locked(&self.discovery.addresses).clone();
        let mut listening: Vec<String> =
            locked(&self.discovery.listeners).keys().cloned().collect();
        listening.extend(self.outside_api_names());
        let errors = locked(&self.discovery.errors).clone();
        let mut status = Vec::new();
        for (name, service) in discovery_names(spec) {
            let name = &name;
            let (Some(port), Some(address)) = (service.port, addresses.get(name)) else {
                continue;
            };
            let protocol = match protocol(service) {
                ServiceProtocol::Http => "http",
                ServiceProtocol::Tcp | ServiceProtocol::Sni => "tcp",
            };
            status.push(DiscoveryStatus {
                service: name.clone(),
                address: SocketAddr::from((*address, port)).to_string(),
                protocol: protocol.to_string(),
                names: self
                    .names_available()
                    .is_ok()
                    .then(|| vec![name.clone(), format!("{name}.{}.internal", self.project)]),
                listening: listening.contains(name),
                healthy: healthy_endpoints(inner, name).len(),
                error: errors.get(name).cloned(),
            });
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_stable_and_inside_the_block() {
        let first = candidate("hello", "development", "api", 0);
        assert_eq!(first, candidate("hello", "development", "api", 0));
        let mut seen = std::collections::HashSet::new();
        for attempt in 0..200 {
            let Some(address) = candidate("hello", "development", "api", attempt) else {
                continue;
            };
            let [a, b, _, d] = address.octets();
            assert_eq!(a, 127);
            assert!((64..128).contains(&b), "{address}");
            assert!(d != 0 && d != 255);
            seen.insert(address);
        }
        assert!(
            seen.len() > 190,
            "candidates differ from attempt to attempt"
        );
        assert_ne!(
            candidate("hello", "development", "api", 0),
            candidate("hello", "production", "api", 0)
        );
    }

    #[test]
    fn env_names_and_hosts_lines() {
        let mut names = Names::default();
        names.services.insert(
            "dash-back".into(),
            ("127.64.1.2:5001".parse().unwrap(), ServiceProtocol::Http),
        );
        names.services.insert(
            "db".into(),
            ("127.64.1.3:5432".parse().unwrap(), ServiceProtocol::Tcp),
        );
        let env = environment(&names);
        assert_eq!(env["BOW_DASH_BACK_HOST"], "127.64.1.2");
        assert_eq!(env["BOW_DASH_BACK_PORT"], "5001");
        assert_eq!(env["BOW_DASH_BACK_URL"], "http://127.64.1.2:5001");
        assert_eq!(env["BOW_DB_URL"], "tcp://127.64.1.3:5432");
        let addresses = BTreeMap::from([("dash-back".to_string(), Ipv4Addr::new(127, 64, 1, 2))]);
        let text = hosts_text("127.0.0.1 localhost", "dash", "production", &addresses);
        assert!(text.starts_with("127.0.0.1 localhost\n"));
        assert!(text.ends_with("127.64.1.2\tdash-back dash-back.dash.internal\n"));
    }

    #[test]
    fn a_drain_timed_out_when_either_did() {
        let timed_out = |in_flight| Some(DrainOutcome::TimedOut { in_flight });
        let drained = Some(DrainOutcome::Drained);
        assert_eq!(both_drained(None, None), None);
        assert_eq!(both_drained(drained, None), drained);
        assert_eq!(both_drained(None, drained), drained);
        assert_eq!(both_drained(drained, timed_out(2)), timed_out(2));
        assert_eq!(both_drained(timed_out(1), timed_out(2)), timed_out(3));
    }

    #[test]
    fn rewriting_keeps_the_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d").join("hosts");
        rewrite_in_place(&path, "a long first text\n").unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        rewrite_in_place(&path, "short\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "short\n");
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
    }
}
