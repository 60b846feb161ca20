//! Secrets encrypted at rest with age, kept beside the code, one file per environment.
//!
//! `secrets/<env>.yaml` next to `bow.yaml` holds, for each secret, its age ciphertext
//! (x25519, ASCII-armored) and when it last changed, plus the recipients (age public keys) it
//! is encrypted to and an encrypted digest key. It is safe to commit: a changed value is a
//! one-secret diff. The private key (identity) lives outside the repository ([`KeySource`]).
//!
//! A secret's digest ([`SecretsFile::digests`]) is an HMAC-SHA256 of its value keyed by the
//! environment's digest key, which is itself encrypted in the file: nothing stored anywhere is
//! a plain hash of a value (which could be guessed), re-encrypting for other recipients does
//! not change it, and only holders of a key can compute it. See docs/secrets.md.

mod crypt;
mod error;
mod file;
mod keys;

use std::path::{Path, PathBuf};

pub use error::{Result, SecretsError};
pub use file::{Entry, SecretsFile};
pub use keys::{Key, KeySource, default_key_path, write_new_key};
pub use zeroize::Zeroizing;

/// `BOW_AGE_KEY`: the identity itself (`AGE-SECRET-KEY-1…`).
pub const KEY_ENV: &str = "BOW_AGE_KEY";
/// `BOW_AGE_KEY_FILE`: the path of an identity file.
pub const KEY_FILE_ENV: &str = "BOW_AGE_KEY_FILE";

/// `<stack dir>/secrets/<environment>.yaml`.
pub fn secrets_file_path(stack_dir: &Path, environment: &str) -> PathBuf {
    stack_dir
        .join("secrets")
        .join(format!("{environment}.yaml"))
}

/// Whether `name` can name a secret: the stack file's rule (letters, digits, `_`, `-`).
pub fn is_valid_name(name: &str) -> bool {
    bow_spec::is_secret_name(name)
}

/// One decrypted secret with its digest.
pub struct Revealed {
    pub name: String,
    pub value: Zeroizing<Vec<u8>>,
    pub digest: String,
}

impl std::fmt::Debug for Revealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Revealed({}, digest {})", self.name, self.digest)
    }
}

/// Where a reader of secrets (the agent) finds them: the file and the key. The file and the
/// key are read afresh on every [`Source::reveal`], so `bow secret set` and `rotate` take
/// effect without restarting the agent.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: PathBuf,
    pub key: KeySource,
}

impl Source {
    /// Decrypts the named secrets; a name the file lacks is an error that says how to set it.
    pub fn reveal(&self, names: &[&str]) -> Result<Vec<Revealed>> {
        let file = SecretsFile::load(&self.file)?.ok_or_else(|| SecretsError::NotSet {
            names: names.iter().map(ToString::to_string).collect(),
            file: self.file.clone(),
        })?;
        let key = self.key.load()?;
        file.reveal_many(&self.file, &key, names)
    }
}
