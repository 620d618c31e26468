//! What workers take and give back: [`Work`] off the queue, a
//! [`Snapshot`] of an event as read, a [`Completion`] to record.

use bytes::Bytes;

use super::{Attempt, EventMeta, Status};

/// The outcome a worker records for an event.
#[derive(Debug, Clone)]
pub struct Completion {
    pub status: Status,
    pub attempt: Attempt,
    pub retry_at_ms: Option<i64>,
}

impl Completion {
    /// Records the outcome on `m`; an erased record stays as it is (a
    /// handler that ran as its person was erased changes nothing).
    pub(crate) fn apply(&self, m: &mut EventMeta) {
        if m.status == Status::Erased {
            return;
        }
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
    /// The bytes the backend read or wrote: its compare-and-swap token.
    pub(crate) raw: Vec<u8>,
    /// Whether the backend keeps a queue entry for the event beside its
    /// status (the embedded one does not for an event handed to a worker
    /// straight from intake).
    pub(crate) pending_entry: bool,
}

impl Snapshot {
    /// Whether a handler run prepared from this snapshot may still run on
    /// the event as it is now (read under its lock): still queued, and no
    /// outcome recorded since. A second copy of the same work (queued again
    /// when its claim lapsed while the first waited) finds the first one's
    /// outcome and does not run; a duplicate delivery counted meanwhile
    /// changes neither.
    pub(crate) fn still_runs_on(&self, now: &EventMeta) -> bool {
        now.status.is_queued() && now.history.last() == self.meta.history.last()
    }
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
    /// Report to [`super::Backend::fresh_finished`] once the outcome is recorded.
    pub batch: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_goes_ahead_on_a_counted_duplicate_but_not_after_another_outcome() {
        let mut meta = EventMeta::received(1_000, 10, Vec::new());
        meta.key = "notif_1".into();
        let seen = Snapshot {
            meta: meta.clone(),
            raw: 1i64.to_be_bytes().to_vec(),
            pending_entry: true,
        };
        assert!(seen.still_runs_on(&meta));
        // A duplicate delivery counted meanwhile.
        let mut counted = meta.clone();
        counted.delivery_count += 1;
        assert!(seen.still_runs_on(&counted));
        // Another copy of the work ran it: processed, or retrying.
        for status in [Status::Processed, Status::Retrying] {
            let mut ran = counted.clone();
            Completion {
                status,
                attempt: Attempt {
                    at_ms: 2_000,
                    outcome: "processed".into(),
                    error: None,
                    duration_us: None,
                },
                retry_at_ms: None,
            }
            .apply(&mut ran);
            assert!(!seen.still_runs_on(&ran), "{status:?}");
        }
    }
}
