//! Why a slot fits nowhere, and why one left its host: typed, with the text an operator reads.

use std::fmt;

use crate::Capacity;

/// Why a slot could not be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unplaceable {
    /// The service is a singleton and another slot already holds its one instance.
    Singleton,
    /// No host has any of these roles.
    NoHostWithRole { roles: Vec<String> },
    /// Hosts with the roles exist, but none is alive and schedulable: each with its state
    /// (`down`, `draining`, `cordoned`).
    NoEligibleHost {
        roles: Vec<String>,
        hosts: Vec<(String, &'static str)>,
    },
    /// Every eligible host is too full for one more instance.
    NoRoom {
        roles: Vec<String>,
        needs: Capacity,
        eligible: usize,
        /// The eligible host with the most memory left (then CPU), and what it has left.
        most_free: Option<(String, Capacity)>,
    },
}

/// Why a slot left the host it ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveReason {
    /// Its host is not alive (its lease expired).
    HostDown,
    /// Its host is draining.
    HostDraining,
    /// Its host is no longer a member.
    HostGone,
    /// Its host no longer has any of the service's roles.
    RolesChanged,
    /// Its host no longer has room for it (a capacity lowered, resources raised).
    NoRoom,
}

impl MoveReason {
    pub fn label(&self) -> &'static str {
        match self {
            MoveReason::HostDown => "host down",
            MoveReason::HostDraining => "host draining",
            MoveReason::HostGone => "host gone",
            MoveReason::RolesChanged => "roles changed",
            MoveReason::NoRoom => "no room",
        }
    }
}

impl fmt::Display for MoveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// ` with role data` / ` with role main or worker` / nothing.
fn with_role(roles: &[String]) -> String {
    if roles.is_empty() {
        String::new()
    } else {
        format!(" with role {}", roles.join(" or "))
    }
}

/// `1.5 CPU`, `4G memory`, joined by `and`; `nothing` when empty.
pub(crate) fn amount(capacity: &Capacity) -> String {
    let mut parts = Vec::new();
    if let Some(milli) = capacity.millicpu {
        parts.push(format!("{} CPU", cores(milli)));
    }
    if let Some(bytes) = capacity.memory {
        parts.push(format!("{} memory", bow_spec::units::Size(bytes)));
    }
    if parts.is_empty() {
        "nothing".to_string()
    } else {
        parts.join(" and ")
    }
}

fn cores(milli: u64) -> String {
    if milli.is_multiple_of(1000) {
        (milli / 1000).to_string()
    } else {
        format!("{}", milli as f64 / 1000.0)
    }
}

impl fmt::Display for Unplaceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unplaceable::Singleton => {
                write!(f, "singleton: at most one instance runs in the cluster")
            }
            Unplaceable::NoHostWithRole { roles } => {
                write!(
                    f,
                    "cannot place: no host has the role {}",
                    roles.join(" or ")
                )
            }
            Unplaceable::NoEligibleHost { roles, hosts } => {
                let shown: Vec<String> = hosts
                    .iter()
                    .take(5)
                    .map(|(name, state)| format!("{name} {state}"))
                    .collect();
                let more = hosts.len().saturating_sub(shown.len());
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                write!(
                    f,
                    "cannot place: no host{} is up and schedulable ({}{more})",
                    with_role(roles),
                    shown.join(", ")
                )
            }
            Unplaceable::NoRoom {
                roles,
                needs,
                eligible,
                most_free,
            } => {
                write!(
                    f,
                    "cannot place: needs {}, and none of the {eligible} eligible hosts{} has that much free",
                    amount(needs),
                    with_role(roles)
                )?;
                if let Some((host, free)) = most_free {
                    write!(f, " (most free: {host}, {})", amount(free))?;
                }
                Ok(())
            }
        }
    }
}
