//! `bow psql SERVICE [-- ARGS]`: psql on a postgres service as its role, no password typed.
//! The password comes from the secrets file and reaches psql in its environment
//! (`PGPASSWORD`), never in an argv; psql is the service's PostgreSQL version's own.

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bow_agent::api::{Health, Request, Response};
use bow_spec::Workload;

use crate::cli::StackArgs;
use crate::session::Session;

pub fn run(args: &StackArgs, service: &str, extra: &[String]) -> Result<ExitCode> {
    let session = Session::load(args)?;
    let postgres_services: Vec<&str> = session
        .spec
        .services
        .iter()
        .filter(|(_, s)| matches!(s.workload, Workload::Postgres(_)))
        .map(|(name, _)| name.as_str())
        .collect();
    // `db-ro`: the replicas of `db`.
    let Some((base, postgres, replicas)) = session.spec.database(service) else {
        if session.spec.services.contains_key(service) {
            bail!(
                "{service} is not a postgres service; postgres services: {}",
                list(&postgres_services)
            );
        }
        bail!(
            "no service {service} in {}; postgres services: {}",
            session.file.display(),
            list(&postgres_services)
        );
    };
    let report = match session.call(&Request::Status, Duration::from_secs(10))? {
        Some(Response::Status(report)) => report,
        Some(other) => bail!("unexpected answer from the agent: {other:?}"),
        None => return Err(crate::session::no_agent(&session.state_dir)),
    };
    // The primary for `db` (an instance without a role yet counts as one: a cluster without
    // replicas), a replica that serves reads for `db-ro`.
    let port = report
        .services
        .iter()
        .filter(|s| s.name == base)
        .flat_map(|s| &s.instances)
        .filter(|i| i.health == Health::Healthy)
        .find(|i| match &i.database {
            Some(role) if replicas => !role.is_primary() && role.serving_reads,
            Some(role) => role.is_primary(),
            None => !replicas,
        })
        .and_then(|i| i.port)
        .ok_or_else(|| {
            anyhow!(
                "{service} has no healthy {}; `bow status` shows it",
                if replicas {
                    "replica that is caught up"
                } else {
                    "primary"
                }
            )
        })?;
    let source = crate::secret_store::source(&session)
        .ok_or_else(|| anyhow!("no key for the secrets of {}", session.spec.environment))?;
    let revealed = source
        .reveal(&[postgres.password_secret.as_str()])
        .with_context(|| format!("the password of {base}"))?;
    let value = &revealed[0].value;
    let password = String::from_utf8_lossy(value.strip_suffix(b"\n").unwrap_or(value)).into_owned();
    let psql = bow_agent::postgres::bin_dir(postgres.version).join("psql");
    let error = std::process::Command::new(&psql)
        .env("PGPASSWORD", password)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", &postgres.user, "-d", &postgres.database])
        .args(extra)
        .exec();
    Err(anyhow!(
        "cannot run {}: {error}; install postgresql-client-{}",
        psql.display(),
        postgres.version
    ))
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}
