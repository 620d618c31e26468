//! How busy the receiver is. The webhook route counts the requests it is
//! working on (from a complete body to the answer: verifying and storing);
//! the handler threads read the count and yield the CPU to
//! intake while it is saturated (see `worker::yield_to_intake`): a prompt
//! `200` matters to Intercom (it deprioritises endpoints slower than
//! 500 ms), a cache a few seconds behind does not.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// More requests than this in the receiver at once and it counts as
/// saturated. At a steady 1,000 requests/s there are 0-2; a client holding
/// 64 connections busy keeps 20-60 there.
pub const SATURATED_IN_FLIGHT: usize = 8;

#[derive(Debug, Clone, Default)]
pub struct IntakeLoad(Arc<AtomicUsize>);

/// One request in the receiver; dropping it (on answer, or when the client
/// goes away mid-request) takes it out of the count.
pub struct InFlight<'a>(&'a AtomicUsize);

impl IntakeLoad {
    pub fn enter(&self) -> InFlight<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.0)
    }

    pub fn in_flight(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub fn saturated(&self) -> bool {
        self.in_flight() > SATURATED_IN_FLIGHT
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
        assert!(!shared.saturated());
    }
}
