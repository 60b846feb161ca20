//! `bow backup run|list|restore|verify`: backups of postgres services (and, through
//! `backup_volumes`, of services' volumes), compressed and encrypted on this host, into a
//! directory or an S3-compatible store (docs/backups.md).
//!
//! `run` counts as done only once the backup has been restored into a scratch cluster and
//! checked; retention runs after that, and never deletes the newest verified backup.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Result, anyhow, bail};
use bow_backup::catalog::VERIFICATION;
use bow_backup::pitr::KIND_BASE;
use bow_backup::postgres::{self, KIND_LOGICAL, Target as Into};
use bow_backup::{Entry, Manifest, retention};

use super::backup_pitr as pitr;
use super::backup_target::{self as volumes, Store, Target, services};
use super::backup_volumes;
use crate::cli::{BackupCommand, Output, StackArgs};
use crate::session::Session;
use bow_agent::api::Request;

pub fn run(command: BackupCommand, outer: &StackArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match command {
        BackupCommand::Run {
            stack,
            service,
            no_verify,
        } => {
            let session = Session::load(&stack.or(outer))?;
            let mut failed = 0;
            for name in services(&session, service.as_deref())? {
                let began = std::time::Instant::now();
                let result = if volumes::is_volume_service(&session, &name) {
                    runtime.block_on(backup_volumes::back_up(&session, &name, !no_verify))
                } else {
                    runtime.block_on(back_up(&session, &name, !no_verify))
                };
                let took = began.elapsed().as_secs_f64();
                let trigger = match std::env::var(TRIGGER_VARIABLE).as_deref() {
                    Ok("scheduled") => "scheduled ",
                    _ => "",
                };
                match result {
                    Ok(manifest) => backup_event(
                        &session,
                        &name,
                        format!(
                            "{trigger}backup of {name} done in {took:.1} s: {} {}, {} stored{}",
                            manifest.kind,
                            manifest.id,
                            bytes(manifest.size()),
                            if no_verify {
                                ", not verified"
                            } else {
                                ", verified"
                            }
                        ),
                    ),
                    Err(error) => {
                        eprintln!("error: {name}: backup failed: {error:#}");
                        record(&session.state_dir, &name, |r| {
                            r.last_failure_ms = Some(now_ms());
                            r.last_failure = Some(format!("{error:#}"));
                            r.failures_total += 1;
                        });
                        backup_event(
                            &session,
                            &name,
                            format!(
                                "{trigger}backup of {name} FAILED after {took:.1} s: {error:#} — the previous backups are untouched"
                            ),
                        );
                        failed += 1;
                    }
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        BackupCommand::List {
            stack,
            service,
            output,
        } => {
            let session = Session::load(&stack.or(outer))?;
            runtime.block_on(list(&session, service.as_deref(), output))
        }
        BackupCommand::Restore {
            stack,
            service,
            id,
            to,
            yes,
        } => {
            let session = Session::load(&stack.or(outer))?;
            services(&session, Some(&service))?;
            restore_one(
                &runtime,
                &session,
                &service,
                id.as_deref(),
                to.as_deref(),
                yes,
            )
        }
        BackupCommand::WalSpool {
            source,
            destination,
        } => {
            bow_backup::pitr::spool_segment(&source, &destination)?;
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::WalPush { stack, service } => {
            let session = Session::load(&stack.or(outer))?;
            let mut failed = 0;
            for name in services(&session, service.as_deref())? {
                let target = Target::load(&session, &name)?;
                if !target.backup.pitr {
                    continue;
                }
                match runtime.block_on(pitr::wal_push(&target)) {
                    Ok(0) => {}
                    Ok(n) => println!("{name}: {n} WAL segment(s) stored → {}", target.place),
                    Err(error) => {
                        eprintln!("error: {name}: {error:#}");
                        failed += 1;
                    }
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        BackupCommand::Verify { stack, service, id } => {
            let session = Session::load(&stack.or(outer))?;
            let mut failed = 0;
            for name in services(&session, service.as_deref())? {
                let verified = if volumes::is_volume_service(&session, &name) {
                    runtime.block_on(backup_volumes::verify(&session, &name, id.as_deref()))
                } else {
                    Target::load(&session, &name)
                        .and_then(|target| runtime.block_on(verify(&target, id.as_deref())))
                };
                match verified {
                    Ok(true) => {}
                    Ok(false) => failed += 1,
                    Err(error) => {
                        eprintln!("error: {name}: cannot verify: {error:#}");
                        failed += 1;
                    }
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// `bow restore-all`: every service with `backup:` from its newest good backup, asked once.
pub fn restore_all(args: &StackArgs, yes: bool) -> Result<ExitCode> {
    let session = Session::load(args)?;
    let names = services(&session, None)?;
    let question = format!(
        "replace the data of {} with their newest good backups?",
        names.join(", ")
    );
    if !confirm(&question, yes)? {
        return Ok(ExitCode::from(1));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut failed = 0;
    for name in &names {
        if restore_one(&runtime, &session, name, None, None, true).is_err() {
            failed += 1;
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Set to `scheduled` by the agent's scheduler for the runs it starts (the event says so).
pub const TRIGGER_VARIABLE: &str = "BOW_BACKUP_TRIGGER";

/// Records a `backup` event in the agent (`bow events`, the dashboard); without an agent
/// there is nowhere to record it and the terminal output is the record.
fn backup_event(session: &Session, service: &str, message: String) {
    let request = Request::BackupEvent {
        service: service.to_string(),
        message,
    };
    if let Err(error) = session.call(&request, Duration::from_secs(10)) {
        eprintln!("warning: {service}: the backup event was not recorded: {error:#}");
    }
}

/// A restore of one service (volumes or database), recorded as a `backup` event; `Err` when
/// it failed (said on stderr already).
fn restore_one(
    runtime: &tokio::runtime::Runtime,
    session: &Session,
    service: &str,
    id: Option<&str>,
    to: Option<&str>,
    yes: bool,
) -> Result<ExitCode> {
    let began = std::time::Instant::now();
    let result = if volumes::is_volume_service(session, service) {
        if to.is_some() {
            Err(anyhow!(
                "{service}: --to is for point-in-time recovery of postgres services; a volume backup is restored as it was taken"
            ))
        } else {
            runtime.block_on(backup_volumes::restore(session, service, id, yes))
        }
    } else {
        runtime.block_on(restore(session, service, id, to, yes))
    };
    let took = began.elapsed().as_secs_f64();
    match &result {
        Ok(code) if *code == ExitCode::SUCCESS => backup_event(
            session,
            service,
            format!(
                "restore of {service} done in {took:.1} s: backup {}{}",
                id.unwrap_or("newest good"),
                to.map(|t| format!(" to {t}")).unwrap_or_default()
            ),
        ),
        Ok(_) => {}
        Err(error) => {
            eprintln!("error: {service}: not restored: {error:#}");
            backup_event(
                session,
                service,
                format!("restore of {service} FAILED after {took:.1} s: {error:#}"),
            );
        }
    }
    result
}

/// Asks `question` on a terminal; without one, `yes` must be given.
pub(super) fn confirm(question: &str, yes: bool) -> Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question} add --yes to confirm (stdin is not a terminal)");
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        eprintln!("nothing restored");
        return Ok(false);
    }
    Ok(true)
}

async fn back_up(session: &Session, service: &str, verify_it: bool) -> Result<Manifest> {
    let target = Target::load(session, service)?;
    let server = target.server(session)?;
    let started = bow_backup::now_rfc3339();
    let id = bow_backup::id_from_time(&started);
    let base = pitr::is_base(&target.backup);
    let mut manifest = Manifest::new(
        &id,
        &session.spec.project,
        &session.spec.environment,
        service,
        if base { KIND_BASE } else { KIND_LOGICAL },
    );
    manifest.postgres_version = Some(target.postgres.version);
    let (catalog, recipients) = (&target.catalog, target.recipients.clone());
    let manifest = if base {
        bow_backup::pitr::base_backup(catalog, recipients, &server, manifest).await?
    } else {
        postgres::backup(catalog, recipients, &server, manifest).await?
    };
    let data = manifest.object(bow_backup::catalog::DATA)?;
    record(&session.state_dir, service, |r| {
        r.last_success_ms = Some(now_ms());
        r.last_success_id = Some(manifest.id.clone());
        r.last_size_bytes = manifest.size();
    });
    let rows: u64 = manifest.row_counts.values().sum();
    println!(
        "{service}: backup {id}: {} tables, {rows} rows; {} dumped, {} stored (zstd + age) in {:.1} s → {}",
        manifest.row_counts.len(),
        bytes(data.plain_size),
        bytes(data.size),
        manifest.duration_ms as f64 / 1000.0,
        target.place
    );
    if !verify_it {
        println!("{service}: not verified (--no-verify): retention waits for a verified backup");
        return Ok(manifest);
    }
    if !verify_one(&target, &manifest).await? {
        bail!("backup {id} did not pass its restore drill; nothing was deleted");
    }
    let entries = target.catalog.list(&target.identity).await?;
    let doomed = retention::to_delete(&entries, target.backup.keep as usize);
    for old in &doomed {
        target.catalog.delete(old).await?;
    }
    if !doomed.is_empty() {
        println!(
            "{service}: retention (keep {}): deleted {}",
            target.backup.keep,
            doomed.join(", ")
        );
    }
    if target.backup.pitr {
        let pruned = pitr::prune(&target).await?;
        if pruned > 0 {
            println!(
                "{service}: {pruned} archived WAL segment(s) older than every kept base backup deleted"
            );
        }
    }
    Ok(manifest)
}

/// Runs a restore drill of `manifest` and records it; whether it passed.
async fn verify_one(target: &Target, manifest: &Manifest) -> Result<bool> {
    let scratch = target.volume.join(format!("verify-{}", manifest.id));
    let drill = postgres::Drill {
        bin: &target.bin,
        dir: &scratch,
        superuser: &target.superuser,
        ids: target.ids,
        check: target.backup.check.as_deref(),
    };
    let verdict = if manifest.kind == KIND_BASE {
        pitr::drill(target, manifest).await?
    } else {
        postgres::verify(&target.catalog, target.identity.clone(), manifest, drill).await?
    };
    target
        .catalog
        .write(&manifest.id, VERIFICATION, &verdict, &target.recipients)
        .await?;
    record(&target.state_dir, &target.service, |r| {
        if verdict.ok {
            r.last_verified_ms = Some(now_ms());
            r.last_verified_id = Some(manifest.id.clone());
        } else {
            r.last_drill_failure_ms = Some(now_ms());
            r.last_drill_failure = Some(verdict.message.clone());
            r.drill_failures_total += 1;
        }
    });
    if verdict.ok {
        println!(
            "{}: backup {} verified in {:.1} s: {}",
            target.service,
            manifest.id,
            verdict.duration_ms as f64 / 1000.0,
            verdict.message
        );
    } else {
        eprintln!(
            "error: {}: backup {} FAILED verification: {}",
            target.service, manifest.id, verdict.message
        );
    }
    Ok(verdict.ok)
}

async fn verify(target: &Target, id: Option<&str>) -> Result<bool> {
    let entries = target.catalog.list(&target.identity).await?;
    let entry = pick(&entries, id, &target.service, false)?;
    let manifest = entry.manifest.as_ref().expect("complete");
    verify_one(target, manifest).await
}

/// The backup `id`, or the newest complete one (skipping ones whose drill failed when
/// `restoring`).
pub(super) fn pick<'e>(
    entries: &'e [Entry],
    id: Option<&str>,
    service: &str,
    restoring: bool,
) -> Result<&'e Entry> {
    match id {
        Some(id) => {
            let entry = entries.iter().find(|e| e.id == id).ok_or_else(|| {
                anyhow!("{service} has no backup {id}; `bow backup list {service}` shows them")
            })?;
            if let Some(problem) = &entry.problem {
                bail!("backup {id} of {service} cannot be read: {problem}");
            }
            if !entry.complete() {
                bail!(
                    "backup {id} of {service} is incomplete (its run was interrupted or failed): it cannot be restored"
                );
            }
            Ok(entry)
        }
        None => entries
            .iter()
            .rev()
            .filter(|e| e.complete())
            .find(|e| !restoring || e.verification.as_ref().is_none_or(|v| v.ok))
            .ok_or_else(|| {
                anyhow!(
                    "{service} has no complete backup yet; `bow backup run {service}` makes one"
                )
            }),
    }
}

async fn restore(
    session: &Session,
    service: &str,
    id: Option<&str>,
    to: Option<&str>,
    yes: bool,
) -> Result<ExitCode> {
    let target = Target::load(session, service)?;
    let server = target.server(session)?;
    let entries = target.catalog.list(&target.identity).await?;
    let chosen = match (to, id) {
        (Some(_), _) => None,
        (None, _) => Some(pick(&entries, id, service, true)?),
    };
    let base = chosen
        .and_then(|e| e.manifest.as_ref())
        .is_none_or(|m| m.kind == KIND_BASE);
    let (stop, start) = backup_volumes::dependants(session, service);
    if base {
        return backup_volumes::while_held(
            session,
            &stop,
            &start,
            pitr::restore(&target, &server, &entries, id, to, yes),
        )
        .await;
    }
    let entry = chosen.expect("a logical backup");
    let manifest = entry.manifest.as_ref().expect("complete");
    if let Some(verification) = entry.verification.as_ref().filter(|v| !v.ok) {
        bail!(
            "backup {} of {service} failed its restore drill ({}): bow does not restore it",
            entry.id,
            verification.message
        );
    }
    let question = format!(
        "replace database {} of {service} with backup {} ({}){}?",
        target.postgres.database,
        manifest.id,
        age(&manifest.finished),
        if stop.is_empty() {
            String::new()
        } else {
            format!("; {} will be stopped meanwhile", stop.join(", "))
        }
    );
    if !confirm(&question, yes)? {
        return Ok(ExitCode::from(1));
    }
    let began = std::time::Instant::now();
    backup_volumes::while_held(session, &stop, &start, async {
        Ok(postgres::restore(
            &target.catalog,
            target.identity.clone(),
            manifest,
            &server,
            Into::Live,
        )
        .await?)
    })
    .await?;
    let restored_in = began.elapsed();
    let counts = server.row_counts()?;
    let counted_in = began.elapsed() - restored_in;
    let same = manifest
        .row_counts
        .iter()
        .all(|(t, n)| counts.get(t) == Some(n));
    let rows: u64 = manifest.row_counts.values().sum();
    println!(
        "{service}: restored backup {} into database {}: {} tables, {rows} rows{} (restored in {:.1} s, rows counted in {:.1} s)",
        manifest.id,
        target.postgres.database,
        manifest.row_counts.len(),
        if same {
            ", as backed up"
        } else {
            " (some tables changed since: sessions kept writing)"
        },
        restored_in.as_secs_f64(),
        counted_in.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

async fn list(session: &Session, only: Option<&str>, output: Output) -> Result<ExitCode> {
    let mut rows = Vec::new();
    for service in services(session, only)? {
        let store = Store::open(session, &service)?;
        for entry in store.catalog.list(&store.identity).await? {
            rows.push((service.clone(), store.place.clone(), entry));
        }
    }
    match output {
        Output::Json => {
            let json: Vec<serde_json::Value> = rows
                .iter()
                .map(|(service, place, e)| {
                    let m = e.manifest.as_ref();
                    serde_json::json!({
                        "service": service,
                        "id": e.id,
                        "to": place,
                        "complete": e.complete(),
                        "problem": e.problem,
                        "kind": m.map(|m| m.kind.clone()),
                        "finished": m.map(|m| m.finished.clone()),
                        "size": m.map(Manifest::size),
                        "plain_size": m.map(|m| m.objects.iter().map(|o| o.plain_size).sum::<u64>()),
                        "duration_ms": m.map(|m| m.duration_ms),
                        "row_counts": m.map(|m| m.row_counts.clone()),
                        "volumes": m.map(|m| m.volumes.clone()),
                        "files": m.map(|m| m.volumes.iter().map(|v| v.files).sum::<u64>()),
                        "start_lsn": m.and_then(|m| m.start_lsn.clone()),
                        "end_lsn": m.and_then(|m| m.end_lsn.clone()),
                        "timeline": m.and_then(|m| m.timeline),
                        "verified": e.verification.as_ref().map(|v| v.ok),
                        "verified_at": e.verification.as_ref().map(|v| v.at.clone()),
                        "verification": e.verification.as_ref().map(|v| v.message.clone()),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        Output::Text => {
            println!(
                "{:<10} {:<22} {:<10} {:>10} {:>12}  VERIFIED",
                "SERVICE", "ID", "AGE", "SIZE", "ROWS"
            );
            for (service, _, e) in &rows {
                let (age_text, size, rows) = match &e.manifest {
                    Some(m) if !m.volumes.is_empty() => (
                        age(&m.finished),
                        bytes(m.size()),
                        format!("{} files", m.volumes.iter().map(|v| v.files).sum::<u64>()),
                    ),
                    Some(m) => (
                        age(&m.finished),
                        bytes(m.size()),
                        m.row_counts.values().sum::<u64>().to_string(),
                    ),
                    None => ("-".into(), "-".into(), "-".into()),
                };
                let verified = match (&e.problem, e.complete(), &e.verification) {
                    (Some(problem), _, _) => format!("unreadable: {problem}"),
                    (None, false, _) => "incomplete (interrupted or failed run)".into(),
                    (None, true, None) => "no".into(),
                    (None, true, Some(v)) if v.ok => format!("yes, {} ago", age(&v.at)),
                    (None, true, Some(v)) => format!("FAILED: {}", v.message),
                };
                println!(
                    "{service:<10} {:<22} {age_text:<10} {size:>10} {rows:>12}  {verified}",
                    e.id
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Updates the service's backup record (metrics, alerts, `bow status`); a record that cannot
/// be written is a warning, not a failed backup.
pub(super) fn record(
    state_dir: &std::path::Path,
    service: &str,
    change: impl FnOnce(&mut bow_agent::backup_state::BackupRecord),
) {
    if let Err(error) = bow_agent::backup_state::update(state_dir, service, change) {
        eprintln!("warning: {service}: cannot record the backup's outcome: {error}");
    }
}

/// How long ago an RFC 3339 time was, coarsely (`3m`, `2h`, `5d`).
pub(super) fn age(rfc3339: &str) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(rfc3339) else {
        return "?".into();
    };
    let seconds = SystemTime::now()
        .duration_since(then)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86400),
    }
}

pub(super) fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", n as f64 / 1_073_741_824.0),
    }
}
