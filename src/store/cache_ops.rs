//! The cache trees as handlers see them: [`CacheTx`], an optimistic
//! read-modify-write over contacts, conversations, tombstones and their
//! indexes. Records are written with compare-and-swap against the value the
//! handler read; if another writer got there first the whole handler runs
//! again on fresh data. (sled's own transactions take a database-wide write
//! lock, which stalled intake behind every cache update.) Index entries are
//! idempotent inserts and removes, so a retried handler leaves them right.

use std::cell::RefCell;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::event::split_time_key;
use super::{StoreError, Trees};

/// Why a cache operation stopped.
#[derive(Debug)]
pub enum TxError {
    /// A record changed under us: run the handler again.
    Conflict,
    /// The handler gave up; the message holds no personal data.
    Abort(String),
    Storage(StoreError),
}

impl From<sled::Error> for TxError {
    fn from(e: sled::Error) -> Self {
        TxError::Storage(e.into())
    }
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
    pub(crate) fn tag(self) -> &'static str {
        match self {
            CacheKind::Contact => "c",
            CacheKind::Conversation => "v",
        }
    }

    pub(crate) fn tomb_tag(self) -> &'static str {
        match self {
            CacheKind::Contact => "tc",
            CacheKind::Conversation => "tv",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CacheKind::Contact => "contact",
            CacheKind::Conversation => "conversation",
        }
    }
}

/// `cache_time` keys: a class tag (`c`, `v` for records, `tc`, `tv` for
/// tombstones), `/`, the big-endian write time, the id. Each class expires
/// by one prefix range scan.
pub(crate) fn cache_time_key(tag: &str, ms: i64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tag.len() + 9 + id.len());
    k.extend_from_slice(tag.as_bytes());
    k.push(b'/');
    k.extend_from_slice(&(ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn split_cache_time_key<'a>(tag: &str, k: &'a [u8]) -> Option<(i64, &'a str)> {
    let rest = k.strip_prefix(tag.as_bytes())?.strip_prefix(b"/")?;
    split_time_key(rest)
}

fn tomb_key(kind: CacheKind, id: &str) -> Vec<u8> {
    format!("{}:{id}", kind.tag()).into_bytes()
}

/// One attempt of a handler over the cache.
pub struct CacheTx<'a> {
    trees: &'a Trees,
    /// What each record looked like when this attempt read it.
    seen: RefCell<HashMap<(CacheKind, String), Option<sled::IVec>>>,
}

impl<'a> CacheTx<'a> {
    pub(crate) fn new(trees: &'a Trees) -> Self {
        CacheTx {
            trees,
            seen: RefCell::new(HashMap::new()),
        }
    }

    fn tree(&self, kind: CacheKind) -> &sled::Tree {
        match kind {
            CacheKind::Contact => &self.trees.contacts,
            CacheKind::Conversation => &self.trees.conversations,
        }
    }

    pub fn get(&self, kind: CacheKind, id: &str) -> TxResult<Option<Vec<u8>>> {
        let v = self.tree(kind).get(id.as_bytes())?;
        let out = v.as_ref().map(|v| v.to_vec());
        self.seen.borrow_mut().insert((kind, id.to_string()), v);
        Ok(out)
    }

    /// Swaps the record from what this attempt read to `new`.
    fn swap(&self, kind: CacheKind, id: &str, new: Option<&[u8]>) -> TxResult<()> {
        let expected = match self.seen.borrow().get(&(kind, id.to_string())) {
            Some(v) => v.clone(),
            None => return Err(TxError::Abort("cache write without a read".into())),
        };
        match self.tree(kind).compare_and_swap(id.as_bytes(), expected, new)? {
            Ok(()) => {
                self.seen
                    .borrow_mut()
                    .insert((kind, id.to_string()), new.map(sled::IVec::from));
                Ok(())
            }
            Err(_) => Err(TxError::Conflict),
        }
    }

    /// Writes a record read earlier in this attempt. `file_at`: a new
    /// record is filed in the expiry index under this time; an existing one
    /// (`None`) stays where it is filed (see `cache::Filed`).
    pub fn put(&self, kind: CacheKind, id: &str, value: &[u8], file_at: Option<i64>) -> TxResult<()> {
        self.swap(kind, id, Some(value))?;
        if let Some(ms) = file_at {
            self.trees.cache_time.insert(cache_time_key(kind.tag(), ms, id), &[])?;
        }
        Ok(())
    }

    /// Removes a record read earlier in this attempt, and its expiry index
    /// entry (filed under `filed_at`).
    pub fn remove(&self, kind: CacheKind, id: &str, filed_at: Option<i64>) -> TxResult<()> {
        self.swap(kind, id, None)?;
        if let Some(ms) = filed_at {
            self.trees.cache_time.remove(cache_time_key(kind.tag(), ms, id))?;
        }
        Ok(())
    }

    /// Files a record (again) in the expiry index.
    pub(crate) fn file_time_index(&self, tag: &str, ms: i64, id: &str) -> TxResult<()> {
        self.trees.cache_time.insert(cache_time_key(tag, ms, id), &[])?;
        Ok(())
    }

    pub(crate) fn remove_time_index(&self, tag: &str, ms: i64, id: &str) -> TxResult<()> {
        self.trees.cache_time.remove(cache_time_key(tag, ms, id))?;
        Ok(())
    }

    /// When the record was deleted (unix seconds, Intercom's clock), if it was.
    pub fn tombstone(&self, kind: CacheKind, id: &str) -> TxResult<Option<i64>> {
        Ok(self
            .trees
            .tombstones
            .get(tomb_key(kind, id))?
            .and_then(|v| v.get(..8).map(|b| i64::from_be_bytes(b.try_into().unwrap_or([0; 8])))))
    }

    pub fn put_tombstone(&self, kind: CacheKind, id: &str, deleted_at: i64, written_ms: i64) -> TxResult<()> {
        let mut v = deleted_at.to_be_bytes().to_vec();
        v.extend_from_slice(&written_ms.to_be_bytes());
        if let Some(old) = self.trees.tombstones.insert(tomb_key(kind, id), v)? {
            if let Some(b) = old.get(8..16) {
                let prev = i64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
                if prev != written_ms {
                    self.trees
                        .cache_time
                        .remove(cache_time_key(kind.tomb_tag(), prev, id))?;
                }
            }
        }
        self.trees
            .cache_time
            .insert(cache_time_key(kind.tomb_tag(), written_ms, id), &[])?;
        Ok(())
    }

    pub fn remove_tombstone(&self, kind: CacheKind, id: &str) -> TxResult<()> {
        if let Some(old) = self.trees.tombstones.remove(tomb_key(kind, id))? {
            if let Some(b) = old.get(8..16) {
                let prev = i64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
                self.trees
                    .cache_time
                    .remove(cache_time_key(kind.tomb_tag(), prev, id))?;
            }
        }
        Ok(())
    }

    pub fn index_email(&self, email_hash: &str, contact_id: &str) -> TxResult<()> {
        self.trees
            .email_index
            .insert(format!("{email_hash}:{contact_id}").as_bytes(), &[])?;
        Ok(())
    }

    pub fn unindex_email(&self, email_hash: &str, contact_id: &str) -> TxResult<()> {
        self.trees
            .email_index
            .remove(format!("{email_hash}:{contact_id}").as_bytes())?;
        Ok(())
    }
}

/// Runs `f` until it completes without a conflict.
pub(crate) fn run<T>(trees: &Trees, f: impl Fn(&CacheTx<'_>) -> TxResult<T>) -> Result<T, StoreError> {
    for _ in 0..1000 {
        match f(&CacheTx::new(trees)) {
            Ok(v) => return Ok(v),
            Err(TxError::Conflict) => std::thread::yield_now(),
            Err(TxError::Abort(msg)) => return Err(StoreError::Rejected(msg)),
            Err(TxError::Storage(e)) => return Err(e),
        }
    }
    Err(StoreError::Unavailable(
        "a cache record kept changing under its handler".into(),
    ))
}
