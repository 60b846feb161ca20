//! Managed PostgreSQL (`postgres:` services): a process service whose command bow builds.
//!
//! Before the first instance starts (`prepare`, beside the venv build) the host's server
//! binaries are found (`/usr/lib/postgresql/<version>/bin`), the data directory of the
//! service's volume (`<state-dir>/volumes/<service>/data`) is created by `initdb` when it has
//! none — checksums on, `peer` for the superuser on the unix socket, `scram-sha-256` over TCP —
//! and bow's own files are written: `bow.conf` (an include of `postgresql.conf`: where it
//! listens, and `settings:`) and `pg_hba.conf`. The data directory outlives releases, `bow
//! down`, agent restarts and the service's removal from the file; only `bow volume rm` deletes
//! it. Data of another major version is refused, never initialised over.
//!
//! The server runs as the service's unix user, which is also its superuser role (reachable
//! only through the unix socket, by `peer`). Once it answers (`admin.rs`), the application
//! role gets the secret's password (as a SCRAM verifier computed here: the password is never
//! in an argv, a log or a statement), the database is created owned by it, and `init:` runs
//! once, as that role, recorded with its files' digests in `bow-init.json` in the data dir.

use std::path::{Path, PathBuf};

use bow_spec::{Postgres, Service, Workload};

/// Where one postgres service's files are, and as whom its tools run.
pub(crate) struct Cluster {
    /// `/usr/lib/postgresql/<version>/bin`.
    pub bin: PathBuf,
    /// `<state-dir>/volumes/<service>`: the service's volume, owned by its user.
    pub volume: PathBuf,
    /// Which server of the service this is: its instance index (1, the first instance, is
    /// the first primary; the others start as streaming replicas).
    pub member: u32,
    /// The member's own directory: the volume for member 1, `<volume>/member-N` otherwise.
    pub home: PathBuf,
    /// `<home>/data`: PGDATA.
    pub data: PathBuf,
    /// `<home>/run`: the server's unix socket directory.
    pub sockets: PathBuf,
    /// The service's unix user, also the cluster's superuser role (peer, socket only).
    pub superuser: String,
    /// uid/gid the tools run as (`None`: the agent's own, when not root).
    pub ids: Option<(u32, u32)>,
    /// `backup: {pitr: true}`: the server archives its WAL (`postgres_archive`).
    pub pitr: bool,
}

/// The postgres section of a service, if it is a postgres service.
pub(crate) fn of(service: &Service) -> Option<&Postgres> {
    match &service.workload {
        Workload::Postgres(postgres) => Some(postgres),
        _ => None,
    }
}

/// Replaces each `${postgres:SERVICE}` in `value` by the service's URL,
/// `postgresql://USER:PASSWORD@HOST:PORT/DATABASE`: HOST is the service's name where names
/// resolve (as root), else its discovery address; the password is the value of the
/// service's password secret among `secrets` (the using service lists it).
pub(crate) fn resolve_urls(
    value: &str,
    context: &crate::instance_spec::InstanceContext<'_>,
    secrets: &[bow_driver::SecretFile],
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("${postgres:") {
        let after = &rest[at + "${postgres:".len()..];
        let Some(end) = after.find('}') else { break };
        let target = &after[..end];
        // `db-ro`: the replicas of `db`, with its role and database.
        let postgres = context
            .databases
            .get(target)
            .or_else(|| {
                let base = target.strip_suffix(bow_spec::REPLICA_SUFFIX)?;
                context.databases.get(base).filter(|p| p.replicas > 0)
            })
            .ok_or_else(|| format!("`${{postgres:{target}}}` names no postgres service"))?;
        let (address, _) = context
            .names
            .services
            .get(target)
            .ok_or_else(|| format!("{target} has no service address yet"))?;
        let host = if context.names.hosts_file.is_some() {
            target.to_string()
        } else {
            address.ip().to_string()
        };
        let password = secrets
            .iter()
            .find(|s| s.name == postgres.password_secret)
            .map(|s| s.value.strip_suffix(b"\n").unwrap_or(&s.value))
            .ok_or_else(|| {
                format!(
                    "`${{postgres:{target}}}` needs the secret {} among the service's secrets",
                    postgres.password_secret
                )
            })?;
        out.push_str(&rest[..at]);
        out.push_str(&format!(
            "postgresql://{}:{}@{host}:{}/{}",
            postgres.user,
            percent_encode(password),
            address.port(),
            postgres.database
        ));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Percent-encoding of everything but RFC 3986's unreserved characters.
fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `<state-dir>/volumes`: bow-managed volumes, one directory per service.
pub fn volumes_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("volumes")
}

/// The directory of one member of a service's cluster: the volume itself for member 1 (the
/// first instance, `db.1`, where a cluster without replicas has always lived),
/// `<volume>/member-N` for the others.
pub fn member_home(volume: &Path, member: u32) -> PathBuf {
    if member <= 1 {
        volume.to_path_buf()
    } else {
        volume.join(format!("member-{member}"))
    }
}

/// Where the binaries of `version` are; `BOW_POSTGRES_BIN` (a directory with `{version}` in
/// it) overrides the Debian layout.
pub fn bin_dir(version: u32) -> PathBuf {
    let pattern = std::env::var("BOW_POSTGRES_BIN")
        .unwrap_or_else(|_| "/usr/lib/postgresql/{version}/bin".to_string());
    PathBuf::from(pattern.replace("{version}", &version.to_string()))
}

impl Cluster {
    /// Locates the cluster of `service`; `Err` when the server binaries are missing (naming
    /// the Debian package) or the service user cannot be had. Creates the user when root.
    pub(crate) fn locate(
        state_dir: &Path,
        service_name: &str,
        member: u32,
        definition: &Service,
        root: bool,
    ) -> Result<Cluster, String> {
        let postgres = of(definition).ok_or("not a postgres service")?;
        let bin = bin_dir(postgres.version);
        for tool in ["postgres", "initdb", "psql"] {
            if !bin.join(tool).is_file() {
                return Err(format!(
                    "PostgreSQL {version} is not installed: {} is missing; install the Debian package postgresql-{version} (apt-get install postgresql-{version}), or set postgres.version to an installed one",
                    bin.join(tool).display(),
                    version = postgres.version
                ));
            }
        }
        let (superuser, ids) = if root {
            let name = definition
                .user
                .clone()
                .unwrap_or_else(|| bow_driver::default_service_user(service_name));
            let user = bow_driver::users::ensure_system_user(&name)
                .map_err(|e| format!("user {name}: {e}"))?;
            (user.name, Some((user.uid, user.gid)))
        } else {
            let user = bow_driver::users::current_user().map_err(|e| e.to_string())?;
            (user.name, None)
        };
        let volume = volumes_dir(state_dir).join(service_name);
        let home = member_home(&volume, member);
        Ok(Cluster {
            bin,
            data: home.join("data"),
            sockets: home.join("run"),
            home,
            member,
            volume,
            superuser,
            ids,
            pitr: definition.backup.as_ref().is_some_and(|b| b.pitr),
        })
    }

    /// The server's command line: bow's files carry everything else.
    pub(crate) fn argv(&self, port: u16) -> Vec<String> {
        vec![
            self.bin.join("postgres").display().to_string(),
            "-D".to_string(),
            self.data.display().to_string(),
            "-p".to_string(),
            port.to_string(),
        ]
    }

    /// A command for one of the binaries, run as the service's user with a clean environment.
    pub(crate) fn tool(&self, name: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.bin.join(name));
        command
            .env_clear()
            .env("PATH", bow_driver::DEFAULT_PATH)
            .env("LANG", "C.UTF-8")
            .current_dir(&self.home)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some((uid, gid)) = self.ids {
            command.uid(uid).gid(gid);
        }
        command
    }
}

/// Gets the cluster of a postgres service ready to start: binaries, user, volume, the first
/// member's data directory (initdb when no member has data yet), bow's conf files of every
/// member that has data. Replicas get their data from the primary when they start
/// (`postgres_replica::prepare_member`). Returns what it did, for the event.
pub(crate) async fn prepare(
    state_dir: &Path,
    service_name: &str,
    definition: &Service,
    root: bool,
) -> Result<Option<String>, String> {
    let postgres = of(definition).ok_or("not a postgres service")?;
    let volume = volumes_dir(state_dir).join(service_name);
    // Data of another major version is refused before anything else, also when that
    // version's binaries are not installed.
    let members = members_with_data(&volume);
    for (member, found) in &members {
        if *found != postgres.version.to_string() {
            let data = member_home(&volume, *member).join("data");
            return Err(format!(
                "the data of {service_name} ({}) was made by PostgreSQL {found}, and postgres.version is {}: bow never initialises over existing data. Upgrade it yourself: stop the service, then either run pg_upgrade (postgresql-{} installed beside postgresql-{found}) into a new data directory, or pg_dump it with PostgreSQL {found} and restore into a fresh {service_name}; or set postgres.version back to {found}",
                data.display(),
                postgres.version,
                postgres.version
            ));
        }
    }
    let (state_dir, name, owned) = (
        state_dir.to_path_buf(),
        service_name.to_string(),
        definition.clone(),
    );
    let cluster =
        tokio::task::spawn_blocking(move || Cluster::locate(&state_dir, &name, 1, &owned, root))
            .await
            .map_err(|e| e.to_string())??;
    if let Some(volumes) = cluster.volume.parent() {
        make_dir(volumes, 0o755, None)?;
    }
    make_dir(&cluster.volume, 0o700, cluster.ids)?;
    make_dir(&cluster.sockets, 0o700, cluster.ids)?;
    let mut did = None;
    if members.is_empty() {
        initdb(&cluster).await?;
        did = Some(format!(
            "initdb: PostgreSQL {} cluster in {} (checksums on, scram-sha-256)",
            postgres.version,
            cluster.data.display()
        ));
    }
    Ok(did)
}

/// The members of a service's cluster that have data, with the major version that made it.
pub(crate) fn members_with_data(volume: &Path) -> Vec<(u32, String)> {
    let mut members: Vec<(u32, String)> = std::fs::read_dir(volume)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            name.to_str()?.strip_prefix("member-")?.parse::<u32>().ok()
        })
        .chain([1])
        .filter_map(|member| {
            let data = member_home(volume, member).join("data");
            Some((member, data_version(&data)?))
        })
        .collect();
    members.sort();
    members.dedup();
    members
}

/// The major version a data directory was made by, if it has one.
pub(crate) fn data_version(data: &Path) -> Option<String> {
    std::fs::read_to_string(data.join("PG_VERSION"))
        .ok()
        .map(|v| v.trim().to_string())
}

/// Creates `dir` with `mode` (and owner `ids`) when missing; fixes the owner when present.
pub(crate) fn make_dir(dir: &Path, mode: u32, ids: Option<(u32, u32)>) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))?;
    }
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|e| format!("cannot give {} to uid {uid}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Makes a new cluster in `data.new` and renames it into place: a data directory either is
/// complete or is not there.
async fn initdb(cluster: &Cluster) -> Result<(), String> {
    let fresh = cluster.volume.join("data.new");
    let _ = tokio::fs::remove_dir_all(&fresh).await;
    let output = cluster
        .tool("initdb")
        .arg("-D")
        .arg(&fresh)
        .args([
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "--data-checksums",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ])
        .arg(format!("--username={}", cluster.superuser))
        .output()
        .await
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "initdb failed ({}): {}",
            output.status,
            tail(&output.stderr)
        ));
    }
    let conf = fresh.join("postgresql.conf");
    let mut text =
        std::fs::read_to_string(&conf).map_err(|e| format!("{}: {e}", conf.display()))?;
    text.push_str("\n# bow: where the server listens, and postgres.settings of bow.yaml\ninclude = 'bow.conf'\n");
    std::fs::write(&conf, text).map_err(|e| format!("{}: {e}", conf.display()))?;
    tokio::fs::rename(&fresh, &cluster.data)
        .await
        .map_err(|e| format!("cannot move the new cluster into place: {e}"))
}

/// The last lines of a tool's stderr, for an error message.
pub(crate) fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().rev().take(4).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// A value quoted for postgresql.conf.
pub(crate) fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Writes `bow.conf` (the include) and `pg_hba.conf`, owned by the service user. A replica's
/// `bow.conf` also says where its primary is (`upstream`).
pub(crate) fn write_conf(
    cluster: &Cluster,
    postgres: &Postgres,
    upstream: Option<&crate::postgres_replica::Upstream>,
) -> Result<(), String> {
    let mut conf = String::from(
        "# Written by bow at every start and change: edits here are lost.\n# Set server settings in bow.yaml, under postgres.settings.\n",
    );
    conf.push_str("listen_addresses = '127.0.0.1'\n");
    conf.push_str(&format!(
        "unix_socket_directories = {}\n",
        quote(&cluster.sockets.display().to_string())
    ));
    conf.push_str("password_encryption = 'scram-sha-256'\n");
    if postgres.replicas > 0 || upstream.is_some() {
        conf.push_str(&crate::postgres_replica::conf_lines(
            cluster, postgres, upstream,
        ));
    }
    if cluster.pitr {
        conf.push_str(&crate::postgres_archive::conf_lines(cluster)?);
    }
    for (name, value) in &postgres.settings {
        conf.push_str(&format!("{name} = {}\n", quote(value)));
    }
    let hba = format!(
        "# Written by bow at every start and change: edits here are lost.\n\
         # The superuser (the service's unix user) only over the unix socket, by peer, also\n\
         # for replication (the replicas run as the same user on this host);\n\
         # every role over TCP from this host with its password (scram-sha-256).\n\
         local all \"{superuser}\" peer\n\
         local replication \"{superuser}\" peer\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
        superuser = cluster.superuser
    );
    write_owned(&cluster.data.join("bow.conf"), &conf, cluster.ids)?;
    write_owned(&cluster.data.join("pg_hba.conf"), &hba, cluster.ids)
}

fn write_owned(path: &Path, text: &str, ids: Option<(u32, u32)>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let temporary = path.with_extension("bow-new");
    std::fs::write(&temporary, text).map_err(|e| format!("{}: {e}", temporary.display()))?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", temporary.display()))?;
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(&temporary, Some(uid), Some(gid))
            .map_err(|e| format!("{}: {e}", temporary.display()))?;
    }
    std::fs::rename(&temporary, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_percent_encoded() {
        assert_eq!(percent_encode(b"pw-1_a.b~"), "pw-1_a.b~");
        assert_eq!(percent_encode(b"p@ss:w/rd%"), "p%40ss%3Aw%2Frd%25");
    }

    #[test]
    fn conf_values_are_quoted() {
        assert_eq!(quote("256MB"), "'256MB'");
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(quote(r"a\b"), r"'a\\b'");
    }
}
