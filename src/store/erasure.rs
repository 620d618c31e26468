//! The store's side of erasure: finding a person's events, forgetting them,
//! and rewriting the log segments that held them under new keys, so the old
//! copies (lingering blocks, backups) become undecryptable when the old
//! segment's key is destroyed.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::event::time_key;
use super::{log, subject_key, EventMeta, Location, SegmentInfo, Store, StoreError, NEXT_SEQ};
use crate::timefmt::now_ms;

/// What an erasure removed from the event store.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ErasedEvents {
    pub events: u64,
    pub segments_rewritten: u64,
}

impl Store {
    /// Events that concern a contact id.
    pub fn events_for_contact(&self, contact_id: &str) -> Result<Vec<EventMeta>, StoreError> {
        let mut prefix = contact_id.as_bytes().to_vec();
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

    /// Forgets events (a dedup marker stays, so a re-delivery is still a
    /// duplicate) and rewrites every log segment that held one of them.
    /// Blocking: call from a blocking context.
    pub fn erase_events(&self, keys: &[String]) -> Result<ErasedEvents, StoreError> {
        let t = &self.inner.trees;
        let mut report = ErasedEvents::default();
        let mut segments = BTreeSet::new();
        for key in keys {
            let Some(m) = self.get(key)? else { continue };
            if let Some(loc) = m.loc {
                segments.insert(loc.seg);
            }
            let tk = time_key(m.received_ms, key);
            t.markers.insert(key.as_bytes(), &m.received_ms.to_be_bytes())?;
            t.markers_by_time.insert(tk.clone(), &[])?;
            t.events.remove(key.as_bytes())?;
            if m.status == super::Status::Failed {
                t.failed.remove(key.as_bytes())?;
            }
            t.by_time.remove(tk.clone())?;
            t.pending.remove(tk)?;
            for c in &m.contact_ids {
                t.subjects.remove(subject_key(c, key))?;
            }
            report.events += 1;
        }
        if segments.is_empty() {
            return Ok(report);
        }
        // The open segment has to be closed before it can be rewritten.
        if self.open_segment()?.is_some_and(|open| segments.contains(&open)) {
            self.roll_segment_blocking()?;
        }
        for seq in segments {
            if self.rewrite_segment(seq)? {
                report.segments_rewritten += 1;
            }
        }
        Ok(report)
    }

    /// Copies the records of segment `seq` whose events are still indexed
    /// there into a new segment under a new key, points their index entries
    /// at it, then destroys the old segment and its key.
    fn rewrite_segment(&self, seq: u64) -> Result<bool, StoreError> {
        let shared = &self.inner.shared;
        let Some(cipher) = shared.keyring.get(seq)? else {
            return Ok(false);
        };
        let path = log::segment_path(&self.inner.log_dir, seq);
        if !path.exists() {
            return Ok(false);
        }
        let scan = log::scan(&path, &cipher, seq, 0)?;
        let mut live = Vec::new();
        for r in scan.records {
            let Some((meta, _)) = log::split_plaintext(&r.plain) else {
                continue;
            };
            if let Some(current) = self.get(&meta.key)? {
                if current.loc.is_some_and(|l| l.seg == seq && l.off == r.off) {
                    live.push((current, r.plain));
                }
            }
        }
        let mut moved = BTreeMap::new();
        if !live.is_empty() {
            let new_seq = shared.next_seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.trees.state.insert(NEXT_SEQ, &(new_seq + 1).to_be_bytes())?;
            let new_cipher = Arc::new(shared.keyring.create(new_seq)?);
            let file = log::create_segment(&self.inner.log_dir, new_seq, now_ms(), log::HEADER_LEN)?;
            let mut buf = Vec::new();
            let mut off = log::HEADER_LEN;
            let (mut first, mut last) = (i64::MAX, 0);
            for (m, plain) in &live {
                let len = log::frame_record(&new_cipher, new_seq, off, &[plain], &mut buf);
                moved.insert(m.key.clone(), Location { seg: new_seq, off, len });
                off += u64::from(len);
                first = first.min(m.received_ms);
                last = last.max(m.received_ms);
            }
            file.write_all_at(&buf, log::HEADER_LEN)?;
            file.sync_data()?;
            shared.readers.register(new_seq, &self.inner.log_dir, new_cipher)?;
            let info = SegmentInfo {
                first_ms: first,
                last_ms: last,
                records: live.len() as u64,
                bytes: off,
                closed: true,
            };
            self.inner.trees.segments.insert(new_seq.to_be_bytes(), info.encode())?;
            for (key, loc) in &moved {
                self.update(key, |m| {
                    if m.loc.is_some_and(|l| l.seg == seq) {
                        m.loc = Some(*loc);
                    }
                })?;
            }
            // The new locations must be durable before the old copy goes.
            self.flush_index()?;
        }
        self.drop_segment(seq)?;
        Ok(true)
    }
}
