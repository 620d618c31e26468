//! RECONCILE: what Intercom never delivered, fetched from its REST API
//! (facts.md §1.7, §4). Intercom retries a failed delivery once and drops
//! what comes while a subscription is paused, so webhooks alone can miss an
//! update or a deletion. A reconciliation:
//!
//! 1. searches the contacts, then the conversations, updated since a
//!    durable watermark (one per kind), oldest first, page by page;
//! 2. checks that every cached contact and conversation still exists (a
//!    `404` means it was deleted; Intercom's 2.14 API lists no deleted
//!    conversations, so this is how their deletions are found).
//!
//! Each change becomes a notification like the webhook Intercom would have
//! sent (`contact.user.updated`, `contact.lead.updated`,
//! `conversation.updated`, `contact.deleted`, `conversation.deleted`), with
//! an id that says where it came from (`rec_…`, and `"source":
//! "reconcile"` in the body), stored and processed like any webhook: the
//! handlers' ordering guard keeps a newer cached record, a deletion
//! tombstones and erases exactly as a delivered one would. The id is the
//! same for the same change, so running again stores nothing new.
//!
//! The watermark moves only once a page is stored, so an interrupted run
//! (or one stopped by Intercom's rate limit past the client's retries)
//! resumes where it was; the search asks for `updated_at > watermark - 1`,
//! so the last second is looked at again (it may hold more than the page
//! had room for) and only duplicates come of it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::client::{ApiError, Changed, IntercomClient};
use crate::envelope::id_string;
use crate::ingest::{ingest, Outcome};
use crate::store::{CacheKind, Store, StoreError};
use crate::timefmt::now_ms;
use crate::verify::VerifiedWebhook;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Intercom: {0}")]
    Intercom(#[from] ApiError),
}

/// What one run found, and what it stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub dry_run: bool,
    /// The watermarks the searches started from (unix seconds).
    pub contacts_since: i64,
    pub conversations_since: i64,
    pub contacts_changed: u64,
    pub conversations_changed: u64,
    pub contacts_deleted: u64,
    pub conversations_deleted: u64,
    /// Notifications stored for processing (a change seen before is a
    /// duplicate and counted here instead).
    pub stored: u64,
    pub duplicates: u64,
    /// Items that cannot be stored: an id that is no identifier (control
    /// characters, over 512 bytes), or a value the store refuses. Each is
    /// counted and passed over; the run goes on.
    #[serde(default)]
    pub skipped: u64,
    /// Keys of what was stored, for a caller that processes them itself.
    #[serde(skip)]
    pub stored_keys: Vec<String>,
}

/// The store state values that hold reconciliation's watermarks.
pub const WATERMARKS: [&str; 2] = ["reconcile.contacts", "reconcile.conversations"];

fn watermark_name(kind: Changed) -> &'static str {
    match kind {
        Changed::Contacts => WATERMARKS[0],
        Changed::Conversations => WATERMARKS[1],
    }
}

pub fn watermark(store: &Store, kind: Changed) -> Result<Option<i64>, StoreError> {
    Ok(store
        .state_value(watermark_name(kind))?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(i64::from_be_bytes))
}

/// Runs one reconciliation. `since` (unix seconds) overrides the stored
/// watermarks; without either the searches start `default_since`.
/// `progress` is told what was looked at so far.
pub async fn run(
    store: &Store,
    client: &IntercomClient,
    since: Option<i64>,
    default_since: i64,
    dry_run: bool,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Report, ReconcileError> {
    let mut report = Report {
        dry_run,
        ..Report::default()
    };
    let mut seen = 0u64;
    for kind in [Changed::Contacts, Changed::Conversations] {
        let start = match since {
            Some(s) => s,
            None => watermark(store, kind)?.unwrap_or(default_since),
        };
        match kind {
            Changed::Contacts => report.contacts_since = start,
            Changed::Conversations => report.conversations_since = start,
        }
        let mut cursor: Option<String> = None;
        loop {
            let (items, next) = client.changed_since(kind, start - 1, cursor.as_deref()).await?;
            let mut newest = None::<i64>;
            for item in &items {
                let updated = item.get("updated_at").and_then(Value::as_i64).unwrap_or(0);
                newest = newest.max(Some(updated));
                let Some(id) = item.get("id").and_then(id_string) else {
                    report.skipped += 1;
                    continue;
                };
                let topic = match kind {
                    Changed::Contacts if item.get("role").and_then(Value::as_str) == Some("lead") => {
                        "contact.lead.updated"
                    }
                    Changed::Contacts => "contact.user.updated",
                    Changed::Conversations => "conversation.updated",
                };
                match kind {
                    Changed::Contacts => report.contacts_changed += 1,
                    Changed::Conversations => report.conversations_changed += 1,
                }
                let key = format!("rec_{}_{id}_{updated}", short(kind));
                store_change(store, &mut report, &key, topic, item.clone(), updated).await?;
            }
            seen += items.len() as u64;
            progress(seen);
            // The page is stored: the next run may start after it.
            if let (Some(n), false) = (newest, dry_run) {
                if watermark(store, kind)?.is_none_or(|w| w < n) {
                    store.set_state_value(watermark_name(kind), &n.to_be_bytes())?;
                }
            }
            match next {
                Some(n) if !items.is_empty() => cursor = Some(n),
                _ => break,
            }
        }
    }
    // Deletions: whatever we cache that Intercom no longer has. Both lists
    // are read before any deletion is stored: a contact's deletion, once a
    // worker runs it, forgets their conversations too, and those are
    // checked (and reported) all the same.
    let cached = [
        (Changed::Contacts, store.cache_all(CacheKind::Contact)?),
        (Changed::Conversations, store.cache_all(CacheKind::Conversation)?),
    ];
    for (kind, records) in cached {
        for id in records.into_iter().map(|(id, _)| id) {
            let gone = match kind {
                Changed::Contacts => client.get_contact(&id).await,
                Changed::Conversations => client.get_conversation(&id).await,
            };
            match gone {
                Ok(_) => {}
                Err(ApiError::NotFound) => {
                    let (topic, item) = match kind {
                        Changed::Contacts => {
                            report.contacts_deleted += 1;
                            ("contact.deleted", json!({"type": "contact", "id": id, "deleted": true}))
                        }
                        Changed::Conversations => {
                            report.conversations_deleted += 1;
                            (
                                "conversation.deleted",
                                json!({"type": "conversation", "id": id, "conversation_id": id}),
                            )
                        }
                    };
                    let key = format!("rec_{}_{id}_deleted", short(kind));
                    store_change(store, &mut report, &key, topic, item, now_ms() / 1000).await?;
                }
                Err(e) => return Err(e.into()),
            }
            seen += 1;
            progress(seen);
        }
    }
    Ok(report)
}

fn short(kind: Changed) -> &'static str {
    match kind {
        Changed::Contacts => "c",
        Changed::Conversations => "v",
    }
}

/// Stores one change as the notification Intercom would have sent.
async fn store_change(
    store: &Store,
    report: &mut Report,
    key: &str,
    topic: &str,
    item: Value,
    created_at: i64,
) -> Result<(), ReconcileError> {
    if report.dry_run {
        return Ok(());
    }
    let body = json!({
        "type": "notification_event",
        "id": key,
        "topic": topic,
        "created_at": created_at,
        "source": "reconcile",
        "data": {"type": "notification_event_data", "item": item},
    });
    let body = Bytes::from(serde_json::to_vec(&body).expect("plain JSON serialises"));
    let (outcome, _) = ingest(store, VerifiedWebhook::from_intercom_api(body), now_ms()).await;
    match outcome {
        Err(StoreError::Refused(why)) => {
            tracing::warn!(key, error = %why, "Reconcile: an item the store cannot hold was skipped.");
            report.skipped += 1;
        }
        Err(e) => return Err(e.into()),
        Ok(Outcome::Duplicate) => report.duplicates += 1,
        Ok(_) => {
            report.stored += 1;
            report.stored_keys.push(key.to_string());
        }
    }
    Ok(())
}
