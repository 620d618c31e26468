//! The keyring: one random key per intake log segment, wrapped (encrypted)
//! with a key derived from the data key, in fixed 128-byte slots of one file
//! (`keyring.bin`, slot = segment number). Destroying a segment's key
//! overwrites its slot in place with zeros and syncs the file, which makes
//! whatever bytes of that segment linger (in freed blocks, in sled, in an old
//! copy of the log) undecryptable: crypto-shredding.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::crypto::{self, SegmentCipher};

const SLOT: u64 = 128;
const MAGIC: u8 = 0xA1;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("keyring i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the data key does not open the store's keyring: INTERCOM_WEBHOOKS_DATA_KEY (or data.key) is not the key this data dir was written with")]
    WrongDataKey,
}

pub struct Keyring {
    file: File,
    wrap: [u8; 32],
}

impl Keyring {
    pub fn open(dir: &Path, wrap: [u8; 32]) -> Result<Self, KeyringError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("keyring.bin"))?;
        Ok(Keyring { file, wrap })
    }

    fn aad(seq: u64) -> [u8; 16] {
        let mut aad = [0u8; 16];
        aad[..8].copy_from_slice(b"segkey01");
        aad[8..].copy_from_slice(&seq.to_be_bytes());
        aad
    }

    /// Makes and durably stores a new key for segment `seq`.
    pub fn create(&self, seq: u64) -> Result<SegmentCipher, KeyringError> {
        let key = crypto::random_key();
        let sealed = crypto::seal(&self.wrap, &Self::aad(seq), &key);
        let mut slot = [0u8; SLOT as usize];
        slot[0] = MAGIC;
        slot[1..9].copy_from_slice(&seq.to_le_bytes());
        slot[9..9 + sealed.len()].copy_from_slice(&sealed);
        self.file.write_all_at(&slot, seq * SLOT)?;
        self.file.sync_all()?;
        Ok(SegmentCipher::new(&key))
    }

    /// The key of segment `seq`; `None` once destroyed (or never made).
    pub fn get(&self, seq: u64) -> Result<Option<SegmentCipher>, KeyringError> {
        let mut slot = [0u8; SLOT as usize];
        match self.file.read_exact_at(&mut slot, seq * SLOT) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        if slot[0] != MAGIC || slot[1..9] != seq.to_le_bytes() {
            return Ok(None);
        }
        let sealed = &slot[9..9 + 24 + 32 + 16];
        let key = crypto::open(&self.wrap, &Self::aad(seq), sealed).map_err(|_| KeyringError::WrongDataKey)?;
        let key: [u8; 32] = key.try_into().map_err(|_| KeyringError::WrongDataKey)?;
        Ok(Some(SegmentCipher::new(&key)))
    }

    /// Overwrites the key of segment `seq` with zeros, in place, durably.
    pub fn destroy(&self, seq: u64) -> Result<(), KeyringError> {
        let len = self.file.metadata()?.len();
        if seq * SLOT >= len {
            return Ok(());
        }
        self.file.write_all_at(&[0u8; SLOT as usize], seq * SLOT)?;
        self.file.sync_all()?;
        Ok(())
    }
}

/// Re-wraps every key in the keyring of `dir` from `old` to `new`, as one
/// atomic replacement of the file (the store must be closed). A key that
/// already opens with `new` (a rotation resumed after an interruption) is
/// kept; destroyed slots stay zeros. Returns how many keys were re-wrapped.
pub fn rewrap_file(dir: &Path, old: &[u8; 32], new: &[u8; 32]) -> Result<u64, KeyringError> {
    let path = dir.join("keyring.bin");
    let mut bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let n = rewrap_bytes(&mut bytes, old, new)?;
    crate::fsutil::replace_private(&path, &bytes)?;
    Ok(n)
}

/// Re-wraps, in memory, every key of a keyring file's bytes from `old` to
/// `new` (see [`rewrap_file`]).
pub fn rewrap_bytes(bytes: &mut [u8], old: &[u8; 32], new: &[u8; 32]) -> Result<u64, KeyringError> {
    let mut n = 0;
    for (seq, slot) in bytes.chunks_exact_mut(SLOT as usize).enumerate() {
        let seq = seq as u64;
        if slot[0] != MAGIC || slot[1..9] != seq.to_le_bytes() {
            continue;
        }
        let sealed = &slot[9..9 + 24 + 32 + 16];
        let aad = Keyring::aad(seq);
        match crypto::open(old, &aad, sealed) {
            Ok(key) => {
                let resealed = crypto::seal(new, &aad, &key);
                slot[9..9 + resealed.len()].copy_from_slice(&resealed);
                n += 1;
            }
            Err(_) if crypto::open(new, &aad, sealed).is_ok() => {}
            Err(_) => return Err(KeyringError::WrongDataKey),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_get_destroy() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path(), [3; 32]).unwrap();
        let c = ring.create(5).unwrap();
        let ct = c.encrypt(32, b"a", b"hello");
        let again = ring.get(5).unwrap().unwrap();
        assert_eq!(again.decrypt(32, b"a", &ct).unwrap(), b"hello");
        assert!(ring.get(4).unwrap().is_none());
        assert!(ring.get(99).unwrap().is_none());
        ring.destroy(5).unwrap();
        assert!(ring.get(5).unwrap().is_none());
        let wrong = Keyring::open(dir.path(), [4; 32]).unwrap();
        ring.create(6).unwrap();
        assert!(matches!(wrong.get(6), Err(KeyringError::WrongDataKey)));
        drop((ring, wrong));
        assert_eq!(rewrap_file(dir.path(), &[3; 32], &[4; 32]).unwrap(), 1);
        assert_eq!(rewrap_file(dir.path(), &[3; 32], &[4; 32]).unwrap(), 0, "resumable");
        let now = Keyring::open(dir.path(), [4; 32]).unwrap();
        assert!(now.get(6).unwrap().is_some() && now.get(5).unwrap().is_none());
        let old = Keyring::open(dir.path(), [3; 32]).unwrap();
        assert!(
            matches!(old.get(6), Err(KeyringError::WrongDataKey)),
            "the old wrap is revoked"
        );
    }
}
