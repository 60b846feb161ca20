//! `bow backup run|restore|verify` of a service's volumes (any service with `volumes:` and
//! `backup:` but postgres): a tar of its writable volumes taken while the service is stopped
//! (held by the agent, started again health-gated after), a restore that replaces the
//! volumes' contents with its dependants and itself stopped, and a drill that unpacks into a
//! scratch directory (docs/backups.md).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use bow_agent::api::{Request, Response};
use bow_backup::catalog::VERIFICATION;
use bow_backup::volume::{self, KIND_VOLUMES, Source};
use bow_backup::{Manifest, retention};
use bow_spec::{VolumeSource, Workload};

use super::backup::{age, bytes, confirm, now_ms, pick, record};
use super::backup_target::Store;
use crate::session::Session;

/// The directories on this host of `service`'s writable volumes: a container's named volume
/// where the engine keeps it, a bind mount's directory, a process service's own directory.
pub async fn sources(session: &Session, service: &str) -> Result<Vec<Source>> {
    let definition = &session.spec.services[service];
    let scope = format!("{}-{}", session.spec.project, session.spec.environment);
    let mut engine_volumes = None;
    let mut sources = Vec::new();
    for volume in definition.volumes.iter().filter(|v| !v.read_only) {
        let source = match (&volume.source, &definition.workload) {
            (VolumeSource::Named(name), Workload::Container(_)) => {
                if engine_volumes.is_none() {
                    let engine = bow_container::Engine::from_env();
                    engine_volumes = Some(
                        bow_container::volumes::list(&engine, &scope)
                            .await
                            .map_err(|reason| anyhow!("{service}: {reason}"))?,
                    );
                }
                let found = engine_volumes
                    .iter()
                    .flatten()
                    .find(|v| v.name == *name)
                    .ok_or_else(|| {
                        anyhow!(
                            "{service}: its volume {name} does not exist in the engine yet; has the service run (`bow up`)?"
                        )
                    })?;
                Source {
                    name: name.clone(),
                    path: found.mountpoint.clone().into(),
                }
            }
            (VolumeSource::Named(name), _) => Source {
                name: name.clone(),
                path: volume.target.clone().into(),
            },
            (VolumeSource::Path(path), _) => {
                let stack_dir = session.file.parent().unwrap_or(std::path::Path::new("/"));
                Source {
                    name: bind_name(path),
                    path: stack_dir.join(path),
                }
            }
        };
        if !source.path.is_dir() {
            bail!(
                "{service}: the volume {} ({}) is not a directory on this host",
                source.name,
                source.path.display()
            );
        }
        sources.push(source);
    }
    Ok(sources)
}

/// A bind mount's name in the tar: its path's last part (`./static` → `static`).
fn bind_name(path: &str) -> String {
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    match last {
        "" | "." | ".." => "bind".to_string(),
        name => name.to_string(),
    }
}

/// The services that depend on `service`, directly or through others: in the order to stop
/// them (dependants of dependants first) and in the order to start them again.
pub fn dependants(session: &Session, service: &str) -> (Vec<String>, Vec<String>) {
    let spec = &session.spec;
    let mut found = std::collections::BTreeSet::new();
    let mut queue = vec![service.to_string()];
    while let Some(current) = queue.pop() {
        for (name, definition) in &spec.services {
            if definition.depends_on.contains(&current) && found.insert(name.clone()) {
                queue.push(name.clone());
            }
        }
    }
    let start: Vec<String> = bow_spec::dependency_order(spec)
        .into_iter()
        .filter(|name| found.contains(name))
        .collect();
    let stop = start.iter().rev().cloned().collect();
    (stop, start)
}

/// Holds `stop` (stopped, in this order) while `body` runs, then starts `start` again, each
/// healthy before the next; the services are started again whether `body` failed or not.
/// Without an agent nothing runs, so nothing is held.
pub async fn while_held<T>(
    session: &Session,
    stop: &[String],
    start: &[String],
    body: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let agent = if stop.is_empty() {
        false
    } else {
        match call(
            session,
            Request::Hold {
                services: stop.to_vec(),
            },
        )? {
            Some(Response::Held { instances }) => {
                if !instances.is_empty() {
                    println!("stopped {} until this is done", instances.join(", "));
                }
                true
            }
            None => false,
            Some(other) => {
                // Whatever it did hold is started again.
                let _ = call(
                    session,
                    Request::Resume {
                        services: start.to_vec(),
                    },
                );
                bail!("{}", error_of(other));
            }
        }
    };
    let result = body.await;
    if agent {
        match call(
            session,
            Request::Resume {
                services: start.to_vec(),
            },
        ) {
            Ok(Some(Response::Held { instances })) if !instances.is_empty() => {
                println!("started {} again: healthy", instances.join(", "))
            }
            Ok(Some(Response::Held { .. })) | Ok(None) => {}
            Ok(Some(other)) => {
                let message = error_of(other);
                return match result {
                    Ok(_) => Err(anyhow!("{message}")),
                    Err(error) => Err(error.context(message)),
                };
            }
            Err(error) => return result.and(Err(error)),
        }
    }
    result
}

fn call(session: &Session, request: Request) -> Result<Option<Response>> {
    // A hold waits for stops, a resume for health: the agent bounds both by the services'
    // own timeouts.
    session.call(&request, Duration::from_secs(1800))
}

fn error_of(response: Response) -> String {
    match response {
        Response::Error { message } => message,
        other => format!("unexpected answer from the agent: {other:?}"),
    }
}

/// A backup of `service`'s volumes, its drill (unless `verify_it` is false) and retention.
/// The manifest of the new backup.
pub async fn back_up(session: &Session, service: &str, verify_it: bool) -> Result<Manifest> {
    let store = Store::open(session, service)?;
    let backup = session.spec.services[service]
        .backup
        .clone()
        .expect("backup:");
    let sources = sources(session, service).await?;
    let started = bow_backup::now_rfc3339();
    let id = bow_backup::id_from_time(&started);
    let manifest = Manifest::new(
        &id,
        &session.spec.project,
        &session.spec.environment,
        service,
        KIND_VOLUMES,
    );
    let me = [service.to_string()];
    let stopped = Instant::now();
    let manifest = while_held(session, &me, &me, async {
        Ok(volume::backup(&store.catalog, store.recipients.clone(), sources, manifest).await?)
    })
    .await?;
    let down_for = stopped.elapsed();
    record(&session.state_dir, service, |r| {
        r.last_success_ms = Some(now_ms());
        r.last_success_id = Some(manifest.id.clone());
        r.last_size_bytes = manifest.size();
    });
    let data = manifest.object(bow_backup::catalog::DATA)?;
    let files: u64 = manifest.volumes.iter().map(|v| v.files).sum();
    println!(
        "{service}: backup {id}: {} volume(s), {files} files; {} tarred, {} stored (zstd + age) in {:.1} s (the service was stopped for {:.1} s) → {}",
        manifest.volumes.len(),
        bytes(data.plain_size),
        bytes(manifest.size()),
        manifest.duration_ms as f64 / 1000.0,
        down_for.as_secs_f64(),
        store.place
    );
    if !verify_it {
        println!("{service}: not verified (--no-verify): retention waits for a verified backup");
        return Ok(manifest);
    }
    if !verify_one(session, &store, &manifest).await? {
        bail!("backup {id} did not pass its restore drill; nothing was deleted");
    }
    let entries = store.catalog.list(&store.identity).await?;
    let doomed = retention::to_delete(&entries, backup.keep as usize);
    for old in &doomed {
        store.catalog.delete(old).await?;
    }
    if !doomed.is_empty() {
        println!(
            "{service}: retention (keep {}): deleted {}",
            backup.keep,
            doomed.join(", ")
        );
    }
    Ok(manifest)
}

/// The restore drill of `manifest`, recorded beside it and in the backup record.
pub async fn verify_one(session: &Session, store: &Store, manifest: &Manifest) -> Result<bool> {
    let service = &manifest.service;
    let check = session.spec.services[service]
        .backup
        .as_ref()
        .and_then(|b| b.check.clone());
    let scratch = session
        .state_dir
        .join("backups")
        .join(format!("scratch-{service}-{}", manifest.id));
    let verdict = volume::verify(
        &store.catalog,
        store.identity.clone(),
        manifest,
        &scratch,
        check.as_deref(),
    )
    .await?;
    store
        .catalog
        .write(&manifest.id, VERIFICATION, &verdict, &store.recipients)
        .await?;
    record(&session.state_dir, service, |r| {
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
            "{service}: backup {} verified in {:.1} s: {}",
            manifest.id,
            verdict.duration_ms as f64 / 1000.0,
            verdict.message
        );
    } else {
        eprintln!(
            "error: {service}: backup {} FAILED verification: {}",
            manifest.id, verdict.message
        );
    }
    Ok(verdict.ok)
}

/// `bow backup verify` of a volume service: the drill of `id` (default: the newest).
pub async fn verify(session: &Session, service: &str, id: Option<&str>) -> Result<bool> {
    let store = Store::open(session, service)?;
    let entries = store.catalog.list(&store.identity).await?;
    let entry = pick(&entries, id, service, false)?;
    verify_one(session, &store, entry.manifest.as_ref().expect("complete")).await
}

/// `bow backup restore` of a volume service: its dependants and itself stopped, the volumes'
/// contents replaced (unpacked beside them first: a stream that fails its checks changes
/// nothing), itself then its dependants started again, each healthy before the next.
pub async fn restore(
    session: &Session,
    service: &str,
    id: Option<&str>,
    yes: bool,
) -> Result<ExitCode> {
    let store = Store::open(session, service)?;
    let entries = store.catalog.list(&store.identity).await?;
    let entry = pick(&entries, id, service, true)?;
    let manifest = entry.manifest.as_ref().expect("complete");
    if let Some(verification) = entry.verification.as_ref().filter(|v| !v.ok) {
        bail!(
            "backup {} of {service} failed its restore drill ({}): bow does not restore it",
            entry.id,
            verification.message
        );
    }
    let sources: Vec<Source> = sources(session, service)
        .await?
        .into_iter()
        .filter(|s| manifest.volumes.iter().any(|v| v.name == s.name))
        .collect();
    if sources.is_empty() {
        bail!(
            "backup {} of {service} holds none of its volumes now ({})",
            manifest.id,
            manifest
                .volumes
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (mut stop, mut start) = dependants(session, service);
    let question = format!(
        "replace the volumes {} of {service} with backup {} ({} old){}?",
        sources
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
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
    stop.push(service.to_string());
    start.insert(0, service.to_string());
    let staging: BTreeMap<String, std::path::PathBuf> = sources
        .iter()
        .map(|s| (s.name.clone(), volume::staging_for(s, &manifest.id)))
        .collect();
    let began = Instant::now();
    while_held(session, &stop, &start, async {
        for dir in staging.values() {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir)?;
        }
        let unpacked = volume::unpack(
            &store.catalog,
            store.identity.clone(),
            manifest,
            staging.clone(),
        )
        .await;
        if let Err(error) = unpacked {
            for dir in staging.values() {
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(anyhow!(error).context("nothing was changed"));
        }
        volume::swap_in(&sources, &staging)?;
        Ok(())
    })
    .await?;
    let files: u64 = manifest.volumes.iter().map(|v| v.files).sum();
    println!(
        "{service}: restored backup {} into {}: {files} files in {:.1} s",
        manifest.id,
        sources
            .iter()
            .map(|s| format!("{} ({})", s.name, s.path.display()))
            .collect::<Vec<_>>()
            .join(", "),
        began.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
