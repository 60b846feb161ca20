//! Containers and service discovery. Containers join the engine network of the project and
//! environment (bow-<project>-<environment>, a bridge on a /24 of 172.30.0.0/16) instead of the
//! host's: each container has its own network namespace and listens on its own port, so an
//! image with a fixed port (`container_port: 80`) runs any number of replicas.
//!
//! - The agent reaches a container at its address on that network (the edge, health checks
//!   and discovery connect straight to it; no proxy between). The engine also publishes it on
//!   127.0.0.1:<its port> for operators (`bow status` shows that port).
//! - Containers find services by name like processes do, through the same discovery
//!   listeners: every service with a port gets a second address, on the bridge (the upper
//!   half of the /24, which the engine never hands out); the agent listens there too, and a
//!   container's `/etc/hosts` (`<state-dir>/discovery/container-hosts`) names those addresses.
//!   A container calls `http://api:5001` whether `api` runs as a process or as containers.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bow_container::NetworkInfo;
use bow_reconcile::EventKind;
use bow_spec::{Spec, Workload};

use crate::agent::Agent;
use crate::discovery::Names;

/// Candidates tried for one service's bridge address.
const ATTEMPTS: u32 = 512;

/// What the agent keeps about the containers' network.
#[derive(Default)]
pub(crate) struct ContainerNet {
    network: tokio::sync::Mutex<Option<NetworkInfo>>,
    /// Each service's discovery address on the bridge.
    addresses: Mutex<BTreeMap<String, Ipv4Addr>>,
}

/// `<state-dir>/discovery/container-hosts`: the file containers see as `/etc/hosts`.
pub fn container_hosts_file(state_dir: &Path) -> PathBuf {
    state_dir.join("discovery").join("container-hosts")
}

/// Whether any service of `spec` runs as a container.
pub(crate) fn has_containers(spec: &Spec) -> bool {
    spec.services
        .values()
        .any(|s| matches!(s.workload, Workload::Container(_)))
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Agent {
    /// Makes (once) the engine network containers join, gives every service with a port its
    /// bridge address and writes the containers' hosts file. Called before a container starts
    /// and when discovery is brought up to date; says whether it added addresses to the bridge.
    pub(crate) async fn ensure_container_network(&self) -> Result<(NetworkInfo, bool), String> {
        let driver = self
            .drivers
            .container()
            .ok_or_else(|| "this agent has no container driver".to_string())?;
        let mut network = self.container_net.network.lock().await;
        let info = match &*network {
            Some(info) => info.clone(),
            None => {
                let scope = format!("{}-{}", self.project, self.environment);
                let info = bow_container::network::ensure(driver.engine(), &scope).await?;
                *network = Some(info.clone());
                info
            }
        };
        let added = self.assign_bridge_addresses(&info);
        Ok((info, added))
    }

    /// After a container started: the bridge exists now (Podman makes it with the first
    /// container), so addresses that could not be given or listened on before can be.
    pub(crate) async fn container_started(self: &Arc<Self>) {
        if let Ok((_, true)) = self.ensure_container_network().await
            && let Some(spec) = self.lock().spec.clone()
        {
            let agent = self.clone();
            tokio::spawn(async move { agent.ensure_discovery(&spec).await });
        }
    }

    /// Gives services their bridge addresses; true when it added any to the bridge.
    fn assign_bridge_addresses(&self, info: &NetworkInfo) -> bool {
        let wanted: Vec<String> = self
            .lock()
            .spec
            .as_ref()
            .map(|spec| {
                crate::discovery::discovery_names(spec)
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect()
            })
            .unwrap_or_default();
        let mut addresses = locked(&self.container_net.addresses);
        for name in &wanted {
            if addresses.contains_key(name) {
                continue;
            }
            let free = (0..ATTEMPTS)
                .map(|attempt| info.service_address(name, attempt))
                .find(|address| !addresses.values().any(|a| a == address));
            match free {
                Some(address) => {
                    addresses.insert(name.clone(), address);
                }
                None => self.emit(
                    name,
                    "",
                    EventKind::DiscoveryFailed,
                    &format!("no free address for containers on {}", info.name),
                ),
            }
        }
        // The interface that has the gateway's address (the engine names it; Podman makes it
        // with the first container on the network).
        let mut added = false;
        if let Some(bridge) = interface_with(info.gateway) {
            let present = bridge_addresses(&bridge);
            for (name, address) in addresses.iter() {
                if present.contains(address) {
                    continue;
                }
                match add_address(&bridge, *address) {
                    Ok(()) => added = true,
                    Err(reason) => self.emit(
                        name,
                        "",
                        EventKind::DiscoveryFailed,
                        &format!("cannot give {address} to {bridge}: {reason}"),
                    ),
                }
            }
        }
        let current: BTreeMap<String, Ipv4Addr> = addresses
            .iter()
            .filter(|(name, _)| wanted.contains(name))
            .map(|(name, address)| (name.clone(), *address))
            .collect();
        drop(addresses);
        let base = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
        let text = crate::discovery::hosts_text(base, &self.project, &self.environment, &current);
        let path = container_hosts_file(&self.state_dir);
        if let Err(error) = crate::discovery::rewrite_in_place(&path, &text) {
            self.emit(
                "",
                "",
                EventKind::DiscoveryFailed,
                &format!("cannot write {}: {error}", path.display()),
            );
        }
        added
    }

    /// What a container is told about the other services: their bridge addresses.
    pub(crate) fn container_names(&self) -> Names {
        let addresses = locked(&self.container_net.addresses).clone();
        let inner = self.lock();
        let mut services = BTreeMap::new();
        if let Some(spec) = &inner.spec {
            for (name, address) in addresses {
                if let Some(service) = crate::discovery::named(spec, &name)
                    && let Some(port) = service.port
                {
                    services.insert(
                        name,
                        (
                            SocketAddr::from((address, port)),
                            crate::discovery::protocol(service),
                        ),
                    );
                }
            }
        }
        Names {
            services,
            hosts_file: Some(container_hosts_file(&self.state_dir)),
        }
    }

    /// The bridge-side listener address of each service with a port (empty while no
    /// container service exists).
    pub(crate) async fn bridge_listen_addresses(
        &self,
        spec: &Spec,
    ) -> BTreeMap<String, SocketAddr> {
        if !has_containers(spec) {
            return BTreeMap::new();
        }
        if let Err(reason) = self.ensure_container_network().await {
            self.emit("", "", EventKind::DiscoveryFailed, &reason);
            return BTreeMap::new();
        }
        self.container_names()
            .services
            .into_iter()
            .map(|(name, (addr, _))| (name, addr))
            .collect()
    }
}

/// The interface that has `address`, if any.
fn interface_with(address: Ipv4Addr) -> Option<String> {
    let output = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.nth(1)?.to_string();
            words.find(|w| *w == "inet")?;
            let found: Ipv4Addr = words.next()?.split('/').next()?.parse().ok()?;
            (found == address).then_some(name)
        })
}

/// The IPv4 addresses the interface has now.
fn bridge_addresses(bridge: &str) -> Vec<Ipv4Addr> {
    let Ok(output) = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show", "dev", bridge])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

/// `ip addr add <address>/32 dev <bridge>`.
fn add_address(bridge: &str, address: Ipv4Addr) -> Result<(), String> {
    let output = std::process::Command::new("ip")
        .args(["addr", "add", &format!("{address}/32"), "dev", bridge])
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() || stderr.contains("File exists") {
        Ok(())
    } else {
        Err(stderr.trim().to_string())
    }
}
