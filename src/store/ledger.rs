//! The erasure ledger: an append-only file in the data dir, one line per
//! erasure, naming the subject keys (contact ids, keyed hashes of emails and
//! external ids) and conversation ids that were erased. It lives beside the
//! index, not in it, so that an index rebuilt from the intake log, or one
//! restored from a backup taken before the erasure, can be brought up to
//! date: every line the index has not yet applied is applied again when the
//! store opens (see `crate::erasure::apply_ledger`).
//!
//! Each line is written after the erasure it records is durable in the
//! index, and `fsync`ed before the erasure is reported done. Applying a line
//! twice is harmless, so the applied count may lag behind.
//!
//! The ledger holds no plaintext personal data: contact and conversation
//! ids are Intercom's opaque ids (as tombstones keep them), emails and
//! external ids are keyed hashes. It is kept for as long as the data dir:
//! an old backup can be restored at any time.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::StoreError;

pub const LEDGER_FILE: &str = "erasures.ledger";
/// How many ledger lines this index has applied (u64, big-endian).
pub(crate) const APPLIED: &[u8] = b"ledger_applied";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub at_ms: i64,
    /// Subject keys (see `identifiers`).
    pub subjects: Vec<String>,
    /// Conversation ids tombstoned with the person.
    #[serde(default)]
    pub conversations: Vec<String>,
}

/// The ledger's lines, as text (empty when there is no ledger).
pub fn read_lines(path: &Path) -> Result<Vec<String>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn parse(line: &str, path: &Path, n: usize) -> Result<LedgerEntry, StoreError> {
    serde_json::from_str(line)
        .map_err(|_| StoreError::Corrupt(format!("{} line {} is not a ledger entry", path.display(), n + 1)))
}

/// Appends `lines` to the ledger in `dir` and syncs it (and the dir, when
/// the file is new).
pub fn append_lines(dir: &Path, lines: &[String]) -> Result<(), StoreError> {
    if lines.is_empty() {
        return Ok(());
    }
    let path = dir.join(LEDGER_FILE);
    let existed = path.exists();
    let mut f = crate::fsutil::private_append(&path)?;
    let mut text = String::new();
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    if !existed {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Adds to the ledger in `dir` every line of `other` it does not hold yet
/// (restore: the ledger of the data dir being replaced, which has the
/// erasures made after the backup). Returns how many were added.
pub fn merge(dir: &Path, other: &Path) -> Result<usize, StoreError> {
    if !other.exists() {
        return Err(StoreError::Unavailable(format!(
            "no erasure ledger at {}",
            other.display()
        )));
    }
    let have: std::collections::HashSet<String> = read_lines(&dir.join(LEDGER_FILE))?.into_iter().collect();
    let theirs = read_lines(other)?;
    for (n, l) in theirs.iter().enumerate() {
        parse(l, other, n)?;
    }
    let new: Vec<String> = theirs.into_iter().filter(|l| !have.contains(l)).collect();
    append_lines(dir, &new)?;
    Ok(new.len())
}
