//! How far the intake log is safely reflected in sled: the position a
//! checkpoint records and recovery re-applies the log from.
//!
//! Two things hold it back. The indexer's position (what sled has seen at
//! all), and fresh events: an event handed to a worker straight from intake
//! gets no entry in the `pending` tree (that would be two more sled writes
//! per event, an insert now and a remove when done). Until its outcome is
//! recorded, the only durable trace that it still needs processing is its
//! record in the log, so the checkpoint must not move past the batch it came
//! in. After a crash, re-applying the log from there queues it again; the
//! handlers are idempotent, so an event that was in fact done runs twice at
//! worst.

use std::collections::VecDeque;

/// A position in the intake log: (segment, offset).
pub type Position = (u64, u64);

struct Batch {
    id: u64,
    start: Position,
    first_ms: i64,
    unfinished: usize,
}

#[derive(Default)]
pub struct Progress {
    indexed: Position,
    next_id: u64,
    /// Batches with fresh events not yet finished, oldest first.
    batches: VecDeque<Batch>,
}

impl Progress {
    pub fn new(indexed: Position) -> Self {
        Progress {
            indexed,
            ..Progress::default()
        }
    }

    /// A batch starting at `start` hands `fresh` events to the workers;
    /// returns the id they report back with [`finished`](Self::finished).
    pub fn begin_batch(&mut self, start: Position, first_ms: i64, fresh: usize) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if fresh > 0 {
            self.batches.push_back(Batch {
                id,
                start,
                first_ms,
                unfinished: fresh,
            });
        }
        id
    }

    /// Everything before `end` is in sled.
    pub fn indexed(&mut self, end: Position) {
        self.indexed = end;
    }

    /// One fresh event of batch `id` has its outcome (or a `pending`
    /// entry) in sled.
    pub fn finished(&mut self, id: u64) {
        if let Some(b) = self.batches.iter_mut().find(|b| b.id == id) {
            b.unfinished = b.unfinished.saturating_sub(1);
        }
        while self.batches.front().is_some_and(|b| b.unfinished == 0) {
            self.batches.pop_front();
        }
    }

    /// Where recovery must start re-applying the log.
    pub fn safe_position(&self) -> Position {
        match self.batches.front() {
            Some(b) => b.start.min(self.indexed),
            None => self.indexed,
        }
    }

    /// Where the oldest batch with fresh events not finished starts: the
    /// log from there on is still the only trace that they need
    /// processing, so no segment from there on may be rewritten.
    pub fn oldest_unfinished_start(&self) -> Option<Position> {
        self.batches.front().map(|b| b.start)
    }

    /// Fresh events handed out and not finished.
    pub fn unfinished(&self) -> usize {
        self.batches.iter().map(|b| b.unfinished).sum()
    }

    /// When the oldest unfinished fresh event arrived (about: its batch's).
    pub fn oldest_fresh_ms(&self) -> Option<i64> {
        self.batches.front().map(|b| b.first_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_waits_for_the_oldest_unfinished_batch() {
        let mut p = Progress::new((1, 32));
        let a = p.begin_batch((1, 32), 10, 2);
        p.indexed((1, 100));
        let b = p.begin_batch((1, 100), 20, 1);
        p.indexed((1, 200));
        let c = p.begin_batch((1, 200), 30, 0);
        p.indexed((2, 32));
        assert_eq!(p.safe_position(), (1, 32));
        assert_eq!(p.oldest_fresh_ms(), Some(10));
        assert_eq!(p.unfinished(), 3);
        p.finished(b);
        p.finished(a);
        assert_eq!(p.safe_position(), (1, 32), "one of batch a is still out");
        p.finished(c); // no fresh events: nothing to finish
        p.finished(a);
        assert_eq!(p.safe_position(), (2, 32));
        assert_eq!(p.oldest_fresh_ms(), None);
        assert_eq!(p.unfinished(), 0);
    }
}
