//! Work across replicas: an event waiting for a handler (`pending`, or
//! `retrying` and due) is claimed by one replica for a lease
//! (`[store] claim_lease`): `FOR UPDATE SKIP LOCKED` picks events no one
//! holds, oldest due first. New events are claimed by the replica that
//! stored them, in the same transaction. A replica that dies leaves its
//! claims to lapse, and another replica takes them. Outcomes are recorded
//! only under a live claim (see `events::complete`), so an event is not
//! processed by two replicas at once. What a claim takes is read with its
//! payloads in one more statement and handed to the workers as intake
//! hands over what it stored, so that they run it in batches.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use super::keys::open_body;
use super::{now, pg_err, Postgres};
use crate::store::{EventMeta, Fresh, Snapshot, StoreError, Work};

/// How often idle replicas look for claimable work.
const POLL: Duration = Duration::from_millis(500);
/// Events claimed at a time, and the local queue length below which more
/// are claimed.
const CLAIM: i64 = 256;

pub async fn run(store: Postgres) {
    let stop = store.inner.stop.clone();
    loop {
        if store.inner.work_rx.len() < CLAIM as usize {
            match claim(&store, None).await {
                Ok(claimed) => {
                    let got = claimed.len();
                    for work in with_payloads(&store, claimed).await {
                        let _ = store.inner.work_tx.send(work);
                    }
                    if got as i64 == CLAIM {
                        continue;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Claiming work failed; will try again."),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The claimed events as work with their record and payload, read in one
/// statement (as intake hands over the events it stored), so that the
/// workers can run them in batches. An event that could not be read so
/// (gone, its payload purged, its key not opening) is handed over by key
/// alone, and the worker reads it itself.
async fn with_payloads(store: &Postgres, claimed: Vec<(String, i64)>) -> Vec<Work> {
    if claimed.is_empty() {
        return Vec::new();
    }
    let keys: Vec<&str> = claimed.iter().map(|(k, _)| k.as_str()).collect();
    let mut parts: Vec<i64> = claimed.iter().map(|&(_, p)| p).collect();
    parts.sort_unstable();
    parts.dedup();
    let rows = match store.client().await {
        Ok(client) => super::prepared::query(
            &client,
            "SELECT e.key, e.meta, e.version, e.part, e.body, e.key_version, k.wrapped FROM iw_events e \
             LEFT JOIN iw_part_keys k ON k.part = e.part AND k.version = e.key_version \
             WHERE e.part = ANY($1) AND e.key = ANY($2)",
            &[&parts, &keys],
        )
        .await
        .unwrap_or_default(),
        // Not read: every event goes by key alone (below).
        Err(_) => Vec::new(),
    };
    let mut read: HashMap<String, Work> = HashMap::with_capacity(rows.len());
    for row in rows {
        let key: String = row.get(0);
        let (Some(meta), Some(sealed), Some(wrapped)) = (
            EventMeta::decode(row.get::<_, &[u8]>(1)),
            row.get::<_, Option<&[u8]>>(4),
            row.get::<_, Option<&[u8]>>(6),
        ) else {
            continue;
        };
        let Ok(part_key) = store.inner.part_keys.learn(row.get(3), row.get(5), wrapped) else {
            continue;
        };
        let Some(body) = open_body(&part_key, &key, sealed) else {
            continue;
        };
        let pending_entry = meta.status.is_queued();
        let fresh = Fresh {
            seen: Snapshot {
                meta,
                raw: row.get::<_, i64>(2).to_be_bytes().to_vec(),
                pending_entry,
            },
            body: Bytes::from(body),
            batch: 0,
        };
        let work = Work {
            key: key.clone(),
            fresh: Some(Box::new(fresh)),
            queued_ms: now(),
        };
        read.insert(key, work);
    }
    // In the order claimed (oldest due first).
    claimed
        .into_iter()
        .map(|(key, _)| {
            read.remove(&key).unwrap_or(Work {
                key,
                fresh: None,
                queued_ms: now(),
            })
        })
        .collect()
}

/// Claims due events no live claim holds (or, with `key`, that one event,
/// also when this replica already holds it). Returns the keys claimed, with
/// their partitions.
pub async fn claim(store: &Postgres, key: Option<&str>) -> Result<Vec<(String, i64)>, StoreError> {
    let inner = &store.inner;
    let client = store.client().await?;
    let now = now();
    let until = now + inner.claim_lease_ms;
    let rows = match key {
        None => super::prepared::query(
            &client,
            "UPDATE iw_events e SET claim_owner = $1, claim_until = $2 \
                 FROM (SELECT part, key FROM iw_events \
                       WHERE status IN (0, 3) AND due_ms <= $3 AND (claim_until IS NULL OR claim_until < $3) \
                       ORDER BY due_ms LIMIT $4 FOR UPDATE SKIP LOCKED) c \
                 WHERE e.part = c.part AND e.key = c.key RETURNING e.key, e.part",
            &[&inner.node, &until, &now, &CLAIM],
        )
        .await
        .map_err(pg_err)?,
        Some(key) => super::prepared::query(
            &client,
            "UPDATE iw_events e SET claim_owner = $1, claim_until = $2 \
                 FROM iw_dedup d WHERE d.key = $4 AND e.part = d.part AND e.key = d.key \
                 AND e.status IN (0, 3) AND (e.claim_until IS NULL OR e.claim_until < $3 OR e.claim_owner = $1) \
                 RETURNING e.key, e.part",
            &[&inner.node, &until, &now, &key],
        )
        .await
        .map_err(pg_err)?,
    };
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}
