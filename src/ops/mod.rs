//! OPERATE: inspection, stats and replay, shared by the admin API and the
//! CLI (which calls these directly on a stopped store, or the admin API
//! when a server holds it). Every function returns the JSON document both
//! print, so the two paths cannot drift apart.

pub mod remote;

pub use crate::store::Glob;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::cache::{decode, CacheCodec, ContactRecord, ConversationRecord};
use crate::metrics::Metrics;
use crate::store::{CacheKind, EventFilter, EventMeta, Status, Store, StoreError};
use crate::timefmt::{format_ms, format_secs, now_ms, parse_time_bound};

/// Errors of operator requests, with the exit code / HTTP status they map to.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A filter as operators type it (query string, CLI flags, JSON body).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FilterQuery {
    pub status: Option<String>,
    pub topic: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<usize>,
    pub after: Option<String>,
}

impl FilterQuery {
    pub fn to_filter(&self) -> Result<EventFilter, OpsError> {
        let now = now_ms();
        let status = match &self.status {
            Some(s) => Some(Status::parse(s).ok_or_else(|| {
                OpsError::BadRequest(format!(
                    "unknown status '{s}' (pending, processed, skipped, retrying, failed, invalid)"
                ))
            })?),
            None => None,
        };
        let bound = |v: &Option<String>| -> Result<Option<i64>, OpsError> {
            v.as_deref()
                .map(|s| parse_time_bound(s, now))
                .transpose()
                .map_err(OpsError::BadRequest)
        };
        Ok(EventFilter {
            status,
            topic: self.topic.as_deref().map(Glob::new),
            since_ms: bound(&self.since)?,
            until_ms: bound(&self.until)?,
        })
    }
}

fn summary(m: &EventMeta) -> Value {
    json!({
        "id": m.key,
        "notification_id": m.notification_id,
        "topic": m.topic,
        "status": m.status.as_str(),
        "received_at": format_ms(m.received_ms),
        "created_at": m.created_at.map(format_secs),
        "deliveries": m.delivery_count,
        "attempts": m.attempts,
        "item_type": m.item_type,
        "item_id": m.item_id,
        "last_error": m.last_error,
    })
}

pub fn list_events(store: &Store, q: &FilterQuery) -> Result<Value, OpsError> {
    let filter = q.to_filter()?;
    let limit = q.limit.unwrap_or(50).clamp(1, 10_000);
    let (events, cursor) = store.list(&filter, q.after.as_deref(), limit)?;
    Ok(json!({
        "events": events.iter().map(summary).collect::<Vec<_>>(),
        "next_cursor": cursor,
    }))
}

/// One event: metadata, history and the payload, masked by an allow-list
/// (see `redact::payload`). With `raw` the payload is shown as stored,
/// personal data included, and an audit entry records that it was.
pub fn show_event(store: &Store, id: &str, raw: bool) -> Result<Value, OpsError> {
    let m = store
        .get(id)?
        .ok_or_else(|| OpsError::NotFound(format!("no event with id {id}")))?;
    let payload = match store.read_body(&m)? {
        Some(body) if raw => {
            crate::audit::append(store, "payload_viewed", json!({"event": m.key}))?;
            serde_json::from_slice::<Value>(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
        }
        Some(body) => match serde_json::from_slice::<Value>(&body) {
            Ok(v) => crate::redact::payload(&v),
            Err(_) => json!({"unparsable_body_bytes": body.len()}),
        },
        None => Value::Null,
    };
    let mut doc = summary(&m);
    doc["app_id"] = json!(m.app_id);
    doc["last_delivery_at"] = json!(format_ms(m.last_delivery_ms));
    doc["retry_at"] = json!(m.retry_at_ms.map(format_ms));
    doc["body_bytes"] = json!(m.body_len);
    doc["payload_stored"] = json!(m.loc.is_some());
    doc["history"] = m
        .history
        .iter()
        .map(
            |a| json!({"at": format_ms(a.at_ms), "outcome": a.outcome, "error": a.error, "duration_us": a.duration_us}),
        )
        .collect();
    doc["payload"] = payload;
    Ok(doc)
}

/// Counts, queue depth and health. `metrics` is present in a running server
/// (it knows signature failures and delivery health since start).
pub fn stats(store: &Store, metrics: Option<&Metrics>) -> Result<Value, OpsError> {
    let (by_status, by_topic, duplicates) = store.counts()?;
    let now = now_ms();
    let oldest = store.oldest_pending_ms()?;
    let mut statuses = serde_json::Map::new();
    for s in Status::ALL {
        statuses.insert(s.as_str().into(), json!(by_status.get(&s).copied().unwrap_or(0)));
    }
    let mut topics: Vec<(String, u64)> = by_topic.into_iter().collect();
    topics.sort();
    let mut doc = json!({
        "events_by_status": statuses,
        "events_by_topic": topics.into_iter().map(|(t, n)| (if t.is_empty() { "(invalid)".to_string() } else { t }, json!(n))).collect::<serde_json::Map<_, _>>(),
        "pending_depth": store.pending_depth(),
        "oldest_pending_age_secs": oldest.map(|t| (now - t).max(0) / 1000),
        "last_received_at": store.last_received_ms()?.map(format_ms),
        "duplicates_seen": duplicates,
        "store_size_bytes": store.size_on_disk(),
        "erasure": {
            "erasures_in_ledger": store.ledger_len()?,
            "segments_to_shred": store.shred_queue_len(),
        },
    });
    if let Some(m) = metrics {
        let failures: u64 = ["missing", "malformed", "mismatch"]
            .iter()
            .map(|r| {
                m.signature_failures
                    .get_or_create(&crate::metrics::Reason { reason: r })
                    .get()
            })
            .sum();
        doc["signature_failures_since_start"] = json!(failures);
        let last = m.health.last_2xx_ms();
        doc["webhook_health"] = json!({
                "consecutive_errors": m.health.consecutive_errors(),
                "last_2xx_at": (last > 0).then(|| format_ms(last)),
                "seconds_since_last_2xx": m.health.seconds_since_2xx(),
                "note": "Intercom pauses a subscription after 1000 consecutive errors within 15 minutes and suspends it after 7 days of errors",
        });
    }
    Ok(doc)
}

pub fn cache_show(store: &Store, codec: &CacheCodec, kind: CacheKind, id: &str) -> Result<Value, OpsError> {
    let bytes = store
        .cache_get(kind, id)?
        .ok_or_else(|| OpsError::NotFound(format!("no cached {} with id {id}", kind.as_str())))?;
    let unreadable = || {
        OpsError::Store(StoreError::Corrupt(format!(
            "cached {} {id} is unreadable",
            kind.as_str()
        )))
    };
    Ok(match kind {
        CacheKind::Contact => codec.contact_view(&decode::<ContactRecord>(&bytes).ok_or_else(unreadable)?),
        CacheKind::Conversation => {
            codec.conversation_view(&decode::<ConversationRecord>(&bytes).ok_or_else(unreadable)?)
        }
    })
}

/// What to replay.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
pub struct ReplayRequest {
    #[serde(default)]
    pub ids: Vec<String>,
    pub status: Option<String>,
    pub topic: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub dry_run: bool,
}

/// Selects events to replay and, unless it is a dry run, re-queues each one
/// (status `pending`, a `replayed` entry in its history). Returns the
/// selected keys; the caller runs them (workers, or inline on a stopped
/// store). Invalid events have no handler and are never selected.
pub fn select_replay(store: &Store, req: &ReplayRequest) -> Result<(Vec<String>, u64), OpsError> {
    let filtered = req.status.is_some() || req.topic.is_some() || req.since.is_some() || req.until.is_some();
    if req.ids.is_empty() && !filtered && !req.all {
        return Err(OpsError::BadRequest(
            "say what to replay: ids, a filter (status, topic, since, until) or all".into(),
        ));
    }
    let mut keys = Vec::new();
    if !req.ids.is_empty() {
        for id in &req.ids {
            let m = store
                .get(id)?
                .ok_or_else(|| OpsError::NotFound(format!("no event with id {id}")))?;
            if m.status != Status::Invalid {
                keys.push(m.key);
            }
        }
    } else {
        let q = FilterQuery {
            status: req.status.clone(),
            topic: req.topic.clone(),
            since: req.since.clone(),
            until: req.until.clone(),
            ..FilterQuery::default()
        };
        store.for_each(&q.to_filter()?, |m| {
            if m.status != Status::Invalid && m.loc.is_some() {
                keys.push(m.key);
            }
            Ok(())
        })?;
    }
    let mut replayed = 0;
    if !req.dry_run {
        let now = now_ms();
        for key in &keys {
            store.update(key, |m| {
                m.status = Status::Pending;
                m.attempts = 0;
                m.retry_at_ms = None;
                m.last_error = None;
                m.push_history(crate::store::Attempt {
                    at_ms: now,
                    outcome: "replayed".into(),
                    error: None,
                    duration_us: None,
                });
            })?;
            replayed += 1;
        }
    }
    Ok((keys, replayed))
}

/// Removes every cached record (tombstones stay, so deleted contacts still
/// cannot come back) and writes an audit entry.
pub fn cache_clear(store: &Store) -> Result<Value, OpsError> {
    let removed = store.cache_clear()?;
    crate::audit::append(store, "cache_clear", json!({ "records_removed": removed }))?;
    tracing::info!(records_removed = removed, "Cache cleared.");
    Ok(json!({ "removed": removed }))
}
