//! The indexer thread: the committer's durable batches, into sled.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::timefmt::now_ms;

use super::committer::Indexed;
use super::{Fresh, Shared, Trees, Work, FRESH_QUEUE_LIMIT};

/// The indexer thread: applies durable batches to sled, releases their
/// claims and hands new events to the workers: with their body and without
/// a `pending` entry while the queue is short (see `progress`), by key from
/// the `pending` tree beyond that.
pub(super) fn index(trees: Trees, shared: Arc<Shared>, rx: Receiver<Indexed>, work_tx: Sender<Work>) {
    while let Ok(batch) = rx.recv() {
        #[cfg(test)]
        tests_pause::wait();
        // The torture test holds each batch a moment here (a slow index).
        crate::failpoint::hit("indexer:batch");
        let mut room = FRESH_QUEUE_LIMIT.saturating_sub(work_tx.len());
        let mut work = Vec::with_capacity(batch.items.len());
        let first_ms = batch.items.first().map_or(0, |(m, _, _)| m.received_ms);
        for (meta, body, claim) in batch.items {
            let fresh = meta.status.is_queued() && room > 0;
            match super::apply_new(&trees, &meta, fresh) {
                Ok(Some(seen)) if meta.status.is_queued() => {
                    if fresh {
                        room -= 1;
                        work.push((meta.key.clone(), Some((seen, body))));
                    } else {
                        work.push((meta.key.clone(), None));
                    }
                }
                Ok(_) => {}
                // The record is in the log; the next open re-applies it.
                Err(e) => {
                    shared.index_failed.store(true, Ordering::Relaxed);
                    tracing::error!(webhook_id = %meta.key, error = %e, "Could not index a stored event; it is re-indexed at the next start.")
                }
            }
            shared.release(&meta.key, &claim);
        }
        let id = {
            let fresh = work.iter().filter(|(_, f)| f.is_some()).count();
            let mut progress = shared.progress();
            let id = progress.begin_batch(batch.start, first_ms, fresh);
            progress.indexed(batch.end);
            id
        };
        shared.batches_indexed.fetch_add(1, Ordering::SeqCst);
        let queued_ms = now_ms();
        for (key, fresh) in work {
            let fresh = fresh.map(|(seen, body)| Box::new(Fresh { seen, body, batch: id }));
            let _ = work_tx.send(Work { key, fresh, queued_ms });
        }
    }
}

/// Unit tests hold the indexer here, as a slow sled would.
#[cfg(test)]
pub(crate) mod tests_pause {
    use std::sync::atomic::{AtomicBool, Ordering};

    pub static PAUSED: AtomicBool = AtomicBool::new(false);

    pub fn wait() {
        while PAUSED.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}
