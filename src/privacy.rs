//! PRIVACY: data-subject export and erasure, across Intercom (through its
//! REST API) and every copy we hold. Each run leaves an audit entry with
//! keyed hashes and counts, never the email or the person's data.
//!
//! Erasure order: Intercom first (`DELETE /contacts/{id}`; a `404` means
//! already gone), then locally: the cached contact (tombstoned so late or
//! replayed events cannot bring it back), the cached conversations they take
//! part in (tombstoned too), and every stored notification that concerns
//! them (forgotten, and the log segments that held them rewritten under new
//! keys, the old keys destroyed). Running it again finds nothing more to do.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::cache::{decode, CacheCodec, ContactRecord, ConversationRecord};
use crate::client::{ApiError, IntercomClient};
use crate::store::{CacheKind, Store, StoreError};
use crate::timefmt::{format_ms, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Intercom: {0}")]
    Intercom(#[from] ApiError),
    #[error("{0}")]
    BadRequest(String),
}

/// Whose data: by email or by Intercom contact id.
#[derive(Debug, Clone)]
pub enum Subject {
    Email(String),
    ContactId(String),
}

impl Subject {
    /// From the `{"email":..}` / `{"contact_id":..}` request shape.
    pub fn from_parts(email: Option<String>, contact_id: Option<String>) -> Result<Subject, PrivacyError> {
        match (
            email.filter(|e| !e.trim().is_empty()),
            contact_id.filter(|c| !c.trim().is_empty()),
        ) {
            (Some(e), None) => Ok(Subject::Email(e)),
            (None, Some(c)) => Ok(Subject::ContactId(c.trim().to_string())),
            _ => Err(PrivacyError::BadRequest(
                "give exactly one of email or contact_id".into(),
            )),
        }
    }

    /// The keyed hash the audit log records instead of the identifier.
    fn audit_hash(&self, codec: &CacheCodec) -> String {
        match self {
            Subject::Email(e) => codec.keys().audit_hash(&format!("email:{}", e.trim().to_lowercase())),
            Subject::ContactId(c) => codec.keys().audit_hash(&format!("contact:{c}")),
        }
    }
}

/// The contact ids a subject maps to: locally (email hash index) and, with
/// a client, in Intercom (search by email).
async fn resolve(
    store: &Store,
    codec: &CacheCodec,
    client: Option<&IntercomClient>,
    subject: &Subject,
) -> Result<Vec<String>, PrivacyError> {
    let mut ids = BTreeSet::new();
    match subject {
        Subject::ContactId(id) => {
            ids.insert(id.clone());
        }
        Subject::Email(email) => {
            if let Some(hash) = codec.email_hash(email) {
                ids.extend(store.contacts_for_email_hash(&hash)?);
            }
            if let Some(c) = client {
                for contact in c.search_contacts_by_email(email).await? {
                    if let Some(id) = contact.get("id").and_then(crate::envelope::id_string) {
                        ids.insert(id);
                    }
                }
            }
        }
    }
    Ok(ids.into_iter().collect())
}

/// What we hold locally about a set of contacts.
struct LocalHoldings {
    contacts: Vec<(String, ContactRecord)>,
    conversations: Vec<(String, ConversationRecord)>,
    event_keys: Vec<String>,
}

fn holdings(store: &Store, ids: &[String]) -> Result<LocalHoldings, StoreError> {
    let mut contacts = Vec::new();
    let mut event_keys = BTreeSet::new();
    for id in ids {
        if let Some(bytes) = store.cache_get(CacheKind::Contact, id)? {
            if let Some(r) = decode::<ContactRecord>(&bytes) {
                contacts.push((id.clone(), r));
            }
        }
        event_keys.extend(store.events_for_contact(id)?.into_iter().map(|m| m.key));
    }
    // Erasure is rare: a scan of the conversation cache is affordable.
    let conversations = store
        .cache_all(CacheKind::Conversation)?
        .into_iter()
        .filter_map(|(id, bytes)| decode::<ConversationRecord>(&bytes).map(|r| (id, r)))
        .filter(|(_, r)| r.contacts.present().iter().any(|c| ids.contains(c)))
        .collect();
    Ok(LocalHoldings {
        contacts,
        conversations,
        event_keys: event_keys.into_iter().collect(),
    })
}

/// Erases everything held locally about `ids` (no Intercom call). Events in
/// `keep` (the `contact.deleted` notification being handled) stay.
pub fn erase_local(store: &Store, ids: &[String], keep: Option<&str>) -> Result<Value, StoreError> {
    let h = holdings(store, ids)?;
    let now = now_ms();
    let stamp = now / 1000;
    for id in ids {
        store.cache_txn(|tx| {
            if let Some(bytes) = tx.get(CacheKind::Contact, id)? {
                let r = decode::<ContactRecord>(&bytes);
                if let Some(h) = r.as_ref().and_then(|r| r.email_hash.as_deref()) {
                    tx.unindex_email(h, id)?;
                }
                tx.remove(CacheKind::Contact, id, r.map(|r| r.filed().at()))?;
            }
            if tx.tombstone(CacheKind::Contact, id)?.is_none() {
                tx.put_tombstone(CacheKind::Contact, id, stamp, now)?;
            }
            Ok(())
        })?;
    }
    for (id, _) in &h.conversations {
        store.cache_txn(|tx| {
            if let Some(bytes) = tx.get(CacheKind::Conversation, id)? {
                let filed = decode::<ConversationRecord>(&bytes).map(|r| r.filed().at());
                tx.remove(CacheKind::Conversation, id, filed)?;
            }
            if tx.tombstone(CacheKind::Conversation, id)?.is_none() {
                tx.put_tombstone(CacheKind::Conversation, id, stamp, now)?;
            }
            Ok(())
        })?;
    }
    let keys: Vec<String> = h.event_keys.into_iter().filter(|k| Some(k.as_str()) != keep).collect();
    let erased = store.erase_events(&keys)?;
    Ok(json!({
        "cached_contacts": h.contacts.len(),
        "cached_conversations": h.conversations.len(),
        "events": erased.events,
        "log_segments_rewritten": erased.segments_rewritten,
    }))
}

/// A data-subject erasure. With `dry_run` it says exactly what would go and
/// changes nothing.
pub async fn erase(
    store: &Store,
    codec: &CacheCodec,
    client: Option<&IntercomClient>,
    subject: Subject,
    dry_run: bool,
    local_only: bool,
) -> Result<Value, PrivacyError> {
    if !local_only && client.is_none() {
        return Err(PrivacyError::BadRequest(
            "INTERCOM_ACCESS_TOKEN is not set: cannot erase in Intercom (use --local-only to erase only local copies)"
                .into(),
        ));
    }
    let client = if local_only { None } else { client };
    let ids = resolve(store, codec, client, &subject).await?;
    let h = {
        let (store, ids) = (store.clone(), ids.clone());
        tokio::task::spawn_blocking(move || holdings(&store, &ids))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))??
    };
    let plan = json!({
        "contact_ids": ids,
        "intercom": if local_only { json!("skipped (--local-only)") } else { json!({"delete_contacts": ids.len()}) },
        "local": {
            "cached_contacts": h.contacts.len(),
            "cached_conversations": h.conversations.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
            "events": h.event_keys,
        },
    });
    if dry_run {
        return Ok(json!({"dry_run": true, "would_erase": plan}));
    }
    let mut deleted = 0;
    let mut absent = 0;
    if let Some(c) = client {
        for id in &ids {
            if c.delete_contact(id).await? {
                deleted += 1;
            } else {
                absent += 1;
            }
        }
    }
    let local = {
        let (store, ids) = (store.clone(), ids.clone());
        tokio::task::spawn_blocking(move || erase_local(&store, &ids, None))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))??
    };
    let intercom = if local_only {
        json!("skipped")
    } else {
        json!({"deleted": deleted, "already_absent": absent})
    };
    let details = json!({
        "subject_hash": subject.audit_hash(codec),
        "contact_id_hashes": ids.iter().map(|id| codec.keys().audit_hash(&format!("contact:{id}"))).collect::<Vec<_>>(),
        "intercom": intercom,
        "local": local,
    });
    crate::audit::append(store, "erase", details.clone())?;
    tracing::info!(contacts = ids.len(), "Erasure done.");
    Ok(json!({"dry_run": false, "contact_ids": ids, "intercom": intercom, "local": local}))
}

/// The local erasure a `contact.deleted` notification triggers, audited.
pub fn erase_on_webhook(
    store: &Store,
    codec: &CacheCodec,
    contact_id: &str,
    event_key: &str,
) -> Result<(), StoreError> {
    let local = erase_local(store, &[contact_id.to_string()], Some(event_key))?;
    crate::audit::append(
        store,
        "erase",
        json!({
            "trigger": "contact.deleted webhook",
            "contact_id_hashes": [codec.keys().audit_hash(&format!("contact:{contact_id}"))],
            "intercom": "skipped (deleted there)",
            "local": local,
        }),
    )?;
    Ok(())
}

/// Notes keep only what is theirs: not the author, not the body (which may
/// hold other people's data).
fn strip_note(n: &Value) -> Value {
    json!({"type": n.get("type"), "id": n.get("id"), "created_at": n.get("created_at")})
}

/// A data-subject access export. Layout (`format: intercom-webhooks/export/v1`):
/// `subject` (keyed hash), `contacts[]` each with `intercom` (contact,
/// tags, companies, segments, notes without author/body, conversations) and
/// `local` (cached contact, cached conversations, stored events' metadata),
/// and `audit_entries` about the subject.
pub async fn export(
    store: &Store,
    codec: &CacheCodec,
    client: Option<&IntercomClient>,
    subject: Subject,
) -> Result<Value, PrivacyError> {
    let ids = resolve(store, codec, client, &subject).await?;
    let mut contacts = Vec::new();
    let mut counts = json!({"contacts": ids.len(), "conversations": 0, "events": 0, "notes": 0});
    for id in &ids {
        let intercom = match client {
            None => json!({"skipped": "INTERCOM_ACCESS_TOKEN is not set"}),
            Some(c) => {
                let contact = match c.get_contact(id).await {
                    Ok(v) => v,
                    Err(ApiError::NotFound) => Value::Null,
                    Err(e) => return Err(e.into()),
                };
                // A contact Intercom no longer has has no lists either.
                let list = |what: &'static str, endpoint: &'static str| {
                    let gone = contact.is_null();
                    async move {
                        if gone {
                            return Ok(Vec::new());
                        }
                        match c.contact_list(id, what, endpoint).await {
                            Err(ApiError::NotFound) => Ok(Vec::new()),
                            other => other,
                        }
                    }
                };
                let tags = list("tags", "contacts.tags").await?;
                let companies = list("companies", "contacts.companies").await?;
                let segments = list("segments", "contacts.segments").await?;
                let notes: Vec<Value> = list("notes", "contacts.notes").await?.iter().map(strip_note).collect();
                let mut conversations = Vec::new();
                for conv in c.search_conversations_by_contact(id).await? {
                    let Some(cid) = conv.get("id").and_then(crate::envelope::id_string) else {
                        continue;
                    };
                    match c.get_conversation(&cid).await {
                        Ok(full) => conversations.push(full),
                        Err(ApiError::NotFound) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                counts["notes"] = json!(counts["notes"].as_u64().unwrap_or(0) + notes.len() as u64);
                counts["conversations"] =
                    json!(counts["conversations"].as_u64().unwrap_or(0) + conversations.len() as u64);
                json!({"contact": contact, "tags": tags, "companies": companies, "segments": segments, "notes": notes, "conversations": conversations})
            }
        };
        let local = {
            let (st, one) = (store.clone(), id.clone());
            let h = tokio::task::spawn_blocking(move || holdings(&st, std::slice::from_ref(&one)))
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))??;
            let events: Vec<Value> = h
                .event_keys
                .iter()
                .filter_map(|k| store.get(k).ok().flatten())
                .map(|m| json!({"id": m.key, "topic": m.topic, "received_at": format_ms(m.received_ms), "status": m.status.as_str()}))
                .collect();
            counts["events"] = json!(counts["events"].as_u64().unwrap_or(0) + events.len() as u64);
            json!({
                "cached_contact": h.contacts.first().map(|(_, r)| codec.contact_view(r)),
                "cached_conversations": h.conversations.iter().map(|(_, r)| codec.conversation_view(r)).collect::<Vec<_>>(),
                "events": events,
            })
        };
        contacts.push(json!({"id": id, "intercom": intercom, "local": local}));
    }
    let subject_hash = subject.audit_hash(codec);
    let id_hashes: Vec<String> = ids
        .iter()
        .map(|id| codec.keys().audit_hash(&format!("contact:{id}")))
        .collect();
    let audit_entries: Vec<Value> = crate::audit::list(store)?["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            let d = e["details"].to_string();
            d.contains(&subject_hash) || id_hashes.iter().any(|h| d.contains(h))
        })
        .collect();
    crate::audit::append(store, "export", json!({"subject_hash": subject_hash, "counts": counts}))?;
    Ok(json!({
        "format": "intercom-webhooks/export/v1",
        "generated_at": format_ms(now_ms()),
        "subject": {"hash": subject_hash},
        "contacts": contacts,
        "audit_entries": audit_entries,
    }))
}
