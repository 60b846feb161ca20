//! Parts of a service with sections of their own: `health`, `postgres`, `backup`.

use crate::reader::{Reader, join};
use crate::schema::*;
use crate::units::Duration;
use crate::yaml::{Node, NodeKind};

use super::*;

pub(super) fn postgres(node: &Node, path: &str, reader: &mut Reader) -> Option<Postgres> {
    let fields = reader.fields(node, path, "a mapping of postgres settings", POSTGRES_KEYS)?;
    let version = match fields.get("version") {
        Some((n, p)) => reader
            .integer(n, &p, "a PostgreSQL major version", 10, 99)
            .map(|v| v as u32),
        None => Some(defaults::POSTGRES_VERSION),
    };
    let mut sql_name = |key: &str, what: &str| {
        let value = required(&fields, key, what, reader)?;
        let (n, p) = fields.get(key)?;
        let ok = value.len() <= 63
            && value.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            reader.error(
                &p,
                n.span,
                format!("{value:?} is not a valid {what}: expected [a-z_][a-z0-9_]*"),
                None,
            );
            return None;
        }
        Some(value)
    };
    let database = sql_name("database", "database name");
    let user = sql_name("user", "database user name");
    let password_secret = required(
        &fields,
        "password_secret",
        "the name of the secret holding the password",
        reader,
    );
    if let (Some(name), Some((n, p))) = (&password_secret, fields.get("password_secret"))
        && !is_secret_name(name)
    {
        reader.error(
            &p,
            n.span,
            format!("secret name {name:?} is not valid: expected letters, digits, `_` and `-`"),
            None,
        );
        return None;
    }
    let init = fields
        .get("init")
        .and_then(|(n, p)| reader.nonempty(n, &p, "an SQL file path"));
    let mut settings = std::collections::BTreeMap::new();
    if let Some((n, p)) = fields.get("settings") {
        for (key, value) in reader
            .map(n, &p, "a mapping of server settings")
            .unwrap_or_default()
        {
            let name = key.scalar().unwrap_or_default();
            let setting_path = join(&p, name);
            let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.'
                });
            if !valid {
                reader.error(
                    &setting_path,
                    key.span,
                    format!("{name:?} is not a PostgreSQL setting name: expected [a-z][a-z0-9_.]*"),
                    Some(
                        "write settings as in postgresql.conf, e.g. shared_buffers: 256MB"
                            .to_string(),
                    ),
                );
                continue;
            }
            if BOW_OWNED_SETTINGS.contains(&name) {
                reader.error(
                    &setting_path,
                    key.span,
                    format!("`{name}` is set by bow"),
                    Some("bow sets the listen address, port, sockets, data directory and authentication itself; remove it".to_string()),
                );
                continue;
            }
            if let Some(text) = reader.string(value, &setting_path, "a setting value") {
                if text.contains(['\n', '\r']) {
                    reader.error(
                        &setting_path,
                        value.span,
                        "a setting value is one line",
                        None,
                    );
                    continue;
                }
                settings.insert(name.to_string(), text);
            }
        }
    }
    let replicas = match fields.get("replicas") {
        Some((n, p)) => reader
            .integer(
                n,
                &p,
                "a number of read replicas",
                0,
                defaults::POSTGRES_MAX_REPLICAS as i64,
            )
            .map(|v| v as u32),
        None => Some(0),
    };
    let max_lag = match fields.get("max_lag") {
        Some((n, p)) => reader.duration(n, &p),
        None => Some(defaults::POSTGRES_MAX_LAG),
    };
    Some(Postgres {
        replicas: replicas?,
        max_lag: max_lag?,
        version: version?,
        database: database?,
        user: user?,
        password_secret: password_secret?,
        init,
        settings,
    })
}

/// Settings bow writes itself: where the server listens, its files and who may connect.
const BOW_OWNED_SETTINGS: &[&str] = &[
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "data_directory",
    "hba_file",
    "ident_file",
    "config_file",
    "include",
    "include_dir",
    "include_if_exists",
    "password_encryption",
];

pub(super) fn health(node: &Node, path: &str, reader: &mut Reader) -> Option<Health> {
    let fields = reader.fields(node, path, "a health check mapping", HEALTH_KEYS)?;
    let before = reader.diagnostics.len();
    let kinds: Vec<&str> = ["http", "tcp", "exec"]
        .into_iter()
        .filter(|k| fields.get(k).is_some())
        .collect();
    let check = match kinds.as_slice() {
        [] => {
            reader.error(
                path,
                node.span,
                "expected one of `http`, `tcp` or `exec`, found none",
                Some("for example `health: { http: /healthz }`".to_string()),
            );
            None
        }
        [kind] => {
            let (n, p) = fields.get(kind)?;
            match *kind {
                "http" => {
                    reader
                        .nonempty(n, &p, "a URL path like /healthz")
                        .and_then(|path_text| {
                            if path_text.starts_with('/') {
                                Some(Check::Http(path_text))
                            } else {
                                reader.error(
                                    &p,
                                    n.span,
                                    format!(
                                        "expected a URL path starting with /, found {path_text:?}"
                                    ),
                                    Some(format!("write /{}", path_text.trim_start_matches('/'))),
                                );
                                None
                            }
                        })
                }
                "tcp" => match &n.kind {
                    NodeKind::Plain(text) if matches!(text.as_str(), "true" | "false") => reader
                        .boolean(n, &p)
                        .map(|b| Check::Tcp(TcpTarget::InstancePort(b))),
                    _ => reader
                        .port(n, &p)
                        .map(|port| Check::Tcp(TcpTarget::Port(port))),
                },
                _ => reader.nonempty(n, &p, "a command").map(Check::Exec),
            }
        }
        [first, second, ..] => {
            let span = fields.key_span(second).unwrap_or(node.span);
            reader.error(
                &join(path, second),
                span,
                format!("a health check has exactly one of http, tcp or exec, found {first} and {second}"),
                Some(format!("keep one: `{first}` or `{second}`")),
            );
            None
        }
    };
    let mut duration = |key: &str, default: Duration| match fields.get(key) {
        Some((n, p)) => reader.duration(n, &p).filter(|d| {
            let ok = key == "start_period" || d.as_std() > std::time::Duration::ZERO;
            if !ok {
                reader.error(&p, n.span, format!("{key} must be longer than 0s"), None);
            }
            ok
        }),
        None => Some(default),
    };
    let interval = duration("interval", defaults::HEALTH_INTERVAL);
    let timeout = duration("timeout", defaults::HEALTH_TIMEOUT);
    let start_period = duration("start_period", Duration::default());
    let retries = match fields.get("retries") {
        Some((n, p)) => reader
            .integer(n, &p, "a number of failed checks", 1, 100)
            .map(|v| v as u32),
        None => Some(defaults::HEALTH_RETRIES),
    };
    let health = Health {
        check: check?,
        interval: interval?,
        timeout: timeout?,
        retries: retries?,
        start_period: start_period?,
    };
    (reader.diagnostics.len() == before).then_some(health)
}

pub(super) fn backup(node: &Node, path: &str, reader: &mut Reader) -> Option<Backup> {
    let fields = reader.fields(node, path, "a mapping with to, keep and kind", BACKUP_KEYS)?;
    let before = reader.diagnostics.len();
    let schedule = fields.get("schedule").and_then(|(n, p)| {
        let text = reader.nonempty(n, &p, "a cron schedule like \"0 3 * * *\"")?;
        match crate::cron::Cron::parse(&text) {
            Ok(_) => Some(text),
            Err(message) => {
                reader.error(&p, n.span, message, Some("five fields: minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\"".to_string()));
                None
            }
        }
    });
    // `verify:` daily, weekly, hourly, monthly, or a cron expression: when restore drills run.
    let verify = fields.get("verify").and_then(|(n, p)| {
        let text = reader.nonempty(n, &p, "daily, weekly or a cron schedule")?;
        let cron = match text.as_str() {
            "hourly" | "daily" | "weekly" | "monthly" => format!("@{text}"),
            _ => text.clone(),
        };
        match crate::cron::Cron::parse(&cron) {
            Ok(_) => Some(cron),
            Err(message) => {
                reader.error(
                    &p,
                    n.span,
                    message,
                    Some(
                        "daily, weekly, monthly, or five cron fields like \"0 4 * * 0\""
                            .to_string(),
                    ),
                );
                None
            }
        }
    });
    let keep = match fields.get("keep") {
        Some((n, p)) => reader
            .integer(n, &p, "a number of backups to keep", 1, 100_000)
            .map(|v| v as u32),
        None => Some(defaults::BACKUP_KEEP),
    };
    let to = required(
        &fields,
        "to",
        "a destination like s3://bucket/prefix or a directory",
        reader,
    )
    .and_then(|to| {
        let (n, p) = fields.get("to")?;
        let ok = to.starts_with("s3://") && to.len() > 5 && !to.starts_with("s3:///")
            || to.starts_with("file:///")
            || to.starts_with('/')
            || to.starts_with("./");
        if !ok {
            reader.error(
                &p,
                n.span,
                format!(
                    "expected s3://bucket/prefix, file:///dir or a directory path, found {to:?}"
                ),
                None,
            );
            return None;
        }
        Some(to)
    });
    let kind = match fields.get("kind") {
        Some((n, p)) => match reader.string(n, &p, "logical or base").as_deref() {
            Some("logical") => Some(BackupKind::Logical),
            Some("base") => Some(BackupKind::Base),
            Some(other) => {
                reader.error(
                    &p,
                    n.span,
                    format!("expected logical or base, found {other:?}"),
                    Some(
                        "logical: pg_dump of the database; base: pg_basebackup of the cluster"
                            .to_string(),
                    ),
                );
                None
            }
            None => None,
        },
        None => Some(BackupKind::default()),
    };
    let pitr = match fields.get("pitr") {
        Some((n, p)) => reader.boolean(n, &p),
        None => Some(false),
    };
    let text = |key: &str, what: &str, reader: &mut Reader| {
        fields
            .get(key)
            .and_then(|(n, p)| reader.nonempty(n, &p, what))
    };
    let endpoint = text(
        "endpoint",
        "an S3 endpoint URL like https://s3.example.net",
        reader,
    );
    if let (Some(endpoint), Some((n, p))) = (&endpoint, fields.get("endpoint"))
        && !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
    {
        reader.error(
            &p,
            n.span,
            format!("expected an http:// or https:// URL, found {endpoint:?}"),
            None,
        );
    }
    let region = text("region", "an S3 region like eu-west-1", reader);
    let access_key_secret = text("access_key_secret", "the name of a secret", reader);
    let secret_key_secret = text("secret_key_secret", "the name of a secret", reader);
    let check = text("check", "an SQL query that returns true", reader);
    if reader.diagnostics.len() != before {
        return None;
    }
    Some(Backup {
        schedule,
        keep: keep?,
        to: to?,
        kind: kind?,
        pitr: pitr?,
        endpoint,
        region,
        access_key_secret,
        secret_key_secret,
        check,
        verify,
    })
}
