//! The event index: indexing a new event, reading and changing an event's
//! metadata, recording outcomes, and the entries in the `pending` and
//! `failed` trees that follow its status.

use super::*;

/// Indexes a newly appended event unless its key is already known (a record
/// re-applied on recovery, or a second copy after a failed first). Returns
/// the snapshot written if it was new. The index entries of a known event
/// are written again too: sled may have kept the event but lost its index
/// entries in a crash, and both inserts are idempotent. `fresh`: a queued
/// new event goes straight to a worker and gets no `pending` entry (see
/// [`progress`]).
pub(crate) fn apply_new(trees: &Trees, meta: &EventMeta, fresh: bool) -> Result<Option<Snapshot>, StoreError> {
    if trees.markers.contains_key(meta.key.as_bytes())? {
        return Ok(None);
    }
    let raw = sled::IVec::from(meta.encode());
    let existing = match trees
        .events
        .compare_and_swap(meta.key.as_bytes(), None as Option<&[u8]>, Some(raw.clone()))?
    {
        Ok(()) => None,
        Err(current) => match current.current.as_deref().and_then(EventMeta::decode) {
            Some(existing) => Some(existing),
            None => return Ok(None),
        },
    };
    let indexed = existing.as_ref().unwrap_or(meta);
    let tk = time_key(indexed.received_ms, &indexed.key);
    trees.by_time.insert(&tk, &[])?;
    let pending_entry = indexed.status.is_queued() && !(fresh && existing.is_none());
    if pending_entry {
        trees.pending.insert(&tk, &[])?;
    }
    for c in &indexed.subjects {
        trees.subjects.insert(subject_key(c, &indexed.key), &[])?;
    }
    Ok(existing.is_none().then(|| Snapshot {
        meta: meta.clone(),
        raw: raw.to_vec(),
        pending_entry,
    }))
}

pub(crate) fn subject_key(contact_id: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(contact_id.len() + 1 + key.len());
    k.extend_from_slice(contact_id.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Before an event's new status is written: indexes it if it becomes failed.
pub(super) fn mark_failed(failed: &sled::Tree, m: &EventMeta, was_failed: bool) -> Result<(), StoreError> {
    if m.status == Status::Failed && !was_failed {
        failed.insert(m.key.as_bytes(), &[])?;
    }
    Ok(())
}

/// After it is written: drops the entry if it stopped being failed.
pub(super) fn unmark_failed(failed: &sled::Tree, m: &EventMeta, was_failed: bool) -> Result<(), StoreError> {
    if was_failed && m.status != Status::Failed {
        failed.remove(m.key.as_bytes())?;
    }
    Ok(())
}

/// Brings the event's `pending` entry in line with its status, given
/// whether it had one.
pub(super) fn sync_pending(pending: &sled::Tree, m: &EventMeta, had_entry: bool) -> Result<(), StoreError> {
    let tk = time_key(m.received_ms, &m.key);
    match (had_entry, m.status.is_queued()) {
        (false, true) => {
            pending.insert(tk, &[])?;
        }
        (true, false) => {
            pending.remove(tk)?;
        }
        _ => {}
    }
    Ok(())
}

impl Embedded {
    /// Known as an event or as a dedup marker of a purged one.
    pub fn is_known(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.inner.trees.events.contains_key(key.as_bytes())?
            || self.inner.trees.markers.contains_key(key.as_bytes())?)
    }

    pub(super) fn note_duplicate(&self, key: &str, now: i64) -> Result<(), StoreError> {
        self.update(key, |m| {
            m.delivery_count = m.delivery_count.saturating_add(1);
            m.last_delivery_ms = m.last_delivery_ms.max(now);
        })?;
        Ok(())
    }

    pub fn get(&self, key: &str) -> Result<Option<EventMeta>, StoreError> {
        Ok(self.snapshot(key)?.map(|s| s.meta))
    }

    /// An event's metadata with the bytes it was read from, for
    /// [`complete`](Self::complete).
    pub fn snapshot(&self, key: &str) -> Result<Option<Snapshot>, StoreError> {
        match self.inner.trees.events.get(key.as_bytes())? {
            Some(v) => EventMeta::decode(&v)
                .map(|meta| {
                    let pending_entry = meta.status.is_queued();
                    Some(Snapshot {
                        meta,
                        raw: v.to_vec(),
                        pending_entry,
                    })
                })
                .ok_or_else(|| StoreError::Corrupt(format!("event {key} has an unreadable record"))),
            None => Ok(None),
        }
    }

    /// Changes an event's metadata atomically (compare-and-swap, retried
    /// on a concurrent change); `None` if there is no such event.
    pub fn update(&self, key: &str, f: impl Fn(&mut EventMeta)) -> Result<Option<EventMeta>, StoreError> {
        let trees = &self.inner.trees;
        loop {
            let Some(old) = trees.events.get(key.as_bytes())? else {
                return Ok(None);
            };
            let mut m = EventMeta::decode(&old)
                .ok_or_else(|| StoreError::Corrupt(format!("event {key} has an unreadable record")))?;
            let (was_queued, was_failed) = (m.status.is_queued(), m.status == Status::Failed);
            f(&mut m);
            mark_failed(&trees.failed, &m, was_failed)?;
            if trees
                .events
                .compare_and_swap(key.as_bytes(), Some(&old), Some(m.encode()))?
                .is_ok()
            {
                sync_pending(&trees.pending, &m, was_queued)?;
                unmark_failed(&trees.failed, &m, was_failed)?;
                return Ok(Some(m));
            }
        }
    }

    /// The raw body of an event, decrypted; `None` once purged.
    pub fn read_body(&self, meta: &EventMeta) -> Result<Option<Bytes>, StoreError> {
        let Some(loc) = meta.loc else { return Ok(None) };
        let seg = self.inner.shared.readers.resolve(loc.seg);
        let reader = match self.inner.shared.readers.get(seg) {
            Some(r) => r,
            None => {
                let Some(cipher) = self.inner.shared.keyring.get(seg)? else {
                    return Ok(None);
                };
                let path = log::segment_path(&self.inner.log_dir, seg);
                if !path.exists() {
                    return Ok(None);
                }
                self.inner
                    .shared
                    .readers
                    .register(seg, &self.inner.log_dir, Arc::new(cipher))?;
                self.inner.shared.readers.get(seg).ok_or(StoreError::Closed)?
            }
        };
        let plain = log::read_record(&reader.0, &reader.1, seg, loc.off, loc.len)?;
        let (_, body) = log::split_plaintext(&plain)
            .ok_or_else(|| StoreError::Corrupt(format!("record of event {} is malformed", meta.key)))?;
        Ok(Some(Bytes::copy_from_slice(body)))
    }

    /// Records a worker's outcome for the event `seen` was read as: one
    /// compare-and-swap against those bytes, or, if the event changed since
    /// (a duplicate delivery counted meanwhile), a fresh read-modify-write.
    /// `None` if the event is gone or was erased meanwhile.
    pub fn complete(&self, seen: &Snapshot, completion: &Completion) -> Result<Option<EventMeta>, StoreError> {
        let trees = &self.inner.trees;
        let mut m = seen.meta.clone();
        completion.apply(&mut m);
        let key = m.key.as_bytes();
        let was_failed = seen.meta.status == Status::Failed;
        mark_failed(&trees.failed, &m, was_failed)?;
        if trees
            .events
            .compare_and_swap(key, Some(seen.raw.as_slice()), Some(m.encode()))?
            .is_ok()
        {
            sync_pending(&trees.pending, &m, seen.pending_entry)?;
            unmark_failed(&trees.failed, &m, was_failed)?;
            return Ok(Some(m));
        }
        let updated = self
            .update(&seen.meta.key, |m| completion.apply(m))?
            .filter(|m| m.status != Status::Erased);
        if let Some(m) = &updated {
            // `update` assumes a queued event has its entry; a fresh one had
            // none: make it exactly match the new status.
            sync_pending(&trees.pending, m, !m.status.is_queued())?;
        }
        Ok(updated)
    }

    /// A fresh event of `batch` has its outcome in sled (see `progress`).
    pub fn fresh_finished(&self, batch: u64) {
        self.inner.shared.progress().finished(batch);
    }

    /// Gives a fresh event whose outcome could not be recorded a `pending`
    /// entry, so that it is found again at the next start.
    pub fn keep_queued(&self, key: &str, received_ms: i64) -> Result<(), StoreError> {
        let tk = time_key(received_ms, key);
        self.inner.trees.pending.insert(tk, &[])?;
        Ok(())
    }
}
