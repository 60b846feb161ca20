//! What the last backups and restore drills of each service did, as `bow backup run|verify`
//! and the scheduler's runs record it in `<state-dir>/backups/<service>.json`: the metrics
//! (`bow_backup_*`), the alerts (`BackupFailed`, `BackupDrillFailed`) and `bow status` read
//! it. A failure is recorded beside the last success, never over it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One service's backup record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// The last backup that completed (manifest written): unix ms, id, stored bytes.
    #[serde(default)]
    pub last_success_ms: Option<i64>,
    #[serde(default)]
    pub last_success_id: Option<String>,
    #[serde(default)]
    pub last_size_bytes: u64,
    /// The last backup run that failed (nothing stored, or an empty dump), and why.
    #[serde(default)]
    pub last_failure_ms: Option<i64>,
    #[serde(default)]
    pub last_failure: Option<String>,
    #[serde(default)]
    pub failures_total: u64,
    /// The last restore drill that passed, and the last one that failed (why).
    #[serde(default)]
    pub last_verified_ms: Option<i64>,
    #[serde(default)]
    pub last_verified_id: Option<String>,
    #[serde(default)]
    pub last_drill_failure_ms: Option<i64>,
    #[serde(default)]
    pub last_drill_failure: Option<String>,
    #[serde(default)]
    pub drill_failures_total: u64,
}

impl BackupRecord {
    /// The last run failed after the last success (or nothing ever succeeded).
    pub fn failing(&self) -> bool {
        self.last_failure_ms
            .is_some_and(|f| self.last_success_ms.is_none_or(|s| f > s))
    }

    /// The last drill failed after the last one that passed.
    pub fn drill_failing(&self) -> bool {
        self.last_drill_failure_ms
            .is_some_and(|f| self.last_verified_ms.is_none_or(|s| f > s))
    }
}

/// The backup alerts that hold: (`BackupFailed` or `BackupDrillFailed`, service, summary).
pub(crate) fn failing(state_dir: &Path) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    for (service, record) in read_all(state_dir) {
        if record.failing() {
            let why = record.last_failure.as_deref().unwrap_or("?");
            let summary = format!("the last backup of {service} failed: {why}");
            out.push(("BackupFailed", service.clone(), summary));
        }
        if record.drill_failing() {
            let why = record.last_drill_failure.as_deref().unwrap_or("?");
            let summary = format!("the last restore drill of {service}'s backups failed: {why}");
            out.push(("BackupDrillFailed", service.clone(), summary));
        }
    }
    out
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("backups")
}

/// Every service's record.
pub fn read_all(state_dir: &Path) -> Vec<(String, BackupRecord)> {
    let mut records: Vec<(String, BackupRecord)> = std::fs::read_dir(dir(state_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry
                .file_name()
                .to_str()?
                .strip_suffix(".json")?
                .to_string();
            let text = std::fs::read(entry.path()).ok()?;
            Some((name, serde_json::from_slice(&text).ok()?))
        })
        .collect();
    records.sort_by(|a, b| a.0.cmp(&b.0));
    records
}

pub fn read(state_dir: &Path, service: &str) -> BackupRecord {
    std::fs::read(dir(state_dir).join(format!("{service}.json")))
        .ok()
        .and_then(|text| serde_json::from_slice(&text).ok())
        .unwrap_or_default()
}

/// Changes a service's record with `change` and writes it back (renamed into place).
pub fn update(
    state_dir: &Path,
    service: &str,
    change: impl FnOnce(&mut BackupRecord),
) -> std::io::Result<()> {
    let mut record = read(state_dir, service);
    change(&mut record);
    let dir = dir(state_dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{service}.json"));
    let temporary = dir.join(format!(".{service}.json.new"));
    std::fs::write(&temporary, serde_json::to_vec_pretty(&record)?)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_never_replaces_the_last_success() {
        let dir = tempfile::tempdir().unwrap();
        update(dir.path(), "db", |r| {
            r.last_success_ms = Some(1000);
            r.last_success_id = Some("a".into());
        })
        .unwrap();
        update(dir.path(), "db", |r| {
            r.last_failure_ms = Some(2000);
            r.failures_total += 1;
        })
        .unwrap();
        let record = read(dir.path(), "db");
        assert_eq!(record.last_success_id.as_deref(), Some("a"));
        assert!(record.failing());
        update(dir.path(), "db", |r| r.last_success_ms = Some(3000)).unwrap();
        assert!(!read(dir.path(), "db").failing());
        assert_eq!(read_all(dir.path()).len(), 1);
    }
}
