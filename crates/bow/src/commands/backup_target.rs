//! What a backup command needs for one service, gathered once: its `backup:` section, the
//! store it names (credentials from bow secrets), the age key and recipients ([`Store`]), and
//! for postgres the running server's socket and superuser ([`Target`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bow_agent::api::{Health, Request, Response};
use bow_backup::{Catalog, Destination, S3Credentials};
use bow_spec::{Backup, Postgres, Workload};

use crate::session::Session;

/// One service's backups and how to reach its data.
pub struct Target {
    pub service: String,
    pub backup: Backup,
    pub postgres: Postgres,
    pub catalog: Catalog,
    /// Where the backups are, for messages (`s3://bucket/prefix`, a directory).
    pub place: String,
    pub identity: Arc<bow_backup::Identity>,
    pub recipients: Arc<Vec<bow_backup::Recipient>>,
    /// The postgres binaries of the service's version.
    pub bin: PathBuf,
    /// The service's volume (`<state-dir>/volumes/<service>`).
    pub volume: PathBuf,
    pub superuser: String,
    pub ids: Option<(u32, u32)>,
    /// The state dir, where the backup record is (`bow_agent::backup_state`).
    pub state_dir: PathBuf,
}

/// The services of the file with `backup:`, or `only` (which must have one).
pub fn services(session: &Session, only: Option<&str>) -> Result<Vec<String>> {
    let with_backup: Vec<String> = session
        .spec
        .services
        .iter()
        .filter(|(_, s)| s.backup.is_some())
        .map(|(name, _)| name.clone())
        .collect();
    match only {
        Some(name) if with_backup.iter().any(|s| s == name) => Ok(vec![name.to_string()]),
        Some(name) if session.spec.services.contains_key(name) => bail!(
            "{name} has no `backup:` in {}; services with backups: {}",
            session.file.display(),
            list(&with_backup)
        ),
        Some(name) => bail!(
            "no service {name} in {}; services with backups: {}",
            session.file.display(),
            list(&with_backup)
        ),
        None if with_backup.is_empty() => bail!(
            "no service in {} has `backup:`; add `backup: {{ to: /var/backups/NAME }}` to a postgres service or one with volumes",
            session.file.display()
        ),
        None => Ok(with_backup),
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Where a service's backups are and the keys to them.
pub struct Store {
    pub catalog: Catalog,
    /// Where the backups are, for messages (`s3://bucket/prefix`, a directory).
    pub place: String,
    pub identity: Arc<bow_backup::Identity>,
    pub recipients: Arc<Vec<bow_backup::Recipient>>,
}

/// Whether `service` is backed up as volumes (every service with `backup:` but postgres).
pub fn is_volume_service(session: &Session, service: &str) -> bool {
    !matches!(
        session.spec.services[service].workload,
        Workload::Postgres(_)
    )
}

impl Store {
    /// The store `backup:` of `service` names, its credentials from bow secrets, the age key.
    pub fn open(session: &Session, service: &str) -> Result<Store> {
        let definition = &session.spec.services[service];
        let backup = definition.backup.clone().expect("a service with backup:");
        let source = crate::secret_store::source(session).ok_or_else(|| {
            anyhow!(
                "no key for the secrets of {}: backups are encrypted to it",
                session.spec.environment
            )
        })?;
        let key = source
            .key
            .load()
            .with_context(|| "the age key that backups are encrypted to and read with")?;
        let recipients = match bow_secrets::SecretsFile::load(&source.file)? {
            Some(file) => file.recipients,
            None => vec![key.recipient.clone()],
        };
        let recipients = bow_backup::recipients(&recipients)?;
        let stack_dir = session.file.parent().unwrap_or(Path::new("/"));
        let to = match backup.to.strip_prefix("./") {
            Some(relative) => stack_dir.join(relative).display().to_string(),
            None => backup.to.clone(),
        };
        let destination = Destination::parse(&to)?;
        let credentials = match (&backup.access_key_secret, &backup.secret_key_secret) {
            (Some(id), Some(secret)) if destination.is_s3() => {
                let revealed = source
                    .reveal(&[id.as_str(), secret.as_str()])
                    .with_context(|| format!("the credentials of {}", backup.to))?;
                let text = |i: usize| {
                    let value = &revealed[i].value;
                    String::from_utf8_lossy(value.strip_suffix(b"\n").unwrap_or(value)).into_owned()
                };
                Some(S3Credentials {
                    access_key_id: text(0),
                    secret_access_key: text(1),
                })
            }
            _ => None,
        };
        let region = backup.region.as_deref().unwrap_or("us-east-1");
        let (store, prefix) =
            destination.open(backup.endpoint.as_deref(), region, credentials.as_ref())?;
        let catalog = Catalog::new(
            store,
            &prefix,
            &session.spec.project,
            &session.spec.environment,
            service,
        );
        Ok(Store {
            catalog,
            place: to,
            identity: Arc::new(key.identity),
            recipients: Arc::new(recipients),
        })
    }
}

impl Target {
    pub fn load(session: &Session, service: &str) -> Result<Target> {
        let definition = &session.spec.services[service];
        let backup = definition.backup.clone().expect("a service with backup:");
        let Workload::Postgres(postgres) = &definition.workload else {
            bail!("{service}: not a postgres service: its volumes are backed up as a tar");
        };
        let Store {
            catalog,
            place,
            identity,
            recipients,
        } = Store::open(session, service)?;
        let (superuser, ids) = if crate::stack::is_root() {
            let name = definition
                .user
                .clone()
                .unwrap_or_else(|| bow_driver::default_service_user(service));
            let user = bow_driver::users::lookup_user(&name)?.ok_or_else(|| {
                anyhow!("{service}: its user {name} does not exist; has the service ever run (`bow up`)?")
            })?;
            (user.name, Some((user.uid, user.gid)))
        } else {
            (bow_driver::users::current_user()?.name, None)
        };
        Ok(Target {
            service: service.to_string(),
            place,
            postgres: postgres.clone(),
            backup,
            catalog,
            identity,
            recipients,
            bin: bow_agent::postgres::bin_dir(postgres.version),
            volume: bow_agent::postgres::volumes_dir(&session.state_dir).join(service),
            superuser,
            ids,
            state_dir: session.state_dir.clone(),
        })
    }

    /// The running server, reached on its unix socket: the agent says on which port.
    pub fn server(&self, session: &Session) -> Result<bow_backup::postgres::Server> {
        let report = match session.call(&Request::Status, Duration::from_secs(10))? {
            Some(Response::Status(report)) => report,
            Some(other) => bail!("unexpected answer from the agent: {other:?}"),
            None => return Err(crate::session::no_agent(&session.state_dir)),
        };
        // The primary (with read replicas, the instance whose check says so; without, the
        // only one), reached on its own member's socket.
        let (index, port) = report
            .services
            .iter()
            .filter(|s| s.name == self.service)
            .flat_map(|s| &s.instances)
            .filter(|i| i.health == Health::Healthy)
            .find(|i| i.database.as_ref().is_none_or(|d| d.is_primary()))
            .and_then(|i| Some((i.index, i.port?)))
            .ok_or_else(|| {
                anyhow!(
                    "{} has no healthy primary; `bow status` shows it",
                    self.service
                )
            })?;
        Ok(bow_backup::postgres::Server {
            bin: self.bin.clone(),
            sockets: bow_agent::postgres::member_home(&self.volume, index).join("run"),
            port,
            superuser: self.superuser.clone(),
            ids: self.ids,
            database: self.postgres.database.clone(),
        })
    }
}
