//! The committer thread: the only writer of the intake log. It takes every
//! append request that is waiting, encrypts and frames them into one buffer,
//! writes it with one `write` and one `fdatasync` (group commit), and then
//! answers each request: many concurrent webhooks share one disk flush, and
//! a `200` waits for the disk, not for the index.
//!
//! The indexer thread then puts the batch into sled and only after that
//! releases each key's in-flight claim, so a duplicate that arrives in
//! between waits for the index instead of being stored twice. A crash before
//! indexing loses nothing: the log is re-applied on open. The channel
//! between the two is bounded, so a slow index pushes back on intake.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use tokio::sync::{oneshot, watch};

use crate::crypto::SegmentCipher;
use crate::timefmt::now_ms;

use super::event::{EventMeta, Location};
use super::log::{frame_event, pad_to_page, HEADER_LEN};
use super::preparer::{check_space, prepare_segment, Prepared, Space, PREPARE_RETRY, SPACE_CHECK_MS};
use super::progress::Position;
use super::{Shared, StoreError, Trees};

pub(super) struct AppendReq {
    pub meta: EventMeta,
    pub body: Bytes,
    pub reply: oneshot::Sender<Result<(), StoreError>>,
    /// Released (set to true) once the key is indexed, or the write failed.
    pub claim: watch::Sender<bool>,
}

/// A durable batch on its way to the index.
pub(super) struct Indexed {
    pub items: Vec<(EventMeta, Bytes, watch::Sender<bool>)>,
    /// Where its first record is, (segment, offset).
    pub start: Position,
    /// Where its last record ends.
    pub end: Position,
}

pub(super) enum Cmd {
    Append(Box<AppendReq>),
    /// Close the open segment (the next append opens a new one).
    Roll(oneshot::Sender<()>),
    /// Finish what is queued, then exit.
    Stop(crossbeam_channel::Sender<()>),
}

struct OpenSegment {
    seq: u64,
    file: File,
    len: u64,
    opened: Instant,
    cipher: Arc<SegmentCipher>,
    first_ms: i64,
    last_ms: i64,
    records: u64,
}

/// Most records written in one batch (bounds the buffer and the latency of
/// the first request in it).
const MAX_BATCH: usize = 1024;
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

pub(super) struct Committer {
    pub log_dir: PathBuf,
    pub trees: Trees,
    pub shared: Arc<Shared>,
    pub rx: Receiver<Cmd>,
    pub index_tx: Sender<Indexed>,
    /// The next segment, made ahead by [`prepare_ahead`].
    pub spare: Receiver<Prepared>,
    /// Segment size (also where the prepared space ends) and disk reserve.
    pub space: Space,
    pub max_age: Duration,
}

impl Committer {
    pub fn run(self) {
        let mut seg: Option<OpenSegment> = None;
        let mut batch: Vec<AppendReq> = Vec::with_capacity(MAX_BATCH);
        let mut buf: Vec<u8> = Vec::with_capacity(1024 * 1024);
        while let Ok(first) = self.rx.recv() {
            let mut stop = None;
            let mut rolls = Vec::new();
            let mut bytes = 0usize;
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Cmd::Append(req) => {
                        bytes += req.body.len();
                        batch.push(*req);
                    }
                    Cmd::Roll(reply) => rolls.push(reply),
                    Cmd::Stop(reply) => stop = Some(reply),
                }
                if stop.is_some() || batch.len() >= MAX_BATCH || bytes >= MAX_BATCH_BYTES {
                    break;
                }
                next = self.rx.try_recv().ok();
            }
            if !batch.is_empty() {
                self.commit(&mut seg, &mut batch, &mut buf);
            }
            if !rolls.is_empty() {
                // Appends taken with the roll went to the old segment first.
                self.close(&mut seg);
                for reply in rolls {
                    let _ = reply.send(());
                }
            }
            if let Some(reply) = stop {
                self.close(&mut seg);
                let _ = reply.send(());
                break;
            }
        }
    }

    fn close(&self, seg: &mut Option<OpenSegment>) {
        if let Some(s) = seg.take() {
            // Give back the prepared space nothing was written to.
            if let Err(e) = s.file.set_len(s.len).and_then(|_| s.file.sync_all()) {
                tracing::warn!(segment = s.seq, error = %e, "Could not trim a closed intake log segment; it is trimmed at the next start.");
            }
            self.record_segment(&s, true);
        }
    }

    fn record_segment(&self, s: &OpenSegment, closed: bool) {
        let info = super::SegmentInfo {
            first_ms: s.first_ms,
            last_ms: s.last_ms,
            records: s.records,
            bytes: s.len,
            closed,
        };
        if let Err(e) = self.trees.segments.insert(s.seq.to_be_bytes(), info.encode()) {
            tracing::error!(segment = s.seq, error = %e, "Could not record intake segment info.");
        }
    }

    fn open_segment(&self) -> Result<OpenSegment, StoreError> {
        // Waits while the next segment is being made, but answers at once
        // (a 503) while none can be.
        let Prepared { seq, file, cipher } = loop {
            match self.spare.recv_timeout(PREPARE_RETRY / 2) {
                Ok(p) => break p,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if self.shared.prepare_failed.load(Ordering::SeqCst) {
                        return Err(StoreError::Unavailable(
                            "no intake log segment can be made now (see the error logged)".into(),
                        ));
                    }
                }
                // The preparer is gone (it only stops after us, so this is
                // a bug, not a shutdown): make the segment here.
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    break prepare_segment(&self.trees, &self.shared, &self.log_dir, self.space)?;
                }
            }
        };
        let now = now_ms();
        tracing::debug!(segment = seq, "Opened intake log segment.");
        Ok(OpenSegment {
            seq,
            file,
            len: HEADER_LEN,
            opened: Instant::now(),
            cipher,
            first_ms: now,
            last_ms: now,
            records: 0,
        })
    }

    fn commit(&self, seg: &mut Option<OpenSegment>, batch: &mut Vec<AppendReq>, buf: &mut Vec<u8>) {
        // Framing and metadata add well under this much per record: a batch
        // that might not fit in the segment's prepared space goes to the next.
        const RECORD_OVERHEAD: u64 = 1024;
        let low = if now_ms() - self.shared.space_checked_ms.load(Ordering::Relaxed) >= SPACE_CHECK_MS {
            check_space(&self.shared, &self.log_dir, self.space.min_free)
        } else {
            self.shared.low_space.load(Ordering::Relaxed)
        };
        if low {
            self.fail_batch(batch, &StoreError::Unavailable("the disk is nearly full".into()));
            return;
        }
        let batch_bytes: u64 = batch.iter().map(|r| r.body.len() as u64 + RECORD_OVERHEAD).sum();
        let needs_new = match seg {
            None => true,
            Some(s) => {
                (s.len > HEADER_LEN && s.len + batch_bytes > self.space.size) || s.opened.elapsed() >= self.max_age
            }
        };
        if needs_new {
            self.close(seg);
            match self.open_segment() {
                Ok(s) => *seg = Some(s),
                Err(e) => {
                    self.fail_batch(batch, &e);
                    return;
                }
            }
        }
        let s = seg.as_mut().expect("a segment is open");
        buf.clear();
        let mut locs = Vec::with_capacity(batch.len());
        for req in batch.iter() {
            let off = s.len + buf.len() as u64;
            let len = frame_event(&s.cipher, s.seq, off, &req.meta, &req.body, buf);
            locs.push(Location { seg: s.seq, off, len });
        }
        let records_len = buf.len() as u64;
        pad_to_page(buf, s.len, self.space.size);
        let started = Instant::now();
        let written = s.file.write_all_at(buf, s.len).and_then(|_| s.file.sync_data());
        self.shared.metrics_fsync(started.elapsed());
        if let Err(e) = written {
            // The file's state after a failed write or fsync is unknown:
            // cut it back and never append to it again.
            tracing::error!(segment = s.seq, error = %e, "Intake log write failed; answering 503 and opening a new segment.");
            let _ = s.file.set_len(s.len);
            self.shared.write_failed.store(true, Ordering::Relaxed);
            self.close(seg);
            self.fail_batch(batch, &StoreError::Io(e));
            return;
        }
        self.shared.write_failed.store(false, Ordering::Relaxed);
        s.len += records_len;
        s.records += batch.len() as u64;
        for (req, loc) in batch.iter_mut().zip(&locs) {
            req.meta.loc = Some(*loc);
            s.last_ms = s.last_ms.max(req.meta.received_ms);
        }
        // Answer first: the batch is on stable media, and nothing below is
        // what a `200` promises (the segment's info is rebuilt from the log
        // after a crash; the index is re-applied). A sled write here would put
        // sled's stalls on every request's path.
        let mut items = Vec::with_capacity(batch.len());
        for req in batch.drain(..) {
            let _ = req.reply.send(Ok(()));
            items.push((req.meta, req.body, req.claim));
        }
        self.record_segment(s, false);
        self.shared.batches_sent.fetch_add(1, Ordering::SeqCst);
        // Blocks when the indexer is far behind: back-pressure on intake.
        let _ = self.index_tx.send(Indexed {
            items,
            start: (s.seq, locs.first().map_or(s.len, |l| l.off)),
            end: (s.seq, s.len),
        });
    }

    fn fail_batch(&self, batch: &mut Vec<AppendReq>, e: &StoreError) {
        for req in batch.drain(..) {
            self.shared.release(&req.meta.key, &req.claim);
            let _ = req.reply.send(Err(StoreError::Unavailable(e.to_string())));
        }
    }
}
