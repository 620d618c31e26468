//! Opening a store: the index, the one-time upgrades of an older one,
//! recovery from the log, and the threads that run beside the handle.

use super::*;

impl Embedded {
    /// Opens (or creates) the store in `dir`, recovers the index from the
    /// intake log, and starts the committer, indexer, checkpointer and
    /// segment-preparer threads.
    pub fn open(dir: &Path, keys: Keys, settings: &StoreSettings) -> Result<(Embedded, Recovery), StoreError> {
        let log_dir = dir.join("log");
        crate::fsutil::private_dir_all(&log_dir)?;
        // Made here so that it is owner-only too (sled would make it 0755).
        crate::fsutil::private_dir_all(&dir.join("index"))?;
        let db = open_index(dir)?;
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
            crate::store::ledger::append_lines(dir, &[])?;
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
            batches_sent: AtomicU64::new(0),
            batches_indexed: AtomicU64::new(0),
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
        let space = preparer::Space {
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
                    .spawn(move || preparer::prepare_ahead(trees, shared, log_dir, space, spare_tx))?,
            );
        }
        {
            let (trees, shared, work_tx) = (trees.clone(), shared.clone(), work_tx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("intake-indexer".into())
                    .spawn(move || indexer::index(trees, shared, index_rx, work_tx))?,
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
                            preparer::check_space(&shared, &log_dir, space.min_free);
                        }
                    })?,
            );
        }
        // Segments left queued by the last run wait as if queued now.
        let queued_at = if trees.shred.is_empty() {
            0
        } else {
            crate::timefmt::now_ms()
        };
        let store = Embedded {
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
                shred_bytes_per_second: settings.shred_bytes_per_second,
                shred_first_ms: AtomicI64::new(queued_at),
                shred_last_ms: AtomicI64::new(queued_at),
                loc_lock: Mutex::new(()),
                threads: Mutex::new(threads),
                stop_checkpoint: stop_tx,
            }),
        };
        store.note_ledger_tail()?;
        let mut pending = 0;
        for key in store.queued_keys()? {
            store.enqueue(key);
            pending += 1;
        }
        Ok((store, Recovery { pending, ..recovery }))
    }
}

/// When this process last closed a store (unix ms; 0: never).
pub(super) static LAST_CLOSE_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
/// How long an open retries a lock this process may still hold: sled
/// releases its file lock only once its own I/O threads let go of the
/// database, a moment after the last handle is dropped.
const RELOCK_WAIT: Duration = Duration::from_secs(3);

/// Opens the sled index, locked for this process. A lock still held by a
/// store this process closed within [`RELOCK_WAIT`] is waited for; any
/// other holder (a running server) is reported at once.
fn open_index(dir: &Path) -> Result<sled::Db, StoreError> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(dir.join("index"))
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open();
        match opened {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(ref io))
                if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
            {
                let closed_here = crate::timefmt::now_ms() - LAST_CLOSE_MS.load(Ordering::Relaxed);
                if closed_here > RELOCK_WAIT.as_millis() as i64 || started.elapsed() > RELOCK_WAIT {
                    return Err(StoreError::Locked(dir.display().to_string()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(other) => return Err(StoreError::from(other)),
        }
    }
}
