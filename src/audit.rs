//! The audit log: append-only, hash-chained, no plaintext personal data.
//! Each entry's `hash` is SHA-256 over the previous entry's hash and the
//! entry's own canonical fields, so changing, removing or reordering any
//! entry breaks the chain from there on; `verify` names the first bad one.
//! Expired entries are removed from the front only, and the last removed
//! entry's hash stays as the anchor the remaining chain must start from.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};
use crate::timefmt::{format_ms, now_ms};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: i64,
    /// `purge`, `cache_clear`, `replay`, ...
    pub action: String,
    /// Counts, cut-offs and keyed hashes; never plaintext personal data.
    pub details: Value,
    pub prev_hash: String,
    pub hash: String,
}

fn entry_hash(prev_hash: &str, seq: u64, at_ms: i64, action: &str, details: &Value) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(
        json!({"seq": seq, "at_ms": at_ms, "action": action, "details": details})
            .to_string()
            .as_bytes(),
    );
    hex::encode(h.finalize())
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Appends an entry and makes it durable before returning.
pub fn append(store: &Store, action: &str, details: Value) -> Result<u64, StoreError> {
    let at_ms = now_ms();
    let seq = store.audit_append(|last| {
        let (seq, prev_hash) = match last {
            Some((s, bytes)) => (
                s + 1,
                serde_json::from_slice::<AuditEntry>(&bytes)
                    .map(|e| e.hash)
                    .unwrap_or_else(|_| "unreadable".into()),
            ),
            None => (1, GENESIS.to_string()),
        };
        let hash = entry_hash(&prev_hash, seq, at_ms, action, &details);
        let entry = AuditEntry {
            seq,
            at_ms,
            action: action.to_string(),
            details: details.clone(),
            prev_hash,
            hash,
        };
        serde_json::to_vec(&entry).expect("serialising plain data cannot fail")
    })?;
    store.flush_index()?;
    Ok(seq)
}

pub fn list(store: &Store) -> Result<Value, StoreError> {
    let entries: Vec<Value> = store
        .audit_entries()?
        .into_iter()
        .map(|(seq, bytes)| match serde_json::from_slice::<AuditEntry>(&bytes) {
            Ok(e) => json!({"seq": e.seq, "at": format_ms(e.at_ms), "action": e.action, "details": e.details, "hash": e.hash}),
            Err(_) => json!({"seq": seq, "unreadable": true}),
        })
        .collect();
    Ok(json!({ "entries": entries }))
}

/// Checks the chain. `ok: false` names the first entry that does not fit.
pub fn verify(store: &Store) -> Result<Value, StoreError> {
    let entries = store.audit_entries()?;
    let (mut expected_seq, mut prev_hash) = match store.audit_anchor()? {
        Some((seq, bytes)) => (
            seq + 1,
            serde_json::from_slice::<AuditEntry>(&bytes)
                .map(|e| e.hash)
                .unwrap_or_default(),
        ),
        None => (1, GENESIS.to_string()),
    };
    let total = entries.len();
    for (seq, bytes) in entries {
        let problem = match serde_json::from_slice::<AuditEntry>(&bytes) {
            Err(_) => Some("entry is unreadable"),
            Ok(e) if e.seq != seq || seq != expected_seq => {
                Some("entry is out of sequence (removed or reordered entries)")
            }
            Ok(e) if e.prev_hash != prev_hash => Some("entry does not link to the one before it"),
            Ok(e) if entry_hash(&e.prev_hash, e.seq, e.at_ms, &e.action, &e.details) != e.hash => {
                Some("entry was altered")
            }
            Ok(e) => {
                prev_hash = e.hash;
                None
            }
        };
        if let Some(reason) = problem {
            return Ok(json!({"ok": false, "entries": total, "first_bad_seq": seq, "reason": reason}));
        }
        expected_seq += 1;
    }
    Ok(json!({"ok": true, "entries": total}))
}

/// Removes entries older than `before_ms` from the front of the chain.
pub fn expire(store: &Store, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
    store.audit_remove_expired(
        |bytes| {
            serde_json::from_slice::<AuditEntry>(bytes)
                .map(|e| e.at_ms < before_ms)
                .unwrap_or(false)
        },
        limit,
    )
}

pub fn count_expired(store: &Store, before_ms: i64) -> Result<u64, StoreError> {
    let entries = store.audit_entries()?;
    let keep_last = entries.len().saturating_sub(1);
    Ok(entries
        .iter()
        .take(keep_last)
        .take_while(|(_, b)| {
            serde_json::from_slice::<AuditEntry>(b)
                .map(|e| e.at_ms < before_ms)
                .unwrap_or(false)
        })
        .count() as u64)
}
