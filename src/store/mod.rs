//! STORE: the only code that knows sled or the intake log's files.
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
//! - `keyring.bin`: the per-segment keys (see [`keyring`]).
//!
//! Dedup: the first request for a key wins an in-memory claim; a concurrent
//! duplicate waits until the winner's record is durable before it is
//! answered, so no id is acknowledged twice before it is on disk.

mod backup;
mod cache_ops;
mod codec;
mod committer;
mod erasure;
mod filter;
pub mod event;
pub mod keyring;
mod ledger;
pub mod log;
mod maintenance;
mod progress;
mod settings;

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

use crate::crypto::{Keys, SegmentCipher};

pub use backup::restore;
pub(crate) use cache_ops::{cache_time_key, split_cache_time_key};
pub use cache_ops::{CacheKind, CacheTx, TxError, TxResult};
use committer::{AppendReq, Cmd, Committer};
pub use filter::{EventFilter, Glob};
pub use settings::StoreSettings;
pub use event::{time_key, Attempt, EventMeta, Location, Status};
use keyring::{Keyring, KeyringError};
pub use ledger::{merge as merge_ledger, LedgerEntry, LEDGER_FILE};
use progress::Progress;

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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at {0} is in use by another process (is `serve` running?)")]
    Locked(String),
    #[error("store i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("index: {0}")]
    Sled(String),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Log(#[from] log::LogError),
    #[error("the store cannot take writes: {0}")]
    Unavailable(String),
    #[error("the store is closed")]
    Closed,
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// A handler refused an event (the message holds no personal data).
    #[error("{0}")]
    Rejected(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e.to_string())
    }
}

/// sled trees, one per kind of record.
#[derive(Clone)]
pub(crate) struct Trees {
    pub db: sled::Db,
    /// event key → [`EventMeta`]
    pub events: sled::Tree,
    /// time key (received) → () : arrival order, listing, expiry
    pub by_time: sled::Tree,
    /// time key (received) → () : events waiting for a worker
    pub pending: sled::Tree,
    /// event key → () : events whose handler gave up (status `failed`),
    /// so counting them does not read every event. Written before the
    /// event becomes failed and removed after it stops being so: an entry
    /// may outlive its status after a crash, never the other way round.
    pub failed: sled::Tree,
    /// event key → received ms (big-endian): dedup markers left after purge
    pub markers: sled::Tree,
    /// time key (received) → () : marker expiry
    pub markers_by_time: sled::Tree,
    /// segment number (big-endian) → [`SegmentInfo`]
    pub segments: sled::Tree,
    /// cache trees: id → encoded record; `cache_time`: time key → kind+id
    pub contacts: sled::Tree,
    pub conversations: sled::Tree,
    pub tombstones: sled::Tree,
    pub cache_time: sled::Tree,
    /// email hash + contact id → () : find contacts by email without the email
    pub email_index: sled::Tree,
    /// subject key + 0 + event key → () : the events that concern a person
    /// (subject keys: contact ids, keyed hashes of emails and external ids)
    pub subjects: sled::Tree,
    /// segment number (big-endian) → () : segments holding erased records,
    /// waiting to be rewritten without them (see `erasure.rs`)
    pub shred: sled::Tree,
    /// segment number (big-endian) → segment number (big-endian): a
    /// segment a shred pass replaced, and the one that holds its surviving
    /// records now, at the same offsets (index entries are not rewritten)
    pub moved: sled::Tree,
    /// sequence (big-endian) → audit entry
    pub audit: sled::Tree,
    pub state: sled::Tree,
}

impl Trees {
    fn open(db: sled::Db) -> Result<Self, StoreError> {
        Ok(Trees {
            events: db.open_tree("events")?,
            by_time: db.open_tree("by_time")?,
            pending: db.open_tree("pending")?,
            failed: db.open_tree("failed")?,
            markers: db.open_tree("markers")?,
            markers_by_time: db.open_tree("markers_by_time")?,
            segments: db.open_tree("segments")?,
            contacts: db.open_tree("contacts")?,
            conversations: db.open_tree("conversations")?,
            tombstones: db.open_tree("tombstones")?,
            cache_time: db.open_tree("cache_time")?,
            email_index: db.open_tree("email_index")?,
            subjects: db.open_tree("subjects")?,
            shred: db.open_tree("shred")?,
            moved: db.open_tree("moved")?,
            audit: db.open_tree("audit")?,
            state: db.open_tree("state")?,
            db,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentInfo {
    pub first_ms: i64,
    pub last_ms: i64,
    pub records: u64,
    pub bytes: u64,
    pub closed: bool,
}

impl SegmentInfo {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serialising plain data cannot fail")
    }
    fn decode(b: &[u8]) -> Option<Self> {
        serde_json::from_slice(b).ok()
    }
}

/// An open segment file and its key.
type Reader = Arc<(File, Arc<SegmentCipher>)>;

/// Open segment files and their keys, for reading payloads back, and
/// where the records of segments a shred pass replaced are now.
pub(crate) struct Readers {
    map: Mutex<HashMap<u64, Reader>>,
    /// The `moved` tree, in memory.
    moved: std::sync::RwLock<HashMap<u64, u64>>,
}

fn be_u64(b: &[u8]) -> Option<u64> {
    b.try_into().ok().map(u64::from_be_bytes)
}

impl Readers {
    fn new(moved: &sled::Tree) -> Result<Self, StoreError> {
        let mut map = HashMap::new();
        for kv in moved.iter() {
            let (k, v) = kv?;
            if let (Some(k), Some(v)) = (be_u64(&k), be_u64(&v)) {
                map.insert(k, v);
            }
        }
        Ok(Readers {
            map: Mutex::new(HashMap::new()),
            moved: std::sync::RwLock::new(map),
        })
    }

    /// The segment that holds the records written to segment `seq`
    /// (itself, unless a shred pass replaced it).
    pub(crate) fn resolve(&self, mut seq: u64) -> u64 {
        let moved = self.moved.read().unwrap_or_else(|p| p.into_inner());
        // A chain is kept short (see `set_moved`), and never has a cycle:
        // a replacement is always a newer segment.
        while let Some(&next) = moved.get(&seq) {
            seq = next;
        }
        seq
    }

    /// Records that segment `from`'s records are in `to` now, for it and
    /// for every segment that led to it.
    pub(crate) fn set_moved(&self, tree: &sled::Tree, from: u64, to: u64) -> Result<(), StoreError> {
        let mut moved = self.moved.write().unwrap_or_else(|p| p.into_inner());
        let leading: Vec<u64> = moved.iter().filter(|(_, &t)| t == from).map(|(&k, _)| k).collect();
        for k in leading.into_iter().chain([from]) {
            tree.insert(k.to_be_bytes(), &to.to_be_bytes())?;
            moved.insert(k, to);
        }
        Ok(())
    }

    /// Forgets the replacements that lead to `seq` (which is being dropped).
    pub(crate) fn forget_moved_to(&self, tree: &sled::Tree, seq: u64) -> Result<(), StoreError> {
        let mut moved = self.moved.write().unwrap_or_else(|p| p.into_inner());
        let leading: Vec<u64> = moved.iter().filter(|(_, &t)| t == seq).map(|(&k, _)| k).collect();
        for k in leading {
            tree.remove(k.to_be_bytes())?;
            moved.remove(&k);
        }
        Ok(())
    }

    fn register(&self, seq: u64, dir: &Path, cipher: Arc<SegmentCipher>) -> Result<(), StoreError> {
        let file = File::open(log::segment_path(dir, seq))?;
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq, Arc::new((file, cipher)));
        Ok(())
    }

    fn forget(&self, seq: u64) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&seq);
    }

    fn get(&self, seq: u64) -> Option<Reader> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).get(&seq).cloned()
    }
}

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

/// What became of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored,
    Duplicate,
}

/// What `open` found and repaired.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Recovery {
    pub segments: usize,
    pub reapplied: u64,
    pub torn_bytes: u64,
    pub pending: u64,
}

/// A cheap, clonable handle to the store.
#[derive(Clone)]
pub struct Store {
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
    checkpoint(&inner.trees, &inner.shared, &inner.dir)
}

/// Makes sled's state durable (flush, then fsync its file, which sled's
/// flush does not do), then records how far the log is indexed.
fn checkpoint(trees: &Trees, shared: &Shared, dir: &Path) -> Result<(), StoreError> {
    let applied = shared.progress().safe_position();
    trees.db.flush()?;
    sync_sled_files(dir)?;
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&applied.0.to_be_bytes());
    v[8..].copy_from_slice(&applied.1.to_be_bytes());
    trees.state.insert(CHECKPOINT, &v)?;
    trees.db.flush()?;
    sync_sled_files(dir)?;
    Ok(())
}

fn sync_sled_files(dir: &Path) -> std::io::Result<()> {
    let index = dir.join("index");
    File::open(index.join("db"))?.sync_data()?;
    if let Ok(entries) = std::fs::read_dir(index.join("blobs")) {
        for e in entries.flatten() {
            File::open(e.path())?.sync_data()?;
        }
    }
    Ok(())
}

/// Indexes a newly appended event unless its key is already known (a record
/// re-applied on recovery, or a second copy after a failed first). Returns
/// the snapshot written if it was new. The index entries of a known event
/// are written again too: sled may have kept the event but lost its index
/// entries in a crash, and both inserts are idempotent. `fresh`: a queued
/// new event goes straight to a worker and gets no `pending` entry (see
/// [`progress`]).
pub(crate) fn apply_new(trees: &Trees, meta: &EventMeta, fresh: bool) -> Result<Option<Snapshot>, StoreError> {
    if trees.markers.contains_key(meta.key.as_bytes())? {
        return Ok(None);
    }
    let raw = sled::IVec::from(meta.encode());
    let existing = match trees
        .events
        .compare_and_swap(meta.key.as_bytes(), None as Option<&[u8]>, Some(raw.clone()))?
    {
        Ok(()) => None,
        Err(current) => match current.current.as_deref().and_then(EventMeta::decode) {
            Some(existing) => Some(existing),
            None => return Ok(None),
        },
    };
    let indexed = existing.as_ref().unwrap_or(meta);
    let tk = time_key(indexed.received_ms, &indexed.key);
    trees.by_time.insert(&tk, &[])?;
    let pending_entry = indexed.status.is_queued() && !(fresh && existing.is_none());
    if pending_entry {
        trees.pending.insert(&tk, &[])?;
    }
    for c in &indexed.subjects {
        trees.subjects.insert(subject_key(c, &indexed.key), &[])?;
    }
    Ok(existing.is_none().then(|| Snapshot {
        meta: meta.clone(),
        raw,
        pending_entry,
    }))
}

pub(crate) fn subject_key(contact_id: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(contact_id.len() + 1 + key.len());
    k.extend_from_slice(contact_id.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The outcome a worker records for an event.
#[derive(Debug, Clone)]
pub struct Completion {
    pub status: Status,
    pub attempt: Attempt,
    pub retry_at_ms: Option<i64>,
}

impl Completion {
    fn apply(&self, m: &mut EventMeta) {
        m.status = self.status;
        m.retry_at_ms = self.retry_at_ms;
        m.last_error = self.attempt.error.clone();
        m.attempts = if self.status.is_queued() || self.status == Status::Failed {
            m.attempts + 1
        } else {
            0
        };
        m.push_history(self.attempt.clone());
    }
}

/// An event's metadata and the exact bytes it was read from (or written
/// as), so that recording an outcome can be one compare-and-swap.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub meta: EventMeta,
    raw: sled::IVec,
    /// Whether the event has its entry in the `pending` tree (a fresh one
    /// does not; see [`progress`]).
    pending_entry: bool,
}

/// An event for the workers. Straight from intake it comes with its
/// metadata as indexed and its body, which spares the worker a read of the
/// index and of the log; otherwise (start-up, replay, retry) only its key.
pub struct Work {
    pub key: String,
    pub fresh: Option<Box<Fresh>>,
    /// When it was put on the queue (unix ms).
    pub queued_ms: i64,
}

pub struct Fresh {
    pub seen: Snapshot,
    pub body: Bytes,
    /// Report to [`Store::fresh_finished`] once the outcome is recorded.
    pub batch: u64,
}

/// Fresh work carries its body in memory only while the queue is shorter
/// than this; beyond it the workers read bodies back from the log, so a
/// backlog costs disk, not memory.
const FRESH_QUEUE_LIMIT: usize = 4096;

/// Events by status, by topic, and duplicate deliveries seen.
pub type Counts = (HashMap<Status, u64>, HashMap<String, u64>, u64);

impl Store {
    /// Opens (or creates) the store in `dir`, recovers the index from the
    /// intake log, and starts the committer, indexer, checkpointer and
    /// segment-preparer threads.
    pub fn open(dir: &Path, keys: Keys, settings: &StoreSettings) -> Result<(Store, Recovery), StoreError> {
        let log_dir = dir.join("log");
        crate::fsutil::private_dir_all(&log_dir)?;
        // Made here so that it is owner-only too (sled would make it 0755).
        crate::fsutil::private_dir_all(&dir.join("index"))?;
        let db = sled::Config::new()
            .path(dir.join("index"))
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io)
                    if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
                {
                    StoreError::Locked(dir.display().to_string())
                }
                other => StoreError::from(other),
            })?;
        let trees = Trees::open(db)?;
        match trees.state.get(SCHEMA)? {
            None => {
                trees.state.insert(SCHEMA, &[SCHEMA_VERSION])?;
            }
            Some(v) if v.as_ref() == [SCHEMA_VERSION] => {}
            Some(v) => {
                return Err(StoreError::Corrupt(format!(
                    "index schema version {:?} is not {SCHEMA_VERSION}; this build cannot read it",
                    v.as_ref()
                )))
            }
        }
        if trees.state.get(FAILED_INDEXED)?.is_none() {
            for kv in trees.events.iter() {
                let (k, v) = kv?;
                if EventMeta::decode(&v).is_some_and(|m| m.status == Status::Failed) {
                    trees.failed.insert(k, &[])?;
                }
            }
            trees.state.insert(FAILED_INDEXED, &[1])?;
        }
        // Backups staged here by older releases (a crash mid-backup left a
        // full copy, keys included): never needed, always removed.
        for e in std::fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("backup-") && name.ends_with(".tmp") {
                std::fs::remove_file(e.path())?;
                tracing::warn!(file = %name, "Removed a backup left in the data dir by an interrupted backup.");
            }
        }
        // The ledger always exists, so `restore --ledger <this dir's>` works
        // for a store that has had no erasure yet.
        if !dir.join(LEDGER_FILE).exists() {
            ledger::append_lines(dir, &[])?;
            crate::fsutil::private_append(&dir.join(LEDGER_FILE))?;
        }
        let keyring = Keyring::open(dir, keys.wrap)?;
        let segs = log::list_segments(&log_dir)?;
        let stored_next = trees
            .state
            .get(NEXT_SEQ)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(1);
        let next_seq = stored_next.max(segs.last().map_or(1, |s| s + 1));
        let shared = Arc::new(Shared {
            keyring,
            readers: Readers::new(&trees.moved)?,
            next_seq: AtomicU64::new(next_seq),
            progress: Mutex::new(Progress::default()),
            write_failed: AtomicBool::new(false),
            prepare_failed: AtomicBool::new(false),
            index_failed: AtomicBool::new(false),
            low_space: AtomicBool::new(false),
            space_checked_ms: AtomicI64::new(0),
            closed: AtomicBool::new(false),
            inflight: Mutex::new(HashMap::new()),
            fsyncs: AtomicU64::new(0),
            fsync_us: AtomicU64::new(0),
        });
        let segs = drop_replaced(&trees, &shared, &log_dir, segs)?;
        let recovery = recover(&trees, &shared, &log_dir, &segs)?;
        *shared.progress() = Progress::new((next_seq, 0));
        checkpoint(&trees, &shared, dir)?;

        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (work_tx, work_rx) = crossbeam_channel::unbounded();
        let (index_tx, index_rx) = crossbeam_channel::bounded(64);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let (spare_tx, spare_rx) = crossbeam_channel::bounded(0);
        let space = committer::Space {
            size: settings.segment_max_bytes,
            min_free: settings.min_free_bytes,
        };
        let committer = Committer {
            log_dir: log_dir.clone(),
            trees: trees.clone(),
            shared: shared.clone(),
            rx: cmd_rx,
            index_tx,
            spare: spare_rx,
            space,
            max_age: settings.segment_max_age,
        };
        let mut threads = vec![std::thread::Builder::new()
            .name("intake-committer".into())
            .spawn(move || committer.run())?];
        {
            let (trees, shared, log_dir) = (trees.clone(), shared.clone(), log_dir.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("segment-preparer".into())
                    .spawn(move || committer::prepare_ahead(trees, shared, log_dir, space, spare_tx))?,
            );
        }
        {
            let (trees, shared, work_tx) = (trees.clone(), shared.clone(), work_tx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("intake-indexer".into())
                    .spawn(move || committer::index(trees, shared, index_rx, work_tx))?,
            );
        }
        {
            let (trees, shared, dir, log_dir) = (trees.clone(), shared.clone(), dir.to_path_buf(), log_dir.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("index-checkpoint".into())
                    .spawn(move || {
                        while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                            stop_rx.recv_timeout(CHECKPOINT_EVERY)
                        {
                            let failed = checkpoint(&trees, &shared, &dir).err();
                            if let Some(e) = &failed {
                                tracing::error!(error = %e, "Index checkpoint failed.");
                            }
                            shared.index_failed.store(failed.is_some(), Ordering::Relaxed);
                            // Also from here, so that readiness comes back
                            // with no webhook to notice the room.
                            committer::check_space(&shared, &log_dir, space.min_free);
                        }
                    })?,
            );
        }
        let store = Store {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                log_dir,
                trees,
                shared,
                keys,
                cmd_tx,
                work_tx,
                work_rx,
                audit_lock: Mutex::new(()),
                shred_lock: Mutex::new(()),
                loc_lock: Mutex::new(()),
                threads: Mutex::new(threads),
                stop_checkpoint: stop_tx,
            }),
        };
        let mut pending = 0;
        for key in store.queued_keys()? {
            store.enqueue(key);
            pending += 1;
        }
        Ok((store, Recovery { pending, ..recovery }))
    }

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

    pub fn is_writable(&self) -> bool {
        self.not_writable().is_none()
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

    /// Known as an event or as a dedup marker of a purged one.
    pub fn is_known(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.inner.trees.events.contains_key(key.as_bytes())?
            || self.inner.trees.markers.contains_key(key.as_bytes())?)
    }

    fn note_duplicate(&self, key: &str, now: i64) -> Result<(), StoreError> {
        self.update(key, |m| {
            m.delivery_count = m.delivery_count.saturating_add(1);
            m.last_delivery_ms = m.last_delivery_ms.max(now);
        })?;
        Ok(())
    }

    pub fn get(&self, key: &str) -> Result<Option<EventMeta>, StoreError> {
        Ok(self.snapshot(key)?.map(|s| s.meta))
    }

    /// An event's metadata with the bytes it was read from, for
    /// [`complete`](Self::complete).
    pub fn snapshot(&self, key: &str) -> Result<Option<Snapshot>, StoreError> {
        match self.inner.trees.events.get(key.as_bytes())? {
            Some(v) => EventMeta::decode(&v)
                .map(|meta| {
                    let pending_entry = meta.status.is_queued();
                    Some(Snapshot {
                        meta,
                        raw: v,
                        pending_entry,
                    })
                })
                .ok_or_else(|| StoreError::Corrupt(format!("event {key} has an unreadable record"))),
            None => Ok(None),
        }
    }

    /// Changes an event's metadata atomically (compare-and-swap, retried
    /// on a concurrent change); `None` if there is no such event.
    pub fn update(&self, key: &str, f: impl Fn(&mut EventMeta)) -> Result<Option<EventMeta>, StoreError> {
        let trees = &self.inner.trees;
        loop {
            let Some(old) = trees.events.get(key.as_bytes())? else {
                return Ok(None);
            };
            let mut m = EventMeta::decode(&old)
                .ok_or_else(|| StoreError::Corrupt(format!("event {key} has an unreadable record")))?;
            let (was_queued, was_failed) = (m.status.is_queued(), m.status == Status::Failed);
            f(&mut m);
            mark_failed(&trees.failed, &m, was_failed)?;
            if trees
                .events
                .compare_and_swap(key.as_bytes(), Some(&old), Some(m.encode()))?
                .is_ok()
            {
                sync_pending(&trees.pending, &m, was_queued)?;
                unmark_failed(&trees.failed, &m, was_failed)?;
                return Ok(Some(m));
            }
        }
    }

    /// The raw body of an event, decrypted; `None` once purged.
    pub fn read_body(&self, meta: &EventMeta) -> Result<Option<Bytes>, StoreError> {
        let Some(loc) = meta.loc else { return Ok(None) };
        let seg = self.inner.shared.readers.resolve(loc.seg);
        let reader = match self.inner.shared.readers.get(seg) {
            Some(r) => r,
            None => {
                let Some(cipher) = self.inner.shared.keyring.get(seg)? else {
                    return Ok(None);
                };
                let path = log::segment_path(&self.inner.log_dir, seg);
                if !path.exists() {
                    return Ok(None);
                }
                self.inner
                    .shared
                    .readers
                    .register(seg, &self.inner.log_dir, Arc::new(cipher))?;
                self.inner.shared.readers.get(seg).ok_or(StoreError::Closed)?
            }
        };
        let plain = log::read_record(&reader.0, &reader.1, seg, loc.off, loc.len)?;
        let (_, body) = log::split_plaintext(&plain)
            .ok_or_else(|| StoreError::Corrupt(format!("record of event {} is malformed", meta.key)))?;
        Ok(Some(Bytes::copy_from_slice(body)))
    }

    /// Records a worker's outcome for the event `seen` was read as: one
    /// compare-and-swap against those bytes, or, if the event changed since
    /// (a duplicate delivery counted meanwhile), a fresh read-modify-write.
    /// `None` if the event is gone (erased).
    pub fn complete(&self, seen: &Snapshot, completion: &Completion) -> Result<Option<EventMeta>, StoreError> {
        let trees = &self.inner.trees;
        let mut m = seen.meta.clone();
        completion.apply(&mut m);
        let key = m.key.as_bytes();
        let was_failed = seen.meta.status == Status::Failed;
        mark_failed(&trees.failed, &m, was_failed)?;
        if trees
            .events
            .compare_and_swap(key, Some(&seen.raw), Some(m.encode()))?
            .is_ok()
        {
            sync_pending(&trees.pending, &m, seen.pending_entry)?;
            unmark_failed(&trees.failed, &m, was_failed)?;
            return Ok(Some(m));
        }
        let updated = self.update(&seen.meta.key, |m| completion.apply(m))?;
        if let Some(m) = &updated {
            // `update` assumes a queued event has its entry; a fresh one had
            // none: make it exactly match the new status.
            sync_pending(&trees.pending, m, !m.status.is_queued())?;
        }
        Ok(updated)
    }

    /// A fresh event of `batch` has its outcome in sled (see `progress`).
    pub fn fresh_finished(&self, batch: u64) {
        self.inner.shared.progress().finished(batch);
    }

    /// Gives a fresh event whose outcome could not be recorded a `pending`
    /// entry, so that it is found again at the next start.
    pub fn keep_queued(&self, key: &str, received_ms: i64) -> Result<(), StoreError> {
        let tk = time_key(received_ms, key);
        self.inner.trees.pending.insert(tk, &[])?;
        Ok(())
    }

    /// Runs `f` over the cache (see [`CacheTx`]).
    pub fn cache_txn<T>(&self, f: impl Fn(&CacheTx<'_>) -> TxResult<T>) -> Result<T, StoreError> {
        cache_ops::run(&self.inner.trees, f)
    }

    /// Ids in the cache expiry index of class `tag` written before
    /// `before_ms`, oldest first, at most `limit`.
    pub(crate) fn cache_expired(
        &self,
        tag: &str,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let lower = cache_time_key(tag, 0, "");
        let upper = cache_time_key(tag, before_ms, "");
        let mut out = Vec::new();
        for kv in self.inner.trees.cache_time.range(lower..upper).take(limit) {
            let (k, _) = kv?;
            if let Some((ms, id)) = split_cache_time_key(tag, &k) {
                out.push((ms, id.to_string()));
            }
        }
        Ok(out)
    }

    /// Reads the cache outside a transaction.
    /// Replaces a cached record's bytes if it still exists, filed in the
    /// expiry index where it was (a re-encryption, not a new write).
    /// Returns whether it existed.
    pub fn cache_rewrite(&self, kind: CacheKind, id: &str, value: &[u8]) -> Result<bool, StoreError> {
        self.cache_txn(|tx| {
            let existed = tx.get(kind, id)?.is_some();
            if existed {
                tx.put(kind, id, value, None)?;
            }
            Ok(existed)
        })
    }

    pub fn cache_get(&self, kind: CacheKind, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tree = match kind {
            CacheKind::Contact => &self.inner.trees.contacts,
            CacheKind::Conversation => &self.inner.trees.conversations,
        };
        Ok(tree.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Removes every cached record (tombstones stay). Returns how many.
    pub fn cache_clear(&self) -> Result<u64, StoreError> {
        let t = &self.inner.trees;
        let n = (t.contacts.len() + t.conversations.len()) as u64;
        t.contacts.clear()?;
        t.conversations.clear()?;
        t.email_index.clear()?;
        // Only tombstone entries stay in the expiry index.
        for tag in [CacheKind::Contact.tag(), CacheKind::Conversation.tag()] {
            for kv in t.cache_time.scan_prefix(format!("{tag}/")) {
                t.cache_time.remove(kv?.0)?;
            }
        }
        Ok(n)
    }

    /// Keys of events waiting for a worker, oldest first.
    pub fn queued_keys(&self) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        for kv in self.inner.trees.pending.iter() {
            let (k, _) = kv?;
            if let Some((_, key)) = event::split_time_key(&k) {
                keys.push(key.to_string());
            }
        }
        Ok(keys)
    }

    /// Events whose handler gave up, counted from their index (cheap
    /// enough for every metrics scrape).
    pub fn failed_count(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.inner.trees.failed.iter() {
            let (k, _) = kv?;
            let v = self.inner.trees.events.get(&k)?;
            if v.and_then(|v| EventMeta::decode(&v))
                .is_some_and(|m| m.status == Status::Failed)
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Events waiting for a worker: those with a `pending` entry and fresh
    /// ones handed out without one.
    pub fn pending_depth(&self) -> usize {
        self.inner.trees.pending.len() + self.inner.shared.progress().unfinished()
    }

    /// Received time of the oldest queued event.
    pub fn oldest_pending_ms(&self) -> Result<Option<i64>, StoreError> {
        let entry = self
            .inner
            .trees
            .pending
            .first()?
            .and_then(|(k, _)| event::split_time_key(&k).map(|(ms, _)| ms));
        let fresh = self.inner.shared.progress().oldest_fresh_ms();
        Ok(entry.into_iter().chain(fresh).min())
    }

    /// Events matching `filter`, newest first, after the cursor `after` (a
    /// previous page's last `cursor`), at most `limit`.
    pub fn list(
        &self,
        filter: &EventFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<EventMeta>, Option<String>), StoreError> {
        let upper: Vec<u8> = match after {
            Some(c) => hex::decode(c).map_err(|_| StoreError::Corrupt("bad cursor".into()))?,
            None => match filter.until_ms {
                Some(u) => time_key(u.saturating_add(1), ""),
                None => vec![0xff; 9],
            },
        };
        let lower = time_key(filter.since_ms.unwrap_or(0), "");
        let mut out = Vec::new();
        let mut cursor = None;
        for kv in self.inner.trees.by_time.range(lower..upper).rev() {
            let (k, _) = kv?;
            let Some((_, key)) = event::split_time_key(&k) else {
                continue;
            };
            if let Some(m) = self.get(key)? {
                if filter.matches(&m) {
                    out.push(m);
                    if out.len() >= limit {
                        cursor = Some(hex::encode(&k));
                        break;
                    }
                }
            }
        }
        Ok((out, cursor))
    }

    /// Calls `f` for every event matching `filter`, oldest first.
    pub fn for_each(
        &self,
        filter: &EventFilter,
        mut f: impl FnMut(EventMeta) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let lower = time_key(filter.since_ms.unwrap_or(0), "");
        let upper = match filter.until_ms {
            Some(u) => time_key(u.saturating_add(1), ""),
            None => vec![0xff; 9],
        };
        for kv in self.inner.trees.by_time.range(lower..upper) {
            let (k, _) = kv?;
            let Some((_, key)) = event::split_time_key(&k) else {
                continue;
            };
            if let Some(m) = self.get(key)? {
                if filter.matches(&m) {
                    f(m)?;
                }
            }
        }
        Ok(())
    }

    /// Counts of events by status and by topic, and the duplicate
    /// deliveries they received.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        let mut by_status = HashMap::new();
        let mut by_topic = HashMap::new();
        let mut duplicates = 0u64;
        for kv in self.inner.trees.events.iter() {
            let (_, v) = kv?;
            if let Some(m) = EventMeta::decode(&v) {
                *by_status.entry(m.status).or_insert(0) += 1;
                *by_topic.entry(m.topic).or_insert(0) += 1;
                duplicates += u64::from(m.delivery_count.saturating_sub(1));
            }
        }
        Ok((by_status, by_topic, duplicates))
    }

    pub fn last_received_ms(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .inner
            .trees
            .by_time
            .last()?
            .and_then(|(k, _)| event::split_time_key(&k).map(|(ms, _)| ms)))
    }

    /// Bytes on disk under the data dir.
    pub fn size_on_disk(&self) -> u64 {
        dir_size(&self.inner.dir)
    }

    /// The same, from a thread that is not async (CLI, workers, admin
    /// handlers inside `spawn_blocking`).
    pub(crate) fn roll_segment_blocking(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner.cmd_tx.send(Cmd::Roll(tx)).map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)
    }

    /// Closes the open intake segment so it can expire as a whole.
    pub async fn roll_segment(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner.cmd_tx.send(Cmd::Roll(tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }
}

/// Before an event's new status is written: indexes it if it becomes failed.
fn mark_failed(failed: &sled::Tree, m: &EventMeta, was_failed: bool) -> Result<(), StoreError> {
    if m.status == Status::Failed && !was_failed {
        failed.insert(m.key.as_bytes(), &[])?;
    }
    Ok(())
}

/// After it is written: drops the entry if it stopped being failed.
fn unmark_failed(failed: &sled::Tree, m: &EventMeta, was_failed: bool) -> Result<(), StoreError> {
    if was_failed && m.status != Status::Failed {
        failed.remove(m.key.as_bytes())?;
    }
    Ok(())
}

/// Brings the event's `pending` entry in line with its status, given
/// whether it had one.
fn sync_pending(pending: &sled::Tree, m: &EventMeta, had_entry: bool) -> Result<(), StoreError> {
    let tk = time_key(m.received_ms, &m.key);
    match (had_entry, m.status.is_queued()) {
        (false, true) => {
            pending.insert(tk, &[])?;
        }
        (true, false) => {
            pending.remove(tk)?;
        }
        _ => {}
    }
    Ok(())
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

/// Re-applies log records past the checkpoint that sled does not know, and
/// cuts a torn tail off the newest segment.
/// What a shred pass stopped half-way leaves (see `erasure.rs`): a
/// segment it replaced but had not yet removed goes, key first; so does a
/// replacement it wrote but had not yet recorded (its records are indexed
/// in their source segment, which is still there and still queued).
/// Returns the segments that stay.
fn drop_replaced(trees: &Trees, shared: &Shared, log_dir: &Path, segs: Vec<u64>) -> Result<Vec<u64>, StoreError> {
    let mut kept = Vec::new();
    for seq in segs {
        let path = log::segment_path(log_dir, seq);
        let replaced = shared.readers.resolve(seq) != seq;
        let unrecorded = match log::rewritten_from(&path)? {
            Some(from) => shared.readers.resolve(from) != seq && log::segment_path(log_dir, from).exists(),
            None => false,
        };
        if replaced || unrecorded {
            shared.keyring.destroy(seq)?;
            std::fs::remove_file(&path)?;
            trees.segments.remove(seq.to_be_bytes())?;
            tracing::warn!(
                segment = seq,
                "Removed an intake log segment left by an interrupted shred pass."
            );
            continue;
        }
        kept.push(seq);
    }
    Ok(kept)
}

fn recover(trees: &Trees, shared: &Shared, log_dir: &Path, segs: &[u64]) -> Result<Recovery, StoreError> {
    let (cp_seg, cp_off) = trees
        .state
        .get(CHECKPOINT)?
        .filter(|v| v.len() == 16)
        .map(|v| {
            (
                u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8])),
                u64::from_be_bytes(v[8..].try_into().unwrap_or([0; 8])),
            )
        })
        .unwrap_or((0, 0));
    let mut rec = Recovery {
        segments: segs.len(),
        ..Recovery::default()
    };
    for (i, &seq) in segs.iter().enumerate() {
        if seq < cp_seg {
            continue;
        }
        let Some(cipher) = shared.keyring.get(seq)? else {
            // Its key was destroyed by purge; the file is left from an
            // interrupted purge and holds nothing readable.
            let _ = std::fs::remove_file(log::segment_path(log_dir, seq));
            continue;
        };
        let from = if seq == cp_seg { cp_off } else { 0 };
        let path = log::segment_path(log_dir, seq);
        let scan = log::scan(&path, &cipher, seq, from)?;
        let mut info = trees
            .segments
            .get(seq.to_be_bytes())?
            .and_then(|v| SegmentInfo::decode(&v))
            .unwrap_or(SegmentInfo {
                first_ms: i64::MAX,
                last_ms: 0,
                records: 0,
                bytes: 0,
                closed: true,
            });
        for r in &scan.records {
            if log::is_filler(&r.plain) {
                continue;
            }
            let Some((mut meta, _)) = log::split_plaintext(&r.plain) else {
                return Err(StoreError::Corrupt(format!(
                    "segment {seq} offset {} holds a malformed record",
                    r.off
                )));
            };
            meta.loc = Some(Location {
                seg: seq,
                off: r.off,
                len: r.len,
            });
            if apply_new(trees, &meta, false)?.is_some() {
                rec.reapplied += 1;
                info.records += 1;
            }
            info.first_ms = info.first_ms.min(meta.received_ms);
            info.last_ms = info.last_ms.max(meta.received_ms);
        }
        if scan.good_end < scan.file_len {
            let tail = scan.file_len - scan.good_end;
            // Prepared space after the last record, or a torn record in the
            // segment being written when the process stopped (no later one
            // holds a record): cut either off. Unreadable bytes in an older
            // segment are left for inspection.
            let newest = segs[i + 1..].iter().try_fold(true, |all, s| {
                Ok::<_, std::io::Error>(all && log::is_unused(&log::segment_path(log_dir, *s))?)
            })?;
            if scan.zero_tail || newest {
                if !scan.zero_tail {
                    tracing::warn!(
                        segment = seq,
                        torn_bytes = tail,
                        "Cut a torn record off the intake log (an interrupted write that was never acknowledged)."
                    );
                    rec.torn_bytes += tail;
                }
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(scan.good_end)?;
            } else {
                tracing::error!(
                    segment = seq,
                    bad_bytes = tail,
                    "Intake log segment has unreadable bytes before its end; they were skipped."
                );
            }
        }
        if info.first_ms == i64::MAX {
            info.first_ms = info.last_ms;
        }
        info.bytes = scan.good_end;
        info.closed = true;
        trees.segments.insert(seq.to_be_bytes(), info.encode())?;
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DataKey;

    fn open(dir: &Path) -> (Store, Recovery) {
        let key = DataKey::parse(&"5a".repeat(32)).unwrap();
        let settings = StoreSettings {
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age: Duration::from_secs(3600),
            min_free_bytes: 0,
        };
        Store::open(dir, Keys::derive(&key), &settings).unwrap()
    }

    fn meta(key: &str) -> EventMeta {
        let mut m = EventMeta::received(now(), 2, Vec::new());
        m.key = key.into();
        m.notification_id = Some(key.into());
        m.topic = "conversation.user.replied".into();
        m.item_type = Some("conversation".into());
        m.item_id = Some("1".into());
        m.created_at = Some(1);
        m
    }

    fn now() -> i64 {
        crate::timefmt::now_ms()
    }

    fn take_fresh(store: &Store, n: usize) -> Vec<Fresh> {
        (0..n)
            .map(|_| {
                let w = store.work_queue().recv_timeout(Duration::from_secs(5)).unwrap();
                *w.fresh.expect("handed out fresh")
            })
            .collect()
    }

    /// A fresh event has no `pending` entry: if the process stops before
    /// its outcome is recorded, the checkpoint must still lead recovery to
    /// queue it again, and once recorded it must not come back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fresh_events_are_queued_again_until_their_outcome_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        for i in 0..5 {
            let appended = store
                .append_if_absent(meta(&format!("k{i}")), Bytes::from_static(b"{}"))
                .await;
            assert!(matches!(appended, Ok(Appended::Stored)));
        }
        // A worker took them, then the process stopped (the checkpoint at
        // close stands for one taken at any moment in between).
        let taken = take_fresh(&store, 5);
        assert_eq!(store.pending_depth(), 5);
        store.close().unwrap();
        drop((store, taken));

        let (store, recovery) = open(dir.path());
        assert_eq!(recovery.pending, 5, "all five queued again");
        let keys: Vec<String> = (0..5)
            .map(|_| store.work_queue().recv_timeout(Duration::from_secs(5)).unwrap().key)
            .collect();
        assert_eq!(keys.len(), 5);
        // Now record outcomes, two of them for fresh events of a new batch.
        for k in &keys {
            let seen = store.snapshot(k).unwrap().unwrap();
            store.complete(&seen, &outcome(Status::Processed)).unwrap();
        }
        for i in 5..7 {
            store
                .append_if_absent(meta(&format!("k{i}")), Bytes::from_static(b"{}"))
                .await
                .unwrap();
        }
        let fresh = take_fresh(&store, 2);
        let retry = Completion {
            status: Status::Retrying,
            attempt: Attempt {
                at_ms: now(),
                outcome: "retrying".into(),
                error: Some("e".into()),
                duration_us: None,
            },
            retry_at_ms: Some(now() + 60_000),
        };
        for f in &fresh {
            // A retrying outcome must leave an entry to be found at start.
            store.complete(&f.seen, &retry).unwrap();
            store.fresh_finished(f.batch);
        }
        assert_eq!(store.pending_depth(), 2);
        store.close().unwrap();
        drop(store);

        let (store, recovery) = open(dir.path());
        assert_eq!(recovery.pending, 2, "only the two retrying");
        for i in 0..5 {
            assert_eq!(store.get(&format!("k{i}")).unwrap().unwrap().status, Status::Processed);
        }
        store.close().unwrap();
    }

    fn outcome(status: Status) -> Completion {
        Completion {
            status,
            attempt: Attempt {
                at_ms: now(),
                outcome: status.as_str().into(),
                error: None,
                duration_us: None,
            },
            retry_at_ms: None,
        }
    }

    /// The failed count (read at every metrics scrape) comes from its own
    /// index, which follows every way in and out of `failed`, and is
    /// rebuilt for a store that predates it.
    /// A shred pass writes the surviving records at their offsets into a
    /// new segment and leaves the index entries as they are: reads follow
    /// the replacement, across passes and a reopening, and what an
    /// interrupted pass leaves is removed at open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shredded_segments_are_replaced_and_reads_follow() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let body = |i: usize| Bytes::from(format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(100 * i)));
        for i in 0..6 {
            let appended = store.append_if_absent(meta(&format!("k{i}")), body(i)).await;
            assert!(matches!(appended, Ok(Appended::Stored)));
        }
        let first = store.get("k0").unwrap().unwrap().loc.unwrap().seg;
        let read = |store: &Store, i: usize| {
            let m = store.get(&format!("k{i}")).unwrap().expect("still indexed");
            assert_eq!(m.loc.unwrap().seg, first, "index entries are not rewritten");
            store.read_body(&m).unwrap().expect("readable")
        };
        tokio::task::block_in_place(|| {
            store.erase_events(&["k1".into(), "k4".into()], true).unwrap();
            assert_eq!(store.shred().unwrap(), 1);
            let once = store.inner.shared.readers.resolve(first);
            assert_ne!(once, first);
            assert!(
                store.inner.shared.keyring.get(first).unwrap().is_none(),
                "old key destroyed"
            );
            assert!(!log::segment_path(&store.inner.log_dir, first).exists());
            for i in [0, 2, 3, 5] {
                assert_eq!(read(&store, i), body(i));
            }
            // A second pass replaces the replacement (first and last records).
            store.erase_events(&["k0".into(), "k5".into()], true).unwrap();
            assert_eq!(store.shred().unwrap(), 1);
            let twice = store.inner.shared.readers.resolve(first);
            assert!(twice != once && twice != first);
            assert!(store.inner.shared.keyring.get(once).unwrap().is_none());
            assert_eq!(read(&store, 2), body(2));
            assert_eq!(read(&store, 3), body(3));
            store.close().unwrap();
        });
        drop(store);
        // A replacement written but never recorded (the process stopped in
        // between) holds copies: it goes at open, and nothing else does.
        let log_dir = dir.path().join("log");
        let replacement = log::list_segments(&log_dir)
            .unwrap()
            .into_iter()
            .find(|s| log::rewritten_from(&log::segment_path(&log_dir, *s)).unwrap().is_some())
            .unwrap();
        log::create_rewrite(&log_dir, 999, replacement, now()).unwrap();
        let (store, _) = open(dir.path());
        assert!(
            !log::segment_path(&log_dir, 999).exists(),
            "the unrecorded replacement is gone"
        );
        assert_eq!(read(&store, 2), body(2));
        assert_eq!(read(&store, 3), body(3));
        for gone in ["k0", "k1", "k4", "k5"] {
            assert!(store.get(gone).unwrap().is_none());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_events_are_counted_from_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        for i in 0..3 {
            store
                .append_if_absent(meta(&format!("f{i}")), Bytes::from_static(b"{}"))
                .await
                .unwrap();
        }
        let fresh = take_fresh(&store, 3);
        assert_eq!(store.failed_count().unwrap(), 0);
        store.complete(&fresh[0].seen, &outcome(Status::Failed)).unwrap();
        store.complete(&fresh[1].seen, &outcome(Status::Failed)).unwrap();
        store.complete(&fresh[2].seen, &outcome(Status::Processed)).unwrap();
        assert_eq!(store.failed_count().unwrap(), 2);
        // A replay takes one out of `failed`...
        store.update("f0", |m| m.status = Status::Pending).unwrap();
        assert_eq!(store.failed_count().unwrap(), 1);
        // ...and a purge the other, index entry included.
        let received = store.get("f1").unwrap().unwrap().received_ms;
        assert!(store.purge_event(received, "f1").unwrap());
        assert_eq!(store.failed_count().unwrap(), 0);
        assert!(store.inner.trees.failed.is_empty());
        let seen = store.snapshot("f0").unwrap().unwrap();
        store.complete(&seen, &outcome(Status::Failed)).unwrap();
        assert_eq!(store.failed_count().unwrap(), 1);
        // A store from before the index: rebuilt when opened.
        store.inner.trees.failed.clear().unwrap();
        store.inner.trees.state.remove(FAILED_INDEXED).unwrap();
        store.close().unwrap();
        drop(store);
        let (store, _) = open(dir.path());
        assert_eq!(store.failed_count().unwrap(), 1);
        store.close().unwrap();
    }
}
