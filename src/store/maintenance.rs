//! The store's side of retention and the audit log: ranges of expired
//! keys, whole-segment deletion with key destruction, dedup markers, and the
//! append-only audit tree.

use super::event::{split_time_key, time_key};
use super::{log, EventMeta, SegmentInfo, Store, StoreError};

const AUDIT_ANCHOR: &[u8] = b"audit_anchor";

/// How much of a dropped segment is freed at a time, and the pause between
/// (see `log::remove_gradually`).
const REMOVE_STEP: u64 = 2 << 20;
const REMOVE_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

impl Store {
    /// Events received before `before_ms`, oldest first, at most `limit`:
    /// (receipt ms, key).
    pub(crate) fn expired_events(&self, before_ms: i64, limit: usize) -> Result<Vec<(i64, String)>, StoreError> {
        let mut out = Vec::new();
        for kv in self
            .inner
            .trees
            .by_time
            .range(time_key(0, "")..time_key(before_ms, ""))
            .take(limit)
        {
            let (k, _) = kv?;
            match split_time_key(&k) {
                Some((ms, key)) => out.push((ms, key.to_string())),
                None => {
                    self.inner.trees.by_time.remove(&k)?;
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn count_range(tree: &sled::Tree, lower: Vec<u8>, upper: Vec<u8>) -> Result<u64, StoreError> {
        let mut n = 0;
        for kv in tree.range(lower..upper) {
            kv?;
            n += 1;
        }
        Ok(n)
    }

    pub(crate) fn count_expired_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        Self::count_range(&self.inner.trees.by_time, time_key(0, ""), time_key(before_ms, ""))
    }

    pub(crate) fn count_expired_markers(&self, before_ms: i64) -> Result<u64, StoreError> {
        Self::count_range(
            &self.inner.trees.markers_by_time,
            time_key(0, ""),
            time_key(before_ms, ""),
        )
    }

    pub(crate) fn count_cache_expired(&self, tag: &str, before_ms: i64) -> Result<u64, StoreError> {
        Self::count_range(
            &self.inner.trees.cache_time,
            super::cache_time_key(tag, 0, ""),
            super::cache_time_key(tag, before_ms, ""),
        )
    }

    /// Replaces an event by a dedup marker (its key and receipt time only).
    /// The marker is written first, so the key is never unknown in between;
    /// the index entries at `ms` go even if the event itself is already gone.
    /// Its payload stays in the log until the whole segment expires.
    pub(crate) fn purge_event(&self, ms: i64, key: &str) -> Result<bool, StoreError> {
        let t = &self.inner.trees;
        let tk = time_key(ms, key);
        let existed = match t.events.get(key.as_bytes())? {
            Some(v) => {
                let meta = EventMeta::decode(&v);
                for c in meta.as_ref().map(|m| m.subjects.as_slice()).unwrap_or_default() {
                    t.subjects.remove(super::subject_key(c, key))?;
                }
                t.markers.insert(key.as_bytes(), &ms.to_be_bytes())?;
                t.markers_by_time.insert(tk.clone(), &[])?;
                t.events.remove(key.as_bytes())?;
                if meta.is_none_or(|m| m.status == super::Status::Failed) {
                    t.failed.remove(key.as_bytes())?;
                }
                true
            }
            None => false,
        };
        t.by_time.remove(tk.clone())?;
        t.pending.remove(tk)?;
        Ok(existed)
    }

    /// Dedup markers of events received before `before_ms`, at most `limit`.
    pub(crate) fn remove_expired_markers(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
        let t = &self.inner.trees;
        let mut n = 0;
        let batch: Vec<sled::IVec> = t
            .markers_by_time
            .range(time_key(0, "")..time_key(before_ms, ""))
            .take(limit)
            .map(|kv| kv.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        for k in batch {
            if let Some((_, key)) = split_time_key(&k) {
                t.markers.remove(key.as_bytes())?;
            }
            t.markers_by_time.remove(&k)?;
            n += 1;
        }
        Ok(n)
    }

    /// Every intake segment's info, oldest first.
    pub(crate) fn segments(&self) -> Result<Vec<(u64, SegmentInfo)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.trees.segments.iter() {
            let (k, v) = kv?;
            let seq = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("segment key".into()))?,
            );
            if let Some(info) = SegmentInfo::decode(&v) {
                out.push((seq, info));
            }
        }
        Ok(out)
    }

    /// Destroys a closed segment: first its key (so whatever of it lingers
    /// on disk cannot be decrypted), then its file and info.
    pub(crate) fn drop_segment(&self, seq: u64) -> Result<(), StoreError> {
        self.inner.shared.keyring.destroy(seq)?;
        self.inner.shared.readers.forget(seq);
        log::remove_gradually(&log::segment_path(&self.inner.log_dir, seq), REMOVE_STEP, REMOVE_PAUSE)?;
        log::sync_dir(&self.inner.log_dir)?;
        self.inner.trees.segments.remove(seq.to_be_bytes())?;
        self.inner
            .shared
            .readers
            .forget_moved_to(&self.inner.trees.moved, seq)?;
        Ok(())
    }

    /// The segment the committer is writing, if it has written any.
    pub(crate) fn open_segment(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.segments()?.into_iter().find(|(_, i)| !i.closed).map(|(s, _)| s))
    }

    // ---- audit tree ----

    /// Appends an audit entry built by `make` from the previous entry's
    /// sequence number and bytes; entries are appended one at a time.
    pub(crate) fn audit_append(&self, make: impl FnOnce(Option<(u64, Vec<u8>)>) -> Vec<u8>) -> Result<u64, StoreError> {
        let _guard = self.inner.audit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let t = &self.inner.trees;
        let last = t
            .audit
            .last()?
            .map(|(k, v)| (u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])), v.to_vec()));
        let last = match last {
            Some(l) => Some(l),
            None => t.state.get(AUDIT_ANCHOR)?.map(|v| {
                let seq = u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8]));
                (seq, v[8..].to_vec())
            }),
        };
        let seq = last.as_ref().map_or(1, |(s, _)| s + 1);
        t.audit.insert(seq.to_be_bytes(), make(last))?;
        Ok(seq)
    }

    /// Audit entries in order, with their sequence numbers.
    pub(crate) fn audit_entries(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.trees.audit.iter() {
            let (k, v) = kv?;
            out.push((u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])), v.to_vec()));
        }
        Ok(out)
    }

    /// The last removed entry (its sequence and bytes): the chain's anchor
    /// once old entries have expired.
    pub(crate) fn audit_anchor(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self
            .inner
            .trees
            .state
            .get(AUDIT_ANCHOR)?
            .map(|v| (u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8])), v[8..].to_vec())))
    }

    /// Removes the oldest audit entries for which `expired` holds, keeping
    /// the last removed one as the anchor. Returns how many went.
    pub(crate) fn audit_remove_expired(
        &self,
        expired: impl Fn(&[u8]) -> bool,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let _guard = self.inner.audit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let t = &self.inner.trees;
        let mut n = 0;
        // The newest entry always stays, so the chain can be continued.
        let total = t.audit.len();
        for kv in t.audit.iter().take(limit.min(total.saturating_sub(1))) {
            let (k, v) = kv?;
            if !expired(&v) {
                break;
            }
            let mut anchor = k.to_vec();
            anchor.extend_from_slice(&v);
            t.state.insert(AUDIT_ANCHOR, anchor)?;
            t.audit.remove(&k)?;
            n += 1;
        }
        Ok(n)
    }

    /// Makes everything written to the index so far durable now (for audit
    /// entries that must not be lost).
    pub fn flush_index(&self) -> Result<(), StoreError> {
        self.inner.trees.db.flush()?;
        super::sync_sled_files(&self.inner.dir)?;
        Ok(())
    }

    /// For tests that cut the audit log's tail, as an attacker would.
    #[doc(hidden)]
    pub fn audit_remove_newest_for_tests(&self) -> Result<(), StoreError> {
        if let Some((k, _)) = self.inner.trees.audit.last()? {
            self.inner.trees.audit.remove(k)?;
        }
        Ok(())
    }

    /// For tests and tools that must see raw audit bytes.
    #[doc(hidden)]
    pub fn audit_overwrite(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.inner.trees.audit.insert(seq.to_be_bytes(), bytes)?;
        Ok(())
    }
}
