//! [`Backend`] for [`Embedded`]: each method is the inherent one of the same
//! name (in the file that owns its trees), so the seam adds no logic here.

use super::*;

/// `fn name(&self, args) -> ret;` becomes a method that calls the inherent
/// `Embedded::name` with the same arguments.
macro_rules! inherent {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) $(-> $ret:ty)?; )*) => {
        $( fn $name(&self $(, $arg: $ty)*) $(-> $ret)? { Embedded::$name(self $(, $arg)*) } )*
    };
}

impl Backend for Embedded {
    inherent! {
        fn close(&self) -> Result<(), StoreError>;
        fn dir(&self) -> &Path;
        fn keys(&self) -> &Keys;
        fn not_writable(&self) -> Option<&'static str>;
        fn fsync_stats(&self) -> (u64, u64);
        fn size_on_disk(&self) -> u64;
        fn free_space(&self) -> Option<u64>;
        fn flush_index(&self) -> Result<(), StoreError>;
        fn work_queue(&self) -> Receiver<Work>;
        fn enqueue(&self, key: String);
        fn queued_keys(&self) -> Result<Vec<String>, StoreError>;
        fn fresh_finished(&self, batch: u64);
        fn keep_queued(&self, key: &str, received_ms: i64) -> Result<(), StoreError>;
        fn pending_depth(&self) -> usize;
        fn oldest_pending_ms(&self) -> Result<Option<i64>, StoreError>;
        fn get(&self, key: &str) -> Result<Option<EventMeta>, StoreError>;
        fn snapshot(&self, key: &str) -> Result<Option<Snapshot>, StoreError>;
        fn read_body(&self, meta: &EventMeta) -> Result<Option<Bytes>, StoreError>;
        fn complete(&self, seen: &Snapshot, completion: &Completion) -> Result<Option<EventMeta>, StoreError>;
        fn list(&self, filter: &EventFilter, after: Option<&str>, limit: usize) -> Result<EventPage, StoreError>;
        fn counts(&self) -> Result<Counts, StoreError>;
        fn failed_count(&self) -> Result<usize, StoreError>;
        fn last_received_ms(&self) -> Result<Option<i64>, StoreError>;
        fn cache_get(&self, kind: CacheKind, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
        fn cache_rewrite(&self, kind: CacheKind, id: &str, value: &[u8]) -> Result<bool, StoreError>;
        fn cache_clear(&self) -> Result<u64, StoreError>;
        fn cache_all(&self, kind: CacheKind) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
        fn cache_expired(&self, class: Expiry, before_ms: i64, limit: usize) -> Result<Vec<(i64, String)>, StoreError>;
        fn count_cache_expired(&self, class: Expiry, before_ms: i64) -> Result<u64, StoreError>;
        fn contacts_for_email_hash(&self, hash: &str) -> Result<Vec<String>, StoreError>;
        fn email_index_all(&self) -> Result<Vec<(String, String)>, StoreError>;
        fn events_for_subject(&self, subject: &str) -> Result<Vec<EventMeta>, StoreError>;
        fn erase_events(&self, keys: &[String], durable: bool) -> Result<ErasedEvents, StoreError>;
        fn set_subjects(&self, key: &str, subjects: Vec<String>) -> Result<bool, StoreError>;
        fn shred(&self) -> Result<u64, StoreError>;
        fn shred_queue_len(&self) -> usize;
        fn shred_waiting(&self) -> Option<(i64, i64)>;
        fn ledger_append(&self, entry: &LedgerEntry) -> Result<(), StoreError>;
        fn ledger_unapplied(&self) -> Result<(Vec<LedgerEntry>, u64), StoreError>;
        fn ledger_mark_applied(&self, count: u64) -> Result<(), StoreError>;
        fn ledger_len(&self) -> Result<usize, StoreError>;
        fn ledger_entries(&self) -> Result<Vec<LedgerEntry>, StoreError>;
        fn erased_at(&self, subject: &str) -> Result<Option<i64>, StoreError>;
        fn state_flag(&self, name: &str) -> Result<bool, StoreError>;
        fn set_state_flag(&self, name: &str) -> Result<(), StoreError>;
        fn clear_state_flag(&self, name: &str) -> Result<(), StoreError>;
        fn state_value(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
        fn set_state_value(&self, name: &str, value: &[u8]) -> Result<(), StoreError>;
        fn state_values(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
        fn remove_state_value(&self, name: &str) -> Result<(), StoreError>;
        fn expire_events(&self, before_ms: i64, batch: usize) -> Result<ExpiredEvents, StoreError>;
        fn count_expired_events(&self, before_ms: i64) -> Result<ExpiredEvents, StoreError>;
        fn remove_expired_markers(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError>;
        fn count_expired_markers(&self, before_ms: i64) -> Result<u64, StoreError>;
        fn audit_entries(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
        fn audit_anchor(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError>;
        fn audit_set_anchor(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError>;
        fn audit_overwrite(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError>;
        fn audit_remove_newest_for_tests(&self) -> Result<(), StoreError>;
    }

    fn backup(
        &self,
        mut out: &mut dyn std::io::Write,
        staged: Option<&crate::store::StagedKeys>,
    ) -> Result<(u64, u64), StoreError> {
        Embedded::backup(self, &mut out, staged)
    }

    fn append_if_absent(&self, meta: EventMeta, body: Bytes) -> BoxFuture<'_, Result<Appended, StoreError>> {
        Box::pin(Embedded::append_if_absent(self, meta, body))
    }

    fn update_dyn(&self, key: &str, f: &dyn Fn(&mut EventMeta)) -> Result<Option<EventMeta>, StoreError> {
        self.update(key, f)
    }

    fn for_each_dyn(
        &self,
        filter: &EventFilter,
        f: &mut dyn FnMut(EventMeta) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.for_each(filter, f)
    }

    fn cache_attempts(&self, f: &mut dyn FnMut(&dyn CacheTx) -> TxResult<()>) -> Result<(), StoreError> {
        self.cache_txn(f)
    }

    fn audit_append_dyn(&self, make: &mut dyn FnMut(Option<(u64, Vec<u8>)>) -> Vec<u8>) -> Result<u64, StoreError> {
        self.audit_append(make)
    }

    fn audit_remove_expired_dyn(&self, expired: &dyn Fn(&[u8]) -> bool, limit: usize) -> Result<u64, StoreError> {
        self.audit_remove_expired(expired, limit)
    }
}
