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

const MIGRATIONS: &[&str] = &["CREATE TABLE revisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        applied_at_ms INTEGER NOT NULL,
        environment TEXT NOT NULL,
        spec_json TEXT NOT NULL
    );"];

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
}
