//! `/healthz` (the process runs) and `/readyz` (the store takes writes and
//! the workers run).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;

use super::AppState;

pub async fn healthz() -> (StatusCode, &'static str) {
    (StatusCode::OK, "ok\n")
}

pub async fn readyz(State(app): State<AppState>) -> (StatusCode, &'static str) {
    if app.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if !app.store.is_writable() {
        (StatusCode::SERVICE_UNAVAILABLE, "store cannot take writes\n")
    } else if !app.workers_running.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "workers not running\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}
