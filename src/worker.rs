//! Workers: take stored events off the request path (the `200` never waits
//! for them), route them, run the handler and record the outcome in one
//! transaction with the cache change. A failing event is retried with
//! exponential backoff and jitter, then marked `failed`; it never blocks
//! the others. Events still queued at a crash are picked up on start
//! (the store re-queues them when it opens).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::cache::CacheCodec;
use crate::config::WorkerSettings;
use crate::dispatch::route;
use crate::handlers::{self, Applied, Ctx};
use crate::intake_load::IntakeLoad;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::store::{Attempt, BatchRun, Completion, EventMeta, Fresh, Snapshot, Status, Store, StoreError, Work};
use crate::timefmt::now_ms;

#[derive(Clone)]
pub struct WorkerCtx {
    pub store: Store,
    pub codec: Arc<CacheCodec>,
    pub metrics: Arc<Metrics>,
    pub settings: WorkerSettings,
    pub runtime: tokio::runtime::Handle,
    /// How busy the receiver is (see `yield_to_intake`).
    pub intake_load: IntakeLoad,
}

/// How much lower than intake the handler threads run (a nice value):
/// on a busy machine the scheduler gives intake's threads the CPU first, so
/// a burst of heavy handler work (a bulk deletion's erasures, a replay)
/// does not delay the `200`s. Handlers still get every idle cycle.
pub const HANDLER_NICE: i32 = 10;

/// Starts `settings.concurrency` worker threads; they stop when `shutdown`
/// is cancelled. Returns their handles.
pub fn spawn(ctx: WorkerCtx, shutdown: CancellationToken) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    (0..ctx.settings.concurrency)
        .map(|i| {
            let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
            std::thread::Builder::new().name(format!("worker-{i}")).spawn(move || {
                // Linux: this thread only. Failing to lower it is harmless.
                let _ = rustix::process::setpriority_process(None, HANDLER_NICE);
                run(ctx, shutdown)
            })
        })
        .collect()
}

fn run(ctx: WorkerCtx, shutdown: CancellationToken) {
    let queue = ctx.store.work_queue();
    let most = ctx.store.handler_batch().max(1);
    while !shutdown.is_cancelled() {
        let first = match queue.recv_timeout(Duration::from_millis(100)) {
            Ok(w) => w,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        let paused = yield_to_intake(
            &ctx.intake_load,
            ctx.settings.yield_to_intake,
            first.queued_ms,
            &shutdown,
        );
        if !paused.is_zero() {
            ctx.metrics.worker_yielded.inc_by(paused.as_secs_f64());
        }
        // What queued up meanwhile goes with it, where the store batches.
        let mut works = vec![first];
        while works.len() < most {
            match queue.try_recv() {
                Ok(w) => works.push(w),
                Err(_) => break,
            }
        }
        for (key, fresh, result) in process_batch(&ctx, works) {
            if let Err(e) = &result {
                // The event stays queued; it is tried again at the next start or
                // replay. Store errors say nothing personal.
                tracing::error!(webhook_id = %key, error = %e, "Could not record an event's outcome.");
            }
            if let Some((batch, received_ms)) = fresh {
                if result.is_err() {
                    if let Err(e) = ctx.store.keep_queued(&key, received_ms) {
                        tracing::error!(webhook_id = %key, error = %e, "Could not keep a failed event queued; it is queued again at the next start.");
                        continue;
                    }
                }
                ctx.store.fresh_finished(batch);
            }
        }
    }
}

/// What became of one piece of work: its key, its intake batch and receipt
/// time when it came fresh from intake, and its result.
type Done = (String, Option<(u64, i64)>, Result<Processed, StoreError>);

fn process_one(ctx: &WorkerCtx, work: Work) -> Done {
    let key = work.key.clone();
    let fresh = work.fresh.as_ref().map(|f| (f.batch, f.seen.meta.received_ms));
    (key, fresh, process_work(ctx, work))
}

/// A fresh event ready for a batched run: due, nobody's erased, routed.
struct Ready {
    key: String,
    queued_ms: i64,
    fresh: Box<Fresh>,
    /// `None`: no handler for its topic (recorded `skipped`).
    action: Option<crate::dispatch::Action>,
    applied: std::cell::Cell<Option<Applied>>,
}

impl Ready {
    fn into_work(self) -> Work {
        Work {
            key: self.key,
            queued_ms: self.queued_ms,
            fresh: Some(self.fresh),
        }
    }

    fn done(&self, result: Result<Processed, StoreError>) -> Done {
        let fresh = Some((self.fresh.batch, self.fresh.seen.meta.received_ms));
        (self.key.clone(), fresh, result)
    }
}

/// Several events, in the order they came: those that came fresh from
/// intake and need only their handler run (or a `skipped`) go to the store
/// as one batch (`Backend::apply_and_complete_batch`); any other event
/// first ends the batch before it and then runs on its own through
/// [`process_work`] (a deletion, say, must not overtake what came before
/// it, and what comes after it is checked against its erasure). All of
/// them go one by one when the store gives a batch up.
fn process_batch(ctx: &WorkerCtx, works: Vec<Work>) -> Vec<Done> {
    let mut done = Vec::with_capacity(works.len());
    let mut rest: std::collections::VecDeque<Work> = works.into();
    while !rest.is_empty() {
        if rest.len() == 1 {
            done.extend(rest.drain(..).map(|w| process_one(ctx, w)));
            break;
        }
        // Held from the erasure check until the batch's outcomes are
        // recorded (see `Store::handler_gate`); runs that go one by one
        // take it again on their own, after it is dropped.
        let gate = ctx.store.handler_gate();
        let subjects: Vec<String> = rest
            .iter()
            .filter_map(|w| w.fresh.as_ref())
            .flat_map(|f| f.seen.meta.subjects.iter().cloned())
            .collect();
        let Ok(erased) = ctx.store.erased_among(&subjects) else {
            drop(gate);
            done.extend(rest.drain(..).map(|w| process_one(ctx, w)));
            break;
        };
        let now = now_ms();
        let mut ready = Vec::new();
        let mut alone = None;
        while let Some(work) = rest.pop_front() {
            match batchable(ctx, work, &erased, now) {
                Ok(r) => ready.push(r),
                Err(work) => {
                    alone = Some(work);
                    break;
                }
            }
        }
        let one_by_one = run_ready(ctx, ready, now, &mut done);
        drop(gate);
        done.extend(one_by_one.into_iter().map(|r| process_one(ctx, r.into_work())));
        if let Some(work) = alone {
            done.push(process_one(ctx, work));
        }
    }
    done
}

/// A fresh event that is due, carries nobody erased (`erased`: the
/// erasures of the batch's subjects) and is routed to a handler other than
/// a deletion's, or to none; any other comes back as it was.
fn batchable(ctx: &WorkerCtx, work: Work, erased: &HashMap<String, i64>, now: i64) -> Result<Ready, Work> {
    let Some(f) = work.fresh.as_ref() else { return Err(work) };
    let meta = &f.seen.meta;
    let due = meta.status.is_queued() && meta.retry_at_ms.is_none_or(|at| at <= now);
    if !due || crate::erasure::covers_among(erased, meta) {
        return Err(work);
    }
    let action = match prepare(ctx, meta, Some(f.body.clone())) {
        Ok(None) => None,
        Ok(Some(crate::dispatch::Action::ContactDelete { .. })) | Err(_) => return Err(work),
        Ok(Some(action)) => Some(action),
    };
    let Work { key, queued_ms, fresh } = work;
    match fresh {
        Some(fresh) => Ok(Ready {
            key,
            queued_ms,
            fresh,
            action,
            applied: std::cell::Cell::new(None),
        }),
        None => Err(Work { key, queued_ms, fresh }),
    }
}

/// A batched run's handler, and its outcome (see `BatchRun`).
type Effects<'a> = Box<dyn FnMut(&dyn crate::store::CacheTx) -> crate::store::TxResult<()> + 'a>;
type Outcome<'a> = Box<dyn Fn(&Result<(), StoreError>) -> Completion + 'a>;

/// Runs `ready` as one batch; returns what is to run one by one instead
/// (all of it if the store gives the batch up, or if there is only one).
fn run_ready(ctx: &WorkerCtx, ready: Vec<Ready>, now: i64, done: &mut Vec<Done>) -> Vec<Ready> {
    if ready.len() < 2 {
        return ready;
    }
    let started = Instant::now();
    fn hctx<'a>(codec: &'a CacheCodec, r: &'a Ready, now_ms: i64) -> Ctx<'a> {
        Ctx {
            codec,
            app_id: r.fresh.seen.meta.app_id.as_deref(),
            event_created_at: r.fresh.seen.meta.created_at,
            now_ms,
        }
    }
    let mut effects: Vec<Effects<'_>> = ready
        .iter()
        .map(|r| {
            Box::new(move |tx: &dyn crate::store::CacheTx| {
                if let Some(action) = &r.action {
                    r.applied
                        .set(Some(handlers::apply(action, tx, &hctx(&ctx.codec, r, now))?));
                }
                Ok(())
            }) as Effects<'_>
        })
        .collect();
    let outcomes: Vec<Outcome<'_>> = ready
        .iter()
        .map(|r| {
            Box::new(move |result: &Result<(), StoreError>| match result {
                Ok(()) => Completion {
                    status: if r.action.is_some() {
                        Status::Processed
                    } else {
                        Status::Skipped
                    },
                    attempt: Attempt {
                        at_ms: now_ms(),
                        outcome: match r.action {
                            Some(_) => processed_outcome(r.applied.get().unwrap_or(Applied::Updated)),
                            None => "skipped".into(),
                        },
                        error: None,
                        duration_us: Some(started.elapsed().as_micros() as u64),
                    },
                    retry_at_ms: None,
                },
                Err(e) => failure_completion(ctx, &r.fresh.seen, &e.to_string(), started),
            }) as Outcome<'_>
        })
        .collect();
    let mut runs: Vec<BatchRun<'_>> = ready
        .iter()
        .zip(effects.iter_mut())
        .zip(outcomes.iter())
        .map(|((r, effects), outcome)| BatchRun {
            seen: &r.fresh.seen,
            reads: r.action.as_ref().map(handlers::reads).unwrap_or_default(),
            effects: &mut **effects,
            outcome: &**outcome,
        })
        .collect();
    let committed = ctx.store.apply_and_complete_batch(&mut runs);
    drop(runs);
    drop(effects);
    drop(outcomes);
    match committed {
        Ok(Some(recorded)) => {
            ctx.metrics.run_batches.inc();
            ctx.metrics.batched_runs.inc_by(ready.len() as u64);
            for (r, recorded) in ready.iter().zip(recorded) {
                if recorded.is_none() {
                    // Gone, claimed by another replica, or run already.
                    done.push(r.done(Ok(Processed::NotDue)));
                    continue;
                }
                let status = if r.action.is_some() {
                    Status::Processed
                } else {
                    Status::Skipped
                };
                record(ctx, &r.fresh.seen.meta, status);
                done.push(r.done(Ok(Processed::Done(status))));
            }
            Vec::new()
        }
        // Given up (a run failed, a conflict, the database): each on its own.
        Ok(None) | Err(_) => ready,
    }
}

/// Intake first: while the receiver is saturated, the handler threads
/// pause (in steps of `SATURATION_SETTLES_MS`, 10 ms: eight threads
/// waking every millisecond cost a tenth of the service's CPU under a
/// PostgreSQL intake load) before each event, so that acknowledging webhooks
/// gets the CPU and a burst is answered quickly; the queue is worked off as
/// soon as intake has room. An event waits this way at most
/// `worker.yield_to_intake` after it was queued, so under load that never
/// lets up, processing falls at most that far behind and then shares the CPU
/// again. Pausing between events, never inside one, keeps a handler from
/// being stopped while it holds anything intake needs. Returns how long it
/// paused.
fn yield_to_intake(load: &IntakeLoad, limit: Duration, queued_ms: i64, shutdown: &CancellationToken) -> Duration {
    let limit = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
    let waiting = || load.saturated() && now_ms().saturating_sub(queued_ms) < limit && !shutdown.is_cancelled();
    if limit == 0 || !waiting() {
        return Duration::ZERO;
    }
    let started = Instant::now();
    while waiting() {
        std::thread::sleep(Duration::from_millis(crate::intake_load::SATURATION_SETTLES_MS as u64));
    }
    started.elapsed()
}

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    Done(Status),
    /// Not queued any more (a duplicate enqueue), or not due yet.
    NotDue,
}

/// Runs the handler for one queued event and records the outcome.
pub fn process(ctx: &WorkerCtx, key: &str) -> Result<Processed, StoreError> {
    process_work(
        ctx,
        Work {
            key: key.to_string(),
            fresh: None,
            queued_ms: now_ms(),
        },
    )
}

fn process_work(ctx: &WorkerCtx, work: Work) -> Result<Processed, StoreError> {
    let (seen, body) = match work.fresh {
        Some(f) => (f.seen, Some(f.body)),
        None => match ctx.store.snapshot(&work.key)? {
            Some(seen) => (seen, None),
            None => return Ok(Processed::NotDue),
        },
    };
    let (meta, key) = (&seen.meta, work.key.as_str());
    if !meta.status.is_queued() {
        return Ok(Processed::NotDue);
    }
    let now = now_ms();
    if let Some(at) = meta.retry_at_ms.filter(|&at| at > now) {
        schedule(ctx, key, Duration::from_millis((at - now) as u64));
        return Ok(Processed::NotDue);
    }
    let started = Instant::now();
    // Held from the erasure check until the outcome is recorded, so an
    // erasure that closes its door meanwhile waits for this run (see
    // `Store::handler_gate`); a deletion's own erasure runs without it.
    let gate = ctx.store.handler_gate();
    let covered = crate::erasure::covers(&ctx.store, meta)?;
    // Someone erased already: the event goes without being handled (its
    // dedup marker stays), in one step, so no crash can leave it kept.
    // Only a person's deletion still runs: a crash may have cut its own
    // erasure short after the door was closed.
    if covered && !crate::dispatch::is_deletion(&meta.topic) {
        drop(gate);
        return erase_covered(ctx, &seen);
    }
    let failure = match prepare(ctx, meta, body) {
        Err(_) | Ok(None) if covered => {
            drop(gate);
            return erase_covered(ctx, &seen);
        }
        Err(reason) => reason,
        Ok(None) => return finish(ctx, &seen, Status::Skipped, "skipped".into(), started),
        Ok(Some(action)) => {
            let hctx = Ctx {
                codec: &ctx.codec,
                app_id: meta.app_id.as_deref(),
                event_created_at: meta.created_at,
                now_ms: now,
            };
            let crate::dispatch::Action::ContactDelete { id } = &action else {
                if covered {
                    drop(gate);
                    return erase_covered(ctx, &seen);
                }
                return run_handler(ctx, &seen, &action, &hctx, started);
            };
            drop(gate);
            match ctx.store.cache_txn(|tx| handlers::apply(&action, tx, &hctx)) {
                Ok(_) => {
                    // A contact deleted in Intercom is erased here too; the
                    // deletion notification names them as well (id, external
                    // id), so it goes last, once everything else has. Until
                    // then it stays queued: a crash runs all of it again.
                    // Its dedup marker stays, and the audit entry says what
                    // happened.
                    crate::erasure_jobs::on_deletion(&ctx.store, &ctx.codec, id, key, meta.received_ms, || {
                        crate::failpoint::hit_settled("worker:deletion-before-erase", || {
                            let _ = ctx.store.flush_index();
                        });
                        ctx.store.erase_events(&[key.to_string()], false).map(|_| ())
                    })?;
                    record(ctx, meta, Status::Processed);
                    return Ok(Processed::Done(Status::Processed));
                }
                Err(StoreError::Rejected(msg)) => msg,
                Err(e) => e.to_string(),
            }
        }
    };
    retry_or_fail(ctx, &seen, failure, started)
}

/// An event of someone already erased: erased itself, in one step (its
/// outcome is not recorded: nothing of it is left to hold one).
fn erase_covered(ctx: &WorkerCtx, seen: &Snapshot) -> Result<Processed, StoreError> {
    crate::failpoint::hit_settled("worker:before-erasing-erased", || {
        let _ = ctx.store.flush_index();
    });
    ctx.store.erase_events(std::slice::from_ref(&seen.meta.key), false)?;
    record(ctx, &seen.meta, Status::Skipped);
    Ok(Processed::Done(Status::Skipped))
}

/// Reads (unless it came with the work), parses and routes an event.
/// `Ok(None)`: no handler for its topic.
fn prepare(ctx: &WorkerCtx, meta: &EventMeta, body: Option<Bytes>) -> Result<Option<crate::dispatch::Action>, String> {
    let body = match body {
        Some(b) => b,
        None => ctx
            .store
            .read_body(meta)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the payload is no longer stored (purged)".to_string())?,
    };
    // Only `data.item` is kept: the rest of the envelope is skipped
    // without being built.
    #[derive(serde::Deserialize)]
    struct Envelope {
        data: Option<Data>,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        item: Option<Value>,
    }
    let envelope: Envelope =
        serde_json::from_slice(&body).map_err(|_| "the payload is not a JSON notification".to_string())?;
    let item = envelope
        .data
        .and_then(|d| d.item)
        .ok_or_else(|| "no data.item".to_string())?;
    route(&meta.topic, &item).map_err(|e| e.to_string())
}

fn processed_outcome(applied: Applied) -> String {
    match applied {
        Applied::Updated => "processed".to_string(),
        other => format!("processed:{}", other.as_str()),
    }
}

/// Runs a handler and records its outcome through
/// `Backend::apply_and_complete`: with a database, a successful run's cache
/// writes and its outcome (and the end of the replica's claim) commit in
/// one transaction.
fn run_handler(
    ctx: &WorkerCtx,
    seen: &Snapshot,
    action: &crate::dispatch::Action,
    hctx: &Ctx<'_>,
    started: Instant,
) -> Result<Processed, StoreError> {
    let applied = std::cell::Cell::new(None);
    let failure = std::cell::RefCell::new(None);
    let (result, _) = ctx.store.apply_and_complete(
        seen,
        &mut |tx| {
            applied.set(Some(handlers::apply(action, tx, hctx)?));
            Ok(())
        },
        &|result| match result {
            Ok(()) => Completion {
                status: Status::Processed,
                attempt: Attempt {
                    at_ms: now_ms(),
                    outcome: processed_outcome(applied.get().unwrap_or(Applied::Updated)),
                    error: None,
                    duration_us: Some(started.elapsed().as_micros() as u64),
                },
                retry_at_ms: None,
            },
            Err(e) => {
                let error = match e {
                    StoreError::Rejected(msg) => msg.clone(),
                    e => e.to_string(),
                };
                let completion = failure_completion(ctx, seen, &error, started);
                *failure.borrow_mut() = Some(error);
                completion
            }
        },
    )?;
    match result {
        Ok(()) => {
            record(ctx, &seen.meta, Status::Processed);
            Ok(Processed::Done(Status::Processed))
        }
        Err(_) => {
            let error = failure.borrow_mut().take().unwrap_or_default();
            // The completion recorded is the one computed above (its retry
            // time included): read it back from what it said.
            Ok(after_failure(ctx, seen, &error))
        }
    }
}

fn finish(
    ctx: &WorkerCtx,
    seen: &Snapshot,
    status: Status,
    outcome: String,
    started: Instant,
) -> Result<Processed, StoreError> {
    let completion = Completion {
        status,
        attempt: Attempt {
            at_ms: now_ms(),
            outcome,
            error: None,
            duration_us: Some(started.elapsed().as_micros() as u64),
        },
        retry_at_ms: None,
    };
    ctx.store.complete(seen, &completion)?;
    record(ctx, &seen.meta, status);
    Ok(Processed::Done(status))
}

fn record(ctx: &WorkerCtx, meta: &EventMeta, status: Status) {
    ctx.metrics
        .processed
        .get_or_create(&OutcomeLabel {
            outcome: status.as_str(),
        })
        .inc();
    let latency = (now_ms() - meta.received_ms).max(0) as f64 / 1000.0;
    ctx.metrics.processing_latency.observe(latency);
}

/// The outcome of a failed attempt: retrying after a backoff, or failed
/// once the attempts are used up.
fn failure_completion(ctx: &WorkerCtx, seen: &Snapshot, error: &str, started: Instant) -> Completion {
    let attempts = seen.meta.attempts + 1;
    let now = now_ms();
    let (status, retry_at) = if attempts >= ctx.settings.max_attempts {
        (Status::Failed, None)
    } else {
        let delay = backoff(&ctx.settings, attempts);
        (Status::Retrying, Some(now + delay.as_millis() as i64))
    };
    Completion {
        status,
        attempt: Attempt {
            at_ms: now,
            outcome: status.as_str().to_string(),
            error: Some(error.to_string()),
            duration_us: Some(started.elapsed().as_micros() as u64),
        },
        retry_at_ms: retry_at,
    }
}

/// After a failed attempt's outcome is recorded: the retry scheduled (it
/// is due at the time the event now holds), or the failure counted.
fn after_failure(ctx: &WorkerCtx, seen: &Snapshot, error: &str) -> Processed {
    let meta = &seen.meta;
    let attempts = meta.attempts + 1;
    if attempts >= ctx.settings.max_attempts {
        record(ctx, meta, Status::Failed);
        tracing::error!(webhook_id = %meta.key, topic = %meta.topic, attempts, error = %error, "Handler failed for good; event marked failed.");
        return Processed::Done(Status::Failed);
    }
    let due = ctx
        .store
        .get(&meta.key)
        .ok()
        .flatten()
        .and_then(|m| m.retry_at_ms)
        .unwrap_or_else(now_ms);
    tracing::warn!(webhook_id = %meta.key, topic = %meta.topic, attempt = attempts, error = %error, "Handler failed; will retry.");
    schedule(ctx, &meta.key, Duration::from_millis((due - now_ms()).max(0) as u64));
    Processed::Done(Status::Retrying)
}

fn retry_or_fail(ctx: &WorkerCtx, seen: &Snapshot, error: String, started: Instant) -> Result<Processed, StoreError> {
    let completion = failure_completion(ctx, seen, &error, started);
    ctx.store.complete(seen, &completion)?;
    Ok(after_failure(ctx, seen, &error))
}

/// Exponential backoff with jitter: a random delay in [d/2, d] where
/// d = base · 2^(attempt−1), capped at `backoff_max`.
pub fn backoff(s: &WorkerSettings, attempt: u32) -> Duration {
    let exp = s.backoff_base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = exp.min(s.backoff_max);
    let half = d / 2;
    half + Duration::from_millis(rand::thread_rng().gen_range(0..=half.as_millis().max(1) as u64))
}

fn schedule(ctx: &WorkerCtx, key: &str, delay: Duration) {
    let store = ctx.store.clone();
    let key = key.to_string();
    ctx.runtime.spawn(async move {
        tokio::time::sleep(delay).await;
        store.enqueue(key);
    });
}

/// Marks the workers as running for `/readyz` while the threads live.
pub fn mark_running(flag: &std::sync::atomic::AtomicBool, running: bool) {
    flag.store(running, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_yield_to_a_saturated_receiver_for_a_bounded_time() {
        let load = IntakeLoad::default();
        let stop = CancellationToken::new();
        let limit = Duration::from_secs(30);
        // Not saturated: no pause.
        assert_eq!(yield_to_intake(&load, limit, now_ms(), &stop), Duration::ZERO);
        let held: Vec<_> = (0..=crate::intake_load::SATURATED_IN_FLIGHT)
            .map(|_| load.enter())
            .collect();
        // Saturated, but the event has waited its limit already, or pausing is off.
        assert_eq!(yield_to_intake(&load, limit, now_ms() - 31_000, &stop), Duration::ZERO);
        assert_eq!(yield_to_intake(&load, Duration::ZERO, now_ms(), &stop), Duration::ZERO);
        // Saturated: pauses until intake has room...
        let paused = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(150));
                drop(held);
            });
            yield_to_intake(&load, limit, now_ms(), &stop)
        });
        assert!(
            paused >= Duration::from_millis(140) && paused < Duration::from_secs(20),
            "{paused:?}"
        );
        // ...or until the event has waited its limit.
        let _held: Vec<_> = (0..=crate::intake_load::SATURATED_IN_FLIGHT)
            .map(|_| load.enter())
            .collect();
        let paused = yield_to_intake(&load, Duration::from_millis(200), now_ms(), &stop);
        assert!(
            paused >= Duration::from_millis(150) && paused < Duration::from_secs(20),
            "{paused:?}"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let s = WorkerSettings {
            concurrency: 1,
            max_attempts: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            yield_to_intake: Duration::ZERO,
        };
        for _ in 0..50 {
            let d1 = backoff(&s, 1);
            assert!(
                d1 >= Duration::from_millis(500) && d1 <= Duration::from_millis(1001),
                "{d1:?}"
            );
            let d3 = backoff(&s, 3);
            assert!(
                d3 >= Duration::from_secs(2) && d3 <= Duration::from_millis(4001),
                "{d3:?}"
            );
            let d9 = backoff(&s, 9);
            assert!(
                d9 >= Duration::from_secs(5) && d9 <= Duration::from_millis(10001),
                "{d9:?}"
            );
        }
    }
}
