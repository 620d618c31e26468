//! Console sessions: a random token in an HttpOnly, SameSite=Strict cookie,
//! held here (in memory, by its SHA-256) with the CSRF token of its forms.
//! A session ends on sign-out, after `[admin] session_idle` without a
//! request, `[admin] session_max` after sign-in, or when the server stops.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::secret::constant_time_eq;

/// The session cookie's name.
pub const COOKIE: &str = "iw_console";

/// Sessions kept at most; signing in past it ends the oldest.
const MAX_SESSIONS: usize = 256;

struct Session {
    csrf: String,
    started: Instant,
    last_seen: Instant,
}

pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
    idle: Duration,
    max: Duration,
}

/// What a request with a live session may use.
#[derive(Debug, Clone)]
pub struct Live {
    /// The token its forms must carry.
    pub csrf: String,
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Sessions {
    pub fn new(idle: Duration, max: Duration) -> Self {
        Sessions {
            by_hash: Mutex::new(HashMap::new()),
            idle,
            max,
        }
    }

    /// Starts a session; returns its cookie token.
    pub fn start(&self) -> String {
        let token = random_token();
        let now = Instant::now();
        let mut all = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        self.forget_expired_in(&mut all, now);
        if all.len() >= MAX_SESSIONS {
            if let Some(oldest) = all.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k) {
                all.remove(&oldest);
            }
        }
        all.insert(
            hash(&token),
            Session {
                csrf: random_token(),
                started: now,
                last_seen: now,
            },
        );
        token
    }

    /// The live session of this cookie token, which this request keeps
    /// alive; `None` when there is none or it has expired.
    pub fn touch(&self, token: &str) -> Option<Live> {
        let now = Instant::now();
        let mut all = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        let key = hash(token);
        let s = all.get_mut(&key)?;
        if self.expired(s, now) {
            all.remove(&key);
            return None;
        }
        s.last_seen = now;
        Some(Live { csrf: s.csrf.clone() })
    }

    /// Ends the session of this cookie token.
    pub fn end(&self, token: &str) {
        self.by_hash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&hash(token));
    }

    /// Drops expired sessions (the server calls this every minute).
    pub fn forget_expired(&self) {
        let mut all = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        self.forget_expired_in(&mut all, Instant::now());
    }

    fn forget_expired_in(&self, all: &mut HashMap<[u8; 32], Session>, now: Instant) {
        all.retain(|_, s| !self.expired(s, now));
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_seen) >= self.idle || now.duration_since(s.started) >= self.max
    }
}

impl Live {
    /// Whether a form's CSRF token is this session's.
    pub fn csrf_matches(&self, given: &str) -> bool {
        constant_time_eq(given.as_bytes(), self.csrf.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_until_idle_or_max_and_ends_on_sign_out() {
        let s = Sessions::new(Duration::from_millis(200), Duration::from_millis(450));
        let t = s.start();
        let live = s.touch(&t).expect("live");
        assert!(live.csrf_matches(&live.csrf.clone()));
        assert!(!live.csrf_matches("0".repeat(64).as_str()));
        assert!(s.touch("not-a-token").is_none());
        // Kept alive by requests until the absolute limit.
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(120));
            assert!(s.touch(&t).is_some());
        }
        std::thread::sleep(Duration::from_millis(120));
        assert!(s.touch(&t).is_none(), "past session_max");
        // Idle.
        let t = s.start();
        std::thread::sleep(Duration::from_millis(250));
        assert!(s.touch(&t).is_none(), "past session_idle");
        // Sign-out.
        let t = s.start();
        s.end(&t);
        assert!(s.touch(&t).is_none());
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(60));
        let (a, b) = (s.start(), s.start());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let all = s.by_hash.lock().unwrap();
        assert!(all.contains_key(&hash(&a)));
        assert!(all.values().all(|v| v.csrf != a && v.csrf != b));
    }
}
