//! Which backups to delete: a pure decision over what `list` found.

use crate::catalog::Entry;

/// The ids to delete so that the `keep` newest complete backups remain, and never the newest
/// verified one. Incomplete backups (no manifest: interrupted or failed runs) older than the
/// newest complete one are deleted too; newer ones may be a run in progress and stay.
pub fn to_delete(entries: &[Entry], keep: usize) -> Vec<String> {
    let mut complete: Vec<&Entry> = entries.iter().filter(|e| e.complete()).collect();
    complete.sort_by(|a, b| b.id.cmp(&a.id));
    let newest_verified = complete.iter().find(|e| e.verified()).map(|e| e.id.clone());
    let newest_complete = complete.first().map(|e| e.id.clone());
    let mut doomed: Vec<String> = complete
        .iter()
        .skip(keep)
        .filter(|e| Some(&e.id) != newest_verified.as_ref())
        .map(|e| e.id.clone())
        .collect();
    if let Some(newest) = newest_complete {
        doomed.extend(
            entries
                .iter()
                .filter(|e| !e.complete() && e.problem.is_none() && e.id < newest)
                .map(|e| e.id.clone()),
        );
    }
    doomed.sort();
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Manifest, Verification};

    fn entry(id: &str, complete: bool, verified: bool) -> Entry {
        Entry {
            id: id.to_string(),
            manifest: complete.then(|| Manifest::new(id, "p", "e", "db", "postgres-logical")),
            verification: verified.then(|| Verification {
                at: String::new(),
                ok: true,
                message: String::new(),
                duration_ms: 0,
            }),
            problem: None,
        }
    }

    #[test]
    fn keeps_the_newest_and_the_last_verified() {
        let entries = vec![
            entry("1", true, true),
            entry("2", false, false),
            entry("3", true, false),
            entry("4", true, false),
            entry("5", false, false),
        ];
        // keep 2: 3 and 4 stay; 1 is the newest verified and stays; 2 is an old partial run;
        // 5 may be running.
        assert_eq!(to_delete(&entries, 2), vec!["2"]);
        assert_eq!(to_delete(&entries, 1), vec!["2", "3"]);
        let all_verified: Vec<Entry> = (1..=4).map(|i| entry(&i.to_string(), true, true)).collect();
        assert_eq!(to_delete(&all_verified, 2), vec!["1", "2"]);
        assert!(to_delete(&[], 3).is_empty());
    }
}
