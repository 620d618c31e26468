//! `/healthz` (the process runs) and `/readyz` (the store takes writes and
//! the workers run).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;

use super::AppState;

pub async fn healthz() -> (StatusCode, &'static str) {
    (StatusCode::OK, "ok\n")
}

pub async fn readyz(State(app): State<AppState>) -> (StatusCode, String) {
    let unavailable = |why: &str| (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"));
    if app.shutdown.is_cancelled() {
        unavailable("shutting down")
    } else if let Some(why) = app.store.not_writable() {
        unavailable(&format!("the store cannot take writes: {why}"))
    } else if !app.workers_running.load(Ordering::Relaxed) {
        unavailable("workers not running")
    } else {
        (StatusCode::OK, "ready\n".into())
    }
}
