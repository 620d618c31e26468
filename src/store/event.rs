//! What the store records about each notification, and how it is encoded in
//! sled and in the intake log: a format-version byte, then the fields in the
//! binary layout of `codec` (version 2; version 1, JSON, is
//! still read). The metadata holds no personal data (ids, topic, times,
//! statuses); the payload lives encrypted in the intake log and is found
//! through `loc`.

use serde::{Deserialize, Serialize};

use super::codec::{Reader, Writer};

/// The version written now.
pub const META_VERSION: u8 = 2;
/// JSON, written by the first releases; still decoded.
const META_V1_JSON: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Processed,
    Skipped,
    Retrying,
    Failed,
    Invalid,
    /// Its person was erased: the record keeps the notification's id,
    /// topic and times, nothing personal and no payload
    /// ([`EventMeta::erased`]).
    Erased,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Pending,
        Status::Processed,
        Status::Skipped,
        Status::Retrying,
        Status::Failed,
        Status::Invalid,
        Status::Erased,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Processed => "processed",
            Status::Skipped => "skipped",
            Status::Retrying => "retrying",
            Status::Failed => "failed",
            Status::Invalid => "invalid",
            Status::Erased => "erased",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Waiting for a worker: counted in the pending depth.
    pub fn is_queued(self) -> bool {
        matches!(self, Status::Pending | Status::Retrying)
    }

    pub(crate) fn code(self) -> u8 {
        self.code_i16() as u8
    }

    /// [`code`](Self::code) as a database's `smallint`.
    pub(crate) const fn code_i16(self) -> i16 {
        match self {
            Status::Pending => 0,
            Status::Processed => 1,
            Status::Skipped => 2,
            Status::Retrying => 3,
            Status::Failed => 4,
            Status::Invalid => 5,
            Status::Erased => 6,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.code() == c)
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
    /// Subject keys of the people the notification concerns (see
    /// `identifiers`): contact ids as they are, emails and external ids as
    /// keyed hashes. Erasure and export find a person's events through them.
    /// (Field name kept for the JSON of format v1.)
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "contact_ids")]
    pub subjects: Vec<String>,
    /// `None` once the payload has been purged.
    pub loc: Option<Location>,
}

/// The outcome word in an erased record's history.
pub const ERASED: &str = "erased";

impl EventMeta {
    /// What is kept of an event once its person is erased: the
    /// notification's id, topic, workspace, item type and times, how often
    /// it was delivered, and one `erased` entry in its history, at `now_ms`.
    /// Gone: the payload and its length, the item's id, the subject keys,
    /// the earlier attempts and their errors.
    pub fn erased(&self, now_ms: i64) -> EventMeta {
        EventMeta {
            key: self.key.clone(),
            notification_id: self.notification_id.clone(),
            topic: self.topic.clone(),
            app_id: self.app_id.clone(),
            item_type: self.item_type.clone(),
            item_id: None,
            created_at: self.created_at,
            received_ms: self.received_ms,
            last_delivery_ms: self.last_delivery_ms,
            delivery_count: self.delivery_count,
            status: Status::Erased,
            attempts: 0,
            retry_at_ms: None,
            last_error: None,
            history: vec![Attempt {
                at_ms: now_ms,
                outcome: ERASED.into(),
                error: None,
                duration_us: None,
            }],
            body_len: 0,
            subjects: Vec::new(),
            loc: None,
        }
    }

    /// When it was erased (an erased record's only history entry).
    pub fn erased_ms(&self) -> Option<i64> {
        (self.status == Status::Erased)
            .then(|| self.history.iter().rev().find(|a| a.outcome == ERASED).map(|a| a.at_ms))
            .flatten()
    }

    /// A notification just received: pending, delivered once, not yet
    /// given its key and envelope fields.
    pub fn received(now_ms: i64, body_len: u32, subjects: Vec<String>) -> EventMeta {
        EventMeta {
            key: String::new(),
            notification_id: None,
            topic: String::new(),
            app_id: None,
            item_type: None,
            item_id: None,
            created_at: None,
            received_ms: now_ms,
            last_delivery_ms: now_ms,
            delivery_count: 1,
            status: Status::Pending,
            attempts: 0,
            retry_at_ms: None,
            last_error: None,
            history: Vec::new(),
            body_len,
            subjects,
            loc: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(160 + 48 * self.history.len());
        w.u8(META_VERSION);
        w.str(&self.key);
        w.opt(self.notification_id.as_deref(), Writer::str);
        w.str(&self.topic);
        w.opt(self.app_id.as_deref(), Writer::str);
        w.opt(self.item_type.as_deref(), Writer::str);
        w.opt(self.item_id.as_deref(), Writer::str);
        w.opt(self.created_at, Writer::i64);
        w.i64(self.received_ms);
        w.i64(self.last_delivery_ms);
        w.u32(self.delivery_count);
        w.u8(self.status.code());
        w.u32(self.attempts);
        w.opt(self.retry_at_ms, Writer::i64);
        w.opt(self.last_error.as_deref(), Writer::str);
        w.len(self.history.len());
        for a in &self.history {
            w.i64(a.at_ms);
            w.str(&a.outcome);
            w.opt(a.error.as_deref(), Writer::str);
            w.opt(a.duration_us, Writer::u64);
        }
        w.u32(self.body_len);
        w.len(self.subjects.len());
        for c in &self.subjects {
            w.str(c);
        }
        w.opt(self.loc, |w, l| {
            w.u64(l.seg);
            w.u64(l.off);
            w.u32(l.len);
        });
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<EventMeta> {
        match bytes.split_first() {
            Some((&META_VERSION, rest)) => Self::decode_v2(rest),
            Some((&META_V1_JSON, rest)) => serde_json::from_slice(rest).ok(),
            _ => None,
        }
    }

    fn decode_v2(bytes: &[u8]) -> Option<EventMeta> {
        let mut r = Reader::new(bytes);
        let m = EventMeta {
            key: r.str()?,
            notification_id: r.opt(Reader::str)?,
            topic: r.str()?,
            app_id: r.opt(Reader::str)?,
            item_type: r.opt(Reader::str)?,
            item_id: r.opt(Reader::str)?,
            created_at: r.opt(Reader::i64)?,
            received_ms: r.i64()?,
            last_delivery_ms: r.i64()?,
            delivery_count: r.u32()?,
            status: Status::from_code(r.u8()?)?,
            attempts: r.u32()?,
            retry_at_ms: r.opt(Reader::i64)?,
            last_error: r.opt(Reader::str)?,
            history: {
                let n = r.len()?;
                let mut h = Vec::with_capacity(n);
                for _ in 0..n {
                    h.push(Attempt {
                        at_ms: r.i64()?,
                        outcome: r.str()?,
                        error: r.opt(Reader::str)?,
                        duration_us: r.opt(Reader::u64)?,
                    });
                }
                h
            },
            body_len: r.u32()?,
            subjects: {
                let n = r.len()?;
                let mut c = Vec::with_capacity(n);
                for _ in 0..n {
                    c.push(r.str()?);
                }
                c
            },
            loc: r.opt(|r| {
                Some(Location {
                    seg: r.u64()?,
                    off: r.u64()?,
                    len: r.u32()?,
                })
            })?,
        };
        r.is_empty().then_some(m)
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

    fn sample() -> EventMeta {
        EventMeta {
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
            subjects: vec![],
            loc: Some(Location {
                seg: 1,
                off: 32,
                len: 50,
            }),
        }
    }

    #[test]
    fn meta_round_trips_with_version() {
        let mut m = sample();
        let bytes = m.encode();
        assert_eq!(bytes[0], META_VERSION);
        assert_eq!(EventMeta::decode(&bytes), Some(m.clone()));
        m.subjects = vec!["c1".into(), String::new()];
        m.last_error = Some("no data.item".into());
        m.retry_at_ms = Some(-1);
        m.push_history(Attempt {
            at_ms: 3,
            outcome: "retrying".into(),
            error: Some("e".into()),
            duration_us: None,
        });
        m.loc = None;
        let bytes = m.encode();
        assert_eq!(EventMeta::decode(&bytes), Some(m));
        for cut in 0..bytes.len() {
            assert_eq!(EventMeta::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(EventMeta::decode(&longer), None);
        assert_eq!(EventMeta::decode(b"\x09{}"), None);
    }

    #[test]
    fn version_1_json_is_still_read() {
        let m = sample();
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&serde_json::to_vec(&m).unwrap());
        assert_eq!(EventMeta::decode(&v1), Some(m));
    }

    #[test]
    fn time_keys_sort_by_time() {
        assert!(time_key(1, "z") < time_key(2, "a"));
        assert_eq!(split_time_key(&time_key(5, "k")), Some((5, "k")));
    }
}
