//! What ACME keeps in `<state-dir>/acme/` (0700; files 0600): the account's credentials, each
//! host's certificate chain and key, and `hosts.json` — per host its issuer, expiry, next
//! renewal and last result, which `bow certs` reads.

use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::{Deserialize, Serialize};

use crate::Issued;

const RECORDS: &str = "hosts.json";
const ACCOUNT: &str = "account.json";

/// One host's state, as `bow certs` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    #[serde(default)]
    pub issuer: String,
    #[serde(default)]
    pub not_after_ms: Option<i64>,
    #[serde(default)]
    pub next_renewal_ms: Option<i64>,
    /// `ok: …` or `failed: …`.
    #[serde(default)]
    pub last_result: String,
    /// Failures in a row; the next attempt waits longer each time.
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub retry_at_ms: Option<i64>,
}

/// The account's credentials, with the directory they belong to.
#[derive(Serialize, Deserialize)]
pub(crate) struct AccountFile {
    pub directory: String,
    pub email: String,
    pub credentials: instant_acme::AccountCredentials,
}

pub(crate) fn prepare_dir(dir: &Path) -> Result<(), String> {
    for dir in [dir.to_path_buf(), dir.join("certs")] {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` (0600) through a temporary file and a rename.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let temporary = path.with_extension("new");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(|e| format!("{}: {e}", temporary.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, path).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn read_records(dir: &Path) -> BTreeMap<String, HostRecord> {
    std::fs::read_to_string(dir.join(RECORDS))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

pub(crate) fn write_records(
    dir: &Path,
    records: &BTreeMap<String, HostRecord>,
) -> Result<(), String> {
    let text = serde_json::to_string_pretty(records).map_err(|e| e.to_string())?;
    write_private(&dir.join(RECORDS), text.as_bytes())
}

pub(crate) fn read_account(dir: &Path) -> Option<AccountFile> {
    let text = std::fs::read_to_string(dir.join(ACCOUNT)).ok()?;
    serde_json::from_str(&text).ok()
}

pub(crate) fn write_account(dir: &Path, account: &AccountFile) -> Result<(), String> {
    let text = serde_json::to_string_pretty(account).map_err(|e| e.to_string())?;
    write_private(&dir.join(ACCOUNT), text.as_bytes())
}

fn paths(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    let base = dir.join("certs");
    (
        base.join(format!("{host}.crt")),
        base.join(format!("{host}.key")),
    )
}

pub(crate) fn save_certificate(
    dir: &Path,
    host: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<(), String> {
    let (chain, key) = paths(dir, host);
    write_private(&key, key_pem.as_bytes())?;
    write_private(&chain, chain_pem.as_bytes())
}

/// The certificate issued for `host` before, if its files are there and readable.
pub(crate) fn load_certificate(dir: &Path, host: &str) -> Result<Option<Issued>, String> {
    let (chain, key) = paths(dir, host);
    let (Ok(chain_pem), Ok(key_pem)) = (std::fs::read(&chain), std::fs::read(&key)) else {
        return Ok(None);
    };
    parse(&chain_pem, &key_pem).map(Some)
}

/// A chain and key in PEM as the edge serves them, with the leaf's validity.
pub(crate) fn parse(chain_pem: &[u8], key_pem: &[u8]) -> Result<Issued, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate chain: {e}"))?;
    let leaf = chain.first().ok_or("an empty certificate chain")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("certificate: {e}"))?;
    let validity = parsed.validity();
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let (not_before, not_after) = (
        at(validity.not_before.timestamp()),
        at(validity.not_after.timestamp()),
    );
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key: {e}"))?;
    let provider = bow_edge::crypto_provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| e.to_string())?;
    Ok(Issued {
        key: std::sync::Arc::new(key),
        not_before,
        not_after,
    })
}

/// What a certificate file's leaf says: its issuer, the names it is for (DNS names of its
/// subject alternative names, else its common name) and when it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct LeafInfo {
    pub issuer: String,
    pub names: Vec<String>,
    pub not_after_ms: i64,
}

/// The leaf of a PEM chain (the first certificate), if it parses.
pub fn leaf_info(chain_pem: &[u8]) -> Option<LeafInfo> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem).next()?.ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let mut names: Vec<String> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty()
        && let Some(cn) = parsed.subject().iter_common_name().next()
        && let Ok(cn) = cn.as_str()
    {
        names.push(cn.to_string());
    }
    Some(LeafInfo {
        issuer: parsed.issuer().to_string(),
        names,
        not_after_ms: parsed.validity().not_after.timestamp().saturating_mul(1000),
    })
}

/// The issuer of a chain's leaf, for `bow certs`.
pub(crate) fn issuer(chain_pem: &[u8]) -> String {
    CertificateDer::pem_slice_iter(chain_pem)
        .next()
        .and_then(Result::ok)
        .and_then(|leaf| {
            x509_parser::parse_x509_certificate(leaf.as_ref())
                .ok()
                .map(|(_, c)| c.issuer().to_string())
        })
        .unwrap_or_default()
}

pub(crate) fn ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

pub(crate) fn rfc3339(time: SystemTime) -> String {
    let at = time::OffsetDateTime::from(time);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
