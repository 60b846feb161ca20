//! A certificate chain and key from PEM files, reloaded when either file changes.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{CertificateSource, crypto_provider};
use crate::error::EdgeError;

/// The files are looked at no more often than this, from the handshake path.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies one version of a file.
type Stamp = Option<(SystemTime, u64, u64)>;

/// Serves one certificate for every host, from files; a change to either file is picked
/// up within a second. A pair that fails to load (half written, key not matching) is
/// ignored and the previous one kept until the files are right again.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    check: Mutex<(Stamp, Stamp, Instant)>,
}

impl CertFiles {
    /// Loads the pair; fails when it cannot be used.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, EdgeError> {
        let stamps = (stamp(cert), stamp(key));
        let certified = load_pair(cert, key)?;
        Ok(CertFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(certified)),
            check: Mutex::new((stamps.0, stamps.1, Instant::now())),
        })
    }

    /// Loads the files again if they changed since the last load. `Ok(true)`: a new pair
    /// is in use; an error leaves the previous pair in use.
    pub fn reload_if_changed(&self) -> Result<bool, EdgeError> {
        let mut check = self
            .check
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        check.2 = Instant::now();
        let stamps = (stamp(&self.cert), stamp(&self.key));
        if stamps.0 == check.0 && stamps.1 == check.1 {
            return Ok(false);
        }
        let certified = load_pair(&self.cert, &self.key)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Arc::new(certified);
        check.0 = stamps.0;
        check.1 = stamps.1;
        Ok(true)
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }
}

impl CertificateSource for CertFiles {
    fn certificate_for(&self, _host: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let due = self
            .check
            .try_lock()
            .map(|check| check.2.elapsed() >= CHECK_INTERVAL)
            .unwrap_or(false);
        if due {
            // A failed reload keeps the previous pair; the next check tries again.
            let _ = self.reload_if_changed();
        }
        Some(self.current())
    }
}

fn stamp(path: &Path) -> Stamp {
    let metadata = fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, EdgeError> {
    let read = |path: &Path| {
        fs::read(path).map_err(|source| EdgeError::File {
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| EdgeError::NoCertificate {
            path: cert.to_path_buf(),
        })?;
    if chain.is_empty() {
        return Err(EdgeError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key_pem = read(key)?;
    let bad_key = |reason: String| EdgeError::BadPrivateKey {
        path: key.to_path_buf(),
        reason,
    };
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|error| bad_key(format!("no PEM private key found ({error})")))?;
    CertifiedKey::from_der(chain, key_der, &crypto_provider()).map_err(|error| {
        bad_key(format!(
            "it does not fit the certificate or is unsupported ({error})"
        ))
    })
}
