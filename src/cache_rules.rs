//! The cache's index rules, in one place. Every write to the contact and
//! conversation caches goes through these functions, inside one cache
//! transaction, so a record, its expiry entry, the email index and the
//! tombstones always agree:
//!
//! - a record is filed in the expiry index once, at its first write, and
//!   stays filed there ([`Filed`]); purge files it again under its last
//!   write when it finds it filed too early ([`expire`]);
//! - a contact's entry in the email index follows its email hash;
//! - a record that goes takes its expiry and email index entries with it;
//! - a deleted or erased id keeps a tombstone, dated by its first deletion,
//!   and nothing recreates a tombstoned id (the handlers check
//!   [`tombstoned`] first).

use serde::Deserialize;

use crate::cache::{decode, encode, Cached, Filed};
use crate::store::{CacheKind, CacheTx, Expiry, TxError, TxResult};

/// The cached record `id`; an unreadable one aborts the transaction.
pub fn load<R: Cached>(tx: &dyn CacheTx, id: &str) -> TxResult<Option<R>> {
    match tx.get(R::KIND, id)? {
        Some(bytes) => decode(&bytes)
            .map(Some)
            .ok_or_else(|| TxError::Abort(format!("cached {} is unreadable", R::KIND.as_str()))),
        None => Ok(None),
    }
}

/// Whether `id` was deleted (or erased): then nothing may recreate it.
pub fn tombstoned(tx: &dyn CacheTx, kind: CacheKind, id: &str) -> TxResult<bool> {
    Ok(tx.tombstone(kind, id)?.is_some())
}

/// Writes `r` (whose previous version is `prev`) at `now_ms`.
pub fn save<R: Cached>(tx: &dyn CacheTx, r: &mut R, prev: Option<&R>, now_ms: i64) -> TxResult<()> {
    let id = &r.id().to_string();
    let (old, new) = (prev.and_then(Cached::email_hash), r.email_hash());
    if old != new {
        if let Some(h) = old {
            tx.unindex_email(h, id)?;
        }
        if let Some(h) = new {
            tx.index_email(h, id)?;
        }
    }
    r.set_filed(Filed {
        written_ms: now_ms,
        index_ms: Some(Filed::next(prev.map(Cached::filed), now_ms)),
    });
    tx.put(R::KIND, id, &encode(r), prev.is_none().then_some(now_ms))
}

/// Removes record `id` (readable or not) and leaves a tombstone, dated
/// `deleted_at` unless one is there already. Returns whether there was a
/// record.
pub fn delete<R: Cached>(tx: &dyn CacheTx, id: &str, deleted_at: i64, now_ms: i64) -> TxResult<bool> {
    let had = match tx.get(R::KIND, id)? {
        Some(bytes) => {
            let r = decode::<R>(&bytes);
            if let Some(h) = r.as_ref().and_then(Cached::email_hash) {
                tx.unindex_email(h, id)?;
            }
            // An unreadable record's expiry entry is dropped by purge.
            tx.remove(R::KIND, id, r.map(|r| r.filed().at()))?;
            true
        }
        None => false,
    };
    let deleted_at = tx.tombstone(R::KIND, id)?.unwrap_or(deleted_at);
    tx.put_tombstone(R::KIND, id, deleted_at, now_ms)?;
    Ok(had)
}

/// A record's expiry fields, readable whatever its kind.
#[derive(Deserialize)]
struct Expiring {
    #[serde(flatten)]
    filed: Filed,
    #[serde(default)]
    email_hash: Option<String>,
}

/// Whether purge would remove record `id`, found filed at `filed_at`, for
/// a cut-off of `before` (an unreadable record is removed).
pub fn expired(bytes: &[u8], filed_at: i64, before: i64) -> bool {
    match decode::<Expiring>(bytes) {
        Some(e) => e.filed.at() == filed_at && e.filed.written_ms < before,
        None => true,
    }
}

/// Purge's rule for the expiry entry of `id` at `filed_at`: the entry goes;
/// a record written since the cut-off `before` is filed again under its
/// last write; otherwise the record goes (with its email index entry).
/// Returns whether the record was removed.
pub fn expire(tx: &dyn CacheTx, kind: CacheKind, id: &str, filed_at: i64, before: i64) -> TxResult<bool> {
    tx.unfile_expiry(Expiry::Record(kind), filed_at, id)?;
    let Some(bytes) = tx.get(kind, id)? else {
        return Ok(false);
    };
    match decode::<Expiring>(&bytes) {
        // An entry the record is no longer filed under.
        Some(e) if e.filed.at() != filed_at => Ok(false),
        Some(e) if e.filed.written_ms >= before => {
            let mut record: serde_json::Value = decode(&bytes).unwrap_or_default();
            record["index_ms"] = e.filed.written_ms.into();
            tx.put(kind, id, &encode(&record), None)?;
            tx.file_expiry(Expiry::Record(kind), e.filed.written_ms, id)?;
            Ok(false)
        }
        e => {
            if let Some(h) = e.and_then(|e| e.email_hash) {
                tx.unindex_email(&h, id)?;
            }
            tx.remove(kind, id, None)?;
            Ok(true)
        }
    }
}

/// Purge's rule for a tombstone filed at `filed_at`: it goes, with its
/// expiry entry (the id could then be cached again, which is why
/// tombstones are kept far longer than anything that could bring it back).
pub fn expire_tombstone(tx: &dyn CacheTx, kind: CacheKind, id: &str, filed_at: i64) -> TxResult<()> {
    tx.unfile_expiry(Expiry::Tombstone(kind), filed_at, id)?;
    tx.remove_tombstone(kind, id)
}
