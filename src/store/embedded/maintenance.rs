//! The store's side of retention: ranges of expired keys, whole-segment
//! deletion with key destruction, dedup markers.

use super::event::split_time_key;
use super::*;

/// How much of a dropped segment is freed at a time, and the pause between
/// (see `log::remove_gradually`).
const REMOVE_STEP: u64 = 2 << 20;
const REMOVE_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

impl Embedded {
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

    /// Expires events received before `before_ms` (see [`Backend::expire_events`]):
    /// their index entries become markers, batch by batch, then the closed
    /// segments that hold nothing newer go, keys first. The open segment is
    /// closed first when all it holds is past `before_ms`.
    pub fn expire_events(&self, before_ms: i64, batch: usize) -> Result<ExpiredEvents, StoreError> {
        if let Some((_, info)) = self.segments()?.into_iter().find(|(_, i)| !i.closed) {
            if info.last_ms < before_ms {
                self.roll_segment_blocking()?;
            }
        }
        let expired_segments = self.expired_segments(before_ms)?;
        let mut events = 0;
        loop {
            let keys = self.expired_events(before_ms, batch)?;
            if keys.is_empty() {
                break;
            }
            for (ms, k) in &keys {
                events += u64::from(self.purge_event(*ms, k)?);
            }
            std::thread::yield_now();
        }
        for seq in &expired_segments {
            self.drop_segment(*seq)?;
        }
        Ok(ExpiredEvents {
            events,
            containers: expired_segments.len() as u64,
        })
    }

    pub fn count_expired_events(&self, before_ms: i64) -> Result<ExpiredEvents, StoreError> {
        Ok(ExpiredEvents {
            events: Self::count_range(&self.inner.trees.by_time, time_key(0, ""), time_key(before_ms, ""))?,
            containers: self.expired_segments(before_ms)?.len() as u64,
        })
    }

    /// Closed segments that hold nothing received since `before_ms`.
    fn expired_segments(&self, before_ms: i64) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .segments()?
            .into_iter()
            .filter(|(_, i)| i.closed && i.last_ms < before_ms)
            .map(|(s, _)| s)
            .collect())
    }

    pub fn count_expired_markers(&self, before_ms: i64) -> Result<u64, StoreError> {
        Self::count_range(
            &self.inner.trees.markers_by_time,
            time_key(0, ""),
            time_key(before_ms, ""),
        )
    }

    pub fn count_cache_expired(&self, class: Expiry, before_ms: i64) -> Result<u64, StoreError> {
        Self::count_range(
            &self.inner.trees.cache_time,
            cache_time_key(class.tag(), 0, ""),
            cache_time_key(class.tag(), before_ms, ""),
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
    pub fn remove_expired_markers(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
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
}
