//! The append-only audit tree (entries are opaque bytes here; `audit`
//! above builds and checks them) and its anchor.

use super::*;

const AUDIT_ANCHOR: &[u8] = b"audit_anchor";

impl Embedded {
    /// Appends an audit entry built by `make` from the previous entry's
    /// sequence number and bytes; entries are appended one at a time.
    pub fn audit_append(&self, make: impl FnOnce(Option<(u64, Vec<u8>)>) -> Vec<u8>) -> Result<u64, StoreError> {
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
    pub fn audit_entries(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.trees.audit.iter() {
            let (k, v) = kv?;
            out.push((u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])), v.to_vec()));
        }
        Ok(out)
    }

    /// The last removed entry (its sequence and bytes): the chain's anchor
    /// once old entries have expired.
    pub fn audit_anchor(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self
            .inner
            .trees
            .state
            .get(AUDIT_ANCHOR)?
            .map(|v| (u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8])), v[8..].to_vec())))
    }

    pub fn audit_set_anchor(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let mut anchor = seq.to_be_bytes().to_vec();
        anchor.extend_from_slice(bytes);
        self.inner.trees.state.insert(AUDIT_ANCHOR, anchor)?;
        Ok(())
    }

    /// Removes the oldest audit entries for which `expired` holds, keeping
    /// the last removed one as the anchor. Returns how many went.
    pub fn audit_remove_expired(&self, expired: impl Fn(&[u8]) -> bool, limit: usize) -> Result<u64, StoreError> {
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
