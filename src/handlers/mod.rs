//! HANDLE: apply a routed [`Action`] to the cache, inside the transaction
//! that also records the event's outcome. Handlers read only the fields the
//! cache keeps; everything else in the payload is ignored.

mod contacts;
mod conversations;

use serde_json::Value;

use crate::cache::CacheCodec;
use crate::dispatch::Action;
use crate::envelope::id_string;
use crate::store::{CacheKind, CacheTx, TxResult};
use crate::timefmt::parse_timestamp;

/// What a handler did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Updated,
    /// The cache holds newer data; nothing changed.
    Stale,
    Deleted,
    /// The record was deleted earlier; the event cannot bring it back.
    Tombstoned,
}

impl Applied {
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Updated => "updated",
            Applied::Stale => "stale",
            Applied::Deleted => "deleted",
            Applied::Tombstoned => "tombstoned",
        }
    }
}

/// What handlers know about the event besides its item.
pub struct Ctx<'a> {
    pub codec: &'a CacheCodec,
    pub app_id: Option<&'a str>,
    /// The envelope's `created_at`, unix seconds.
    pub event_created_at: Option<i64>,
    pub now_ms: i64,
}

impl Ctx<'_> {
    /// The ordering stamp of an item: its `updated_at`, else the event's
    /// `created_at`, else the receipt time.
    pub fn stamp(&self, item: &Value) -> i64 {
        ts(item, "updated_at").unwrap_or_else(|| self.event_stamp())
    }

    pub fn event_stamp(&self) -> i64 {
        self.event_created_at.unwrap_or(self.now_ms / 1000)
    }
}

pub fn apply(action: &Action, tx: &dyn CacheTx, ctx: &Ctx<'_>) -> TxResult<Applied> {
    match action {
        Action::ContactUpsert { contact, archived } => contacts::upsert(tx, ctx, contact, *archived),
        Action::ContactArchive { id } => contacts::archive(tx, ctx, id),
        Action::ContactDelete { id } => contacts::delete(tx, ctx, id),
        Action::ContactMerge { contact, merged_from } => contacts::merge(tx, ctx, contact, merged_from.as_deref()),
        Action::ContactTag { contact, tag_id, add } => {
            contacts::membership(tx, ctx, contact, contacts::Set::Tags, tag_id, *add)
        }
        Action::ContactCompany {
            contact,
            company_id,
            attach,
        } => contacts::membership(tx, ctx, contact, contacts::Set::Companies, company_id, *attach),
        Action::ConversationUpsert { conversation } => conversations::upsert(tx, ctx, conversation),
        Action::ConversationDelete { id } => conversations::delete(tx, ctx, id),
        Action::ConversationContact {
            conversation_id,
            contact_id,
            attach,
        } => conversations::contact(tx, ctx, conversation_id, contact_id, *attach),
    }
}

/// The cache records a handler run of `action` reads (all of them, for
/// these handlers): a store may read them up front, several runs' at once.
pub fn reads(action: &Action) -> Vec<(CacheKind, String)> {
    let contact = |c: &Value| str_field(c, "id").map(|id| (CacheKind::Contact, id));
    let conversation = |id: &str| (CacheKind::Conversation, id.to_string());
    match action {
        Action::ContactUpsert { contact: c, .. }
        | Action::ContactTag { contact: c, .. }
        | Action::ContactCompany { contact: c, .. } => contact(c).into_iter().collect(),
        Action::ContactArchive { id } | Action::ContactDelete { id } => vec![(CacheKind::Contact, id.clone())],
        Action::ContactMerge {
            contact: c,
            merged_from,
        } => contact(c)
            .into_iter()
            .chain(merged_from.iter().map(|id| (CacheKind::Contact, id.clone())))
            .collect(),
        Action::ConversationUpsert { conversation: c } => {
            str_field(c, "id").map(|id| conversation(&id)).into_iter().collect()
        }
        Action::ConversationDelete { id } => vec![conversation(id)],
        Action::ConversationContact { conversation_id, .. } => vec![conversation(conversation_id)],
    }
}

// ---- field readers shared by the handlers ----

pub(crate) fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(id_string)
}

pub(crate) fn bool_field(v: &Value, key: &str) -> Option<bool> {
    v.get(key).and_then(Value::as_bool)
}

pub(crate) fn ts(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(parse_timestamp)
}

/// Ids of a list object in either shape: `{data:[{id}]}` (2.x) or
/// `{<name>:[{id}]}` (1.x and conversation lists). `None` when absent.
pub(crate) fn list_ids(v: &Value, key: &str, legacy_key: &str) -> Option<Vec<String>> {
    let list = v.get(key)?;
    let items = list
        .get("data")
        .or_else(|| list.get(legacy_key))
        .and_then(Value::as_array)?;
    Some(items.iter().filter_map(|i| i.get("id").and_then(id_string)).collect())
}

/// Whether a 2.x list object says it holds only part of the list.
pub(crate) fn list_is_partial(v: &Value, key: &str) -> bool {
    v.get(key).and_then(|l| l.get("has_more")).and_then(Value::as_bool) == Some(true)
}
