//! The audit chain in the database: one writer at a time across replicas
//! (an advisory lock held by the appending transaction), so the chain
//! never forks.

use super::{pg_err, Postgres};
use crate::store::StoreError;

/// `pg_advisory_xact_lock` key of the audit chain.
const AUDIT_LOCK: i64 = 0x6977_5f61_7564;

fn anchor_of(v: &[u8]) -> Option<(u64, Vec<u8>)> {
    let seq = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    Some((seq, v[8..].to_vec()))
}

impl Postgres {
    pub fn audit_append_dyn(&self, make: &mut dyn FnMut(Option<(u64, Vec<u8>)>) -> Vec<u8>) -> Result<u64, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
                .await
                .map_err(pg_err)?;
            let last = tx
                .query_opt("SELECT seq, entry FROM iw_audit ORDER BY seq DESC LIMIT 1", &[])
                .await
                .map_err(pg_err)?
                .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, Vec<u8>>(1)));
            let last = match last {
                Some(l) => Some(l),
                None => tx
                    .query_opt("SELECT value FROM iw_meta WHERE name = 'audit_anchor'", &[])
                    .await
                    .map_err(pg_err)?
                    .and_then(|r| anchor_of(r.get::<_, &[u8]>(0))),
            };
            let seq = last.as_ref().map_or(1, |(s, _)| s + 1);
            let entry = make(last);
            tx.execute(
                "INSERT INTO iw_audit (seq, entry) VALUES ($1, $2)",
                &[&(seq as i64), &entry],
            )
            .await
            .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            Ok(seq)
        })
    }

    pub fn audit_entries(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let rows = client
                .query("SELECT seq, entry FROM iw_audit ORDER BY seq", &[])
                .await
                .map_err(pg_err)?;
            Ok(rows
                .into_iter()
                .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
                .collect())
        })
    }

    pub fn audit_anchor(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let row = client
                .query_opt("SELECT value FROM iw_meta WHERE name = 'audit_anchor'", &[])
                .await
                .map_err(pg_err)?;
            Ok(row.and_then(|r| anchor_of(r.get::<_, &[u8]>(0))))
        })
    }

    /// Removes the oldest entries while `expired` holds (never the newest),
    /// keeping the last removed as the anchor.
    pub fn audit_remove_expired_dyn(&self, expired: &dyn Fn(&[u8]) -> bool, limit: usize) -> Result<u64, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
                .await
                .map_err(pg_err)?;
            let rows = tx
                .query(
                    "SELECT seq, entry FROM iw_audit WHERE seq < (SELECT max(seq) FROM iw_audit) ORDER BY seq LIMIT $1",
                    &[&super::sql_limit(limit)],
                )
                .await
                .map_err(pg_err)?;
            let mut n = 0u64;
            let mut anchor = None;
            for r in &rows {
                let entry: &[u8] = r.get(1);
                if !expired(entry) {
                    break;
                }
                let seq: i64 = r.get(0);
                let mut a = (seq as u64).to_be_bytes().to_vec();
                a.extend_from_slice(entry);
                anchor = Some((seq, a));
                n += 1;
            }
            if let Some((seq, a)) = anchor {
                tx.execute("DELETE FROM iw_audit WHERE seq <= $1", &[&seq])
                    .await
                    .map_err(pg_err)?;
                tx.execute(
                    "INSERT INTO iw_meta (name, value) VALUES ('audit_anchor', $1) \
                     ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                    &[&a],
                )
                .await
                .map_err(pg_err)?;
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(n)
        })
    }

    pub fn audit_set_anchor(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let mut anchor = seq.to_be_bytes().to_vec();
        anchor.extend_from_slice(bytes);
        self.block(async {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO iw_meta (name, value) VALUES ('audit_anchor', $1) \
                     ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                    &[&anchor],
                )
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }

    pub fn audit_overwrite(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.block(async {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO iw_audit (seq, entry) VALUES ($1, $2) ON CONFLICT (seq) DO UPDATE SET entry = EXCLUDED.entry",
                    &[&(seq as i64), &bytes],
                )
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }

    pub fn audit_remove_newest_for_tests(&self) -> Result<(), StoreError> {
        self.block(async {
            let client = self.client().await?;
            client
                .execute("DELETE FROM iw_audit WHERE seq = (SELECT max(seq) FROM iw_audit)", &[])
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }
}
