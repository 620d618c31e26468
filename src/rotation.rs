//! KEYS: rotating the data key, as a revocation. The data dir gets a new
//! random root key (see `crypto::RootKeys`), and everything that was
//! encrypted or authenticated under the old one moves to the new one: the
//! intake log's segment keys are re-wrapped, the cache's sealed values
//! re-sealed, the audit chain re-authenticated. After it, the old data key,
//! with any copy of the old `root.key` (every backup holds one), opens
//! nothing written since, and no longer opens the data dir's keyring.
//!
//! What stays: the pseudonym key that keys the one-way hashes of emails and
//! external ids (they cannot be recomputed without the plaintext), and the
//! segment keys themselves (re-wrapped, not changed): an old backup's
//! keyring, opened with the old key, still decrypts the segments that
//! existed when that backup was taken.
//!
//! Order, so that an interruption loses nothing: the new keys are written
//! first, wrapped by the new data key, to `root.key.next`; then the keyring
//! is replaced in one atomic rename; then cache values and audit entries
//! are re-encrypted one by one (each step accepts values already moved);
//! last `root.key.next` replaces `root.key`. Until then the store refuses
//! to open and says to run the same rotation again, which resumes.

use std::path::Path;

use crate::cache::{decode, encode, CacheCodec, ContactRecord};
use crate::crypto::{self, DataKey, Keys};
use crate::store::StoreSettings;
use crate::store::{CacheKind, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a cached contact's {0} opens with neither the old nor the new key")]
    Unreadable(&'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What a rotation did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Rotated {
    pub rotated: bool,
    pub segment_keys_rewrapped: u64,
    pub cached_contacts_resealed: u64,
    pub audit_entries_reauthenticated: u64,
    /// Whether the new key was written into the data dir (`--write-key-file`).
    pub key_file_written: bool,
}

/// Rotates the data dir's keys from `old` to `new`. The store must be
/// closed (the caller opens and closes it first, which proves `old` works
/// and that no server holds it). `allowed_attributes` only matters for
/// building the cache codecs.
pub fn rotate(
    data_dir: &Path,
    settings: &StoreSettings,
    old: &DataKey,
    new: &DataKey,
    allowed_attributes: Vec<String>,
) -> Result<Rotated, RotationError> {
    let (current, next) = crypto::rotation_keys(data_dir, old, new)?;
    let (old_keys, new_keys) = (Keys::from_root(&current), Keys::from_root(&next));
    let rewrapped = crate::store::rewrap_keys(data_dir, &old_keys.wrap, &new_keys.wrap)?;

    let (store, _) = Store::open(data_dir, new_keys.clone(), settings)?;
    let (old_codec, new_codec) = (
        CacheCodec::new(old_keys.clone(), allowed_attributes.clone()),
        CacheCodec::new(new_keys.clone(), allowed_attributes),
    );
    let mut resealed = 0;
    for (id, bytes) in store.cache_all(CacheKind::Contact)? {
        let Some(mut r) = decode::<ContactRecord>(&bytes) else {
            continue;
        };
        if !old_codec
            .reseal(&new_codec, &mut r)
            .map_err(RotationError::Unreadable)?
        {
            continue;
        }
        store.cache_rewrite(CacheKind::Contact, &id, &encode(&r))?;
        resealed += 1;
    }
    let audit = crate::audit::rechain(
        &store,
        |e| e.authentic_under(&old_keys.audit_mac) || e.authentic_under(&new_keys.audit_mac),
        &new_keys.audit_mac,
    )?;
    let verified = crate::audit::verify(&store, None)?;
    if verified["ok"] != true {
        store.close()?;
        return Err(RotationError::Store(StoreError::Corrupt(format!(
            "the audit log does not verify ({}); the rotation was not finished: fix or expire the log, then run it again",
            verified["reason"]
        ))));
    }
    store.close()?;
    drop(store);
    crypto::finish_rotation(data_dir)?;
    Ok(Rotated {
        rotated: true,
        segment_keys_rewrapped: rewrapped,
        cached_contacts_resealed: resealed,
        audit_entries_reauthenticated: audit,
        key_file_written: false,
    })
}
