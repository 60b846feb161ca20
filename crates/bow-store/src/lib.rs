//! The agent's embedded store: one SQLite database (`state.db`) in the state dir.
//!
//! Holds what was applied (spec revisions as JSON, which carry secret references, never
//! secret values). Opened in WAL mode so the CLI can read while the agent writes. The schema is
//! versioned with `PRAGMA user_version` and migrated forward on open.

use std::path::{Path, PathBuf};

use bow_spec::Spec;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

/// The database file's name inside the state dir.
pub const DATABASE_FILE: &str = "state.db";

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE revisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        applied_at_ms INTEGER NOT NULL,
        environment TEXT NOT NULL,
        spec_json TEXT NOT NULL
    );",
    "CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        service TEXT NOT NULL,
        instance TEXT NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        service TEXT NOT NULL,
        idx INTEGER NOT NULL,
        port INTEGER NOT NULL,
        restarts INTEGER NOT NULL,
        handle_json TEXT NOT NULL,
        updated_at_ms INTEGER NOT NULL
    );",
    "CREATE TABLE releases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        service TEXT NOT NULL,
        number INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        finished_at_ms INTEGER,
        status TEXT NOT NULL,
        strategy TEXT NOT NULL,
        changes TEXT NOT NULL,
        digest TEXT NOT NULL,
        reason TEXT NOT NULL,
        service_json TEXT NOT NULL,
        UNIQUE (service, number)
    );",
    // Service discovery: each service's internal address, kept once given (also after the
    // service is removed, so that re-adding it brings back the same address).
    "CREATE TABLE service_addresses (
        service TEXT PRIMARY KEY,
        address TEXT NOT NULL UNIQUE,
        assigned_at_ms INTEGER NOT NULL
    );",
    // Where a revision came from: the git commit `bow up --follow` applied ('' by hand).
    "ALTER TABLE revisions ADD COLUMN source TEXT NOT NULL DEFAULT '';",
];

/// Events kept in the store; older ones are pruned as new ones arrive.
pub const EVENTS_KEPT: i64 = 10_000;

/// What went wrong with the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state database query failed: {0}")]
    Query(#[from] rusqlite::Error),
    #[error(
        "the recorded spec in revision {id} cannot be read: {source}; it was written by another bow version"
    )]
    Decode { id: i64, source: serde_json::Error },
    #[error(
        "the state database {path} has schema version {found}, newer than this bow knows ({known}); upgrade bow"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
}

/// One applied spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub id: i64,
    pub applied_at_ms: i64,
    pub spec: Spec,
}

/// Something the agent did, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub id: i64,
    pub at_ms: i64,
    pub service: String,
    pub instance: String,
    pub kind: String,
    pub message: String,
}

/// An instance the agent runs: enough to adopt it after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    pub id: String,
    pub service: String,
    pub index: u32,
    pub port: u16,
    pub restarts: u32,
    /// The driver's handle (pid, start time, shim), as JSON.
    pub handle_json: String,
    pub updated_at_ms: i64,
}

/// Where a release stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseStatus {
    /// Its instances are being started (or it waits for its first healthy check).
    Deploying,
    /// What serves now.
    Live,
    /// Did not become healthy: rolled back, or (with nothing to roll back to) still retried.
    Failed,
    /// Was live; a later release replaced it.
    Superseded,
}

impl ReleaseStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReleaseStatus::Deploying => "deploying",
            ReleaseStatus::Live => "live",
            ReleaseStatus::Failed => "failed",
            ReleaseStatus::Superseded => "superseded",
        }
    }

    pub fn parse(text: &str) -> Option<ReleaseStatus> {
        Some(match text {
            "deploying" => ReleaseStatus::Deploying,
            "live" => ReleaseStatus::Live,
            "failed" => ReleaseStatus::Failed,
            "superseded" => ReleaseStatus::Superseded,
            _ => return None,
        })
    }
}

/// One release of a service: the definition its instances run, and how its deploy went.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseRow {
    pub service: String,
    /// 1, 2, 3… per service.
    pub number: i64,
    /// The spec revision that asked for it.
    pub revision: i64,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub status: ReleaseStatus,
    /// `initial`, `rolling`, `blue-green`, `in-place`, `scale`.
    pub strategy: String,
    /// What changed, for `bow history` (`command, env.GREETING`).
    pub changes: String,
    /// SHA-256 of the definition (which carries references, never secret values).
    pub digest: String,
    /// Why it failed, or a note (`rollback to release 2`).
    pub reason: String,
    /// The git commit its revision was applied from (`bow up --follow`), or empty.
    pub source: String,
    pub definition: bow_spec::Service,
}

/// A handle on `state.db`.
pub struct Store {
    connection: Connection,
}

impl Store {
    /// Opens (creating when missing) the store in `state_dir`, which must exist.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(DATABASE_FILE);
        let connection = Connection::open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        // Private before WAL: SQLite gives the -wal and -shm files the database's mode.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
            |error| StoreError::Open {
                path: path.clone(),
                source: rusqlite::Error::InvalidPath(PathBuf::from(format!(
                    "{}: {error}",
                    path.display()
                ))),
            },
        )?;
        let store = Store { connection };
        store.prepare(&path)?;
        Ok(store)
    }

    /// Opens the store for reading only; `None` when nothing was ever recorded.
    pub fn open_existing(state_dir: &Path) -> Result<Option<Store>, StoreError> {
        let path = state_dir.join(DATABASE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection =
            Connection::open_with_flags(&path, flags).map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if version > MIGRATIONS.len() as i64 {
            return Err(StoreError::TooNew {
                path,
                found: version,
                known: MIGRATIONS.len() as i64,
            });
        }
        if version == 0 {
            return Ok(None);
        }
        Ok(Some(Store { connection }))
    }

    fn prepare(&self, path: &Path) -> Result<(), StoreError> {
        self.connection.pragma_update(None, "journal_mode", "WAL")?;
        self.connection
            .pragma_update(None, "synchronous", "NORMAL")?;
        self.connection
            .busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = self
            .connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found: version,
                known,
            });
        }
        for (step, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            self.connection.execute_batch(&format!(
                "BEGIN; {sql} PRAGMA user_version = {}; COMMIT;",
                step + 1
            ))?;
        }
        Ok(())
    }

    /// Records `spec` as applied now and returns its revision id.
    pub fn record_revision(&self, spec: &Spec, applied_at_ms: i64) -> Result<i64, StoreError> {
        let json =
            serde_json::to_string(spec).map_err(|source| StoreError::Decode { id: 0, source })?;
        self.connection.execute(
            "INSERT INTO revisions (applied_at_ms, environment, spec_json) VALUES (?1, ?2, ?3)",
            params![applied_at_ms, spec.environment, json],
        )?;
        Ok(self.connection.last_insert_rowid())
    }

    /// Records where revision `id` came from (a git commit).
    pub fn set_revision_source(&self, id: i64, source: &str) -> Result<(), StoreError> {
        self.connection.execute(
            "UPDATE revisions SET source = ?2 WHERE id = ?1",
            params![id, source],
        )?;
        Ok(())
    }

    /// The last applied spec, if any.
    pub fn latest_revision(&self) -> Result<Option<Revision>, StoreError> {
        let row = self
            .connection
            .query_row(
                "SELECT id, applied_at_ms, spec_json FROM revisions ORDER BY id DESC LIMIT 1",
                [],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                },
            )
            .optional()?;
        let Some((id, applied_at_ms, json)) = row else {
            return Ok(None);
        };
        let spec =
            serde_json::from_str(&json).map_err(|source| StoreError::Decode { id, source })?;
        Ok(Some(Revision {
            id,
            applied_at_ms,
            spec,
        }))
    }
}

impl Store {
    /// Records a new release of `release.service`; returns its number (one above the last).
    pub fn create_release(&self, release: &ReleaseRow) -> Result<i64, StoreError> {
        let json = serde_json::to_string(&release.definition)
            .map_err(|source| StoreError::Decode { id: 0, source })?;
        let number: i64 = self.connection.query_row(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM releases WHERE service = ?1",
            params![release.service],
            |row| row.get(0),
        )?;
        self.connection.execute(
            "INSERT INTO releases (service, number, revision, created_at_ms, finished_at_ms, status,
                 strategy, changes, digest, reason, service_json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                release.service,
                number,
                release.revision,
                release.created_at_ms,
                release.finished_at_ms,
                release.status.as_str(),
                release.strategy,
                release.changes,
                release.digest,
                release.reason,
                json
            ],
        )?;
        Ok(number)
    }

    /// Moves a release to `status`; a finished one (live, failed) gets its end time.
    pub fn set_release_status(
        &self,
        service: &str,
        number: i64,
        status: ReleaseStatus,
        reason: Option<&str>,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let finished = matches!(status, ReleaseStatus::Live | ReleaseStatus::Failed);
        self.connection.execute(
            "UPDATE releases SET status = ?3,
                 finished_at_ms = CASE WHEN ?4 THEN ?5 ELSE finished_at_ms END,
                 reason = COALESCE(?6, reason)
             WHERE service = ?1 AND number = ?2",
            params![service, number, status.as_str(), finished, at_ms, reason],
        )?;
        Ok(())
    }

    /// Releases, oldest first: of one service, or of all.
    pub fn releases(&self, service: Option<&str>) -> Result<Vec<ReleaseRow>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT id, service, number, revision, created_at_ms, finished_at_ms, status, strategy,
                    changes, digest, reason, service_json,
                    (SELECT source FROM revisions WHERE revisions.id = releases.revision)
             FROM releases WHERE ?1 IS NULL OR service = ?1 ORDER BY id",
        )?;
        let rows = statement.query_map(params![service], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                ReleaseRowText {
                    service: row.get(1)?,
                    number: row.get(2)?,
                    revision: row.get(3)?,
                    created_at_ms: row.get(4)?,
                    finished_at_ms: row.get(5)?,
                    status: row.get(6)?,
                    strategy: row.get(7)?,
                    changes: row.get(8)?,
                    digest: row.get(9)?,
                    reason: row.get(10)?,
                    json: row.get(11)?,
                    source: row.get::<_, Option<String>>(12)?.unwrap_or_default(),
                },
            ))
        })?;
        let mut releases = Vec::new();
        for row in rows {
            let (id, text) = row?;
            let definition = serde_json::from_str(&text.json)
                .map_err(|source| StoreError::Decode { id, source })?;
            releases.push(ReleaseRow {
                service: text.service,
                number: text.number,
                revision: text.revision,
                created_at_ms: text.created_at_ms,
                finished_at_ms: text.finished_at_ms,
                status: ReleaseStatus::parse(&text.status).unwrap_or(ReleaseStatus::Failed),
                strategy: text.strategy,
                changes: text.changes,
                digest: text.digest,
                reason: text.reason,
                source: text.source,
                definition,
            });
        }
        Ok(releases)
    }

    /// Appends an event; keeps the newest [`EVENTS_KEPT`].
    pub fn record_event(
        &self,
        at_ms: i64,
        service: &str,
        instance: &str,
        kind: &str,
        message: &str,
    ) -> Result<i64, StoreError> {
        self.connection.execute(
            "INSERT INTO events (at_ms, service, instance, kind, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![at_ms, service, instance, kind, message],
        )?;
        let id = self.connection.last_insert_rowid();
        if id % 500 == 0 {
            self.connection.execute(
                "DELETE FROM events WHERE id <= ?1",
                params![id - EVENTS_KEPT],
            )?;
        }
        Ok(id)
    }

    /// Events with an id above `after_id`, oldest first, at most `limit`.
    pub fn events_after(&self, after_id: i64, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT id, at_ms, service, instance, kind, message FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = statement.query_map(params![after_id, limit as i64], |row| {
            Ok(EventRow {
                id: row.get(0)?,
                at_ms: row.get(1)?,
                service: row.get(2)?,
                instance: row.get(3)?,
                kind: row.get(4)?,
                message: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The newest `limit` events, oldest first.
    pub fn last_events(&self, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        let newest: i64 =
            self.connection
                .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |row| {
                    row.get(0)
                })?;
        self.events_after((newest - limit as i64).max(0), limit)
    }

    pub fn upsert_instance(&self, row: &InstanceRow) -> Result<(), StoreError> {
        self.connection.execute(
            "INSERT INTO instances (id, service, idx, port, restarts, handle_json, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(id) DO UPDATE SET service = ?2, idx = ?3, port = ?4, restarts = ?5, handle_json = ?6, updated_at_ms = ?7",
            params![row.id, row.service, row.index, row.port, row.restarts, row.handle_json, row.updated_at_ms],
        )?;
        Ok(())
    }

    /// Every service address ever given: service name → IPv4 address text.
    pub fn service_addresses(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT service, address FROM service_addresses ORDER BY service")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Gives `service` the address `address` for good. A service that already has one, or an
    /// address another service has, is refused (`Query` error with a constraint violation).
    pub fn record_service_address(
        &self,
        service: &str,
        address: &str,
        assigned_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.connection.execute(
            "INSERT INTO service_addresses (service, address, assigned_at_ms) VALUES (?1, ?2, ?3)",
            params![service, address, assigned_at_ms],
        )?;
        Ok(())
    }

    pub fn delete_instance(&self, id: &str) -> Result<(), StoreError> {
        self.connection
            .execute("DELETE FROM instances WHERE id = ?1", params![id])?;
        Ok(())
    }

    pub fn instances(&self) -> Result<Vec<InstanceRow>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT id, service, idx, port, restarts, handle_json, updated_at_ms FROM instances ORDER BY id")?;
        let rows = statement.query_map([], |row| {
            Ok(InstanceRow {
                id: row.get(0)?,
                service: row.get(1)?,
                index: row.get(2)?,
                port: row.get(3)?,
                restarts: row.get(4)?,
                handle_json: row.get(5)?,
                updated_at_ms: row.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

/// A release row as SQLite returns it, before its definition is decoded.
struct ReleaseRowText {
    service: String,
    number: i64,
    revision: i64,
    created_at_ms: i64,
    finished_at_ms: Option<i64>,
    status: String,
    strategy: String,
    changes: String,
    digest: String,
    reason: String,
    json: String,
    source: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_reads_back_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let spec = bow_spec::load(
            "project: p\nservices:\n  a: {command: run, routes: [a.localhost/x]}\n",
            &Default::default(),
        )
        .unwrap();
        assert!(Store::open_existing(dir.path()).unwrap().is_none());
        let store = Store::open(dir.path()).unwrap();
        assert!(store.latest_revision().unwrap().is_none());
        let id = store.record_revision(&spec, 1).unwrap();
        let read = Store::open_existing(dir.path()).unwrap().unwrap();
        let revision = read.latest_revision().unwrap().unwrap();
        assert_eq!(revision.id, id);
        assert_eq!(revision.spec, spec);
    }

    #[test]
    fn events_and_instances_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = store
            .record_event(1, "web", "web.1", "started", "pid 5")
            .unwrap();
        store
            .record_event(2, "web", "web.1", "healthy", "")
            .unwrap();
        let after = store.events_after(first, 10).unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].kind, "healthy");
        assert_eq!(store.last_events(1).unwrap()[0].kind, "healthy");
        let row = InstanceRow {
            id: "web.1".into(),
            service: "web".into(),
            index: 1,
            port: 40000,
            restarts: 2,
            handle_json: "{}".into(),
            updated_at_ms: 3,
        };
        store.upsert_instance(&row).unwrap();
        store
            .upsert_instance(&InstanceRow {
                restarts: 3,
                ..row.clone()
            })
            .unwrap();
        assert_eq!(store.instances().unwrap()[0].restarts, 3);
        store.delete_instance("web.1").unwrap();
        assert!(store.instances().unwrap().is_empty());
    }

    #[test]
    fn releases_number_per_service_and_move_through_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let spec = bow_spec::load(
            "project: p\nservices:\n  a: {command: run}\n  b: {command: run}\n",
            &Default::default(),
        )
        .unwrap();
        let row = |service: &str| ReleaseRow {
            service: service.into(),
            number: 0,
            revision: 1,
            created_at_ms: 10,
            finished_at_ms: None,
            status: ReleaseStatus::Deploying,
            strategy: "initial".into(),
            changes: "created".into(),
            digest: "d".into(),
            reason: String::new(),
            source: String::new(),
            definition: spec.services[service].clone(),
        };
        assert_eq!(store.create_release(&row("a")).unwrap(), 1);
        assert_eq!(store.create_release(&row("a")).unwrap(), 2);
        assert_eq!(store.create_release(&row("b")).unwrap(), 1);
        store
            .set_release_status("a", 2, ReleaseStatus::Failed, Some("crashed"), 20)
            .unwrap();
        let a = store.releases(Some("a")).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].status, ReleaseStatus::Failed);
        assert_eq!(a[1].reason, "crashed");
        assert_eq!(a[1].finished_at_ms, Some(20));
        assert_eq!(a[0].definition, spec.services["a"]);
        assert_eq!(store.releases(None).unwrap().len(), 3);
    }

    #[test]
    fn service_addresses_are_unique_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .record_service_address("api", "127.64.0.7", 1)
            .unwrap();
        assert!(
            store
                .record_service_address("web", "127.64.0.7", 2)
                .is_err()
        );
        assert!(
            store
                .record_service_address("api", "127.64.0.8", 2)
                .is_err()
        );
        drop(store);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(
            reopened.service_addresses().unwrap(),
            vec![("api".to_string(), "127.64.0.7".to_string())]
        );
    }
}
