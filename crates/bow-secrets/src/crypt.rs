//! age encryption to armored text, decryption, and keyed digests.

use std::io::{Read, Write};
use std::str::FromStr;

use age::armor::{ArmoredReader, ArmoredWriter, Format};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Result, SecretsError};

/// Parses age recipients (`age1…`).
pub fn parse_recipients(recipients: &[String]) -> Result<Vec<age::x25519::Recipient>> {
    recipients
        .iter()
        .map(|text| {
            age::x25519::Recipient::from_str(text)
                .map_err(|e| SecretsError::BadRecipient(text.clone(), e.to_string()))
        })
        .collect()
}

/// Encrypts `plaintext` to every recipient, as ASCII armor.
pub fn encrypt(recipients: &[String], plaintext: &[u8]) -> Result<String> {
    let parsed = parse_recipients(recipients)?;
    if parsed.is_empty() {
        return Err(SecretsError::Encrypt(
            "the file lists no recipients; add one with `bow secret recipients add age1…`".into(),
        ));
    }
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| SecretsError::Encrypt(e.to_string()))?;
    let mut output = Vec::new();
    let fail = |e: std::io::Error| SecretsError::Encrypt(e.to_string());
    let armored = ArmoredWriter::wrap_output(&mut output, Format::AsciiArmor).map_err(fail)?;
    let mut writer = encryptor.wrap_output(armored).map_err(fail)?;
    writer.write_all(plaintext).map_err(fail)?;
    writer.finish().and_then(|w| w.finish()).map_err(fail)?;
    String::from_utf8(output).map_err(|e| SecretsError::Encrypt(e.to_string()))
}

/// Why one ciphertext could not be decrypted.
pub enum DecryptFailure {
    /// The key is not among the recipients.
    NotARecipient,
    Other(String),
}

/// Decrypts one armored ciphertext.
pub fn decrypt(
    armored: &str,
    identity: &age::x25519::Identity,
) -> std::result::Result<Zeroizing<Vec<u8>>, DecryptFailure> {
    let decryptor = age::Decryptor::new(ArmoredReader::new(armored.as_bytes()))
        .map_err(|e| DecryptFailure::Other(e.to_string()))?;
    let mut reader = decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => DecryptFailure::NotARecipient,
            other => DecryptFailure::Other(other.to_string()),
        })?;
    let mut plaintext = Zeroizing::new(Vec::new());
    reader
        .read_to_end(&mut plaintext)
        .map_err(|e| DecryptFailure::Other(e.to_string()))?;
    Ok(plaintext)
}

/// HMAC-SHA256 of `name` NUL `value` keyed by the digest key; the first 16 bytes, in hex.
pub fn digest(digest_key: &[u8], name: &str, value: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(digest_key).expect("HMAC accepts keys of any length");
    mac.update(name.as_bytes());
    mac.update(&[0]);
    mac.update(value);
    let bytes = mac.finalize().into_bytes();
    bytes[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 random bytes for a new digest key.
pub fn random_digest_key() -> Zeroizing<Vec<u8>> {
    use rand::RngCore;
    let mut key = Zeroizing::new(vec![0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut key);
    key
}
