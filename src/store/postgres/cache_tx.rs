//! The cache in the database: one handler attempt is one transaction.
//! A record read is locked (`FOR UPDATE`) until the attempt commits, so
//! concurrent handlers on one record take turns; a record that did not
//! exist when read and was inserted meanwhile by another replica is a
//! conflict, and the attempt runs again on fresh data.

use std::cell::RefCell;
use std::collections::HashMap;

use super::{pg_err, Postgres};
use crate::store::backend::HandlerRun;
use crate::store::{CacheKind, CacheTx, Completion, EventMeta, Expiry, Snapshot, StoreError, TxError, TxResult};

pub(super) fn kind_code(kind: CacheKind) -> i16 {
    match kind {
        CacheKind::Contact => 0,
        CacheKind::Conversation => 1,
    }
}

pub(super) fn class_code(class: Expiry) -> i16 {
    match class {
        Expiry::Record(k) => kind_code(k),
        Expiry::Tombstone(k) => 2 + kind_code(k),
    }
}

fn storage(e: tokio_postgres::Error) -> TxError {
    TxError::Storage(pg_err(e))
}

/// One attempt: a connection inside `BEGIN`, and what it read.
struct PgCacheTx<'a> {
    store: &'a Postgres,
    client: &'a deadpool_postgres::Object,
    /// Each record read: its version, or `None` when it did not exist.
    seen: RefCell<HashMap<(i16, String), Option<i64>>>,
}

impl PgCacheTx<'_> {
    /// `sql` is always one of this file's fixed statements (prepared).
    fn exec(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> TxResult<u64> {
        self.store
            .block(super::prepared::execute(self.client, sql, params))
            .map_err(storage)
    }

    fn seen(&self, kind: i16, id: &str) -> TxResult<Option<i64>> {
        match self.seen.borrow().get(&(kind, id.to_string())) {
            Some(v) => Ok(*v),
            None => Err(TxError::Abort("cache write without a read".into())),
        }
    }
}

impl CacheTx for PgCacheTx<'_> {
    fn get(&self, kind: CacheKind, id: &str) -> TxResult<Option<Vec<u8>>> {
        let k = kind_code(kind);
        let row = self
            .store
            .block(super::prepared::query_opt(
                self.client,
                "SELECT value, version FROM iw_cache WHERE kind = $1 AND id = $2 FOR UPDATE",
                &[&k, &id],
            ))
            .map_err(storage)?;
        let (value, version) = match row {
            Some(r) => (Some(r.get::<_, Vec<u8>>(0)), Some(r.get::<_, i64>(1))),
            None => (None, None),
        };
        self.seen.borrow_mut().insert((k, id.to_string()), version);
        Ok(value)
    }

    fn put(&self, kind: CacheKind, id: &str, value: &[u8], file_at: Option<i64>) -> TxResult<()> {
        let k = kind_code(kind);
        let written = match self.seen(k, id)? {
            None => self.exec(
                "INSERT INTO iw_cache (kind, id, value, version) VALUES ($1, $2, $3, 1) ON CONFLICT DO NOTHING",
                &[&k, &id, &value],
            )?,
            Some(v) => self.exec(
                "UPDATE iw_cache SET value = $3, version = version + 1 WHERE kind = $1 AND id = $2 AND version = $4",
                &[&k, &id, &value, &v],
            )?,
        };
        if written == 0 {
            return Err(TxError::Conflict);
        }
        let prev = self.seen(k, id)?;
        self.seen
            .borrow_mut()
            .insert((k, id.to_string()), Some(prev.map_or(1, |v| v + 1)));
        if let Some(ms) = file_at {
            self.file_expiry(Expiry::Record(kind), ms, id)?;
        }
        Ok(())
    }

    fn remove(&self, kind: CacheKind, id: &str, filed_at: Option<i64>) -> TxResult<()> {
        let k = kind_code(kind);
        if let Some(v) = self.seen(k, id)? {
            if self.exec(
                "DELETE FROM iw_cache WHERE kind = $1 AND id = $2 AND version = $3",
                &[&k, &id, &v],
            )? == 0
            {
                return Err(TxError::Conflict);
            }
        }
        self.seen.borrow_mut().insert((k, id.to_string()), None);
        if let Some(ms) = filed_at {
            self.unfile_expiry(Expiry::Record(kind), ms, id)?;
        }
        Ok(())
    }

    fn file_expiry(&self, class: Expiry, ms: i64, id: &str) -> TxResult<()> {
        self.exec(
            "INSERT INTO iw_expiry (class, ms, id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&class_code(class), &ms, &id],
        )?;
        Ok(())
    }

    fn unfile_expiry(&self, class: Expiry, ms: i64, id: &str) -> TxResult<()> {
        self.exec(
            "DELETE FROM iw_expiry WHERE class = $1 AND ms = $2 AND id = $3",
            &[&class_code(class), &ms, &id],
        )?;
        Ok(())
    }

    fn tombstone(&self, kind: CacheKind, id: &str) -> TxResult<Option<i64>> {
        let row = self
            .store
            .block(super::prepared::query_opt(
                self.client,
                "SELECT deleted_at FROM iw_tombstones WHERE kind = $1 AND id = $2",
                &[&kind_code(kind), &id],
            ))
            .map_err(storage)?;
        Ok(row.map(|r| r.get(0)))
    }

    fn put_tombstone(&self, kind: CacheKind, id: &str, deleted_at: i64, written_ms: i64) -> TxResult<()> {
        let k = kind_code(kind);
        let prev = self
            .store
            .block(super::prepared::query_opt(
                self.client,
                "SELECT written_ms FROM iw_tombstones WHERE kind = $1 AND id = $2 FOR UPDATE",
                &[&k, &id],
            ))
            .map_err(storage)?
            .map(|r| r.get::<_, i64>(0));
        self.exec(
            "INSERT INTO iw_tombstones (kind, id, deleted_at, written_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (kind, id) DO UPDATE SET deleted_at = EXCLUDED.deleted_at, written_ms = EXCLUDED.written_ms",
            &[&k, &id, &deleted_at, &written_ms],
        )?;
        if let Some(prev) = prev.filter(|&p| p != written_ms) {
            self.unfile_expiry(Expiry::Tombstone(kind), prev, id)?;
        }
        self.file_expiry(Expiry::Tombstone(kind), written_ms, id)
    }

    fn remove_tombstone(&self, kind: CacheKind, id: &str) -> TxResult<()> {
        let row = self
            .store
            .block(super::prepared::query_opt(
                self.client,
                "DELETE FROM iw_tombstones WHERE kind = $1 AND id = $2 RETURNING written_ms",
                &[&kind_code(kind), &id],
            ))
            .map_err(storage)?;
        if let Some(r) = row {
            self.unfile_expiry(Expiry::Tombstone(kind), r.get(0), id)?;
        }
        Ok(())
    }

    fn index_email(&self, email_hash: &str, contact_id: &str) -> TxResult<()> {
        self.exec(
            "INSERT INTO iw_email_index (hash, contact_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&email_hash, &contact_id],
        )?;
        Ok(())
    }

    fn unindex_email(&self, email_hash: &str, contact_id: &str) -> TxResult<()> {
        self.exec(
            "DELETE FROM iw_email_index WHERE hash = $1 AND contact_id = $2",
            &[&email_hash, &contact_id],
        )?;
        Ok(())
    }
}

impl Postgres {
    /// A handler's run in one transaction: the event's row locked (and the
    /// claim checked: another replica's live claim means not ours to run),
    /// the cache attempt, the outcome and the end of the claim, committed
    /// together. A replica that dies mid-way leaves nothing of it. A failed
    /// attempt's writes are rolled back and its outcome recorded on its own.
    pub fn apply_and_complete(
        &self,
        seen: &Snapshot,
        effects: &mut dyn FnMut(&dyn CacheTx) -> TxResult<()>,
        outcome: &dyn Fn(&Result<(), StoreError>) -> Completion,
    ) -> Result<HandlerRun, StoreError> {
        let key = seen.meta.key.as_str();
        let client = self.block(self.client())?;
        let mut run = || -> Result<Option<HandlerRun>, StoreError> {
            self.block(client.batch_execute("BEGIN")).map_err(pg_err)?;
            // The event's partition is where intake put it (its location).
            let row = match seen.meta.loc {
                Some(loc) => self.block(super::prepared::query_opt(
                    &client,
                    "SELECT meta, part, claim_owner, claim_until FROM iw_events \
                     WHERE part = $1 AND key = $2 FOR UPDATE",
                    &[&(loc.seg as i64), &key],
                )),
                None => self.block(super::prepared::query_opt(
                    &client,
                    "SELECT e.meta, e.part, e.claim_owner, e.claim_until FROM iw_dedup d \
                     JOIN iw_events e ON e.part = d.part AND e.key = d.key WHERE d.key = $1 FOR UPDATE OF e",
                    &[&key],
                )),
            }
            .map_err(pg_err)?;
            let Some(row) = row else {
                self.block(client.batch_execute("ROLLBACK")).map_err(pg_err)?;
                return Ok(Some((Ok(()), None)));
            };
            let owner: Option<String> = row.get(2);
            let until: Option<i64> = row.get(3);
            if owner.as_deref().is_some_and(|o| o != self.inner.node) && until.is_some_and(|u| u >= super::now()) {
                self.block(client.batch_execute("ROLLBACK")).map_err(pg_err)?;
                tracing::warn!(event = %key, "Another replica holds this event's claim: not run here.");
                return Ok(Some((Ok(()), None)));
            }
            let mut m = EventMeta::decode(row.get::<_, &[u8]>(0))
                .ok_or_else(|| StoreError::Corrupt(format!("event {key} has an unreadable record")))?;
            if !seen.still_runs_on(&m) {
                self.block(client.batch_execute("ROLLBACK")).map_err(pg_err)?;
                tracing::debug!(event = %key, "Already run since this work was queued: not run again.");
                return Ok(Some((Ok(()), None)));
            }
            let tx = PgCacheTx {
                store: self,
                client: &client,
                seen: RefCell::new(HashMap::new()),
            };
            match effects(&tx) {
                Ok(()) => {
                    let part: i64 = row.get(1);
                    outcome(&Ok(())).apply(&mut m);
                    self.block(super::prepared::execute(
                        &client,
                        "UPDATE iw_events SET meta = $3, status = $4, version = version + 1, due_ms = $5, \
                         claim_owner = NULL, claim_until = NULL WHERE part = $1 AND key = $2",
                        &[
                            &part,
                            &key,
                            &m.encode(),
                            &i16::from(m.status.code()),
                            &m.retry_at_ms.unwrap_or_else(super::now),
                        ],
                    ))
                    .map_err(pg_err)?;
                    self.block(client.batch_execute("COMMIT")).map_err(pg_err)?;
                    Ok(Some((Ok(()), Some(m))))
                }
                Err(TxError::Conflict) => {
                    self.block(client.batch_execute("ROLLBACK")).map_err(pg_err)?;
                    std::thread::yield_now();
                    Ok(None)
                }
                Err(TxError::Abort(msg)) => self
                    .failed_run(&client, seen, outcome, StoreError::Rejected(msg))
                    .map(Some),
                Err(TxError::Storage(e)) => self.failed_run(&client, seen, outcome, e).map(Some),
            }
        };
        for _ in 0..100 {
            match run() {
                Ok(Some(done)) => return Ok(done),
                Ok(None) => continue,
                Err(e) => {
                    // The connection may be inside a transaction: not back
                    // to the pool.
                    drop(deadpool_postgres::Object::take(client));
                    return Err(e);
                }
            }
        }
        Err(StoreError::Unavailable(
            "a cache record kept changing under its handler".into(),
        ))
    }

    /// A handler attempt that failed: its writes rolled back, its outcome
    /// (retrying or failed) recorded on its own.
    fn failed_run(
        &self,
        client: &deadpool_postgres::Object,
        seen: &Snapshot,
        outcome: &dyn Fn(&Result<(), StoreError>) -> Completion,
        error: StoreError,
    ) -> Result<HandlerRun, StoreError> {
        self.block(client.batch_execute("ROLLBACK")).map_err(pg_err)?;
        let result = Err(error);
        let recorded = self.complete(seen, &outcome(&result))?;
        Ok((result, recorded))
    }

    /// Runs attempts of `f`, each in a transaction, until one commits.
    pub fn cache_attempts(&self, f: &mut dyn FnMut(&dyn CacheTx) -> TxResult<()>) -> Result<(), StoreError> {
        let client = self.block(self.client())?;
        let result = self.attempts_on(&client, f);
        if matches!(result, Err(StoreError::Unavailable(_))) {
            // The connection may be inside a transaction: not back to the pool.
            drop(deadpool_postgres::Object::take(client));
        }
        result
    }

    fn attempts_on(
        &self,
        client: &deadpool_postgres::Object,
        f: &mut dyn FnMut(&dyn CacheTx) -> TxResult<()>,
    ) -> Result<(), StoreError> {
        for _ in 0..100 {
            self.block(client.batch_execute("BEGIN")).map_err(pg_err)?;
            let tx = PgCacheTx {
                store: self,
                client,
                seen: RefCell::new(HashMap::new()),
            };
            let outcome = f(&tx);
            match outcome {
                Ok(()) => {
                    self.block(client.batch_execute("COMMIT")).map_err(pg_err)?;
                    return Ok(());
                }
                Err(e) => {
                    self.block(client.batch_execute("ROLLBACK")).map_err(pg_err)?;
                    match e {
                        TxError::Conflict => std::thread::yield_now(),
                        TxError::Abort(msg) => return Err(StoreError::Rejected(msg)),
                        TxError::Storage(e) => return Err(e),
                    }
                }
            }
        }
        Err(StoreError::Unavailable(
            "a cache record kept changing under its handler".into(),
        ))
    }

    pub fn cache_get(&self, kind: CacheKind, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let row = super::prepared::query_opt(
                &client,
                "SELECT value FROM iw_cache WHERE kind = $1 AND id = $2",
                &[&kind_code(kind), &id],
            )
            .await
            .map_err(pg_err)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    pub fn cache_rewrite(&self, kind: CacheKind, id: &str, value: &[u8]) -> Result<bool, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let n = super::prepared::execute(
                &client,
                "UPDATE iw_cache SET value = $3, version = version + 1 WHERE kind = $1 AND id = $2",
                &[&kind_code(kind), &id, &value],
            )
            .await
            .map_err(pg_err)?;
            Ok(n > 0)
        })
    }

    pub fn cache_clear(&self) -> Result<u64, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let n = super::prepared::execute(&tx, "DELETE FROM iw_cache", &[])
                .await
                .map_err(pg_err)?;
            super::prepared::execute(&tx, "DELETE FROM iw_email_index", &[])
                .await
                .map_err(pg_err)?;
            super::prepared::execute(&tx, "DELETE FROM iw_expiry WHERE class IN (0, 1)", &[])
                .await
                .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            Ok(n)
        })
    }

    pub fn cache_all(&self, kind: CacheKind) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let rows = super::prepared::query(
                &client,
                "SELECT id, value FROM iw_cache WHERE kind = $1 ORDER BY id",
                &[&kind_code(kind)],
            )
            .await
            .map_err(pg_err)?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    pub fn cache_expired(&self, class: Expiry, before_ms: i64, limit: usize) -> Result<Vec<(i64, String)>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let rows = super::prepared::query(
                &client,
                "SELECT ms, id FROM iw_expiry WHERE class = $1 AND ms < $2 ORDER BY ms, id LIMIT $3",
                &[&class_code(class), &before_ms, &super::sql_limit(limit)],
            )
            .await
            .map_err(pg_err)?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    pub fn count_cache_expired(&self, class: Expiry, before_ms: i64) -> Result<u64, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM iw_expiry WHERE class = $1 AND ms < $2",
                    &[&class_code(class), &before_ms],
                )
                .await
                .map_err(pg_err)?
                .get(0);
            Ok(n as u64)
        })
    }

    pub fn email_index_all(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let rows = super::prepared::query(
                &client,
                "SELECT hash, contact_id FROM iw_email_index ORDER BY hash, contact_id",
                &[],
            )
            .await
            .map_err(pg_err)?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    pub fn contacts_for_email_hash(&self, hash: &str) -> Result<Vec<String>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let rows = super::prepared::query(
                &client,
                "SELECT contact_id FROM iw_email_index WHERE hash = $1 ORDER BY contact_id",
                &[&hash],
            )
            .await
            .map_err(pg_err)?;
            Ok(rows.into_iter().map(|r| r.get(0)).collect())
        })
    }
}
