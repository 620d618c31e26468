//! Actions on the Intercom workspace rather than on the store: they need
//! `INTERCOM_ACCESS_TOKEN`, not a data dir.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Settings;
use crate::discover::Discovery;
use crate::store::BoxFuture;

use super::OpsError;

/// `discover`: the workspace's data attributes for contacts, companies and
/// conversations, classified (see `discover`).
pub async fn discover(settings: &Settings, include_archived: bool) -> Result<Discovery, OpsError> {
    let client = super::intercom_client(settings, None).ok_or_else(|| {
        OpsError::BadRequest(
            "INTERCOM_ACCESS_TOKEN is not set: discover reads the workspace's attributes from Intercom".into(),
        )
    })?;
    let mut all = Vec::new();
    for model in ["contact", "company", "conversation"] {
        let attributes = client
            .data_attributes(model, include_archived)
            .await
            .map_err(|e| OpsError::Upstream(e.to_string()))?;
        // Intercom's `model` field is sometimes absent (conversation
        // attributes): the one asked for.
        all.extend(attributes.into_iter().map(|mut a| {
            if a.get("model").and_then(serde_json::Value::as_str).is_none() {
                a["model"] = serde_json::json!(model);
            }
            a
        }));
    }
    Ok(crate::discover::discovery(&all))
}

/// What `export-messages` asks for.
#[derive(Debug, Clone)]
pub struct MessageExportRequest {
    /// Messages sent in `[since, until]` (unix seconds, inclusive).
    pub since: i64,
    pub until: i64,
    /// Resume this job instead of starting one.
    pub job: Option<String>,
    /// The first wait between polls; it doubles up to a minute.
    pub poll: Duration,
}

/// What became of an export job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageExport {
    pub job: String,
    /// Intercom's last status: `completed` when the file was written.
    pub status: String,
    pub bytes: u64,
    pub polls: u32,
}

/// Where an export is, for a progress display.
pub enum ExportProgress<'a> {
    Started(&'a str),
    Waiting(&'a str, u32),
    Downloaded(u64),
}

/// `export-messages`: Intercom's content data export (delivery and
/// engagement data of outbound messages, facts.md §4.6): starts a job (or
/// resumes `req.job`), polls it with backoff until it is done, and streams
/// the gzipped CSV into `out`. An export that ends `failed` or `canceled`
/// is an error naming the job; `no_data` is `NotFound`.
pub async fn export_messages(
    settings: &Settings,
    req: &MessageExportRequest,
    out: &mut (dyn std::io::Write + Send),
    progress: &mut (dyn FnMut(ExportProgress<'_>) + Send),
) -> Result<MessageExport, OpsError> {
    let client = needs_token(settings, "export-messages")?;
    let upstream = |e: crate::client::ApiError| OpsError::Upstream(e.to_string());
    let job = match &req.job {
        Some(job) => job.clone(),
        None => {
            if req.since > req.until {
                return Err(OpsError::BadRequest("--since is after --until".into()));
            }
            let created = client.create_content_export(req.since, req.until).await.map_err(|e| match e {
                crate::client::ApiError::Api { status: 429, .. } => OpsError::Unavailable(
                    "Intercom allows one export job at a time and one is active: resume it with --job ID, or cancel it".into(),
                ),
                e => upstream(e),
            })?;
            job_id(&created)?
        }
    };
    progress(ExportProgress::Started(&job));
    let mut wait = req.poll;
    let mut polls = 0;
    let status = loop {
        let state = client.content_export(&job).await.map_err(|e| match e {
            crate::client::ApiError::NotFound => OpsError::NotFound(format!(
                "Intercom has no export job {job} (jobs expire two days after they finish)"
            )),
            e => upstream(e),
        })?;
        polls += 1;
        let status = state.get("status").and_then(Value::as_str).unwrap_or("").to_string();
        match status.as_str() {
            "completed" | "complete" => break status,
            "failed" | "canceled" | "cancelled" => {
                return Err(OpsError::Upstream(format!(
                    "Intercom's export job {job} ended {status}"
                )))
            }
            "no_data" => {
                return Err(OpsError::NotFound(format!(
                    "no message data was sent in that range (job {job})"
                )))
            }
            _ => {
                progress(ExportProgress::Waiting(&status, polls));
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        }
    };
    let mut told = |n: u64| progress(ExportProgress::Downloaded(n));
    let bytes = client
        .download_content_export(&job, out, &mut told)
        .await
        .map_err(upstream)?;
    Ok(MessageExport {
        job,
        status,
        bytes,
        polls,
    })
}

/// `export-messages --cancel --job ID`.
pub async fn cancel_message_export(settings: &Settings, job: &str) -> Result<MessageExport, OpsError> {
    let client = needs_token(settings, "export-messages")?;
    let state = client
        .cancel_content_export(job)
        .await
        .map_err(|e| OpsError::Upstream(e.to_string()))?;
    Ok(MessageExport {
        job: job.to_string(),
        status: state
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("canceled")
            .to_string(),
        bytes: 0,
        polls: 0,
    })
}

fn needs_token(settings: &Settings, what: &str) -> Result<std::sync::Arc<crate::client::IntercomClient>, OpsError> {
    super::intercom_client(settings, None)
        .ok_or_else(|| OpsError::BadRequest(format!("INTERCOM_ACCESS_TOKEN is not set: {what} asks Intercom's API")))
}

fn job_id(v: &Value) -> Result<String, OpsError> {
    v.get("job_identifier")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty())
        .map(str::to_string)
        .ok_or_else(|| OpsError::Upstream("Intercom's answer names no export job".into()))
}

/// Records a message export (or its cancellation) in the audit log: the
/// job, the range, the outcome and the size; no message data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordMessageExport {
    pub job: String,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub status: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    pub audit_seq: u64,
}

impl super::Action for RecordMessageExport {
    type Output = Recorded;

    fn route(&self) -> super::Route {
        super::Route::Post(
            "/admin/audit/message-export".into(),
            serde_json::to_value(self).unwrap_or_default(),
        )
    }

    fn run(self, local: super::Local) -> BoxFuture<'static, Result<Recorded, OpsError>> {
        Box::pin(async move {
            local
                .blocking(move |l| {
                    if !crate::identifiers::usable(&self.job) || !crate::identifiers::usable(&self.status) {
                        return Err(OpsError::BadRequest(
                            "job and status are 1 to 512 bytes without control characters".into(),
                        ));
                    }
                    let details = serde_json::to_value(&self).unwrap_or_default();
                    let audit_seq = crate::audit::append(&l.store, "export_messages", details)?;
                    Ok(Recorded { audit_seq })
                })
                .await
        })
    }
}

/// `reconcile`, `POST /admin/reconcile`: what Intercom never delivered,
/// fetched and fed through the handlers (see `reconcile`). `since` is an
/// RFC 3339 time or a duration ago; without it each kind starts from its
/// watermark, or `[retention] contacts` ago on a first run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reconcile {
    pub since: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
}

impl super::Action for Reconcile {
    type Output = crate::reconcile::Report;

    fn route(&self) -> super::Route {
        super::Route::Post(
            "/admin/reconcile".into(),
            serde_json::to_value(self).unwrap_or_default(),
        )
    }

    fn run(self, local: super::Local) -> BoxFuture<'static, Result<crate::reconcile::Report, OpsError>> {
        Box::pin(async move {
            let client = local.intercom.clone().ok_or_else(|| {
                OpsError::BadRequest("INTERCOM_ACCESS_TOKEN is not set: reconcile asks Intercom's API".into())
            })?;
            let now = crate::timefmt::now_ms();
            let since = match &self.since {
                None => None,
                Some(s) => Some(crate::timefmt::parse_time_bound(s, now).map_err(OpsError::BadRequest)? / 1000),
            };
            let default_since = (now - local.settings.retention.contacts.as_millis() as i64) / 1000;
            let progress = local.progress.clone();
            let told = move |n: u64| {
                if let Some(p) = &progress {
                    p(n, 0);
                }
            };
            let report = crate::reconcile::run(&local.store, &client, since, default_since, self.dry_run, &told)
                .await
                .map_err(|e| match e {
                    crate::reconcile::ReconcileError::Store(e) => OpsError::Store(e),
                    e => OpsError::Upstream(e.to_string()),
                })?;
            if self.dry_run {
                return Ok(report);
            }
            let keys = report.stored_keys.clone();
            let details = serde_json::to_value(&report).unwrap_or_default();
            let runtime = tokio::runtime::Handle::current();
            local
                .blocking(move |l| {
                    if let Some(m) = &l.server {
                        m.reconciled.inc_by(keys.len() as u64);
                    } else {
                        // No server runs: the handlers run here.
                        let ctx = crate::worker::WorkerCtx {
                            store: l.store.clone(),
                            codec: l.codec.clone(),
                            metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
                            settings: l.settings.worker.clone(),
                            runtime,
                            intake_load: crate::intake_load::IntakeLoad::default(),
                        };
                        for key in &keys {
                            crate::worker::process(&ctx, key)?;
                        }
                    }
                    crate::audit::append(&l.store, "reconcile", details)?;
                    tracing::info!(stored = keys.len(), "Reconciliation done.");
                    Ok(())
                })
                .await?;
            Ok(report)
        })
    }
}
