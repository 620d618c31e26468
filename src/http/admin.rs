//! The admin API (admin listener only). Every route but `/metrics` needs
//! `Authorization: Bearer <admin token>`, compared in constant time; with no
//! admin token configured every admin request is refused. A governor limit
//! caps the request rate. Each handler runs one `ops` action, the same code
//! the CLI runs on a stopped store. The console (`/console`, signed in with
//! the same token, see [`super::console`]) is merged in here.

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::webhook::BodyError;
use super::AppState;
use crate::metrics::RouteCode;
use crate::ops::{
    self, Action, AuditCheck, AuditList, AuditListing, AuditVerify, CacheClear, CacheShow, CachedRecord, Cleared,
    Erase, ErasureJobs, EventDetail, EventList, Export, FilterQuery, ListErasures, ListEvents, OpsError, Purge,
    PurgeResult, Replay, ReplayRequest, ReplayResult, ShowEvent, Stats, StatsReport, SubjectReport, SubjectRequest,
};
use crate::secret::constant_time_eq;
use crate::store::{CacheKind, StoreError};

pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/admin/stats", get(stats))
        .route("/admin/overview", get(overview))
        .route("/admin/events", get(list_events))
        .route("/admin/events/{id}", get(show_event))
        .route("/admin/replay", post(replay))
        .route("/admin/purge", post(purge))
        .route("/admin/contacts/{id}", get(contact))
        .route("/admin/conversations/{id}", get(conversation))
        .route("/admin/cache/clear", post(cache_clear))
        .route("/admin/erase", post(erase))
        .route("/admin/erasures", get(erasures))
        .route("/admin/export", post(export))
        .route("/admin/backup", get(backup))
        .route("/admin/audit", get(audit_list))
        .route("/admin/audit/verify", get(audit_verify))
        .route("/admin/audit/message-export", post(record_message_export))
        .route("/admin/reconcile", post(reconcile))
        // The body is read only once the token is right.
        .route_layer(middleware::from_fn_with_state(state.clone(), bounded_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/metrics", get(metrics))
        .merge(protected)
        .merge(super::console::router().route_layer(middleware::from_fn_with_state(state.clone(), bounded_body)))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// The largest body an admin API request may have: a replay's list of ids
/// or an erasure's request is a few KB.
pub const ADMIN_BODY_LIMIT: usize = 1024 * 1024;
/// The largest body a console form may have (sign-in, replay, sign-out).
pub const CONSOLE_BODY_LIMIT: usize = 16 * 1024;

/// Bounds a request's body before any handler reads it: at most
/// [`ADMIN_BODY_LIMIT`] bytes ([`CONSOLE_BODY_LIMIT`] for the console's
/// forms; a larger declared length is refused before a byte of it is read,
/// `413`), all of it within `[server] body_timeout` (`408`). With the
/// listener's connection cap, this bounds what the admin listener holds:
/// 600 stalled sign-ins of 2 MB each once took 1.16 GiB.
async fn bounded_body(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let limit = if req.uri().path().starts_with("/console") {
        CONSOLE_BODY_LIMIT
    } else {
        ADMIN_BODY_LIMIT
    };
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is over {limit} bytes"),
        )
    };
    if super::webhook::declared_length(req.headers()).is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let timeout = app.settings.http.body_timeout;
    let bytes = match super::webhook::read_body(body, limit, timeout).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Broken) => return error(StatusCode::BAD_REQUEST, "the body was cut short"),
        Err(BodyError::Timeout) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                &format!("the body did not arrive within {} s", timeout.as_secs()),
            )
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// Counts admin requests by route template and status code.
async fn count(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let route = match req.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str()) {
        Some("/metrics") => "metrics",
        Some(p) if p.starts_with("/console") => "console",
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
        if app
            .admin_failures
            .check_key(&crate::netaddr::source_key(peer.ip()))
            .is_err()
        {
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

/// The status an operator action's failure is answered with, on the admin
/// API and the console alike; logged here. `503` is to be tried again
/// later (`Retry-After`); `500` is a fault of ours and nothing else.
pub(super) fn status_of(e: &OpsError) -> StatusCode {
    match e {
        OpsError::BadRequest(_) => StatusCode::BAD_REQUEST,
        OpsError::NotFound(_) => StatusCode::NOT_FOUND,
        OpsError::Upstream(_) => StatusCode::BAD_GATEWAY,
        // The store cannot take writes for now (a database that did not
        // commit in time, one stopped, a full disk): try again later.
        OpsError::Store(StoreError::Unavailable(_) | StoreError::Closed) => {
            tracing::warn!(error = %e, "Operator request refused: the store is unavailable.");
            StatusCode::SERVICE_UNAVAILABLE
        }
        // A value the database cannot take (NUL, say): the request's.
        OpsError::Store(StoreError::Refused(_)) => StatusCode::BAD_REQUEST,
        OpsError::Store(_) | OpsError::Unavailable(_) => {
            tracing::error!(error = %e, "Operator request failed.");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// `Retry-After` on a `503`.
pub(super) fn retry_later(status: StatusCode, r: &mut Response) {
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("5"),
        );
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        let mut r = error(status, &self.0.to_string());
        retry_later(status, &mut r);
        r
    }
}

/// Runs an operator action on this server's store.
async fn run<A: Action>(app: &AppState, action: A) -> Result<Json<A::Output>, AdminError> {
    Ok(Json(action.run(app.ops.clone()).await?))
}

async fn metrics(State(app): State<AppState>) -> Response {
    let store = app.store.clone();
    let (size, depth, failed, oldest, free) = tokio::task::spawn_blocking(move || {
        let failed = store.failed_count().unwrap_or(0);
        let oldest = store.oldest_pending_ms().ok().flatten();
        (
            store.size_on_disk(),
            store.pending_depth(),
            failed,
            oldest,
            store.free_space(),
        )
    })
    .await
    .unwrap_or((0, 0, 0, None, None));
    let m = &app.metrics;
    m.store_size.set(size as i64);
    m.pending_depth.set(depth as i64);
    m.failed_events.set(failed as i64);
    m.oldest_pending_age
        .set(oldest.map_or(0, |t| (crate::timefmt::now_ms() - t).max(0) / 1000));
    m.store_free_bytes
        .set(free.map_or(0, |f| f.min(i64::MAX as u64) as i64));
    m.store_min_free_bytes
        .set(app.settings.store.min_free_bytes.min(i64::MAX as u64) as i64);
    m.store_ready.set(i64::from(app.store.is_writable()));
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

async fn overview(State(app): State<AppState>) -> Result<Json<ops::OverviewReport>, AdminError> {
    run(&app, ops::Overview).await
}

async fn stats(State(app): State<AppState>) -> Result<Json<StatsReport>, AdminError> {
    run(&app, Stats).await
}

async fn list_events(State(app): State<AppState>, Query(q): Query<FilterQuery>) -> Result<Json<EventList>, AdminError> {
    run(&app, ListEvents(q)).await
}

#[derive(Debug, Default, Deserialize)]
pub struct ShowQuery {
    #[serde(default)]
    pub raw: bool,
}

async fn show_event(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Json<EventDetail>, AdminError> {
    run(&app, ShowEvent { id, raw: q.raw }).await
}

async fn replay(State(app): State<AppState>, Json(req): Json<ReplayRequest>) -> Result<Json<ReplayResult>, AdminError> {
    run(&app, Replay(req)).await
}

#[derive(Debug, Default, Deserialize)]
pub struct DryRun {
    #[serde(default)]
    pub dry_run: bool,
}

async fn purge(State(app): State<AppState>, body: Option<Json<DryRun>>) -> Result<Json<PurgeResult>, AdminError> {
    let dry_run = body.map(|b| b.0.dry_run).unwrap_or(false);
    run(&app, Purge { dry_run }).await
}

async fn contact(State(app): State<AppState>, Path(id): Path<String>) -> Result<Json<CachedRecord>, AdminError> {
    run(
        &app,
        CacheShow {
            kind: CacheKind::Contact,
            id,
        },
    )
    .await
}

async fn conversation(State(app): State<AppState>, Path(id): Path<String>) -> Result<Json<CachedRecord>, AdminError> {
    run(
        &app,
        CacheShow {
            kind: CacheKind::Conversation,
            id,
        },
    )
    .await
}

#[derive(Debug, Default, Deserialize)]
pub struct Confirm {
    #[serde(default)]
    pub yes: bool,
}

async fn cache_clear(State(app): State<AppState>, Json(c): Json<Confirm>) -> Result<Json<Cleared>, AdminError> {
    run(&app, CacheClear { yes: c.yes }).await
}

async fn audit_list(State(app): State<AppState>) -> Result<Json<AuditListing>, AdminError> {
    run(&app, AuditList).await
}

#[derive(Debug, Default, Deserialize)]
pub struct VerifyQuery {
    pub expect_head: Option<String>,
}

async fn audit_verify(
    State(app): State<AppState>,
    Query(q): Query<VerifyQuery>,
) -> Result<Json<AuditCheck>, AdminError> {
    run(
        &app,
        AuditVerify {
            expect_head: q.expect_head,
        },
    )
    .await
}

async fn reconcile(
    State(app): State<AppState>,
    body: Option<Json<ops::workspace::Reconcile>>,
) -> Result<Json<crate::reconcile::Report>, AdminError> {
    run(&app, body.map(|b| b.0).unwrap_or_default()).await
}

async fn record_message_export(
    State(app): State<AppState>,
    Json(req): Json<ops::workspace::RecordMessageExport>,
) -> Result<Json<ops::workspace::Recorded>, AdminError> {
    run(&app, req).await
}

async fn erase(
    State(app): State<AppState>,
    Json(req): Json<SubjectRequest>,
) -> Result<Json<SubjectReport>, AdminError> {
    run(&app, Erase(req)).await
}

async fn erasures(State(app): State<AppState>) -> Result<Json<ErasureJobs>, AdminError> {
    run(&app, ListErasures).await
}

async fn export(
    State(app): State<AppState>,
    Json(req): Json<SubjectRequest>,
) -> Result<Json<SubjectReport>, AdminError> {
    run(&app, Export(SubjectRequest { dry_run: false, ..req })).await
}

/// Streams a backup: written to a temporary file in the data dir first (so
/// the index export is not held open by a slow client), then sent.
async fn backup(State(app): State<AppState>) -> Response {
    let (store, settings) = (app.store.clone(), app.settings.clone());
    let made = tokio::task::spawn_blocking(move || ops::data_dir::backup_to_unnamed_file(&store, &settings)).await;
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
