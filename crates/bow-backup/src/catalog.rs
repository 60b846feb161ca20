//! The backups of one service in a store: `<prefix>/<project>-<env>/<service>/<id>/` holds
//! `data.zst.age` (the data), `manifest.age` (written last: a backup without it is not
//! complete) and `verify.age` (the last restore drill's result), and for volumes
//! `files.zst.age` (the listing of the tar). All are encrypted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use crate::error::{BackupError, Result};
use crate::stream;

pub const DATA: &str = "data.zst.age";
pub const MANIFEST: &str = "manifest.age";
pub const VERIFICATION: &str = "verify.age";
const FORMAT: u32 = 1;

/// One stored object of a backup, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub name: String,
    /// Bytes stored (ciphertext).
    pub size: u64,
    /// SHA-256 of the bytes stored, hex.
    pub sha256: String,
    /// Bytes before compression and encryption.
    pub plain_size: u64,
}

/// What a backup is: written once, after its data, encrypted like it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub project: String,
    pub environment: String,
    pub service: String,
    /// `postgres-logical` (pg_dump's custom format).
    pub kind: String,
    pub started: String,
    pub finished: String,
    pub duration_ms: u64,
    pub objects: Vec<ObjectRecord>,
    /// PostgreSQL's major version, for a postgres backup.
    #[serde(default)]
    pub postgres_version: Option<u32>,
    #[serde(default)]
    pub database: Option<String>,
    /// Rows per table (`schema.table`), counted in the dump's own snapshot.
    #[serde(default)]
    pub row_counts: BTreeMap<String, u64>,
    /// A base backup's WAL start and end (`0/2000028`), timeline, and first WAL segment: where
    /// a point-in-time recovery from it starts replaying.
    #[serde(default)]
    pub start_lsn: Option<String>,
    #[serde(default)]
    pub end_lsn: Option<String>,
    #[serde(default)]
    pub timeline: Option<u32>,
    #[serde(default)]
    pub start_wal: Option<String>,
    /// The cluster's system identifier: its archived WAL is under it.
    #[serde(default)]
    pub system_id: Option<u64>,
    /// A volume backup's volumes: files and bytes of each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeRecord>,
    pub bow_version: String,
}

/// One volume of a volume backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub files: u64,
    /// Bytes of its files.
    pub bytes: u64,
}

impl Manifest {
    pub fn new(id: &str, project: &str, environment: &str, service: &str, kind: &str) -> Manifest {
        Manifest {
            format: FORMAT,
            id: id.to_string(),
            project: project.to_string(),
            environment: environment.to_string(),
            service: service.to_string(),
            kind: kind.to_string(),
            started: String::new(),
            finished: String::new(),
            duration_ms: 0,
            objects: Vec::new(),
            postgres_version: None,
            database: None,
            row_counts: BTreeMap::new(),
            start_lsn: None,
            end_lsn: None,
            timeline: None,
            start_wal: None,
            system_id: None,
            volumes: Vec::new(),
            bow_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    pub fn object(&self, name: &str) -> Result<&ObjectRecord> {
        self.objects.iter().find(|o| o.name == name).ok_or_else(|| {
            BackupError::Integrity(format!("backup {}: no {name} in its manifest", self.id))
        })
    }

    /// Bytes stored.
    pub fn size(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }
}

/// The result of a restore drill (`bow backup verify`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    pub at: String,
    pub ok: bool,
    /// What was checked, or why it failed.
    pub message: String,
    pub duration_ms: u64,
}

/// One backup as `list` sees it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    /// `None`: no manifest (an interrupted or failed run), or unreadable (`problem`).
    pub manifest: Option<Manifest>,
    pub verification: Option<Verification>,
    pub problem: Option<String>,
}

impl Entry {
    pub fn complete(&self) -> bool {
        self.manifest.is_some()
    }

    pub fn verified(&self) -> bool {
        self.verification.as_ref().is_some_and(|v| v.ok)
    }
}

/// The backups of one service in one store.
#[derive(Clone)]
pub struct Catalog {
    pub store: Arc<dyn ObjectStore>,
    /// `<prefix>/<project>-<env>/<service>`.
    pub root: ObjectPath,
}

impl Catalog {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &ObjectPath,
        project: &str,
        environment: &str,
        service: &str,
    ) -> Catalog {
        let root = prefix
            .clone()
            .join(format!("{project}-{environment}").as_str())
            .join(service);
        Catalog { store, root }
    }

    /// Where the archived WAL segments of the service's cluster `system` (its system
    /// identifier) are: `<prefix>/<project>-<env>/<service>.wal/<system>`, beside the backups
    /// (a listing of backups never walks the WAL). Another cluster of the same service (a
    /// fresh host's, before its restore) archives beside, never over, this one's.
    pub fn wal_root(&self, system: u64) -> ObjectPath {
        let mut parts: Vec<String> = self.root.parts().map(|p| p.as_ref().to_string()).collect();
        let service = parts.pop().unwrap_or_default();
        let mut root = ObjectPath::default();
        for part in parts {
            root = root.join(part.as_str());
        }
        root.join(format!("{service}.wal").as_str())
            .join(system.to_string().as_str())
    }

    pub fn path(&self, id: &str, name: &str) -> ObjectPath {
        self.root.clone().join(id).join(name)
    }

    /// Every backup id under the root with the names of its objects, oldest first.
    async fn ids(&self) -> Result<BTreeMap<String, BTreeSet<String>>> {
        let objects: Vec<_> = self
            .store
            .list(Some(&self.root))
            .try_collect()
            .await
            .map_err(|e| BackupError::store(format!("cannot list {}", self.root), e))?;
        let depth = self.root.parts().count();
        let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for object in objects {
            let parts: Vec<String> = object
                .location
                .parts()
                .map(|p| p.as_ref().to_string())
                .collect();
            if parts.len() == depth + 2 {
                ids.entry(parts[depth].clone())
                    .or_default()
                    .insert(parts[depth + 1].clone());
            }
        }
        Ok(ids)
    }

    /// Every backup, oldest first, with its manifest and last verification when readable.
    pub async fn list(&self, identity: &age::x25519::Identity) -> Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for (id, names) in self.ids().await? {
            let mut entry = Entry {
                id: id.clone(),
                manifest: None,
                verification: None,
                problem: None,
            };
            if names.contains(MANIFEST) {
                match self.read::<Manifest>(&id, MANIFEST, identity).await {
                    Ok(manifest) => entry.manifest = Some(manifest),
                    Err(error) => entry.problem = Some(error.to_string()),
                }
            }
            if names.contains(VERIFICATION) {
                entry.verification = self
                    .read::<Verification>(&id, VERIFICATION, identity)
                    .await
                    .ok();
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        id: &str,
        name: &str,
        identity: &age::x25519::Identity,
    ) -> Result<T> {
        let path = self.path(id, name);
        let bytes = stream::get_sealed(self.store.as_ref(), &path, identity).await?;
        serde_json::from_slice(&bytes).map_err(|e| BackupError::Integrity(format!("{path}: {e}")))
    }

    pub async fn write<T: Serialize>(
        &self,
        id: &str,
        name: &str,
        value: &T,
        recipients: &[age::x25519::Recipient],
    ) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(value).map_err(|e| BackupError::Invalid(e.to_string()))?;
        stream::put_sealed(self.store.as_ref(), &self.path(id, name), recipients, &json).await
    }

    /// Deletes every object of backup `id`, the manifest first (so that a half-deleted
    /// backup is never listed as complete).
    pub async fn delete(&self, id: &str) -> Result<()> {
        let names = self.ids().await?.remove(id).unwrap_or_default();
        let ordered = names
            .iter()
            .filter(|n| n.as_str() == MANIFEST)
            .chain(names.iter().filter(|n| n.as_str() != MANIFEST));
        for name in ordered {
            let path = self.path(id, name);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(BackupError::store(format!("cannot delete {path}"), e)),
            }
        }
        Ok(())
    }
}
