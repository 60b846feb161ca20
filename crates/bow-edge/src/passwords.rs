//! Password hashes as `htpasswd` writes them: bcrypt (`-B`), Apache's MD5 (`$apr1$`, `-m`)
//! and SHA-1 (`{SHA}`, `-s`). Verification compares in constant time; bcrypt runs on a
//! blocking thread, as it takes milliseconds by design.

use std::sync::Arc;

/// One user's password hash.
#[derive(Clone)]
pub(crate) enum PasswordHash {
    Bcrypt(Arc<str>),
    Apr1 { salt: Arc<str>, hash: Arc<str> },
    Sha1([u8; 20]),
}

impl PasswordHash {
    /// A hash from its `htpasswd` form; the error never repeats the hash.
    pub(crate) fn parse(text: &str) -> Result<PasswordHash, String> {
        let text = text.trim();
        if text.starts_with("$2y$") || text.starts_with("$2b$") || text.starts_with("$2a$") {
            if text.len() != 60 {
                return Err("a bcrypt hash has 60 characters".to_string());
            }
            return Ok(PasswordHash::Bcrypt(Arc::from(text)));
        }
        if let Some(rest) = text.strip_prefix("$apr1$") {
            let Some((salt, hash)) = rest.split_once('$') else {
                return Err("an $apr1$ hash is $apr1$salt$hash".to_string());
            };
            if salt.len() > 8 || hash.len() != 22 {
                return Err(
                    "an $apr1$ hash has a salt of up to 8 and a hash of 22 characters".to_string(),
                );
            }
            return Ok(PasswordHash::Apr1 {
                salt: Arc::from(salt),
                hash: Arc::from(hash),
            });
        }
        if let Some(encoded) = text.strip_prefix("{SHA}") {
            use base64::Engine;
            let digest = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
                .and_then(|bytes| <[u8; 20]>::try_from(bytes).ok())
                .ok_or_else(|| "a {SHA} hash is the base64 of 20 bytes".to_string())?;
            return Ok(PasswordHash::Sha1(digest));
        }
        Err("unknown hash: expected bcrypt ($2y$, as `htpasswd -B` writes), $apr1$ or {SHA}; plain or crypt() passwords are refused".to_string())
    }

    /// How much work a verification is (bcrypt's cost; the others are cheap).
    pub(crate) fn cost(&self) -> u32 {
        match self {
            PasswordHash::Bcrypt(hash) => hash.get(4..6).and_then(|c| c.parse().ok()).unwrap_or(0),
            _ => 0,
        }
    }

    /// Whether `password` matches, bcrypt off the async threads.
    pub(crate) async fn verify_blocking(self, password: &str) -> bool {
        match self {
            PasswordHash::Bcrypt(hash) => {
                let password = password.to_string();
                tokio::task::spawn_blocking(move || {
                    bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false)
                })
                .await
                .unwrap_or(false)
            }
            other => other.verify(password),
        }
    }

    fn verify(&self, password: &str) -> bool {
        use subtle::ConstantTimeEq;
        match self {
            PasswordHash::Bcrypt(hash) => {
                bcrypt::verify(password.as_bytes(), hash).unwrap_or(false)
            }
            PasswordHash::Apr1 { salt, hash } => {
                let computed = apr1(password.as_bytes(), salt.as_bytes());
                computed.as_bytes().ct_eq(hash.as_bytes()).into()
            }
            PasswordHash::Sha1(digest) => {
                use sha1::Digest;
                let computed: [u8; 20] = sha1::Sha1::digest(password.as_bytes()).into();
                computed.ct_eq(digest).into()
            }
        }
    }
}

/// Apache's MD5-crypt (`$apr1$`): the 22-character hash of `password` with `salt`.
fn apr1(password: &[u8], salt: &[u8]) -> String {
    use md5::{Digest, Md5};
    let mut context = Md5::new();
    context.update(password);
    context.update(b"$apr1$");
    context.update(salt);
    let mut alternate = Md5::new();
    alternate.update(password);
    alternate.update(salt);
    alternate.update(password);
    let alternate = alternate.finalize();
    let mut left = password.len();
    while left > 0 {
        context.update(&alternate[..left.min(16)]);
        left = left.saturating_sub(16);
    }
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            context.update([0u8]);
        } else {
            context.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut digest = context.finalize();
    for round in 0..1000 {
        let mut next = Md5::new();
        if round & 1 == 1 {
            next.update(password);
        } else {
            next.update(digest);
        }
        if round % 3 != 0 {
            next.update(salt);
        }
        if round % 7 != 0 {
            next.update(password);
        }
        if round & 1 == 1 {
            next.update(digest);
        } else {
            next.update(password);
        }
        digest = next.finalize();
    }
    const ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(22);
    let mut push = |mut value: u32, count: usize| {
        for _ in 0..count {
            out.push(ALPHABET[(value & 0x3f) as usize] as char);
            value >>= 6;
        }
    };
    let d = |i: usize| u32::from(digest[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        push((d(a) << 16) | (d(b) << 8) | d(c), 4);
    }
    push(d(11), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apr1_matches_htpasswd() {
        // `htpasswd -nbm alice 'wonder land'`
        assert_eq!(apr1(b"wonder land", b"ITi9r8b3"), ".hfTExDojFnkJtvbaRpA51");
    }
}
