//! Where backups go: a directory or an S3-compatible bucket, both as one `ObjectStore`.
//!
//! S3 requests are signed by `object_store` (SigV4); TLS is rustls with ring. Retries are
//! bounded (3 tries, 30 s in all) so that an outage fails a run in seconds, not minutes.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use crate::error::{BackupError, Result};

/// Credentials of an S3 store (from bow secrets; never printed).
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("S3Credentials(…)")
    }
}

/// A parsed `backup.to`.
#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    /// An absolute directory.
    Directory(std::path::PathBuf),
    /// `s3://bucket/prefix`.
    S3 { bucket: String, prefix: String },
}

impl Destination {
    /// Parses `s3://bucket/prefix`, `file:///dir` or an absolute directory.
    pub fn parse(to: &str) -> Result<Destination> {
        if let Some(rest) = to.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(BackupError::Invalid(format!("{to}: no bucket")));
            }
            return Ok(Destination::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        let dir = to.strip_prefix("file://").unwrap_or(to);
        if !dir.starts_with('/') {
            return Err(BackupError::Invalid(format!(
                "{to}: a backup directory must be absolute"
            )));
        }
        Ok(Destination::Directory(dir.into()))
    }

    pub fn is_s3(&self) -> bool {
        matches!(self, Destination::S3 { .. })
    }

    /// The store and the prefix every key of this destination starts with.
    pub fn open(
        &self,
        endpoint: Option<&str>,
        region: &str,
        credentials: Option<&S3Credentials>,
    ) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
        match self {
            Destination::Directory(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| BackupError::io(format!("cannot create {}", dir.display()), e))?;
                let store = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| BackupError::store(format!("{}", dir.display()), e))?
                    .with_automatic_cleanup(true);
                Ok((Arc::new(store), ObjectPath::default()))
            }
            Destination::S3 { bucket, prefix } => {
                install_crypto_provider();
                let credentials = credentials.ok_or_else(|| {
                    BackupError::Invalid(format!("s3://{bucket}: no credentials"))
                })?;
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_access_key_id(&credentials.access_key_id)
                    .with_secret_access_key(&credentials.secret_access_key)
                    .with_retry(RetryConfig {
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(30),
                        ..RetryConfig::default()
                    });
                let mut options = ClientOptions::new().with_timeout(Duration::from_secs(60));
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_virtual_hosted_style_request(false);
                    if endpoint.starts_with("http://") {
                        options = options.with_allow_http(true);
                    }
                }
                let store = builder
                    .with_client_options(options)
                    .build()
                    .map_err(|e| BackupError::store(format!("s3://{bucket}"), e))?;
                Ok((Arc::new(store), ObjectPath::from(prefix.as_str())))
            }
        }
    }
}

/// rustls needs a process-wide provider when reqwest brings none: ring, as the edge uses.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        assert_eq!(
            Destination::parse("s3://b/x/y/").unwrap(),
            Destination::S3 {
                bucket: "b".into(),
                prefix: "x/y".into()
            }
        );
        assert_eq!(
            Destination::parse("s3://b").unwrap(),
            Destination::S3 {
                bucket: "b".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            Destination::parse("file:///srv/b").unwrap(),
            Destination::Directory("/srv/b".into())
        );
        assert!(Destination::parse("relative/dir").is_err());
        assert!(Destination::parse("s3:///x").is_err());
    }
}
