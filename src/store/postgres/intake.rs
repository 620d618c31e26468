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
use std::future::Future;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

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

async fn finish(store: &Postgres, mut batch: Vec<AppendReq>) {
    let started = Instant::now();
    let result = commit(store, &batch).await;
    match result {
        Err(StoreError::Refused(_)) if batch.len() > 1 => {
            // A value one request carries that the database cannot take:
            // nothing of the batch was committed. Its halves are tried on
            // their own, down to the one request at fault, so that no
            // other notification is refused for what it holds.
            let second = batch.split_off(batch.len() / 2);
            Box::pin(finish(store, batch)).await;
            Box::pin(finish(store, second)).await;
        }
        Err(StoreError::Refused(why)) => {
            let key = &batch[0].meta.key;
            tracing::warn!(error = %why, key = %key, "The database refused a value of a notification; answered 503.");
            for req in batch {
                let _ = req.reply.send(Err(StoreError::Refused(why.clone())));
            }
        }
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

/// The keys to seal under, read `FOR SHARE`: a re-encryption of one of
/// these partitions (erasure) waits for this batch, or this batch for it,
/// and then sees its new key.
const KEYS: &str = "SELECT k.part, k.version, k.wrapped FROM iw_part_keys k WHERE k.part = ANY($1) \
     AND k.version = (SELECT max(version) FROM iw_part_keys m WHERE m.part = k.part) FOR SHARE OF k";

/// Every key of the batch: a new one inserts its marker, a known one
/// updates its `last_seen_ms`, so a duplicate's answer waits for a commit
/// of its own. In key order, so that concurrent batches lock markers in one
/// order and cannot deadlock.
const DEDUP: &str = "INSERT INTO iw_dedup (key, part, received_ms, last_seen_ms) \
     SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $3::int8[]) \
     ON CONFLICT (key) DO UPDATE SET last_seen_ms = GREATEST(iw_dedup.last_seen_ms, EXCLUDED.last_seen_ms) \
     RETURNING key, (xmax = 0) AS inserted";

/// The stored events of the batch's keys seen before (the new ones have no
/// event yet), locked to count the duplicates' deliveries on them. Sent
/// after `DEDUP` in the same transaction, so a key stored by a concurrent
/// batch is found once that batch has committed. (A lateral subquery with
/// its lock is never flattened into a join: each key's event is one index
/// lookup; `BEGIN_LOOKUPS` keeps `iw_dedup` from being scanned.)
const KNOWN: &str = "SELECT d.part, d.key, e.meta FROM iw_dedup d CROSS JOIN LATERAL \
     (SELECT meta FROM iw_events e WHERE e.part = d.part AND e.key = d.key FOR UPDATE) e \
     WHERE d.key = ANY($1)";

const EVENTS: &str = "INSERT INTO iw_events (part, key, received_ms, status, topic, meta, body, key_version, due_ms, claim_owner, claim_until, deliveries) \
     SELECT p, k, r, s, t, m, b, v, r, CASE WHEN s IN (0, 3) THEN $9 END, CASE WHEN s IN (0, 3) THEN $10::int8 END, n \
     FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int2[], $5::text[], $6::bytea[], $7::bytea[], $8::int8[], $11::int4[]) \
     AS x(p, k, r, s, t, m, b, v, n)";

const SUBJECTS: &str =
    "INSERT INTO iw_subjects (subject, key) SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING";

const DELIVERIES: &str =
    "UPDATE iw_events SET meta = $3, deliveries = deliveries + $4, version = version + 1 WHERE part = $1 AND key = $2";

/// One batch in one transaction, in two round trips: the transaction's
/// start, the keys, the dedup markers and the known events go together;
/// then the new events, their subjects, the duplicates' counts and the
/// commit. (Waiting for each statement in turn cost 3.4 ms a batch on a
/// busy 2-core box, mostly in waking one process after another, and left a
/// third of the CPU idle; `docs/performance.md`.) A statement that fails
/// fails the batch, and its connection is discarded (below), so the
/// pipelined `COMMIT` can only end a transaction that went through whole.
/// Returns each request's answer and the work for the events it stored.
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
    // Dedup, first occurrence in the batch wins; the later ones are its
    // duplicates: how many, and the latest.
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut repeats: HashMap<&str, (u32, i64)> = HashMap::new();
    for (i, r) in batch.iter().enumerate() {
        let key = r.meta.key.as_str();
        if first.contains_key(key) {
            let e = repeats.entry(key).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(r.meta.received_ms);
        } else {
            first.insert(key, i);
        }
    }
    let mut uniq: Vec<usize> = first.values().copied().collect();
    uniq.sort_unstable_by(|&x, &y| batch[x].meta.key.cmp(&batch[y].meta.key));
    let ukeys: Vec<&str> = uniq.iter().map(|&i| batch[i].meta.key.as_str()).collect();
    let uparts: Vec<i64> = uniq.iter().map(|&i| store.part_of(batch[i].meta.received_ms)).collect();
    let ureceived: Vec<i64> = uniq.iter().map(|&i| batch[i].meta.received_ms).collect();
    let client = store.client().await?;
    let work = async {
        let c = &client;
        // Prepared first (once per connection; cached after): a statement
        // still to prepare would be sent after the others, and a `COMMIT`
        // could overtake it. Prepared, each is sent when first polled, and
        // `biased` polls them in the order written.
        let prepare = |sql| c.prepare_cached(sql);
        let keys_st = prepare(KEYS).await.map_err(pg_err)?;
        let dedup_st = prepare(DEDUP).await.map_err(pg_err)?;
        let known_st = prepare(KNOWN).await.map_err(pg_err)?;
        let events_st = prepare(EVENTS).await.map_err(pg_err)?;
        let subjects_st = prepare(SUBJECTS).await.map_err(pg_err)?;
        let deliveries_st = prepare(DELIVERIES).await.map_err(pg_err)?;
        let (p_keys, p_dedup, p_known): (Params, Params, Params) =
            (&[&parts], &[&ukeys, &uparts, &ureceived], &[&ukeys]);
        let (_, key_rows, dedup_rows, known_rows) = tokio::try_join!(
            biased;
            c.batch_execute(super::BEGIN_LOOKUPS),
            c.query(&keys_st, p_keys),
            c.query(&dedup_st, p_dedup),
            c.query(&known_st, p_known),
        )
        .map_err(pg_err)?;
        let mut keys: HashMap<i64, PartKey> = HashMap::new();
        for row in key_rows {
            let part: i64 = row.get(0);
            keys.insert(part, inner.part_keys.learn(part, row.get(1), row.get::<_, &[u8]>(2))?);
        }
        let inserted: HashMap<String, bool> = dedup_rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        let is_new = |key: &str| inserted.get(key) == Some(&true);
        // The new events, with their duplicates in this batch counted.
        let lease_until = now() + inner.claim_lease_ms;
        let mut ev = NewEvents::default();
        let (mut s_subject, mut s_key) = (Vec::new(), Vec::new());
        let mut fresh = Vec::new();
        for &i in &uniq {
            let r = &batch[i];
            if !is_new(&r.meta.key) {
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
            let (n, seen_ms) = repeats.get(meta.key.as_str()).copied().unwrap_or((0, 0));
            meta.delivery_count = meta.delivery_count.saturating_add(n);
            meta.last_delivery_ms = meta.last_delivery_ms.max(seen_ms);
            ev.part.push(part);
            ev.key.push(meta.key.clone());
            ev.received.push(meta.received_ms);
            ev.status.push(i16::from(meta.status.code()));
            ev.topic.push(meta.topic.clone());
            ev.meta.push(meta.encode());
            ev.body.push(seal_packed(key, &meta.key, &r.packed));
            ev.key_version.push(key.version);
            ev.deliveries
                .push(i32::try_from(meta.delivery_count).unwrap_or(i32::MAX));
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
                            meta,
                            raw: 1i64.to_be_bytes().to_vec(),
                            pending_entry: true,
                        },
                        body: r.body.clone(),
                        batch: 0,
                    })),
                });
            }
        }
        // Keys seen before: every delivery of theirs in this batch is a
        // duplicate, counted on the stored event (none when only its dedup
        // marker is left).
        let mut counted = Vec::new();
        for row in &known_rows {
            let key: &str = row.get(1);
            if is_new(key) {
                continue;
            }
            let Some(mut meta) = EventMeta::decode(row.get::<_, &[u8]>(2)) else {
                continue;
            };
            let (more, seen_ms) = repeats.get(key).copied().unwrap_or((0, 0));
            let n = more + 1;
            let first_seen = first.get(key).map_or(0, |&i| batch[i].meta.received_ms);
            let seen_ms = seen_ms.max(first_seen);
            meta.delivery_count = meta.delivery_count.saturating_add(n);
            meta.last_delivery_ms = meta.last_delivery_ms.max(seen_ms);
            counted.push((row.get::<_, i64>(0), key, meta.encode(), n as i32));
        }
        let p_events: Vec<&(dyn ToSql + Sync)> = vec![
            &ev.part,
            &ev.key,
            &ev.received,
            &ev.status,
            &ev.topic,
            &ev.meta,
            &ev.body,
            &ev.key_version,
            &inner.node,
            &lease_until,
            &ev.deliveries,
        ];
        let p_subjects: Params = &[&s_subject, &s_key];
        let p_counted: Vec<[&(dyn ToSql + Sync); 4]> = counted
            .iter()
            .map(|(part, key, meta, n)| [part as _, key as _, meta as _, n as _])
            .collect();
        let mut second: Vec<Pipelined> = Vec::new();
        if !ev.key.is_empty() {
            second.push(Box::pin(c.execute(&events_st, &p_events)));
        }
        if !s_key.is_empty() {
            second.push(Box::pin(c.execute(&subjects_st, p_subjects)));
        }
        for p in &p_counted {
            second.push(Box::pin(c.execute(&deliveries_st, p)));
        }
        second.push(Box::pin(async { c.batch_execute("COMMIT").await.map(|()| 0) }));
        in_order(second).await.map_err(pg_err)?;
        let answers = batch
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if is_new(&r.meta.key) && first.get(r.meta.key.as_str()) == Some(&i) {
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
        // The connection may still be in the transaction, or waiting on a
        // cancelled commit: never give it to another request.
        let cancel = client.cancel_token();
        let _ = cancel.cancel_query(tokio_postgres::NoTls).await;
        drop(deadpool_postgres::Object::take(client));
    }
    result
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

type Pipelined<'a> = std::pin::Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

/// Runs pipelined statements, polling them in the order given every time:
/// each is sent on its first poll, so they reach the server in this order
/// (a `COMMIT` last). The first error ends it; the caller discards the
/// connection then.
async fn in_order(mut pending: Vec<Pipelined<'_>>) -> Result<(), tokio_postgres::Error> {
    std::future::poll_fn(|cx| {
        let mut i = 0;
        while i < pending.len() {
            match pending[i].as_mut().poll(cx) {
                Poll::Ready(Ok(_)) => {
                    // Order of the rest is kept: each was polled already.
                    drop(pending.remove(i));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => i += 1,
            }
        }
        if pending.is_empty() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// The columns of a batch's new events, one array each.
#[derive(Default)]
struct NewEvents {
    part: Vec<i64>,
    key: Vec<String>,
    received: Vec<i64>,
    status: Vec<i16>,
    topic: Vec<String>,
    meta: Vec<Vec<u8>>,
    body: Vec<Vec<u8>>,
    key_version: Vec<i64>,
    deliveries: Vec<i32>,
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
