//! Base backups and point-in-time recovery of the postgres services with `backup: {pitr:
//! true}` (or `kind: base`): the drill of a base backup, the WAL spool's push, and `bow backup
//! restore SERVICE [ID] [--to TIME]`, which recovers a copy of the cluster in a scratch
//! directory to that time and moves the service's database from it into the live server in
//! one transaction (docs/backups.md says why a copy: the live cluster keeps its timeline,
//! replicas and archive, and the restore itself can be undone by a later point in time).

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use bow_backup::pitr::{self, KIND_BASE, Recovery};
use bow_backup::postgres::Server;
use bow_backup::{Entry, Manifest, Verification};
use bow_spec::{Backup, BackupKind};

use super::backup_target::Target;

/// Whether the service's backups are base backups (pg_basebackup) rather than pg_dump.
pub fn is_base(backup: &Backup) -> bool {
    backup.pitr || backup.kind == BackupKind::Base
}

/// Stores the service's spooled WAL segments; how many.
pub async fn wal_push(target: &Target) -> Result<usize> {
    let spool = bow_agent::postgres_archive::spool_dir(&target.volume);
    if pitr::spooled(&spool).is_empty() {
        return Ok(0);
    }
    let system = system_id(target)?;
    let pushed = pitr::push_spool(&target.catalog, target.recipients.clone(), &spool, system)
        .await
        .with_context(|| {
            format!(
                "WAL segments of {} wait in {} until the store takes them",
                target.service,
                spool.display()
            )
        })?;
    Ok(pushed)
}

/// The service's cluster's system identifier, from the data of its first member that has
/// some (every member is a copy of one cluster).
fn system_id(target: &Target) -> Result<u64> {
    let mut homes = vec![target.volume.clone()];
    let mut members: Vec<_> = std::fs::read_dir(&target.volume)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("member-"))
        })
        .collect();
    members.sort();
    homes.extend(members);
    homes
        .iter()
        .map(|home| home.join("data"))
        .find(|data| data.join("global/pg_control").is_file())
        .map(|data| Ok(pitr::system_id(&data)?))
        .unwrap_or_else(|| {
            bail!(
                "{}: no data directory under {}",
                target.service,
                target.volume.display()
            )
        })
}

/// Makes the live primary finish its current WAL segment, waits until it is spooled, and
/// stores the spool: the archive then reaches now.
async fn archive_now(target: &Target, server: &Server) -> Result<()> {
    let segment = server.psql("SELECT pg_walfile_name(pg_switch_wal())")?;
    let segment = segment.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let archived = server.psql(
            "SELECT coalesce(last_archived_wal, '') || '|' || coalesce(last_failed_wal, '') FROM pg_stat_archiver",
        )?;
        let (last, failed) = archived.trim().split_once('|').unwrap_or(("", ""));
        if last.len() >= 24 && last[8..24] >= segment[8.min(segment.len())..] {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{}'s server has not archived WAL segment {segment} within 60 s (last archived {last:?}, last failed {failed:?}); its log says why",
                target.service
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wal_push(target).await?;
    Ok(())
}

/// A base backup's restore drill: untarred into a scratch directory, started (crash recovery
/// with its own WAL), pg_amcheck, `backup.check`.
pub async fn drill(target: &Target, manifest: &Manifest) -> Result<Verification> {
    let began = Instant::now();
    let at = bow_backup::now_rfc3339();
    let dir = target.volume.join(format!("verify-{}", manifest.id));
    let _ = std::fs::remove_dir_all(&dir);
    let recovered = pitr::recover(
        &target.catalog,
        target.identity.clone(),
        manifest,
        Recovery {
            bin: &target.bin,
            dir: &dir,
            superuser: &target.superuser,
            ids: target.ids,
            to: None,
            replay_archive: false,
        },
    )
    .await;
    let verdict = match recovered {
        Err(error) => Err(anyhow!(error)),
        Ok(scratch) => {
            let check = target.backup.check.clone();
            tokio::task::spawn_blocking(move || -> Result<String> {
                scratch.amcheck()?;
                let counts = scratch.server.row_counts()?;
                if let Some(sql) = &check {
                    let answer = scratch.server.psql(sql)?;
                    if answer.trim() != "t" {
                        bail!("backup.check returned {:?}, not true: {sql}", answer.trim());
                    }
                }
                let rows: u64 = counts.values().sum();
                Ok(format!(
                    "base backup started in a scratch cluster; pg_amcheck clean; {} tables, {rows} rows{}",
                    counts.len(),
                    if check.is_some() {
                        "; backup.check true"
                    } else {
                        ""
                    }
                ))
            })
            .await?
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let (ok, message) = match verdict {
        Ok(message) => (true, message),
        Err(error) => (false, format!("{error:#}")),
    };
    Ok(Verification {
        at,
        ok,
        message,
        duration_ms: began.elapsed().as_millis() as u64,
    })
}

/// Deletes archived WAL that no kept base backup needs.
pub async fn prune(target: &Target) -> Result<usize> {
    let entries = target.catalog.list(&target.identity).await?;
    let bases: Vec<&Manifest> = entries
        .iter()
        .filter_map(|e| e.manifest.as_ref())
        .filter(|m| m.kind == KIND_BASE)
        .collect();
    // The WAL of the newest base backup's cluster, before the oldest kept base of it.
    let Some(system) = bases.last().and_then(|m| m.system_id) else {
        return Ok(0);
    };
    let oldest = bases
        .iter()
        .filter(|m| m.system_id == Some(system))
        .find_map(|m| m.start_wal.clone());
    match oldest {
        Some(start) => Ok(pitr::prune_wal(&target.catalog, system, &start).await?),
        None => Ok(0),
    }
}

/// `--to TIME` (UTC: `2026-12-05 10:31:00`, `2026-12-05T10:31:00.250Z`) as the time and as
/// `recovery_target_time` takes it: a numeric offset, since zone abbreviations (`Z`) are not
/// loaded yet when the server reads its command line.
pub fn parse_time(text: &str) -> Result<(SystemTime, String)> {
    let time = humantime::parse_rfc3339_weak(text.trim()).map_err(|e| {
        anyhow!(
            "--to {text:?}: {e}; write a UTC time like \"2026-12-05 10:31:00\" (or 2026-12-05T10:31:00Z)"
        )
    })?;
    let utc = humantime::format_rfc3339_micros(time).to_string();
    let postgres = format!("{}+00", utc.trim_end_matches('Z').replacen('T', " ", 1));
    Ok((time, postgres))
}

/// The base backup to recover from: `id`, or the newest complete one that ended before `to`
/// and did not fail its drill.
pub fn pick_base<'e>(
    entries: &'e [Entry],
    id: Option<&str>,
    to: Option<SystemTime>,
    service: &str,
) -> Result<&'e Entry> {
    let ended = |e: &Entry| {
        e.manifest
            .as_ref()
            .and_then(|m| humantime::parse_rfc3339_weak(&m.finished).ok())
    };
    let before = |e: &Entry| match (to, ended(e)) {
        (Some(to), Some(end)) => end < to,
        (None, _) => true,
        (Some(_), None) => false,
    };
    let base = |e: &Entry| e.manifest.as_ref().is_some_and(|m| m.kind == KIND_BASE);
    if let Some(id) = id {
        let entry = entries
            .iter()
            .find(|e| e.id == id && e.complete())
            .ok_or_else(|| anyhow!("{service} has no complete backup {id}"))?;
        if !base(entry) {
            bail!(
                "backup {id} of {service} is a logical backup: a point in time needs a base backup"
            );
        }
        if !before(entry) {
            bail!("backup {id} of {service} ended after the time to recover to");
        }
        return Ok(entry);
    }
    entries
        .iter()
        .rev()
        .filter(|e| base(e) && before(e))
        .find(|e| e.verification.as_ref().is_none_or(|v| v.ok))
        .ok_or_else(|| {
            let oldest = entries
                .iter()
                .find(|e| base(e))
                .and_then(|e| e.manifest.as_ref())
                .map(|m| format!("the oldest base backup ended at {}", m.finished))
                .unwrap_or_else(|| {
                    "there is no base backup yet: `bow backup run` takes one".into()
                });
            anyhow!("{service} has no base backup to recover from before that time: {oldest}")
        })
}

/// `bow backup restore SERVICE [ID] [--to TIME]` of a base backup.
pub async fn restore(
    target: &Target,
    server: &Server,
    entries: &[Entry],
    id: Option<&str>,
    to: Option<&str>,
    yes: bool,
) -> Result<ExitCode> {
    let service = &target.service;
    let to = to.map(parse_time).transpose()?;
    if to.as_ref().is_some_and(|(t, _)| *t > SystemTime::now()) {
        bail!("--to is in the future: nothing is archived past now");
    }
    let entry = pick_base(entries, id, to.as_ref().map(|(t, _)| *t), service)?;
    let manifest = entry.manifest.as_ref().expect("complete");
    if let Some(verification) = entry.verification.as_ref().filter(|v| !v.ok) {
        bail!(
            "backup {} of {service} failed its restore drill ({}): bow does not restore it",
            entry.id,
            verification.message
        );
    }
    let replay = target.backup.pitr;
    if to.is_some() && !replay {
        bail!(
            "{service} does not archive its WAL: a point in time needs `pitr: true` in its backup:"
        );
    }
    let moment = match (&to, replay) {
        (Some((_, text)), _) => text.clone(),
        (None, true) => "the newest archived WAL".to_string(),
        (None, false) => format!("the end of backup {}", manifest.id),
    };
    let question = format!(
        "replace database {} of {service} with its state at {moment} (from base backup {})?",
        target.postgres.database, manifest.id
    );
    if !super::backup::confirm(&question, yes)? {
        return Ok(ExitCode::from(1));
    }
    if replay {
        archive_now(target, server).await?;
    }
    let began = Instant::now();
    let dir = target.volume.join(format!("restore-{}", manifest.id));
    let _ = std::fs::remove_dir_all(&dir);
    let scratch = pitr::recover(
        &target.catalog,
        target.identity.clone(),
        manifest,
        Recovery {
            bin: &target.bin,
            dir: &dir,
            superuser: &target.superuser,
            ids: target.ids,
            to: to.as_ref().map(|(_, text)| text.as_str()),
            replay_archive: replay,
        },
    )
    .await
    .with_context(|| format!("recovering a copy of {service} to {moment}"))?;
    let live = server.clone();
    let counts = tokio::task::spawn_blocking(move || -> Result<_> {
        let counts = scratch.server.row_counts()?;
        pitr::transfer(&scratch.server, &live)?;
        drop(scratch);
        Ok(counts)
    })
    .await?;
    let _ = std::fs::remove_dir_all(&dir);
    let counts = counts?;
    let now = server.row_counts()?;
    let rows: u64 = counts.values().sum();
    println!(
        "{service}: restored database {} to {moment} (base backup {} + WAL) in {:.1} s: {} tables, {rows} rows{}",
        target.postgres.database,
        manifest.id,
        began.elapsed().as_secs_f64(),
        counts.len(),
        if now == counts {
            ""
        } else {
            " (some tables changed since: sessions kept writing)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc() {
        let (_, text) = parse_time("2026-12-05 10:31:00").unwrap();
        assert_eq!(text, "2026-12-05 10:31:00.000000+00");
        assert!(parse_time("yesterday").is_err());
    }
}
