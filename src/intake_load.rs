//! How busy the receiver is. The webhook route counts the requests it is
//! working on (from a complete body to the answer: verifying and storing);
//! the handler threads read the count and yield the CPU to
//! intake while it is saturated (see `worker::yield_to_intake`): a prompt
//! `200` matters to Intercom (it deprioritises endpoints slower than
//! 500 ms), a cache a few seconds behind does not.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::timefmt::now_ms;

/// More requests than this in the receiver at once and it counts as
/// saturated. At a steady 1,000 requests/s there are 0-2; a client holding
/// 64 connections busy keeps 20-60 there.
pub const SATURATED_IN_FLIGHT: usize = 8;

/// How long the receiver still counts as saturated after it last was.
/// Under a client holding many connections busy the count dips for a
/// moment each time a batch of answers goes out and before the next
/// requests arrive; a handler thread that looked just then would take a
/// whole batch of work (64 events with a database) and take the CPU from
/// intake.
pub const SATURATION_SETTLES_MS: i64 = 10;

#[derive(Debug, Clone, Default)]
pub struct IntakeLoad(Arc<Load>);

#[derive(Debug, Default)]
struct Load {
    in_flight: AtomicUsize,
    /// When the count was last above `SATURATED_IN_FLIGHT` (unix ms).
    saturated_at: AtomicI64,
}

/// One request in the receiver; dropping it (on answer, or when the client
/// goes away mid-request) takes it out of the count.
pub struct InFlight<'a>(&'a AtomicUsize);

impl IntakeLoad {
    pub fn enter(&self) -> InFlight<'_> {
        if self.0.in_flight.fetch_add(1, Ordering::Relaxed) >= SATURATED_IN_FLIGHT {
            self.0.saturated_at.store(now_ms(), Ordering::Relaxed);
        }
        InFlight(&self.0.in_flight)
    }

    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::Relaxed)
    }

    /// Above `SATURATED_IN_FLIGHT` now, or within the last
    /// `SATURATION_SETTLES_MS`.
    pub fn saturated(&self) -> bool {
        self.in_flight() > SATURATED_IN_FLIGHT
            || now_ms().saturating_sub(self.0.saturated_at.load(Ordering::Relaxed)) < SATURATION_SETTLES_MS
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_until_they_are_dropped() {
        let load = IntakeLoad::default();
        let shared = load.clone();
        let held: Vec<_> = (0..=SATURATED_IN_FLIGHT).map(|_| load.enter()).collect();
        assert_eq!(shared.in_flight(), SATURATED_IN_FLIGHT + 1);
        assert!(shared.saturated());
        drop(held);
        assert_eq!(shared.in_flight(), 0);
        // (It counts as saturated for a moment longer.)
        std::thread::sleep(std::time::Duration::from_millis(SATURATION_SETTLES_MS as u64 + 5));
        assert!(!shared.saturated());
    }
}
