//! The `bow_backup_*` families of `/metrics`, from the backup records of the state dir
//! (`backup_state`): when each service's last backup and last passing restore drill were, how
//! big the last backup is, and how many runs and drills failed.

use prometheus_client::registry::Unit;

use crate::backup_state::BackupRecord;
use crate::metrics::{Family, labels};

pub(crate) fn encode(
    records: &[(String, BackupRecord)],
    family: &mut Family<'_, '_>,
) -> std::fmt::Result {
    let seconds = |ms: Option<i64>| ms.map(|ms| ms as f64 / 1000.0);
    family.gauge(
        "bow_backup_last_success_timestamp",
        "When the service's last complete backup finished, in seconds since the epoch.",
        Some(Unit::Seconds),
        records.iter().filter_map(|(service, r)| {
            seconds(r.last_success_ms).map(|at| (labels([("service", service)]), at))
        }),
    )?;
    family.gauge(
        "bow_backup_last_verified_timestamp",
        "When a restore drill of the service's backups last passed, in seconds since the epoch.",
        Some(Unit::Seconds),
        records.iter().filter_map(|(service, r)| {
            seconds(r.last_verified_ms).map(|at| (labels([("service", service)]), at))
        }),
    )?;
    family.gauge(
        "bow_backup_last_size",
        "Bytes stored (compressed and encrypted) by the service's last complete backup.",
        Some(Unit::Bytes),
        records
            .iter()
            .map(|(service, r)| (labels([("service", service)]), r.last_size_bytes as i64)),
    )?;
    family.counter(
        "bow_backup_failures",
        "Backup runs of the service that failed (nothing stored, an empty dump, the store unreachable).",
        None,
        records
            .iter()
            .map(|(service, r)| (labels([("service", service)]), r.failures_total)),
    )?;
    family.counter(
        "bow_backup_drill_failures",
        "Restore drills of the service's backups that failed.",
        None,
        records
            .iter()
            .map(|(service, r)| (labels([("service", service)]), r.drill_failures_total)),
    )
}
