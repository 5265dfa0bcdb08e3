//! Secrets at rest: AES-256-GCM with a master key, sealed the moment a secret arrives.
//!
//! A sealed secret is `base64(nonce || ciphertext)`. The associated data names what the secret is
//! for (e.g. `webhook_secret:shop.myshopify.com`), so a sealed value copied onto another store does
//! not open. [`Secret`] never prints its contents.

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

/// Environment variable holding the base64 master key; it takes precedence over the key file.
pub const MASTER_KEY_ENV: &str = "TRIBUTARY_MASTER_KEY";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("master key must be 32 bytes, base64-encoded")]
    BadMasterKey,
    #[error("sealed secret is malformed")]
    Malformed,
    #[error("sealed secret does not open with this master key and purpose")]
    WrongKey,
    #[error("reading master key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Clone)]
pub struct MasterKey(Key<Aes256Gcm>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(redacted)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        Self(Aes256Gcm::generate_key(OsRng))
    }

    pub fn from_base64(text: &str) -> Result<Self, SecretError> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| SecretError::BadMasterKey)?;
        if bytes.len() != 32 {
            return Err(SecretError::BadMasterKey);
        }
        Ok(Self(*Key::<Aes256Gcm>::from_slice(&bytes)))
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0.as_slice())
    }

    /// The key from `TRIBUTARY_MASTER_KEY`, else from `path`; with `create`, a missing file is
    /// generated (mode 0600), which is what a development machine wants.
    pub fn load(path: &std::path::Path, create: bool) -> Result<Self, SecretError> {
        if let Ok(text) = std::env::var(MASTER_KEY_ENV) {
            return Self::from_base64(&text);
        }
        let io = |source| SecretError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key = Self::generate();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                write_private(path, &key.to_base64()).map_err(io)?;
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    pub fn seal(&self, purpose: &str, secret: &str) -> String {
        let cipher = Aes256Gcm::new(&self.0);
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.as_bytes(),
                    aad: purpose.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend(ciphertext);
        B64.encode(out)
    }

    pub fn open(&self, purpose: &str, sealed: &str) -> Result<Secret, SecretError> {
        let bytes = B64.decode(sealed).map_err(|_| SecretError::Malformed)?;
        if bytes.len() < 12 + 16 {
            return Err(SecretError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let plain = Aes256Gcm::new(&self.0)
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: purpose.as_bytes(),
                },
            )
            .map_err(|_| SecretError::WrongKey)?;
        String::from_utf8(plain)
            .map(Secret)
            .map_err(|_| SecretError::Malformed)
    }
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// Purpose string binding a store's webhook secret to its domain.
pub fn webhook_secret_purpose(domain: &str) -> String {
    format!("webhook_secret:{domain}")
}

/// Purpose string binding a store's Admin API access token to its domain.
pub fn access_token_purpose(domain: &str) -> String {
    format!("admin_access_token:{domain}")
}

/// A store's sealed Admin API access token did not open (another master key, or tampered).
#[derive(Debug, thiserror::Error)]
#[error("{0}: the Admin API access token could not be opened with this master key")]
pub struct UnopenedAccessToken(pub String);

impl MasterKey {
    /// Opens the store's sealed Admin API access token.
    pub fn open_access_token(
        &self,
        shop: &str,
        sealed: &str,
    ) -> Result<Secret, UnopenedAccessToken> {
        self.open(&access_token_purpose(shop), sealed)
            .map_err(|_| UnopenedAccessToken(shop.to_owned()))
    }
}

/// An opened secret. It has no `Display`, and `Debug` prints nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_binds_purpose() {
        let key = MasterKey::generate();
        let sealed = key.seal("webhook_secret:a", "shpss_plant3d");
        assert!(!sealed.contains("plant3d"));
        assert_eq!(
            key.open("webhook_secret:a", &sealed).unwrap().expose(),
            "shpss_plant3d"
        );
        assert!(matches!(
            key.open("webhook_secret:b", &sealed),
            Err(SecretError::WrongKey)
        ));
        assert!(matches!(
            MasterKey::generate().open("webhook_secret:a", &sealed),
            Err(SecretError::WrongKey)
        ));
        assert!(matches!(
            key.open("webhook_secret:a", "!!"),
            Err(SecretError::Malformed)
        ));
        assert_eq!(
            format!("{:?}", key.open("webhook_secret:a", &sealed).unwrap()),
            "Secret(redacted)"
        );
    }

    #[test]
    fn master_key_round_trips_through_base64() {
        let key = MasterKey::generate();
        let again = MasterKey::from_base64(&key.to_base64()).unwrap();
        let sealed = key.seal("p", "s");
        assert_eq!(again.open("p", &sealed).unwrap().expose(), "s");
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
    }
}
