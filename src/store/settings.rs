//! What the store is told at open: the store's own options type, so that
//! it needs nothing from the configuration layer (which fills it in).

use std::time::Duration;

use serde::Serialize;

use crate::timefmt::humantime_serde_compat;

#[derive(Debug, Clone, Serialize)]
pub struct StoreSettings {
    /// An intake log segment is closed once it is this large.
    pub segment_max_bytes: u64,
    /// ...or this old; purge deletes whole segments, so this is the
    /// granularity of payload expiry.
    #[serde(with = "humantime_serde_compat")]
    pub segment_max_age: Duration,
    /// No new segment is made (webhooks get `503`) while making one would
    /// leave less than this free on the data dir's filesystem, so the index
    /// always has room: sled cannot go on after a full disk until restarted.
    pub min_free_bytes: u64,
    /// How fast a shred pass (rewriting segments without erased records)
    /// reads and writes, each, in bytes per second (0: as fast as it can).
    /// It shares the disk with intake's `fdatasync`s.
    pub shred_bytes_per_second: u64,
    /// `[store] backend = "postgres"`: the database's settings. `None`: the
    /// embedded store in the data dir.
    pub postgres: Option<PostgresSettings>,
}

/// The PostgreSQL backend's settings.
#[derive(Debug, Clone, Serialize)]
pub struct PostgresSettings {
    /// `INTERCOM_WEBHOOKS_DATABASE_URL` (or `--database-url`, `_FILE`);
    /// never printed: it may hold a password.
    #[serde(skip)]
    pub url: String,
    /// Connections per replica.
    pub pool_size: usize,
    /// Events are kept in time partitions this long: purge drops whole
    /// partitions, erasure re-encrypts one.
    #[serde(with = "humantime_serde_compat")]
    pub partition: Duration,
    /// How long a replica's claim on an event lasts before another replica
    /// may take the event (longer than a handler ever takes).
    #[serde(with = "humantime_serde_compat")]
    pub claim_lease: Duration,
    /// A commit (or a batch) not back within this is answered `503`.
    #[serde(with = "humantime_serde_compat")]
    pub commit_timeout: Duration,
}

impl StoreSettings {
    /// The PostgreSQL backend's partition length in ms (at least 1 s).
    pub fn partition_ms(&self) -> i64 {
        self.postgres
            .as_ref()
            .map_or(86_400_000, |p| p.partition.as_millis().max(1000) as i64)
    }
}
