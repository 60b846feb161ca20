//! The engine network of one project and environment: a bridge named by bow, on a /24 of
//! 172.30.0.0/16 that bow picks. Containers get addresses from its lower half; the upper half
//! is bow's: the agent puts each service's discovery address there (on the bridge, so
//! containers reach it), as it puts them on 127.64.0.0/10 for processes.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use sha2::{Digest, Sha256};

use crate::engine::{Engine, is_not_found, message};

/// Label that names the scope (`<project>-<environment>`) of what bow made in the engine.
pub const SCOPE_LABEL: &str = "dev.bow.scope";
/// The block subnets come from: 172.30.0.0/16, one /24 per scope.
const BLOCK: [u8; 2] = [172, 30];
/// Subnets tried before giving up (another network may hold the first choices).
const SUBNET_ATTEMPTS: u32 = 64;

/// A scope's network as the engine has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    /// The engine's network name: `bow-<scope>`.
    pub name: String,
    /// The host's bridge interface: `bow<8 hex digits>`.
    pub bridge: String,
    /// The /24 it has (`172.30.X.0`).
    pub subnet: Ipv4Addr,
    /// The host's address on it (`.1`).
    pub gateway: Ipv4Addr,
}

impl NetworkInfo {
    /// The `attempt`-th candidate discovery address of `service` on this network: in the
    /// upper half (`.128`–`.254`), which the engine never gives to a container.
    pub fn service_address(&self, service: &str, attempt: u32) -> Ipv4Addr {
        let digest = Sha256::digest(format!("{service}/{attempt}"));
        let [a, b, c, _] = self.subnet.octets();
        Ipv4Addr::new(a, b, c, 128 + digest[0] % 127)
    }
}

/// `bow-<scope>`.
pub fn network_name(scope: &str) -> String {
    format!("bow-{scope}")
}

/// Finds or makes the scope's network.
pub async fn ensure(engine: &Engine, scope: &str) -> Result<NetworkInfo, String> {
    let docker = engine.docker().await?;
    let name = network_name(scope);
    let digest = Sha256::digest(scope.as_bytes());
    let bridge = format!(
        "bow{:02x}{:02x}{:02x}{:02x}",
        digest[0], digest[1], digest[2], digest[3]
    );
    match docker.inspect_network(&name, None).await {
        Ok(found) => return read(&name, &bridge, &found),
        Err(error) if is_not_found(&error) => {}
        Err(error) => {
            return Err(format!(
                "cannot inspect network {name}: {}",
                message(&error)
            ));
        }
    }
    let mut last_error = String::new();
    for attempt in 0..SUBNET_ATTEMPTS {
        let third = Sha256::digest(format!("{scope}/{attempt}").as_bytes())[0];
        let subnet = Ipv4Addr::new(BLOCK[0], BLOCK[1], third, 0);
        let gateway = Ipv4Addr::new(BLOCK[0], BLOCK[1], third, 1);
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(format!("{subnet}/24")),
                    ip_range: Some(format!("{subnet}/25")),
                    gateway: Some(gateway.to_string()),
                    auxiliary_addresses: None,
                }]),
                options: None,
            }),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.name".to_string(),
                bridge.clone(),
            )])),
            labels: Some(HashMap::from([(
                SCOPE_LABEL.to_string(),
                scope.to_string(),
            )])),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => {
                return Ok(NetworkInfo {
                    name,
                    bridge,
                    subnet,
                    gateway,
                });
            }
            Err(error) => {
                last_error = message(&error);
                // Made meanwhile by another bow (two applies at once): use it.
                if last_error.contains("already exists") {
                    let found = docker
                        .inspect_network(&name, None)
                        .await
                        .map_err(|e| format!("cannot inspect network {name}: {}", message(&e)))?;
                    return read(&name, &bridge, &found);
                }
                // Docker says "overlaps", Podman "already used on the host": the next /24.
                if !["overlap", "already used", "in use"]
                    .iter()
                    .any(|word| last_error.contains(word))
                {
                    break;
                }
            }
        }
    }
    Err(format!("cannot create network {name}: {last_error}"))
}

/// Removes the scope's network (after `bow down` took every container off it); a network
/// still in use stays.
pub async fn remove(engine: &Engine, scope: &str) {
    if let Ok(docker) = engine.docker().await {
        let _ = docker.remove_network(&network_name(scope)).await;
    }
}

fn read(
    name: &str,
    bridge: &str,
    found: &bollard::models::NetworkInspect,
) -> Result<NetworkInfo, String> {
    let config = found
        .ipam
        .as_ref()
        .and_then(|ipam| ipam.config.as_ref())
        .and_then(|configs| configs.first())
        .ok_or_else(|| format!("network {name} has no address range"))?;
    let subnet: Ipv4Addr = config
        .subnet
        .as_deref()
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("network {name} has no IPv4 subnet"))?;
    let gateway = config
        .gateway
        .as_deref()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let [a, b, c, _] = subnet.octets();
            Ipv4Addr::new(a, b, c, 1)
        });
    let bridge = found
        .options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.bridge.name"))
        .cloned()
        .unwrap_or_else(|| bridge.to_string());
    Ok(NetworkInfo {
        name: name.to_string(),
        bridge,
        subnet,
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_addresses_stay_in_the_upper_half() {
        let info = NetworkInfo {
            name: "bow-p-e".into(),
            bridge: "bow00000000".into(),
            subnet: Ipv4Addr::new(172, 30, 7, 0),
            gateway: Ipv4Addr::new(172, 30, 7, 1),
        };
        for attempt in 0..500 {
            let address = info.service_address("web", attempt);
            let [a, b, c, d] = address.octets();
            assert_eq!((a, b, c), (172, 30, 7));
            assert!((128..=254).contains(&d), "{address}");
        }
    }
}
