//! Questions about the events held: the queue, failures, listings,
//! counts.

use super::*;

impl Embedded {
    /// Keys of events waiting for a worker, oldest first.
    pub fn queued_keys(&self) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        for kv in self.inner.trees.pending.iter() {
            let (k, _) = kv?;
            if let Some((_, key)) = event::split_time_key(&k) {
                keys.push(key.to_string());
            }
        }
        Ok(keys)
    }

    /// Events whose handler gave up, counted from their index (cheap
    /// enough for every metrics scrape).
    pub fn failed_count(&self) -> Result<usize, StoreError> {
        Ok(self.failed_events()?.len())
    }

    /// Events whose handler gave up, read through their index, in the
    /// listing's order (time key), with their time keys.
    fn failed_events(&self) -> Result<Vec<(Vec<u8>, EventMeta)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.trees.failed.iter() {
            let (k, _) = kv?;
            let v = self.inner.trees.events.get(&k)?;
            if let Some(m) = v
                .and_then(|v| EventMeta::decode(&v))
                .filter(|m| m.status == Status::Failed)
            {
                out.push((time_key(m.received_ms, &m.key), m));
            }
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Events waiting for a worker: those with a `pending` entry and fresh
    /// ones handed out without one.
    pub fn pending_depth(&self) -> usize {
        self.inner.trees.pending.len() + self.inner.shared.progress().unfinished()
    }

    /// Received time of the oldest queued event.
    pub fn oldest_pending_ms(&self) -> Result<Option<i64>, StoreError> {
        let entry = self
            .inner
            .trees
            .pending
            .first()?
            .and_then(|(k, _)| event::split_time_key(&k).map(|(ms, _)| ms));
        let fresh = self.inner.shared.progress().oldest_fresh_ms();
        Ok(entry.into_iter().chain(fresh).min())
    }

    /// Events matching `filter`, newest first, after the cursor `after` (a
    /// previous page's last `cursor`), at most `limit`.
    pub fn list(&self, filter: &EventFilter, after: Option<&str>, limit: usize) -> Result<EventPage, StoreError> {
        let upper: Vec<u8> = match after {
            Some(c) => hex::decode(c).map_err(|_| StoreError::Corrupt("bad cursor".into()))?,
            None => match filter.until_ms {
                Some(u) => time_key(u.saturating_add(1), ""),
                None => vec![0xff; 9],
            },
        };
        let lower = time_key(filter.since_ms.unwrap_or(0), "");
        let mut page = EventPage::default();
        if filter.status == Some(Status::Failed) {
            // Through the failed index: however few among however many.
            for (k, m) in self.failed_events()?.into_iter().rev() {
                if k >= upper || k < lower || !filter.matches(&m) {
                    continue;
                }
                page.searched_to_ms = Some(m.received_ms);
                page.events.push(m);
                if page.events.len() >= limit {
                    page.next = Some(hex::encode(&k));
                    break;
                }
            }
            return Ok(page);
        }
        let budget = filter.scan_limit.unwrap_or(usize::MAX).max(1);
        let deadline = filter.scan_time.map(|t| std::time::Instant::now() + t);
        for (read, kv) in self.inner.trees.by_time.range(lower..upper).rev().enumerate() {
            let (k, _) = kv?;
            let Some((ms, key)) = event::split_time_key(&k) else {
                continue;
            };
            page.searched_to_ms = Some(ms);
            if let Some(m) = self.get(key)? {
                if filter.matches(&m) {
                    page.events.push(m);
                }
            }
            let out_of_time = read % 64 == 63 && deadline.is_some_and(|d| std::time::Instant::now() >= d);
            if page.events.len() >= limit || read + 1 >= budget || out_of_time {
                page.next = Some(hex::encode(&k));
                break;
            }
        }
        Ok(page)
    }

    /// Calls `f` for every event matching `filter`, oldest first.
    pub fn for_each(
        &self,
        filter: &EventFilter,
        mut f: impl FnMut(EventMeta) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let lower = time_key(filter.since_ms.unwrap_or(0), "");
        let upper = match filter.until_ms {
            Some(u) => time_key(u.saturating_add(1), ""),
            None => vec![0xff; 9],
        };
        if filter.status == Some(Status::Failed) {
            for (k, m) in self.failed_events()? {
                if k >= lower && k < upper && filter.matches(&m) {
                    f(m)?;
                }
            }
            return Ok(());
        }
        for kv in self.inner.trees.by_time.range(lower..upper) {
            let (k, _) = kv?;
            let Some((_, key)) = event::split_time_key(&k) else {
                continue;
            };
            if let Some(m) = self.get(key)? {
                if filter.matches(&m) {
                    f(m)?;
                }
            }
        }
        Ok(())
    }

    /// Counts of events by status and by topic, and the duplicate
    /// deliveries they received.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        let mut by_status = HashMap::new();
        let mut by_topic = HashMap::new();
        let mut duplicates = 0u64;
        for kv in self.inner.trees.events.iter() {
            let (_, v) = kv?;
            if let Some(m) = EventMeta::decode(&v) {
                *by_status.entry(m.status).or_insert(0) += 1;
                *by_topic.entry(m.topic).or_insert(0) += 1;
                duplicates += u64::from(m.delivery_count.saturating_sub(1));
            }
        }
        Ok((by_status, by_topic, duplicates))
    }

    pub fn last_received_ms(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .inner
            .trees
            .by_time
            .last()?
            .and_then(|(k, _)| event::split_time_key(&k).map(|(ms, _)| ms)))
    }
}
