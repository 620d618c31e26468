//! Contact topics → the contact cache. Decisions (README has the table):
//! - `contact.archived` keeps the record, marked `archived` (Intercom
//!   restores an archived contact when the person returns);
//!   `contact.unarchived` brings a full contact back and clears the mark.
//! - `contact.deleted` (and the legacy `user.deleted`) removes the record
//!   and leaves a tombstone: no later event can recreate that id (Intercom
//!   never reuses contact ids).
//! - `contact.merged` updates the surviving contact; the merged-away id, when
//!   the payload names it, is deleted and tombstoned like a deletion.

use serde_json::Value;

use super::{bool_field, list_ids, list_is_partial, str_field, ts, Applied, Ctx};
use crate::cache::ContactRecord;
use crate::cache_rules as rules;
use crate::store::{CacheKind, CacheTx, TxError, TxResult};

const KIND: CacheKind = CacheKind::Contact;

fn abort(msg: &str) -> TxError {
    TxError::Abort(msg.to_string())
}

pub fn upsert(tx: &dyn CacheTx, ctx: &Ctx<'_>, contact: &Value, archived: Option<bool>) -> TxResult<Applied> {
    let id = str_field(contact, "id").ok_or_else(|| abort("contact item has no id"))?;
    if rules::tombstoned(tx, KIND, &id)? {
        return Ok(Applied::Tombstoned);
    }
    let stamp = ctx.stamp(contact);
    let existing = rules::load::<ContactRecord>(tx, &id)?;
    if existing.as_ref().is_some_and(|e| e.stamp > stamp) {
        return Ok(Applied::Stale);
    }
    let mut r = existing.clone().unwrap_or_default();
    r.id = id;
    r.app_id = ctx.app_id.map(str::to_string).or(r.app_id);
    let external_id = str_field(contact, "external_id").or_else(|| str_field(contact, "user_id"));
    ctx.codec.set_external_id(&mut r, external_id);
    r.role = str_field(contact, "role").or_else(|| match str_field(contact, "type").as_deref() {
        Some("user") => Some("user".into()),
        _ if bool_field(contact, "anonymous") == Some(true) => Some("lead".into()),
        _ => r.role.clone(),
    });
    r.created_at = ts(contact, "created_at").or(r.created_at);
    r.updated_at = ts(contact, "updated_at").or(r.updated_at);
    r.signed_up_at = ts(contact, "signed_up_at").or(r.signed_up_at);
    r.last_seen_at = ts(contact, "last_seen_at")
        .or_else(|| ts(contact, "last_request_at"))
        .or(r.last_seen_at);
    for (key, legacy, set) in [
        ("tags", "tags", &mut r.tags),
        ("companies", "companies", &mut r.companies),
    ] {
        if let Some(ids) = list_ids(contact, key, legacy) {
            if list_is_partial(contact, key) {
                ids.iter().for_each(|i| set.set(i, true, stamp));
            } else {
                set.replace(&ids, stamp);
            }
        }
    }
    if let Some(v) = bool_field(contact, "unsubscribed_from_emails") {
        r.unsubscribed_from_emails = Some(v);
    }
    if let Some(v) = bool_field(contact, "unsubscribed_from_sms") {
        r.unsubscribed_from_sms = Some(v);
    }
    if let Some(email) = contact.get("email") {
        r.email_hash = email.as_str().and_then(|e| ctx.codec.email_hash(e));
    }
    if contact.get("custom_attributes").is_some() {
        r.custom_attributes = ctx.codec.seal_attributes(&r.id, contact.get("custom_attributes"));
    }
    r.archived = archived
        .or_else(|| bool_field(contact, "archived"))
        .unwrap_or(r.archived);
    r.stamp = stamp;
    rules::save(tx, &mut r, existing.as_ref(), ctx.now_ms)?;
    Ok(Applied::Updated)
}

pub fn archive(tx: &dyn CacheTx, ctx: &Ctx<'_>, id: &str) -> TxResult<Applied> {
    if rules::tombstoned(tx, KIND, id)? {
        return Ok(Applied::Tombstoned);
    }
    let stamp = ctx.event_stamp();
    let existing = rules::load::<ContactRecord>(tx, id)?;
    if existing.as_ref().is_some_and(|e| e.stamp > stamp) {
        return Ok(Applied::Stale);
    }
    let mut r = existing.clone().unwrap_or_else(|| ContactRecord {
        id: id.to_string(),
        ..ContactRecord::default()
    });
    r.app_id = ctx.app_id.map(str::to_string).or(r.app_id);
    r.archived = true;
    r.stamp = stamp;
    rules::save(tx, &mut r, existing.as_ref(), ctx.now_ms)?;
    Ok(Applied::Updated)
}

pub fn delete(tx: &dyn CacheTx, ctx: &Ctx<'_>, id: &str) -> TxResult<Applied> {
    rules::delete::<ContactRecord>(tx, id, ctx.event_stamp(), ctx.now_ms)?;
    Ok(Applied::Deleted)
}

pub fn merge(tx: &dyn CacheTx, ctx: &Ctx<'_>, contact: &Value, merged_from: Option<&str>) -> TxResult<Applied> {
    let applied = upsert(tx, ctx, contact, None)?;
    if let Some(from) = merged_from {
        if Some(from) != str_field(contact, "id").as_deref() {
            delete(tx, ctx, from)?;
        }
    }
    Ok(applied)
}

pub enum Set {
    Tags,
    Companies,
}

/// A tag or company added to / removed from a contact. The membership
/// change is ordered by the event's time, the contact's other fields by its
/// own `updated_at`.
pub fn membership(
    tx: &dyn CacheTx,
    ctx: &Ctx<'_>,
    contact: &Value,
    set: Set,
    member: &str,
    add: bool,
) -> TxResult<Applied> {
    let applied = upsert(tx, ctx, contact, None)?;
    if applied == Applied::Tombstoned {
        return Ok(applied);
    }
    let id = str_field(contact, "id").ok_or_else(|| abort("contact item has no id"))?;
    let existing = rules::load::<ContactRecord>(tx, &id)?;
    let mut r = existing
        .clone()
        .ok_or_else(|| abort("contact vanished inside its transaction"))?;
    let target = match set {
        Set::Tags => &mut r.tags,
        Set::Companies => &mut r.companies,
    };
    target.set(member, add, ctx.event_stamp());
    rules::save(tx, &mut r, existing.as_ref(), ctx.now_ms)?;
    Ok(Applied::Updated)
}
