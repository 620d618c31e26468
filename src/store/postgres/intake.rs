//! Intake: appends from concurrent requests share one transaction. Each
//! batch writes every key to `iw_dedup` (a new key inserts, a known one
//! updates its `last_seen_ms`, so a duplicate's answer waits for a commit
//! of its own), inserts the new events with their payloads sealed under
//! their partition's key, counts the duplicates' deliveries, and commits.
//! Only then are the answers given. A batch that fails, or whose commit
//! does not come back within `commit_timeout` (a synchronous standby gone,
//! say), is answered as a failure: its commit is cancelled, but may have
//! happened on the primary; a redelivery then finds the key and waits for
//! a commit of its own, which fails the same way while the cause lasts.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::keys::{seal_packed, PartKey};
use super::{now, pg_err, Postgres};
use crate::store::{Appended, EventMeta, Fresh, Location, Snapshot, StoreError, Work};

/// `pg_advisory_xact_lock` key of partition creation and dropping.
pub const PARTITION_LOCK: i64 = 0x0069_775f_7061_7274;

/// Requests taken into one transaction at most.
const BATCH: usize = 256;

pub struct AppendReq {
    pub meta: EventMeta,
    pub body: Bytes,
    /// `body` compressed (`keys::pack`), done in the request's own task.
    pub packed: Vec<u8>,
    pub reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// Batches committing at once: while one waits for its commit (a disk
/// flush, a standby), the next is already being written.
const IN_FLIGHT: usize = 2;

pub async fn run(store: Postgres, mut rx: mpsc::Receiver<AppendReq>) {
    let stop = store.inner.stop.clone();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    loop {
        let first = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => break },
            _ = stop.cancelled() => {
                // Whatever is queued is answered as a failure: not stored.
                rx.close();
                while let Some(r) = rx.recv().await {
                    let _ = r.reply.send(Err(StoreError::Closed));
                }
                break;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            finish(&store, batch).await;
            drop(slot);
        });
    }
    // Wait for the batches still committing.
    let _ = slots.acquire_many(IN_FLIGHT as u32).await;
}

async fn finish(store: &Postgres, batch: Vec<AppendReq>) {
    let started = Instant::now();
    let result = commit(store, &batch).await;
    match result {
        Ok((answers, fresh)) => {
            store.inner.failing.store(false, Ordering::SeqCst);
            store.inner.commits.fetch_add(1, Ordering::Relaxed);
            store
                .inner
                .commit_us
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            for work in fresh {
                let _ = store.inner.work_tx.send(work);
            }
            for (req, answer) in batch.into_iter().zip(answers) {
                let _ = req.reply.send(Ok(answer));
            }
        }
        Err(e) => {
            store.inner.failing.store(true, Ordering::SeqCst);
            store.inner.last_error_ms.store(now(), Ordering::SeqCst);
            tracing::error!(error = %e, requests = batch.len(), "Storing a batch of notifications failed; answered 503.");
            for req in batch {
                let _ = req.reply.send(Err(StoreError::Unavailable(e.to_string())));
            }
        }
    }
}

/// One batch in one transaction. Returns each request's answer and the
/// work for the events it stored.
async fn commit(store: &Postgres, batch: &[AppendReq]) -> Result<(Vec<Appended>, Vec<Work>), StoreError> {
    let inner = &store.inner;
    let mut parts: Vec<i64> = batch.iter().map(|r| store.part_of(r.meta.received_ms)).collect();
    parts.sort_unstable();
    parts.dedup();
    let timed_out = || {
        StoreError::Unavailable(format!(
            "the database did not commit within {} ms",
            inner.commit_timeout.as_millis()
        ))
    };
    for &part in &parts {
        if !inner.part_keys.knows_part(part) {
            tokio::time::timeout(inner.commit_timeout, ensure_partition(store, part))
                .await
                .map_err(|_| timed_out())??;
        }
    }
    let mut client = store.client().await?;
    let work = async {
        let tx = client.transaction().await.map_err(pg_err)?;
        // The keys to seal under, read FOR SHARE: a re-encryption of one
        // of these partitions (erasure) waits for this batch, or this
        // batch for it, and then sees its new key.
        let mut keys: HashMap<i64, PartKey> = HashMap::new();
        for row in super::prepared::query(
            &tx,
            "SELECT k.part, k.version, k.wrapped FROM iw_part_keys k WHERE k.part = ANY($1) \
                 AND k.version = (SELECT max(version) FROM iw_part_keys m WHERE m.part = k.part) FOR SHARE OF k",
            &[&parts],
        )
        .await
        .map_err(pg_err)?
        {
            let part: i64 = row.get(0);
            keys.insert(part, inner.part_keys.learn(part, row.get(1), row.get::<_, &[u8]>(2))?);
        }
        // Dedup, first occurrence in the batch wins.
        let mut first: HashMap<&str, usize> = HashMap::new();
        for (i, r) in batch.iter().enumerate() {
            first.entry(r.meta.key.as_str()).or_insert(i);
        }
        // In key order: concurrent batches lock dedup rows in one order,
        // so they cannot deadlock.
        let mut uniq: Vec<usize> = first.values().copied().collect();
        uniq.sort_unstable_by(|&x, &y| batch[x].meta.key.cmp(&batch[y].meta.key));
        let ukeys: Vec<&str> = uniq.iter().map(|&i| batch[i].meta.key.as_str()).collect();
        let uparts: Vec<i64> = uniq.iter().map(|&i| store.part_of(batch[i].meta.received_ms)).collect();
        let ureceived: Vec<i64> = uniq.iter().map(|&i| batch[i].meta.received_ms).collect();
        let rows = super::prepared::query(
            &tx,
            "INSERT INTO iw_dedup (key, part, received_ms, last_seen_ms) \
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $3::int8[]) \
                 ON CONFLICT (key) DO UPDATE SET last_seen_ms = GREATEST(iw_dedup.last_seen_ms, EXCLUDED.last_seen_ms) \
                 RETURNING key, part, has_event, (xmax = 0) AS inserted",
            &[&ukeys, &uparts, &ureceived],
        )
        .await
        .map_err(pg_err)?;
        let mut inserted: HashMap<String, bool> = HashMap::new();
        // Where the stored event of each known key is (none: only its
        // dedup marker is left).
        let mut event_part: HashMap<String, i64> = HashMap::new();
        for row in &rows {
            let key: String = row.get(0);
            let is_new: bool = row.get(3);
            if is_new || row.get::<_, bool>(2) {
                event_part.insert(key.clone(), row.get(1));
            }
            inserted.insert(key, is_new);
        }
        let stored_here = |i: usize, r: &AppendReq| {
            inserted.get(&r.meta.key) == Some(&true) && first.get(r.meta.key.as_str()) == Some(&i)
        };
        // The new events.
        let lease_until = now() + inner.claim_lease_ms;
        let (mut e_part, mut e_key, mut e_recv, mut e_topic, mut e_meta, mut e_body, mut e_kv) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let (mut s_subject, mut s_key) = (Vec::new(), Vec::new());
        let mut fresh = Vec::new();
        for &i in &uniq {
            let r = &batch[i];
            if inserted.get(&r.meta.key) != Some(&true) {
                continue;
            }
            let part = store.part_of(r.meta.received_ms);
            let key = keys
                .get(&part)
                .ok_or_else(|| StoreError::Keyring(format!("partition {part} has no key")))?;
            let mut meta = r.meta.clone();
            meta.loc = Some(Location {
                seg: part as u64,
                off: 0,
                len: r.body.len() as u32,
            });
            let encoded = meta.encode();
            e_part.push(part);
            e_key.push(meta.key.clone());
            e_recv.push(meta.received_ms);
            e_topic.push(meta.topic.clone());
            e_meta.push(encoded);
            e_body.push(seal_packed(key, &meta.key, &r.packed));
            e_kv.push(key.version);
            for s in &meta.subjects {
                s_subject.push(s.clone());
                s_key.push(meta.key.clone());
            }
            if meta.status.is_queued() {
                fresh.push(Work {
                    key: meta.key.clone(),
                    queued_ms: now(),
                    fresh: Some(Box::new(Fresh {
                        seen: Snapshot {
                            meta: meta.clone(),
                            raw: 1i64.to_be_bytes().to_vec(),
                            pending_entry: true,
                        },
                        body: r.body.clone(),
                        batch: 0,
                    })),
                });
            }
        }
        let statuses: Vec<i16> = uniq
            .iter()
            .filter(|&&i| inserted.get(&batch[i].meta.key) == Some(&true))
            .map(|&i| i16::from(batch[i].meta.status.code()))
            .collect();
        if !e_key.is_empty() {
            super::prepared::execute(&tx,
                "INSERT INTO iw_events (part, key, received_ms, status, topic, meta, body, key_version, due_ms, claim_owner, claim_until) \
                 SELECT p, k, r, s, t, m, b, v, r, CASE WHEN s IN (0, 3) THEN $9 END, CASE WHEN s IN (0, 3) THEN $10::int8 END \
                 FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int2[], $5::text[], $6::bytea[], $7::bytea[], $8::int8[]) \
                 AS x(p, k, r, s, t, m, b, v)",
                &[&e_part, &e_key, &e_recv, &statuses, &e_topic, &e_meta, &e_body, &e_kv, &inner.node, &lease_until],
            )
            .await
            .map_err(pg_err)?;
        }
        if !s_key.is_empty() {
            super::prepared::execute(&tx,
                "INSERT INTO iw_subjects (subject, key) SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
                &[&s_subject, &s_key],
            )
            .await
            .map_err(pg_err)?;
        }
        // Duplicates (of earlier events or within the batch): count the
        // deliveries on the stored event.
        let mut dups: HashMap<&str, (u32, i64)> = HashMap::new();
        for (i, r) in batch.iter().enumerate() {
            if !stored_here(i, r) {
                let e = dups.entry(r.meta.key.as_str()).or_insert((0, 0));
                e.0 += 1;
                e.1 = e.1.max(r.meta.received_ms);
            }
        }
        let mut dups: Vec<(&str, (u32, i64))> = dups.into_iter().collect();
        dups.sort_unstable();
        for (key, (n, seen_ms)) in dups {
            let Some(&part) = event_part.get(key) else { continue };
            let row = super::prepared::query_opt(
                &tx,
                "SELECT meta FROM iw_events WHERE part = $1 AND key = $2 FOR UPDATE",
                &[&part, &key],
            )
            .await
            .map_err(pg_err)?;
            let Some(meta) = row.and_then(|row| EventMeta::decode(row.get::<_, &[u8]>(0))) else {
                continue;
            };
            let mut meta = meta;
            meta.delivery_count = meta.delivery_count.saturating_add(n);
            meta.last_delivery_ms = meta.last_delivery_ms.max(seen_ms);
            super::prepared::execute(&tx,
                "UPDATE iw_events SET meta = $3, deliveries = deliveries + $4, version = version + 1 WHERE part = $1 AND key = $2",
                &[&part, &key, &meta.encode(), &(n as i32)],
            )
            .await
            .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)?;
        let answers = batch
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if stored_here(i, r) {
                    Appended::Stored
                } else {
                    Appended::Duplicate
                }
            })
            .collect();
        Ok::<_, StoreError>((answers, fresh))
    };
    let result = match tokio::time::timeout(inner.commit_timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(timed_out()),
    };
    if result.is_err() {
        // The connection may still be waiting on a cancelled commit: never
        // give it to another request.
        let cancel = client.cancel_token();
        let _ = cancel.cancel_query(tokio_postgres::NoTls).await;
        drop(deadpool_postgres::Object::take(client));
    }
    result
}

/// Creates a partition's table and key unless another replica has; one
/// replica at a time (an advisory lock).
async fn ensure_partition(store: &Postgres, part: i64) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(pg_err)?;
    super::prepared::execute(&tx, "SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
        .await
        .map_err(pg_err)?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS iw_events_p{n} PARTITION OF iw_events FOR VALUES FROM ({part}) TO ({next})",
        n = part_table_suffix(part),
        next = part + 1
    ))
    .await
    .map_err(pg_err)?;
    let wrapped = store.inner.part_keys.wrap(part, 1, &crate::crypto::random_key());
    super::prepared::execute(
        &tx,
        "INSERT INTO iw_part_keys (part, version, wrapped) SELECT $1, 1, $2 \
         WHERE NOT EXISTS (SELECT 1 FROM iw_part_keys WHERE part = $1)",
        &[&part, &wrapped],
    )
    .await
    .map_err(pg_err)?;
    let rows = super::prepared::query(
        &tx,
        "SELECT version, wrapped FROM iw_part_keys WHERE part = $1",
        &[&part],
    )
    .await
    .map_err(pg_err)?;
    tx.commit().await.map_err(pg_err)?;
    for r in rows {
        store.inner.part_keys.learn(part, r.get(0), r.get::<_, &[u8]>(1))?;
    }
    Ok(())
}

/// A partition number as a table name suffix (negative numbers too).
pub fn part_table_suffix(part: i64) -> String {
    if part < 0 {
        format!("m{}", part.unsigned_abs())
    } else {
        part.to_string()
    }
}
