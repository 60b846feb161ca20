//! ACME certificates for the edge (`edge.tls: acme`), through `instant-acme`.
//!
//! [`Acme`] is the edge's [`CertificateSource`]: a routed host with an issued certificate gets
//! it; every other host (one still being issued, a `*.localhost` name, an IP) gets a leaf of
//! bow's local CA, so the edge never fails to start or to answer because a CA is slow or down.
//! It also answers the CA's validations: HTTP-01 tokens on the HTTP port (the edge's
//! [`AcmeChallengeHandler`]) and TLS-ALPN-01 challenge certificates on the HTTPS port.
//!
//! [`Acme::run`] issues in the background: one order per host, only for hosts without a
//! certificate that is still good (so nothing is ordered again when the agent restarts: the
//! certificates, their keys and the account live in `<state-dir>/acme/`, 0600), and renews each
//! at two thirds of its lifetime (or `renew_before` ahead of its end), shifted by a stable
//! per-host jitter. A failure keeps the old certificate, is reported, and is retried with
//! backoff (1 min doubling to 6 h).

mod issue;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bow_edge::{AcmeChallengeHandler, CertificateSource, LocalCa};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

pub use store::{HostRecord, LeafInfo, leaf_info, read_records};

/// How the CA validates a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    Http01,
    TlsAlpn01,
}

/// What the agent tells [`Acme`].
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub email: String,
    pub directory: String,
    /// A PEM CA certificate for the directory's own HTTPS (a private CA, Pebble).
    pub directory_ca: Option<PathBuf>,
    pub challenge: Challenge,
    pub renew_before: Option<Duration>,
    /// `<state-dir>/acme`.
    pub dir: PathBuf,
}

/// What [`Acme`] reports: a certificate issued or renewed, or an attempt that failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Issued { host: String, message: String },
    Failed { host: String, message: String },
}

/// One issued certificate in memory.
struct Issued {
    key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// The first retry after a failure; doubled each time, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

pub struct Acme {
    settings: AcmeSettings,
    fallback: Arc<LocalCa>,
    issued: Mutex<HashMap<String, Issued>>,
    /// HTTP-01: token → key authorization, while an order is under way.
    tokens: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: host → challenge certificate, while an order is under way.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    records: Mutex<BTreeMap<String, HostRecord>>,
    report: Box<dyn Fn(Report) + Send + Sync>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.settings.directory)
            .finish()
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a CA can validate `host` at all: not the catch-all, not an IP, not a local name.
pub fn orderable(host: &str) -> bool {
    host != bow_edge::ANY_HOST
        && host.parse::<std::net::IpAddr>().is_err()
        && host.contains('.')
        && !host.ends_with(".localhost")
        && !host.ends_with(".local")
        && !host.ends_with(".internal")
}

impl Acme {
    /// Loads the certificates issued before (`<dir>/certs`) and their records.
    pub fn open(
        settings: AcmeSettings,
        fallback: Arc<LocalCa>,
        report: Box<dyn Fn(Report) + Send + Sync>,
    ) -> Result<Acme, String> {
        store::prepare_dir(&settings.dir)?;
        let records = read_records(&settings.dir);
        let mut issued = HashMap::new();
        for host in records.keys() {
            if let Ok(Some(found)) = store::load_certificate(&settings.dir, host) {
                issued.insert(host.clone(), found);
            }
        }
        Ok(Acme {
            settings,
            fallback,
            issued: Mutex::new(issued),
            tokens: Mutex::default(),
            alpn: Mutex::default(),
            records: Mutex::new(records),
            report,
        })
    }

    /// When the certificate of `host` is due for renewal.
    fn renewal_at(&self, host: &str, issued: &Issued) -> SystemTime {
        let lifetime = issued
            .not_after
            .duration_since(issued.not_before)
            .unwrap_or_default();
        let ahead = self
            .settings
            .renew_before
            .unwrap_or(lifetime / 3)
            .min(lifetime);
        // A stable jitter (up to 1/30 of the lifetime, earlier), so that hosts issued together
        // do not all renew in the same second, and a restart does not move it.
        let spread = lifetime.as_secs() / 30;
        let jitter = if spread == 0 || self.settings.renew_before.is_some() {
            0
        } else {
            stable_hash(host) % spread
        };
        issued.not_after - ahead - Duration::from_secs(jitter)
    }

    /// Issues what is due among `hosts`; when to look again.
    async fn pass(&self, hosts: &[String]) -> SystemTime {
        let now = SystemTime::now();
        let mut next = now + Duration::from_secs(3600);
        for host in hosts.iter().filter(|h| orderable(h)) {
            let due = {
                let issued = locked(&self.issued);
                match issued.get(host) {
                    Some(found) => self.renewal_at(host, found),
                    None => now,
                }
            };
            let retry = locked(&self.records)
                .get(host)
                .and_then(|r| r.retry_at_ms)
                .map(store::from_ms);
            let at = match retry {
                Some(retry) if retry > due => retry,
                _ => due,
            };
            if at > now {
                next = next.min(at);
                continue;
            }
            let renewing = locked(&self.issued).contains_key(host);
            let started = std::time::Instant::now();
            match issue::issue(self, host).await {
                Ok(found) => {
                    let renewal = self.renewal_at(host, &found);
                    let message = format!(
                        "{} {host} in {} ms: valid until {}, renewal from {}",
                        if renewing { "renewed" } else { "issued" },
                        started.elapsed().as_millis(),
                        store::rfc3339(found.not_after),
                        store::rfc3339(renewal)
                    );
                    self.record(host, |r| {
                        r.not_after_ms = Some(store::ms(found.not_after));
                        r.next_renewal_ms = Some(store::ms(renewal));
                        r.last_result = format!("ok: {message}");
                        r.failures = 0;
                        r.retry_at_ms = None;
                    });
                    next = next.min(renewal);
                    locked(&self.issued).insert(host.clone(), found);
                    (self.report)(Report::Issued {
                        host: host.clone(),
                        message,
                    });
                }
                Err(reason) => {
                    let failures = locked(&self.records).get(host).map_or(0, |r| r.failures) + 1;
                    let backoff = FIRST_BACKOFF
                        .saturating_mul(1 << (failures - 1).min(12))
                        .min(MAX_BACKOFF);
                    let retry = SystemTime::now() + backoff;
                    let keeps = if renewing {
                        "the current certificate keeps serving"
                    } else {
                        "the local CA's certificate serves meanwhile"
                    };
                    let message = format!(
                        "{host}: {reason}; {keeps}; next attempt in {} s",
                        backoff.as_secs()
                    );
                    self.record(host, |r| {
                        r.last_result = format!("failed: {reason}");
                        r.failures = failures;
                        r.retry_at_ms = Some(store::ms(retry));
                    });
                    next = next.min(retry);
                    (self.report)(Report::Failed {
                        host: host.clone(),
                        message,
                    });
                }
            }
        }
        next
    }

    fn record(&self, host: &str, change: impl FnOnce(&mut HostRecord)) {
        let mut records = locked(&self.records);
        let record = records.entry(host.to_string()).or_default();
        change(record);
        let _ = store::write_records(&self.settings.dir, &records);
    }

    /// Issues and renews for the routed hosts `hosts` sends, until it closes.
    pub async fn run(self: Arc<Self>, mut hosts: watch::Receiver<Vec<String>>) {
        loop {
            let wanted = hosts.borrow_and_update().clone();
            let next = self.pass(&wanted).await;
            let wait = next
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .max(Duration::from_millis(200));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = hosts.changed() => if changed.is_err() { return },
            }
        }
    }
}

fn stable_hash(text: &str) -> u64 {
    // FNV-1a: stable across runs and versions (std's hasher is not).
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl CertificateSource for Acme {
    fn certificate_for(&self, host: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(host) = host
            && let Some(found) = locked(&self.issued).get(host)
            && found.not_after > SystemTime::now()
        {
            return Some(found.key.clone());
        }
        self.fallback.certificate_for(host)
    }

    fn challenge_certificate(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        locked(&self.alpn).get(host).cloned()
    }
}

impl AcmeChallengeHandler for Acme {
    fn key_authorization(&self, _host: &str, token: &str) -> Option<String> {
        locked(&self.tokens).get(token).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_a_ca_can_validate_are_ordered() {
        assert!(orderable("shop.example.com"));
        assert!(!orderable("*"));
        assert!(!orderable("127.0.0.1"));
        assert!(!orderable("shop.bow.localhost"));
        assert!(!orderable("localhost"));
        assert!(!orderable("db.internal"));
    }

    #[test]
    fn the_jitter_is_stable_and_spread() {
        assert_eq!(stable_hash("a.example"), stable_hash("a.example"));
        assert_ne!(stable_hash("a.example"), stable_hash("b.example"));
    }
}
