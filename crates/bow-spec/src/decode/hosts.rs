//! `hosts:` (etcd endpoints, member hosts with roles and capacity) and a service's
//! `placement:`, plus the rules between them: a role no host has, a singleton with several
//! replicas, an instance larger than every host that may run it.

use std::collections::{BTreeMap, BTreeSet};

use crate::diag::did_you_mean;
use crate::reader::{Reader, index, join};
use crate::schema::{Capacity, HostMember, Hosts, Placement, Spec, Workload};
use crate::units::Size;
use crate::yaml::{Node, NodeKind};

use super::{CAPACITY_KEYS, HOST_KEYS, HOSTS_KEYS, PLACEMENT_KEYS};

/// The smallest memory capacity a host may declare (a bare number is bytes: surely a slip).
const MIN_HOST_MEMORY: u64 = 64 << 20;

pub(super) fn hosts(node: &Node, path: &str, reader: &mut Reader) -> Option<Hosts> {
    let fields = reader.fields(node, path, "a mapping with etcd and members", HOSTS_KEYS)?;
    let mut etcd = Vec::new();
    if let Some((n, p)) = fields.get("etcd") {
        for (position, item) in reader
            .list(n, &p, "etcd client URLs like https://10.0.0.1:2379")
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let item_path = index(&p, position);
            let Some(url) = reader.nonempty(item, &item_path, "an etcd client URL") else {
                continue;
            };
            if !is_etcd_url(&url) {
                reader.error(
                    &item_path,
                    item.span,
                    format!("expected an etcd client URL like https://10.0.0.1:2379, found {url:?}"),
                    Some("write http:// or https://, the host and the client port (2379), without a path".to_string()),
                );
            } else if etcd.contains(&url) {
                reader.error(
                    &item_path,
                    item.span,
                    format!("`{url}` is listed twice"),
                    None,
                );
            } else {
                etcd.push(url);
            }
        }
    }
    let mut members = BTreeMap::new();
    match fields.get("members") {
        Some((n, p)) => {
            let mut addresses: BTreeMap<String, String> = BTreeMap::new();
            for (key, value) in reader
                .map(n, &p, "a mapping of host names to hosts")
                .unwrap_or_default()
            {
                let name = key.scalar().unwrap_or_default();
                let host_path = join(&p, name);
                let valid = reader.name(name, key.span, &host_path, "host name");
                let Some(member) = member(value, &host_path, reader) else {
                    continue;
                };
                if let Some(other) = addresses.get(&member.address) {
                    reader.error(
                        &join(&host_path, "address"),
                        value.get("address").map_or(value.span, |a| a.span),
                        format!(
                            "hosts `{other}` and `{name}` have the same address {}",
                            member.address
                        ),
                        Some("each host is one machine with an address of its own".to_string()),
                    );
                }
                addresses.insert(member.address.clone(), name.to_string());
                if valid {
                    members.insert(name.to_string(), member);
                }
            }
            if members.is_empty() && n.entries().is_none_or(<[_]>::is_empty) {
                reader.error(
                    &p,
                    n.blame(),
                    "expected at least one host under `members`",
                    Some("add `web1: {address: 10.0.0.11, roles: [worker]}`, or remove `hosts:` to run on this host alone".to_string()),
                );
            }
            if addresses.len() > 1 && etcd.is_empty() && fields.get("etcd").is_none() {
                reader.error(
                    path,
                    node.blame(),
                    "several hosts need `etcd`: they share their state through it",
                    Some(
                        "add `etcd: [https://10.0.0.1:2379]` with your etcd cluster's client URLs"
                            .to_string(),
                    ),
                );
            }
        }
        None => reader.error(
            path,
            node.blame(),
            "missing required key `members` (the hosts)",
            Some("add `members: {web1: {address: 10.0.0.11, roles: [worker]}}`".to_string()),
        ),
    }
    Some(Hosts { etcd, members })
}

fn member(node: &Node, path: &str, reader: &mut Reader) -> Option<HostMember> {
    let fields = reader.fields(
        node,
        path,
        "a host mapping with address, roles and capacity",
        HOST_KEYS,
    )?;
    let address = match fields.get("address") {
        Some((n, p)) => {
            let text = reader.nonempty(n, &p, "an IP address or a DNS name")?;
            if !is_host_address(&text) {
                reader.error(
                    &p,
                    n.span,
                    format!("expected an IP address or a DNS name, found {text:?}"),
                    Some("write the address alone (10.0.0.11, db1.internal), without a port or scheme".to_string()),
                );
                return None;
            }
            text
        }
        None => {
            reader.error(
                path,
                node.blame(),
                "missing required key `address`",
                Some("add `address: 10.0.0.11`: where the other hosts reach this one".to_string()),
            );
            return None;
        }
    };
    let roles = fields
        .get("roles")
        .map(|(n, p)| role_names(n, &p, reader))
        .unwrap_or_default();
    let capacity = fields
        .get("capacity")
        .map(|(n, p)| capacity(n, &p, reader))
        .unwrap_or_default();
    Some(HostMember {
        address,
        roles,
        capacity,
    })
}

fn capacity(node: &Node, path: &str, reader: &mut Reader) -> Capacity {
    let mut capacity = Capacity::default();
    let Some(fields) = reader.fields(node, path, "a mapping with cpu and memory", CAPACITY_KEYS)
    else {
        return capacity;
    };
    if let Some((n, p)) = fields.get("cpu") {
        let text = n.scalar().unwrap_or_default();
        if let Some(milli) = text.strip_suffix('m').filter(|m| m.parse::<u32>().is_ok()) {
            reader.error(
                &p,
                n.span,
                format!("expected a number of CPU cores, found {text:?}"),
                Some(format!(
                    "cpu is counted in whole cores: {milli} millicores are `cpu: {}`",
                    milli.parse::<f64>().unwrap_or(0.0) / 1000.0
                )),
            );
        } else {
            capacity.cpu = reader
                .float(n, &p, "a number of CPU cores like 8")
                .filter(|cpu| {
                    let ok = (0.1..=4096.0).contains(cpu);
                    if !ok {
                        reader.error(
                            &p,
                            n.span,
                            format!(
                                "expected a number of CPU cores between 0.1 and 4096, found {cpu}"
                            ),
                            Some("for example `cpu: 8` for eight cores".to_string()),
                        );
                    }
                    ok
                });
        }
    }
    if let Some((n, p)) = fields.get("memory") {
        let text = n.scalar().unwrap_or_default().trim().to_string();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            reader.error(
                &p,
                n.span,
                format!("expected a size with a unit like 16G, found {text} (bytes)"),
                Some(format!(
                    "write the unit: `memory: {text}G` or `memory: {text}M`"
                )),
            );
        } else {
            capacity.memory = reader.size(n, &p).filter(|size: &Size| {
                let ok = size.bytes() >= MIN_HOST_MEMORY;
                if !ok {
                    reader.error(
                        &p,
                        n.span,
                        format!("a host's memory of {size} is too small: expected at least 64M"),
                        Some("for example `memory: 16G`".to_string()),
                    );
                }
                ok
            });
        }
    }
    capacity
}

/// `placement: { roles, spread, singleton }`; the default when it has errors.
pub(super) fn placement(node: &Node, path: &str, reader: &mut Reader) -> Placement {
    let mut placement = Placement::default();
    let Some(fields) = reader.fields(
        node,
        path,
        "a mapping with roles, spread and singleton",
        PLACEMENT_KEYS,
    ) else {
        return placement;
    };
    if let Some((n, p)) = fields.get("roles") {
        placement.roles = role_names(n, &p, reader);
    }
    if let Some((n, p)) = fields.get("spread") {
        placement.spread = reader.boolean(n, &p).unwrap_or(false);
    }
    if let Some((n, p)) = fields.get("singleton") {
        placement.singleton = reader.boolean(n, &p).unwrap_or(false);
    }
    placement
}

fn role_names(node: &Node, path: &str, reader: &mut Reader) -> Vec<String> {
    let mut roles = Vec::new();
    for (position, item) in reader
        .list(node, path, "role names like worker or data")
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let item_path = index(path, position);
        let Some(role) = reader.nonempty(item, &item_path, "a role name") else {
            continue;
        };
        if !reader.name(&role, item.span, &item_path, "role name") {
            continue;
        }
        if roles.contains(&role) {
            reader.error(
                &item_path,
                item.span,
                format!("`{role}` is listed twice"),
                None,
            );
        } else {
            roles.push(role);
        }
    }
    roles
}

/// The rules between `hosts:` and the services' placement, run on the decoded spec.
pub(crate) fn check(spec: &Spec, root: &Node, reader: &mut Reader) {
    for (name, service) in &spec.services {
        let service_node = root.get("services").and_then(|s| s.get(name));
        let placement_node = service_node.and_then(|s| s.get("placement"));
        let at = |key: &str| {
            placement_node
                .and_then(|p| p.get(key))
                .map_or_else(|| placement_node.map_or(root.span, Node::blame), |n| n.span)
        };
        let path = join(&join("services", name), "placement");
        if service.placement.singleton && service.replicas > 1 {
            let hint = match &service.workload {
                Workload::Postgres(_) => "a postgres service runs its primary and its `postgres.replicas`: leave `singleton` out, the primary is fenced on its own".to_string(),
                _ => format!("set `replicas: 1`, or leave `singleton` out to run {} instances", service.replicas),
            };
            reader.error(
                &join(&path, "singleton"),
                at("singleton"),
                format!(
                    "a singleton runs at most one instance, but the service has {} replicas",
                    service.replicas
                ),
                Some(hint),
            );
        }
        let Some(hosts) = &spec.hosts else {
            // One implicit host takes every role.
            continue;
        };
        let known: BTreeSet<&str> = hosts
            .members
            .values()
            .flat_map(|m| m.roles.iter().map(String::as_str))
            .collect();
        for (position, role) in service.placement.roles.iter().enumerate() {
            if known.contains(role.as_str()) {
                continue;
            }
            let span = placement_node
                .and_then(|p| p.get("roles"))
                .and_then(|r| match &r.kind {
                    NodeKind::Seq(items) => Some(items),
                    _ => None,
                })
                .and_then(|items| items.get(position))
                .map_or_else(|| at("roles"), |n| n.span);
            let hint = match did_you_mean(role, known.iter().copied()) {
                Some(close) => format!("did you mean `{close}`?"),
                None if known.is_empty() => {
                    "no host has roles yet: add `roles: [...]` to hosts under `hosts.members`"
                        .to_string()
                }
                None => format!(
                    "roles of the hosts: {}",
                    known.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            };
            reader.error(
                &index(&join(&path, "roles"), position),
                span,
                format!("no host has the role `{role}`: the service could run nowhere"),
                Some(hint),
            );
        }
        too_large(spec, hosts, name, service_node, root, reader);
    }
}

/// An instance needs more cpu or memory than any host that may run it offers.
fn too_large(
    spec: &Spec,
    hosts: &Hosts,
    name: &str,
    service_node: Option<&Node>,
    root: &Node,
    reader: &mut Reader,
) {
    let service = &spec.services[name];
    let eligible: Vec<(&String, &HostMember)> = hosts
        .members
        .iter()
        .filter(|(_, m)| {
            service.placement.roles.is_empty()
                || m.roles.iter().any(|r| service.placement.roles.contains(r))
        })
        .collect();
    if eligible.is_empty() {
        return;
    }
    let resources = service_node.and_then(|s| s.get("resources"));
    let span_of = |key: &str| {
        resources
            .and_then(|r| r.get(key))
            .or(resources)
            .map_or(root.span, |n| n.span)
    };
    let which = if service.placement.roles.is_empty() {
        "host".to_string()
    } else {
        format!("host with role {}", service.placement.roles.join(" or "))
    };
    if let Some(memory) = service.resources.memory
        && eligible.iter().all(|(_, m)| {
            m.capacity
                .memory
                .is_some_and(|c| c.bytes() < memory.bytes())
        })
        && let Some((largest, member)) = eligible
            .iter()
            .max_by_key(|(_, m)| m.capacity.memory.map_or(0, |c| c.bytes()))
    {
        reader.error(
            &format!("services.{name}.resources.memory"),
            span_of("memory"),
            format!(
                "no {which} can hold an instance needing {memory} of memory: the largest, `{largest}`, has {}",
                member.capacity.memory.map_or_else(String::new, |c| c.to_string())
            ),
            Some("lower `resources.memory`, or raise a host's `capacity.memory`".to_string()),
        );
    }
    if let Some(cpu) = service.resources.cpu
        && eligible
            .iter()
            .all(|(_, m)| m.capacity.cpu.is_some_and(|c| c < cpu))
        && let Some((largest, member)) = eligible.iter().max_by(|a, b| {
            let cpu = |m: &HostMember| m.capacity.cpu.unwrap_or(0.0);
            cpu(a.1).total_cmp(&cpu(b.1))
        })
    {
        reader.error(
            &format!("services.{name}.resources.cpu"),
            span_of("cpu"),
            format!(
                "no {which} can hold an instance needing {cpu} CPU: the largest, `{largest}`, has {}",
                member.capacity.cpu.unwrap_or(0.0)
            ),
            Some("lower `resources.cpu`, or raise a host's `capacity.cpu`".to_string()),
        );
    }
}

/// `http(s)://host:port`, no path.
fn is_etcd_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let Some((host, port)) = rest.rsplit_once(':') else {
        return false;
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    port.parse::<u16>().is_ok_and(|p| p > 0) && is_host_address(host)
}

/// An IP address, or a DNS name of `[A-Za-z0-9-]` labels.
fn is_host_address(text: &str) -> bool {
    if text.parse::<core::net::IpAddr>().is_ok() {
        return true;
    }
    !text.is_empty()
        && text.len() <= 253
        && !text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_etcd_urls() {
        for ok in ["10.0.0.1", "fd00::1", "db1.internal", "web-1"] {
            assert!(is_host_address(ok), "{ok}");
        }
        for bad in ["10.0.0.1:22", "http://x", "", "10.0.0", "-a"] {
            assert!(!is_host_address(bad), "{bad}");
        }
        for ok in [
            "https://10.0.0.1:2379",
            "http://etcd.internal:2379",
            "https://[fd00::1]:2379",
        ] {
            assert!(is_etcd_url(ok), "{ok}");
        }
        for bad in [
            "10.0.0.1:2379",
            "https://10.0.0.1",
            "etcd://a:1",
            "https://a:2379/v3",
        ] {
            assert!(!is_etcd_url(bad), "{bad}");
        }
    }
}
