//! Events: listing, one event in full, replay.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Action, FilterQuery, Local, OpsError, Route};
use crate::store::{Attempt, BoxFuture, EventMeta, Status, Store};
use crate::timefmt::{format_ms, format_secs, now_ms};

/// An event as listings show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventSummary {
    pub id: String,
    pub notification_id: Option<String>,
    pub topic: String,
    pub status: String,
    pub received_at: String,
    pub created_at: Option<String>,
    pub deliveries: u32,
    pub attempts: u32,
    pub item_type: Option<String>,
    pub item_id: Option<String>,
    pub last_error: Option<String>,
}

impl EventSummary {
    fn of(m: &EventMeta) -> Self {
        EventSummary {
            id: m.key.clone(),
            notification_id: m.notification_id.clone(),
            topic: m.topic.clone(),
            status: m.status.as_str().into(),
            received_at: format_ms(m.received_ms),
            created_at: m.created_at.map(format_secs),
            deliveries: m.delivery_count,
            attempts: m.attempts,
            item_type: m.item_type.clone(),
            item_id: m.item_id.clone(),
            last_error: m.last_error.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventList {
    pub events: Vec<EventSummary>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next_cursor: Option<String>,
    /// Receipt time of the oldest event this page read (matching or not):
    /// how far back a page cut short by `scan` searched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub searched_to: Option<String>,
}

/// `events list`, `GET /admin/events`.
pub struct ListEvents(pub FilterQuery);

impl Action for ListEvents {
    type Output = EventList;

    fn route(&self) -> Route {
        Route::Get("/admin/events".into(), self.0.query_pairs())
    }

    fn run(self, local: Local) -> BoxFuture<'static, Result<EventList, OpsError>> {
        Box::pin(async move {
            local
                .blocking(move |l| {
                    let filter = self.0.to_filter()?;
                    let limit = self.0.limit.unwrap_or(50).clamp(1, 10_000);
                    let page = l.store.list(&filter, self.0.cursor()?, limit)?;
                    Ok(EventList {
                        events: page.events.iter().map(EventSummary::of).collect(),
                        next_cursor: page.next,
                        searched_to: page
                            .searched_to_ms
                            .filter(|_| filter.scan_limit.is_some())
                            .map(format_ms),
                    })
                })
                .await
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: String,
    pub outcome: String,
    pub error: Option<String>,
    pub duration_us: Option<u64>,
}

/// One event in full.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventDetail {
    #[serde(flatten)]
    pub summary: EventSummary,
    pub app_id: Option<String>,
    pub last_delivery_at: String,
    pub retry_at: Option<String>,
    pub body_bytes: u32,
    pub payload_stored: bool,
    /// Set when its person was erased: status `erased`, nothing personal
    /// kept, no payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<String>,
    pub history: Vec<HistoryEntry>,
    /// Masked by an allow-list (see `redact::payload`) unless asked raw;
    /// `null` once purged or erased.
    pub payload: Value,
}

/// `events show`, `GET /admin/events/{id}`. With `raw` the payload is shown
/// as stored, personal data included, and an audit entry records that it was.
pub struct ShowEvent {
    pub id: String,
    pub raw: bool,
}

impl Action for ShowEvent {
    type Output = EventDetail;

    fn route(&self) -> Route {
        let query = if self.raw { vec![("raw", "true".into())] } else { vec![] };
        Route::Get(
            format!("/admin/events/{}", crate::client::path_segment(&self.id)),
            query,
        )
    }

    fn run(self, local: Local) -> BoxFuture<'static, Result<EventDetail, OpsError>> {
        Box::pin(async move { local.blocking(move |l| show_event(&l.store, &self.id, self.raw)).await })
    }
}

fn show_event(store: &Store, id: &str, raw: bool) -> Result<EventDetail, OpsError> {
    no_such_id(id, "event")?;
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
    Ok(EventDetail {
        summary: EventSummary::of(&m),
        app_id: m.app_id.clone(),
        last_delivery_at: format_ms(m.last_delivery_ms),
        retry_at: m.retry_at_ms.map(format_ms),
        body_bytes: m.body_len,
        payload_stored: m.loc.is_some(),
        erased_at: m.erased_ms().map(format_ms),
        history: m
            .history
            .iter()
            .map(|a| HistoryEntry {
                at: format_ms(a.at_ms),
                outcome: a.outcome.clone(),
                error: a.error.clone(),
                duration_us: a.duration_us,
            })
            .collect(),
        payload,
    })
}

/// What to replay.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayResult {
    pub matched: usize,
    pub replayed: u64,
    /// The selected ids, on a dry run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
}

/// `replay`, `POST /admin/replay`: in a server the selected events go to
/// its workers; on a stopped store the handlers run here, one by one.
pub struct Replay(pub ReplayRequest);

impl Action for Replay {
    type Output = ReplayResult;

    fn route(&self) -> Route {
        Route::Post(
            "/admin/replay".into(),
            serde_json::to_value(&self.0).unwrap_or_default(),
        )
    }

    fn run(self, local: Local) -> BoxFuture<'static, Result<ReplayResult, OpsError>> {
        let runtime = tokio::runtime::Handle::current();
        Box::pin(async move { local.blocking(move |l| replay(l, &self.0, runtime)).await })
    }
}

fn replay(local: &Local, req: &ReplayRequest, runtime: tokio::runtime::Handle) -> Result<ReplayResult, OpsError> {
    let store = &local.store;
    let (keys, replayed) = select_replay(store, req)?;
    if req.dry_run {
        return Ok(ReplayResult {
            matched: keys.len(),
            replayed: 0,
            ids: Some(keys),
        });
    }
    match &local.server {
        Some(metrics) => {
            for k in &keys {
                store.enqueue(k.clone());
            }
            metrics.replays.inc_by(replayed);
            tracing::info!(matched = keys.len(), replayed, "Replay queued.");
        }
        // Replicas share this store: the selected events are queued (status
        // pending), and whichever replica claims each runs its handler.
        None if store.is_shared() => {
            tracing::info!(matched = keys.len(), replayed, "Replay queued for the replicas.");
        }
        None => {
            let ctx = crate::worker::WorkerCtx {
                store: store.clone(),
                codec: local.codec.clone(),
                metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
                settings: local.settings.worker.clone(),
                runtime,
                intake_load: crate::intake_load::IntakeLoad::default(),
            };
            for (done, key) in keys.iter().enumerate() {
                crate::worker::process(&ctx, key)?;
                if let Some(p) = &local.progress {
                    p(done as u64 + 1, keys.len() as u64);
                }
            }
        }
    }
    Ok(ReplayResult {
        matched: keys.len(),
        replayed,
        ids: None,
    })
}

/// Selects events to replay and, unless it is a dry run, re-queues each one
/// (status `pending`, a `replayed` entry in its history). Returns the
/// selected keys; the caller runs them (workers, or inline on a stopped
/// store). Invalid and erased events have no handler (or no payload) and
/// are never selected.
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
            no_such_id(id, "event")?;
            let m = store
                .get(id)?
                .ok_or_else(|| OpsError::NotFound(format!("no event with id {id}")))?;
            if !matches!(m.status, Status::Invalid | Status::Erased) {
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
                // Erased since it was selected: it stays erased.
                if m.status == Status::Erased {
                    return;
                }
                m.status = Status::Pending;
                m.attempts = 0;
                m.retry_at_ms = None;
                m.last_error = None;
                m.push_history(Attempt {
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

/// An id that no event or record can have (control characters, over 512
/// bytes: see `identifiers::usable`) is not looked up, and not echoed.
pub(crate) fn no_such_id(id: &str, what: &str) -> Result<(), OpsError> {
    if crate::identifiers::usable(id) {
        Ok(())
    } else {
        Err(OpsError::NotFound(format!(
            "no {what} has that id (ids are 1 to 512 bytes without control characters)"
        )))
    }
}
