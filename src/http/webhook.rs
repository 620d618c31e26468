//! `POST /webhooks/intercom`: read the body under a size and time limit,
//! verify the signature, store durably, answer. `GET`/`HEAD` answer `200`
//! for Intercom's URL check. Never `410` (Intercom would disable the
//! subscription) and never `429` to a correctly signed request.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::AppState;
use crate::ingest::{ingest, Outcome};
use crate::metrics::{OutcomeLabel, Reason, RouteCode};
use crate::netaddr::{client_ip, source_key};
use crate::timefmt::now_ms;

pub async fn probe() -> (StatusCode, &'static str) {
    (StatusCode::OK, "ok\n")
}

pub(super) enum BodyError {
    TooLarge,
    Timeout,
    Broken,
}

pub(super) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

pub(super) async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Broken),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The key the bad-signature limiter counts a request under (see `netaddr`).
fn client_key(app: &AppState, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    source_key(client_ip(peer.ip(), forwarded, &app.settings.http.trusted_proxies))
}

pub async fn receive(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, &'static str) {
    let started = Instant::now();
    let (code, text) = handle(&app, peer, &headers, body).await;
    app.metrics
        .requests
        .get_or_create(&RouteCode {
            route: "webhook",
            code: code.as_u16(),
        })
        .inc();
    app.metrics.intake_latency.observe(started.elapsed().as_secs_f64());
    app.metrics.health.record(code.as_u16());
    (code, text)
}

async fn handle(app: &AppState, peer: SocketAddr, headers: &HeaderMap, body: Body) -> (StatusCode, &'static str) {
    let http = &app.settings.http;
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > http.body_limit as u64) {
        tracing::warn!(reason = "body_too_large", limit = http.body_limit, "Webhook rejected.");
        return (StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n");
    }
    // Room for the body before any of it is read (what it declares, or the
    // limit when it declares nothing); held until it is verified.
    let want = declared.map_or(http.body_limit, |n| n as usize);
    let Some(reserved) = app.body_budget.reserve(want).await else {
        app.metrics.intake_busy.inc();
        tracing::warn!(
            reason = "busy",
            "Webhook deferred: too many unverified bodies in flight; answering 503."
        );
        return (StatusCode::SERVICE_UNAVAILABLE, "busy, retry\n");
    };
    let bytes = match read_body(body, http.body_limit, http.body_timeout).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            tracing::warn!(reason = "body_too_large", limit = http.body_limit, "Webhook rejected.");
            return (StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n");
        }
        Err(BodyError::Timeout) => {
            tracing::warn!(reason = "body_timeout", "Webhook rejected.");
            return (StatusCode::REQUEST_TIMEOUT, "request body timeout\n");
        }
        Err(BodyError::Broken) => {
            tracing::warn!(reason = "body_read_error", "Webhook rejected.");
            return (StatusCode::BAD_REQUEST, "could not read the body\n");
        }
    };
    // Counted from here, where the work is: a client stalling in its body
    // costs no CPU and must not make the handlers wait.
    let _in_flight = app.intake_load.enter();
    let signature = headers.get("x-hub-signature").map(|v| v.as_bytes());
    let verified = app.verifier.verify(bytes, signature);
    drop(reserved);
    let verified = match verified {
        Ok(v) => v,
        Err(e) => {
            app.metrics
                .signature_failures
                .get_or_create(&Reason { reason: e.reason() })
                .inc();
            // Past its budget a source gets 429 and no log line, so a flood
            // of forgeries costs a hash each and cannot fill the logs.
            if app.bad_signatures.check_key(&client_key(app, peer, headers)).is_err() {
                return (StatusCode::TOO_MANY_REQUESTS, "too many failed signature checks\n");
            }
            tracing::warn!(reason = e.reason(), "Webhook rejected: signature check failed.");
            return (StatusCode::UNAUTHORIZED, "unauthorized\n");
        }
    };
    let (result, id) = ingest(&app.store, verified, now_ms()).await;
    match result {
        Ok(outcome) => {
            app.metrics
                .intake
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.as_str(),
                })
                .inc();
            match outcome {
                Outcome::Stored => {
                    tracing::debug!(webhook_id = %id.key, topic = %id.topic, "Webhook stored.");
                    (StatusCode::OK, "ok\n")
                }
                Outcome::Duplicate => {
                    app.metrics.duplicates.inc();
                    tracing::debug!(webhook_id = %id.key, topic = %id.topic, "Duplicate webhook.");
                    (StatusCode::OK, "ok\n")
                }
                Outcome::Ping => (StatusCode::OK, "ok\n"),
                Outcome::Invalid => {
                    tracing::warn!(webhook_id = %id.key, reason = "not_a_notification", "Signed body kept as invalid.");
                    (StatusCode::ACCEPTED, "accepted: not a notification\n")
                }
            }
        }
        Err(e) => {
            tracing::error!(webhook_id = %id.key, error = %e, "Webhook not stored; answering 503.");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable, retry\n")
        }
    }
}
