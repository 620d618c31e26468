//! The segment preparer thread, and the free-space check that guards it and
//! the committer: segments are made whole, ahead of need, so a full disk is
//! met before anything is acknowledged.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::crypto::SegmentCipher;
use crate::timefmt::now_ms;

use super::log::create_segment;
use super::{Shared, StoreError, Trees};

/// A segment made ahead of need: numbered, keyed, zero-filled to its full
/// size (see `log::create_segment`).
pub(super) struct Prepared {
    pub seq: u64,
    pub file: File,
    pub cipher: Arc<SegmentCipher>,
}

/// How large segments are, and how much of the disk to leave free.
#[derive(Debug, Clone, Copy)]
pub(super) struct Space {
    pub size: u64,
    pub min_free: u64,
}

/// Makes the next segment, unless that would leave less than
/// `space.min_free` on the disk: checked before anything is written (the
/// next sequence number goes to sled, which must not meet a full disk).
pub(super) fn prepare_segment(
    trees: &Trees,
    shared: &Shared,
    log_dir: &Path,
    space: Space,
) -> Result<Prepared, StoreError> {
    let free = super::log::free_space(log_dir).map_err(StoreError::from)?;
    if free < space.size.saturating_add(space.min_free) {
        return Err(StoreError::Unavailable(format!(
            "the disk is nearly full: {free} bytes free, a new intake log segment needs {} and {} are kept free \
             for the index ([store] min_free_bytes)",
            space.size, space.min_free
        )));
    }
    let size = space.size;
    let seq = shared.next_seq.fetch_add(1, Ordering::SeqCst);
    trees
        .state
        .insert(super::NEXT_SEQ, &(seq + 1).to_be_bytes())
        .map_err(StoreError::from)?;
    let cipher = Arc::new(shared.keyring.create(seq)?);
    let made = create_segment(log_dir, seq, now_ms(), size)
        .map_err(StoreError::from)
        .and_then(|file| {
            shared.readers.register(seq, log_dir, cipher.clone())?;
            Ok(file)
        });
    match made {
        Ok(file) => Ok(Prepared { seq, file, cipher }),
        Err(e) => {
            let _ = shared.keyring.destroy(seq);
            Err(e)
        }
    }
}

/// The segment preparer thread: keeps the next segment ready, so that the
/// committer never waits for the zeros to be written. When it cannot make
/// one (a full disk, say) it says so once, flags the store as not taking
/// writes (the committer then answers `503` at once, `/readyz` too) and
/// retries on its own, so intake resumes as soon as there is room, with no
/// request needed to notice. It hands over only segments it made. Exits
/// when the store closes, deleting the segment it held.
pub(super) fn prepare_ahead(trees: Trees, shared: Arc<Shared>, log_dir: PathBuf, space: Space, tx: Sender<Prepared>) {
    loop {
        let p = match prepare_segment(&trees, &shared, &log_dir, space) {
            Ok(p) => p,
            Err(e) => {
                if !shared.prepare_failed.swap(true, Ordering::SeqCst) {
                    tracing::error!(error = %e, "Cannot prepare the next intake log segment: webhooks are answered 503 until it can be made. Retrying.");
                }
                if shared.closed.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(PREPARE_RETRY);
                continue;
            }
        };
        if shared.prepare_failed.swap(false, Ordering::SeqCst) {
            tracing::info!(
                segment = p.seq,
                "Intake log segments can be made again; taking webhooks."
            );
        }
        if let Err(crossbeam_channel::SendError(p)) = tx.send(p) {
            shared.readers.forget(p.seq);
            let _ = std::fs::remove_file(super::log::segment_path(&log_dir, p.seq));
            let _ = shared.keyring.destroy(p.seq);
            return;
        }
    }
}

/// How often a failed segment preparation is tried again.
pub(super) const PREPARE_RETRY: Duration = Duration::from_millis(100);
/// How often the committer looks at the disk's free space (at most).
pub(super) const SPACE_CHECK_MS: i64 = 50;

/// Whether the disk has less than `min_free` left, checked against the
/// filesystem and kept in the store's flag (logged when it changes). Not
/// only at segment preparation: sled's index grows while records fill the
/// space prepared earlier (≈ 3 KB per event, some 40 MB per 64 MiB
/// segment), and it must never meet a full disk. If the filesystem cannot
/// say, the answer is no.
pub(super) fn check_space(shared: &Shared, log_dir: &Path, min_free: u64) -> bool {
    let low = super::log::free_space(log_dir).is_ok_and(|free| free < min_free);
    shared.space_checked_ms.store(now_ms(), Ordering::Relaxed);
    if shared.low_space.swap(low, Ordering::SeqCst) != low {
        if low {
            tracing::error!(
                min_free,
                "The disk is nearly full: webhooks are answered 503 until there is room again ([store] min_free_bytes)."
            );
        } else {
            tracing::info!("There is room on the disk again; taking webhooks.");
        }
    }
    low
}
