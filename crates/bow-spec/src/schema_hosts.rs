//! The several-hosts parts of the typed stack (`schema.rs` re-exports them): `hosts:`, the
//! machines an environment runs on and the etcd cluster they share state through, and a
//! service's `placement:` rules. A file without `hosts:` runs on one implicit host.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::units::Size;

/// `hosts: { etcd, members }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hosts {
    /// etcd client URLs (`https://10.0.0.1:2379`): the only shared state of the hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd: Vec<String>,
    /// Each host by its name.
    pub members: BTreeMap<String, HostMember>,
}

/// One host of `hosts.members`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostMember {
    /// The address other hosts reach it on (an IP address or a DNS name).
    pub address: String,
    /// What the host is for (`main`, `worker`, `data`): the labels `placement.roles` selects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// What bow may place on it; a dimension left out is not limited.
    #[serde(default, skip_serializing_if = "Capacity::is_unlimited")]
    pub capacity: Capacity,
}

/// `capacity: { cpu, memory }` of a host: the sum of its instances' `resources` may not
/// exceed it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// CPU cores (`8`, `3.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
}

impl Capacity {
    pub fn is_unlimited(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none()
    }
}

/// `placement: { roles, spread, singleton }` of a service: where its instances may run.
/// The default (no key) lets them run on any host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Hosts with any of these roles may run it (empty: any host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Its instances go to the hosts with the fewest of them first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spread: bool,
    /// At most one instance runs in the whole cluster (a database primary).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub singleton: bool,
}

impl Placement {
    pub fn is_default(&self) -> bool {
        self == &Placement::default()
    }
}

#[cfg(test)]
mod tests {
    use crate::{LoadOptions, Spec, load};

    #[test]
    fn hosts_and_placement_survive_the_recorded_form() {
        let text = "project: p\nhosts:\n  etcd: [https://10.0.0.1:2379]\n  members:\n    a: { address: 10.0.0.11, roles: [worker], capacity: { cpu: 2.5, memory: 4G } }\n    b: { address: b.internal }\nservices:\n  web:\n    command: run\n    placement: { roles: [worker], spread: true }\n";
        let spec = load(text, &LoadOptions::default()).expect("valid");
        let json = serde_json::to_string(&spec).expect("serialise");
        let back: Spec = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, spec);
        let hosts = spec.hosts.as_ref().expect("hosts");
        assert_eq!(hosts.members["a"].capacity.cpu, Some(2.5));
        assert!(hosts.members["b"].capacity.is_unlimited());
        // Specs recorded before the keys existed read back with the defaults.
        let plain = load(
            "project: p\nservices:\n  web: {command: run}\n",
            &LoadOptions::default(),
        )
        .expect("valid");
        let json = serde_json::to_string(&plain).expect("serialise");
        assert!(
            !json.contains("placement") && !json.contains("hosts"),
            "{json}"
        );
    }
}
