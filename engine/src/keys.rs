//! Master keys: the top of encryption at rest, held outside the store.
//!
//! A master key never touches the store and never encrypts data: it wraps the store's
//! key-encryption keys (see [`crate::encryption`]), which wrap each file's data key. Who
//! holds the master key can read the store; who administers the disk or the bucket must
//! not hold it.
//!
//! Master keys come through a [`KeyProvider`], shaped like a key-management service's
//! client (wrap and unwrap by key id; the key bytes need never leave the service), which is
//! where a cloud KMS plugs in. Two providers come with Proxima: a key file
//! ([`MasterKeys::load`], made by `proxima key init`, readable by its owner only; it can
//! hold retired keys beside the current one, so `proxima key rotate` can rewrap
//! everything) and one key in an environment variable ([`MasterKeys::from_env`],
//! `PROXIMA_MASTER_KEY`, 32 bytes of base64).
//!
//! Wrapping is AES-256-GCM with a random 96-bit nonce, the wrapping key's id as associated
//! data: `base64(nonce ‖ ciphertext ‖ tag)`. The same format serves every level, so a
//! reader outside Proxima (pyarrow's `KmsClient`, see the README) implements it in a few
//! lines.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The environment variable that can hold one master key (32 bytes, base64).
pub const MASTER_KEY_ENV: &str = "PROXIMA_MASTER_KEY";

/// What went wrong with a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read or written.
    #[error("master key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file or variable does not hold what it should.
    #[error("{source_name}: {reason}")]
    Invalid {
        /// The file or variable.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// The provider does not hold the master key something was wrapped with.
    #[error("master key {id} is not in {source_name} (it holds {held}): give the key this store was written with")]
    Missing {
        /// The key asked for.
        id: String,
        /// Where keys come from.
        source_name: String,
        /// The ids it holds.
        held: String,
    },
    /// Unwrapping failed: the wrapping key is not the one used, or the bytes were altered.
    #[error("cannot unwrap {what} with key {key_id}: wrong key, or the wrapped key was altered")]
    Unwrap {
        /// What was being unwrapped.
        what: String,
        /// The key tried.
        key_id: String,
    },
}

/// A source of master keys: wraps and unwraps keys by master key id, as a KMS does.
pub trait KeyProvider: fmt::Debug + Send + Sync {
    /// Where the keys come from, for messages (`master key file /etc/proxima/master.key`).
    fn source(&self) -> String;
    /// The id of the key that wraps new key-encryption keys.
    fn current(&self) -> String;
    /// The ids of every key held (current and retired).
    fn ids(&self) -> Vec<String>;
    /// Wraps `key` with master key `id`.
    fn wrap(&self, key: &[u8], id: &str) -> Result<String, KeyError>;
    /// Unwraps what [`KeyProvider::wrap`] returned for master key `id`.
    fn unwrap(&self, wrapped: &str, id: &str) -> Result<Vec<u8>, KeyError>;
}

/// Seals `plaintext` with a 256-bit key: `base64(nonce ‖ ciphertext ‖ tag)`, `aad` bound in,
/// under a random nonce.
pub fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> String {
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce);
    let mut framed = nonce.to_vec();
    framed.extend_from_slice(&seal_at(key, nonce, aad, plaintext));
    BASE64.encode(framed)
}

/// Opens what [`seal`] made; `None` if the key or `aad` differ or the bytes were altered.
pub fn open(key: &[u8; 32], aad: &[u8], sealed: &str) -> Option<Vec<u8>> {
    let framed = BASE64.decode(sealed.trim()).ok()?;
    let (nonce, body) = framed.split_at_checked(NONCE_LEN)?;
    open_at(key, nonce.try_into().ok()?, aad, body)
}

/// AES-256-GCM of `plaintext` (ciphertext ‖ tag) under `nonce`, which the caller guarantees
/// is never used twice with `key`.
pub fn seal_at(key: &[u8; 32], nonce: [u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let sealing = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32 bytes is an AES-256 key"));
    let mut out = plaintext.to_vec();
    sealing
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut out)
        .expect("AES-GCM seals any buffer below 64 GiB");
    out
}

/// Opens what [`seal_at`] made; `None` if the key, nonce or `aad` differ or the bytes were
/// altered.
pub fn open_at(key: &[u8; 32], nonce: [u8; NONCE_LEN], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < AES_256_GCM.tag_len() {
        return None;
    }
    let opening = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let mut body = sealed.to_vec();
    let plain = opening
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
        .ok()?;
    Some(plain.to_vec())
}

/// 32 random bytes from the operating system's generator.
pub fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    rand::fill(&mut key);
    key
}

/// A master key's id: `mk-` and 16 hex digits of a hash of the key, so the same key has
/// the same id wherever it is given (a file, the environment) and an id says nothing of
/// the key.
pub fn master_key_id(key: &[u8; 32]) -> String {
    let digest = Sha256::new()
        .chain_update(b"proxima master key id\0")
        .chain_update(key)
        .finalize();
    format!("mk-{}", hex::encode(&digest[..8]))
}

/// One master key.
#[derive(Clone, Serialize, Deserialize)]
struct MasterKey {
    id: String,
    #[serde(with = "key_base64")]
    key: [u8; 32],
    created: DateTime<Utc>,
    /// When a newer key became current; a retired key still unwraps.
    retired: Option<DateTime<Utc>>,
}

/// 32-byte keys as base64 in key files.
pub mod key_base64 {
    use super::*;

    /// Writes a key as base64.
    pub fn serialize<S: serde::Serializer>(key: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(key))
    }

    /// Reads a key from base64, refusing anything but 32 bytes.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        BASE64
            .decode(text)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| serde::de::Error::custom("a key is 32 bytes of base64"))
    }
}

/// Master keys from a key file or the environment: the current key wraps, every key
/// unwraps.
#[derive(Clone, Serialize, Deserialize)]
pub struct MasterKeys {
    format: String,
    keys: Vec<MasterKey>,
    /// Where they were read from (not stored).
    #[serde(skip)]
    source: String,
}

/// The `format` a key file declares.
const FORMAT: &str = "proxima-master-keys/1";

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key bytes.
        f.debug_struct("MasterKeys")
            .field("source", &self.source)
            .field("ids", &self.ids())
            .field("current", &self.current())
            .finish()
    }
}

impl MasterKeys {
    /// A new key file's content: one current key.
    pub fn generate(now: DateTime<Utc>) -> Self {
        let key = random_key();
        Self {
            format: FORMAT.into(),
            keys: vec![MasterKey {
                id: master_key_id(&key),
                key,
                created: now,
                retired: None,
            }],
            source: String::new(),
        }
    }

    /// One key given in the environment (32 bytes, base64).
    pub fn from_env(value: &str) -> Result<Self, KeyError> {
        let invalid = |reason: &str| KeyError::Invalid {
            source_name: MASTER_KEY_ENV.into(),
            reason: reason.into(),
        };
        let key: [u8; 32] = BASE64
            .decode(value.trim())
            .map_err(|_| invalid("not base64"))?
            .try_into()
            .map_err(|_| invalid("a master key is 32 bytes (44 characters of base64)"))?;
        Ok(Self {
            format: FORMAT.into(),
            keys: vec![MasterKey {
                id: master_key_id(&key),
                key,
                created: Utc::now(),
                retired: None,
            }],
            source: MASTER_KEY_ENV.into(),
        })
    }

    /// Reads a key file, checking it holds exactly one current key and that every id is
    /// its key's.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: name.clone(),
            source,
        })?;
        let invalid = |reason: String| KeyError::Invalid {
            source_name: format!("master key file {name}"),
            reason,
        };
        let mut keys: Self = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if keys.format != FORMAT {
            return Err(invalid(format!("format '{}' is not {FORMAT}", keys.format)));
        }
        let current = keys.keys.iter().filter(|k| k.retired.is_none()).count();
        if current != 1 {
            return Err(invalid(format!("{current} current keys (one is needed)")));
        }
        if let Some(bad) = keys.keys.iter().find(|k| k.id != master_key_id(&k.key)) {
            return Err(invalid(format!("key {} does not match its id", bad.id)));
        }
        keys.source = format!("master key file {name}");
        Ok(keys)
    }

    /// Writes the keys to `path`, readable by its owner only, durably.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let text = serde_json::to_string_pretty(self).expect("keys always serialise");
        write_secret_file(path, text.as_bytes()).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Makes a new current key (the old one is retired but still unwraps); returns its id.
    pub fn rotate(&mut self, now: DateTime<Utc>) -> String {
        for key in &mut self.keys {
            key.retired.get_or_insert(now);
        }
        let key = random_key();
        let id = master_key_id(&key);
        self.keys.push(MasterKey {
            id: id.clone(),
            key,
            created: now,
            retired: None,
        });
        id
    }

    /// Removes a retired key. The caller checks first that nothing is wrapped with it.
    pub fn remove_retired(&mut self, id: &str) -> Result<(), KeyError> {
        let invalid = |reason: String| KeyError::Invalid {
            source_name: self.source.clone(),
            reason,
        };
        match self.keys.iter().position(|k| k.id == id) {
            None => Err(invalid(format!("holds no key {id}"))),
            Some(i) if self.keys[i].retired.is_none() => Err(invalid(format!("{id} is the current key; rotate first"))),
            Some(i) => {
                self.keys.remove(i);
                Ok(())
            }
        }
    }

    /// Each key: id, when made, when retired.
    pub fn summary(&self) -> Vec<(String, DateTime<Utc>, Option<DateTime<Utc>>)> {
        self.keys.iter().map(|k| (k.id.clone(), k.created, k.retired)).collect()
    }

    fn key(&self, id: &str) -> Result<&[u8; 32], KeyError> {
        self.keys
            .iter()
            .find(|k| k.id == id)
            .map(|k| &k.key)
            .ok_or_else(|| KeyError::Missing {
                id: id.to_string(),
                source_name: self.source(),
                held: self.ids().join(", "),
            })
    }
}

impl KeyProvider for MasterKeys {
    fn source(&self) -> String {
        self.source.clone()
    }

    fn current(&self) -> String {
        self.keys
            .iter()
            .find(|k| k.retired.is_none())
            .map(|k| k.id.clone())
            .expect("loaded and generated key sets have a current key")
    }

    fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    fn wrap(&self, key: &[u8], id: &str) -> Result<String, KeyError> {
        Ok(seal(self.key(id)?, id.as_bytes(), key))
    }

    fn unwrap(&self, wrapped: &str, id: &str) -> Result<Vec<u8>, KeyError> {
        open(self.key(id)?, id.as_bytes(), wrapped).ok_or_else(|| KeyError::Unwrap {
            what: "a key-encryption key".into(),
            key_id: id.to_string(),
        })
    }
}

/// A secret file sealed with a master key (what [`write_sealed_file`] writes given keys).
#[derive(Serialize, Deserialize)]
struct SealedFile {
    format: String,
    #[serde(rename = "masterKeyID")]
    master_key_id: String,
    sealed: String,
}

/// The `format` a sealed secret file declares.
const SEALED_FORMAT: &str = "proxima-sealed/1";

/// Writes a secret file (see [`write_secret_file`]), sealed with the current master key when
/// `keys` are given, so that the file alone reveals nothing.
pub fn write_sealed_file(path: &Path, bytes: &[u8], keys: Option<&dyn KeyProvider>) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let Some(keys) = keys else {
        return write_secret_file(path, bytes).map_err(io);
    };
    let master_key_id = keys.current();
    let sealed = SealedFile {
        format: SEALED_FORMAT.into(),
        sealed: keys.wrap(bytes, &master_key_id)?,
        master_key_id,
    };
    let text = serde_json::to_vec_pretty(&sealed).expect("a sealed file always serialises");
    write_secret_file(path, &text).map_err(io)
}

/// The master key a sealed secret file is sealed with; `None` for a file in the clear (or
/// none at all).
pub fn sealed_with(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let sealed: SealedFile = serde_json::from_slice(&bytes).ok()?;
    (sealed.format == SEALED_FORMAT).then_some(sealed.master_key_id)
}

/// Reads a secret file: one that [`write_sealed_file`] sealed is opened with `keys` (an
/// error names the master key it needs); any other is returned as it is.
pub fn read_sealed_file(path: &Path, keys: Option<&dyn KeyProvider>) -> Result<Vec<u8>, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let Ok(sealed) = serde_json::from_slice::<SealedFile>(&bytes) else {
        return Ok(bytes);
    };
    if sealed.format != SEALED_FORMAT {
        return Ok(bytes);
    }
    let keys = keys.ok_or_else(|| KeyError::Invalid {
        source_name: path.display().to_string(),
        reason: format!(
            "sealed with master key {}, and no master key was given (--master-key-file FILE, or {MASTER_KEY_ENV})",
            sealed.master_key_id
        ),
    })?;
    keys.unwrap(&sealed.sealed, &sealed.master_key_id)
        .map_err(|e| KeyError::Invalid {
            source_name: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// Writes a secret to `path` readable by its owner only, durably: aside, synced, renamed,
/// folder synced. Never through a file or link left behind at the aside name.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    // `<name>.tmp`, beside: two secret files of one folder never share it.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_only_with_the_same_key_and_aad() {
        let key = random_key();
        let sealed = seal(&key, b"kek-a", b"secret");
        assert_eq!(open(&key, b"kek-a", &sealed).as_deref(), Some(&b"secret"[..]));
        assert_eq!(open(&key, b"kek-b", &sealed), None);
        assert_eq!(open(&random_key(), b"kek-a", &sealed), None);
        // Two seals of the same bytes differ (fresh nonces).
        assert_ne!(seal(&key, b"kek-a", b"secret"), sealed);
        let mut altered = BASE64.decode(&sealed).unwrap();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(open(&key, b"kek-a", &BASE64.encode(altered)), None);
        assert_eq!(open(&key, b"kek-a", "not base64!"), None);
        assert_eq!(open(&key, b"kek-a", ""), None);
    }

    #[test]
    fn a_key_file_round_trips_rotates_and_refuses_what_is_not_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let mut keys = MasterKeys::generate(Utc::now());
        keys.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let loaded = MasterKeys::load(&path).unwrap();
        let first = loaded.current();
        assert_eq!(first, keys.current());
        let wrapped = loaded.wrap(b"data key", &first).unwrap();

        let second = keys.rotate(Utc::now());
        assert_ne!(second, first);
        assert_eq!(keys.current(), second);
        // The retired key still unwraps; the new one cannot open what the old one wrapped.
        assert_eq!(keys.unwrap(&wrapped, &first).unwrap(), b"data key");
        assert!(matches!(keys.unwrap(&wrapped, &second), Err(KeyError::Unwrap { .. })));
        assert!(keys.remove_retired(&second).is_err());
        keys.remove_retired(&first).unwrap();
        let err = keys.unwrap(&wrapped, &first).unwrap_err().to_string();
        assert!(err.contains(&first) && err.contains(&second), "{err}");

        std::fs::write(&path, "{}").unwrap();
        assert!(MasterKeys::load(&path).is_err());
        let mut tampered = serde_json::to_value(&keys).unwrap();
        tampered["keys"][0]["id"] = "mk-0000000000000000".into();
        std::fs::write(&path, tampered.to_string()).unwrap();
        let err = MasterKeys::load(&path).unwrap_err().to_string();
        assert!(err.contains("does not match its id"), "{err}");
    }

    #[test]
    fn a_sealed_secret_file_opens_only_with_its_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let keys = MasterKeys::generate(Utc::now());
        write_sealed_file(&path, b"identifier keys", Some(&keys)).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert!(!on_disk.windows(10).any(|w| w == b"identifier"));
        assert_eq!(read_sealed_file(&path, Some(&keys)).unwrap(), b"identifier keys");
        let err = read_sealed_file(&path, None).unwrap_err().to_string();
        assert!(err.contains(&keys.current()) && err.contains("no master key"), "{err}");
        let stranger = MasterKeys::generate(Utc::now());
        assert!(read_sealed_file(&path, Some(&stranger)).is_err());
        // Without keys the file is written, and read, as it is.
        write_sealed_file(&path, b"{\"plain\": 1}", None).unwrap();
        assert_eq!(read_sealed_file(&path, Some(&keys)).unwrap(), b"{\"plain\": 1}");
    }

    #[test]
    fn the_environment_gives_one_key_with_the_id_a_file_would_give_it() {
        let key = random_key();
        let keys = MasterKeys::from_env(&BASE64.encode(key)).unwrap();
        assert_eq!(keys.current(), master_key_id(&key));
        assert_eq!(keys.source(), MASTER_KEY_ENV);
        assert!(
            MasterKeys::from_env("c2hvcnQ=")
                .unwrap_err()
                .to_string()
                .contains("32 bytes")
        );
        assert!(MasterKeys::from_env("%%%").is_err());
    }
}
