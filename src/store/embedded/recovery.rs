//! Making the index durable (checkpoints) and bringing it up to date with
//! the intake log at open: what an interrupted shred pass left, records
//! past the checkpoint, a torn tail.

use super::*;

/// Makes sled's state durable (flush, then fsync its file, which sled's
/// flush does not do), then records how far the log is indexed.
pub(super) fn checkpoint(trees: &Trees, shared: &Shared, dir: &Path) -> Result<(), StoreError> {
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

pub(super) fn sync_sled_files(dir: &Path) -> std::io::Result<()> {
    let index = dir.join("index");
    File::open(index.join("db"))?.sync_data()?;
    if let Ok(entries) = std::fs::read_dir(index.join("blobs")) {
        for e in entries.flatten() {
            File::open(e.path())?.sync_data()?;
        }
    }
    Ok(())
}

/// What a shred pass stopped half-way leaves (see `erasure.rs`): a
/// segment it replaced but had not yet removed goes, key first; so does a
/// replacement it wrote but had not yet recorded (its records are indexed
/// in their source segment, which is still there and still queued).
/// Returns the segments that stay.
pub(super) fn drop_replaced(
    trees: &Trees,
    shared: &Shared,
    log_dir: &Path,
    segs: Vec<u64>,
) -> Result<Vec<u64>, StoreError> {
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

/// Re-applies log records past the checkpoint that sled does not know, and
/// cuts a torn tail off the newest segment.
pub(super) fn recover(trees: &Trees, shared: &Shared, log_dir: &Path, segs: &[u64]) -> Result<Recovery, StoreError> {
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
