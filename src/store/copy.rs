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

use super::{CacheKind, EventFilter, Expiry, Store, StoreError, StoreSettings};

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
    for entry in from.ledger_entries()? {
        to.ledger_append(&entry)?;
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

/// A backup of `from` (a PostgreSQL store) in the embedded store's backup
/// format, which `restore` reads: `from` is copied into an embedded store
/// staged in `stage` (a new directory, private to this user, under the
/// same root keys, so that a restored copy opens with the same data key
/// and its sealed values, keyed hashes and audit MACs hold), that store is
/// backed up into `out`, and `stage` is removed, also when this fails.
/// The copy is consistent per event, not one instant of the whole
/// database: events stored meanwhile may or may not be in it. `states`
/// are the named state values to copy (see [`copy_into`]). Returns what
/// the embedded backup reports, and what was copied. Blocking: on a
/// thread of a tokio runtime's blocking pool, which runs the appends.
pub fn backup_through_embedded(
    from: &Store,
    root: &crate::crypto::RootKeys,
    data_key: &crate::crypto::DataKey,
    stage: &std::path::Path,
    settings: &StoreSettings,
    states: &[&str],
    out: &mut dyn std::io::Write,
) -> Result<((u64, u64), CopyReport), StoreError> {
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| StoreError::Unavailable("a backup of the database needs a tokio runtime".into()))?;
    if stage.exists() {
        return Err(StoreError::Unavailable(format!("{} exists already", stage.display())));
    }
    crate::fsutil::private_dir_all(stage)?;
    let made = (|| {
        // The stage's segment keys are wrapped by a key of this process
        // only, and no root key is written there: what a crash leaves in
        // the stage (removed at the next start) opens for nobody.
        let mut keys = crate::crypto::Keys::from_root(root);
        let staged = super::StagedKeys {
            root_file: crate::crypto::wrap_root(data_key, root),
            wrap_from: crate::crypto::random_key(),
            wrap_to: keys.wrap,
        };
        keys.wrap = staged.wrap_from;
        let mut embedded = settings.clone();
        embedded.postgres = None;
        let (to, _) = Store::open(stage, keys, &embedded)?;
        let copied = copy_into(from, &to, states, &rt, &|_| {});
        crate::failpoint::hit_settled("backup:staged", || {
            let _ = to.flush_index();
        });
        let written = copied.and_then(|report| Ok((to.backup(out, Some(&staged))?, report)));
        to.close()?;
        written
    })();
    let removed = std::fs::remove_dir_all(stage);
    let made = made?;
    removed?;
    Ok(made)
}
