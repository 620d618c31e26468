//! Conversation topics → the conversation cache. Kept: states, times,
//! assignees, contact and tag ids, part count, last part time, rating value,
//! source type. Never subjects, bodies, authors, attachments or URLs.
//! Webhook items carry only the parts new with the action (facts.md §3.5),
//! so `last_part_at` only moves forward.

use serde_json::Value;

use super::{bool_field, list_ids, str_field, ts, Applied, Ctx};
use crate::cache::ConversationRecord;
use crate::cache_rules as rules;
use crate::envelope::id_string;
use crate::store::{CacheKind, CacheTx, TxError, TxResult};

const KIND: CacheKind = CacheKind::Conversation;

fn abort(msg: &str) -> TxError {
    TxError::Abort(msg.to_string())
}

/// 2.x `admin_assignee_id`, or a legacy `assignee` of the given type.
fn assignee(c: &Value, key: &str, legacy_type: &str) -> Option<String> {
    str_field(c, key).filter(|v| v != "0").or_else(|| {
        let a = c.get("assignee")?;
        (a.get("type").and_then(Value::as_str) == Some(legacy_type))
            .then(|| a.get("id").and_then(id_string))
            .flatten()
    })
}

fn parts(c: &Value) -> Option<&Vec<Value>> {
    c.get("conversation_parts")?.get("conversation_parts")?.as_array()
}

pub fn upsert(tx: &dyn CacheTx, ctx: &Ctx<'_>, c: &Value) -> TxResult<Applied> {
    let id = str_field(c, "id").ok_or_else(|| abort("conversation item has no id"))?;
    if rules::tombstoned(tx, KIND, &id)? {
        return Ok(Applied::Tombstoned);
    }
    let stamp = ctx.stamp(c);
    let existing = rules::load::<ConversationRecord>(tx, &id)?;
    let mut r = existing.clone().unwrap_or_default();
    // Parts only ever add information: record them even from a stale event.
    let last_part = parts(c).and_then(|ps| ps.iter().filter_map(|p| ts(p, "created_at")).max());
    r.last_part_at = r.last_part_at.max(last_part);
    if existing.as_ref().is_some_and(|e| e.stamp > stamp) {
        if r.last_part_at != existing.as_ref().and_then(|e| e.last_part_at) {
            rules::save(tx, &mut r, existing.as_ref(), ctx.now_ms)?;
        }
        return Ok(Applied::Stale);
    }
    r.id = id;
    r.app_id = ctx.app_id.map(str::to_string).or(r.app_id);
    r.state = str_field(c, "state").or(r.state);
    r.open = bool_field(c, "open").or(r.open);
    r.read = bool_field(c, "read").or(r.read);
    r.priority = str_field(c, "priority").or(r.priority);
    r.created_at = ts(c, "created_at").or(r.created_at);
    r.updated_at = ts(c, "updated_at").or(r.updated_at);
    if c.get("waiting_since").is_some() {
        r.waiting_since = ts(c, "waiting_since");
    }
    if c.get("snoozed_until").is_some() {
        r.snoozed_until = ts(c, "snoozed_until");
    }
    if c.get("admin_assignee_id").is_some() || c.get("assignee").is_some() {
        r.admin_assignee_id = assignee(c, "admin_assignee_id", "admin");
    }
    if c.get("team_assignee_id").is_some() || c.get("assignee").is_some() {
        r.team_assignee_id = assignee(c, "team_assignee_id", "team");
    }
    let contacts = list_ids(c, "contacts", "contacts").or_else(|| {
        c.get("user")
            .and_then(|u| u.get("id"))
            .and_then(id_string)
            .map(|u| vec![u])
    });
    if let Some(ids) = contacts {
        r.contacts.replace(&ids, stamp);
    }
    if let Some(ids) = list_ids(c, "tags", "tags") {
        r.tags.replace(&ids, stamp);
    }
    let count = c
        .get("statistics")
        .and_then(|s| s.get("count_conversation_parts"))
        .and_then(Value::as_u64)
        .or_else(|| {
            c.get("conversation_parts")
                .and_then(|p| p.get("total_count"))
                .and_then(Value::as_u64)
        });
    r.part_count = count.max(r.part_count);
    if let Some(rating) = c.get("conversation_rating") {
        r.rating = rating.get("rating").and_then(Value::as_i64);
    }
    let source = c.get("source").or_else(|| c.get("conversation_message"));
    if let Some(s) = source {
        r.source_type = str_field(s, "type").or(r.source_type);
        r.delivered_as = str_field(s, "delivered_as").or(r.delivered_as);
    }
    r.stamp = stamp;
    rules::save(tx, &mut r, existing.as_ref(), ctx.now_ms)?;
    Ok(Applied::Updated)
}

pub fn delete(tx: &dyn CacheTx, ctx: &Ctx<'_>, id: &str) -> TxResult<Applied> {
    rules::delete::<ConversationRecord>(tx, id, ctx.event_stamp(), ctx.now_ms)?;
    Ok(Applied::Deleted)
}

pub fn contact(
    tx: &dyn CacheTx,
    ctx: &Ctx<'_>,
    conversation_id: &str,
    contact_id: &str,
    attach: bool,
) -> TxResult<Applied> {
    if rules::tombstoned(tx, KIND, conversation_id)? {
        return Ok(Applied::Tombstoned);
    }
    let existing = rules::load::<ConversationRecord>(tx, conversation_id)?;
    let mut r = existing.clone().unwrap_or_else(|| ConversationRecord {
        id: conversation_id.to_string(),
        ..ConversationRecord::default()
    });
    r.app_id = ctx.app_id.map(str::to_string).or(r.app_id);
    r.contacts.set(contact_id, attach, ctx.event_stamp());
    rules::save(tx, &mut r, existing.as_ref(), ctx.now_ms)?;
    Ok(Applied::Updated)
}
