//! Where the private key (age identity) comes from, and making a new one.
//!
//! In order: `BOW_AGE_KEY` (the identity itself), `BOW_AGE_KEY_FILE` (a path), or the default
//! `~/.config/bow/keys/<project>-<env>.key`. A key file must not be readable by group or
//! others: bow refuses it and says how to fix it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::error::{Result, SecretsError};

/// Where the identity is read from.
#[derive(Clone)]
pub enum KeySource {
    /// The identity itself, from `BOW_AGE_KEY`.
    Inline(Zeroizing<String>),
    /// A key file: from `BOW_AGE_KEY_FILE` or the default path.
    File { path: PathBuf, environment: String },
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// `~/.config/bow/keys/<project>-<environment>.key` for the home directory `home`.
pub fn default_key_path(home: &Path, project: &str, environment: &str) -> PathBuf {
    home.join(".config/bow/keys")
        .join(format!("{project}-{environment}.key"))
}

/// A loaded identity and its public recipient.
pub struct Key {
    pub identity: age::x25519::Identity,
    pub recipient: String,
    /// Where it came from, for messages (`BOW_AGE_KEY` or the file's path).
    pub origin: String,
}

impl KeySource {
    /// The source the environment variables select for `project` and `environment`.
    pub fn from_env(project: &str, environment: &str) -> Result<KeySource> {
        if let Some(key) = std::env::var(crate::KEY_ENV).ok().filter(|k| !k.is_empty()) {
            return Ok(KeySource::Inline(Zeroizing::new(key)));
        }
        let path = match std::env::var_os(crate::KEY_FILE_ENV).filter(|p| !p.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => {
                let home = std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| SecretsError::BadKey {
                        origin: "the default key path".into(),
                        message: "HOME is not set; set BOW_AGE_KEY_FILE to the key's path".into(),
                    })?;
                default_key_path(Path::new(&home), project, environment)
            }
        };
        Ok(KeySource::File {
            path,
            environment: environment.to_string(),
        })
    }

    /// The key file's path, when the key comes from a file.
    pub fn path(&self) -> Option<&Path> {
        match self {
            KeySource::File { path, .. } => Some(path),
            KeySource::Inline(_) => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            KeySource::Inline(_) => crate::KEY_ENV.to_string(),
            KeySource::File { path, .. } => path.display().to_string(),
        }
    }

    /// Reads the identity; a missing file is [`SecretsError::NoKey`], a file others can read
    /// is refused.
    pub fn load(&self) -> Result<Key> {
        let origin = self.describe();
        let text = match self {
            KeySource::Inline(text) => text.clone(),
            KeySource::File { path, environment } => {
                let metadata = match std::fs::metadata(path) {
                    Ok(metadata) => metadata,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                        return Err(SecretsError::NoKey {
                            path: path.clone(),
                            environment: environment.clone(),
                        });
                    }
                    Err(error) => {
                        return Err(SecretsError::io(format!("cannot read {origin}"), error));
                    }
                };
                let mode = metadata.mode() & 0o7777;
                if mode & 0o077 != 0 {
                    return Err(SecretsError::KeyReadableByOthers {
                        path: path.clone(),
                        mode,
                    });
                }
                Zeroizing::new(
                    std::fs::read_to_string(path)
                        .map_err(|e| SecretsError::io(format!("cannot read {origin}"), e))?,
                )
            }
        };
        parse_identity(&text, &origin)
    }
}

fn parse_identity(text: &str, origin: &str) -> Result<Key> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .ok_or_else(|| SecretsError::BadKey {
            origin: origin.to_string(),
            message: "it is empty".into(),
        })?;
    let identity = age::x25519::Identity::from_str(line).map_err(|e| SecretsError::BadKey {
        origin: origin.to_string(),
        message: e.to_string(),
    })?;
    Ok(Key {
        recipient: identity.to_public().to_string(),
        identity,
        origin: origin.to_string(),
    })
}

/// Creates a new identity in `path` (mode 0600, parent directories 0700); fails when the file
/// exists.
pub fn write_new_key(path: &Path) -> Result<Key> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| SecretsError::io(format!("cannot create {}", parent.display()), e))?;
    }
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let secret = identity.to_string();
    let text = Zeroizing::new(format!(
        "# created: {}\n# public key: {recipient}\n{}\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        secret.expose_secret()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| SecretsError::io(format!("cannot create {}", path.display()), e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| SecretsError::io(format!("cannot write {}", path.display()), e))?;
    Ok(Key {
        identity,
        recipient,
        origin: path.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file_source(path: &Path) -> KeySource {
        KeySource::File {
            path: path.to_path_buf(),
            environment: "production".into(),
        }
    }

    #[test]
    fn a_new_key_is_private_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/shop-production.key");
        let created = write_new_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = file_source(&path).load().unwrap();
        assert_eq!(loaded.recipient, created.recipient);
        assert!(loaded.recipient.starts_with("age1"));
        assert!(
            write_new_key(&path).is_err(),
            "an existing key is never replaced"
        );
    }

    #[test]
    fn a_key_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        write_new_key(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let message = file_source(&path).load().err().unwrap().to_string();
        assert!(message.contains("mode 0640"), "{message}");
        assert!(
            message.contains(&format!("chmod 600 {}", path.display())),
            "{message}"
        );
    }

    #[test]
    fn a_missing_key_names_the_path_and_init() {
        let message = file_source(Path::new("/nonexistent/k.key"))
            .load()
            .err()
            .unwrap()
            .to_string();
        assert!(message.contains("/nonexistent/k.key"), "{message}");
        assert!(
            message.contains("bow secret init -e production"),
            "{message}"
        );
    }

    #[test]
    fn inline_keys_parse_and_garbage_is_explained() {
        let identity = age::x25519::Identity::generate();
        let text = identity.to_string().expose_secret().to_string();
        let key = KeySource::Inline(Zeroizing::new(text)).load().unwrap();
        assert_eq!(key.recipient, identity.to_public().to_string());
        let message = KeySource::Inline(Zeroizing::new("nope".into()))
            .load()
            .err()
            .unwrap()
            .to_string();
        assert!(
            message.starts_with("BOW_AGE_KEY does not hold"),
            "{message}"
        );
    }
}
