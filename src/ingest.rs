//! DEDUP/STORE: turns a verified webhook into a stored event. Pings with a
//! null id are answered and dropped (facts.md §1.5); a signed body that is
//! not a notification is kept as `invalid` for inspection.

use crate::envelope::{classify, Classified};
use crate::store::{Appended, EventMeta, Status, Store, StoreError};
use crate::verify::VerifiedWebhook;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// New notification, durably stored.
    Stored,
    /// Seen before (or stored concurrently and now durable).
    Duplicate,
    /// A `ping` with a null id: nothing stored.
    Ping,
    /// Signed, but not a notification: stored as `invalid`.
    Invalid,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Stored => "stored",
            Outcome::Duplicate => "duplicate",
            Outcome::Ping => "ping",
            Outcome::Invalid => "invalid",
        }
    }
}

/// The event key and topic, for logging the outcome.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub key: String,
    pub topic: String,
}

pub async fn ingest(store: &Store, webhook: VerifiedWebhook, now_ms: i64) -> (Result<Outcome, StoreError>, Identity) {
    let body = webhook.body().clone();
    let classified = classify(&body);
    let invalid = matches!(classified, Classified::Invalid { .. });
    let subjects = crate::identifiers::of_stored(&body, invalid).subject_keys(store.keys());
    let mut meta = EventMeta::received(now_ms, body.len() as u32, subjects);
    let invalid = match classified {
        Classified::Ping => {
            return (
                Ok(Outcome::Ping),
                Identity {
                    key: String::new(),
                    topic: "ping".into(),
                },
            )
        }
        Classified::Notification { key, envelope } => {
            meta.key = key;
            meta.notification_id = envelope.id;
            meta.topic = envelope.topic;
            meta.app_id = envelope.app_id;
            meta.item_type = envelope.item_type;
            meta.item_id = envelope.item_id;
            meta.created_at = envelope.created_at;
            false
        }
        Classified::Invalid { why } => {
            meta.key = store.keys().body_key(&body);
            meta.status = Status::Invalid;
            meta.last_error = Some(why.reason().to_string());
            true
        }
    };
    let identity = Identity {
        key: meta.key.clone(),
        topic: meta.topic.clone(),
    };
    if cfg!(feature = "bench-skip-store") {
        // The benchmark's ceiling: everything but the store.
        return (Ok(if invalid { Outcome::Invalid } else { Outcome::Stored }), identity);
    }
    let res = store.append_if_absent(meta, body).await.map(|a| match (a, invalid) {
        (_, true) => Outcome::Invalid,
        (Appended::Stored, false) => Outcome::Stored,
        (Appended::Duplicate, false) => Outcome::Duplicate,
    });
    (res, identity)
}
