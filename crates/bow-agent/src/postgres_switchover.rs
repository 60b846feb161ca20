//! `bow db switchover SERVICE [--to N]`: a caught-up replica becomes the primary, the service's
//! name follows it, and the old primary comes back as a replica of it. No acknowledged write
//! is lost: the old primary stops first (a fast shutdown, whose last act is to send every WAL
//! record up to its shutdown checkpoint to the streaming replicas), and the replica is promoted
//! only once it has replayed that checkpoint. Writes wait from the stop to the promotion.
//!
//! While it runs, the service's members wait before they start (`Agent::switchovers`): the old
//! primary's supervisor restarts it once its data says it is a replica (`standby.signal`,
//! after `pg_rewind`), so it never starts as a second primary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bow_reconcile::EventKind;
use bow_spec::Service;

use crate::agent::Agent;
use crate::api::{DatabaseRole, Health};
use crate::postgres::{Cluster, tail};
use crate::postgres_admin::admin;
use crate::postgres_replica::{Upstream, follow, is_replica, primary_slots_sql};

/// How long the promoted replica may take to replay the old primary's last record.
const CATCH_UP: Duration = Duration::from_secs(10);

/// One member: its index, port and files.
struct Member {
    index: u32,
    port: u16,
    cluster: Cluster,
}

impl Agent {
    /// Moves the primary of postgres service `service` to replica `to` (the least lagging
    /// one when `None`). Returns what happened, for the CLI.
    pub async fn switchover(
        self: &Arc<Self>,
        service: &str,
        to: Option<u32>,
    ) -> Result<String, String> {
        let definition = {
            let inner = self.lock();
            let spec = inner.spec.as_ref().ok_or("nothing is applied yet")?;
            spec.services
                .get(service)
                .cloned()
                .ok_or_else(|| format!("no service {service}"))?
        };
        let postgres = crate::postgres::of(&definition)
            .ok_or_else(|| format!("{service} is not a postgres service"))?;
        if postgres.replicas == 0 {
            return Err(format!(
                "{service} has no replicas to switch over to: set postgres.replicas: 1 (or more) and apply"
            ));
        }
        // One switchover at a time per service.
        let mut claimed = false;
        self.switchovers.send_if_modified(|busy| {
            claimed = busy.insert(service.to_string());
            claimed
        });
        if !claimed {
            return Err(format!("a switchover of {service} is already under way"));
        }
        let started = Instant::now();
        let outcome = self.switch(service, &definition, to).await;
        self.switchovers.send_modify(|busy| {
            busy.remove(service);
        });
        match outcome {
            Ok((old, new, blocked)) => {
                let message = format!(
                    "{service}.{new} is the primary (was {service}.{old}); writes waited {} ms; {service}.{old} rejoins as a replica",
                    blocked.as_millis()
                );
                self.emit(
                    service,
                    &format!("{service}.{new}"),
                    EventKind::Switchover,
                    &message,
                );
                // The old primary comes back as a replica: wait for it, for the report.
                let back = self
                    .wait_member(service, old, definition.deploy.timeout.as_std())
                    .await;
                Ok(format!(
                    "{message}{} ({} ms in all)",
                    if back {
                        " and is healthy"
                    } else {
                        " (not healthy yet: bow status shows it)"
                    },
                    started.elapsed().as_millis()
                ))
            }
            Err(reason) => {
                self.emit(
                    service,
                    "",
                    EventKind::Switchover,
                    &format!("switchover of {service} refused or undone: {reason}"),
                );
                Err(reason)
            }
        }
    }

    /// The switchover itself; returns the old and new primary and how long writes waited.
    async fn switch(
        self: &Arc<Self>,
        service: &str,
        definition: &Service,
        to: Option<u32>,
    ) -> Result<(u32, u32, Duration), String> {
        let postgres = crate::postgres::of(definition).ok_or("not a postgres service")?;
        let member = |index: u32, port: u16| -> Result<Member, String> {
            Ok(Member {
                index,
                port,
                cluster: Cluster::locate(&self.state_dir, service, index, definition, self.root)?,
            })
        };
        let (primary, target) = {
            let inner = self.lock();
            let runtime = inner
                .services
                .get(service)
                .ok_or_else(|| format!("{service} is not running"))?;
            let healthy = |role: &dyn Fn(&DatabaseRole) -> bool| {
                runtime
                    .slots
                    .iter()
                    .filter(|(_, s)| s.status.health == Health::Healthy)
                    .filter_map(|(i, s)| Some((*i, s.status.port?, s.status.database.clone()?)))
                    .filter(|(_, _, d)| role(d))
                    .collect::<Vec<_>>()
            };
            let primary = healthy(&|d| d.is_primary())
                .into_iter()
                .next()
                .ok_or_else(|| format!("{service} has no healthy primary now"))?;
            let mut replicas = healthy(&|d| !d.is_primary() && d.serving_reads);
            replicas.sort_by_key(|(i, _, d)| (d.lag_ms.unwrap_or(u64::MAX), *i));
            let target = match to {
                Some(wanted) => replicas
                    .into_iter()
                    .find(|(i, _, _)| *i == wanted)
                    .ok_or_else(|| {
                        format!("{service}.{wanted} is not a healthy replica that is caught up (bow status shows each one's role and lag)")
                    })?,
                None => replicas.into_iter().next().ok_or_else(|| {
                    format!("{service} has no healthy replica that is caught up (bow status shows each one's role and lag)")
                })?,
            };
            ((primary.0, primary.1), (target.0, target.1))
        };
        let old = member(primary.0, primary.1)?;
        let new = member(target.0, target.1)?;
        // The old primary stops (a fast shutdown) and its supervisor waits at the gate.
        let blocked_from = Instant::now();
        self.request_restart(service, old.index)
            .ok_or_else(|| format!("{service}.{} is gone", old.index))?;
        let checkpoint = wait_shut_down(
            &old.cluster,
            definition.stop_timeout.as_std() + Duration::from_secs(5),
        )
        .await?;
        // The replica must have replayed the old primary's last record before it is promoted.
        if let Err(reason) = wait_replayed(&new, &checkpoint).await {
            return Err(format!(
                "{service}.{} did not replay the old primary's last record ({checkpoint}): {reason}; {service}.{} starts again as the primary",
                new.index, old.index
            ));
        }
        admin(
            &new.cluster,
            new.port,
            "postgres",
            "SELECT pg_promote(true, 60);",
        )
        .await
        .map_err(|e| format!("promoting {service}.{}: {e}", new.index))?;
        let promoted = admin(
            &new.cluster,
            new.port,
            "postgres",
            "SELECT pg_is_in_recovery();",
        )
        .await;
        if promoted.as_deref() != Ok("f") {
            // Not promoted: the old primary has not moved and starts again as it was.
            return Err(format!(
                "{service}.{} was not promoted ({promoted:?}); {service}.{} starts again as the primary",
                new.index, old.index
            ));
        }
        // From here the new primary takes writes: the name `db` follows it now.
        self.update(service, new.index, |s| {
            s.database = Some(DatabaseRole {
                role: DatabaseRole::PRIMARY.to_string(),
                lag_ms: None,
                serving_reads: false,
            })
        });
        let blocked = blocked_from.elapsed();
        let upstream = Upstream {
            member: new.index,
            sockets: new.cluster.sockets.clone(),
            port: new.port,
        };
        if let Err(reason) = admin(
            &new.cluster,
            new.port,
            "postgres",
            &primary_slots_sql(postgres, new.index),
        )
        .await
        {
            self.emit(
                service,
                "",
                EventKind::Switchover,
                &format!("replication slots on the new primary: {reason}"),
            );
        }
        // The other replicas follow the new primary.
        let others: Vec<(u32, u16)> = {
            let inner = self.lock();
            inner
                .services
                .get(service)
                .map(|r| {
                    r.slots
                        .iter()
                        .filter(|(i, _)| **i != new.index && **i != old.index)
                        .filter_map(|(i, s)| Some((*i, s.status.port?)))
                        .collect()
                })
                .unwrap_or_default()
        };
        for (index, port) in others {
            if let Ok(other) = member(index, port)
                && is_replica(&other.cluster)
                && let Err(reason) = follow(&other.cluster, postgres, port, &upstream).await
            {
                self.emit(
                    service,
                    &format!("{service}.{index}"),
                    EventKind::Reconfigured,
                    &format!("cannot follow {service}.{}: {reason}", new.index),
                );
            }
        }
        // The old primary becomes a replica of the new one: rewound (nothing to undo after a
        // clean switchover, but its timeline must match), marked, pointed at it.
        rejoin(&old.cluster, postgres, &upstream).await.map_err(|reason| {
            format!(
                "{service}.{} is the primary; {service}.{} could not be made its replica: {reason}",
                new.index, old.index
            )
        })?;
        Ok((old.index, new.index, blocked))
    }

    /// Waits (at most `timeout`) until member `index` of `service` is healthy.
    async fn wait_member(&self, service: &str, index: u32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let healthy = self
                .lock()
                .slot(service, index)
                .is_some_and(|s| s.status.health == Health::Healthy && s.status.database.is_some());
            if healthy {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

/// Waits until the server of `cluster` has shut down cleanly; its last checkpoint's LSN.
async fn wait_shut_down(cluster: &Cluster, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let output = cluster
            .tool("pg_controldata")
            .arg("-D")
            .arg(&cluster.data)
            .output()
            .await
            .map_err(|e| format!("cannot run pg_controldata: {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        if field("Database cluster state:").as_deref() == Some("shut down") {
            return field("Latest checkpoint location:").ok_or_else(|| {
                format!(
                    "pg_controldata: no checkpoint location: {}",
                    tail(&output.stderr)
                )
            });
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the old primary did not shut down cleanly within {} s (state: {})",
                timeout.as_secs(),
                field("Database cluster state:").unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the replica has replayed past `lsn` (the old primary's shutdown checkpoint).
async fn wait_replayed(member: &Member, lsn: &str) -> Result<(), String> {
    if !lsn.contains('/') || !lsn.bytes().all(|b| b.is_ascii_hexdigit() || b == b'/') {
        return Err(format!("not an LSN: {lsn:?}"));
    }
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let answer = admin(
            &member.cluster,
            member.port,
            "postgres",
            &format!("SELECT pg_last_wal_replay_lsn() > '{lsn}'::pg_lsn;"),
        )
        .await?;
        if answer == "t" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not replayed within {} s", CATCH_UP.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Makes a cleanly stopped former primary a replica of `upstream`: `pg_rewind` to the new
/// primary's timeline, `standby.signal`, bow's files pointing at it. The signal is written
/// even when the rewind fails: a member that cannot follow stays a stopped replica rather
/// than a second primary.
async fn rejoin(
    cluster: &Cluster,
    postgres: &bow_spec::Postgres,
    upstream: &Upstream,
) -> Result<(), String> {
    let source = format!(
        "host='{}' port={} user='{}' dbname=postgres",
        upstream.sockets.display(),
        upstream.port,
        cluster.superuser
    );
    let output = cluster
        .tool("pg_rewind")
        .arg("--target-pgdata")
        .arg(&cluster.data)
        .arg(format!("--source-server={source}"))
        .output()
        .await
        .map_err(|e| format!("cannot run pg_rewind: {e}"));
    let signal = cluster.data.join("standby.signal");
    std::fs::write(&signal, b"").map_err(|e| format!("{}: {e}", signal.display()))?;
    if let Some((uid, gid)) = cluster.ids {
        std::os::unix::fs::chown(&signal, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    }
    // pg_rewind copies the source's configuration files: bow's are written again.
    crate::postgres::write_conf(cluster, postgres, Some(upstream))?;
    let output = output?;
    if !output.status.success() {
        return Err(format!(
            "pg_rewind failed ({}): {}",
            output.status,
            tail(&output.stderr)
        ));
    }
    Ok(())
}
