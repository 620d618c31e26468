//! The audit log: append-only, chained, authenticated, no plaintext
//! personal data. Each entry's `hash` is HMAC-SHA256, under a key derived
//! from the data dir's keys (`Keys::audit_mac`), over the previous entry's
//! hash and the entry's own canonical fields: changing, removing or
//! reordering any entry breaks the chain from there on, and recomputing the
//! chain after an edit needs the key. `verify` names the first bad entry.
//!
//! The chain's head (sequence and hash) is logged at every append and shown
//! by `verify`; checked against a head recorded elsewhere (`--expect-head`),
//! it also shows a tail that was cut off, which a chain alone cannot.
//! Expired entries are removed from the front only, and the last removed
//! entry's hash stays as the anchor the remaining chain must start from.
//!
//! Expiry is authorised by the chain itself: before old entries go, an
//! `audit_expired` entry is appended whose *floor* (a field of every
//! version 3 entry, covered by its MAC and carried forward by every later
//! one) says through which sequence number entries may be missing. `verify`
//! fails when the log starts after the newest entry's floor: removing old
//! entries and moving the anchor forward needs the key (issue #29, item 5).
//!
//! Entries of releases before the key (version 1, plain SHA-256) are
//! checked once as they were and re-authenticated when the store opens
//! ([`upgrade`]); after that an unkeyed entry is a broken one. A chain whose
//! newest entry predates floors (version 2) gets an `audit_anchored` entry
//! at that first open, with the anchor it has then as its floor.

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
    /// 3: keyed, with a floor; 2: keyed (HMAC); 1 (absent): plain
    /// SHA-256, from older releases.
    #[serde(default = "v1")]
    pub v: u8,
    /// Version 3: entries up to this sequence number may have expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<u64>,
}

fn v1() -> u8 {
    1
}

fn canonical(prev_hash: &str, seq: u64, at_ms: i64, action: &str, details: &Value) -> Vec<u8> {
    let mut out = prev_hash.as_bytes().to_vec();
    out.push(b'\n');
    out.extend_from_slice(
        json!({"seq": seq, "at_ms": at_ms, "action": action, "details": details})
            .to_string()
            .as_bytes(),
    );
    out
}

/// Version 3: the floor is covered too.
fn canonical_v3(prev_hash: &str, seq: u64, at_ms: i64, action: &str, details: &Value, floor: u64) -> Vec<u8> {
    let mut out = prev_hash.as_bytes().to_vec();
    out.push(b'\n');
    out.extend_from_slice(
        json!({"seq": seq, "at_ms": at_ms, "action": action, "details": details, "floor": floor})
            .to_string()
            .as_bytes(),
    );
    out
}

/// The unkeyed hash of version 1 entries.
fn entry_hash_v1(prev_hash: &str, seq: u64, at_ms: i64, action: &str, details: &Value) -> String {
    hex::encode(Sha256::digest(canonical(prev_hash, seq, at_ms, action, details)))
}

fn entry_mac(key: &[u8; 32], prev_hash: &str, seq: u64, at_ms: i64, action: &str, details: &Value) -> String {
    crate::crypto::keyed_hash(key, &canonical(prev_hash, seq, at_ms, action, details))
}

impl AuditEntry {
    /// Whether the entry's hash is right under `key` (version 1 entries:
    /// under plain SHA-256, whatever the key).
    pub fn authentic_under(&self, key: &[u8; 32]) -> bool {
        self.expected_hash(key) == self.hash
    }

    fn expected_hash(&self, key: &[u8; 32]) -> String {
        match (self.v, self.floor) {
            (3, Some(floor)) => crate::crypto::keyed_hash(
                key,
                &canonical_v3(
                    &self.prev_hash,
                    self.seq,
                    self.at_ms,
                    &self.action,
                    &self.details,
                    floor,
                ),
            ),
            (3, None) => String::new(),
            (2, _) => entry_mac(key, &self.prev_hash, self.seq, self.at_ms, &self.action, &self.details),
            _ => entry_hash_v1(&self.prev_hash, self.seq, self.at_ms, &self.action, &self.details),
        }
    }

    /// The floor this entry passes on: its own (version 3), or none.
    fn floor_or_zero(&self) -> u64 {
        self.floor.filter(|_| self.v == 3).unwrap_or(0)
    }
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Appends an entry and makes it durable before returning.
pub fn append(store: &Store, action: &str, details: Value) -> Result<u64, StoreError> {
    let seq = append_lazy(store, action, details)?;
    store.flush_index()?;
    Ok(seq)
}

/// Appends an entry, durable with the next checkpoint (within a second):
/// for entries whose action is redone if a crash loses them.
pub fn append_lazy(store: &Store, action: &str, details: Value) -> Result<u64, StoreError> {
    append_with_floor(store, action, details, 0)
}

/// Appends an entry whose floor is at least `floor` (and at least the
/// previous entry's, and the anchor's when entries before floors lead up
/// to it).
fn append_with_floor(store: &Store, action: &str, details: Value, floor: u64) -> Result<u64, StoreError> {
    let at_ms = now_ms();
    let key = store.keys().audit_mac;
    // Only read when the entry before has no floor (a chain that an older
    // release wrote, or a fresh one): purges move the anchor only after an
    // entry with the new floor, so a stale read cannot lower a floor.
    let anchor_seq = store.audit_anchor()?.map_or(0, |(seq, _)| seq);
    let head = std::sync::Mutex::new(String::new());
    let seq = store.audit_append(|last| {
        let (seq, prev_hash, inherited) = match last {
            Some((s, bytes)) => match serde_json::from_slice::<AuditEntry>(&bytes) {
                Ok(e) if e.v == 3 => (s + 1, e.hash.clone(), e.floor_or_zero()),
                Ok(e) => (s + 1, e.hash, anchor_seq),
                Err(_) => (s + 1, "unreadable".into(), anchor_seq),
            },
            None => (1, GENESIS.to_string(), 0),
        };
        let floor = floor.max(inherited);
        let hash = crate::crypto::keyed_hash(&key, &canonical_v3(&prev_hash, seq, at_ms, action, &details, floor));
        *head.lock().unwrap_or_else(|p| p.into_inner()) = hash.clone();
        let entry = AuditEntry {
            seq,
            at_ms,
            action: action.to_string(),
            details: details.clone(),
            prev_hash,
            hash,
            v: 3,
            floor: Some(floor),
        };
        serde_json::to_vec(&entry).expect("serialising plain data cannot fail")
    })?;
    let head = head.into_inner().unwrap_or_else(|p| p.into_inner());
    // The head, for a log collector to keep where the store cannot reach:
    // `audit verify --expect-head SEQ:HASH` then shows a cut-off tail.
    tracing::info!(audit_seq = seq, audit_head = %head, action, "Audit entry appended.");
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

/// A head recorded elsewhere: `SEQ:HASH`.
pub fn parse_head(text: &str) -> Option<(u64, String)> {
    let (seq, hash) = text.trim().split_once(':')?;
    let hash = hash.trim().to_ascii_lowercase();
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some((seq.trim().parse().ok()?, hash))
}

/// Checks the chain, and with `expect_head` that the entry recorded
/// elsewhere is still there, unchanged. `ok: false` names the first entry
/// that does not fit.
pub fn verify(store: &Store, expect_head: Option<(u64, String)>) -> Result<Value, StoreError> {
    let key = store.keys().audit_mac;
    let entries = store.audit_entries()?;
    let (anchor_seq, mut prev_hash) = match store.audit_anchor()? {
        Some((seq, bytes)) => (
            seq,
            serde_json::from_slice::<AuditEntry>(&bytes)
                .map(|e| e.hash)
                .unwrap_or_default(),
        ),
        None => (0, GENESIS.to_string()),
    };
    let mut expected_seq = anchor_seq + 1;
    let total = entries.len();
    let mut hashes = std::collections::HashMap::new();
    // The newest floor, once entries carry one.
    let mut floor: Option<u64> = None;
    for (seq, bytes) in entries {
        let problem = match serde_json::from_slice::<AuditEntry>(&bytes) {
            Err(_) => Some("entry is unreadable"),
            Ok(e) if e.seq != seq || seq != expected_seq => {
                Some("entry is out of sequence (removed or reordered entries)")
            }
            Ok(e) if e.prev_hash != prev_hash => Some("entry does not link to the one before it"),
            Ok(e) if e.v < 2 || e.v > 3 => Some("entry is not authenticated (an unkeyed entry after the upgrade)"),
            Ok(e) if e.v == 2 && floor.is_some() => Some("entry is of an older version than the one before it"),
            Ok(e) if e.expected_hash(&key) != e.hash => Some("entry was altered"),
            Ok(e) if e.v == 3 && floor.is_some_and(|f| e.floor_or_zero() < f) => {
                Some("entry lowers the floor the one before it set")
            }
            Ok(e) => {
                if e.v == 3 {
                    floor = Some(e.floor_or_zero());
                }
                hashes.insert(e.seq, e.hash.clone());
                prev_hash = e.hash;
                None
            }
        };
        if let Some(reason) = problem {
            return Ok(json!({"ok": false, "entries": total, "first_bad_seq": seq, "reason": reason}));
        }
        expected_seq += 1;
    }
    let last_seq = expected_seq - 1;
    let head = json!({"seq": last_seq, "hash": if last_seq == 0 { Value::Null } else { json!(prev_hash) }});
    if let Some(f) = floor.filter(|f| anchor_seq > *f) {
        return Ok(json!({
            "ok": false,
            "entries": total,
            "head": head,
            "first_bad_seq": f + 1,
            "reason": format!(
                "entries {}-{anchor_seq} were removed without the key: the log may start after entry {f} only",
                f + 1
            ),
        }));
    }
    // Whether the log's start is backed by a floor: false only for a chain
    // that an older release wrote and this one has not opened yet.
    let start_checked = floor.is_some() || anchor_seq == 0;
    let checked = expect_head.is_some();
    if let Some((seq, hash)) = expect_head {
        let problem = if seq > last_seq {
            Some(format!(
                "the log ends at entry {last_seq}, before the expected head {seq}: entries were cut off"
            ))
        } else if seq <= anchor_seq {
            Some(format!(
                "the expected head {seq} has expired (retention) and cannot be checked"
            ))
        } else if hashes.get(&seq) != Some(&hash) {
            Some(format!("entry {seq} is not the expected head: the chain was rewritten"))
        } else {
            None
        };
        if let Some(reason) = problem {
            return Ok(json!({"ok": false, "entries": total, "head": head, "reason": reason}));
        }
    }
    Ok(json!({
        "ok": true,
        "entries": total,
        "head": head,
        "expected_head_checked": checked,
        "start_checked": start_checked,
    }))
}

/// Re-authenticates a chain written by a release before the keyed audit:
/// if every entry checks out as it was written (plain SHA-256), the chain is
/// rewritten entry by entry under the key. A chain that does not check out
/// is left alone, so `verify` goes on naming its first bad entry.
///
/// Then, if the newest entry has no floor, an `audit_anchored` entry is
/// appended with the anchor the chain starts from as its floor, so that
/// moving the start later needs the key.
pub fn upgrade(store: &Store) -> Result<u64, StoreError> {
    let entries = store.audit_entries()?;
    let rechained = if entries
        .iter()
        .all(|(_, b)| serde_json::from_slice::<AuditEntry>(b).is_ok_and(|e| e.v >= 2))
    {
        0
    } else {
        rechain(
            store,
            |e| e.v >= 2 || e.expected_hash(&[0; 32]) == e.hash,
            &store.keys().audit_mac,
        )?
    };
    let newest_has_floor = entries
        .last()
        .and_then(|(_, b)| serde_json::from_slice::<AuditEntry>(b).ok())
        .is_some_and(|e| e.v == 3);
    if !entries.is_empty() && !newest_has_floor {
        let anchor = store.audit_anchor()?.map_or(0, |(seq, _)| seq);
        append_with_floor(store, "audit_anchored", json!({ "through_seq": anchor }), anchor)?;
        store.flush_index()?;
    }
    Ok(rechained)
}

/// Rewrites every entry's link and MAC under `key`, after checking each one
/// with `valid` (as it stands). Returns how many were rewritten, or 0 (and
/// changes nothing) if any entry does not check out.
pub(crate) fn rechain(store: &Store, valid: impl Fn(&AuditEntry) -> bool, key: &[u8; 32]) -> Result<u64, StoreError> {
    let mut prev = match store.audit_anchor()? {
        Some((_, bytes)) => serde_json::from_slice::<AuditEntry>(&bytes)
            .map(|e| e.hash)
            .unwrap_or_default(),
        None => GENESIS.to_string(),
    };
    let mut parsed = Vec::new();
    let mut linked = prev.clone();
    for (seq, b) in store.audit_entries()? {
        match serde_json::from_slice::<AuditEntry>(&b) {
            Ok(e) if e.seq == seq && e.prev_hash == linked && valid(&e) => {
                linked = e.hash.clone();
                parsed.push(e);
            }
            _ => {
                tracing::error!("The audit log does not verify; it was left as it is (see `audit verify`).");
                return Ok(0);
            }
        }
    }
    let n = parsed.len() as u64;
    for mut e in parsed {
        e.prev_hash = prev;
        e.v = e.v.max(2);
        e.hash = e.expected_hash(key);
        prev = e.hash.clone();
        store.audit_overwrite(
            e.seq,
            &serde_json::to_vec(&e).expect("serialising plain data cannot fail"),
        )?;
    }
    store.flush_index()?;
    Ok(n)
}

/// Removes up to `limit` entries older than `before_ms` from the front of
/// the chain (never the newest). First an `audit_expired` entry raises the
/// floor to the last of them, durably, so the shorter chain verifies; a
/// crash before they go leaves a floor above the start, which is fine.
pub fn expire(store: &Store, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
    let entries = store.audit_entries()?;
    let keep_last = entries.len().saturating_sub(1);
    let Some(through) = entries
        .iter()
        .take(keep_last.min(limit))
        .map_while(|(_, b)| {
            serde_json::from_slice::<AuditEntry>(b)
                .ok()
                .filter(|e| e.at_ms < before_ms)
                .map(|e| e.seq)
        })
        .last()
    else {
        return Ok(0);
    };
    drop(entries);
    append_with_floor(store, "audit_expired", json!({ "through_seq": through }), through)?;
    store.flush_index()?;
    store.audit_remove_expired(
        |bytes| {
            serde_json::from_slice::<AuditEntry>(bytes)
                .map(|e| e.seq <= through && e.at_ms < before_ms)
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
