//! The embedded backend, the default: the intake log's files and the sled
//! index, in the data dir. The only code that knows sled or the log.
//!
//! - `log/*.seg`: the intake log. Every accepted notification is appended
//!   here, encrypted under its segment's key, and `fdatasync`ed before the
//!   `200` (group commit in `committer`). This is what makes a `200`
//!   survive a power cut.
//! - `index/` (sled): event metadata by key, a time index, the pending
//!   queue (events not handed to a worker straight from intake; see
//!   `progress`), dedup markers, segment info, the cache and the audit log. sled is
//!   made durable by a checkpointer (sled `flush` + our own `fsync` of its
//!   file, since sled's flush is no fsync); after a crash, log records past
//!   the last checkpoint are re-applied to sled on open.
//! - `keyring.bin`: the per-segment keys (see `keyring`).
//!
//! Dedup: the first request for a key wins an in-memory claim; a concurrent
//! duplicate waits until the winner's record is durable before it is
//! answered, so no id is acknowledged twice before it is on disk.
//!

mod audit;
mod backend_impl;
mod backup;
mod cache_tx;
mod committer;
mod erasure;
mod events;
mod indexer;
pub mod keyring;
mod ledger;
pub mod log;
mod maintenance;
mod open;
mod preparer;
mod progress;
mod queries;
mod readers;
mod recovery;
#[cfg(test)]
mod tests;
mod trees;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::*;
use crate::crypto::{Keys, SegmentCipher};

pub use backup::restore;
pub(crate) use cache_tx::cache_time_key;
use committer::{AppendReq, Cmd, Committer};
pub(crate) use events::{apply_new, subject_key};
use keyring::{Keyring, KeyringError};
use progress::Progress;
pub(crate) use readers::Readers;
use recovery::{checkpoint, drop_replaced, recover, sync_sled_files};
pub use trees::SegmentInfo;
pub(crate) use trees::Trees;

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e.to_string())
    }
}

impl From<KeyringError> for StoreError {
    fn from(e: KeyringError) -> Self {
        StoreError::Keyring(e.to_string())
    }
}

impl From<log::LogError> for StoreError {
    fn from(e: log::LogError) -> Self {
        StoreError::Log(e.to_string())
    }
}

const NEXT_SEQ: &[u8] = b"next_seq";
const CHECKPOINT: &[u8] = b"checkpoint";
const SCHEMA: &[u8] = b"schema";
const SCHEMA_VERSION: u8 = 1;
/// Set once the `failed` tree indexes every failed event (stores made
/// before it existed are indexed when first opened).
const FAILED_INDEXED: &[u8] = b"failed_indexed";
/// How often the index is made durable (sled flush + fsync). Longer means
/// fewer disk flushes competing with intake fsyncs, and a longer tail of the
/// log to re-apply after a crash.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// State shared by the store handle, the committer and the checkpointer.
pub(crate) struct Shared {
    keyring: Keyring,
    readers: Readers,
    next_seq: AtomicU64,
    /// How far the log is safely in sled (see [`progress`]).
    progress: Mutex<Progress>,
    /// The last intake write failed (readiness reports it).
    write_failed: AtomicBool,
    /// Set while no intake log segment can be made (a full disk, say), so
    /// nothing can be stored; cleared when one is made.
    prepare_failed: AtomicBool,
    /// Set while writes to the index or its checkpoint fail; cleared by the
    /// next checkpoint that succeeds.
    index_failed: AtomicBool,
    /// Set while the disk has less than `[store] min_free_bytes` left
    /// (see `committer::check_space`), and when it was last looked at.
    low_space: AtomicBool,
    space_checked_ms: AtomicI64,
    closed: AtomicBool,
    /// Keys being written: a duplicate waits on the claim instead of
    /// being stored again.
    inflight: Mutex<HashMap<String, watch::Receiver<bool>>>,
    pub fsyncs: AtomicU64,
    pub fsync_us: AtomicU64,
    /// Durable batches the committer has handed to the indexer, and those
    /// the indexer has applied: a shred pass waits until the second has
    /// caught up with the first (a record acknowledged but not indexed yet
    /// must not look erased to it).
    batches_sent: AtomicU64,
    batches_indexed: AtomicU64,
}

impl Shared {
    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends a key's in-flight claim and wakes whoever waits on it.
    fn release(&self, key: &str, claim: &watch::Sender<bool>) {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        let _ = claim.send(true);
    }

    fn metrics_fsync(&self, d: Duration) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// The embedded backend: a cheap, clonable handle.
#[derive(Clone)]
pub struct Embedded {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    log_dir: PathBuf,
    trees: Trees,
    shared: Arc<Shared>,
    keys: Keys,
    cmd_tx: Sender<Cmd>,
    work_tx: Sender<Work>,
    work_rx: Receiver<Work>,
    audit_lock: Mutex<()>,
    /// One segment rewrite at a time (background pass and operator erasure).
    shred_lock: Mutex<()>,
    shred_bytes_per_second: u64,
    /// When the shred queue last went from empty to not, and when a
    /// segment was last queued (ms; 0: the queue is empty).
    shred_first_ms: AtomicI64,
    shred_last_ms: AtomicI64,
    /// Held while erasure forgets events and while a rewrite points events
    /// at their new segment, so every erased record's segment is queued.
    loc_lock: Mutex<()>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    stop_checkpoint: Sender<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.shared.closed.load(Ordering::SeqCst) {
            let _ = close_inner(self);
        }
    }
}

fn close_inner(inner: &Inner) -> Result<(), StoreError> {
    if inner.shared.closed.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    if inner.cmd_tx.send(Cmd::Stop(tx)).is_ok() {
        let _ = rx.recv();
    }
    let _ = inner.stop_checkpoint.send(());
    for t in inner.threads.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
        let _ = t.join();
    }
    let done = checkpoint(&inner.trees, &inner.shared, &inner.dir);
    open::LAST_CLOSE_MS.store(crate::timefmt::now_ms(), Ordering::Relaxed);
    done
}

/// Fresh work carries its body in memory only while the queue is shorter
/// than this; beyond it the workers read bodies back from the log, so a
/// backlog costs disk, not memory.
const FRESH_QUEUE_LIMIT: usize = 4096;

impl Embedded {
    /// Stops the committer after what is queued, and checkpoints the index.
    /// Blocking: call from a blocking context.
    pub fn close(&self) -> Result<(), StoreError> {
        close_inner(&self.inner)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Why the store does not take writes now, if it does not: after a
    /// failed intake write (until one succeeds), while no log segment can be
    /// made, while the disk is below `[store] min_free_bytes`, and while the
    /// index cannot be written or checkpointed.
    pub fn not_writable(&self) -> Option<&'static str> {
        let s = &self.inner.shared;
        [
            (&s.closed, "the store is closed"),
            (&s.write_failed, "the last intake log write failed"),
            (&s.prepare_failed, "no intake log segment can be made"),
            (&s.low_space, "the disk is below [store] min_free_bytes"),
            (&s.index_failed, "the index cannot be written"),
        ]
        .into_iter()
        .find(|(flag, _)| flag.load(Ordering::Relaxed))
        .map(|(_, why)| why)
    }

    /// Durable fsyncs of the intake log, and their total time in µs.
    pub fn fsync_stats(&self) -> (u64, u64) {
        (
            self.inner.shared.fsyncs.load(Ordering::Relaxed),
            self.inner.shared.fsync_us.load(Ordering::Relaxed),
        )
    }

    /// The queue workers take events from.
    pub fn work_queue(&self) -> Receiver<Work> {
        self.inner.work_rx.clone()
    }

    /// Puts an event key (back) on the work queue.
    pub fn enqueue(&self, key: String) {
        let _ = self.inner.work_tx.send(Work {
            key,
            fresh: None,
            queued_ms: crate::timefmt::now_ms(),
        });
    }

    /// Stores a new event durably unless its key is known; a duplicate only
    /// has its delivery count raised. Resolves once the answer is safe to
    /// give: for a new event, after its record is on stable media; for a
    /// duplicate of an event still being written, after that write.
    pub async fn append_if_absent(&self, meta: EventMeta, body: Bytes) -> Result<Appended, StoreError> {
        enum Role {
            Known,
            Wait(watch::Receiver<bool>),
            Win(watch::Sender<bool>),
        }
        let key = meta.key.clone();
        loop {
            let role = {
                let mut inflight = self.inner.shared.inflight.lock().unwrap_or_else(|p| p.into_inner());
                if self.is_known(&key)? {
                    Role::Known
                } else if let Some(rx) = inflight.get(&key) {
                    Role::Wait(rx.clone())
                } else {
                    let (tx, rx) = watch::channel(false);
                    inflight.insert(key.clone(), rx);
                    Role::Win(tx)
                }
            };
            match role {
                Role::Known => {
                    self.note_duplicate(&key, meta.received_ms)?;
                    return Ok(Appended::Duplicate);
                }
                // A concurrent copy is being written: answer only once it is
                // durable (then it is Known), or take over if it failed.
                Role::Wait(mut rx) => {
                    if rx.wait_for(|done| *done).await.is_err() {
                        // The claim's holder vanished without releasing it
                        // (a request dropped at shutdown): clear it so the
                        // next round can take the claim.
                        let mut inflight = self.inner.shared.inflight.lock().unwrap_or_else(|p| p.into_inner());
                        if inflight.get(&key).is_some_and(|r| r.same_channel(&rx)) {
                            inflight.remove(&key);
                        }
                    }
                }
                // The committer (or, on failure, whoever fails it) releases
                // the claim, so a client that hangs up cannot strand it.
                Role::Win(claim) => return self.submit(meta, body, claim).await.map(|_| Appended::Stored),
            }
        }
    }

    async fn submit(&self, meta: EventMeta, body: Bytes, claim: watch::Sender<bool>) -> Result<(), StoreError> {
        let shared = &self.inner.shared;
        if shared.closed.load(Ordering::SeqCst) {
            shared.release(&meta.key, &claim);
            return Err(StoreError::Closed);
        }
        let (reply, rx) = oneshot::channel();
        let req = Box::new(AppendReq {
            meta,
            body,
            reply,
            claim,
        });
        if let Err(crossbeam_channel::SendError(Cmd::Append(req))) = self.inner.cmd_tx.send(Cmd::Append(req)) {
            shared.release(&req.meta.key, &req.claim);
            return Err(StoreError::Closed);
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Bytes an unprivileged writer may still use on the log's file system.
    pub fn free_space(&self) -> Option<u64> {
        log::free_space(&self.inner.log_dir).ok()
    }

    /// Bytes on disk under the data dir.
    pub fn size_on_disk(&self) -> u64 {
        dir_size(&self.inner.dir)
    }

    /// Closes the open intake segment so it can expire as a whole.
    /// Blocking.
    pub(crate) fn roll_segment_blocking(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner.cmd_tx.send(Cmd::Roll(tx)).map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)
    }
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
