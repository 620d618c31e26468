//! The store's side of erasure: finding a person's events, forgetting them,
//! and rewriting the log segments that held them under new keys, so the old
//! copies (lingering blocks, backups) become undecryptable when the old
//! segment's key is destroyed.

use std::collections::BTreeSet;

use super::*;
use crate::timefmt::now_ms;

/// How much of a segment a shred pass reads or writes at a time.
const SHRED_STEP: usize = 256 << 10;

impl Embedded {
    /// Events indexed under a subject key (see `identifiers`).
    pub fn events_for_subject(&self, subject: &str) -> Result<Vec<EventMeta>, StoreError> {
        let mut prefix = subject.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.inner.trees.subjects.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if let Some(m) = self.get(&key)? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Contact ids whose cached record has this email hash.
    pub fn contacts_for_email_hash(&self, hash: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("{hash}:");
        let mut out = Vec::new();
        for kv in self.inner.trees.email_index.scan_prefix(prefix.as_bytes()) {
            let (k, _) = kv?;
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    /// Every (email hash, contact id) of the email index.
    pub fn email_index_all(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.trees.email_index.iter() {
            let (k, _) = kv?;
            let k = String::from_utf8_lossy(&k);
            if let Some((hash, id)) = k.split_once(':') {
                out.push((hash.to_string(), id.to_string()));
            }
        }
        Ok(out)
    }

    /// Every cached record of a kind: (id, encoded record).
    pub fn cache_all(&self, kind: super::CacheKind) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tree = match kind {
            super::CacheKind::Contact => &self.inner.trees.contacts,
            super::CacheKind::Conversation => &self.inner.trees.conversations,
        };
        let mut out = Vec::new();
        for kv in tree.iter() {
            let (k, v) = kv?;
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// Forgets events at once: from here on they are not exported, replayed
    /// or processed, and what is listed and shown of each is its erased
    /// record ([`EventMeta::erased`]), which also keeps a re-delivery a
    /// duplicate. An event already erased is not counted again. The log segments that hold their
    /// records are queued for [`shred`](Self::shred): many erasures share
    /// one rewrite of each segment. With `durable` the change is made durable
    /// before this returns; without, the next checkpoint (within a second)
    /// does it, which is enough where a crash before then makes the erasure
    /// run again (a `contact.deleted` being processed stays queued until its
    /// outcome is durable). Blocking: call from a blocking context.
    pub fn erase_events(&self, keys: &[String], durable: bool) -> Result<ErasedEvents, StoreError> {
        let t = &self.inner.trees;
        let mut report = ErasedEvents::default();
        let mut segments = BTreeSet::new();
        let locs = self.inner.loc_lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        for key in keys {
            // The record becomes what is kept of it (compare-and-swap: a
            // worker's outcome written meanwhile is replaced, not merged).
            let m = loop {
                let Some(seen) = self.snapshot(key)? else { break None };
                if seen.meta.status == super::Status::Erased {
                    break None;
                }
                let kept = seen.meta.erased(now);
                if t.events
                    .compare_and_swap(key.as_bytes(), Some(seen.raw.as_slice()), Some(kept.encode()))?
                    .is_ok()
                {
                    break Some(seen.meta);
                }
            };
            let Some(m) = m else { continue };
            if let Some(loc) = m.loc {
                segments.insert(self.inner.shared.readers.resolve(loc.seg));
            }
            // Listed by time as before; no longer queued, failed or found
            // under its person's subject keys.
            t.failed.remove(key.as_bytes())?;
            t.pending.remove(time_key(m.received_ms, key))?;
            for c in &m.subjects {
                t.subjects.remove(subject_key(c, key))?;
            }
            report.events += 1;
        }
        for seq in &segments {
            if t.shred.insert(seq.to_be_bytes(), &[])?.is_none() {
                report.segments_queued += 1;
            }
        }
        if !segments.is_empty() {
            self.inner.shred_last_ms.store(now, Ordering::SeqCst);
            let _ = self
                .inner
                .shred_first_ms
                .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
        }
        drop(locs);
        if durable {
            self.flush_index()?;
        }
        Ok(report)
    }

    /// Replaces an event's subject keys (and its entries in the subject
    /// index) with `subjects`: for events indexed by an older release.
    pub fn set_subjects(&self, key: &str, subjects: Vec<String>) -> Result<bool, StoreError> {
        let t = &self.inner.trees;
        let Some(old) = self.get(key)? else { return Ok(false) };
        if old.subjects == subjects {
            return Ok(false);
        }
        for s in subjects.iter().filter(|s| !old.subjects.contains(s)) {
            t.subjects.insert(subject_key(s, key), &[])?;
        }
        let updated = self.update(key, |m| m.subjects = subjects.clone())?;
        for s in old.subjects.iter().filter(|s| !subjects.contains(s)) {
            t.subjects.remove(subject_key(s, key))?;
        }
        Ok(updated.is_some())
    }

    /// A one-time flag in the index's state tree.
    pub fn state_flag(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.inner.trees.state.get(name.as_bytes())?.is_some())
    }

    /// For tests that stand in for a store written by an older release.
    #[doc(hidden)]
    pub fn clear_state_flag(&self, name: &str) -> Result<(), StoreError> {
        self.inner.trees.state.remove(name.as_bytes())?;
        Ok(())
    }

    pub fn set_state_flag(&self, name: &str) -> Result<(), StoreError> {
        self.inner.trees.state.insert(name.as_bytes(), &[1])?;
        self.flush_index()
    }

    /// A value the layers above keep (`v:` + name in the `state` tree).
    pub fn state_value(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner.trees.state.get(format!("v:{name}"))?.map(|v| v.to_vec()))
    }

    pub fn set_state_value(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.inner.trees.state.insert(format!("v:{name}"), value)?;
        self.flush_index()
    }

    /// Every value whose name starts with `prefix`, in name order.
    pub fn state_values(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.trees.state.scan_prefix(format!("v:{prefix}")) {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k[2..]).into_owned();
            out.push((name, v.to_vec()));
        }
        Ok(out)
    }

    pub fn remove_state_value(&self, name: &str) -> Result<(), StoreError> {
        self.inner.trees.state.remove(format!("v:{name}"))?;
        self.flush_index()
    }

    /// Segments waiting to be rewritten without erased records.
    pub fn shred_queue_len(&self) -> usize {
        self.inner.trees.shred.len()
    }

    /// When segments started waiting to be shredded and when the last was
    /// queued (ms); `None` when none waits.
    pub fn shred_waiting(&self) -> Option<(i64, i64)> {
        let first = self.inner.shred_first_ms.load(Ordering::SeqCst);
        (first != 0).then(|| (first, self.inner.shred_last_ms.load(Ordering::SeqCst)))
    }

    /// Rewrites every queued segment without its erased records, under a
    /// new key, and destroys the old segment and its key, so the erased
    /// records cannot be decrypted from any copy of the old bytes. Returns
    /// how many segments were rewritten. Blocking.
    /// The pass runs on a thread of its own at the lowest CPU priority
    /// (nice 19), so intake's threads always come first.
    pub fn shred(&self) -> Result<u64, StoreError> {
        let store = self.clone();
        std::thread::Builder::new()
            .name("shred".into())
            .spawn(move || {
                // Linux: this thread only. Failing to lower it is harmless.
                let _ = rustix::process::setpriority_process(None, 19);
                store.shred_here()
            })?
            .join()
            .map_err(|_| StoreError::Unavailable("the shred pass panicked".into()))?
    }

    fn shred_pace(&self) -> log::Pace {
        log::Pace {
            step: SHRED_STEP,
            bytes_per_second: self.inner.shred_bytes_per_second,
        }
    }

    fn shred_here(&self) -> Result<u64, StoreError> {
        let t = &self.inner.trees;
        let mut queued = Vec::new();
        for kv in t.shred.iter() {
            let (k, _) = kv?;
            if let Ok(b) = <[u8; 8]>::try_from(k.as_ref()) {
                queued.push(u64::from_be_bytes(b));
            }
        }
        if queued.is_empty() {
            return Ok(0);
        }
        // The open segment has to be closed before it can be rewritten.
        if self.open_segment()?.is_some_and(|open| queued.contains(&open)) {
            self.roll_segment_blocking()?;
        }
        // A rewrite keeps the records the index points at: every record
        // acknowledged so far must be in the index first.
        self.wait_indexed()?;
        let mut rewritten = 0;
        let wait_until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for seq in queued {
            if !self.fresh_finished_up_to(seq, wait_until) {
                tracing::debug!(
                    seq,
                    "Shred: segment left for the next pass (fresh events in it not handled yet)."
                );
                continue;
            }
            // One segment at a time (a backup waits for one, not the pass).
            let _one = self.inner.shred_lock.lock().unwrap_or_else(|p| p.into_inner());
            if self.rewrite_segment(seq)? {
                rewritten += 1;
            }
            t.shred.remove(seq.to_be_bytes())?;
        }
        self.flush_index()?;
        // What was queued during the pass waits from now.
        let left = if t.shred.is_empty() { 0 } else { now_ms() };
        self.inner.shred_first_ms.store(left, Ordering::SeqCst);
        Ok(rewritten)
    }

    /// Waits until the indexer has applied every batch the committer had
    /// made durable when this was called (the segments to rewrite are all
    /// closed by then, so that covers each of their records). Refuses while
    /// indexing fails: a record the index could not take is only in its
    /// segment, which a rewrite would drop it from.
    fn wait_indexed(&self) -> Result<(), StoreError> {
        let shared = &self.inner.shared;
        let target = shared.batches_sent.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        while shared.batches_indexed.load(Ordering::SeqCst) < target {
            if shared.closed.load(Ordering::SeqCst) {
                return Err(StoreError::Closed);
            }
            if started.elapsed() > std::time::Duration::from_secs(60) {
                return Err(StoreError::Unavailable(
                    "the index is more than a minute behind intake; the shred pass waits for the next run".into(),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if shared.index_failed.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "indexing failed (see the error logged); nothing is rewritten until it works again".into(),
            ));
        }
        Ok(())
    }

    /// Waits (until `wait_until`: 10 s for a whole pass) until no batch of
    /// fresh events that starts at or before segment `seq` is still being
    /// handled: such an event has no `pending` entry, and after a crash
    /// only its record in the original segment, re-applied from the
    /// checkpoint, queues it again, so that segment must stay until the
    /// batch is done. `false`: still not.
    fn fresh_finished_up_to(&self, seq: u64, wait_until: std::time::Instant) -> bool {
        loop {
            let waiting = self
                .inner
                .shared
                .progress()
                .oldest_unfinished_start()
                .is_some_and(|(s, _)| s <= seq);
            if !waiting {
                return true;
            }
            if std::time::Instant::now() > wait_until || self.inner.shared.closed.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Replaces segment `seq` with a new segment, under a new key, that
    /// holds the records whose events are still indexed there at the same
    /// offsets (filler where the others were), records the replacement,
    /// then destroys the old segment and its key. Index entries keep
    /// pointing at `seq`: reads resolve it (`Readers::resolve`), so a pass
    /// writes one index entry per segment, not one per surviving event.
    fn rewrite_segment(&self, seq: u64) -> Result<bool, StoreError> {
        let shared = &self.inner.shared;
        let Some(cipher) = shared.keyring.get(seq)? else {
            return Ok(false);
        };
        let path = log::segment_path(&self.inner.log_dir, seq);
        if !path.exists() {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let scan = log::scan_paced(&path, &cipher, seq, self.shred_pace())?;
        let read = started.elapsed();
        let mut live = Vec::new();
        let (mut first, mut last) = (i64::MAX, 0);
        for r in scan.records {
            if log::is_filler(&r.plain) {
                continue;
            }
            let Some((meta, _)) = log::split_plaintext(&r.plain) else {
                continue;
            };
            if let Some(current) = self.get(&meta.key)? {
                if current
                    .loc
                    .is_some_and(|l| shared.readers.resolve(l.seg) == seq && l.off == r.off)
                {
                    first = first.min(current.received_ms);
                    last = last.max(current.received_ms);
                    live.push((meta.key, r.off, r.plain));
                }
            }
        }
        let sorted = started.elapsed();
        if live.is_empty() {
            self.drop_segment(seq)?;
            tracing::debug!(
                seq,
                read_ms = read.as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "Shred: segment dropped (nothing left in it)."
            );
            return Ok(true);
        }
        let new_seq = shared.next_seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.trees.state.insert(NEXT_SEQ, &(new_seq + 1).to_be_bytes())?;
        let new_cipher = Arc::new(shared.keyring.create(new_seq)?);
        let mut buf = Vec::new();
        let mut end = log::HEADER_LEN;
        for (_, off, plain) in &live {
            log::frame_filler(&new_cipher, new_seq, end, off - end, &mut buf);
            end = off + u64::from(log::frame_record(&new_cipher, new_seq, *off, &[plain], &mut buf));
        }
        log::create_rewrite(&self.inner.log_dir, new_seq, seq, now_ms())?;
        let path = log::segment_path(&self.inner.log_dir, new_seq);
        log::write_rewrite(&path, &buf, self.shred_pace())?;
        let written = started.elapsed();
        drop(buf);
        shared.readers.register(new_seq, &self.inner.log_dir, new_cipher)?;
        let info = SegmentInfo {
            first_ms: first,
            last_ms: last,
            records: live.len() as u64,
            bytes: end,
            closed: true,
        };
        self.inner.trees.segments.insert(new_seq.to_be_bytes(), info.encode())?;
        let locs = self.inner.loc_lock.lock().unwrap_or_else(|p| p.into_inner());
        shared.readers.set_moved(&self.inner.trees.moved, seq, new_seq)?;
        // An event erased while its record was being copied (a webhook
        // erasure running beside this pass) queued `seq`, not the new
        // segment, which holds its record: queue that one for the next pass.
        let mut erased_meanwhile = false;
        for (key, _, _) in &live {
            if self.get(key)?.is_none() {
                erased_meanwhile = true;
                break;
            }
        }
        if erased_meanwhile {
            self.inner.trees.shred.insert(new_seq.to_be_bytes(), &[])?;
        }
        drop(locs);
        // The replacement must be durable before the old copy goes.
        self.flush_index()?;
        let flushed = started.elapsed();
        self.drop_segment(seq)?;
        tracing::debug!(
            seq,
            new_seq,
            kept = live.len(),
            read_ms = read.as_millis() as u64,
            sorted_ms = (sorted - read).as_millis() as u64,
            write_ms = (written - sorted).as_millis() as u64,
            flush_ms = (flushed - written).as_millis() as u64,
            drop_ms = (started.elapsed() - flushed).as_millis() as u64,
            "Shred: segment rewritten."
        );
        Ok(true)
    }
}
