//! Streaming read replicas of a postgres service (`postgres.replicas: N`).
//!
//! The service runs `1 + N` instances; instance `k` (from 1) is member `k` of the cluster, with its own
//! data directory (`postgres::member_home`). Which member is the primary is not fixed: it is
//! the one whose data has no `standby.signal`. A member without data, when it starts, copies
//! the running primary (`pg_basebackup` over the primary's unix socket, as the service's user,
//! through a replication slot `bow_member_<k>` reserved on the primary) and becomes a replica
//! that streams from it: `primary_conninfo` and `primary_slot_name` in its `bow.conf`, rewritten
//! (and reloaded) whenever the primary moves. Replication needs no password: every member runs
//! on this host as the same unix user, and `pg_hba` lets that user replicate over the socket
//! by `peer`.
//!
//! The health check tells each instance's role; the service name (`db`) balances over the
//! healthy primary, `<service>-ro` over healthy replicas that stream and lag at most
//! `max_lag`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bow_spec::{Postgres, Service};

use crate::agent::Agent;
use crate::api::Health;
use crate::postgres::{Cluster, make_dir, member_home, quote, tail, volumes_dir};

/// Where a replica finds its primary: the primary's socket directory and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upstream {
    pub member: u32,
    pub sockets: PathBuf,
    pub port: u16,
}

/// The replication slot the primary keeps for `member`.
pub(crate) fn slot_name(member: u32) -> String {
    format!("bow_member_{member}")
}

/// How much WAL the primary keeps for a replica that is away, unless `settings:` says: beyond
/// it, the replica is copied again when it returns (the primary's disk does not fill up).
const DEFAULT_SLOT_KEEP: &str = "4GB";

/// `bow.conf` lines for a member of a cluster with replicas; `upstream` for a replica.
pub(crate) fn conf_lines(
    cluster: &Cluster,
    postgres: &Postgres,
    upstream: Option<&Upstream>,
) -> String {
    let mut conf = String::from("# replication (postgres.replicas)\n");
    if !postgres.settings.contains_key("max_slot_wal_keep_size") {
        conf.push_str(&format!(
            "max_slot_wal_keep_size = {}\n",
            quote(DEFAULT_SLOT_KEEP)
        ));
    }
    if let Some(upstream) = upstream {
        conf.push_str(&format!(
            "primary_conninfo = {}\nprimary_slot_name = {}\nrecovery_target_timeline = 'latest'\n",
            quote(&conninfo(cluster, upstream)),
            quote(&slot_name(cluster.member))
        ));
    }
    conf
}

/// A libpq connection string to `upstream` as the superuser over its unix socket.
fn conninfo(cluster: &Cluster, upstream: &Upstream) -> String {
    let value = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    format!(
        "host={} port={} user={} application_name={}",
        value(&upstream.sockets.display().to_string()),
        upstream.port,
        value(&cluster.superuser),
        slot_name(cluster.member)
    )
}

/// Whether a member's data is a replica's.
pub(crate) fn is_replica(cluster: &Cluster) -> bool {
    cluster.data.join("standby.signal").exists()
}

/// The healthy primary of `service` other than `member`, as the agent last saw it.
pub(crate) fn current_primary(agent: &Agent, service: &str, member: u32) -> Option<Upstream> {
    let volume = volumes_dir(&agent.state_dir).join(service);
    let inner = agent.lock();
    let runtime = inner.services.get(service)?;
    runtime.slots.iter().find_map(|(index, slot)| {
        let primary = *index != member
            && slot.status.health == Health::Healthy
            && slot
                .status
                .database
                .as_ref()
                .is_some_and(|d| d.is_primary());
        Some(Upstream {
            member: *index,
            sockets: member_home(&volume, *index).join("run"),
            port: slot.status.port.filter(|_| primary)?,
        })
    })
}

/// Waits (at most `timeout`) for a healthy primary of `service`.
async fn wait_primary(
    agent: &Agent,
    service: &str,
    member: u32,
    timeout: Duration,
) -> Result<Upstream, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(upstream) = current_primary(agent, service, member) {
            return Ok(upstream);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "no healthy primary of {service} within {} s: a replica starts from a copy of the primary",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Before member `member` of a postgres service starts: a replica gets its primary's address
/// (and, without data, a copy of the primary); a primary gets bow's files. Returns what is
/// worth an event.
pub(crate) async fn prepare_member(
    agent: &Arc<Agent>,
    service: &str,
    member: u32,
    definition: &Service,
) -> Result<Option<String>, String> {
    let postgres = crate::postgres::of(definition).ok_or("not a postgres service")?;
    // During a switchover, what a member is decides the switchover: it starts after.
    let mut gate = agent.switchovers.subscribe();
    let _ = gate.wait_for(|services| !services.contains(service)).await;
    let (state_dir, name, owned, root) = (
        agent.state_dir.clone(),
        service.to_string(),
        definition.clone(),
        agent.root,
    );
    let cluster = tokio::task::spawn_blocking(move || {
        Cluster::locate(&state_dir, &name, member, &owned, root)
    })
    .await
    .map_err(|e| e.to_string())??;
    make_dir(&cluster.volume, 0o700, cluster.ids)?;
    make_dir(&cluster.home, 0o700, cluster.ids)?;
    make_dir(&cluster.sockets, 0o700, cluster.ids)?;
    let timeout = definition.deploy.timeout.as_std();
    let has_data = crate::postgres::data_version(&cluster.data).is_some();
    if has_data && !is_replica(&cluster) {
        if let Some(other) = current_primary(agent, service, member) {
            return Err(format!(
                "{service}.{member} holds a primary's data while {service}.{} is the primary: two primaries would diverge. Keep the one you want: `bow volume` cannot split them; move {} aside by hand to make this member a fresh replica",
                other.member,
                cluster.data.display()
            ));
        }
        crate::postgres::write_conf(&cluster, postgres, None)?;
        return Ok(None);
    }
    let upstream = wait_primary(agent, service, member, timeout).await?;
    let primary = Cluster::locate(
        &agent.state_dir,
        service,
        upstream.member,
        definition,
        agent.root,
    )?;
    let slot = slot_name(member);
    let status = crate::postgres_admin::admin(
        &primary,
        upstream.port,
        "postgres",
        &format!(
            "SELECT COALESCE((SELECT COALESCE(wal_status, 'reserved') FROM pg_replication_slots WHERE slot_name = '{slot}'), 'missing');\n\
             SELECT FROM pg_create_physical_replication_slot('{slot}', true) WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '{slot}');"
        ),
    )
    .await
    .map_err(|e| format!("reserving the replication slot {slot} on {service}.{}: {e}", upstream.member))?;
    let mut did = None;
    let slot_status = status.lines().next().unwrap_or_default().trim();
    if has_data && (slot_status == "lost" || slot_status == "missing") {
        // The primary kept no WAL for this copy (its slot was dropped, or lost): it is set
        // aside (never deleted) and the member is copied again.
        let aside = cluster
            .home
            .join(format!("data.stale-{}", crate::agent::now_ms()));
        std::fs::rename(&cluster.data, &aside)
            .map_err(|e| format!("cannot set {} aside: {e}", cluster.data.display()))?;
        did = Some(format!(
            "the primary kept no WAL for this replica (slot {slot} {slot_status}): its old copy is in {}, and it is copied again",
            aside.display()
        ));
    }
    if crate::postgres::data_version(&cluster.data).is_none() {
        let started = std::time::Instant::now();
        base_backup(&cluster, &upstream, &slot).await?;
        did = Some(format!(
            "{}replica copied from {service}.{} in {} ms (pg_basebackup, slot {slot})",
            did.map(|d| format!("{d}; ")).unwrap_or_default(),
            upstream.member,
            started.elapsed().as_millis()
        ));
    }
    crate::postgres::write_conf(&cluster, postgres, Some(&upstream))?;
    Ok(did)
}

/// Copies the primary into `data.new` and renames it into place as a replica's data.
async fn base_backup(cluster: &Cluster, upstream: &Upstream, slot: &str) -> Result<(), String> {
    let fresh = cluster.home.join("data.new");
    let _ = tokio::fs::remove_dir_all(&fresh).await;
    let output = cluster
        .tool("pg_basebackup")
        .arg("-D")
        .arg(&fresh)
        .arg("-h")
        .arg(&upstream.sockets)
        .args(["-p", &upstream.port.to_string(), "-U", &cluster.superuser])
        .args(["-X", "stream", "-S", slot, "--checkpoint=fast", "-w"])
        .output()
        .await
        .map_err(|e| format!("cannot run pg_basebackup: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "pg_basebackup from {} failed ({}): {}",
            upstream.sockets.display(),
            output.status,
            tail(&output.stderr)
        ));
    }
    // The primary's own records are not the replica's.
    let _ = std::fs::remove_file(fresh.join("postmaster.opts"));
    std::fs::write(fresh.join("standby.signal"), b"")
        .map_err(|e| format!("cannot mark {} a replica: {e}", fresh.display()))?;
    if let Some((uid, gid)) = cluster.ids {
        std::os::unix::fs::chown(fresh.join("standby.signal"), Some(uid), Some(gid))
            .map_err(|e| e.to_string())?;
    }
    tokio::fs::rename(&fresh, &cluster.data)
        .await
        .map_err(|e| format!("cannot move the replica's copy into place: {e}"))
}

/// On the primary, after every start: a slot for each replica member, and the slots of
/// members the service no longer has dropped (they would keep WAL forever).
pub(crate) fn primary_slots_sql(postgres: &Postgres, member: u32) -> String {
    let members = 1 + postgres.replicas;
    let mut sql = String::new();
    for other in (1..=members).filter(|m| *m != member) {
        let slot = slot_name(other);
        sql.push_str(&format!(
            "SELECT pg_create_physical_replication_slot('{slot}', true) WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '{slot}');\n"
        ));
    }
    sql.push_str(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active AND (slot_name = '{own}' OR (slot_name ~ '^bow_member_[0-9]+$' AND substr(slot_name, 12)::int > {members}));\n",
        own = slot_name(member)
    ));
    sql
}

/// The health query: `p` on a primary; on a replica `r|<receiving: t/f>|<lag in ms>`, the lag
/// being how far its replay is behind what it received (0 when it has replayed everything).
pub(crate) const ROLE_QUERY: &str = "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 'p' ELSE 'r|' || (EXISTS (SELECT FROM pg_stat_wal_receiver))::text || '|' || CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN '0' ELSE COALESCE((EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp()) * 1000)::bigint::text, '0') END END";

/// What the health query says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    Primary,
    Replica { receiving: bool, lag_ms: u64 },
}

pub(crate) fn parse_role(text: &str) -> Option<Seen> {
    let text = text.trim();
    if text == "p" {
        return Some(Seen::Primary);
    }
    let mut parts = text.strip_prefix("r|")?.split('|');
    let receiving = parts.next()? == "true";
    let lag_ms = parts.next()?.parse::<i64>().ok()?.max(0) as u64;
    Some(Seen::Replica { receiving, lag_ms })
}

/// Re-points a running replica at `upstream`: conf rewritten, reloaded (PostgreSQL restarts
/// its WAL receiver on a new `primary_conninfo`).
pub(crate) async fn follow(
    cluster: &Cluster,
    postgres: &Postgres,
    port: u16,
    upstream: &Upstream,
) -> Result<(), String> {
    crate::postgres::write_conf(cluster, postgres, Some(upstream))?;
    crate::postgres_admin::admin(cluster, port, "postgres", "SELECT pg_reload_conf();")
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_query_answers_are_read() {
        assert_eq!(parse_role("p\n"), Some(Seen::Primary));
        assert_eq!(
            parse_role("r|true|0"),
            Some(Seen::Replica {
                receiving: true,
                lag_ms: 0
            })
        );
        assert_eq!(
            parse_role("r|false|1520"),
            Some(Seen::Replica {
                receiving: false,
                lag_ms: 1520
            })
        );
        assert_eq!(parse_role("r|true|-3").map(|_| ()), Some(()));
        assert_eq!(parse_role("1"), None);
    }

    #[test]
    fn slots_of_removed_members_are_dropped_and_the_others_kept() {
        let postgres = Postgres {
            version: 15,
            database: "d".into(),
            user: "u".into(),
            password_secret: "s".into(),
            init: None,
            settings: Default::default(),
            replicas: 2,
            max_lag: bow_spec::defaults::POSTGRES_MAX_LAG,
        };
        let sql = primary_slots_sql(&postgres, 2);
        assert!(sql.contains("'bow_member_1'") && sql.contains("'bow_member_3'"));
        assert!(!sql.contains("pg_create_physical_replication_slot('bow_member_2'"));
        assert!(sql.contains("> 3"));
    }
}
