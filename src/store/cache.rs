//! The cache as the layers above see it: the kinds of record, the classes of
//! the expiry index, and [`CacheTx`], one attempt of an optimistic
//! read-modify-write over records, tombstones and their indexes. A backend
//! runs a handler's attempt with [`super::Store::cache_txn`] and runs it
//! again on [`TxError::Conflict`]; the rules that keep the indexes right
//! (which entry goes with which record) live above, in `cache_rules`.

use serde::{Deserialize, Serialize};

use super::StoreError;

/// Why a cache operation stopped.
#[derive(Debug)]
pub enum TxError {
    /// A record changed under us: run the handler again.
    Conflict,
    /// The handler gave up; the message holds no personal data.
    Abort(String),
    Storage(StoreError),
}

pub type TxResult<T> = Result<T, TxError>;

/// Which cache tree a record lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheKind {
    Contact,
    Conversation,
}

impl CacheKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheKind::Contact => "contact",
            CacheKind::Conversation => "conversation",
        }
    }
}

/// A class of the cache's expiry index: records of a kind expire by their
/// last write, tombstones by when they were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expiry {
    Record(CacheKind),
    Tombstone(CacheKind),
}

/// One attempt of a handler over the cache. Reads record what they saw;
/// a write of a record not read in this attempt, or changed since it was
/// read, fails with [`TxError::Conflict`] (or `Abort` when never read), and
/// the attempt runs again on fresh data. Index and tombstone writes are
/// idempotent, so a retried attempt leaves them right. Everything an
/// attempt did before a conflict may be visible: only record writes are
/// compare-and-swap.
pub trait CacheTx {
    fn get(&self, kind: CacheKind, id: &str) -> TxResult<Option<Vec<u8>>>;
    /// Writes a record read earlier in this attempt. `file_at`: a new
    /// record is filed in the expiry index under this time; an existing one
    /// (`None`) stays where it is filed (see `cache::Filed`).
    fn put(&self, kind: CacheKind, id: &str, value: &[u8], file_at: Option<i64>) -> TxResult<()>;
    /// Removes a record read earlier in this attempt, and its expiry index
    /// entry (filed under `filed_at`).
    fn remove(&self, kind: CacheKind, id: &str, filed_at: Option<i64>) -> TxResult<()>;
    /// Files an id (again) in the expiry index.
    fn file_expiry(&self, class: Expiry, ms: i64, id: &str) -> TxResult<()>;
    fn unfile_expiry(&self, class: Expiry, ms: i64, id: &str) -> TxResult<()>;
    /// When the record was deleted (unix seconds, Intercom's clock), if it was.
    fn tombstone(&self, kind: CacheKind, id: &str) -> TxResult<Option<i64>>;
    /// Writes a tombstone, filed for expiry under `written_ms` (and no
    /// longer under an earlier write).
    fn put_tombstone(&self, kind: CacheKind, id: &str, deleted_at: i64, written_ms: i64) -> TxResult<()>;
    fn remove_tombstone(&self, kind: CacheKind, id: &str) -> TxResult<()>;
    fn index_email(&self, email_hash: &str, contact_id: &str) -> TxResult<()>;
    fn unindex_email(&self, email_hash: &str, contact_id: &str) -> TxResult<()>;
}
