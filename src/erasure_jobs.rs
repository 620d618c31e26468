//! ERASURE JOBS: an operator's erasure as a durable job. Its record is
//! written before its first step, each step is recorded as it is done, and
//! a job cut short by a crash (or by Intercom failing) is finished later by
//! [`resume_unfinished`], which `serve` runs at start and every minute.
//!
//! The steps, each safe to run again:
//! 1. **sweep** (`erasure::sweep`): the door closed on the person's
//!    identifiers, everything we hold found, forgotten and shredded;
//! 2. **intercom**: `DELETE /contacts/{id}` for each of their contact ids
//!    (a `404`, already gone, counts as done);
//! 3. **done**: the audit entry that ends it (one entry named
//!    `erase.start` began it).
//!
//! The record holds no plaintext personal data: subject keys (Intercom's
//! opaque contact ids, keyed hashes of emails and external ids), as the
//! erasure ledger does. Contacts that Intercom has under an email are
//! looked up before the record is written (a lookup changes nothing), so
//! the email itself is never kept. A finished job keeps only its counts and
//! hashes; the newest [`FINISHED_KEPT`] are kept for `erase --status`.
//!
//! A `contact.deleted` notification's erasure (delivered, or stored by
//! reconcile) is a job too, run by the worker handling the notification
//! ([`on_deletion`]): its id follows from the notification, so a worker
//! that runs the notification again after a crash carries on with the same
//! job. A job cut short is also resumed here, at the next start or by
//! another replica within a minute, so that on PostgreSQL it does not wait
//! for the dead replica's claim on the notification to lapse.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cache::CacheCodec;
use crate::client::{ApiError, IntercomClient};
use crate::erasure::{self, Erased};
use crate::store::{Store, StoreError};
use crate::timefmt::{format_ms, now_ms};

/// Where job records are kept (`Backend::state_values`).
const PREFIX: &str = "erasure_job:";
/// The trigger of a `contact.deleted` notification's job.
pub const DELETION_TRIGGER: &str = "contact.deleted webhook";
/// How many finished jobs are kept for `erase --status`.
pub const FINISHED_KEPT: usize = 200;

/// The jobs this process is running now.
static RUNNING: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// One erasure, as recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub trigger: String,
    pub started_ms: i64,
    /// The keyed hash of the identifier the operator gave.
    pub subject_hash: String,
    /// Subject keys the sweep starts from (cleared once finished).
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Whether Intercom's copy is erased too.
    pub intercom: bool,
    /// Contact ids to delete in Intercom, known once the sweep is done
    /// (cleared once finished).
    #[serde(default)]
    pub contact_ids: Vec<String>,
    /// Keyed hashes of those contact ids (kept).
    #[serde(default)]
    pub contact_id_hashes: Vec<String>,
    #[serde(default)]
    pub swept: Option<Erased>,
    /// (deleted, already absent) in Intercom.
    #[serde(default)]
    pub intercom_done: Option<(u64, u64)>,
    #[serde(default)]
    pub finished_ms: Option<i64>,
    /// The last step's error, while it is not done.
    #[serde(default)]
    pub error: Option<String>,
    /// Whether the sweep found anything of the person here.
    #[serde(default)]
    pub matched_local: bool,
    /// A deletion's own notification, removed once the sweep is done.
    #[serde(default)]
    pub own_event: Option<String>,
}

impl Job {
    pub fn new(trigger: &str, subject_hash: String, seeds: Vec<String>, intercom: bool) -> Job {
        let started_ms = now_ms();
        Job {
            id: format!("er_{started_ms:013}_{:08x}", rand::random::<u32>()),
            trigger: trigger.into(),
            started_ms,
            subject_hash,
            seeds,
            intercom,
            ..Job::default()
        }
    }

    pub fn state(&self) -> &'static str {
        if self.finished_ms.is_some() {
            "done"
        } else if running().contains(&self.id) {
            "running"
        } else {
            "unfinished"
        }
    }

    /// What `erase --status` and `GET /admin/erasures` show of it.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "trigger": self.trigger,
            "state": self.state(),
            "started_at": format_ms(self.started_ms),
            "finished_at": self.finished_ms.map(format_ms),
            "subject_hash": self.subject_hash,
            "steps": {
                "sweep": self.swept.is_some(),
                "intercom": if self.intercom { json!(self.intercom_done.is_some()) } else { json!("skipped") },
            },
            "local": self.swept,
            "intercom": self.intercom_done.map(|(d, a)| json!({"deleted": d, "already_absent": a})),
            "error": self.error,
        })
    }
}

fn running() -> HashSet<String> {
    RUNNING
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default()
}

/// Marks a job as running here; `false` if it already is.
fn claim(id: &str) -> bool {
    RUNNING
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(id.to_string())
}

fn release(id: &str) {
    if let Some(set) = RUNNING.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        set.remove(id);
    }
}

fn load(store: &Store, id: &str) -> Result<Option<Job>, StoreError> {
    match store.state_value(&format!("{PREFIX}{id}"))? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("the erasure job record {PREFIX}{id} is unreadable"))),
    }
}

fn save(store: &Store, job: &Job) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(job).expect("serialising plain data cannot fail");
    store.set_state_value(&format!("{PREFIX}{}", job.id), &bytes)
}

/// Every job recorded, oldest first.
pub fn list(store: &Store) -> Result<Vec<Job>, StoreError> {
    let mut jobs = Vec::new();
    for (name, bytes) in store.state_values(PREFIX)? {
        match serde_json::from_slice::<Job>(&bytes) {
            Ok(j) => jobs.push(j),
            Err(_) => {
                return Err(StoreError::Corrupt(format!(
                    "the erasure job record {name} is unreadable"
                )));
            }
        }
    }
    Ok(jobs)
}

/// Records a new job durably and audits its start: nothing of the
/// erasure happens before this returns.
pub fn start(store: &Store, job: &Job) -> Result<(), StoreError> {
    save(store, job)?;
    crate::audit::append(
        store,
        "erase.start",
        json!({"job": job.id, "trigger": job.trigger, "subject_hash": job.subject_hash, "intercom": job.intercom}),
    )?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Intercom: {0}")]
    Intercom(#[from] ApiError),
    /// The job needs Intercom and no client is configured.
    #[error("{0}")]
    NoClient(String),
    #[error("the erasure job {0} is being run already")]
    Busy(String),
}

/// Runs a job's remaining steps to the end; returns it finished. On an
/// error the job stays recorded with the error, to be resumed.
pub async fn run(
    store: &Store,
    codec: &CacheCodec,
    client: Option<&IntercomClient>,
    mut job: Job,
) -> Result<Job, JobError> {
    if !claim(&job.id) {
        return Err(JobError::Busy(job.id));
    }
    let result = steps(store, codec, client, &mut job).await;
    if let Err(e) = &result {
        job.error = Some(e.to_string());
        if let Err(save_error) = save(store, &job) {
            tracing::error!(job = %job.id, error = %save_error, "Could not record an erasure job's error.");
        }
    }
    release(&job.id);
    result.map(|()| job)
}

async fn steps(
    store: &Store,
    codec: &CacheCodec,
    client: Option<&IntercomClient>,
    job: &mut Job,
) -> Result<(), JobError> {
    if job.intercom && client.is_none() {
        return Err(JobError::NoClient(
            "INTERCOM_ACCESS_TOKEN is not set: this erasure job deletes in Intercom too, and waits for it".into(),
        ));
    }
    if job.swept.is_none() {
        let (s, c, seeds) = (store.clone(), codec.clone(), job.seeds.clone());
        let (found, erased) = tokio::task::spawn_blocking(move || erasure::sweep(&s, &c, &seeds, None, true))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        let mut ids: BTreeSet<String> = found.contact_ids().into_iter().collect();
        ids.extend(job.seeds.iter().filter(|k| erasure::is_contact_key(k)).cloned());
        job.contact_ids = ids.into_iter().collect();
        job.contact_id_hashes = job
            .contact_ids
            .iter()
            .map(|id| codec.keys().audit_hash(&format!("contact:{id}")))
            .collect();
        job.matched_local = !found.is_empty();
        job.swept = Some(erased);
        job.error = None;
        save(store, job)?;
        crate::failpoint::hit_settled("erase:after-sweep", || {
            let _ = store.flush_index();
        });
    }
    if let Some(own) = &job.own_event {
        store.erase_events(std::slice::from_ref(own), false)?;
    }
    if job.intercom && job.intercom_done.is_none() {
        let Some(c) = client else {
            return Err(JobError::NoClient("no Intercom client".into()));
        };
        let (mut deleted, mut absent) = (0, 0);
        for id in &job.contact_ids {
            if c.delete_contact(id).await? {
                deleted += 1;
            } else {
                absent += 1;
            }
        }
        job.intercom_done = Some((deleted, absent));
        job.error = None;
        save(store, job)?;
        crate::failpoint::hit_settled("erase:after-intercom", || {
            let _ = store.flush_index();
        });
    }
    finish(store, job)?;
    Ok(())
}

/// The audit entry that ends a job, and its record kept without what it
/// no longer needs.
fn finish(store: &Store, job: &mut Job) -> Result<(), StoreError> {
    let deletion = job.trigger == DELETION_TRIGGER;
    let intercom = match job.intercom_done {
        Some((d, a)) => json!({"deleted": d, "already_absent": a}),
        None if deletion => json!("skipped (deleted there)"),
        None => json!("skipped"),
    };
    let details = json!({
        "job": job.id,
        "trigger": job.trigger,
        "subject_hash": job.subject_hash,
        "contact_id_hashes": job.contact_id_hashes,
        "intercom": intercom,
        "local": job.swept,
    });
    // A deletion's entries are durable with the next checkpoint: a crash
    // that loses them leaves its notification queued, to be run again.
    if deletion {
        crate::audit::append_lazy(store, "erase", details)?;
    } else {
        crate::audit::append(store, "erase", details)?;
    }
    job.finished_ms = Some(now_ms());
    job.error = None;
    let mut kept = job.clone();
    kept.seeds.clear();
    kept.contact_ids.clear();
    kept.own_event = None;
    save(store, &kept)?;
    prune(store)
}

/// The erasure a `contact.deleted` notification (`event_key`, received at
/// `received_ms`) asks for, as a job, run by the worker handling it
/// (blocking): the door closed on the contact, everything of theirs swept
/// but the notification itself, then `remove_own` takes the notification
/// away (it names the person too, so it goes last), then the job ends.
/// Run again for the same notification, it carries on with the same job.
///
/// The segments are left to the background shred pass, so a bulk deletion
/// in Intercom costs one rewrite per segment, not one per contact, and
/// nothing is flushed here: a bulk deletion must not fill the disk queue
/// ahead of intake's `fdatasync`s. Until the notification is gone it stays
/// queued, so a crash runs it again (the door is closed then, which the
/// worker knows not to take for a finished erasure); the resume loop may
/// finish the job first, its sweep taking the notification too.
pub fn on_deletion(
    store: &Store,
    codec: &CacheCodec,
    contact_id: &str,
    event_key: &str,
    received_ms: i64,
    remove_own: impl FnOnce() -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let id = format!(
        "er_{received_ms:013}_{}",
        &codec.keys().audit_hash(&format!("deletion:{event_key}"))[..12]
    );
    let mut job = match load(store, &id)? {
        Some(job) => job,
        None => {
            let key = crate::identifiers::contact_key(contact_id);
            let job = Job {
                id: id.clone(),
                trigger: DELETION_TRIGGER.into(),
                started_ms: now_ms(),
                subject_hash: codec.keys().audit_hash(&key),
                seeds: vec![key],
                own_event: Some(event_key.to_string()),
                ..Job::default()
            };
            save(store, &job)?;
            crate::audit::append_lazy(
                store,
                "erase.start",
                json!({"job": job.id, "trigger": job.trigger, "subject_hash": job.subject_hash, "intercom": false}),
            )?;
            job
        }
    };
    if job.finished_ms.is_some() {
        return remove_own();
    }
    // Marked as running here, so that the resume loop leaves it alone.
    if !claim(&id) {
        return Err(StoreError::Unavailable(format!(
            "the erasure job {id} is being run already"
        )));
    }
    let result = (|| {
        if job.swept.is_none() {
            let (found, erased) = erasure::sweep(store, codec, &job.seeds, Some(event_key), false)?;
            job.contact_id_hashes = found
                .contact_ids()
                .iter()
                .map(|id| codec.keys().audit_hash(&format!("contact:{id}")))
                .collect();
            job.matched_local = !found.is_empty();
            job.swept = Some(erased);
            save(store, &job)?;
        }
        remove_own()?;
        finish(store, &mut job)
    })();
    release(&id);
    result
}

/// Removes all but the newest [`FINISHED_KEPT`] finished jobs.
fn prune(store: &Store) -> Result<(), StoreError> {
    let finished: Vec<Job> = list(store)?.into_iter().filter(|j| j.finished_ms.is_some()).collect();
    for j in finished.iter().take(finished.len().saturating_sub(FINISHED_KEPT)) {
        store.remove_state_value(&format!("{PREFIX}{}", j.id))?;
    }
    Ok(())
}

/// Finishes every unfinished job not running here; returns how many were
/// finished. A job that fails again stays for the next call (logged).
pub async fn resume_unfinished(store: &Store, codec: &CacheCodec, client: Option<&IntercomClient>) -> usize {
    let jobs = match list(store) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "Could not read the erasure jobs.");
            return 0;
        }
    };
    let mut finished = 0;
    for job in jobs.into_iter().filter(|j| j.finished_ms.is_none()) {
        if running().contains(&job.id) {
            continue;
        }
        let id = job.id.clone();
        tracing::warn!(job = %id, "Resuming an unfinished erasure job.");
        match run(store, codec, client, job).await {
            Ok(_) => {
                finished += 1;
                tracing::info!(job = %id, "Erasure job finished.");
            }
            Err(JobError::Busy(_)) => {}
            Err(e) => {
                tracing::error!(job = %id, error = %e, "An erasure job could not be finished; it is tried again.")
            }
        }
    }
    finished
}
