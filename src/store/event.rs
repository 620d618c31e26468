//! What the store records about each notification, and how it is encoded in
//! sled: a format-version byte, then JSON. The metadata holds no personal
//! data (ids, topic, times, statuses); the payload lives encrypted in the
//! intake log and is found through `loc`.

use serde::{Deserialize, Serialize};

pub const META_VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Processed,
    Skipped,
    Retrying,
    Failed,
    Invalid,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Processed,
        Status::Skipped,
        Status::Retrying,
        Status::Failed,
        Status::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Processed => "processed",
            Status::Skipped => "skipped",
            Status::Retrying => "retrying",
            Status::Failed => "failed",
            Status::Invalid => "invalid",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Waiting for a worker: counted in the pending depth.
    pub fn is_queued(self) -> bool {
        matches!(self, Status::Pending | Status::Retrying)
    }
}

/// Where a payload is in the intake log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub seg: u64,
    pub off: u64,
    pub len: u32,
}

/// One processing attempt, kept in the event's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub at_ms: i64,
    /// `processed`, `skipped`, `retrying`, `failed`, `replayed`...
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
}

/// How many attempts an event's history keeps (the newest).
pub const HISTORY_LIMIT: usize = 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMeta {
    pub key: String,
    /// Intercom's notification id (`None` for the rare null id).
    pub notification_id: Option<String>,
    /// Empty for an invalid body.
    pub topic: String,
    pub app_id: Option<String>,
    pub item_type: Option<String>,
    pub item_id: Option<String>,
    /// Intercom's `created_at`, unix seconds.
    pub created_at: Option<i64>,
    /// When we first stored it, unix ms.
    pub received_ms: i64,
    /// Last delivery seen (first or duplicate), unix ms.
    pub last_delivery_ms: i64,
    pub delivery_count: u32,
    pub status: Status,
    /// Handler attempts since the last success or replay.
    pub attempts: u32,
    /// When a `retrying` event is due again, unix ms.
    #[serde(default)]
    pub retry_at_ms: Option<i64>,
    pub last_error: Option<String>,
    #[serde(default)]
    pub history: Vec<Attempt>,
    pub body_len: u32,
    /// Contact ids the notification concerns (erasure and export find the
    /// events of a person through them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contact_ids: Vec<String>,
    /// `None` once the payload has been purged.
    pub loc: Option<Location>,
}

impl EventMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(META_VERSION);
        serde_json::to_writer(&mut out, self).expect("serialising plain data cannot fail");
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<EventMeta> {
        match bytes.split_first() {
            Some((&META_VERSION, rest)) => serde_json::from_slice(rest).ok(),
            _ => None,
        }
    }

    pub fn push_history(&mut self, attempt: Attempt) {
        self.history.push(attempt);
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
    }
}

/// Time-ordered index key: big-endian received ms, then the event key, so a
/// range scan walks events in arrival order and expiry is one prefix range.
pub fn time_key(received_ms: i64, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&(received_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

pub fn split_time_key(k: &[u8]) -> Option<(i64, &str)> {
    if k.len() < 8 {
        return None;
    }
    let ms = u64::from_be_bytes(k[..8].try_into().ok()?) as i64;
    Some((ms, std::str::from_utf8(&k[8..]).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_with_version() {
        let m = EventMeta {
            key: "notif_1".into(),
            notification_id: Some("notif_1".into()),
            topic: "contact.user.created".into(),
            app_id: Some("abc".into()),
            item_type: Some("contact".into()),
            item_id: Some("c1".into()),
            created_at: Some(1),
            received_ms: 2,
            last_delivery_ms: 2,
            delivery_count: 1,
            status: Status::Pending,
            attempts: 0,
            retry_at_ms: None,
            last_error: None,
            history: vec![],
            body_len: 10,
            contact_ids: vec![],
            loc: Some(Location {
                seg: 1,
                off: 32,
                len: 50,
            }),
        };
        let bytes = m.encode();
        assert_eq!(bytes[0], META_VERSION);
        assert_eq!(EventMeta::decode(&bytes), Some(m));
        assert_eq!(EventMeta::decode(b"\x09{}"), None);
    }

    #[test]
    fn time_keys_sort_by_time() {
        assert!(time_key(1, "z") < time_key(2, "a"));
        assert_eq!(split_time_key(&time_key(5, "k")), Some((5, "k")));
    }
}
