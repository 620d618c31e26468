//! Moving a store into another backend (the embedded store into a fresh
//! PostgreSQL database: `migrate-store`): events with their payloads,
//! statuses and histories, the cache with its expiry and email indexes,
//! tombstones, the erasure ledger, the audit chain and named state values.
//! Both stores must hold the same root keys (so sealed cache values, keyed
//! hashes and the audit chain's MACs stay valid as they are). Not moved:
//! the dedup markers of events already purged (Intercom never redelivers
//! that late: it retries once, about a minute after a failure).

use std::collections::HashMap;

use futures_util::future::join_all;
use serde::Serialize;

use super::{CacheKind, EventFilter, Expiry, Store, StoreError, LEDGER_FILE};

/// What was moved.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CopyReport {
    pub events: u64,
    pub cached_records: u64,
    pub tombstones: u64,
    pub email_index_entries: u64,
    pub erasures: u64,
    pub audit_entries: u64,
}

/// Events appended at once (they share the target's intake batches).
const CHUNK: usize = 256;

/// Copies everything `from` holds into `to` (which should be empty).
/// Blocking: call from a blocking context; `rt` runs the target's appends.
pub fn copy_into(
    from: &Store,
    to: &Store,
    states: &[&str],
    rt: &tokio::runtime::Handle,
    progress: &dyn Fn(u64),
) -> Result<CopyReport, StoreError> {
    let mut report = CopyReport::default();
    // Events, oldest first, a chunk at a time.
    let mut chunk = Vec::with_capacity(CHUNK);
    let flush = |chunk: &mut Vec<(super::EventMeta, bytes::Bytes)>, report: &mut CopyReport| {
        let appends = chunk.drain(..).map(|(meta, body)| to.append_if_absent(meta, body));
        for r in rt.block_on(join_all(appends)) {
            r?;
            report.events += 1;
        }
        progress(report.events);
        Ok::<_, StoreError>(())
    };
    from.for_each(&EventFilter::default(), |meta| {
        if let Some(body) = from.read_body(&meta)? {
            chunk.push((meta, body));
        }
        if chunk.len() >= CHUNK {
            flush(&mut chunk, &mut report)?;
        }
        Ok(())
    })?;
    flush(&mut chunk, &mut report)?;

    // The cache: records filed where they were, tombstones, email index.
    for kind in [CacheKind::Contact, CacheKind::Conversation] {
        let filed: HashMap<String, i64> = from
            .cache_expired(Expiry::Record(kind), i64::MAX, usize::MAX)?
            .into_iter()
            .map(|(ms, id)| (id, ms))
            .collect();
        for (id, value) in from.cache_all(kind)? {
            let at = filed.get(&id).copied();
            to.cache_txn(|tx| {
                tx.get(kind, &id)?;
                tx.put(kind, &id, &value, at)
            })?;
            report.cached_records += 1;
        }
        for (written_ms, id) in from.cache_expired(Expiry::Tombstone(kind), i64::MAX, usize::MAX)? {
            let deleted_at = from.cache_txn(|tx| tx.tombstone(kind, &id))?;
            if let Some(deleted_at) = deleted_at {
                to.cache_txn(|tx| tx.put_tombstone(kind, &id, deleted_at, written_ms))?;
                report.tombstones += 1;
            }
        }
    }
    for (hash, id) in from.email_index_all()? {
        to.cache_txn(|tx| tx.index_email(&hash, &id))?;
        report.email_index_entries += 1;
    }

    // The erasure ledger: every erasure, so the target knows who is erased.
    let path = from.dir().join(LEDGER_FILE);
    for (n, line) in super::ledger::read_lines(&path)?.iter().enumerate() {
        to.ledger_append(&super::ledger::parse(line, &path, n)?)?;
        report.erasures += 1;
    }

    // The audit chain as it is (its MACs hold under the same root keys).
    if let Some((seq, bytes)) = from.audit_anchor()? {
        to.audit_set_anchor(seq, &bytes)?;
    }
    for (seq, bytes) in from.audit_entries()? {
        to.audit_overwrite(seq, &bytes)?;
        report.audit_entries += 1;
    }
    for name in states {
        if let Some(v) = from.state_value(name)? {
            to.set_state_value(name, &v)?;
        }
    }
    Ok(report)
}
