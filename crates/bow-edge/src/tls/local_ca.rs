//! bow's local certificate authority: made once in a directory (key mode 0600), then one
//! leaf certificate per routed host, issued on first use and kept in memory.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{CertificateSource, crypto_provider};
use crate::error::EdgeError;

/// Leaf certificates are valid this long and issued again once half of it has passed.
const LEAF_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Leaves kept in memory at most; routed hosts are few, this only bounds a bad table.
const MAX_LEAVES: usize = 4096;
/// The certificate for clients that send no routed SNI name.
const DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A local certificate authority and its cache of issued leaves.
#[derive(Debug)]
pub struct LocalCa {
    dir: PathBuf,
    certificate_pem: String,
    issuer: Issuer<'static, KeyPair>,
    provider: Arc<CryptoProvider>,
    leaves: RwLock<HashMap<String, (Arc<CertifiedKey>, Instant)>>,
}

impl LocalCa {
    /// The CA certificate's path in a CA directory: what users trust (`curl --cacert`).
    pub fn certificate_path(ca_dir: &Path) -> PathBuf {
        ca_dir.join("ca.pem")
    }

    /// The CA key's path in a CA directory (mode 0600).
    pub fn key_path(ca_dir: &Path) -> PathBuf {
        ca_dir.join("ca-key.pem")
    }

    /// Loads the CA from `ca_dir`, making it first when the directory holds none.
    pub fn open_or_create(ca_dir: &Path) -> Result<Self, EdgeError> {
        let ca_error = |reason: String| EdgeError::CertificateAuthority {
            path: ca_dir.to_path_buf(),
            reason,
        };
        if !ca_dir.exists() {
            fs::create_dir_all(ca_dir).map_err(|source| file_error(ca_dir, source))?;
            fs::set_permissions(ca_dir, fs::Permissions::from_mode(0o700))
                .map_err(|source| file_error(ca_dir, source))?;
        }
        let cert_path = Self::certificate_path(ca_dir);
        let key_path = Self::key_path(ca_dir);
        let key = if key_path.exists() {
            let mode = fs::metadata(&key_path)
                .map_err(|source| file_error(&key_path, source))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600))
                    .map_err(|source| file_error(&key_path, source))?;
            }
            let pem =
                fs::read_to_string(&key_path).map_err(|source| file_error(&key_path, source))?;
            KeyPair::from_pem(&pem).map_err(|error| ca_error(format!("unreadable key: {error}")))?
        } else if cert_path.exists() {
            return Err(ca_error(format!(
                "{} exists without its key {}",
                cert_path.display(),
                key_path.display()
            )));
        } else {
            let key = KeyPair::generate().map_err(|error| ca_error(error.to_string()))?;
            write_private(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            key
        };
        let (certificate_pem, issuer) = if cert_path.exists() {
            let pem =
                fs::read_to_string(&cert_path).map_err(|source| file_error(&cert_path, source))?;
            let issuer = Issuer::from_ca_cert_pem(&pem, key)
                .map_err(|error| ca_error(format!("unreadable certificate: {error}")))?;
            (pem, issuer)
        } else {
            let params = ca_params();
            let certificate = params
                .self_signed(&key)
                .map_err(|error| ca_error(error.to_string()))?;
            let pem = certificate.pem();
            write_private(&cert_path, pem.as_bytes(), 0o644)?;
            (pem, Issuer::new(params, key))
        };
        Ok(LocalCa {
            dir: ca_dir.to_path_buf(),
            certificate_pem,
            issuer,
            provider: crypto_provider(),
            leaves: RwLock::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The directory the CA lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The leaf for `host` (`None`: localhost and the loopback addresses), from the cache
    /// or issued now.
    pub fn leaf(&self, host: Option<&str>) -> Result<Arc<CertifiedKey>, EdgeError> {
        let cache_key = host.unwrap_or("").to_string();
        {
            let leaves = self
                .leaves
                .read()
                .unwrap_or_else(|poison| poison.into_inner());
            if let Some((leaf, issued)) = leaves.get(&cache_key)
                && issued.elapsed() < LEAF_VALIDITY / 2
            {
                return Ok(leaf.clone());
            }
        }
        let names: Vec<String> = match host {
            Some(host) => vec![host.to_string()],
            None => DEFAULT_NAMES.iter().map(|name| name.to_string()).collect(),
        };
        let leaf = Arc::new(self.issue(&names)?);
        let mut leaves = self
            .leaves
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if leaves.len() >= MAX_LEAVES {
            leaves.clear();
        }
        leaves.insert(cache_key, (leaf.clone(), Instant::now()));
        Ok(leaf)
    }

    fn issue(&self, names: &[String]) -> Result<CertifiedKey, EdgeError> {
        let issue_error = |reason: String| EdgeError::Issue {
            host: names.join(","),
            reason,
        };
        let mut params = CertificateParams::new(names.to_vec())
            .map_err(|error| issue_error(error.to_string()))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, names[0].as_str());
        params.distinguished_name = name;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + LEAF_VALIDITY;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(|error| issue_error(error.to_string()))?;
        let certificate = params
            .signed_by(&key, &self.issuer)
            .map_err(|error| issue_error(error.to_string()))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let chain: Vec<CertificateDer<'static>> = vec![certificate.der().clone()];
        CertifiedKey::from_der(chain, key_der, &self.provider)
            .map_err(|error| issue_error(error.to_string()))
    }
}

impl CertificateSource for LocalCa {
    fn certificate_for(&self, host: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.leaf(host).ok()
    }
}

fn ca_params() -> CertificateParams {
    let now = time::OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "bow");
    name.push(
        DnType::CommonName,
        format!("bow local CA {}", now.unix_timestamp()),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    params
}

/// Writes a file atomically (temporary file, then rename) with the given mode from the start.
fn write_private(path: &Path, contents: &[u8], mode: u32) -> Result<(), EdgeError> {
    let temporary = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(|source| file_error(&temporary, source))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| file_error(&temporary, source))?;
    fs::set_permissions(&temporary, fs::Permissions::from_mode(mode))
        .map_err(|source| file_error(&temporary, source))?;
    fs::rename(&temporary, path).map_err(|source| file_error(path, source))
}

fn file_error(path: &Path, source: std::io::Error) -> EdgeError {
    EdgeError::File {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let first = LocalCa::open_or_create(&ca_dir).unwrap();
        let mode = fs::metadata(LocalCa::key_path(&ca_dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = LocalCa::open_or_create(&ca_dir).unwrap();
        assert_eq!(first.certificate_pem(), second.certificate_pem());
        let leaf = second.leaf(Some("app.localhost")).unwrap();
        assert!(Arc::ptr_eq(
            &leaf,
            &second.leaf(Some("app.localhost")).unwrap()
        ));
        assert!(second.leaf(None).is_ok());
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::open_or_create(dir.path()).unwrap();
        fs::remove_file(LocalCa::key_path(dir.path())).unwrap();
        let error = LocalCa::open_or_create(dir.path()).unwrap_err();
        assert!(error.to_string().contains("without its key"), "{error}");
    }
}
