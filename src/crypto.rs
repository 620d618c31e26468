//! Keys and encryption at rest. The data key (32 bytes, from
//! `INTERCOM_WEBHOOKS_DATA_KEY` or a key file made on first start) never
//! encrypts data directly: purpose keys are derived from it (HMAC-SHA256 over
//! a label), so the email hash key, the cache key and the key that wraps the
//! intake log's per-segment keys are independent of each other.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, AeadInPlace, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::secret::Secret;

pub const KEY_FILE: &str = "data.key";
/// The data dir's root key, wrapped by the data key (see [`load_or_create_root`]).
pub const ROOT_FILE: &str = "root.key";
const ROOT_AAD: &[u8] = b"intercom-webhooks/root-key/v1";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("INTERCOM_WEBHOOKS_DATA_KEY must be 32 bytes given as 64 hex characters or base64")]
    BadKey,
    #[error("the key file {0} is not a 32-byte key in hex")]
    BadKeyFile(String),
    #[error("cannot read or create the key file {path}: {source}")]
    KeyFileIo { path: String, source: std::io::Error },
    #[error("decryption failed: wrong data key, or the data was altered")]
    Decrypt,
    #[error("the data key does not open {0}: INTERCOM_WEBHOOKS_DATA_KEY (or data.key) is not the key this data dir was written with")]
    WrongDataKey(String),
}

/// The 32-byte root key. `Debug` never prints it.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

/// Where the data key came from, so the caller can warn about a new file.
#[derive(Debug, PartialEq, Eq)]
pub enum KeySource {
    Configured,
    ExistingFile,
    GeneratedFile,
}

impl DataKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(bytes)
    }

    /// Parses 64 hex characters or base64 (standard or URL-safe) of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| CryptoError::BadKey)?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
                .map_err(|_| CryptoError::BadKey)?
        };
        let arr: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(DataKey(arr))
    }

    /// The configured key, else the key file in `data_dir`, else a new key
    /// file (mode 0600).
    pub fn load_or_create(configured: Option<&Secret>, data_dir: &Path) -> Result<(Self, KeySource), CryptoError> {
        if let Some(s) = configured {
            return Ok((Self::parse(s.expose())?, KeySource::Configured));
        }
        let path = data_dir.join(KEY_FILE);
        let io = |source| CryptoError::KeyFileIo {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let key = Self::parse(&text).map_err(|_| CryptoError::BadKeyFile(path.display().to_string()))?;
                Ok((key, KeySource::ExistingFile))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::fsutil::private_dir_all(data_dir).map_err(io)?;
                let mut bytes = [0u8; 32];
                OsRng.fill_bytes(&mut bytes);
                let mut f = crate::fsutil::private_file(&path, true).map_err(io)?;
                f.write_all(hex::encode(bytes).as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok((DataKey(bytes), KeySource::GeneratedFile))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// A purpose key: HMAC-SHA256(data key, label).
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"intercom-webhooks/");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The data dir's keys, stored only wrapped (encrypted) by the data key in
/// `root.key`. `root` is random, made anew by every data key rotation, and
/// every encryption and authentication key derives from it. `pseudonym`
/// keys the one-way hashes (of emails, external ids, audit identifiers):
/// those cannot be recomputed without the plaintext, so it outlives
/// rotations. Files written before rotations revoked (version 1) hold one
/// key that serves as both.
#[derive(Clone)]
pub struct RootKeys {
    pub root: DataKey,
    pub pseudonym: DataKey,
}

impl std::fmt::Debug for RootKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKeys([redacted])")
    }
}

const ROOT_AAD_V2: &[u8] = b"intercom-webhooks/root-key/v2";
/// A rotation in progress: the new keys, wrapped by the new data key.
pub const ROOT_NEXT_FILE: &str = "root.key.next";

fn open_root_file(path: &Path, data_key: &DataKey) -> Result<RootKeys, CryptoError> {
    let wrong = || CryptoError::WrongDataKey(path.display().to_string());
    let sealed = std::fs::read(path).map_err(|source| CryptoError::KeyFileIo {
        path: path.display().to_string(),
        source,
    })?;
    if let Ok(both) = open(&data_key.0, ROOT_AAD_V2, &sealed) {
        let both: [u8; 64] = both.try_into().map_err(|_| wrong())?;
        let (mut root, mut pseudonym) = ([0u8; 32], [0u8; 32]);
        root.copy_from_slice(&both[..32]);
        pseudonym.copy_from_slice(&both[32..]);
        return Ok(RootKeys {
            root: DataKey(root),
            pseudonym: DataKey(pseudonym),
        });
    }
    let root = open(&data_key.0, ROOT_AAD, &sealed).map_err(|_| wrong())?;
    let root: [u8; 32] = root.try_into().map_err(|_| wrong())?;
    Ok(RootKeys {
        root: DataKey(root),
        pseudonym: DataKey(root),
    })
}

/// Root keys wrapped by the data key, as kept outside the data dir (the
/// PostgreSQL backend keeps them in the database).
pub fn wrap_root(data_key: &DataKey, keys: &RootKeys) -> Vec<u8> {
    let mut both = [0u8; 64];
    both[..32].copy_from_slice(&keys.root.0);
    both[32..].copy_from_slice(&keys.pseudonym.0);
    seal(&data_key.0, ROOT_AAD_V2, &both)
}

/// [`wrap_root`]'s inverse; `what` names where they came from in the error.
pub fn unwrap_root(data_key: &DataKey, sealed: &[u8], what: &str) -> Result<RootKeys, CryptoError> {
    let wrong = || CryptoError::WrongDataKey(what.to_string());
    let both = open(&data_key.0, ROOT_AAD_V2, sealed).map_err(|_| wrong())?;
    let both: [u8; 64] = both.try_into().map_err(|_| wrong())?;
    let (mut root, mut pseudonym) = ([0u8; 32], [0u8; 32]);
    root.copy_from_slice(&both[..32]);
    pseudonym.copy_from_slice(&both[32..]);
    Ok(RootKeys {
        root: DataKey(root),
        pseudonym: DataKey(pseudonym),
    })
}

/// New random root keys.
pub fn new_root() -> RootKeys {
    RootKeys {
        root: DataKey(random_key()),
        pseudonym: DataKey(random_key()),
    }
}

/// The data dir's keys (see [`RootKeys`]), made on first use.
pub fn load_or_create_root(data_dir: &Path, data_key: &DataKey) -> Result<RootKeys, CryptoError> {
    let path = data_dir.join(ROOT_FILE);
    if path.exists() {
        return open_root_file(&path, data_key);
    }
    let keys = RootKeys {
        root: DataKey(random_key()),
        pseudonym: DataKey(random_key()),
    };
    write_root(data_dir, ROOT_FILE, data_key, &keys)?;
    Ok(keys)
}

/// Writes wrapped root keys atomically to `name` in the data dir.
pub fn write_root(data_dir: &Path, name: &str, data_key: &DataKey, keys: &RootKeys) -> Result<(), CryptoError> {
    let path = data_dir.join(name);
    let io = |source| CryptoError::KeyFileIo {
        path: path.display().to_string(),
        source,
    };
    crate::fsutil::private_dir_all(data_dir).map_err(io)?;
    let mut both = [0u8; 64];
    both[..32].copy_from_slice(&keys.root.0);
    both[32..].copy_from_slice(&keys.pseudonym.0);
    crate::fsutil::replace_private(&path, &seal(&data_key.0, ROOT_AAD_V2, &both)).map_err(io)
}

/// The keys of a rotation: the current ones (opened with the old data key)
/// and the next ones (a new random root, the same pseudonym key), written
/// to [`ROOT_NEXT_FILE`] under the new data key before anything is
/// re-encrypted, or read back from it when an interrupted rotation resumes.
pub fn rotation_keys(data_dir: &Path, old: &DataKey, new: &DataKey) -> Result<(RootKeys, RootKeys), CryptoError> {
    let current = open_root_file(&data_dir.join(ROOT_FILE), old)?;
    let next_path = data_dir.join(ROOT_NEXT_FILE);
    let next = if next_path.exists() {
        open_root_file(&next_path, new)?
    } else {
        let next = RootKeys {
            root: DataKey(random_key()),
            pseudonym: current.pseudonym.clone(),
        };
        write_root(data_dir, ROOT_NEXT_FILE, new, &next)?;
        next
    };
    Ok((current, next))
}

/// Ends a rotation: the next keys become the data dir's keys.
pub fn finish_rotation(data_dir: &Path) -> std::io::Result<()> {
    std::fs::rename(data_dir.join(ROOT_NEXT_FILE), data_dir.join(ROOT_FILE))?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// Writes a key file with the given key (only when the operator asks).
pub fn replace_key_file(data_dir: &Path, key: &DataKey) -> Result<(), CryptoError> {
    let path = data_dir.join(KEY_FILE);
    crate::fsutil::replace_private(&path, hex::encode(key.0).as_bytes()).map_err(|source| CryptoError::KeyFileIo {
        path: path.display().to_string(),
        source,
    })
}

/// The keys the running program uses, derived once from the data key.
#[derive(Clone)]
pub struct Keys {
    /// Wraps the per-segment keys of the intake log (see `store::keyring`).
    pub wrap: [u8; 32],
    /// Encrypts sensitive values in the cache (allow-listed custom attributes).
    pub cache: [u8; 32],
    /// Keys the email hash (HMAC-SHA256), so it cannot be reversed by
    /// hashing guessed addresses without the data key.
    pub email_hash: [u8; 32],
    /// Keys the audit log's hashes of identifiers.
    pub audit_hash: [u8; 32],
    /// Authenticates the audit chain (HMAC-SHA256 per entry), so rewriting
    /// it needs this key, not just SHA-256.
    pub audit_mac: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys([redacted])")
    }
}

impl Keys {
    /// Every key from one key (tests; version 1 data dirs).
    pub fn derive(key: &DataKey) -> Self {
        Self::from_root(&RootKeys {
            root: key.clone(),
            pseudonym: key.clone(),
        })
    }

    pub fn from_root(keys: &RootKeys) -> Self {
        Keys {
            wrap: keys.root.derive("segment-key-wrap/v1"),
            cache: keys.root.derive("cache/v1"),
            email_hash: keys.pseudonym.derive("email-hash/v1"),
            audit_hash: keys.pseudonym.derive("audit-hash/v1"),
            audit_mac: keys.root.derive("audit-mac/v1"),
        }
    }

    /// Keyed hash of an email: trimmed and lower-cased first, hex output.
    pub fn email_hash(&self, email: &str) -> String {
        keyed_hash(&self.email_hash, email.trim().to_lowercase().as_bytes())
    }

    /// Keyed hash of another kind of identifier (an external id), under the
    /// same key as emails but apart from them (`kind` is hashed in).
    pub fn identifier_hash(&self, kind: &str, value: &str) -> String {
        let mut data = Vec::with_capacity(kind.len() + 1 + value.len());
        data.extend_from_slice(kind.as_bytes());
        data.push(0);
        data.extend_from_slice(value.as_bytes());
        keyed_hash(&self.email_hash, &data)
    }

    /// The dedup key of a signed body that is not a notification: keyed
    /// (under the pseudonym key, apart from identifiers), so that the key,
    /// which stays after an erasure, does not let a guess at a short body
    /// be confirmed.
    pub fn body_key(&self, body: &[u8]) -> String {
        let mut data = Vec::with_capacity(13 + body.len());
        data.extend_from_slice(b"invalid_body\0");
        data.extend_from_slice(body);
        format!("inv_{}", &keyed_hash(&self.email_hash, &data)[..32])
    }

    /// Keyed hash of an identifier for the audit log.
    pub fn audit_hash(&self, value: &str) -> String {
        keyed_hash(&self.audit_hash, value.as_bytes())
    }
}

pub fn keyed_hash(key: &[u8; 32], data: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// A fresh random 32-byte key.
pub fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    OsRng.fill_bytes(&mut k);
    k
}

/// XChaCha20-Poly1305 with a random nonce: `nonce(24) || ciphertext+tag`.
/// For small values (wrapped keys, cache fields) where a stored nonce is cheap.
pub fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let mut out = nonce.to_vec();
    let ct = cipher
        .encrypt(&nonce, Payload { msg: plaintext, aad })
        .expect("encryption of an in-memory buffer cannot fail");
    out.extend_from_slice(&ct);
    out
}

pub fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < 24 + 16 {
        return Err(CryptoError::Decrypt);
    }
    let (nonce, ct) = sealed.split_at(24);
    XChaCha20Poly1305::new(key.into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| CryptoError::Decrypt)
}

/// ChaCha20-Poly1305 under a key used for one intake log segment only, with
/// the record's offset in the segment as the nonce: offsets never repeat
/// within a segment (a segment is never appended to after a restart), so no
/// nonce needs storing.
pub struct SegmentCipher(ChaCha20Poly1305);

impl SegmentCipher {
    pub fn new(key: &[u8; 32]) -> Self {
        SegmentCipher(ChaCha20Poly1305::new(key.into()))
    }

    fn nonce(offset: u64) -> chacha20poly1305::Nonce {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&offset.to_le_bytes());
        n.into()
    }

    pub fn encrypt(&self, offset: u64, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        self.0
            .encrypt(&Self::nonce(offset), Payload { msg: plaintext, aad })
            .expect("encryption of an in-memory buffer cannot fail")
    }

    /// Encrypts `buf` where it lies and returns the tag: the same bytes as
    /// [`encrypt`](Self::encrypt) gives (`buf` then the tag), no copy.
    pub fn encrypt_in_place(&self, offset: u64, aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        self.0
            .encrypt_in_place_detached(&Self::nonce(offset), aad, buf)
            .expect("encryption of an in-memory buffer cannot fail")
            .into()
    }

    pub fn decrypt(&self, offset: u64, aad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.0
            .decrypt(&Self::nonce(offset), Payload { msg: ciphertext, aad })
            .map_err(|_| CryptoError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_base64_keys() {
        let hex_key = "00".repeat(32);
        assert!(DataKey::parse(&hex_key).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(DataKey::parse(&b64).is_ok());
        assert!(DataKey::parse("short").is_err());
        assert!(DataKey::parse(&"00".repeat(31)).is_err());
    }

    #[test]
    fn key_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, src) = DataKey::load_or_create(None, dir.path()).unwrap();
        assert_eq!(src, KeySource::GeneratedFile);
        let (k2, src) = DataKey::load_or_create(None, dir.path()).unwrap();
        assert_eq!(src, KeySource::ExistingFile);
        assert_eq!(k1.0, k2.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn rotation_makes_a_new_root_and_keeps_the_pseudonym_key() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (DataKey::from_bytes([1; 32]), DataKey::from_bytes([2; 32]));
        let first = load_or_create_root(dir.path(), &old).unwrap();
        assert_eq!(load_or_create_root(dir.path(), &old).unwrap().root.0, first.root.0);
        let (current, next) = rotation_keys(dir.path(), &old, &new).unwrap();
        assert_eq!(current.root.0, first.root.0);
        assert_ne!(next.root.0, first.root.0, "a rotation revokes: new root");
        assert_eq!(next.pseudonym.0, first.pseudonym.0, "hashes stay comparable");
        // Resuming an interrupted rotation finds the same next keys.
        assert_eq!(rotation_keys(dir.path(), &old, &new).unwrap().1.root.0, next.root.0);
        finish_rotation(dir.path()).unwrap();
        assert_eq!(load_or_create_root(dir.path(), &new).unwrap().root.0, next.root.0);
        assert!(matches!(
            load_or_create_root(dir.path(), &old),
            Err(CryptoError::WrongDataKey(_))
        ));
    }

    #[test]
    fn version_1_root_files_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let key = DataKey::from_bytes([1; 32]);
        std::fs::write(dir.path().join(ROOT_FILE), seal(&key.0, ROOT_AAD, &[7; 32])).unwrap();
        let keys = load_or_create_root(dir.path(), &key).unwrap();
        assert_eq!((keys.root.0, keys.pseudonym.0), ([7; 32], [7; 32]));
        let k = Keys::from_root(&keys);
        assert_eq!(k.email_hash, Keys::derive(&DataKey::from_bytes([7; 32])).email_hash);
    }

    #[test]
    fn email_hash_normalises() {
        let keys = Keys::derive(&DataKey::from_bytes([1; 32]));
        assert_eq!(keys.email_hash(" Zoe@Example.org "), keys.email_hash("zoe@example.org"));
        assert_ne!(keys.email_hash("a@example.org"), keys.email_hash("b@example.org"));
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let key = random_key();
        let sealed = seal(&key, b"aad", b"secret");
        assert_eq!(open(&key, b"aad", &sealed).unwrap(), b"secret");
        assert!(open(&key, b"other", &sealed).is_err());
        let c = SegmentCipher::new(&key);
        let ct = c.encrypt(42, b"s", b"payload");
        assert_eq!(c.decrypt(42, b"s", &ct).unwrap(), b"payload");
        let mut in_place = b"payload".to_vec();
        let tag = c.encrypt_in_place(42, b"s", &mut in_place);
        in_place.extend_from_slice(&tag);
        assert_eq!(in_place, ct);
        assert!(c.decrypt(43, b"s", &ct).is_err());
    }
}
