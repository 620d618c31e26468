//! The storage seam: [`Backend`], what the layers above need of a store,
//! and the contract any implementation must honour.
//!
//! # The contract
//!
//! The layers above (HTTP, ingest, workers, handlers, ops, privacy) rely on
//! these properties and on nothing else about how they are met. A second
//! backend (PostgreSQL, say) is correct exactly when it keeps them; the
//! integration tests named below check them against this one.
//!
//! 1. **A `200` is on stable media.** [`Backend::append_if_absent`] returns
//!    [`Appended::Stored`] only once the event's metadata *and* raw body
//!    would survive a power cut (here: the log segment is `fdatasync`ed; a
//!    database: the commit is flushed, and replicated where it promises
//!    availability). It never returns `Stored` twice for one key; a
//!    concurrent duplicate returns [`Appended::Duplicate`] only after the
//!    first copy is durable. An error means nothing may be acknowledged.
//!    Tests: `tests/crash.rs`, `tests/full_disk.rs`.
//! 2. **Every stored event reaches a worker at least once.** A stored
//!    event is queued ([`Backend::work_queue`]) until an outcome is recorded
//!    for it; a crash before that queues it again at open
//!    ([`Backend::queued_keys`]). Handlers are idempotent, so twice is safe.
//! 3. **Outcomes are compare-and-swap.** [`Backend::complete`] records an
//!    outcome against the [`Snapshot`] the worker read; a change in
//!    between (a duplicate delivery counted) is merged, never lost. The
//!    `pending` and `failed` entries follow the status (the `failed` entry
//!    may outlive its status after a crash, never the reverse).
//! 4. **Cache writes are transactions.** Everything inside one
//!    [`Store::cache_txn`](super::Store::cache_txn) (record, expiry entry, email index, tombstone)
//!    commits together or not at all, and is retried on conflict; the rules
//!    themselves live above the store, in `cache_rules`.
//! 5. **Order.** Listings and [`Backend::for_each_dyn`] go by receipt time, then
//!    key; [`Backend::queued_keys`] oldest first. Workers may finish in any
//!    order: the cache orders by the item's own time, not by processing.
//! 6. **Purge destroys.** An expired event's metadata becomes a dedup
//!    marker (so a late re-delivery is still a duplicate) and its body is
//!    gone for good: here its segment's key is destroyed before the file is
//!    deleted. Markers, cache records, tombstones and audit entries expire
//!    by their own retention.
//! 7. **Erasure is immediate, then physical.** After
//!    [`Backend::erase_events`] returns, of each erased event only its
//!    erased record ([`EventMeta::erased`](super::EventMeta::erased):
//!    status `erased`, nothing personal) is listed and shown; it is not
//!    read ([`Backend::read_body`] gives `None`), found under a subject,
//!    replayed or queued, no outcome changes it, and it keeps a
//!    re-delivery a duplicate. Every copy of its bytes is destroyed by the next
//!    [`Backend::shred`] (here: segments rewritten without it under new keys,
//!    old keys destroyed; a database: rows deleted *and* the space they
//!    held rewritten, e.g. `VACUUM FULL` of what held them, WAL and
//!    replicas included). The erasure ledger ([`Backend::ledger_append`]) is
//!    durable before an erasure is reported, and is applied again to an
//!    index restored or rebuilt from older data.
//!    Tests: `tests/erasure.rs`.
//! 8. **Nothing personal in plaintext.** The store is handed payloads and
//!    cache values; payloads are encrypted at rest under keys it holds
//!    wrapped by the data key (never stored in the data dir), and cache
//!    values arrive already sealed or hashed by `cache`.
//! 9. **Backups are consistent and keyless.** [`Backend::backup`] writes a
//!    point-in-time copy of events, cache, audit and ledger that
//!    `restore` turns back into a store opened with the same data key.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;

use bytes::Bytes;
use crossbeam_channel::Receiver;

use super::{
    Appended, CacheKind, CacheTx, Completion, Counts, EventFilter, EventMeta, EventPage, Expiry, LedgerEntry, Snapshot,
    StoreError, TxResult, Work,
};
use crate::crypto::Keys;

/// What an async backend call returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What expiring stored notifications removed (or, counted, would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiredEvents {
    /// Events whose payload went (their metadata became dedup markers).
    pub events: u64,
    /// Units of storage destroyed whole with their keys: log segments
    /// here, time partitions in a database.
    pub containers: u64,
}

/// What an erasure removed from the event store.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ErasedEvents {
    pub events: u64,
    /// Units that held their records (log segments here), queued to be
    /// rewritten.
    pub segments_queued: u64,
}

/// What [`Backend::apply_and_complete`] returns: the handler's result, and
/// the event as recorded (`None`: not recorded).
pub type HandlerRun = (Result<(), StoreError>, Option<EventMeta>);

/// One handler run of a batch ([`Backend::apply_and_complete_batch`]):
/// what [`Backend::apply_and_complete`] takes, and the cache records the
/// run is expected to read (read up front, all runs' at once; a record
/// not named is read when the run asks for it).
pub struct BatchRun<'a> {
    pub seen: &'a Snapshot,
    pub reads: Vec<(CacheKind, String)>,
    pub effects: &'a mut dyn FnMut(&dyn CacheTx) -> TxResult<()>,
    pub outcome: &'a dyn Fn(&Result<(), StoreError>) -> Completion,
}

/// A store behind [`super::Store`]. Object-safe: the handle holds an
/// `Arc<dyn Backend>`; generic conveniences live on the handle. Methods
/// that block are called from blocking contexts (workers, CLI,
/// `spawn_blocking`), never from an async task.
pub trait Backend: Send + Sync + 'static {
    // --- life and health ---
    /// Finishes what is queued and makes everything durable. Blocking.
    fn close(&self) -> Result<(), StoreError>;
    /// The data dir (keys, ledger; the embedded backend's files too).
    fn dir(&self) -> &Path;
    fn keys(&self) -> &Keys;
    /// Why the store does not take writes now, if it does not (readiness).
    fn not_writable(&self) -> Option<&'static str>;
    /// Durable syncs of intake and their total time in µs (metrics).
    fn fsync_stats(&self) -> (u64, u64);
    /// Bytes the store occupies (metrics, `stats`).
    fn size_on_disk(&self) -> u64;
    /// Bytes still free where the store writes, if it can tell (metrics).
    fn free_space(&self) -> Option<u64>;
    /// Makes every index write so far durable (contract 1 holds without it).
    fn flush_index(&self) -> Result<(), StoreError>;
    /// Contract 9: a point-in-time copy; returns (events, files) written.
    fn backup(&self, out: &mut dyn Write, staged: Option<&super::StagedKeys>) -> Result<(u64, u64), StoreError>;
    /// Whether other processes (replicas) share this store and its work:
    /// then an operator command queues events for them instead of running
    /// handlers itself.
    fn is_shared(&self) -> bool {
        false
    }

    // --- intake (contract 1) ---
    /// Stores a new event durably unless its key is known; a duplicate only
    /// has its delivery count raised. Resolves once the answer is safe.
    fn append_if_absent(&self, meta: EventMeta, body: Bytes) -> BoxFuture<'_, Result<Appended, StoreError>>;

    // --- the work queue (contract 2) ---
    /// The queue workers take events from.
    fn work_queue(&self) -> Receiver<Work>;
    /// Puts an event key (back) on the work queue.
    fn enqueue(&self, key: String);
    /// Keys of events waiting for an outcome, oldest first.
    fn queued_keys(&self) -> Result<Vec<String>, StoreError>;
    /// A fresh batch's outcomes are all recorded (see [`super::Fresh`]).
    fn fresh_finished(&self, batch: u64);
    /// Keeps a fresh event queued across a restart (its handler is retrying).
    fn keep_queued(&self, key: &str, received_ms: i64) -> Result<(), StoreError>;
    fn pending_depth(&self) -> usize;
    fn oldest_pending_ms(&self) -> Result<Option<i64>, StoreError>;

    // --- events (contracts 3 and 5) ---
    fn get(&self, key: &str) -> Result<Option<EventMeta>, StoreError>;
    /// An event's metadata with the token [`Self::complete`] compares against.
    fn snapshot(&self, key: &str) -> Result<Option<Snapshot>, StoreError>;
    /// Read-modify-write of an event's metadata, retried on conflict.
    fn update_dyn(&self, key: &str, f: &dyn Fn(&mut EventMeta)) -> Result<Option<EventMeta>, StoreError>;
    /// The body, decrypted; `None` once purged or erased.
    fn read_body(&self, meta: &EventMeta) -> Result<Option<Bytes>, StoreError>;
    /// Records an outcome against what the worker read (contract 3).
    fn complete(&self, seen: &Snapshot, completion: &Completion) -> Result<Option<EventMeta>, StoreError>;
    /// Newest first, from after the cursor `after`, at most `limit` events
    /// and at most `filter.scan_limit` read.
    fn list(&self, filter: &EventFilter, after: Option<&str>, limit: usize) -> Result<EventPage, StoreError>;
    /// Every matching event, oldest first, until `f` fails.
    fn for_each_dyn(
        &self,
        filter: &EventFilter,
        f: &mut dyn FnMut(EventMeta) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    fn counts(&self) -> Result<Counts, StoreError>;
    fn failed_count(&self) -> Result<usize, StoreError>;
    fn last_received_ms(&self) -> Result<Option<i64>, StoreError>;

    // --- the cache (contract 4) ---
    /// Runs attempts of `f` until one ends without [`super::TxError::Conflict`].
    fn cache_attempts(&self, f: &mut dyn FnMut(&dyn CacheTx) -> TxResult<()>) -> Result<(), StoreError>;
    /// A handler's run: its cache attempt (`effects`) and the outcome it
    /// leads to (`outcome` of the attempt's result), recorded for `seen`.
    /// Returns the attempt's result and the event as recorded (`None`: not
    /// recorded, the event gone or another replica's now). By default the
    /// two are [`Self::cache_attempts`] then [`Self::complete`]; a backend
    /// that can commits a successful run's effects and outcome together.
    fn apply_and_complete(
        &self,
        seen: &Snapshot,
        effects: &mut dyn FnMut(&dyn CacheTx) -> TxResult<()>,
        outcome: &dyn Fn(&Result<(), StoreError>) -> Completion,
    ) -> Result<HandlerRun, StoreError> {
        let result = self.cache_attempts(effects);
        let completion = outcome(&result);
        let recorded = self.complete(seen, &completion)?;
        Ok((result, recorded))
    }
    /// How many handler runs [`Backend::apply_and_complete_batch`] takes
    /// at once; 1: it does not batch, and workers run events one by one.
    fn handler_batch(&self) -> usize {
        1
    }
    /// Several events' handler runs, each as [`Backend::apply_and_complete`]
    /// would make it, committed together in order: a later run sees an
    /// earlier run's cache writes. All or nothing: `Ok(None)` when any run
    /// failed or met a conflict (nothing of the batch is kept; the caller
    /// runs each on its own). `Ok(Some(v))`: all committed, `v[i]` the
    /// event of run `i` as recorded (`None`: not run here, as
    /// `apply_and_complete` would not have). `outcome` is called with
    /// `Ok(())` only.
    fn apply_and_complete_batch(
        &self,
        runs: &mut [BatchRun<'_>],
    ) -> Result<Option<Vec<Option<EventMeta>>>, StoreError> {
        let _ = runs;
        Ok(None)
    }
    fn cache_get(&self, kind: CacheKind, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Replaces a record's bytes if it still exists, filed where it was (a
    /// re-encryption, not a new write). Returns whether it existed.
    fn cache_rewrite(&self, kind: CacheKind, id: &str, value: &[u8]) -> Result<bool, StoreError>;
    /// Removes every cached record (tombstones stay). Returns how many.
    fn cache_clear(&self) -> Result<u64, StoreError>;
    fn cache_all(&self, kind: CacheKind) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Ids filed in `class` before `before_ms`, oldest first, at most `limit`.
    fn cache_expired(&self, class: Expiry, before_ms: i64, limit: usize) -> Result<Vec<(i64, String)>, StoreError>;
    fn count_cache_expired(&self, class: Expiry, before_ms: i64) -> Result<u64, StoreError>;
    fn contacts_for_email_hash(&self, hash: &str) -> Result<Vec<String>, StoreError>;
    /// Every (email hash, contact id) of the email index (moving a store).
    fn email_index_all(&self) -> Result<Vec<(String, String)>, StoreError>;

    // --- erasure (contract 7) ---
    /// Events indexed under a subject key (see `identifiers`).
    fn events_for_subject(&self, subject: &str) -> Result<Vec<EventMeta>, StoreError>;
    /// Makes events unreadable now and queues their bytes for [`Self::shred`].
    fn erase_events(&self, keys: &[String], durable: bool) -> Result<ErasedEvents, StoreError>;
    /// Indexes an event under more subject keys; false if it is gone.
    fn set_subjects(&self, key: &str, subjects: Vec<String>) -> Result<bool, StoreError>;
    /// Destroys every copy of erased events' bytes. Returns the units
    /// rewritten. Blocking.
    fn shred(&self) -> Result<u64, StoreError>;
    fn shred_queue_len(&self) -> usize;
    /// When the oldest and the newest waiting erasure were queued (ms).
    fn shred_waiting(&self) -> Option<(i64, i64)>;
    fn ledger_append(&self, entry: &LedgerEntry) -> Result<(), StoreError>;
    /// Ledger entries not applied to this index yet, and the count to mark.
    fn ledger_unapplied(&self) -> Result<(Vec<LedgerEntry>, u64), StoreError>;
    fn ledger_mark_applied(&self, count: u64) -> Result<(), StoreError>;
    fn ledger_len(&self) -> Result<usize, StoreError>;
    /// Every ledger entry, oldest first (a copy of the store takes them).
    fn ledger_entries(&self) -> Result<Vec<LedgerEntry>, StoreError>;
    /// When a subject key was last erased (the latest ledger line naming
    /// it, unix ms), if ever. Kept for as long as the ledger.
    fn erased_at(&self, subject: &str) -> Result<Option<i64>, StoreError>;
    /// [`Backend::erased_at`] of several subjects: those erased, and when.
    fn erased_among(&self, subjects: &[String]) -> Result<HashMap<String, i64>, StoreError> {
        let mut erased = HashMap::new();
        for s in subjects {
            if let Some(at) = self.erased_at(s)? {
                erased.insert(s.clone(), at);
            }
        }
        Ok(erased)
    }
    /// Durable one-time flags of the layers above (upgrades done).
    fn state_flag(&self, name: &str) -> Result<bool, StoreError>;
    fn set_state_flag(&self, name: &str) -> Result<(), StoreError>;
    fn clear_state_flag(&self, name: &str) -> Result<(), StoreError>;
    /// Small durable values of the layers above (a reconciliation's
    /// watermark), made durable before `set_state_value` returns.
    fn state_value(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn set_state_value(&self, name: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Every state value whose name starts with `prefix` (names without
    /// the backend's own prefix), in name order.
    fn state_values(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Removes a state value, durably.
    fn remove_state_value(&self, name: &str) -> Result<(), StoreError>;

    // --- purge by time (contract 6) ---
    /// Expires the payloads of events received before `before_ms`, in
    /// batches of `batch`, and destroys whole containers past it. Blocking.
    fn expire_events(&self, before_ms: i64, batch: usize) -> Result<ExpiredEvents, StoreError>;
    fn count_expired_events(&self, before_ms: i64) -> Result<ExpiredEvents, StoreError>;
    /// Removes at most `limit` dedup markers of events received before
    /// `before_ms`; returns how many.
    fn remove_expired_markers(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError>;
    fn count_expired_markers(&self, before_ms: i64) -> Result<u64, StoreError>;

    // --- the audit chain (entries are opaque bytes to the store) ---
    /// Appends `make(last)` after the last entry, atomically with reading it.
    fn audit_append_dyn(&self, make: &mut dyn FnMut(Option<(u64, Vec<u8>)>) -> Vec<u8>) -> Result<u64, StoreError>;
    fn audit_entries(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// The entry the chain's front was cut after, kept so it verifies.
    fn audit_anchor(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError>;
    /// Sets the anchor (moving a store whose chain's front has expired).
    fn audit_set_anchor(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError>;
    /// Removes up to `limit` entries from the front while `expired`.
    fn audit_remove_expired_dyn(&self, expired: &dyn Fn(&[u8]) -> bool, limit: usize) -> Result<u64, StoreError>;
    /// Replaces an entry's bytes (re-authentication after a key rotation).
    fn audit_overwrite(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError>;
    /// Drops the newest entry (tests of truncation detection only).
    fn audit_remove_newest_for_tests(&self) -> Result<(), StoreError>;
}
