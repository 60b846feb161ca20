//! The errors of the secrets store: each says what went wrong and what to do next.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, SecretsError>;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid secrets file: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error(
        "no age key: expected it in {path} (or in BOW_AGE_KEY / BOW_AGE_KEY_FILE); create one with `bow secret init -e {environment}`, or put the key a teammate gave you there"
    )]
    NoKey { path: PathBuf, environment: String },
    #[error(
        "the key file {path} can be read by other users (mode {mode:04o}); bow refuses it because anyone who reads it can decrypt every secret: run `chmod 600 {path}`"
    )]
    KeyReadableByOthers { path: PathBuf, mode: u32 },
    #[error("{origin} does not hold an age identity (AGE-SECRET-KEY-1…): {message}")]
    BadKey { origin: String, message: String },
    #[error(
        "the key {origin} ({recipient}) cannot decrypt {file}: it is encrypted to {}; ask someone who can decrypt it to run `bow secret recipients add {recipient}`",
        .recipients.join(", ")
    )]
    CannotDecrypt {
        origin: String,
        recipient: String,
        file: PathBuf,
        recipients: Vec<String>,
    },
    #[error("{} not set in {}; set it with `bow secret set NAME` (the value on stdin)", names_phrase(.names), .file.display())]
    NotSet { names: Vec<String>, file: PathBuf },
    #[error("`{0}` is not an age recipient (age1…): {1}")]
    BadRecipient(String, String),
    #[error("encrypting failed: {0}")]
    Encrypt(String),
}

fn names_phrase(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.len() {
        1 => format!("secret {} is", quoted[0]),
        _ => format!("secrets {} are", quoted.join(", ")),
    }
}

impl SecretsError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> SecretsError {
        SecretsError::Io {
            what: what.into(),
            source,
        }
    }
}
