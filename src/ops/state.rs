//! State: stats, purge, the cache, the audit log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Action, Local, OpsError, Route};
use crate::cache::{decode, ContactRecord, ConversationRecord};
use crate::store::{BoxFuture, CacheKind, Status, StoreError};
use crate::timefmt::{format_ms, now_ms};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErasureBacklog {
    pub erasures_in_ledger: usize,
    pub segments_to_shred: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookHealth {
    pub consecutive_errors: u64,
    pub last_2xx_at: Option<String>,
    pub seconds_since_last_2xx: i64,
    pub note: String,
}

/// Counts, queue depth and health.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsReport {
    pub events_by_status: BTreeMap<String, u64>,
    /// Invalid bodies (no topic) are counted under `(invalid)`.
    pub events_by_topic: BTreeMap<String, u64>,
    pub pending_depth: usize,
    pub oldest_pending_age_secs: Option<i64>,
    pub last_received_at: Option<String>,
    pub duplicates_seen: u64,
    pub store_size_bytes: u64,
    pub erasure: ErasureBacklog,
    /// In a running server only (it knows them since its start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_failures_since_start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_health: Option<WebhookHealth>,
}

/// `stats`, `GET /admin/stats`.
pub struct Stats;

impl Action for Stats {
    type Output = StatsReport;

    fn route(&self) -> Route {
        Route::Get("/admin/stats".into(), vec![])
    }

    fn run(self, local: Local) -> BoxFuture<'static, Result<StatsReport, OpsError>> {
        Box::pin(async move { local.blocking(stats).await })
    }
}

fn stats(local: &Local) -> Result<StatsReport, OpsError> {
    let store = &local.store;
    let (by_status, by_topic, duplicates) = store.counts()?;
    let now = now_ms();
    let mut report = StatsReport {
        events_by_status: Status::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), by_status.get(s).copied().unwrap_or(0)))
            .collect(),
        events_by_topic: by_topic
            .into_iter()
            .map(|(t, n)| (if t.is_empty() { "(invalid)".to_string() } else { t }, n))
            .collect(),
        pending_depth: store.pending_depth(),
        oldest_pending_age_secs: store.oldest_pending_ms()?.map(|t| (now - t).max(0) / 1000),
        last_received_at: store.last_received_ms()?.map(format_ms),
        duplicates_seen: duplicates,
        store_size_bytes: store.size_on_disk(),
        erasure: ErasureBacklog {
            erasures_in_ledger: store.ledger_len()?,
            segments_to_shred: store.shred_queue_len(),
        },
        signature_failures_since_start: None,
        webhook_health: None,
    };
    if let Some(m) = &local.server {
        report.signature_failures_since_start = Some(
            ["missing", "malformed", "mismatch"]
                .iter()
                .map(|r| {
                    m.signature_failures
                        .get_or_create(&crate::metrics::Reason { reason: r })
                        .get()
                })
                .sum(),
        );
        report.webhook_health = Some(webhook_health(m));
    }
    Ok(report)
}

/// What on-call looks at first: rates, backlog, failures, delivery health.
/// Unlike [`StatsReport`] it reads no event: every figure comes from a
/// queue, an index of its own or the server's counters, so it is cheap on
/// any size of store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OverviewReport {
    /// Stored (new) notifications per second over the last minute; `None`
    /// outside a server or before it has two samples.
    pub intake_per_second: Option<f64>,
    /// Handler outcomes per second over the same window.
    pub processed_per_second: Option<f64>,
    pub rate_window_seconds: Option<u64>,
    pub pending_depth: usize,
    pub oldest_pending_age_secs: Option<i64>,
    pub failed: usize,
    pub last_received_at: Option<String>,
    pub store_size_bytes: u64,
    pub store_free_bytes: Option<u64>,
    pub store_ready: bool,
    pub erasure: ErasureBacklog,
    pub webhook_health: Option<WebhookHealth>,
}

/// `GET /admin/overview` (the console's first page).
pub struct Overview;

impl Action for Overview {
    type Output = OverviewReport;

    fn route(&self) -> Route {
        Route::Get("/admin/overview".into(), vec![])
    }

    fn run(self, local: Local) -> BoxFuture<'static, Result<OverviewReport, OpsError>> {
        Box::pin(async move { local.blocking(overview).await })
    }
}

fn overview(local: &Local) -> Result<OverviewReport, OpsError> {
    let store = &local.store;
    let now = now_ms();
    let rates = local.server.as_ref().and_then(|m| m.rates.per_second());
    Ok(OverviewReport {
        intake_per_second: rates.map(|r| r.intake),
        processed_per_second: rates.map(|r| r.processed),
        rate_window_seconds: rates.map(|r| r.window_seconds),
        pending_depth: store.pending_depth(),
        oldest_pending_age_secs: store.oldest_pending_ms()?.map(|t| (now - t).max(0) / 1000),
        failed: store.failed_count()?,
        last_received_at: store.last_received_ms()?.map(format_ms),
        store_size_bytes: store.size_on_disk(),
        store_free_bytes: store.free_space(),
        store_ready: store.is_writable(),
        erasure: ErasureBacklog {
            erasures_in_ledger: store.ledger_len()?,
            segments_to_shred: store.shred_queue_len(),
        },
        webhook_health: local.server.as_ref().map(|m| webhook_health(m)),
    })
}

fn webhook_health(m: &crate::metrics::Metrics) -> WebhookHealth {
    let last = m.health.last_2xx_ms();
    WebhookHealth {
        consecutive_errors: m.health.consecutive_errors(),
        last_2xx_at: (last > 0).then(|| format_ms(last)),
        seconds_since_last_2xx: m.health.seconds_since_2xx(),
        note: "Intercom pauses a subscription after 1000 consecutive errors within 15 minutes and suspends it after 7 days of errors".into(),
    }
}

/// What a purge removed (or, on a dry run, would remove), by class.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurgeResult {
    pub dry_run: bool,
    pub removed: BTreeMap<String, u64>,
    pub cutoffs: BTreeMap<String, String>,
    pub duration_ms: u64,
}

/// `purge`, `POST /admin/purge`.
pub struct Purge {
    pub dry_run: bool,
}

impl Action for Purge {
    type Output = PurgeResult;

    fn route(&self) -> Route {
        Route::Post("/admin/purge".into(), json!({"dry_run": self.dry_run}))
    }

    fn run(self, local: Local) -> BoxFuture<'static, Result<PurgeResult, OpsError>> {
        Box::pin(async move {
            let report = crate::purge::run_once(&local.store, &local.settings, self.dry_run).await?;
            if let (Some(m), false) = (&local.server, self.dry_run) {
                report.record_metrics(m);
            }
            Ok(PurgeResult {
                dry_run: report.dry_run,
                removed: report.counts.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                cutoffs: report
                    .cutoffs
                    .iter()
                    .map(|(k, v)| (k.to_string(), format_ms(*v)))
                    .collect(),
                duration_ms: report.duration_ms,
            })
        })
    }
}

/// A cached record as `cache show` shows it (see `cache::CacheCodec`'s
/// views: emails and external ids as hashes, sealed values opened).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CachedRecord(pub Value);

/// `cache show`, `GET /admin/contacts/{id}` and `/admin/conversations/{id}`.
pub struct CacheShow {
    pub kind: CacheKind,
    pub id: String,
}

impl Action for CacheShow {
    type Output = CachedRecord;

    fn route(&self) -> Route {
        let what = match self.kind {
            CacheKind::Contact => "contacts",
            CacheKind::Conversation => "conversations",
        };
        Route::Get(
            format!("/admin/{what}/{}", crate::client::path_segment(&self.id)),
            vec![],
        )
    }

    fn run(self, local: Local) -> BoxFuture<'static, Result<CachedRecord, OpsError>> {
        Box::pin(async move {
            local
                .blocking(move |l| {
                    let (kind, id) = (self.kind, &self.id);
                    super::events::no_such_id(id, &format!("cached {}", kind.as_str()))?;
                    let bytes = l
                        .store
                        .cache_get(kind, id)?
                        .ok_or_else(|| OpsError::NotFound(format!("no cached {} with id {id}", kind.as_str())))?;
                    let unreadable = || {
                        OpsError::Store(StoreError::Corrupt(format!(
                            "cached {} {id} is unreadable",
                            kind.as_str()
                        )))
                    };
                    Ok(CachedRecord(match kind {
                        CacheKind::Contact => l
                            .codec
                            .contact_view(&decode::<ContactRecord>(&bytes).ok_or_else(unreadable)?),
                        CacheKind::Conversation => l
                            .codec
                            .conversation_view(&decode::<ConversationRecord>(&bytes).ok_or_else(unreadable)?),
                    }))
                })
                .await
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cleared {
    pub removed: u64,
}

/// `cache clear`, `POST /admin/cache/clear`: removes every cached record
/// (tombstones stay, so deleted contacts still cannot come back) and writes
/// an audit entry. Refused unless `yes`.
pub struct CacheClear {
    pub yes: bool,
}

impl Action for CacheClear {
    type Output = Cleared;

    fn route(&self) -> Route {
        Route::Post("/admin/cache/clear".into(), json!({"yes": self.yes}))
    }

    fn run(self, local: Local) -> BoxFuture<'static, Result<Cleared, OpsError>> {
        Box::pin(async move {
            if !self.yes {
                return Err(OpsError::BadRequest(
                    "cache clear removes every cached record: send {\"yes\":true}".into(),
                ));
            }
            local
                .blocking(|l| {
                    let removed = l.store.cache_clear()?;
                    crate::audit::append(&l.store, "cache_clear", json!({ "records_removed": removed }))?;
                    tracing::info!(records_removed = removed, "Cache cleared.");
                    Ok(Cleared { removed })
                })
                .await
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditListing {
    /// Each entry: `seq`, `at`, `action`, `details`, `hash` (or `seq` and
    /// `unreadable`).
    pub entries: Vec<Value>,
}

/// `audit list`, `GET /admin/audit`.
pub struct AuditList;

impl Action for AuditList {
    type Output = AuditListing;

    fn route(&self) -> Route {
        Route::Get("/admin/audit".into(), vec![])
    }

    fn run(self, local: Local) -> BoxFuture<'static, Result<AuditListing, OpsError>> {
        Box::pin(async move { local.blocking(|l| typed(crate::audit::list(&l.store)?)).await })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: Option<String>,
}

/// The result of checking the audit chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditCheck {
    pub ok: bool,
    pub entries: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<AuditHead>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_head_checked: Option<bool>,
}

/// `audit verify`, `GET /admin/audit/verify`; `expect_head` is `SEQ:HASH`.
pub struct AuditVerify {
    pub expect_head: Option<String>,
}

impl Action for AuditVerify {
    type Output = AuditCheck;

    fn route(&self) -> Route {
        let query = self.expect_head.iter().map(|h| ("expect_head", h.clone())).collect();
        Route::Get("/admin/audit/verify".into(), query)
    }

    fn run(self, local: Local) -> BoxFuture<'static, Result<AuditCheck, OpsError>> {
        Box::pin(async move {
            let head = match self.expect_head.as_deref() {
                None => None,
                Some(text) => Some(crate::audit::parse_head(text).ok_or_else(|| {
                    OpsError::BadRequest("expect_head takes SEQ:HASH (the sequence number and the 64-hex hash)".into())
                })?),
            };
            local
                .blocking(move |l| typed(crate::audit::verify(&l.store, head)?))
                .await
        })
    }
}

/// `audit` builds its documents as JSON; read back as the typed result.
fn typed<T: serde::de::DeserializeOwned>(doc: Value) -> Result<T, OpsError> {
    serde_json::from_value(doc).map_err(|e| OpsError::Store(StoreError::Corrupt(format!("audit document: {e}"))))
}
