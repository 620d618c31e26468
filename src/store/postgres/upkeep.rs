//! Once a second: a heartbeat commit (so readiness says whether a commit
//! gets through now, a synchronous standby included). And the figures the
//! non-blocking methods answer with (queue depth and oldest, shred queue,
//! size): once a second too, unless reading them takes long (counting a
//! deep queue does), then less often, so that they cost the database at
//! most a twentieth of one core.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{now, pg_err, Postgres};
use crate::store::StoreError;

#[derive(Default)]
pub struct Cached {
    pub pending: AtomicU64,
    /// When the oldest queued event was received (0: none queued).
    pub oldest_pending_ms: AtomicI64,
    pub shred_parts: AtomicU64,
    pub shred_first_ms: AtomicI64,
    pub shred_last_ms: AtomicI64,
    pub size: AtomicU64,
    /// The last heartbeat did not commit (in time).
    pub unhealthy: AtomicBool,
    /// The database is a standby (read-only).
    pub read_only: AtomicBool,
}

impl Cached {
    pub fn note_shred_queued(&self, at: i64) {
        let _ = self
            .shred_first_ms
            .compare_exchange(0, at, Ordering::SeqCst, Ordering::SeqCst);
        self.shred_last_ms.store(at, Ordering::SeqCst);
        self.shred_parts.fetch_max(1, Ordering::SeqCst);
    }
}

/// The figures' cost bound: their reading takes at most this share of
/// the time between readings.
const FIGURES_SHARE: u32 = 20;

pub async fn run(store: Postgres) {
    let stop = store.inner.stop.clone();
    let mut next_figures = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
        let healthy = tokio::time::timeout(store.inner.commit_timeout, heartbeat(&store)).await;
        let ok = matches!(healthy, Ok(Ok(())));
        store.inner.cached.unhealthy.store(!ok, Ordering::SeqCst);
        if ok {
            store.inner.failing.store(false, Ordering::SeqCst);
        }
        if Instant::now() >= next_figures {
            let started = Instant::now();
            if let Err(e) = refresh(&store).await {
                tracing::debug!(error = %e, "Reading the store's figures failed.");
            }
            next_figures = Instant::now() + started.elapsed() * FIGURES_SHARE;
        }
    }
}

/// A commit of our own, as intake's would be (it waits for a synchronous
/// standby when there is one).
async fn heartbeat(store: &Postgres) -> Result<(), StoreError> {
    let client = store.client().await?;
    let name = format!("heartbeat:{}", store.inner.node);
    let r = client
        .execute(
            "INSERT INTO iw_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            &[&name, &now().to_be_bytes().to_vec()],
        )
        .await;
    if let Err(e) = r {
        // A standby takes no writes: say so.
        let read_only = e.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION);
        store.inner.cached.read_only.store(read_only, Ordering::SeqCst);
        // Not back to the pool: it may still wait on a commit.
        drop(deadpool_postgres::Object::take(client));
        return Err(pg_err(e));
    }
    store.inner.cached.read_only.store(false, Ordering::SeqCst);
    Ok(())
}

pub async fn refresh(store: &Postgres) -> Result<(), StoreError> {
    let client = store.client().await?;
    let r = client
        .query_one(
            "SELECT (SELECT count(*) FROM iw_events WHERE status IN (0, 3)), \
                    (SELECT count(*) FROM iw_shred), \
                    (SELECT min(queued_ms) FROM iw_shred), \
                    (SELECT max(queued_ms) FROM iw_shred), \
                    pg_database_size(current_database()), \
                    (SELECT min(received_ms) FROM iw_events WHERE status IN (0, 3))",
            &[],
        )
        .await
        .map_err(pg_err)?;
    let c = &store.inner.cached;
    c.pending.store(r.get::<_, i64>(0) as u64, Ordering::SeqCst);
    c.shred_parts.store(r.get::<_, i64>(1) as u64, Ordering::SeqCst);
    c.shred_first_ms
        .store(r.get::<_, Option<i64>>(2).unwrap_or(0), Ordering::SeqCst);
    c.shred_last_ms
        .store(r.get::<_, Option<i64>>(3).unwrap_or(0), Ordering::SeqCst);
    c.size.store(r.get::<_, i64>(4) as u64, Ordering::SeqCst);
    c.oldest_pending_ms
        .store(r.get::<_, Option<i64>>(5).unwrap_or(0), Ordering::SeqCst);
    Ok(())
}
