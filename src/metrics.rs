//! Prometheus metrics (served on the admin listener). Labels are fixed,
//! small sets (route, status code, reason, outcome, data class): never an id,
//! a topic from the wire beyond the known families, or anything personal.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::timefmt::now_ms;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteCode {
    pub route: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<RouteCode, Counter>,
    pub signature_failures: Family<Reason, Counter>,
    pub duplicates: Counter,
    /// Requests and connections turned away with `503` because the public
    /// listener's caps were reached.
    pub intake_busy: Counter,
    /// Connections the admin listener turned away with `503` (its
    /// connection cap, `[admin] max_connections`).
    pub admin_busy: Counter,
    pub intake: Family<OutcomeLabel, Counter>,
    pub intake_latency: Histogram,
    pub processing_latency: Histogram,
    pub processed: Family<OutcomeLabel, Counter>,
    /// Seconds handler threads paused for a saturated receiver.
    pub worker_yielded: Counter<f64, AtomicU64>,
    /// Handler runs committed as part of a batch (PostgreSQL), and batches.
    pub batched_runs: Counter,
    pub run_batches: Counter,
    pub pending_depth: Gauge,
    pub shred_queue: Gauge,
    pub intake_in_flight: Gauge,
    pub failed_events: Gauge,
    pub replays: Counter,
    /// Notifications a reconciliation stored (changes webhooks missed).
    pub reconciled: Counter,
    pub purged: Family<ClassLabel, Counter>,
    pub purge_runs: Counter,
    pub purge_last_run: Gauge,
    pub purge_duration_ms: Gauge,
    pub store_size: Gauge,
    /// Age of the oldest event waiting for a worker (0: none waits).
    pub oldest_pending_age: Gauge,
    /// Bytes free on the data dir's file system, and the reserve the store
    /// stops taking writes at (`[store] min_free_bytes`).
    pub store_free_bytes: Gauge,
    pub store_min_free_bytes: Gauge,
    /// 1 while the store takes writes (what `/readyz` reports), else 0.
    pub store_ready: Gauge,
    /// 1 when the last check of the audit chain passed, 0 when it failed;
    /// when it was last checked.
    pub audit_chain_ok: Gauge,
    pub audit_last_verified: Gauge,
    pub fsyncs: Gauge,
    pub webhook_consecutive_errors: Gauge,
    pub webhook_seconds_since_2xx: Gauge,
    pub intercom_calls: Family<IntercomCall, Counter>,
    /// Webhook delivery health, as Intercom sees it (facts.md §1.6): it
    /// pauses after 1,000 consecutive errors in 15 minutes.
    pub health: WebhookHealth,
    /// Intake and processing rates over the last minute (the console's).
    pub rates: Rates,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntercomCall {
    pub endpoint: &'static str,
    pub status: u16,
}

#[derive(Default)]
pub struct WebhookHealth {
    consecutive_errors: AtomicU64,
    last_2xx_ms: AtomicI64,
    started_ms: AtomicI64,
}

impl WebhookHealth {
    pub fn record(&self, code: u16) {
        if (200..300).contains(&code) {
            self.consecutive_errors.store(0, Ordering::Relaxed);
            self.last_2xx_ms.store(now_ms(), Ordering::Relaxed);
        } else {
            self.consecutive_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn consecutive_errors(&self) -> u64 {
        self.consecutive_errors.load(Ordering::Relaxed)
    }

    /// Unix ms of the last 2xx we answered on the webhook route (0: none).
    pub fn last_2xx_ms(&self) -> i64 {
        self.last_2xx_ms.load(Ordering::Relaxed)
    }

    /// Seconds since the last 2xx, or since start when there was none.
    pub fn seconds_since_2xx(&self) -> i64 {
        let since = match self.last_2xx_ms() {
            0 => self.started_ms.load(Ordering::Relaxed),
            t => t,
        };
        (now_ms() - since).max(0) / 1000
    }
}

/// Totals sampled every few seconds (by the server's sampler task), so
/// the console can show rates without a time-series database.
#[derive(Default)]
pub struct Rates {
    /// (unix ms, stored notifications, handler outcomes), oldest first.
    samples: Mutex<std::collections::VecDeque<(i64, u64, u64)>>,
}

/// Per-second rates over `window_seconds`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatePair {
    pub intake: f64,
    pub processed: f64,
    pub window_seconds: u64,
}

impl Rates {
    /// How far back rates look.
    pub const WINDOW_MS: i64 = 60_000;

    pub fn sample(&self, at_ms: i64, stored: u64, processed: u64) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        s.push_back((at_ms, stored, processed));
        // Keep the newest sample at least a window old, and nothing older.
        while s.len() > 2 && s[1].0 <= at_ms - Self::WINDOW_MS {
            s.pop_front();
        }
    }

    /// From the oldest sample kept to the newest; `None` until two
    /// samples a second or more apart exist.
    pub fn per_second(&self) -> Option<RatePair> {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let (&(t0, a0, p0), &(t1, a1, p1)) = (s.front()?, s.back()?);
        let dt = (t1 - t0) as f64 / 1000.0;
        (dt >= 1.0).then(|| RatePair {
            intake: a1.saturating_sub(a0) as f64 / dt,
            processed: p1.saturating_sub(p0) as f64 / dt,
            window_seconds: dt.round() as u64,
        })
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}

impl Metrics {
    /// The sum of an outcome family's counters over `outcomes`.
    pub fn outcome_total(family: &Family<OutcomeLabel, Counter>, outcomes: &[&'static str]) -> u64 {
        outcomes
            .iter()
            .map(|&outcome| family.get_or_create(&OutcomeLabel { outcome }).get())
            .sum()
    }

    pub fn new() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("intercom_webhooks")),
            requests: Family::default(),
            signature_failures: Family::default(),
            duplicates: Counter::default(),
            intake_busy: Counter::default(),
            admin_busy: Counter::default(),
            intake: Family::default(),
            intake_latency: Histogram::new(latency_buckets()),
            processing_latency: Histogram::new(latency_buckets()),
            processed: Family::default(),
            worker_yielded: Counter::default(),
            batched_runs: Counter::default(),
            run_batches: Counter::default(),
            pending_depth: Gauge::default(),
            shred_queue: Gauge::default(),
            intake_in_flight: Gauge::default(),
            failed_events: Gauge::default(),
            replays: Counter::default(),
            reconciled: Counter::default(),
            purged: Family::default(),
            purge_runs: Counter::default(),
            purge_last_run: Gauge::default(),
            purge_duration_ms: Gauge::default(),
            store_size: Gauge::default(),
            oldest_pending_age: Gauge::default(),
            store_free_bytes: Gauge::default(),
            store_min_free_bytes: Gauge::default(),
            store_ready: Gauge::default(),
            audit_chain_ok: Gauge::default(),
            audit_last_verified: Gauge::default(),
            fsyncs: Gauge::default(),
            webhook_consecutive_errors: Gauge::default(),
            webhook_seconds_since_2xx: Gauge::default(),
            intercom_calls: Family::default(),
            health: WebhookHealth::default(),
            rates: Rates::default(),
        };
        m.health.started_ms.store(now_ms(), Ordering::Relaxed);
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register(
                "http_requests",
                "HTTP requests by route and status code",
                m.requests.clone(),
            );
            r.register(
                "signature_failures",
                "Webhook requests that failed signature verification",
                m.signature_failures.clone(),
            );
            r.register(
                "duplicates",
                "Webhook deliveries of an id already stored",
                m.duplicates.clone(),
            );
            r.register(
                "intake_busy",
                "Requests and connections answered 503 because the caps on connections or unverified body bytes were reached",
                m.intake_busy.clone(),
            );
            r.register(
                "admin_busy",
                "Admin listener connections answered 503 because admin.max_connections was reached",
                m.admin_busy.clone(),
            );
            r.register("intake", "Verified webhook deliveries by outcome", m.intake.clone());
            r.register(
                "intake_latency_seconds",
                "Time from request start to answer on the webhook route",
                m.intake_latency.clone(),
            );
            r.register(
                "processing_latency_seconds",
                "Time from receipt to a final handler outcome",
                m.processing_latency.clone(),
            );
            r.register("processed", "Handler runs by outcome", m.processed.clone());
            r.register(
                "worker_yielded_seconds",
                "Time handler threads paused so that a saturated receiver got the CPU",
                m.worker_yielded.clone(),
            );
            r.register(
                "handler_batched_runs",
                "Handler runs committed in a batch with others (PostgreSQL backend)",
                m.batched_runs.clone(),
            );
            r.register(
                "handler_run_batches",
                "Batches of handler runs committed as one transaction (PostgreSQL backend)",
                m.run_batches.clone(),
            );
            r.register("pending_depth", "Events waiting for a worker", m.pending_depth.clone());
            r.register(
                "oldest_pending_age_seconds",
                "Age of the oldest event waiting for a worker (0 when none waits)",
                m.oldest_pending_age.clone(),
            );
            r.register(
                "store_free_bytes",
                "Bytes free on the data dir's file system",
                m.store_free_bytes.clone(),
            );
            r.register(
                "store_min_free_bytes",
                "The free-space reserve below which the store stops taking writes ([store] min_free_bytes)",
                m.store_min_free_bytes.clone(),
            );
            r.register(
                "store_ready",
                "1 while the store takes writes (as /readyz reports), else 0",
                m.store_ready.clone(),
            );
            r.register(
                "audit_chain_ok",
                "1 when the last check of the audit chain passed, 0 when it failed",
                m.audit_chain_ok.clone(),
            );
            r.register(
                "audit_last_verified_timestamp_seconds",
                "When the audit chain was last checked (hourly, and at start)",
                m.audit_last_verified.clone(),
            );
            r.register(
                "erasure_segments_to_shred",
                "Log segments holding erased records, waiting for the shred pass to rewrite them",
                m.shred_queue.clone(),
            );
            r.register(
                "intake_in_flight",
                "Requests the webhook route is working on (over 8: saturated, handlers yield)",
                m.intake_in_flight.clone(),
            );
            r.register(
                "failed_events",
                "Events that gave up after the retry limit",
                m.failed_events.clone(),
            );
            r.register("replays", "Events replayed", m.replays.clone());
            r.register(
                "reconciled",
                "Notifications stored by reconciliation: changes the webhooks missed",
                m.reconciled.clone(),
            );
            r.register("purged", "Items removed by retention, by data class", m.purged.clone());
            r.register("purge_runs", "Purge runs", m.purge_runs.clone());
            r.register(
                "purge_last_run_timestamp_seconds",
                "When the last purge ran",
                m.purge_last_run.clone(),
            );
            r.register(
                "purge_last_duration_milliseconds",
                "How long the last purge took",
                m.purge_duration_ms.clone(),
            );
            r.register(
                "store_size_bytes",
                "Bytes on disk under the data dir",
                m.store_size.clone(),
            );
            r.register(
                "intake_log_fsyncs",
                "fdatasync calls on the intake log (group commits)",
                m.fsyncs.clone(),
            );
            r.register(
                "webhook_consecutive_errors",
                "Non-2xx answers in a row on the webhook route (Intercom pauses at 1000 in 15 min)",
                m.webhook_consecutive_errors.clone(),
            );
            r.register(
                "webhook_seconds_since_last_2xx",
                "Seconds since the webhook route last answered 2xx",
                m.webhook_seconds_since_2xx.clone(),
            );
            r.register(
                "intercom_api_calls",
                "Calls to Intercom's REST API by endpoint and status",
                m.intercom_calls.clone(),
            );
        }
        m
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        self.webhook_consecutive_errors
            .set(self.health.consecutive_errors() as i64);
        self.webhook_seconds_since_2xx.set(self.health.seconds_since_2xx());
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &r).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Rates;

    #[test]
    fn rates_cover_the_last_minute_only() {
        let r = Rates::default();
        assert_eq!(r.per_second(), None);
        r.sample(0, 0, 0);
        assert_eq!(r.per_second(), None, "one sample is no rate");
        // 100/s for the first two minutes, then 10/s.
        for t in 1..=120 {
            r.sample(t * 1000, t as u64 * 100, t as u64 * 50);
        }
        for t in 121..=180 {
            r.sample(t * 1000, 12_000 + (t as u64 - 120) * 10, 6_000 + (t as u64 - 120) * 5);
        }
        let p = r.per_second().expect("a rate");
        assert_eq!(p.window_seconds, 60);
        assert!((p.intake - 10.0).abs() < 1e-9, "{p:?}");
        assert!((p.processed - 5.0).abs() < 1e-9, "{p:?}");
    }
}
