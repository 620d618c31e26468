//! The cache trees behind [`CacheTx`]: an optimistic read-modify-write
//! over contacts, conversations, tombstones and their indexes. Records are written with compare-and-swap against the value the
//! handler read; if another writer got there first the whole handler runs
//! again on fresh data. (sled's own transactions take a database-wide write
//! lock, which stalled intake behind every cache update.) Index entries are
//! idempotent inserts and removes, so a retried handler leaves them right.

use std::cell::RefCell;
use std::collections::HashMap;

use super::super::event::split_time_key;
use super::{CacheKind, CacheTx, Embedded, Expiry, StoreError, Trees, TxError, TxResult};

impl From<sled::Error> for TxError {
    fn from(e: sled::Error) -> Self {
        TxError::Storage(e.into())
    }
}

impl Expiry {
    pub(crate) fn tag(self) -> &'static str {
        match self {
            Expiry::Record(CacheKind::Contact) => "c",
            Expiry::Record(CacheKind::Conversation) => "v",
            Expiry::Tombstone(CacheKind::Contact) => "tc",
            Expiry::Tombstone(CacheKind::Conversation) => "tv",
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
    format!("{}:{id}", Expiry::Record(kind).tag()).into_bytes()
}

/// One attempt of a handler over the cache trees.
pub(crate) struct SledCacheTx<'a> {
    trees: &'a Trees,
    /// What each record looked like when this attempt read it.
    seen: RefCell<HashMap<(CacheKind, String), Option<sled::IVec>>>,
}

impl<'a> SledCacheTx<'a> {
    pub(crate) fn new(trees: &'a Trees) -> Self {
        SledCacheTx {
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
}

impl CacheTx for SledCacheTx<'_> {
    fn get(&self, kind: CacheKind, id: &str) -> TxResult<Option<Vec<u8>>> {
        let v = self.tree(kind).get(id.as_bytes())?;
        let out = v.as_ref().map(|v| v.to_vec());
        self.seen.borrow_mut().insert((kind, id.to_string()), v);
        Ok(out)
    }

    /// Writes a record read earlier in this attempt. `file_at`: a new
    /// record is filed in the expiry index under this time; an existing one
    /// (`None`) stays where it is filed (see `cache::Filed`).
    fn put(&self, kind: CacheKind, id: &str, value: &[u8], file_at: Option<i64>) -> TxResult<()> {
        self.swap(kind, id, Some(value))?;
        if let Some(ms) = file_at {
            self.trees
                .cache_time
                .insert(cache_time_key(Expiry::Record(kind).tag(), ms, id), &[])?;
        }
        Ok(())
    }

    /// Removes a record read earlier in this attempt, and its expiry index
    /// entry (filed under `filed_at`).
    fn remove(&self, kind: CacheKind, id: &str, filed_at: Option<i64>) -> TxResult<()> {
        self.swap(kind, id, None)?;
        if let Some(ms) = filed_at {
            self.trees
                .cache_time
                .remove(cache_time_key(Expiry::Record(kind).tag(), ms, id))?;
        }
        Ok(())
    }

    fn file_expiry(&self, class: Expiry, ms: i64, id: &str) -> TxResult<()> {
        self.trees.cache_time.insert(cache_time_key(class.tag(), ms, id), &[])?;
        Ok(())
    }

    fn unfile_expiry(&self, class: Expiry, ms: i64, id: &str) -> TxResult<()> {
        self.trees.cache_time.remove(cache_time_key(class.tag(), ms, id))?;
        Ok(())
    }

    /// When the record was deleted (unix seconds, Intercom's clock), if it was.
    fn tombstone(&self, kind: CacheKind, id: &str) -> TxResult<Option<i64>> {
        Ok(self
            .trees
            .tombstones
            .get(tomb_key(kind, id))?
            .and_then(|v| v.get(..8).map(|b| i64::from_be_bytes(b.try_into().unwrap_or([0; 8])))))
    }

    fn put_tombstone(&self, kind: CacheKind, id: &str, deleted_at: i64, written_ms: i64) -> TxResult<()> {
        let mut v = deleted_at.to_be_bytes().to_vec();
        v.extend_from_slice(&written_ms.to_be_bytes());
        if let Some(old) = self.trees.tombstones.insert(tomb_key(kind, id), v)? {
            if let Some(b) = old.get(8..16) {
                let prev = i64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
                if prev != written_ms {
                    self.trees
                        .cache_time
                        .remove(cache_time_key(Expiry::Tombstone(kind).tag(), prev, id))?;
                }
            }
        }
        self.trees
            .cache_time
            .insert(cache_time_key(Expiry::Tombstone(kind).tag(), written_ms, id), &[])?;
        Ok(())
    }

    fn remove_tombstone(&self, kind: CacheKind, id: &str) -> TxResult<()> {
        if let Some(old) = self.trees.tombstones.remove(tomb_key(kind, id))? {
            if let Some(b) = old.get(8..16) {
                let prev = i64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
                self.trees
                    .cache_time
                    .remove(cache_time_key(Expiry::Tombstone(kind).tag(), prev, id))?;
            }
        }
        Ok(())
    }

    fn index_email(&self, email_hash: &str, contact_id: &str) -> TxResult<()> {
        self.trees
            .email_index
            .insert(format!("{email_hash}:{contact_id}").as_bytes(), &[])?;
        Ok(())
    }

    fn unindex_email(&self, email_hash: &str, contact_id: &str) -> TxResult<()> {
        self.trees
            .email_index
            .remove(format!("{email_hash}:{contact_id}").as_bytes())?;
        Ok(())
    }
}

/// Runs `f` until it completes without a conflict.
pub(crate) fn run<T>(trees: &Trees, mut f: impl FnMut(&dyn CacheTx) -> TxResult<T>) -> Result<T, StoreError> {
    for _ in 0..1000 {
        match f(&SledCacheTx::new(trees)) {
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

impl Embedded {
    /// Runs `f` over the cache (see [`CacheTx`]).
    pub fn cache_txn<T>(&self, f: impl FnMut(&dyn CacheTx) -> TxResult<T>) -> Result<T, StoreError> {
        run(&self.inner.trees, f)
    }

    /// Ids in the cache expiry index of class `tag` written before
    /// `before_ms`, oldest first, at most `limit`.
    pub fn cache_expired(&self, class: Expiry, before_ms: i64, limit: usize) -> Result<Vec<(i64, String)>, StoreError> {
        let tag = class.tag();
        let lower = cache_time_key(tag, 0, "");
        let upper = cache_time_key(tag, before_ms, "");
        let mut out = Vec::new();
        for kv in self.inner.trees.cache_time.range(lower..upper).take(limit) {
            let (k, _) = kv?;
            if let Some((ms, id)) = split_cache_time_key(tag, &k) {
                out.push((ms, id.to_string()));
            }
        }
        Ok(out)
    }

    /// Reads the cache outside a transaction.
    /// Replaces a cached record's bytes if it still exists, filed in the
    /// expiry index where it was (a re-encryption, not a new write).
    /// Returns whether it existed.
    pub fn cache_rewrite(&self, kind: CacheKind, id: &str, value: &[u8]) -> Result<bool, StoreError> {
        self.cache_txn(|tx| {
            let existed = tx.get(kind, id)?.is_some();
            if existed {
                tx.put(kind, id, value, None)?;
            }
            Ok(existed)
        })
    }

    pub fn cache_get(&self, kind: CacheKind, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tree = match kind {
            CacheKind::Contact => &self.inner.trees.contacts,
            CacheKind::Conversation => &self.inner.trees.conversations,
        };
        Ok(tree.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Removes every cached record (tombstones stay). Returns how many.
    pub fn cache_clear(&self) -> Result<u64, StoreError> {
        let t = &self.inner.trees;
        let n = (t.contacts.len() + t.conversations.len()) as u64;
        t.contacts.clear()?;
        t.conversations.clear()?;
        t.email_index.clear()?;
        // Only tombstone entries stay in the expiry index.
        for tag in [
            Expiry::Record(CacheKind::Contact).tag(),
            Expiry::Record(CacheKind::Conversation).tag(),
        ] {
            for kv in t.cache_time.scan_prefix(format!("{tag}/")) {
                t.cache_time.remove(kv?.0)?;
            }
        }
        Ok(n)
    }
}
