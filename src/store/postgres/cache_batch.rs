//! Several events' handler runs in one transaction, so that a busy queue
//! costs a handful of statements per batch rather than about ten per
//! event. The runs' events are locked together, the records they name
//! are read (and locked) together, and each run then works on those
//! copies in order: a later run sees an earlier one's writes. What they
//! changed is written back as one multi-row statement per table and
//! kind of change, with every run's outcome and the end of its claim, and
//! committed once. Anything unexpected (a run that fails, a record
//! another replica created meanwhile, a database error) rolls the whole
//! batch back, and the worker runs its events one by one instead (see
//! `cache_tx`), so a batch changes how many statements are sent, never
//! what a run does.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::cache_tx::{class_code, kind_code};
use super::{now, pg_err, Postgres};
use crate::store::backend::BatchRun;
use crate::store::{CacheKind, CacheTx, EventMeta, Expiry, StoreError, TxError, TxResult};

/// Runs taken into one batch at most.
pub const BATCH: usize = 64;

type Id = (i16, String);

/// A cache record as the batch sees it.
struct Record {
    /// It existed when read.
    existed: bool,
    value: Option<Vec<u8>>,
    written: bool,
}

/// A tombstone as the batch sees it: `(deleted_at, written_ms)`.
struct Tombstone {
    existed: bool,
    now: Option<(i64, i64)>,
    written: bool,
}

/// What the batch read and what its runs changed.
#[derive(Default)]
struct Overlay {
    records: HashMap<Id, Record>,
    tombstones: HashMap<Id, Tombstone>,
    /// Expiry entries filed (`true`) or unfiled, the last word per entry.
    expiry: BTreeMap<(i16, i64, String), bool>,
    /// Email index entries added (`true`) or removed.
    emails: BTreeMap<(String, String), bool>,
}

/// One run's view: the batch's overlay, and what this run has read (a
/// write needs a read first, as in a run of its own).
struct BatchTx<'a> {
    store: &'a Postgres,
    client: &'a deadpool_postgres::Object,
    overlay: &'a RefCell<Overlay>,
    read: RefCell<HashSet<Id>>,
}

fn storage(e: tokio_postgres::Error) -> TxError {
    TxError::Storage(pg_err(e))
}

impl BatchTx<'_> {
    /// The record, read (and locked) now unless the batch has it already.
    fn record(&self, k: i16, id: &str) -> TxResult<()> {
        let key = (k, id.to_string());
        if !self.overlay.borrow().records.contains_key(&key) {
            let row = self
                .store
                .block(super::prepared::query_opt(
                    self.client,
                    "SELECT value FROM iw_cache WHERE kind = $1 AND id = $2 FOR UPDATE",
                    &[&k, &id],
                ))
                .map_err(storage)?;
            let value: Option<Vec<u8>> = row.map(|r| r.get(0));
            self.overlay.borrow_mut().records.insert(
                key.clone(),
                Record {
                    existed: value.is_some(),
                    value,
                    written: false,
                },
            );
        }
        self.read.borrow_mut().insert(key);
        Ok(())
    }

    fn tombstone_entry(&self, k: i16, id: &str) -> TxResult<()> {
        let key = (k, id.to_string());
        if !self.overlay.borrow().tombstones.contains_key(&key) {
            let row = self
                .store
                .block(super::prepared::query_opt(
                    self.client,
                    "SELECT deleted_at, written_ms FROM iw_tombstones WHERE kind = $1 AND id = $2 FOR UPDATE",
                    &[&k, &id],
                ))
                .map_err(storage)?;
            let now = row.map(|r| (r.get(0), r.get(1)));
            self.overlay.borrow_mut().tombstones.insert(
                key,
                Tombstone {
                    existed: now.is_some(),
                    now,
                    written: false,
                },
            );
        }
        Ok(())
    }

    fn was_read(&self, k: i16, id: &str) -> TxResult<()> {
        if self.read.borrow().contains(&(k, id.to_string())) {
            Ok(())
        } else {
            Err(TxError::Abort("cache write without a read".into()))
        }
    }

    fn set_record(&self, k: i16, id: &str, value: Option<Vec<u8>>) {
        if let Some(r) = self.overlay.borrow_mut().records.get_mut(&(k, id.to_string())) {
            r.value = value;
            r.written = true;
        }
    }
}

impl CacheTx for BatchTx<'_> {
    fn get(&self, kind: CacheKind, id: &str) -> TxResult<Option<Vec<u8>>> {
        let k = kind_code(kind);
        self.record(k, id)?;
        Ok(self
            .overlay
            .borrow()
            .records
            .get(&(k, id.to_string()))
            .and_then(|r| r.value.clone()))
    }

    fn put(&self, kind: CacheKind, id: &str, value: &[u8], file_at: Option<i64>) -> TxResult<()> {
        let k = kind_code(kind);
        self.was_read(k, id)?;
        self.set_record(k, id, Some(value.to_vec()));
        if let Some(ms) = file_at {
            self.file_expiry(Expiry::Record(kind), ms, id)?;
        }
        Ok(())
    }

    fn remove(&self, kind: CacheKind, id: &str, filed_at: Option<i64>) -> TxResult<()> {
        let k = kind_code(kind);
        self.was_read(k, id)?;
        self.set_record(k, id, None);
        if let Some(ms) = filed_at {
            self.unfile_expiry(Expiry::Record(kind), ms, id)?;
        }
        Ok(())
    }

    fn file_expiry(&self, class: Expiry, ms: i64, id: &str) -> TxResult<()> {
        self.overlay
            .borrow_mut()
            .expiry
            .insert((class_code(class), ms, id.to_string()), true);
        Ok(())
    }

    fn unfile_expiry(&self, class: Expiry, ms: i64, id: &str) -> TxResult<()> {
        self.overlay
            .borrow_mut()
            .expiry
            .insert((class_code(class), ms, id.to_string()), false);
        Ok(())
    }

    fn tombstone(&self, kind: CacheKind, id: &str) -> TxResult<Option<i64>> {
        let k = kind_code(kind);
        self.tombstone_entry(k, id)?;
        Ok(self
            .overlay
            .borrow()
            .tombstones
            .get(&(k, id.to_string()))
            .and_then(|t| t.now.map(|(deleted_at, _)| deleted_at)))
    }

    fn put_tombstone(&self, kind: CacheKind, id: &str, deleted_at: i64, written_ms: i64) -> TxResult<()> {
        let k = kind_code(kind);
        self.tombstone_entry(k, id)?;
        let prev = {
            let mut overlay = self.overlay.borrow_mut();
            let Some(t) = overlay.tombstones.get_mut(&(k, id.to_string())) else {
                return Err(TxError::Abort("tombstone not read".into()));
            };
            let prev = t.now.map(|(_, w)| w);
            t.now = Some((deleted_at, written_ms));
            t.written = true;
            prev
        };
        if let Some(prev) = prev.filter(|&p| p != written_ms) {
            self.unfile_expiry(Expiry::Tombstone(kind), prev, id)?;
        }
        self.file_expiry(Expiry::Tombstone(kind), written_ms, id)
    }

    fn remove_tombstone(&self, kind: CacheKind, id: &str) -> TxResult<()> {
        let k = kind_code(kind);
        self.tombstone_entry(k, id)?;
        let prev = {
            let mut overlay = self.overlay.borrow_mut();
            let Some(t) = overlay.tombstones.get_mut(&(k, id.to_string())) else {
                return Err(TxError::Abort("tombstone not read".into()));
            };
            t.written = true;
            t.now.take().map(|(_, w)| w)
        };
        if let Some(prev) = prev {
            self.unfile_expiry(Expiry::Tombstone(kind), prev, id)?;
        }
        Ok(())
    }

    fn index_email(&self, email_hash: &str, contact_id: &str) -> TxResult<()> {
        self.overlay
            .borrow_mut()
            .emails
            .insert((email_hash.to_string(), contact_id.to_string()), true);
        Ok(())
    }

    fn unindex_email(&self, email_hash: &str, contact_id: &str) -> TxResult<()> {
        self.overlay
            .borrow_mut()
            .emails
            .insert((email_hash.to_string(), contact_id.to_string()), false);
        Ok(())
    }
}

/// The outcome rows of a batch, one array per column.
#[derive(Default)]
struct Outcomes {
    part: Vec<i64>,
    key: Vec<String>,
    meta: Vec<Vec<u8>>,
    status: Vec<i16>,
    due: Vec<i64>,
}

/// Why a batch was given up: rolled back, to be run one by one.
enum GiveUp {
    /// A run failed or met a conflict; the transaction is rolled back.
    Run,
    /// The database failed; the connection's state is unknown.
    Database(StoreError),
}

impl From<StoreError> for GiveUp {
    fn from(e: StoreError) -> Self {
        GiveUp::Database(e)
    }
}

impl Postgres {
    pub fn apply_and_complete_batch(
        &self,
        runs: &mut [BatchRun<'_>],
    ) -> Result<Option<Vec<Option<EventMeta>>>, StoreError> {
        // Each event where intake put it, each once.
        let mut parts = Vec::with_capacity(runs.len());
        let mut keys = Vec::with_capacity(runs.len());
        for r in runs.iter() {
            let Some(loc) = r.seen.meta.loc else { return Ok(None) };
            parts.push(loc.seg as i64);
            keys.push(r.seen.meta.key.clone());
        }
        if keys.iter().collect::<HashSet<_>>().len() != keys.len() {
            return Ok(None);
        }
        let client = self.block(self.client())?;
        match self.batch_on(&client, runs, &parts, &keys) {
            Ok(recorded) => Ok(Some(recorded)),
            Err(GiveUp::Run) => Ok(None),
            Err(GiveUp::Database(e)) => {
                // The connection may be inside a transaction: not back to
                // the pool.
                drop(deadpool_postgres::Object::take(client));
                tracing::debug!(error = %e, runs = runs.len(), "A batch of handler runs failed; running them one by one.");
                Ok(None)
            }
        }
    }

    fn batch_on(
        &self,
        client: &deadpool_postgres::Object,
        runs: &mut [BatchRun<'_>],
        parts: &[i64],
        keys: &[String],
    ) -> Result<Vec<Option<EventMeta>>, GiveUp> {
        let mut wanted: Vec<Id> = runs
            .iter()
            .flat_map(|r| r.reads.iter().map(|(kind, id)| (kind_code(*kind), id.clone())))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let (w_kind, w_id): (Vec<i16>, Vec<String>) = wanted.into_iter().unzip();
        let mut events = HashMap::new();
        let (records, tombstones) = self.block(async {
            client.batch_execute(super::BEGIN_LOOKUPS).await.map_err(pg_err)?;
            // The events, then the records, each in one order, so that two
            // batches cannot hold each other's locks.
            for row in super::prepared::query(
                client,
                "SELECT key, meta, part, claim_owner, claim_until FROM iw_events \
                 WHERE part = ANY($1) AND key = ANY($2) ORDER BY part, key FOR UPDATE",
                &[&parts, &keys],
            )
            .await
            .map_err(pg_err)?
            {
                let key: String = row.get(0);
                let owner: Option<String> = row.get(3);
                let until: Option<i64> = row.get(4);
                events.insert(key, (row.get::<_, Vec<u8>>(1), row.get::<_, i64>(2), owner, until));
            }
            let records = super::prepared::query(
                client,
                "SELECT c.kind, c.id, c.value FROM iw_cache c \
                 JOIN unnest($1::int2[], $2::text[]) AS x(kind, id) ON c.kind = x.kind AND c.id = x.id \
                 ORDER BY c.kind, c.id FOR UPDATE OF c",
                &[&w_kind, &w_id],
            )
            .await
            .map_err(pg_err)?;
            let tombstones = super::prepared::query(
                client,
                "SELECT t.kind, t.id, t.deleted_at, t.written_ms FROM iw_tombstones t \
                 JOIN unnest($1::int2[], $2::text[]) AS x(kind, id) ON t.kind = x.kind AND t.id = x.id \
                 ORDER BY t.kind, t.id FOR UPDATE OF t",
                &[&w_kind, &w_id],
            )
            .await
            .map_err(pg_err)?;
            Ok::<_, StoreError>((records, tombstones))
        })?;
        let mut o = Overlay::default();
        for row in records {
            let record = Record {
                existed: true,
                value: Some(row.get(2)),
                written: false,
            };
            o.records.insert((row.get(0), row.get(1)), record);
        }
        for row in tombstones {
            let tombstone = Tombstone {
                existed: true,
                now: Some((row.get(2), row.get(3))),
                written: false,
            };
            o.tombstones.insert((row.get(0), row.get(1)), tombstone);
        }
        // What was named and is not there is known to be absent.
        for id in w_kind.iter().copied().zip(w_id.iter().cloned()) {
            o.records.entry(id.clone()).or_insert(Record {
                existed: false,
                value: None,
                written: false,
            });
            o.tombstones.entry(id).or_insert(Tombstone {
                existed: false,
                now: None,
                written: false,
            });
        }
        let overlay = RefCell::new(o);

        let mut recorded = Vec::with_capacity(runs.len());
        let mut outcomes = Outcomes::default();
        for run in runs.iter_mut() {
            let key = run.seen.meta.key.as_str();
            let Some((meta, part, owner, until)) = events.get(key) else {
                // Gone (erased or purged) since it was queued.
                recorded.push(None);
                continue;
            };
            if owner.as_deref().is_some_and(|o| o != self.inner.node) && until.is_some_and(|u| u >= now()) {
                tracing::warn!(event = %key, "Another replica holds this event's claim: not run here.");
                recorded.push(None);
                continue;
            }
            let mut m = EventMeta::decode(meta)
                .ok_or_else(|| StoreError::Corrupt(format!("event {key} has an unreadable record")))?;
            if !run.seen.still_runs_on(&m) {
                tracing::debug!(event = %key, "Already run since this work was queued: not run again.");
                recorded.push(None);
                continue;
            }
            let tx = BatchTx {
                store: self,
                client,
                overlay: &overlay,
                read: RefCell::new(HashSet::new()),
            };
            if (run.effects)(&tx).is_err() {
                self.block(client.batch_execute("ROLLBACK")).map_err(pg_err)?;
                return Err(GiveUp::Run);
            }
            (run.outcome)(&Ok(())).apply(&mut m);
            outcomes.part.push(*part);
            outcomes.key.push(key.to_string());
            outcomes.meta.push(m.encode());
            outcomes.status.push(i16::from(m.status.code()));
            outcomes.due.push(m.retry_at_ms.unwrap_or_else(now));
            recorded.push(Some(m));
        }

        let overlay = overlay.into_inner();
        let conflict = self.block(write_back(client, &overlay, &outcomes))?;
        if conflict {
            self.block(client.batch_execute("ROLLBACK")).map_err(pg_err)?;
            return Err(GiveUp::Run);
        }
        self.block(client.batch_execute("COMMIT")).map_err(pg_err)?;
        Ok(recorded)
    }
}

/// Writes what the runs changed and their outcomes. `Ok(true)`: a record
/// the batch saw absent exists now (another replica wrote it): roll back.
async fn write_back(
    client: &deadpool_postgres::Object,
    overlay: &Overlay,
    outcomes: &Outcomes,
) -> Result<bool, StoreError> {
    let (mut ins, mut upd, mut del) = (Rows::default(), Rows::default(), Rows::default());
    for ((k, id), r) in overlay.records.iter().filter(|(_, r)| r.written) {
        match (r.existed, &r.value) {
            (false, Some(v)) => ins.push(*k, id, v),
            (true, Some(v)) => upd.push(*k, id, v),
            (true, None) => del.push(*k, id, &[]),
            (false, None) => {}
        }
    }
    if !ins.kind.is_empty() {
        let n = super::prepared::execute(
            client,
            "INSERT INTO iw_cache (kind, id, value, version) \
             SELECT k, i, v, 1 FROM unnest($1::int2[], $2::text[], $3::bytea[]) AS x(k, i, v) ON CONFLICT DO NOTHING",
            &[&ins.kind, &ins.id, &ins.value],
        )
        .await
        .map_err(pg_err)?;
        if n != ins.kind.len() as u64 {
            return Ok(true);
        }
    }
    if !upd.kind.is_empty() {
        super::prepared::execute(
            client,
            "UPDATE iw_cache c SET value = x.v, version = c.version + 1 \
             FROM unnest($1::int2[], $2::text[], $3::bytea[]) AS x(k, i, v) WHERE c.kind = x.k AND c.id = x.i",
            &[&upd.kind, &upd.id, &upd.value],
        )
        .await
        .map_err(pg_err)?;
    }
    if !del.kind.is_empty() {
        super::prepared::execute(
            client,
            "DELETE FROM iw_cache c USING unnest($1::int2[], $2::text[]) AS x(k, i) WHERE c.kind = x.k AND c.id = x.i",
            &[&del.kind, &del.id],
        )
        .await
        .map_err(pg_err)?;
    }

    let (mut put, mut gone) = (Tombstones::default(), Rows::default());
    for ((k, id), t) in overlay.tombstones.iter().filter(|(_, t)| t.written) {
        match t.now {
            Some((deleted_at, written_ms)) => {
                put.kind.push(*k);
                put.id.push(id.clone());
                put.deleted_at.push(deleted_at);
                put.written_ms.push(written_ms);
            }
            None if t.existed => gone.push(*k, id, &[]),
            None => {}
        }
    }
    if !put.kind.is_empty() {
        super::prepared::execute(
            client,
            "INSERT INTO iw_tombstones (kind, id, deleted_at, written_ms) \
             SELECT * FROM unnest($1::int2[], $2::text[], $3::int8[], $4::int8[]) \
             ON CONFLICT (kind, id) DO UPDATE SET deleted_at = EXCLUDED.deleted_at, written_ms = EXCLUDED.written_ms",
            &[&put.kind, &put.id, &put.deleted_at, &put.written_ms],
        )
        .await
        .map_err(pg_err)?;
    }
    if !gone.kind.is_empty() {
        super::prepared::execute(
            client,
            "DELETE FROM iw_tombstones t USING unnest($1::int2[], $2::text[]) AS x(k, i) \
             WHERE t.kind = x.k AND t.id = x.i",
            &[&gone.kind, &gone.id],
        )
        .await
        .map_err(pg_err)?;
    }

    let (mut filed, mut unfiled) = ((vec![], vec![], vec![]), (vec![], vec![], vec![]));
    for ((class, ms, id), &file) in &overlay.expiry {
        let to = if file { &mut filed } else { &mut unfiled };
        to.0.push(*class);
        to.1.push(*ms);
        to.2.push(id.clone());
    }
    if !filed.0.is_empty() {
        super::prepared::execute(
            client,
            "INSERT INTO iw_expiry (class, ms, id) SELECT * FROM unnest($1::int2[], $2::int8[], $3::text[]) \
             ON CONFLICT DO NOTHING",
            &[&filed.0, &filed.1, &filed.2],
        )
        .await
        .map_err(pg_err)?;
    }
    if !unfiled.0.is_empty() {
        super::prepared::execute(
            client,
            "DELETE FROM iw_expiry e USING unnest($1::int2[], $2::int8[], $3::text[]) AS x(c, m, i) \
             WHERE e.class = x.c AND e.ms = x.m AND e.id = x.i",
            &[&unfiled.0, &unfiled.1, &unfiled.2],
        )
        .await
        .map_err(pg_err)?;
    }

    let (mut added, mut removed) = ((vec![], vec![]), (vec![], vec![]));
    for ((hash, contact), &add) in &overlay.emails {
        let to = if add { &mut added } else { &mut removed };
        to.0.push(hash.clone());
        to.1.push(contact.clone());
    }
    if !added.0.is_empty() {
        super::prepared::execute(
            client,
            "INSERT INTO iw_email_index (hash, contact_id) SELECT * FROM unnest($1::text[], $2::text[]) \
             ON CONFLICT DO NOTHING",
            &[&added.0, &added.1],
        )
        .await
        .map_err(pg_err)?;
    }
    if !removed.0.is_empty() {
        super::prepared::execute(
            client,
            "DELETE FROM iw_email_index e USING unnest($1::text[], $2::text[]) AS x(h, c) \
             WHERE e.hash = x.h AND e.contact_id = x.c",
            &[&removed.0, &removed.1],
        )
        .await
        .map_err(pg_err)?;
    }

    if !outcomes.key.is_empty() {
        super::prepared::execute(
            client,
            "UPDATE iw_events e SET meta = x.m, status = x.s, version = e.version + 1, due_ms = x.d, \
             claim_owner = NULL, claim_until = NULL \
             FROM unnest($1::int8[], $2::text[], $3::bytea[], $4::int2[], $5::int8[]) AS x(p, k, m, s, d) \
             WHERE e.part = x.p AND e.key = x.k",
            &[
                &outcomes.part,
                &outcomes.key,
                &outcomes.meta,
                &outcomes.status,
                &outcomes.due,
            ],
        )
        .await
        .map_err(pg_err)?;
    }
    Ok(false)
}

/// Cache rows to write, one array per column.
#[derive(Default)]
struct Rows {
    kind: Vec<i16>,
    id: Vec<String>,
    value: Vec<Vec<u8>>,
}

impl Rows {
    fn push(&mut self, kind: i16, id: &str, value: &[u8]) {
        self.kind.push(kind);
        self.id.push(id.to_string());
        self.value.push(value.to_vec());
    }
}

#[derive(Default)]
struct Tombstones {
    kind: Vec<i16>,
    id: Vec<String>,
    deleted_at: Vec<i64>,
    written_ms: Vec<i64>,
}
