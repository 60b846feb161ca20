//! The secrets file of one environment (`secrets/<env>.yaml`): its format, reading, writing
//! and the operations on it.
//!
//! ```yaml
//! version: 1
//! recipients:
//!   - age1…
//! digest_key: |
//!   -----BEGIN AGE ENCRYPTED FILE-----
//!   …
//! secrets:
//!   db_password:
//!     changed: 2026-11-22T03:10:00Z
//!     value: |
//!       -----BEGIN AGE ENCRYPTED FILE-----
//!       …
//! ```
//!
//! Written by bow in this fixed layout (names sorted), so that one changed secret is one
//! hunk in a diff; read with a YAML parser, so hand edits and merges are fine.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::Revealed;
use crate::crypt::{self, DecryptFailure};
use crate::error::{Result, SecretsError};
use crate::keys::Key;

const VERSION: u32 = 1;

/// One secret: its ciphertext and when it was last set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// RFC 3339 UTC time of the last `set`.
    pub changed: String,
    /// ASCII-armored age ciphertext.
    pub value: String,
}

/// The parsed file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsFile {
    pub version: u32,
    /// age public keys every value is encrypted to.
    pub recipients: Vec<String>,
    /// The environment's digest key, encrypted like the values.
    pub digest_key: String,
    #[serde(default)]
    pub secrets: BTreeMap<String, Entry>,
}

impl SecretsFile {
    /// A new file encrypted to `recipients`, with a fresh digest key and no secrets.
    pub fn create(recipients: Vec<String>) -> Result<SecretsFile> {
        let digest_key = crypt::encrypt(&recipients, &crypt::random_digest_key())?;
        Ok(SecretsFile {
            version: VERSION,
            recipients,
            digest_key,
            secrets: BTreeMap::new(),
        })
    }

    /// Reads `path`; `None` when it does not exist.
    pub fn load(path: &Path) -> Result<Option<SecretsFile>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(SecretsError::io(
                    format!("cannot read {}", path.display()),
                    error,
                ));
            }
        };
        Self::parse(&text, path).map(Some)
    }

    pub fn parse(text: &str, path: &Path) -> Result<SecretsFile> {
        let malformed = |message: String| SecretsError::Malformed {
            path: path.to_path_buf(),
            message,
        };
        let file: SecretsFile =
            serde_saphyr::from_str(text).map_err(|e| malformed(e.to_string()))?;
        if file.version != VERSION {
            return Err(malformed(format!(
                "version {} is not one this bow reads (it reads {VERSION}); upgrade bow",
                file.version
            )));
        }
        if let Some(name) = file.secrets.keys().find(|n| !crate::is_valid_name(n)) {
            return Err(malformed(format!(
                "`{name}` is not a secret name (letters, digits, `_`, `-`)"
            )));
        }
        crypt::parse_recipients(&file.recipients).map_err(|e| malformed(e.to_string()))?;
        Ok(file)
    }

    /// The file's text, in bow's fixed layout.
    pub fn render(&self, environment: &str) -> String {
        let mut out = format!(
            "# bow secrets of environment `{environment}`, encrypted with age: safe to commit.\n\
             # Change them with `bow secret set|rm|recipients|rotate`; private keys never go here.\n\
             version: {}\nrecipients:\n",
            self.version
        );
        for recipient in &self.recipients {
            out.push_str(&format!("  - {recipient}\n"));
        }
        out.push_str("digest_key: |\n");
        push_block(&mut out, &self.digest_key, "  ");
        if self.secrets.is_empty() {
            out.push_str("secrets: {}\n");
        } else {
            out.push_str("secrets:\n");
        }
        for (name, entry) in &self.secrets {
            out.push_str(&format!(
                "  {name}:\n    changed: \"{}\"\n    value: |\n",
                entry.changed
            ));
            push_block(&mut out, &entry.value, "      ");
        }
        out
    }

    /// Writes the file atomically (a temporary file renamed over it), mode 0644, creating
    /// its directory.
    pub fn save(&self, path: &Path, environment: &str) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| SecretsError::io(format!("cannot create {}", dir.display()), e))?;
        let temporary = path.with_extension("yaml.tmp");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(self.render(environment).as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)
        };
        write().map_err(|e| SecretsError::io(format!("cannot write {}", path.display()), e))
    }

    /// Sets (or replaces) a secret; `changed` is an RFC 3339 time.
    pub fn set(&mut self, name: &str, value: &[u8], changed: &str) -> Result<()> {
        let value = crypt::encrypt(&self.recipients, value)?;
        self.secrets.insert(
            name.to_string(),
            Entry {
                changed: changed.to_string(),
                value,
            },
        );
        Ok(())
    }

    /// Removes a secret; false when it was not set.
    pub fn remove(&mut self, name: &str) -> bool {
        self.secrets.remove(name).is_some()
    }

    /// Decrypts one armored text of this file (`path` is for messages).
    fn open(&self, path: &Path, key: &Key, armored: &str) -> Result<Zeroizing<Vec<u8>>> {
        crypt::decrypt(armored, &key.identity).map_err(|failure| match failure {
            DecryptFailure::NotARecipient => SecretsError::CannotDecrypt {
                origin: key.origin.clone(),
                recipient: key.recipient.clone(),
                file: path.to_path_buf(),
                recipients: self.recipients.clone(),
            },
            DecryptFailure::Other(message) => SecretsError::Malformed {
                path: path.to_path_buf(),
                message: format!("a ciphertext cannot be decrypted: {message}"),
            },
        })
    }

    /// The value of one secret.
    pub fn reveal(&self, path: &Path, key: &Key, name: &str) -> Result<Zeroizing<Vec<u8>>> {
        let entry = self.secrets.get(name).ok_or_else(|| SecretsError::NotSet {
            names: vec![name.to_string()],
            file: path.to_path_buf(),
        })?;
        self.open(path, key, &entry.value)
    }

    /// The names among `names` this file does not set.
    pub fn missing<'a>(&self, names: &[&'a str]) -> Vec<&'a str> {
        names
            .iter()
            .copied()
            .filter(|n| !self.secrets.contains_key(*n))
            .collect()
    }

    /// Decrypts the named secrets and computes their digests.
    pub fn reveal_many(&self, path: &Path, key: &Key, names: &[&str]) -> Result<Vec<Revealed>> {
        let missing = self.missing(names);
        if !missing.is_empty() {
            return Err(SecretsError::NotSet {
                names: missing.iter().map(ToString::to_string).collect(),
                file: path.to_path_buf(),
            });
        }
        let digest_key = self.open(path, key, &self.digest_key)?;
        names
            .iter()
            .map(|name| {
                let value = self.reveal(path, key, name)?;
                Ok(Revealed {
                    name: name.to_string(),
                    digest: crypt::digest(&digest_key, name, &value),
                    value,
                })
            })
            .collect()
    }

    /// The digests of the named secrets (see the crate docs).
    pub fn digests(
        &self,
        path: &Path,
        key: &Key,
        names: &[&str],
    ) -> Result<BTreeMap<String, String>> {
        Ok(self
            .reveal_many(path, key, names)?
            .into_iter()
            .map(|r| (r.name, r.digest))
            .collect())
    }

    /// Re-encrypts every value and the digest key to `recipients` (decrypting with `key`).
    /// Values, digests and change times stay the same.
    pub fn reencrypt(&mut self, path: &Path, key: &Key, recipients: Vec<String>) -> Result<()> {
        crypt::parse_recipients(&recipients)?;
        let digest_key = self.open(path, key, &self.digest_key)?;
        let mut secrets = BTreeMap::new();
        for (name, entry) in &self.secrets {
            let value = self.open(path, key, &entry.value)?;
            secrets.insert(
                name.clone(),
                Entry {
                    changed: entry.changed.clone(),
                    value: crypt::encrypt(&recipients, &value)?,
                },
            );
        }
        self.digest_key = crypt::encrypt(&recipients, &digest_key)?;
        self.secrets = secrets;
        self.recipients = recipients;
        Ok(())
    }
}

/// Appends `text`'s lines, each indented, as the body of a `|` block.
fn push_block(out: &mut String, text: &str, indent: &str) {
    for line in text.trim_end().lines() {
        out.push_str(indent);
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeySource;

    fn key() -> Key {
        use age::secrecy::ExposeSecret;
        let identity = age::x25519::Identity::generate();
        KeySource::Inline(Zeroizing::new(
            identity.to_string().expose_secret().to_string(),
        ))
        .load()
        .unwrap()
    }

    #[test]
    fn values_round_trip_through_the_written_text() {
        let (alice, path) = (key(), Path::new("secrets/production.yaml"));
        let mut file = SecretsFile::create(vec![alice.recipient.clone()]).unwrap();
        file.set("db_password", b"hunter2-unique", "2026-11-22T03:00:00Z")
            .unwrap();
        file.set("api-key", b"line1\nline2\n", "2026-11-22T03:01:00Z")
            .unwrap();
        let text = file.render("production");
        assert!(!text.contains("hunter2"), "{text}");
        let parsed = SecretsFile::parse(&text, path).unwrap();
        assert_eq!(parsed, file);
        assert_eq!(
            &*parsed.reveal(path, &alice, "db_password").unwrap(),
            b"hunter2-unique"
        );
        assert_eq!(
            &*parsed.reveal(path, &alice, "api-key").unwrap(),
            b"line1\nline2\n"
        );
    }

    #[test]
    fn digests_are_keyed_and_survive_reencryption_but_not_a_new_value() {
        let (alice, bob, path) = (key(), key(), Path::new("s.yaml"));
        let mut file = SecretsFile::create(vec![alice.recipient.clone()]).unwrap();
        file.set("a", b"same", "t").unwrap();
        file.set("b", b"same", "t").unwrap();
        let before = file.digests(path, &alice, &["a", "b"]).unwrap();
        assert_ne!(before["a"], before["b"], "the name is part of the digest");
        file.reencrypt(
            path,
            &alice,
            vec![alice.recipient.clone(), bob.recipient.clone()],
        )
        .unwrap();
        assert_eq!(file.digests(path, &bob, &["a", "b"]).unwrap(), before);
        file.set("a", b"other", "t2").unwrap();
        assert_ne!(file.digests(path, &bob, &["a"]).unwrap()["a"], before["a"]);
        // Another environment (another digest key) gives another digest for the same value.
        let mut other = SecretsFile::create(vec![alice.recipient.clone()]).unwrap();
        other.set("b", b"same", "t").unwrap();
        assert_ne!(
            other.digests(path, &alice, &["b"]).unwrap()["b"],
            before["b"]
        );
    }

    #[test]
    fn a_foreign_key_is_told_the_recipients() {
        let (alice, mallory, path) = (key(), key(), Path::new("secrets/staging.yaml"));
        let mut file = SecretsFile::create(vec![alice.recipient.clone()]).unwrap();
        file.set("x", b"v", "t").unwrap();
        let message = file.reveal(path, &mallory, "x").err().unwrap().to_string();
        assert!(
            message.contains("cannot decrypt secrets/staging.yaml"),
            "{message}"
        );
        assert!(message.contains(&alice.recipient), "{message}");
        assert!(
            message.contains(&format!("bow secret recipients add {}", mallory.recipient)),
            "{message}"
        );
        let message = file
            .reveal_many(path, &alice, &["x", "y", "z"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            message.starts_with("secrets `y`, `z` are not set"),
            "{message}"
        );
    }

    #[test]
    fn bad_files_are_explained() {
        let path = Path::new("s.yaml");
        for (text, expected) in [
            (
                "version: 1\nrecipients: []\ndigest_key: x\nextra: 1\n",
                "extra",
            ),
            ("version: 2\nrecipients: []\ndigest_key: x\n", "version 2"),
            (
                "version: 1\nrecipients: [nope]\ndigest_key: x\n",
                "`nope` is not an age recipient",
            ),
        ] {
            let message = SecretsFile::parse(text, path).err().unwrap().to_string();
            assert!(message.contains(expected), "{message} lacks {expected}");
        }
    }
}
