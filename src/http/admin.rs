//! The admin API (admin listener only). Every route but `/metrics` needs
//! `Authorization: Bearer <admin token>`, compared in constant time; with no
//! admin token configured every admin request is refused. A governor limit
//! caps the request rate. Handlers call `ops`, the same code the CLI runs on
//! a stopped store.

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::AppState;
use crate::metrics::RouteCode;
use crate::ops::{self, FilterQuery, OpsError, ReplayRequest};
use crate::secret::constant_time_eq;
use crate::store::CacheKind;

pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/admin/stats", get(stats))
        .route("/admin/events", get(list_events))
        .route("/admin/events/{id}", get(show_event))
        .route("/admin/replay", post(replay))
        .route("/admin/purge", post(purge))
        .route("/admin/contacts/{id}", get(contact))
        .route("/admin/conversations/{id}", get(conversation))
        .route("/admin/cache/clear", post(cache_clear))
        .route("/admin/erase", post(erase))
        .route("/admin/export", post(export))
        .route("/admin/backup", get(backup))
        .route("/admin/audit", get(audit_list))
        .route("/admin/audit/verify", get(audit_verify))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/metrics", get(metrics))
        .merge(protected)
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Counts admin requests by route template and status code.
async fn count(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let route = match req.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str()) {
        Some("/metrics") => "metrics",
        Some(_) => "admin",
        None => "unmatched",
    };
    let resp = next.run(req).await;
    app.metrics
        .requests
        .get_or_create(&RouteCode {
            route,
            code: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// A correct token is never limited; failed attempts are, per source
/// address, so strangers cannot lock the operator out and cannot guess at
/// speed.
async fn authorize(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = &app.settings.admin_token else {
        return error(
            StatusCode::UNAUTHORIZED,
            "the admin API is disabled: set INTERCOM_WEBHOOKS_ADMIN_TOKEN to enable it",
        );
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
        if app.admin_failures.check_key(&peer.ip()).is_err() {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed admin authentications from this address",
            );
        }
        return error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
    }
    next.run(req).await
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

pub struct AdminError(OpsError);

impl From<OpsError> for AdminError {
    fn from(e: OpsError) -> Self {
        AdminError(e)
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match &self.0 {
            OpsError::BadRequest(m) => error(StatusCode::BAD_REQUEST, m),
            OpsError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
            OpsError::Store(e) => {
                tracing::error!(error = %e, "Admin request failed.");
                error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
            }
        }
    }
}

type AdminResult = Result<Json<Value>, AdminError>;

/// Runs blocking store work off the async threads.
async fn blocking<F>(f: F) -> AdminResult
where
    F: FnOnce() -> Result<Value, OpsError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map(Json).map_err(AdminError),
        Err(e) => Err(AdminError(OpsError::BadRequest(format!("request aborted: {e}")))),
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    let store = app.store.clone();
    let (size, depth, failed) = tokio::task::spawn_blocking(move || {
        let failed = store.failed_count().unwrap_or(0);
        (store.size_on_disk(), store.pending_depth(), failed)
    })
    .await
    .unwrap_or((0, 0, 0));
    app.metrics.store_size.set(size as i64);
    app.metrics.pending_depth.set(depth as i64);
    app.metrics.failed_events.set(failed as i64);
    app.metrics.intake_in_flight.set(app.intake_load.in_flight() as i64);
    app.metrics.fsyncs.set(app.store.fsync_stats().0 as i64);
    app.metrics.shred_queue.set(app.store.shred_queue_len() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

async fn stats(State(app): State<AppState>) -> AdminResult {
    blocking(move || ops::stats(&app.store, Some(&app.metrics))).await
}

async fn list_events(State(app): State<AppState>, Query(q): Query<FilterQuery>) -> AdminResult {
    blocking(move || ops::list_events(&app.store, &q)).await
}

#[derive(Debug, Default, Deserialize)]
pub struct ShowQuery {
    #[serde(default)]
    pub raw: bool,
}

async fn show_event(State(app): State<AppState>, Path(id): Path<String>, Query(q): Query<ShowQuery>) -> AdminResult {
    blocking(move || ops::show_event(&app.store, &id, q.raw)).await
}

async fn replay(State(app): State<AppState>, Json(req): Json<ReplayRequest>) -> AdminResult {
    blocking(move || {
        let (keys, replayed) = ops::select_replay(&app.store, &req)?;
        if !req.dry_run {
            for k in &keys {
                app.store.enqueue(k.clone());
            }
            app.metrics.replays.inc_by(replayed);
            tracing::info!(matched = keys.len(), replayed, "Replay queued.");
        }
        let mut doc = json!({ "matched": keys.len(), "replayed": replayed });
        if req.dry_run {
            doc["ids"] = json!(keys);
        }
        Ok(doc)
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
pub struct DryRun {
    #[serde(default)]
    pub dry_run: bool,
}

async fn purge(State(app): State<AppState>, body: Option<Json<DryRun>>) -> AdminResult {
    let dry_run = body.map(|b| b.0.dry_run).unwrap_or(false);
    let report = crate::purge::run_once(&app.store, &app.settings, dry_run)
        .await
        .map_err(|e| AdminError(OpsError::Store(e)))?;
    if !dry_run {
        report.record_metrics(&app.metrics);
    }
    Ok(Json(report.to_json()))
}

async fn contact(State(app): State<AppState>, Path(id): Path<String>) -> AdminResult {
    blocking(move || ops::cache_show(&app.store, &app.codec, CacheKind::Contact, &id)).await
}

async fn conversation(State(app): State<AppState>, Path(id): Path<String>) -> AdminResult {
    blocking(move || ops::cache_show(&app.store, &app.codec, CacheKind::Conversation, &id)).await
}

#[derive(Debug, Default, Deserialize)]
pub struct Confirm {
    #[serde(default)]
    pub yes: bool,
}

async fn cache_clear(State(app): State<AppState>, Json(c): Json<Confirm>) -> AdminResult {
    if !c.yes {
        return Err(AdminError(OpsError::BadRequest(
            "cache clear removes every cached record: send {\"yes\":true}".into(),
        )));
    }
    blocking(move || ops::cache_clear(&app.store)).await
}

async fn audit_list(State(app): State<AppState>) -> AdminResult {
    blocking(move || crate::audit::list(&app.store).map_err(OpsError::from)).await
}

#[derive(Debug, Default, Deserialize)]
pub struct VerifyQuery {
    pub expect_head: Option<String>,
}

async fn audit_verify(State(app): State<AppState>, Query(q): Query<VerifyQuery>) -> AdminResult {
    let head = match q.expect_head.as_deref() {
        None => None,
        Some(text) => match crate::audit::parse_head(text) {
            Some(h) => Some(h),
            None => {
                return Err(AdminError(OpsError::BadRequest(
                    "expect_head takes SEQ:HASH (the sequence number and the 64-hex hash)".into(),
                )))
            }
        },
    };
    blocking(move || crate::audit::verify(&app.store, head).map_err(OpsError::from)).await
}

#[derive(Debug, Deserialize)]
pub struct PrivacyRequest {
    pub email: Option<String>,
    pub contact_id: Option<String>,
    pub external_id: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub local_only: bool,
}

fn privacy_error(e: crate::privacy::PrivacyError) -> Response {
    use crate::privacy::PrivacyError;
    match e {
        PrivacyError::BadRequest(m) => error(StatusCode::BAD_REQUEST, &m),
        PrivacyError::NotFound(m) => error(StatusCode::NOT_FOUND, &m),
        PrivacyError::Intercom(e) => error(StatusCode::BAD_GATEWAY, &e.to_string()),
        PrivacyError::Store(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn erase(State(app): State<AppState>, Json(req): Json<PrivacyRequest>) -> Response {
    let subject = match crate::privacy::Subject::from_parts(req.email, req.contact_id, req.external_id) {
        Ok(s) => s,
        Err(e) => return privacy_error(e),
    };
    let client = app.intercom.as_deref();
    match crate::privacy::erase(&app.store, &app.codec, client, subject, req.dry_run, req.local_only).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => privacy_error(e),
    }
}

async fn export(State(app): State<AppState>, Json(req): Json<PrivacyRequest>) -> Response {
    let subject = match crate::privacy::Subject::from_parts(req.email, req.contact_id, req.external_id) {
        Ok(s) => s,
        Err(e) => return privacy_error(e),
    };
    match crate::privacy::export(&app.store, &app.codec, app.intercom.as_deref(), subject, req.local_only).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => privacy_error(e),
    }
}

/// Streams a backup: written to a temporary file in the data dir first (so
/// the index export is not held open by a slow client), then sent.
async fn backup(State(app): State<AppState>) -> Response {
    let store = app.store.clone();
    let made = tokio::task::spawn_blocking(move || -> Result<std::fs::File, crate::store::StoreError> {
        // An unnamed file (O_TMPFILE) beside the store: nothing is left
        // behind if the process dies mid-backup, and it is on the data
        // dir's disk, not in a memory-backed /tmp.
        let mut file = crate::fsutil::unnamed_private_file(store.dir())?;
        store.backup(&mut std::io::BufWriter::new(&mut file))?;
        use std::io::Seek;
        file.rewind()?;
        Ok(file)
    })
    .await;
    match made {
        Ok(Ok(file)) => {
            tracing::info!("Backup sent through the admin API.");
            let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
            (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                axum::body::Body::from_stream(stream),
            )
                .into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
