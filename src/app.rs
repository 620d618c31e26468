//! `serve`: opens the store, then runs the public and admin listeners, the
//! workers and the background purge until `shutdown` is cancelled. The
//! caller binds the listeners, so tests can start the real thing on port 0.
//!
//! Shutdown order: stop accepting and let in-flight requests finish (their
//! `200`s are durable), stop the workers (unfinished events stay queued),
//! then close the store (the committer drains, the index is checkpointed).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::http::{admin_router, public_router, AppState};
use crate::metrics::Metrics;
use crate::worker::{self, WorkerCtx};

pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

pub async fn run(settings: Settings, listeners: Listeners, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let store = {
        let s = settings.clone();
        tokio::task::spawn_blocking(move || crate::ops::open_store(&s)).await??
    };
    let metrics = Arc::new(Metrics::new());
    let state = AppState::new(store.clone(), settings.clone(), metrics.clone(), shutdown.clone());

    let workers_stop = CancellationToken::new();
    let worker_threads = worker::spawn(
        WorkerCtx {
            store: store.clone(),
            codec: state.ops.codec.clone(),
            metrics: metrics.clone(),
            settings: settings.worker.clone(),
            runtime: tokio::runtime::Handle::current(),
            intake_load: state.intake_load.clone(),
        },
        workers_stop.clone(),
    )
    .context("starting worker threads")?;
    worker::mark_running(&state.workers_running, true);

    let purger = tokio::spawn(crate::purge::run_loop(
        store.clone(),
        settings.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let shredder = tokio::spawn(crate::purge::shred_loop(
        store.clone(),
        settings.clone(),
        shutdown.clone(),
    ));
    let audit_check = tokio::spawn(check_audit_loop(store.clone(), metrics.clone(), shutdown.clone()));
    let reconciler = settings
        .reconcile_interval
        .map(|every| tokio::spawn(reconcile_loop(state.ops.clone(), every, shutdown.clone())));
    let limiter_gc = {
        let (limiter, shutdown) = (state.bad_signatures.clone(), shutdown.clone());
        let console = state.console.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {
                        limiter.retain_recent();
                        console.forget_expired();
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        })
    };
    let rate_sampler = tokio::spawn(sample_rates(metrics.clone(), shutdown.clone()));
    let eraser = tokio::spawn(erasure_jobs_loop(state.ops.clone(), shutdown.clone()));

    let public_addr = listeners.public.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    tracing::info!(listen = %public_addr, admin_listen = %admin_addr, "Receiving Intercom webhooks on POST /webhooks/intercom.");
    let http = &settings.http;
    let cap = crate::server::ConnectionCap::new(http.max_connections, http.busy_wait);
    let public = tokio::spawn(crate::server::serve(
        listeners.public,
        public_router(state.clone()),
        shutdown.clone(),
        http.header_timeout,
        http.shutdown_grace,
        Some((cap, metrics.intake_busy.clone())),
    ));
    let admin_cap = crate::server::ConnectionCap::new(settings.admin.max_connections, http.busy_wait);
    let admin = tokio::spawn(crate::server::serve(
        listeners.admin,
        admin_router(state.clone()),
        shutdown.clone(),
        http.header_timeout,
        http.shutdown_grace,
        Some((admin_cap, metrics.admin_busy.clone())),
    ));

    shutdown.cancelled().await;
    tracing::info!("Shutting down: finishing in-flight requests.");
    let _ = public.await;
    let _ = admin.await;
    let _ = purger.await;
    let _ = shredder.await;
    let _ = limiter_gc.await;
    let _ = audit_check.await;
    let _ = rate_sampler.await;
    let _ = eraser.await;
    if let Some(r) = reconciler {
        let _ = r.await;
    }
    workers_stop.cancel();
    worker::mark_running(&state.workers_running, false);
    tokio::task::spawn_blocking(move || {
        for t in worker_threads {
            let _ = t.join();
        }
    })
    .await?;
    drop(state);
    tokio::task::spawn_blocking(move || store.close()).await??;
    tracing::info!("Stopped cleanly.");
    Ok(())
}

/// `serve` from the command line: binds the listeners, stops on SIGTERM or
/// Ctrl-C, and returns the process's exit code (2: no client secret; 1:
/// cannot listen, or stopped with an error).
pub async fn serve(settings: Settings) -> i32 {
    if let Err(e) = settings.require_client_secret() {
        eprintln!("error: {e}");
        return 2;
    }
    let bind = |addr, flag: &'static str| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} ({flag}): {e}"))
    };
    let listeners = match (
        bind(settings.listen, "--listen").await,
        bind(settings.admin_listen, "--admin-listen").await,
    ) {
        (Ok(public), Ok(admin)) => Listeners { public, admin },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_listener(shutdown.clone()));
    match run(settings, listeners, shutdown).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "Server stopped with an error.");
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn signal_listener(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("Signal received.");
    shutdown.cancel();
}

/// How often a running server checks its audit chain (and once at start).
const AUDIT_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Checks the audit chain at start and every [`AUDIT_CHECK_EVERY`], for the
/// `audit_chain_ok` gauge (and the alert on it): a chain rewritten or cut
/// while the server runs is noticed within the hour.
/// Feeds the console's rates (`metrics::Rates`) every 5 s.
async fn sample_rates(metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let handler_outcomes: Vec<&'static str> = crate::store::Status::ALL
        .iter()
        .filter(|s| **s != crate::store::Status::Pending)
        .map(|s| s.as_str())
        .collect();
    loop {
        metrics.rates.sample(
            crate::timefmt::now_ms(),
            Metrics::outcome_total(&metrics.intake, &["stored"]),
            Metrics::outcome_total(&metrics.processed, &handler_outcomes),
        );
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn check_audit_loop(store: crate::store::Store, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    loop {
        let s = store.clone();
        match tokio::task::spawn_blocking(move || crate::audit::verify(&s, None)).await {
            Ok(Ok(doc)) => {
                let ok = doc["ok"] == true;
                if !ok {
                    tracing::error!(reason = %doc["reason"], "The audit chain does not verify.");
                }
                metrics.audit_chain_ok.set(i64::from(ok));
                metrics.audit_last_verified.set(crate::timefmt::now_ms() / 1000);
            }
            Ok(Err(e)) => tracing::error!(error = %e, "Checking the audit chain failed; will try again."),
            Err(e) => tracing::error!(error = %e, "Checking the audit chain failed; will try again."),
        }
        tokio::select! {
            _ = tokio::time::sleep(AUDIT_CHECK_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Finishes the erasure jobs a crash (or a failing step) left unfinished,
/// and on a shared store erases what is queued of people erased (a dead
/// replica may hold it claimed): at start, then every minute.
async fn erasure_jobs_loop(ops: crate::ops::Local, shutdown: CancellationToken) {
    loop {
        crate::erasure_jobs::resume_unfinished(&ops.store, &ops.codec, ops.intercom.as_deref()).await;
        if ops.store.is_shared() {
            let store = ops.store.clone();
            match tokio::task::spawn_blocking(move || crate::erasure::erase_queued_covered(&store)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::warn!(events = n, "Erased queued notifications of people already erased."),
                Ok(Err(e)) => tracing::error!(error = %e, "Could not look for queued notifications of people erased."),
                Err(e) => tracing::error!(error = %e, "The look for queued notifications of people erased failed."),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// `[reconcile] interval`: a reconciliation every `every` until shutdown
/// (the first one `every` after start).
async fn reconcile_loop(ops: crate::ops::Local, every: Duration, shutdown: CancellationToken) {
    use crate::ops::Action;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        match crate::ops::workspace::Reconcile::default().run(ops.clone()).await {
            Ok(r) => tracing::info!(
                stored = r.stored,
                contacts_deleted = r.contacts_deleted,
                conversations_deleted = r.conversations_deleted,
                "Scheduled reconciliation done."
            ),
            Err(e) => tracing::warn!(error = %e, "Scheduled reconciliation failed; will try again next interval."),
        }
    }
}
