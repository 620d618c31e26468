//! Which events a listing, a replay or a count takes: status, topic glob
//! and a receipt-time range. The store's own filter type, so that it needs
//! nothing from the layers above.

use super::{EventMeta, Status};

/// Filter for listing events.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub status: Option<Status>,
    pub topic: Option<Glob>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// A listing reads at most this many events per page, matching or
    /// not, so a page costs the same however rarely the filter matches; a
    /// page cut short by it is still followed by a cursor.
    pub scan_limit: Option<usize>,
    /// ...and reads for no longer than this: a page whose events are not
    /// in memory (a cold cache) comes back short, with its cursor, instead
    /// of late.
    pub scan_time: Option<std::time::Duration>,
}

/// One page of a listing, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventPage {
    pub events: Vec<EventMeta>,
    /// Where the next page starts; `None` on the last.
    pub next: Option<String>,
    /// Receipt time (unix ms) of the oldest event this page read, matching
    /// or not: how far back it searched.
    pub searched_to_ms: Option<i64>,
}

impl EventFilter {
    pub fn matches(&self, m: &EventMeta) -> bool {
        self.status.is_none_or(|s| s == m.status)
            && self.topic.as_ref().is_none_or(|g| g.matches(&m.topic))
            && self.since_ms.is_none_or(|t| m.received_ms >= t)
            && self.until_ms.is_none_or(|t| m.received_ms <= t)
    }
}

/// A topic glob: `*` matches any run of characters (dots included), `?`
/// one character; everything else literally.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Glob(pattern.to_string())
    }

    pub fn matches(&self, text: &str) -> bool {
        matches(self.0.as_bytes(), text.as_bytes())
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        &self.0
    }
}

fn matches(p: &[u8], t: &[u8]) -> bool {
    // Iterative wildcard match with backtracking to the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(Glob::new("conversation.*").matches("conversation.user.replied"));
        assert!(!Glob::new("conversation.*").matches("contact.user.created"));
        assert!(Glob::new("*.deleted").matches("contact.deleted"));
        assert!(Glob::new("contact.?ser.*").matches("contact.user.updated"));
        assert!(Glob::new("ping").matches("ping"));
        assert!(!Glob::new("ping").matches("pings"));
        assert!(Glob::new("*").matches(""));
    }
}
