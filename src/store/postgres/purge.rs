//! Purge by time: a partition whose whole time range is past the
//! retention is dropped with its keys (its events' dedup markers stay);
//! markers expire by their own retention.

use super::intake::part_table_suffix;
use super::{pg_err, Postgres};
use crate::store::{ExpiredEvents, StoreError};

impl Postgres {
    /// Partitions entirely before `before_ms`.
    fn parts_before(&self, before_ms: i64) -> Result<Vec<i64>, StoreError> {
        let cut = before_ms.div_euclid(self.inner.partition_ms);
        self.block(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT DISTINCT part FROM iw_part_keys WHERE part < $1 \
                     UNION SELECT DISTINCT part FROM iw_dedup WHERE part < $1 AND has_event ORDER BY 1",
                    &[&cut],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows.into_iter().map(|r| r.get(0)).collect())
        })
    }

    /// Drops each expired partition in its own transaction: the events
    /// become dedup markers, their subject entries and the partition's keys
    /// go, then the table. (`batch` is for backends that delete by rows.)
    pub fn expire_events(&self, before_ms: i64, _batch: usize) -> Result<ExpiredEvents, StoreError> {
        let mut out = ExpiredEvents::default();
        for part in self.parts_before(before_ms)? {
            let events = self.block(async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(pg_err)?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&super::intake::PARTITION_LOCK])
                    .await
                    .map_err(pg_err)?;
                // The markers locked in key order first, as an erasure
                // locks them: the two wait for each other instead of
                // deadlocking (a long torture run saw one).
                tx.execute(
                    "SELECT 1 FROM iw_dedup WHERE part = $1 AND has_event ORDER BY key FOR UPDATE",
                    &[&part],
                )
                .await
                .map_err(pg_err)?;
                let n = tx
                    .execute(
                        "UPDATE iw_dedup SET has_event = false WHERE part = $1 AND has_event",
                        &[&part],
                    )
                    .await
                    .map_err(pg_err)?;
                tx.execute(
                    "DELETE FROM iw_subjects s USING iw_dedup d WHERE d.part = $1 AND s.key = d.key",
                    &[&part],
                )
                .await
                .map_err(pg_err)?;
                tx.execute("DELETE FROM iw_part_keys WHERE part = $1", &[&part])
                    .await
                    .map_err(pg_err)?;
                tx.execute("DELETE FROM iw_shred WHERE part = $1", &[&part])
                    .await
                    .map_err(pg_err)?;
                tx.batch_execute(&format!("DROP TABLE IF EXISTS iw_events_p{}", part_table_suffix(part)))
                    .await
                    .map_err(pg_err)?;
                tx.commit().await.map_err(pg_err)?;
                Ok::<_, StoreError>(n)
            })?;
            self.inner.part_keys.forget_part(part);
            out.events += events;
            out.containers += 1;
        }
        if out.containers > 0 {
            self.block(async {
                let client = self.client().await?;
                client.batch_execute("VACUUM FULL iw_part_keys").await.map_err(pg_err)
            })?;
        }
        Ok(out)
    }

    pub fn count_expired_events(&self, before_ms: i64) -> Result<ExpiredEvents, StoreError> {
        let parts = self.parts_before(before_ms)?;
        let cut = before_ms.div_euclid(self.inner.partition_ms);
        let events = self.block(async {
            let client = self.client().await?;
            let n: i64 = client
                .query_one("SELECT count(*) FROM iw_events WHERE part < $1", &[&cut])
                .await
                .map_err(pg_err)?
                .get(0);
            Ok::<_, StoreError>(n as u64)
        })?;
        Ok(ExpiredEvents {
            events,
            containers: parts.len() as u64,
        })
    }

    pub fn remove_expired_markers(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
        self.block(async {
            let client = self.client().await?;
            client
                .execute(
                    "DELETE FROM iw_dedup WHERE key IN \
                     (SELECT key FROM iw_dedup WHERE NOT has_event AND received_ms < $1 LIMIT $2)",
                    &[&before_ms, &super::sql_limit(limit)],
                )
                .await
                .map_err(pg_err)
        })
    }

    pub fn count_expired_markers(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM iw_dedup WHERE NOT has_event AND received_ms < $1",
                    &[&before_ms],
                )
                .await
                .map_err(pg_err)?
                .get(0);
            Ok(n as u64)
        })
    }
}
