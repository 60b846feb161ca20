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
    let Some(definition) = session.spec.services.get(service) else {
        bail!(
            "no service {service} in {}; postgres services: {}",
            session.file.display(),
            list(&postgres_services)
        );
    };
    let Workload::Postgres(postgres) = &definition.workload else {
        bail!(
            "{service} is not a postgres service; postgres services: {}",
            list(&postgres_services)
        );
    };
    let report = match session.call(&Request::Status, Duration::from_secs(10))? {
        Some(Response::Status(report)) => report,
        Some(other) => bail!("unexpected answer from the agent: {other:?}"),
        None => return Err(crate::session::no_agent(&session.state_dir)),
    };
    let port = report
        .services
        .iter()
        .filter(|s| s.name == service)
        .flat_map(|s| &s.instances)
        .find(|i| i.health == Health::Healthy)
        .and_then(|i| i.port)
        .ok_or_else(|| anyhow!("{service} is not running and healthy; `bow status` shows it"))?;
    let source = crate::secret_store::source(&session)
        .ok_or_else(|| anyhow!("no key for the secrets of {}", session.spec.environment))?;
    let revealed = source
        .reveal(&[postgres.password_secret.as_str()])
        .with_context(|| format!("the password of {service}"))?;
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
