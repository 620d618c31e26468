//! PURGE: every class of data leaves after its retention, on its own.
//!
//! | class | retention key | from | how |
//! |---|---|---|---|
//! | payloads (stored notifications) | `events` | receipt | the event's index entry is replaced by a dedup marker; the log segment is deleted and its key destroyed once everything in it has expired |
//! | dedup markers | `markers` | receipt | removed |
//! | cached contacts / conversations | `contacts` / `conversations` | last write | removed (email index entries with them) |
//! | tombstones | `tombstones` | deletion | removed |
//! | audit entries | `audit` | entry time | removed from the front of the chain (the anchor keeps it verifiable) |
//!
//! Each pass walks time-ordered keys from the oldest, so its cost follows
//! what expires, not what is kept, and it works in batches of
//! `[purge] batch_size` so intake never waits long behind it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::{ClassLabel, Metrics};
use crate::store::{CacheKind, Expiry, Store, StoreError};
use crate::timefmt::{format_ms, now_ms};

#[derive(Debug, Clone, Default)]
pub struct PurgeReport {
    pub dry_run: bool,
    pub counts: BTreeMap<&'static str, u64>,
    pub cutoffs: BTreeMap<&'static str, i64>,
    pub duration_ms: u64,
}

impl PurgeReport {
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "dry_run": self.dry_run,
            "removed": self.counts,
            "cutoffs": self.cutoffs.iter().map(|(k, v)| (k.to_string(), json!(format_ms(*v)))).collect::<serde_json::Map<_, _>>(),
            "duration_ms": self.duration_ms,
        })
    }

    pub fn record_metrics(&self, m: &Metrics) {
        for (class, n) in &self.counts {
            m.purged.get_or_create(&ClassLabel { class }).inc_by(*n);
        }
        m.purge_runs.inc();
        m.purge_last_run.set(now_ms() / 1000);
        m.purge_duration_ms.set(self.duration_ms as i64);
    }
}

fn cutoff(now: i64, d: std::time::Duration) -> i64 {
    now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One purge pass (or, with `dry_run`, the exact counts it would remove).
pub async fn run_once(store: &Store, settings: &Settings, dry_run: bool) -> Result<PurgeReport, StoreError> {
    let now = now_ms();
    let (store, settings) = (store.clone(), settings.clone());
    tokio::task::spawn_blocking(move || run_blocking(&store, &settings, dry_run, now))
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
}

fn run_blocking(store: &Store, settings: &Settings, dry_run: bool, now: i64) -> Result<PurgeReport, StoreError> {
    let started = Instant::now();
    let r = &settings.retention;
    let batch = settings.purge.batch_size;
    let mut report = PurgeReport {
        dry_run,
        ..PurgeReport::default()
    };
    let cuts = [
        ("events", cutoff(now, r.events)),
        ("markers", cutoff(now, r.markers)),
        ("contacts", cutoff(now, r.contacts)),
        ("conversations", cutoff(now, r.conversations)),
        ("tombstones", cutoff(now, r.tombstones)),
        ("audit", cutoff(now, r.audit)),
    ];
    for (k, v) in cuts {
        report.cutoffs.insert(k, v);
    }
    let cut = |k| report.cutoffs[k];
    let (ev, mk, co, cv, tb, au) = (
        cut("events"),
        cut("markers"),
        cut("contacts"),
        cut("conversations"),
        cut("tombstones"),
        cut("audit"),
    );

    if dry_run {
        let events = store.count_expired_events(ev)?;
        report.counts.insert("events", events.events);
        report.counts.insert("log_segments", events.containers);
        report.counts.insert("markers", store.count_expired_markers(mk)?);
        report
            .counts
            .insert("contacts", count_cache(store, CacheKind::Contact, co)?);
        report
            .counts
            .insert("conversations", count_cache(store, CacheKind::Conversation, cv)?);
        report.counts.insert(
            "tombstones",
            store.count_cache_expired(Expiry::Tombstone(CacheKind::Contact), tb)?
                + store.count_cache_expired(Expiry::Tombstone(CacheKind::Conversation), tb)?,
        );
        report.counts.insert("audit", crate::audit::count_expired(store, au)?);
        report.duration_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }

    // Payloads: index entries become markers, then whole segments go,
    // keys first.
    let events = store.expire_events(ev, batch)?;
    report.counts.insert("events", events.events);
    report.counts.insert("log_segments", events.containers);

    let mut markers = 0;
    loop {
        let n = store.remove_expired_markers(mk, batch)?;
        markers += n;
        if n == 0 {
            break;
        }
    }
    report.counts.insert("markers", markers);

    report
        .counts
        .insert("contacts", purge_cache(store, CacheKind::Contact, co, batch)?);
    report
        .counts
        .insert("conversations", purge_cache(store, CacheKind::Conversation, cv, batch)?);
    report.counts.insert(
        "tombstones",
        purge_tombstones(store, CacheKind::Contact, tb, batch)?
            + purge_tombstones(store, CacheKind::Conversation, tb, batch)?,
    );
    let mut audit = 0;
    loop {
        let n = crate::audit::expire(store, au, batch)?;
        audit += n;
        if n == 0 {
            break;
        }
    }
    report.counts.insert("audit", audit);
    report.duration_ms = started.elapsed().as_millis() as u64;
    if report.total() > 0 {
        let cutoffs: serde_json::Map<String, Value> = report
            .cutoffs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(format_ms(*v))))
            .collect();
        crate::audit::append(store, "purge", json!({ "removed": report.counts, "cutoffs": cutoffs }))?;
        tracing::info!(
            removed = report.total(),
            duration_ms = report.duration_ms,
            "Purge removed expired data."
        );
    }
    Ok(report)
}

/// How many records [`purge_cache`] would remove.
fn count_cache(store: &Store, kind: CacheKind, before: i64) -> Result<u64, StoreError> {
    let mut n = 0;
    for (ms, id) in store.cache_expired(Expiry::Record(kind), before, usize::MAX)? {
        if let Some(bytes) = store.cache_get(kind, &id)? {
            n += u64::from(crate::cache_rules::expired(&bytes, ms, before));
        }
    }
    Ok(n)
}

/// Removes the records last written before `before`. A record found filed
/// there but written since is filed again under its last write.
fn purge_cache(store: &Store, kind: CacheKind, before: i64, batch: usize) -> Result<u64, StoreError> {
    let mut n = 0;
    loop {
        let expired = store.cache_expired(Expiry::Record(kind), before, batch)?;
        if expired.is_empty() {
            return Ok(n);
        }
        for (ms, id) in &expired {
            let removed = store.cache_txn(|tx| crate::cache_rules::expire(tx, kind, id, *ms, before))?;
            n += u64::from(removed);
        }
    }
}

fn purge_tombstones(store: &Store, kind: CacheKind, before: i64, batch: usize) -> Result<u64, StoreError> {
    let mut n = 0;
    loop {
        let expired = store.cache_expired(Expiry::Tombstone(kind), before, batch)?;
        if expired.is_empty() {
            return Ok(n);
        }
        for (ms, id) in &expired {
            store.cache_txn(|tx| crate::cache_rules::expire_tombstone(tx, kind, id, *ms))?;
            n += 1;
        }
    }
}

/// Rewrites the log segments queued by webhook erasures, until shutdown:
/// one pass for a burst of erasures (a bulk deletion in Intercom), started
/// once none has been queued for `[purge] shred_quiet`, or once the oldest
/// has waited `[purge] shred_interval`.
pub async fn shred_loop(store: Store, settings: std::sync::Arc<Settings>, shutdown: CancellationToken) {
    let tick = settings
        .purge
        .shred_quiet
        .min(settings.purge.shred_interval)
        .min(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.cancelled() => return,
        }
        let Some((first, last)) = store.shred_waiting() else {
            continue;
        };
        let now = crate::timefmt::now_ms();
        let waited = |since: i64| Duration::from_millis((now - since).max(0) as u64);
        if waited(last) < settings.purge.shred_quiet && waited(first) < settings.purge.shred_interval {
            continue;
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.shred()).await {
            Ok(Ok(n)) => tracing::info!(segments = n, "Rewrote log segments without erased records."),
            Ok(Err(e)) => tracing::error!(error = %e, "Shredding erased records failed; will try again."),
            Err(e) => tracing::error!(error = %e, "Shredding erased records failed; will try again."),
        }
    }
}

/// The background purge: runs every `[purge] interval` until shutdown.
pub async fn run_loop(
    store: Store,
    settings: std::sync::Arc<Settings>,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.purge.interval) => {}
            _ = shutdown.cancelled() => return,
        }
        match run_once(&store, &settings, false).await {
            Ok(report) => report.record_metrics(&metrics),
            Err(e) => tracing::error!(error = %e, "Purge failed; will try again next interval."),
        }
    }
}
