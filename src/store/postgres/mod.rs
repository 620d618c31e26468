//! The PostgreSQL backend: every replica of the service shares one
//! database, so a lost node loses no acknowledged notification and any
//! replica takes the work (see `docs/postgres.md`).
//!
//! - **Intake** (`intake`): concurrent appends are batched into one
//!   transaction (a multi-row insert), committed with the session's
//!   `synchronous_commit` (on by default; with a synchronous standby the
//!   commit waits for it). A `200` follows the commit; a commit that does
//!   not come back within `commit_timeout` is cancelled and answered as a
//!   failure, even though the row may be committed locally, and a
//!   duplicate's answer waits for a commit of its own (a write to its
//!   dedup marker), so a redelivery is not `200` on the strength of a row
//!   that only the primary has.
//! - **Dedup** across replicas: `iw_dedup` holds every key stored, kept as
//!   a marker after the payload is purged or erased.
//! - **Work** (`queue`): events are claimed by a replica for a lease
//!   (`FOR UPDATE SKIP LOCKED`); a claim that lapses (a dead replica) is
//!   taken by another. An outcome is recorded only by the claim's holder.
//! - **Payloads** are encrypted in this process (the data key never enters
//!   the database) under a key per time partition (`iw_part_keys`, wrapped
//!   by the root key, itself wrapped by the data key in `iw_meta`). Purge
//!   drops whole partitions and their keys; erasure deletes the rows and
//!   re-encrypts what remains of each affected partition under a new key.

mod audit;
mod backend_impl;
mod cache_batch;
mod cache_tx;
mod erasure;
mod events;
mod intake;
pub(crate) mod keys;
mod purge;
mod queue;
pub mod schema;
mod upkeep;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::{PostgresSettings, StoreError, StoreSettings, Work};
use crate::crypto::{DataKey, Keys};

/// A database error as a store error: the store cannot take writes now.
/// The message carries the database's own (its `ERROR:` line), which
/// names tables and ids, never a payload: those are sealed.
pub(crate) fn pg_err(e: impl std::error::Error) -> StoreError {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(db) = s.downcast_ref::<tokio_postgres::error::DbError>() {
            // Class 22, a data exception: a value the database cannot take
            // (NUL in `text`, say). It is the request's fault, not the
            // store's; its message may quote the value, so only the code
            // is kept.
            if db.code().code().starts_with("22") {
                return StoreError::Refused(format!("SQLSTATE {}", db.code().code()));
            }
        }
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    StoreError::Unavailable(format!("database: {msg}"))
}

/// Statements on the hot paths (intake, claims, handler runs, outcomes)
/// go through these: each is prepared once per connection and kept in
/// deadpool's statement cache, so the database parses it once and plans it
/// once (our sessions ask for generic plans: see `Postgres::open`). Only
/// fixed SQL text goes here; the cache is keyed by the text and never
/// shrinks.
/// Starts a transaction whose statements only find rows by key (intake's,
/// a handler batch's): they must use the indexes whatever plan is cached on
/// the connection. A generic plan made while `iw_dedup` was small (and
/// analyzed then) scanned it whole for intake's lookup of duplicates, until
/// autovacuum analyzed it again, a minute at most, at a third of intake's
/// speed (3 of 8 runs of `benches/postgres.sh` on a fresh database); the
/// handler batch's read of `iw_cache` the same way.
const BEGIN_LOOKUPS: &str = "BEGIN; SET LOCAL enable_seqscan = off";

pub(crate) mod prepared {
    use deadpool_postgres::GenericClient;
    use tokio_postgres::types::ToSql;
    use tokio_postgres::{Error, Row};

    pub async fn query<C: GenericClient>(c: &C, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        let st = c.prepare_cached(sql).await?;
        c.query(&st, params).await
    }

    pub async fn query_opt<C: GenericClient>(
        c: &C,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        let st = c.prepare_cached(sql).await?;
        c.query_opt(&st, params).await
    }

    pub async fn execute<C: GenericClient>(c: &C, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        let st = c.prepare_cached(sql).await?;
        c.execute(&st, params).await
    }
}

/// The PostgreSQL backend: a cheap, clonable handle.
#[derive(Clone)]
pub struct Postgres {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    keys: Keys,
    pool: Pool,
    rt: Handle,
    /// This replica's name in claims (host, process, a random suffix).
    node: String,
    partition_ms: i64,
    claim_lease_ms: i64,
    commit_timeout: Duration,
    part_keys: keys::PartKeys,
    intake_tx: tokio::sync::mpsc::Sender<intake::AppendReq>,
    work_tx: Sender<Work>,
    work_rx: Receiver<Work>,
    /// Figures the non-blocking methods answer with, refreshed by
    /// `upkeep` every second.
    cached: upkeep::Cached,
    /// The last database operation of intake failed (readiness).
    failing: AtomicBool,
    commits: AtomicU64,
    commit_us: AtomicU64,
    stop: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    closed: AtomicBool,
    claiming: AtomicBool,
    shred_lock: Mutex<()>,
    last_error_ms: AtomicI64,
}

impl Postgres {
    /// Connects, migrates the schema, loads (or makes) the root keys kept
    /// in the database under the data key, and starts intake, the claimer
    /// and upkeep. Must be called within a tokio runtime (multi-threaded).
    pub fn open(
        dir: &Path,
        data_key: &DataKey,
        settings: &StoreSettings,
        pg: &PostgresSettings,
    ) -> Result<Postgres, StoreError> {
        let rt = Handle::try_current()
            .map_err(|_| StoreError::Unavailable("the PostgreSQL backend needs a tokio runtime".into()))?;
        let mut config: tokio_postgres::Config = pg
            .url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("INTERCOM_WEBHOOKS_DATABASE_URL: {e}")))?;
        // Our statements are key lookups and small range scans, whose
        // plan does not depend on the values: plan each once per
        // connection. A setting of these sessions only, never the
        // server's; options already in the URL come first.
        let options = match config.get_options() {
            Some(o) => format!("{o} -c plan_cache_mode=force_generic_plan"),
            None => "-c plan_cache_mode=force_generic_plan".to_string(),
        };
        config.options(&options);
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pg.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(pg.commit_timeout))
            .create_timeout(Some(pg.commit_timeout))
            .build()
            .map_err(pg_err)?;
        let root = block_on(&rt, async {
            let mut client = pool.get().await.map_err(pg_err)?;
            schema::migrate(&mut client).await?;
            keys::root_keys(&**client, data_key).await
        })?;
        let (intake_tx, intake_rx) = tokio::sync::mpsc::channel(8192);
        let (work_tx, work_rx) = crossbeam_channel::unbounded();
        let node = format!(
            "{}-{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into()),
            std::process::id(),
            hex::encode(&crate::crypto::random_key()[..4])
        );
        let keys = Keys::from_root(&root);
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            part_keys: keys::PartKeys::new(keys.wrap),
            keys,
            pool,
            rt: rt.clone(),
            node,
            partition_ms: settings.partition_ms(),
            claim_lease_ms: pg.claim_lease.as_millis() as i64,
            commit_timeout: pg.commit_timeout,
            intake_tx,
            work_tx,
            work_rx,
            cached: upkeep::Cached::default(),
            failing: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            commit_us: AtomicU64::new(0),
            stop: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            claiming: AtomicBool::new(false),
            shred_lock: Mutex::new(()),
            last_error_ms: AtomicI64::new(0),
        });
        let store = Postgres { inner };
        store.block(upkeep::refresh(&store))?;
        let tasks = vec![
            rt.spawn(intake::run(store.clone(), intake_rx)),
            rt.spawn(upkeep::run(store.clone())),
        ];
        *store.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        tracing::info!(node = %store.inner.node, "PostgreSQL store open.");
        Ok(store)
    }

    /// Starts the claimer (once): workers are about to take work.
    fn start_claiming(&self) {
        if !self.inner.claiming.swap(true, Ordering::SeqCst) {
            let task = self.inner.rt.spawn(queue::run(self.clone()));
            self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        }
    }

    /// Runs a future to completion from a blocking context (a worker
    /// thread, `spawn_blocking`, a runtime thread via `block_in_place`).
    pub(crate) fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        block_on(&self.inner.rt, f)
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.inner.pool.get().await.map_err(pg_err)
    }

    /// The partition a receipt time falls in.
    pub(crate) fn part_of(&self, received_ms: i64) -> i64 {
        received_ms.div_euclid(self.inner.partition_ms)
    }

    fn close_inner(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.stop.cancel();
        let tasks: Vec<_> = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        self.block(async {
            for t in tasks {
                let _ = t.await;
            }
        });
        for t in self.inner.threads.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = t.join();
        }
        self.inner.pool.close();
        Ok(())
    }
}

fn block_on<F: std::future::Future>(rt: &Handle, f: F) -> F::Output {
    match Handle::try_current() {
        // On a runtime thread: let it block without stalling the runtime.
        Ok(_) => tokio::task::block_in_place(|| rt.block_on(f)),
        Err(_) => rt.block_on(f),
    }
}

/// Milliseconds as PostgreSQL's bigint.
pub(crate) fn now() -> i64 {
    crate::timefmt::now_ms()
}

/// A count limit as SQL's `LIMIT` (bigint): `usize::MAX` (no limit) too.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
