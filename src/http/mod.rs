//! RECEIVE: the two HTTP listeners. The public one has only the webhook
//! route and health checks; the admin one (loopback by default) has the
//! admin API and `/metrics`. [`AppState`] is a set of cheap clonable handles.

pub mod admin;
pub mod budget;
pub mod console;
pub mod health;
pub mod webhook;

use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::verify::Verifier;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub verifier: Arc<Verifier>,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<Settings>,
    /// What the admin API's operator actions run on (this server's store).
    pub ops: crate::ops::Local,
    /// Failed signature checks per source address.
    pub bad_signatures: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    /// Room for unverified body bytes on the public listener.
    pub body_budget: budget::BodyBudget,
    /// Failed admin authentications per source address.
    pub admin_failures: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    pub workers_running: Arc<AtomicBool>,
    /// Requests the webhook route is working on (read by the handler threads).
    pub intake_load: crate::intake_load::IntakeLoad,
    /// The console's signed-in sessions.
    pub console: Arc<console::Sessions>,
    pub shutdown: CancellationToken,
}

impl AppState {
    pub fn new(store: Store, settings: Arc<Settings>, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Self {
        let per_minute =
            std::num::NonZeroU32::new(settings.http.bad_signatures_per_minute).unwrap_or(std::num::NonZeroU32::MIN);
        let admin_failures =
            std::num::NonZeroU32::new(settings.admin.failed_auth_per_minute).unwrap_or(std::num::NonZeroU32::MIN);
        let ops = crate::ops::Local::new(store.clone(), settings.clone(), Some(metrics.clone()));
        AppState {
            verifier: Arc::new(Verifier::new(&settings.client_secrets)),
            body_budget: budget::BodyBudget::new(&settings.http),
            ops,
            bad_signatures: Arc::new(RateLimiter::keyed(Quota::per_minute(per_minute))),
            admin_failures: Arc::new(RateLimiter::keyed(Quota::per_minute(admin_failures))),
            workers_running: Arc::new(AtomicBool::new(false)),
            intake_load: crate::intake_load::IntakeLoad::default(),
            console: Arc::new(console::Sessions::new(
                settings.admin.session_idle,
                settings.admin.session_max,
            )),
            store,
            settings,
            metrics,
            shutdown,
        }
    }
}

/// The public listener's routes.
pub fn public_router(state: AppState) -> Router {
    Router::new()
        .route("/webhooks/intercom", post(webhook::receive).get(webhook::probe))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
}

/// The admin listener's routes.
pub fn admin_router(state: AppState) -> Router {
    admin::router(state)
}
