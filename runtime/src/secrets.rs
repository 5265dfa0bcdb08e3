//! Secrets at rest: AES-256-GCM with a master key, sealed the moment a secret arrives.
//!
//! A sealed secret is `base64(nonce || ciphertext)`. The associated data names what the secret is
//! for (e.g. `webhook_secret:shop.myshopify.com`), so a sealed value copied onto another store does
//! not open. [`Secret`] never prints its contents.

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

/// Environment variable holding the base64 master key (several, newest first, separated by
/// commas, during a rotation); it takes precedence over the key file.
pub const MASTER_KEY_ENV: &str = "TRIBUTARY_MASTER_KEY";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("master key must be 32 bytes, base64-encoded")]
    BadMasterKey,
    #[error("sealed secret is malformed")]
    Malformed,
    #[error("sealed secret does not open with this master key and purpose")]
    WrongKey,
    #[error("no master key: {path} does not exist and {MASTER_KEY_ENV} is unset. Create one once per deployment with `tributary keys init` (and share it with every service), or point secrets.master_key_file at the existing one")]
    Missing { path: String },
    #[error("a master key exists already at {path}; `tributary keys rotate` replaces it without losing the secrets it sealed")]
    Exists { path: String },
    #[error("the master key comes from {MASTER_KEY_ENV}; rotate it there (new key first, then the old one, comma-separated)")]
    FromEnvironment,
    #[error("master key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The master key ring: the current key seals; it and the previous keys (kept during a rotation
/// until every secret is re-sealed) open.
#[derive(Clone)]
pub struct MasterKey {
    current: Key<Aes256Gcm>,
    previous: Vec<Key<Aes256Gcm>>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(redacted)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        Self {
            current: Aes256Gcm::generate_key(OsRng),
            previous: Vec::new(),
        }
    }

    /// One key, or a ring: base64 keys, newest first, separated by commas or line breaks.
    pub fn from_base64(text: &str) -> Result<Self, SecretError> {
        let mut keys = text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| {
                let bytes = B64.decode(k).map_err(|_| SecretError::BadMasterKey)?;
                if bytes.len() != 32 {
                    return Err(SecretError::BadMasterKey);
                }
                Ok(*Key::<Aes256Gcm>::from_slice(&bytes))
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter();
        let current = keys.next().ok_or(SecretError::BadMasterKey)?;
        Ok(Self {
            current,
            previous: keys.collect(),
        })
    }

    /// The ring as stored: base64 keys, newest first, one per line.
    pub fn to_base64(&self) -> String {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| B64.encode(k.as_slice()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How many earlier keys the ring still holds.
    pub fn previous_keys(&self) -> usize {
        self.previous.len()
    }

    /// The key from `TRIBUTARY_MASTER_KEY`, else from `path`. Services call this: a missing key is
    /// [`SecretError::Missing`], never a new key, since a new key opens none of the secrets
    /// sealed so far.
    pub fn load(path: &std::path::Path) -> Result<Self, SecretError> {
        if let Ok(text) = std::env::var(MASTER_KEY_ENV) {
            return Self::from_base64(&text);
        }
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SecretError::Missing {
                path: path.display().to_string(),
            }),
            Err(source) => Err(SecretError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Creates the deployment's master key at `path` (mode 0600): `tributary keys init`.
    /// Refuses ([`SecretError::Exists`]) when one exists, so a key is never replaced by accident.
    pub fn init(path: &std::path::Path) -> Result<Self, SecretError> {
        let key = Self::generate();
        write_key_file(path, &key, false)?;
        Ok(key)
    }

    /// For the demo, the bench and tests, which own their key file: the key at `path`, created if
    /// missing.
    pub fn load_or_init_for_dev(path: &std::path::Path) -> Result<Self, SecretError> {
        match Self::load(path) {
            Err(SecretError::Missing { .. }) => Self::init(path),
            other => other,
        }
    }

    /// A new current key in the file at `path`, the earlier ones kept behind it so that every
    /// secret sealed so far still opens: `tributary keys rotate`. Returns the new ring.
    pub fn rotate(path: &std::path::Path) -> Result<Self, SecretError> {
        let mut ring = Self::load_file_to_change(path)?;
        let old = std::mem::replace(&mut ring.current, Aes256Gcm::generate_key(OsRng));
        ring.previous.insert(0, old);
        write_key_file(path, &ring, true)?;
        Ok(ring)
    }

    /// Drops the earlier keys from the file at `path`, once every secret is sealed under the
    /// current one (`tributary keys reseal --retire`).
    pub fn retire_previous(path: &std::path::Path) -> Result<Self, SecretError> {
        let mut ring = Self::load_file_to_change(path)?;
        ring.previous.clear();
        write_key_file(path, &ring, true)?;
        Ok(ring)
    }

    /// The ring in the key file, for a command that rewrites it: refused when the key comes from
    /// the environment, which only its owner can change.
    fn load_file_to_change(path: &std::path::Path) -> Result<Self, SecretError> {
        if std::env::var_os(MASTER_KEY_ENV).is_some() {
            return Err(SecretError::FromEnvironment);
        }
        Self::load(path)
    }

    pub fn seal(&self, purpose: &str, secret: &str) -> String {
        let cipher = Aes256Gcm::new(&self.current);
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

    /// Opens a secret sealed under any key of the ring.
    pub fn open(&self, purpose: &str, sealed: &str) -> Result<Secret, SecretError> {
        let plain = std::iter::once(&self.current)
            .chain(&self.previous)
            .find_map(|key| decrypt(key, purpose, sealed).transpose())
            .ok_or(SecretError::WrongKey)??;
        String::from_utf8(plain)
            .map(Secret)
            .map_err(|_| SecretError::Malformed)
    }

    /// Whether `sealed` opens under the ring's current key (a reseal has nothing to do for it).
    pub fn sealed_under_current(&self, purpose: &str, sealed: &str) -> bool {
        matches!(decrypt(&self.current, purpose, sealed), Ok(Some(_)))
    }

    /// The secret sealed again under the current key.
    pub fn reseal(&self, purpose: &str, sealed: &str) -> Result<String, SecretError> {
        Ok(self.seal(purpose, self.open(purpose, sealed)?.expose()))
    }
}

/// `sealed` (base64 of nonce and ciphertext) opened with `key`: `None` when it was sealed under
/// another key or for another purpose.
fn decrypt(
    key: &Key<Aes256Gcm>,
    purpose: &str,
    sealed: &str,
) -> Result<Option<Vec<u8>>, SecretError> {
    let bytes = B64.decode(sealed).map_err(|_| SecretError::Malformed)?;
    if bytes.len() < 12 + 16 {
        return Err(SecretError::Malformed);
    }
    let (nonce, ciphertext) = bytes.split_at(12);
    Ok(Aes256Gcm::new(key)
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: purpose.as_bytes(),
            },
        )
        .ok())
}

/// Writes the ring (mode 0600). `replace`: atomically over the existing file (a temporary file
/// renamed), else only where none exists.
fn write_key_file(
    path: &std::path::Path,
    key: &MasterKey,
    replace: bool,
) -> Result<(), SecretError> {
    let io = |source| SecretError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let text = key.to_base64() + "\n";
    if !replace {
        return write_private(path, &text).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => SecretError::Exists {
                path: path.display().to_string(),
            },
            _ => io(e),
        });
    }
    let temporary = path.with_extension("rotating");
    let _ = std::fs::remove_file(&temporary);
    write_private(&temporary, &text).map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
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
    fn a_rotation_keeps_every_sealed_secret_open_until_it_is_resealed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        assert!(matches!(
            MasterKey::load(&path),
            Err(SecretError::Missing { .. })
        ));
        let first = MasterKey::init(&path).unwrap();
        assert!(matches!(
            MasterKey::init(&path),
            Err(SecretError::Exists { .. })
        ));
        let sealed = first.seal("p", "shpat_plant3d");

        let ring = MasterKey::rotate(&path).unwrap();
        assert_eq!(ring.previous_keys(), 1);
        let loaded = MasterKey::load(&path).unwrap();
        assert_eq!(loaded.open("p", &sealed).unwrap().expose(), "shpat_plant3d");
        let resealed = loaded.reseal("p", &sealed).unwrap();
        assert!(matches!(
            first.open("p", &resealed),
            Err(SecretError::WrongKey)
        ));

        let retired = MasterKey::retire_previous(&path).unwrap();
        assert_eq!(retired.previous_keys(), 0);
        assert_eq!(
            retired.open("p", &resealed).unwrap().expose(),
            "shpat_plant3d"
        );
        assert!(matches!(
            retired.open("p", &sealed),
            Err(SecretError::WrongKey)
        ));
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
