//! This index's side of the erasure ledger (see [`crate::store::ledger`]):
//! how many lines it has applied.

use super::*;
use crate::store::ledger::{append_lines, parse, read_lines, APPLIED};

/// How many ledger lines the `erased` tree holds the subjects of.
pub(crate) const NOTED: &[u8] = b"ledger_noted";

impl Embedded {
    /// Records an erasure. Call after the erasure is durable in the index.
    pub fn ledger_append(&self, entry: &LedgerEntry) -> Result<(), StoreError> {
        let line = serde_json::to_string(entry).expect("serialising plain data cannot fail");
        append_lines(&self.inner.dir, &[line])?;
        self.note_ledger_tail()
    }

    /// Files the subjects of the ledger lines this index has not noted yet
    /// in the `erased` tree (at open: lines added by a restore's merge, or
    /// before the tree existed; after an append: the new line).
    pub(crate) fn note_ledger_tail(&self) -> Result<(), StoreError> {
        let t = &self.inner.trees;
        let path = self.inner.dir.join(LEDGER_FILE);
        let lines = read_lines(&path)?;
        let noted = t
            .state
            .get(NOTED)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes) as usize;
        for (n, l) in lines.iter().enumerate().skip(noted.min(lines.len())) {
            let entry = parse(l, &path, n)?;
            for s in &entry.subjects {
                let later = t
                    .erased
                    .get(s.as_bytes())?
                    .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                    .map(i64::from_be_bytes)
                    .is_some_and(|at| at >= entry.at_ms);
                if !later {
                    t.erased.insert(s.as_bytes(), &entry.at_ms.to_be_bytes())?;
                }
            }
        }
        t.state.insert(NOTED, &(lines.len() as u64).to_be_bytes())?;
        Ok(())
    }

    /// When a subject key was last erased, if it was.
    pub fn erased_at(&self, subject: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .inner
            .trees
            .erased
            .get(subject.as_bytes())?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes))
    }

    /// The ledger entries this index has not applied yet, and the count to
    /// record once they are.
    pub fn ledger_unapplied(&self) -> Result<(Vec<LedgerEntry>, u64), StoreError> {
        let path = self.inner.dir.join(LEDGER_FILE);
        let lines = read_lines(&path)?;
        let applied = self
            .inner
            .trees
            .state
            .get(APPLIED)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes) as usize;
        let mut out = Vec::new();
        for (n, l) in lines.iter().enumerate().skip(applied.min(lines.len())) {
            out.push(parse(l, &path, n)?);
        }
        Ok((out, lines.len() as u64))
    }

    pub fn ledger_mark_applied(&self, count: u64) -> Result<(), StoreError> {
        self.inner.trees.state.insert(APPLIED, &count.to_be_bytes())?;
        Ok(())
    }

    /// How many lines the ledger has (for `stats` and tests).
    pub fn ledger_len(&self) -> Result<usize, StoreError> {
        Ok(read_lines(&self.inner.dir.join(LEDGER_FILE))?.len())
    }

    pub fn ledger_entries(&self) -> Result<Vec<LedgerEntry>, StoreError> {
        let path = self.inner.dir.join(LEDGER_FILE);
        read_lines(&path)?
            .iter()
            .enumerate()
            .map(|(n, line)| parse(line, &path, n))
            .collect()
    }
}
