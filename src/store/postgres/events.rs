//! Reading and changing events: metadata (the encoded [`EventMeta`], with
//! its status, topic and times beside it in columns for queries, and a
//! version for compare-and-swap), payloads, outcomes, listings.

use std::sync::atomic::Ordering;

use super::keys::open_body;
use super::{now, pg_err, Postgres};
use crate::store::{Completion, Counts, EventFilter, EventMeta, EventPage, Snapshot, Status, StoreError};
use bytes::Bytes;

const SELECT_BY_KEY: &str = "SELECT e.meta, e.version, e.part FROM iw_dedup d \
     JOIN iw_events e ON e.part = d.part AND e.key = d.key WHERE d.key = $1";

fn decode(key: &str, bytes: &[u8]) -> Result<EventMeta, StoreError> {
    EventMeta::decode(bytes).ok_or_else(|| StoreError::Corrupt(format!("event {key} has an unreadable record")))
}

/// When a queued event is due: its retry time, else now.
fn due(m: &EventMeta) -> i64 {
    m.retry_at_ms.unwrap_or_else(now)
}

/// A topic glob as a `LIKE` pattern.
fn like(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len());
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// A listing cursor: the last row's (received_ms, key), hex.
fn cursor(ms: i64, key: &str) -> String {
    hex::encode(crate::store::time_key(ms, key))
}

fn parse_cursor(c: &str) -> Result<(i64, String), StoreError> {
    let raw = hex::decode(c).map_err(|_| StoreError::Corrupt("bad cursor".into()))?;
    crate::store::event::split_time_key(&raw)
        .map(|(ms, k)| (ms, k.to_string()))
        .ok_or_else(|| StoreError::Corrupt("bad cursor".into()))
}

impl Postgres {
    pub fn snapshot(&self, key: &str) -> Result<Option<Snapshot>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let row = super::prepared::query_opt(&client, SELECT_BY_KEY, &[&key])
                .await
                .map_err(pg_err)?;
            row.map(|r| {
                let meta = decode(key, r.get::<_, &[u8]>(0))?;
                let pending_entry = meta.status.is_queued();
                Ok(Snapshot {
                    meta,
                    raw: r.get::<_, i64>(1).to_be_bytes().to_vec(),
                    pending_entry,
                })
            })
            .transpose()
        })
    }

    pub fn get(&self, key: &str) -> Result<Option<EventMeta>, StoreError> {
        Ok(self.snapshot(key)?.map(|s| s.meta))
    }

    /// Read-modify-write under the row's lock. An event becoming queued is
    /// due now (or at its retry time) and loses any claim, so the next
    /// claim takes it.
    pub fn update_dyn(&self, key: &str, f: &dyn Fn(&mut EventMeta)) -> Result<Option<EventMeta>, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let Some(row) = tx
                .query_opt(&format!("{SELECT_BY_KEY} FOR UPDATE OF e"), &[&key])
                .await
                .map_err(pg_err)?
            else {
                return Ok(None);
            };
            let mut m = decode(key, row.get::<_, &[u8]>(0))?;
            let part: i64 = row.get(2);
            let was_queued = m.status.is_queued();
            f(&mut m);
            let release = m.status.is_queued() && !was_queued;
            super::prepared::execute(
                &tx,
                "UPDATE iw_events SET meta = $3, status = $4, version = version + 1, due_ms = $5, \
                 claim_owner = CASE WHEN $6 THEN NULL ELSE claim_owner END, \
                 claim_until = CASE WHEN $6 THEN NULL ELSE claim_until END \
                 WHERE part = $1 AND key = $2",
                &[
                    &part,
                    &key,
                    &m.encode(),
                    &i16::from(m.status.code()),
                    &due(&m),
                    &release,
                ],
            )
            .await
            .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            Ok(Some(m))
        })
    }

    /// The payload, opened with the key version it was sealed under.
    pub fn read_body(&self, meta: &EventMeta) -> Result<Option<Bytes>, StoreError> {
        let Some(loc) = meta.loc else { return Ok(None) };
        let part = loc.seg as i64;
        self.block(async {
            let client = self.client().await?;
            let Some(row) = super::prepared::query_opt(
                &client,
                "SELECT e.body, e.key_version, k.wrapped FROM iw_events e \
                     JOIN iw_part_keys k ON k.part = e.part AND k.version = e.key_version \
                     WHERE e.part = $1 AND e.key = $2",
                &[&part, &meta.key],
            )
            .await
            .map_err(pg_err)?
            else {
                return Ok(None);
            };
            let Some(sealed) = row.get::<_, Option<Vec<u8>>>(0) else {
                return Ok(None);
            };
            let key = self.inner.part_keys.learn(part, row.get(1), row.get::<_, &[u8]>(2))?;
            open_body(&key, &meta.key, &sealed)
                .map(|p| Some(Bytes::from(p)))
                .ok_or_else(|| StoreError::Corrupt(format!("the payload of {} does not open", meta.key)))
        })
    }

    /// Records an outcome under this replica's claim: merged into the
    /// event as it is now (a duplicate delivery counted meanwhile stays).
    /// Not recorded, and `None`, when another replica holds a live claim
    /// on the event (this one's lapsed), the event is gone, or another
    /// copy of this work recorded an outcome meanwhile.
    pub fn complete(&self, seen: &Snapshot, completion: &Completion) -> Result<Option<EventMeta>, StoreError> {
        let key = seen.meta.key.as_str();
        // Usually nothing changed since the worker read it: one statement.
        let version = <[u8; 8]>::try_from(seen.raw.as_slice()).ok().map(i64::from_be_bytes);
        if let (Some(version), Some(loc)) = (version, seen.meta.loc) {
            let mut m = seen.meta.clone();
            completion.apply(&mut m);
            let (owner, until) = self.claim_after(&m);
            let done = self.block(async {
                let client = self.client().await?;
                super::prepared::execute(
                    &client,
                    "UPDATE iw_events SET meta = $3, status = $4, version = version + 1, due_ms = $5, \
                         claim_owner = $6, claim_until = $7 \
                         WHERE part = $1 AND key = $2 AND version = $8 \
                           AND (claim_owner IS NULL OR claim_owner = $9 OR claim_until < $10)",
                    &[
                        &(loc.seg as i64),
                        &key,
                        &m.encode(),
                        &i16::from(m.status.code()),
                        &due(&m),
                        &owner,
                        &until,
                        &version,
                        &self.inner.node,
                        &now(),
                    ],
                )
                .await
                .map_err(pg_err)
            })?;
            if done == 1 {
                return Ok(Some(m));
            }
        }
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let Some(row) = super::prepared::query_opt(
                &tx,
                "SELECT e.meta, e.part, e.claim_owner, e.claim_until FROM iw_dedup d \
                     JOIN iw_events e ON e.part = d.part AND e.key = d.key WHERE d.key = $1 FOR UPDATE OF e",
                &[&key],
            )
            .await
            .map_err(pg_err)?
            else {
                return Ok(None);
            };
            let now = now();
            let owner: Option<String> = row.get(2);
            let until: Option<i64> = row.get(3);
            if owner.as_deref().is_some_and(|o| o != self.inner.node) && until.is_some_and(|u| u >= now) {
                tracing::warn!(event = %key, "Another replica holds this event's claim: this outcome is not recorded.");
                return Ok(None);
            }
            let mut m = decode(key, row.get::<_, &[u8]>(0))?;
            if !seen.still_runs_on(&m) {
                tracing::debug!(event = %key, "An outcome was recorded since this work was queued: this one is not.");
                return Ok(None);
            }
            let part: i64 = row.get(1);
            completion.apply(&mut m);
            let (claim_owner, claim_until) = self.claim_after(&m);
            super::prepared::execute(
                &tx,
                "UPDATE iw_events SET meta = $3, status = $4, version = version + 1, due_ms = $5, \
                 claim_owner = $6, claim_until = $7 WHERE part = $1 AND key = $2",
                &[
                    &part,
                    &key,
                    &m.encode(),
                    &i16::from(m.status.code()),
                    &due(&m),
                    &claim_owner,
                    &claim_until,
                ],
            )
            .await
            .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            Ok(Some(m))
        })
    }

    /// The claim an event keeps after an outcome: a retrying event stays
    /// this replica's until its retry is due (plus a lease), then anyone's.
    fn claim_after(&self, m: &EventMeta) -> (Option<String>, Option<i64>) {
        match (m.status, m.retry_at_ms) {
            (Status::Retrying, Some(at)) => (Some(self.inner.node.clone()), Some(at + self.inner.claim_lease_ms)),
            _ => (None, None),
        }
    }

    /// Newest first. With `scan_limit` (and `scan_time`) the page reads at
    /// most that many rows' (time, key, status, topic), matching or not,
    /// then the metadata of those that match: a rare filter costs no more
    /// than a common one.
    pub fn list(&self, filter: &EventFilter, after: Option<&str>, limit: usize) -> Result<EventPage, StoreError> {
        let (upper_ms, upper_key) = match after {
            Some(c) => parse_cursor(c)?,
            None => (filter.until_ms.map_or(i64::MAX, |u| u.saturating_add(1)), String::new()),
        };
        let since = filter.since_ms.unwrap_or(0);
        let limit = limit.max(1);
        self.block(async {
            let client = self.client().await?;
            let mut page = EventPage::default();
            let Some(scan) = filter.scan_limit else {
                let status = filter.status.map(|s| i16::from(s.code()));
                let topic = filter.topic.as_ref().map(|g| like(g.pattern()));
                let rows = super::prepared::query(&client,
                        "SELECT key, meta FROM iw_events WHERE (received_ms, key) < ($1, $2) AND received_ms >= $3 \
                         AND ($4::int2 IS NULL OR status = $4) AND ($5::text IS NULL OR topic LIKE $5) \
                         ORDER BY received_ms DESC, key DESC LIMIT $6",
                        &[&upper_ms, &upper_key, &since, &status, &topic, &super::sql_limit(limit)],
                    )
                    .await
                    .map_err(pg_err)?;
                for r in &rows {
                    let key: String = r.get(0);
                    page.events.push(decode(&key, r.get::<_, &[u8]>(1))?);
                }
                if page.events.len() >= limit {
                    let last = &page.events[page.events.len() - 1];
                    page.next = Some(cursor(last.received_ms, &last.key));
                }
                return Ok(page);
            };
            let deadline = filter.scan_time.map(|t| std::time::Instant::now() + t);
            let rows = super::prepared::query(&client,
                    "SELECT received_ms, key, part, status, topic FROM iw_events \
                     WHERE (received_ms, key) < ($1, $2) AND received_ms >= $3 \
                     ORDER BY received_ms DESC, key DESC LIMIT $4",
                    &[&upper_ms, &upper_key, &since, &(scan.max(1) as i64)],
                )
                .await
                .map_err(pg_err)?;
            let (mut parts, mut keys) = (Vec::new(), Vec::new());
            for (read, r) in rows.iter().enumerate() {
                let (ms, key): (i64, String) = (r.get(0), r.get(1));
                page.searched_to_ms = Some(ms);
                let status_ok = filter.status.is_none_or(|s| i16::from(s.code()) == r.get::<_, i16>(3));
                let topic_ok = filter.topic.as_ref().is_none_or(|g| g.matches(r.get::<_, &str>(4)));
                if status_ok && topic_ok {
                    parts.push(r.get::<_, i64>(2));
                    keys.push(key.clone());
                }
                let out_of_time = deadline.is_some_and(|d| std::time::Instant::now() >= d);
                if keys.len() >= limit || read + 1 >= scan.max(1) || out_of_time {
                    page.next = Some(cursor(ms, &key));
                    break;
                }
            }
            if !keys.is_empty() {
                let metas = super::prepared::query(&client,
                        "SELECT key, meta FROM iw_events WHERE (part, key) IN (SELECT * FROM unnest($1::int8[], $2::text[])) \
                         ORDER BY received_ms DESC, key DESC",
                        &[&parts, &keys],
                    )
                    .await
                    .map_err(pg_err)?;
                for r in &metas {
                    let key: String = r.get(0);
                    page.events.push(decode(&key, r.get::<_, &[u8]>(1))?);
                }
            }
            Ok(page)
        })
    }

    /// Oldest first, in pages of 1,000 (keyset paging).
    pub fn for_each_dyn(
        &self,
        filter: &EventFilter,
        f: &mut dyn FnMut(EventMeta) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let until = filter.until_ms.unwrap_or(i64::MAX);
        let status = filter.status.map(|s| i16::from(s.code()));
        let topic = filter.topic.as_ref().map(|g| like(g.pattern()));
        let (mut from_ms, mut from_key) = (filter.since_ms.unwrap_or(0), String::new());
        loop {
            let rows = self.block(async {
                let client = self.client().await?;
                super::prepared::query(
                    &client,
                    "SELECT received_ms, key, meta FROM iw_events \
                         WHERE (received_ms, key) > ($1, $2) \
                           AND received_ms <= $3 \
                           AND ($4::int2 IS NULL OR status = $4) AND ($5::text IS NULL OR topic LIKE $5) \
                         ORDER BY received_ms, key LIMIT $6",
                    &[&from_ms, &from_key, &until, &status, &topic, &1000i64],
                )
                .await
                .map_err(pg_err)
            })?;
            let Some(last) = rows.last() else { return Ok(()) };
            from_ms = last.get(0);
            from_key = last.get(1);
            let n = rows.len();
            for r in rows {
                let key: String = r.get(1);
                f(decode(&key, r.get::<_, &[u8]>(2))?)?;
            }
            if n < 1000 {
                return Ok(());
            }
        }
    }

    pub fn counts(&self) -> Result<Counts, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let rows = super::prepared::query(&client,
                    "SELECT status, topic, count(*), COALESCE(sum(deliveries - 1), 0)::int8 FROM iw_events GROUP BY status, topic",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            let (mut by_status, mut by_topic, mut dups) = (std::collections::HashMap::new(), std::collections::HashMap::new(), 0u64);
            for r in rows {
                let n = r.get::<_, i64>(2) as u64;
                if let Some(s) = Status::from_code(r.get::<_, i16>(0) as u8) {
                    *by_status.entry(s).or_insert(0) += n;
                }
                *by_topic.entry(r.get::<_, String>(1)).or_insert(0) += n;
                dups += r.get::<_, i64>(3) as u64;
            }
            Ok((by_status, by_topic, dups))
        })
    }

    pub fn failed_count(&self) -> Result<usize, StoreError> {
        self.scalar("SELECT count(*) FROM iw_events WHERE status = 4")
            .map(|n| n.unwrap_or(0) as usize)
    }

    pub fn last_received_ms(&self) -> Result<Option<i64>, StoreError> {
        self.scalar("SELECT max(received_ms) FROM iw_events")
    }

    /// As of upkeep's last reading of the figures (see `upkeep`).
    pub fn oldest_pending_ms(&self) -> Result<Option<i64>, StoreError> {
        let ms = self.inner.cached.oldest_pending_ms.load(Ordering::SeqCst);
        Ok((ms != 0).then_some(ms))
    }

    pub fn queued_keys(&self) -> Result<Vec<String>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let rows = super::prepared::query(
                &client,
                "SELECT key FROM iw_events WHERE status IN (0, 3) ORDER BY received_ms, key",
                &[],
            )
            .await
            .map_err(pg_err)?;
            Ok(rows.into_iter().map(|r| r.get(0)).collect())
        })
    }

    /// One bigint (or null) from a query without parameters.
    pub(crate) fn scalar(&self, sql: &str) -> Result<Option<i64>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            Ok(client
                .query_one(sql, &[])
                .await
                .map_err(pg_err)?
                .get::<_, Option<i64>>(0))
        })
    }
}
