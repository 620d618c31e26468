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
}
