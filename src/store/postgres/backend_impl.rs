//! [`Backend`] for [`Postgres`]: the methods that need no more than a line
//! or two; the rest forward to the modules that own them.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use crossbeam_channel::Receiver;

use super::{now, Postgres};
use crate::crypto::Keys;
use crate::store::backend::{Backend, BatchRun, BoxFuture, ErasedEvents, ExpiredEvents, HandlerRun};
use crate::store::{
    Appended, CacheKind, CacheTx, Completion, Counts, EventFilter, EventMeta, EventPage, Expiry, LedgerEntry, Snapshot,
    StoreError, TxResult, Work,
};

impl Backend for Postgres {
    fn close(&self) -> Result<(), StoreError> {
        self.close_inner()
    }

    fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    fn not_writable(&self) -> Option<&'static str> {
        let c = &self.inner.cached;
        if self.inner.closed.load(Ordering::SeqCst) {
            Some("the store is closed")
        } else if c.read_only.load(Ordering::SeqCst) {
            Some("the database is read-only (a standby)")
        } else if c.unhealthy.load(Ordering::SeqCst) || self.inner.failing.load(Ordering::SeqCst) {
            Some("the database does not commit (down, unreachable, or waiting for its synchronous standby)")
        } else {
            None
        }
    }

    fn fsync_stats(&self) -> (u64, u64) {
        (
            self.inner.commits.load(Ordering::Relaxed),
            self.inner.commit_us.load(Ordering::Relaxed),
        )
    }

    fn size_on_disk(&self) -> u64 {
        self.inner.cached.size.load(Ordering::SeqCst)
    }

    /// The database's disk is the database's to watch.
    fn free_space(&self) -> Option<u64> {
        None
    }

    /// Every commit is durable (contract 1); nothing is held back.
    fn flush_index(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Backups of this backend are the database's own (`pg_dump`, base
    /// backups with WAL archiving): a copy taken here would be neither
    /// consistent with the replicas' writes nor restorable as one.
    fn backup(
        &self,
        _out: &mut dyn Write,
        _staged: Option<&crate::store::StagedKeys>,
    ) -> Result<(u64, u64), StoreError> {
        Err(StoreError::Unavailable(
            "the PostgreSQL backend is backed up with PostgreSQL's own tools (pg_dump, or base backups with WAL archiving): see docs/postgres.md".into(),
        ))
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn append_if_absent(&self, meta: EventMeta, body: Bytes) -> BoxFuture<'_, Result<Appended, StoreError>> {
        Box::pin(async move {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let packed = super::keys::pack(&body)?;
            self.inner
                .intake_tx
                .send(super::intake::AppendReq {
                    meta,
                    body,
                    packed,
                    reply,
                })
                .await
                .map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }

    /// The workers' queue; the first call starts claiming work for it (an
    /// operator command that never runs workers claims nothing).
    fn work_queue(&self) -> Receiver<Work> {
        self.start_claiming();
        self.inner.work_rx.clone()
    }

    /// Claims the event for this replica (unless another holds it), then
    /// queues it here. Returns at once.
    fn enqueue(&self, key: String) {
        let store = self.clone();
        self.inner.rt.spawn(async move {
            match super::queue::claim(&store, Some(&key)).await {
                Ok(claimed) if !claimed.is_empty() => {
                    let _ = store.inner.work_tx.send(Work {
                        key,
                        fresh: None,
                        queued_ms: now(),
                    });
                }
                Ok(_) => {}
                // The claimer finds it later.
                Err(e) => tracing::warn!(error = %e, "Claiming an event failed; it stays queued."),
            }
        });
    }

    fn queued_keys(&self) -> Result<Vec<String>, StoreError> {
        Postgres::queued_keys(self)
    }

    fn fresh_finished(&self, _batch: u64) {}

    /// The event's status is its queue entry here.
    fn keep_queued(&self, _key: &str, _received_ms: i64) -> Result<(), StoreError> {
        Ok(())
    }

    fn pending_depth(&self) -> usize {
        self.inner.cached.pending.load(Ordering::SeqCst) as usize
    }

    fn oldest_pending_ms(&self) -> Result<Option<i64>, StoreError> {
        Postgres::oldest_pending_ms(self)
    }

    fn get(&self, key: &str) -> Result<Option<EventMeta>, StoreError> {
        Postgres::get(self, key)
    }

    fn snapshot(&self, key: &str) -> Result<Option<Snapshot>, StoreError> {
        Postgres::snapshot(self, key)
    }

    fn update_dyn(&self, key: &str, f: &dyn Fn(&mut EventMeta)) -> Result<Option<EventMeta>, StoreError> {
        Postgres::update_dyn(self, key, f)
    }

    fn read_body(&self, meta: &EventMeta) -> Result<Option<Bytes>, StoreError> {
        Postgres::read_body(self, meta)
    }

    fn complete(&self, seen: &Snapshot, completion: &Completion) -> Result<Option<EventMeta>, StoreError> {
        Postgres::complete(self, seen, completion)
    }

    fn list(&self, filter: &EventFilter, after: Option<&str>, limit: usize) -> Result<EventPage, StoreError> {
        Postgres::list(self, filter, after, limit)
    }

    fn for_each_dyn(
        &self,
        filter: &EventFilter,
        f: &mut dyn FnMut(EventMeta) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        Postgres::for_each_dyn(self, filter, f)
    }

    fn counts(&self) -> Result<Counts, StoreError> {
        Postgres::counts(self)
    }

    fn failed_count(&self) -> Result<usize, StoreError> {
        Postgres::failed_count(self)
    }

    fn last_received_ms(&self) -> Result<Option<i64>, StoreError> {
        Postgres::last_received_ms(self)
    }

    fn cache_attempts(&self, f: &mut dyn FnMut(&dyn CacheTx) -> TxResult<()>) -> Result<(), StoreError> {
        Postgres::cache_attempts(self, f)
    }

    fn apply_and_complete(
        &self,
        seen: &Snapshot,
        effects: &mut dyn FnMut(&dyn CacheTx) -> TxResult<()>,
        outcome: &dyn Fn(&Result<(), StoreError>) -> Completion,
    ) -> Result<HandlerRun, StoreError> {
        Postgres::apply_and_complete(self, seen, effects, outcome)
    }

    fn handler_batch(&self) -> usize {
        super::cache_batch::BATCH
    }

    fn apply_and_complete_batch(
        &self,
        runs: &mut [BatchRun<'_>],
    ) -> Result<Option<Vec<Option<EventMeta>>>, StoreError> {
        Postgres::apply_and_complete_batch(self, runs)
    }

    fn cache_get(&self, kind: CacheKind, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Postgres::cache_get(self, kind, id)
    }

    fn cache_rewrite(&self, kind: CacheKind, id: &str, value: &[u8]) -> Result<bool, StoreError> {
        Postgres::cache_rewrite(self, kind, id, value)
    }

    fn cache_clear(&self) -> Result<u64, StoreError> {
        Postgres::cache_clear(self)
    }

    fn cache_all(&self, kind: CacheKind) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Postgres::cache_all(self, kind)
    }

    fn cache_expired(&self, class: Expiry, before_ms: i64, limit: usize) -> Result<Vec<(i64, String)>, StoreError> {
        Postgres::cache_expired(self, class, before_ms, limit)
    }

    fn count_cache_expired(&self, class: Expiry, before_ms: i64) -> Result<u64, StoreError> {
        Postgres::count_cache_expired(self, class, before_ms)
    }

    fn contacts_for_email_hash(&self, hash: &str) -> Result<Vec<String>, StoreError> {
        Postgres::contacts_for_email_hash(self, hash)
    }

    fn email_index_all(&self) -> Result<Vec<(String, String)>, StoreError> {
        Postgres::email_index_all(self)
    }

    fn audit_set_anchor(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        Postgres::audit_set_anchor(self, seq, bytes)
    }

    fn events_for_subject(&self, subject: &str) -> Result<Vec<EventMeta>, StoreError> {
        Postgres::events_for_subject(self, subject)
    }

    fn erase_events(&self, keys: &[String], durable: bool) -> Result<ErasedEvents, StoreError> {
        Postgres::erase_events(self, keys, durable)
    }

    fn set_subjects(&self, key: &str, subjects: Vec<String>) -> Result<bool, StoreError> {
        Postgres::set_subjects(self, key, subjects)
    }

    fn shred(&self) -> Result<u64, StoreError> {
        Postgres::shred(self)
    }

    fn shred_queue_len(&self) -> usize {
        self.inner.cached.shred_parts.load(Ordering::SeqCst) as usize
    }

    fn shred_waiting(&self) -> Option<(i64, i64)> {
        let c = &self.inner.cached;
        let first = c.shred_first_ms.load(Ordering::SeqCst);
        (first != 0).then(|| (first, c.shred_last_ms.load(Ordering::SeqCst)))
    }

    fn ledger_append(&self, entry: &LedgerEntry) -> Result<(), StoreError> {
        Postgres::ledger_append(self, entry)
    }

    fn ledger_unapplied(&self) -> Result<(Vec<LedgerEntry>, u64), StoreError> {
        Postgres::ledger_unapplied(self)
    }

    fn ledger_mark_applied(&self, _count: u64) -> Result<(), StoreError> {
        Ok(())
    }

    fn ledger_len(&self) -> Result<usize, StoreError> {
        Postgres::ledger_len(self)
    }

    fn ledger_entries(&self) -> Result<Vec<LedgerEntry>, StoreError> {
        Postgres::ledger_entries(self)
    }

    fn erased_at(&self, subject: &str) -> Result<Option<i64>, StoreError> {
        Postgres::erased_at(self, subject)
    }

    fn erased_among(&self, subjects: &[String]) -> Result<HashMap<String, i64>, StoreError> {
        Postgres::erased_among(self, subjects)
    }

    fn state_flag(&self, name: &str) -> Result<bool, StoreError> {
        Postgres::state_flag(self, name)
    }

    fn set_state_flag(&self, name: &str) -> Result<(), StoreError> {
        Postgres::set_state_flag(self, name)
    }

    fn clear_state_flag(&self, name: &str) -> Result<(), StoreError> {
        Postgres::clear_state_flag(self, name)
    }

    fn state_value(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Postgres::state_value(self, name)
    }

    fn set_state_value(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        Postgres::set_state_value(self, name, value)
    }

    fn state_values(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Postgres::state_values(self, prefix)
    }

    fn remove_state_value(&self, name: &str) -> Result<(), StoreError> {
        Postgres::remove_state_value(self, name)
    }

    fn expire_events(&self, before_ms: i64, batch: usize) -> Result<ExpiredEvents, StoreError> {
        Postgres::expire_events(self, before_ms, batch)
    }

    fn count_expired_events(&self, before_ms: i64) -> Result<ExpiredEvents, StoreError> {
        Postgres::count_expired_events(self, before_ms)
    }

    fn remove_expired_markers(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
        Postgres::remove_expired_markers(self, before_ms, limit)
    }

    fn count_expired_markers(&self, before_ms: i64) -> Result<u64, StoreError> {
        Postgres::count_expired_markers(self, before_ms)
    }

    fn audit_append_dyn(&self, make: &mut dyn FnMut(Option<(u64, Vec<u8>)>) -> Vec<u8>) -> Result<u64, StoreError> {
        Postgres::audit_append_dyn(self, make)
    }

    fn audit_entries(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        Postgres::audit_entries(self)
    }

    fn audit_anchor(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Postgres::audit_anchor(self)
    }

    fn audit_remove_expired_dyn(&self, expired: &dyn Fn(&[u8]) -> bool, limit: usize) -> Result<u64, StoreError> {
        Postgres::audit_remove_expired_dyn(self, expired, limit)
    }

    fn audit_overwrite(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        Postgres::audit_overwrite(self, seq, bytes)
    }

    fn audit_remove_newest_for_tests(&self) -> Result<(), StoreError> {
        Postgres::audit_remove_newest_for_tests(self)
    }
}
