//! `bow backup run|list|restore|verify`: logical backups of postgres services, compressed and
//! encrypted on this host, into a directory or an S3-compatible store (docs/backups.md).
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
use super::backup_target::{Target, services};
use crate::cli::{BackupCommand, Output, StackArgs};
use crate::session::Session;

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
                if let Err(error) = runtime.block_on(back_up(&session, &name, !no_verify)) {
                    eprintln!("error: {name}: backup failed: {error:#}");
                    record(&session.state_dir, &name, |r| {
                        r.last_failure_ms = Some(now_ms());
                        r.last_failure = Some(format!("{error:#}"));
                        r.failures_total += 1;
                    });
                    failed += 1;
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
            runtime.block_on(restore(
                &session,
                &service,
                id.as_deref(),
                to.as_deref(),
                yes,
            ))
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
                let target = Target::load(&session, &name)?;
                match runtime.block_on(verify(&target, id.as_deref())) {
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
        if let Err(error) = runtime.block_on(restore(&session, name, None, None, true)) {
            eprintln!("error: {name}: not restored: {error:#}");
            failed += 1;
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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

async fn back_up(session: &Session, service: &str, verify_it: bool) -> Result<()> {
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
        return Ok(());
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
    Ok(())
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
fn pick<'e>(
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
    if base {
        return pitr::restore(&target, &server, &entries, id, to, yes).await;
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
        "replace database {} of {service} with backup {} ({})?",
        target.postgres.database,
        manifest.id,
        age(&manifest.finished)
    );
    if !confirm(&question, yes)? {
        return Ok(ExitCode::from(1));
    }
    postgres::restore(
        &target.catalog,
        target.identity.clone(),
        manifest,
        &server,
        Into::Live,
    )
    .await?;
    let counts = server.row_counts()?;
    let same = manifest
        .row_counts
        .iter()
        .all(|(t, n)| counts.get(t) == Some(n));
    let rows: u64 = manifest.row_counts.values().sum();
    println!(
        "{service}: restored backup {} into database {}: {} tables, {rows} rows{}",
        manifest.id,
        target.postgres.database,
        manifest.row_counts.len(),
        if same {
            ", as backed up"
        } else {
            " (some tables changed since: sessions kept writing)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

async fn list(session: &Session, only: Option<&str>, output: Output) -> Result<ExitCode> {
    let mut rows = Vec::new();
    for service in services(session, only)? {
        let target = Target::load(session, &service)?;
        for entry in target.catalog.list(&target.identity).await? {
            rows.push((service.clone(), target.place.clone(), entry));
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Updates the service's backup record (metrics, alerts, `bow status`); a record that cannot
/// be written is a warning, not a failed backup.
fn record(
    state_dir: &std::path::Path,
    service: &str,
    change: impl FnOnce(&mut bow_agent::backup_state::BackupRecord),
) {
    if let Err(error) = bow_agent::backup_state::update(state_dir, service, change) {
        eprintln!("warning: {service}: cannot record the backup's outcome: {error}");
    }
}

/// How long ago an RFC 3339 time was, coarsely (`3m`, `2h`, `5d`).
fn age(rfc3339: &str) -> String {
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

fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", n as f64 / 1_073_741_824.0),
    }
}
