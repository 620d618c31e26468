//! Work across replicas: an event waiting for a handler (`pending`, or
//! `retrying` and due) is claimed by one replica for a lease
//! (`[store] claim_lease`): `FOR UPDATE SKIP LOCKED` picks events no one
//! holds, oldest due first. New events are claimed by the replica that
//! stored them, in the same transaction. A replica that dies leaves its
//! claims to lapse, and another replica takes them. Outcomes are recorded
//! only under a live claim (see `events::complete`), so an event is not
//! processed by two replicas at once.

use std::time::Duration;

use super::{now, pg_err, Postgres};
use crate::store::{StoreError, Work};

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
                Ok(keys) => {
                    let got = keys.len();
                    for key in keys {
                        let _ = store.inner.work_tx.send(Work {
                            key,
                            fresh: None,
                            queued_ms: now(),
                        });
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

/// Claims due events no live claim holds (or, with `key`, that one event,
/// also when this replica already holds it). Returns the keys claimed.
pub async fn claim(store: &Postgres, key: Option<&str>) -> Result<Vec<String>, StoreError> {
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
                 WHERE e.part = c.part AND e.key = c.key RETURNING e.key",
            &[&inner.node, &until, &now, &CLAIM],
        )
        .await
        .map_err(pg_err)?,
        Some(key) => super::prepared::query(
            &client,
            "UPDATE iw_events e SET claim_owner = $1, claim_until = $2 \
                 FROM iw_dedup d WHERE d.key = $4 AND e.part = d.part AND e.key = d.key \
                 AND e.status IN (0, 3) AND (e.claim_until IS NULL OR e.claim_until < $3 OR e.claim_owner = $1) \
                 RETURNING e.key",
            &[&inner.node, &until, &now, &key],
        )
        .await
        .map_err(pg_err)?,
    };
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}
