//! Erasure in the database: the events go at once (each row becomes its
//! erased record, payload gone; subject index entries dropped) and their
//! partitions are queued (`iw_shred`); a shred pass re-encrypts what remains of each
//! queued partition under a new key and destroys the old one, so no copy
//! of an erased payload (a dead tuple, a page not yet reused) can be
//! decrypted. The erasure ledger and the `erased` subjects are tables
//! here, seen by every replica at once.

use std::collections::HashMap;

use super::keys::{open_body, seal_body};
use super::{now, pg_err, Postgres};
use crate::store::{ErasedEvents, EventMeta, LedgerEntry, StoreError};

/// `pg_try_advisory_lock` key of the shred pass.
const SHRED_LOCK: i64 = 0x6977_5f73_6872_6564;

impl Postgres {
    pub fn events_for_subject(&self, subject: &str) -> Result<Vec<EventMeta>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT e.key, e.meta FROM iw_subjects s JOIN iw_dedup d ON d.key = s.key \
                     JOIN iw_events e ON e.part = d.part AND e.key = d.key WHERE s.subject = $1 \
                     ORDER BY e.received_ms, e.key",
                    &[&subject],
                )
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|r| {
                    EventMeta::decode(r.get::<_, &[u8]>(1)).ok_or_else(|| {
                        StoreError::Corrupt(format!("event {} has an unreadable record", r.get::<_, &str>(0)))
                    })
                })
                .collect()
        })
    }

    /// One transaction: the events' rows and subject entries go, their
    /// markers stay, their partitions are queued for a shred pass. Always
    /// durable on return (`durable` is for backends that batch).
    ///
    /// The rows are locked first, markers then events, each in key order
    /// (intake takes a marker before its event), so two erasures of
    /// overlapping sets wait for each other instead of deadlocking; a
    /// deadlock with another kind of transaction (or a serialization
    /// failure) rolls this one back, and it is run again, a few times.
    pub fn erase_events(&self, keys: &[String], _durable: bool) -> Result<ErasedEvents, StoreError> {
        if keys.is_empty() {
            return Ok(ErasedEvents::default());
        }
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        self.block(async {
            let mut client = self.client().await?;
            let mut attempt = 0u64;
            loop {
                match erase_once(&mut client, &keys).await {
                    Ok(erased) => {
                        self.inner.cached.note_shred_queued(now());
                        return Ok(erased);
                    }
                    Err(e) if attempt < 5 && rolled_back_by_a_conflict(&e) => {
                        attempt += 1;
                        tracing::debug!(attempt, "An erasure met a conflicting transaction; run again.");
                        tokio::time::sleep(std::time::Duration::from_millis(
                            10 * attempt + rand::random::<u64>() % 20,
                        ))
                        .await;
                    }
                    Err(e) => return Err(pg_err(e)),
                }
            }
        })
    }

    pub fn set_subjects(&self, key: &str, subjects: Vec<String>) -> Result<bool, StoreError> {
        let subjects_for_index = subjects.clone();
        let updated = self.update_dyn(key, &move |m| m.subjects = subjects.clone())?;
        if updated.is_none() {
            return Ok(false);
        }
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            tx.execute("DELETE FROM iw_subjects WHERE key = $1", &[&key])
                .await
                .map_err(pg_err)?;
            tx.execute(
                "INSERT INTO iw_subjects (subject, key) SELECT unnest($1::text[]), $2 ON CONFLICT DO NOTHING",
                &[&subjects_for_index, &key],
            )
            .await
            .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            Ok(true)
        })
    }

    /// Re-encrypts each queued partition's remaining payloads under a new
    /// key, in one transaction per partition that also replaces the key,
    /// then rewrites the key table (`VACUUM FULL`) so the old key's bytes
    /// are not left in its pages. Returns the partitions done.
    pub fn shred(&self) -> Result<u64, StoreError> {
        let _one = self.inner.shred_lock.lock().unwrap_or_else(|p| p.into_inner());
        // One pass at a time across replicas: the lock is the session's
        // (this connection's), held until the pass ends.
        let lock = self.block(self.client())?;
        let got: bool = self
            .block(lock.query_one("SELECT pg_try_advisory_lock($1)", &[&SHRED_LOCK]))
            .map_err(pg_err)?
            .get(0);
        if !got {
            return Ok(0);
        }
        let pass = (|| {
            let parts: Vec<i64> = self.block(async {
                let client = self.client().await?;
                let rows = client
                    .query("SELECT part FROM iw_shred ORDER BY part", &[])
                    .await
                    .map_err(pg_err)?;
                Ok::<_, StoreError>(rows.into_iter().map(|r| r.get(0)).collect())
            })?;
            let mut done = 0;
            for part in parts {
                self.block(self.reencrypt(part))?;
                done += 1;
            }
            Ok::<_, StoreError>(done)
        })();
        let _ = self.block(lock.execute("SELECT pg_advisory_unlock($1)", &[&SHRED_LOCK]));
        let done = pass?;
        if done > 0 {
            self.block(async {
                let client = self.client().await?;
                client.batch_execute("VACUUM FULL iw_part_keys").await.map_err(pg_err)
            })?;
        }
        self.block(super::upkeep::refresh(self))?;
        Ok(done)
    }

    /// A new key version for `part`; every row sealed under an older one
    /// re-sealed under it, 500 rows a transaction (intake goes on, sealing
    /// under the new version); then the older versions deleted, in a
    /// transaction that waits for intake batches still sealing under them
    /// and gives up (to loop again) if any row of theirs appeared.
    async fn reencrypt(&self, part: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        let current: Option<i64> = client
            .query_one("SELECT max(version) FROM iw_part_keys WHERE part = $1", &[&part])
            .await
            .map_err(pg_err)?
            .get(0);
        let Some(current) = current else {
            client
                .execute("DELETE FROM iw_shred WHERE part = $1", &[&part])
                .await
                .map_err(pg_err)?;
            return Ok(());
        };
        let version = current + 1;
        let plain = crate::crypto::random_key();
        client
            .execute(
                "INSERT INTO iw_part_keys (part, version, wrapped) VALUES ($1, $2, $3)",
                &[&part, &version, &self.inner.part_keys.wrap(part, version, &plain)],
            )
            .await
            .map_err(pg_err)?;
        let new = super::keys::PartKey {
            version,
            key: std::sync::Arc::new(plain),
        };
        drop(client);
        loop {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let rows = tx
                .query(
                    "SELECT e.key, e.body, e.key_version, k.wrapped FROM iw_events e \
                     JOIN iw_part_keys k ON k.part = e.part AND k.version = e.key_version \
                     WHERE e.part = $1 AND e.key_version < $2 AND e.body IS NOT NULL \
                     ORDER BY e.key LIMIT 500 FOR UPDATE OF e",
                    &[&part, &version],
                )
                .await
                .map_err(pg_err)?;
            for r in &rows {
                let key: String = r.get(0);
                let old = self.inner.part_keys.learn(part, r.get(2), r.get::<_, &[u8]>(3))?;
                let body = open_body(&old, &key, r.get::<_, &[u8]>(1))
                    .ok_or_else(|| StoreError::Corrupt(format!("the payload of {key} does not open")))?;
                tx.execute(
                    "UPDATE iw_events SET body = $3, key_version = $4 WHERE part = $1 AND key = $2",
                    &[&part, &key, &seal_body(&new, &key, &body)?, &version],
                )
                .await
                .map_err(pg_err)?;
            }
            if !rows.is_empty() {
                tx.commit().await.map_err(pg_err)?;
                continue;
            }
            // Nothing left under an older key: delete them (waiting for
            // intake batches that hold them FOR SHARE), unless such a
            // batch has just added rows under one.
            tx.execute(
                "DELETE FROM iw_part_keys WHERE part = $1 AND version < $2",
                &[&part, &version],
            )
            .await
            .map_err(pg_err)?;
            let late: i64 = tx
                .query_one(
                    "SELECT count(*) FROM iw_events WHERE part = $1 AND key_version < $2 AND body IS NOT NULL",
                    &[&part, &version],
                )
                .await
                .map_err(pg_err)?
                .get(0);
            if late > 0 {
                tx.rollback().await.map_err(pg_err)?;
                continue;
            }
            tx.execute("DELETE FROM iw_shred WHERE part = $1", &[&part])
                .await
                .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            self.inner.part_keys.forget_older(part, version);
            return Ok(());
        }
    }

    pub fn ledger_append(&self, entry: &LedgerEntry) -> Result<(), StoreError> {
        let line = serde_json::to_string(entry).expect("serialising plain data cannot fail");
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            tx.execute("INSERT INTO iw_ledger (entry) VALUES ($1)", &[&line])
                .await
                .map_err(pg_err)?;
            tx.execute(
                "INSERT INTO iw_erased (subject, at_ms) SELECT unnest($1::text[]), $2 \
                 ON CONFLICT (subject) DO UPDATE SET at_ms = GREATEST(iw_erased.at_ms, EXCLUDED.at_ms)",
                &[&entry.subjects, &entry.at_ms],
            )
            .await
            .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)
        })
    }

    /// The ledger is in the same database as everything it erased: there
    /// is never anything to apply again.
    pub fn ledger_unapplied(&self) -> Result<(Vec<LedgerEntry>, u64), StoreError> {
        Ok((Vec::new(), self.ledger_len()? as u64))
    }

    pub fn ledger_len(&self) -> Result<usize, StoreError> {
        self.scalar("SELECT count(*) FROM iw_ledger")
            .map(|n| n.unwrap_or(0) as usize)
    }

    pub fn ledger_entries(&self) -> Result<Vec<LedgerEntry>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let rows = client
                .query("SELECT seq, entry FROM iw_ledger ORDER BY seq", &[])
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|r| {
                    serde_json::from_str(r.get::<_, &str>(1)).map_err(|_| {
                        StoreError::Corrupt(format!("iw_ledger row {} is not a ledger entry", r.get::<_, i64>(0)))
                    })
                })
                .collect()
        })
    }

    pub fn erased_at(&self, subject: &str) -> Result<Option<i64>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let row =
                super::prepared::query_opt(&client, "SELECT at_ms FROM iw_erased WHERE subject = $1", &[&subject])
                    .await
                    .map_err(pg_err)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    pub fn erased_among(&self, subjects: &[String]) -> Result<HashMap<String, i64>, StoreError> {
        if subjects.is_empty() {
            return Ok(HashMap::new());
        }
        self.block(async {
            let client = self.client().await?;
            let rows = super::prepared::query(
                &client,
                "SELECT subject, at_ms FROM iw_erased WHERE subject = ANY($1)",
                &[&subjects],
            )
            .await
            .map_err(pg_err)?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    pub fn state_value(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = format!("v:{name}");
        self.block(async {
            let client = self.client().await?;
            let row = client
                .query_opt("SELECT value FROM iw_meta WHERE name = $1", &[&name])
                .await
                .map_err(pg_err)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    pub fn set_state_value(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let name = format!("v:{name}");
        self.block(async {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO iw_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                    &[&name, &value],
                )
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }

    pub fn state_values(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = format!("v:{prefix}");
        self.block(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT name, value FROM iw_meta WHERE starts_with(name, $1) ORDER BY name",
                    &[&prefix],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, &str>(0)[2..].to_string(), r.get::<_, Vec<u8>>(1)))
                .collect())
        })
    }

    pub fn remove_state_value(&self, name: &str) -> Result<(), StoreError> {
        let name = format!("v:{name}");
        self.block(async {
            let client = self.client().await?;
            client
                .execute("DELETE FROM iw_meta WHERE name = $1", &[&name])
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }

    pub fn state_flag(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.state_value(&format!("flag:{name}"))?.is_some())
    }

    pub fn set_state_flag(&self, name: &str) -> Result<(), StoreError> {
        self.set_state_value(&format!("flag:{name}"), &[1])
    }

    pub fn clear_state_flag(&self, name: &str) -> Result<(), StoreError> {
        let name = format!("v:flag:{name}");
        self.block(async {
            let client = self.client().await?;
            client
                .execute("DELETE FROM iw_meta WHERE name = $1", &[&name])
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }
}

/// Whether the database rolled a transaction back because of another one
/// (a deadlock, a serialization failure): running it again may succeed.
fn rolled_back_by_a_conflict(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// The status column of an erased record.
const ERASED: i16 = crate::store::Status::Erased.code_i16();

/// [`Postgres::erase_events`]'s transaction, `keys` sorted.
async fn erase_once(
    client: &mut deadpool_postgres::Client,
    keys: &[String],
) -> Result<ErasedEvents, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT 1 FROM iw_dedup WHERE key = ANY($1) ORDER BY key FOR UPDATE",
        &[&keys],
    )
    .await?;
    tx.execute(
        "SELECT 1 FROM iw_events e JOIN iw_dedup d ON e.part = d.part AND e.key = d.key \
         WHERE d.key = ANY($1) ORDER BY e.key FOR UPDATE OF e",
        &[&keys],
    )
    .await?;
    // Each event becomes what is kept of it: its erased record, no payload.
    let rows = tx
        .query(
            "SELECT e.part, e.key, e.meta, e.received_ms, e.topic FROM iw_events e JOIN iw_dedup d \
               ON e.part = d.part AND e.key = d.key WHERE d.key = ANY($1) AND e.status <> $2",
            &[&keys, &ERASED],
        )
        .await?;
    let now = now();
    let mut parts: Vec<i64> = Vec::with_capacity(rows.len());
    let mut gone: Vec<String> = Vec::with_capacity(rows.len());
    let mut metas: Vec<Vec<u8>> = Vec::with_capacity(rows.len());
    for r in &rows {
        let key: String = r.get(1);
        let kept = match EventMeta::decode(r.get::<_, &[u8]>(2)) {
            Some(m) => m.erased(now),
            // Unreadable: what the columns say is all there is to keep.
            None => {
                let mut m = EventMeta::received(r.get(3), 0, Vec::new());
                m.key = key.clone();
                m.topic = r.get(4);
                m.erased(now)
            }
        };
        parts.push(r.get(0));
        gone.push(key);
        metas.push(kept.encode());
    }
    tx.execute(
        "UPDATE iw_events e SET status = $4, meta = u.meta, body = NULL, version = e.version + 1, \
           claim_owner = NULL, claim_until = NULL \
         FROM unnest($1::int8[], $2::text[], $3::bytea[]) AS u(part, key, meta) \
         WHERE e.part = u.part AND e.key = u.key",
        &[&parts, &gone, &metas, &ERASED],
    )
    .await?;
    parts.sort_unstable();
    parts.dedup();
    tx.execute("DELETE FROM iw_subjects WHERE key = ANY($1)", &[&gone])
        .await?;
    let queued = tx
        .execute(
            "INSERT INTO iw_shred (part, queued_ms) SELECT unnest($1::int8[]), $2 ON CONFLICT (part) DO NOTHING",
            &[&parts, &now],
        )
        .await?;
    tx.commit().await?;
    Ok(ErasedEvents {
        events: gone.len() as u64,
        segments_queued: queued,
    })
}
