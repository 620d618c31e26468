//! The bytes of bodies the public listener holds before verifying them,
//! capped (`[server] max_unverified_bytes`; connections are capped by the
//! accept loop, `server`): past the cap a request waits up to `busy_wait`
//! for room, then gets `503` (Intercom retries it), so a flood of slow or
//! large bodies cannot push the process past its memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{HttpSettings, SMALL_BODY};

/// Room for unverified body bytes: a pool for any body, and a reserve only
/// bodies of at most [`SMALL_BODY`] bytes may use (every notification
/// Intercom sends is one), so large slow bodies cannot crowd them out.
#[derive(Clone)]
pub struct BodyBudget {
    any: Arc<Semaphore>,
    small: Arc<Semaphore>,
    wait: Duration,
}

/// Bytes held for one request's body until it is verified (released when
/// dropped).
pub struct Reserved {
    _permit: OwnedSemaphorePermit,
}

impl BodyBudget {
    pub fn new(http: &HttpSettings) -> Self {
        let reserve = http.max_unverified_bytes / 4;
        BodyBudget {
            any: Arc::new(Semaphore::new(http.max_unverified_bytes - reserve)),
            small: Arc::new(Semaphore::new(reserve)),
            wait: http.busy_wait,
        }
    }

    /// Room for a body of `len` bytes, waiting up to `busy_wait`; `None`:
    /// the server is full, answer `503`.
    pub async fn reserve(&self, len: usize) -> Option<Reserved> {
        let n = u32::try_from(len.max(1)).ok()?;
        if len <= SMALL_BODY {
            if let Ok(p) = self.small.clone().try_acquire_many_owned(n) {
                return Some(Reserved { _permit: p });
            }
        }
        if let Ok(p) = self.any.clone().try_acquire_many_owned(n) {
            return Some(Reserved { _permit: p });
        }
        let pool = if len <= SMALL_BODY { &self.small } else { &self.any };
        match tokio::time::timeout(self.wait, pool.clone().acquire_many_owned(n)).await {
            Ok(Ok(p)) => Some(Reserved { _permit: p }),
            _ => None,
        }
    }

    /// Bytes free now, in both pools (metrics, tests).
    pub fn available(&self) -> usize {
        self.any.available_permits() + self.small.available_permits()
    }
}
