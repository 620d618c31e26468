//! ROUTE: topic → what to do to the cache. A plain `match`, one arm per
//! topic family; topic names are matched leniently where Intercom's docs and
//! wire disagree (facts.md §6.7). Topics with no arm are stored and marked
//! `skipped`.

use serde_json::Value;

use crate::envelope::id_string;

/// A cache change, read out of a notification's item.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create or update a contact from a full contact object.
    ContactUpsert {
        contact: Value,
        archived: Option<bool>,
    },
    ContactArchive {
        id: String,
    },
    ContactDelete {
        id: String,
    },
    /// The surviving contact, and the id merged into it (now gone).
    ContactMerge {
        contact: Value,
        merged_from: Option<String>,
    },
    ContactTag {
        contact: Value,
        tag_id: String,
        add: bool,
    },
    ContactCompany {
        contact: Value,
        company_id: String,
        attach: bool,
    },
    ConversationUpsert {
        conversation: Value,
    },
    ConversationDelete {
        id: String,
    },
    ConversationContact {
        conversation_id: String,
        contact_id: String,
        attach: bool,
    },
}

/// Why an item could not be turned into an action. Holds no payload values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RouteError(pub &'static str);

/// Whether a topic is a person's deletion (its handler erases them).
pub fn is_deletion(topic: &str) -> bool {
    matches!(topic, "contact.deleted" | "user.deleted")
}

/// `Ok(None)`: no handler for this topic (the event is `skipped`).
pub fn route(topic: &str, item: &Value) -> Result<Option<Action>, RouteError> {
    let action = match topic {
        "contact.user.created"
        | "contact.user.updated"
        | "contact.email.updated"
        | "contact.lead.created"
        | "contact.lead.updated"
        | "contact.lead.added_email"
        | "contact.lead.signed_up"
        | "contact.signed_up"
        | "contact.added_email"
        | "contact.created"
        | "contact.updated"
        | "visitor.signed_up"
        | "user.created"
        | "user.email.updated"
        | "user.unsubscribed"
        | "contact.subscribed"
        | "contact.unsubscribed"
        | "contact.unsubscribed_from_sms"
        | "granular.subscribe"
        | "granular.unsubscribe" => Action::ContactUpsert {
            contact: contact_of(item)?,
            archived: None,
        },
        "contact.unarchived" | "contact.unarchive" => Action::ContactUpsert {
            contact: contact_of(item)?,
            archived: Some(false),
        },
        "contact.archived" | "contact.archive" => Action::ContactArchive {
            id: item_id(item).ok_or(RouteError("contact item has no id"))?,
        },
        "contact.deleted" | "user.deleted" => Action::ContactDelete {
            id: item_id(item).ok_or(RouteError("contact item has no id"))?,
        },
        "contact.merged" => Action::ContactMerge {
            contact: contact_of(item)?,
            merged_from: item.get("merged_from").and_then(|m| m.get("id")).and_then(id_string),
        },
        "contact.user.tag.created" | "contact.lead.tag.created" | "contact.tag.created" | "user.tag.created" => {
            tag(item, true)?
        }
        "contact.user.tag.deleted" | "contact.lead.tag.deleted" | "contact.tag.deleted" | "user.tag.deleted" => {
            tag(item, false)?
        }
        "company.contact.attached" | "company.contact.detached" => Action::ContactCompany {
            contact: contact_of(item)?,
            company_id: item
                .get("company")
                .and_then(|c| c.get("id"))
                .and_then(id_string)
                .ok_or(RouteError("company item has no id"))?,
            attach: topic.ends_with("attached"),
        },
        "conversation.deleted" => Action::ConversationDelete {
            id: item
                .get("conversation_id")
                .and_then(id_string)
                .or_else(|| item_id(item))
                .ok_or(RouteError("conversation item has no id"))?,
        },
        "conversation.contact.attached" | "conversation.contact.detached" => Action::ConversationContact {
            conversation_id: item
                .get("conversation")
                .and_then(conversation_id_of)
                .ok_or(RouteError("conversation item has no id"))?,
            contact_id: item
                .get("contact")
                .and_then(|c| c.get("id"))
                .and_then(id_string)
                .ok_or(RouteError("contact item has no id"))?,
            attach: topic.ends_with("attached"),
        },
        t if t.starts_with("conversation.")
            || t == "conversation_part.redacted"
            || t == "conversation_part.tag.created" =>
        {
            if item_id(item).is_none() {
                return Err(RouteError("conversation item has no id"));
            }
            Action::ConversationUpsert {
                conversation: item.clone(),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(action))
}

fn item_id(item: &Value) -> Option<String> {
    item.get("id").and_then(id_string)
}

/// The contact in an item: the item itself, or the contact (or legacy
/// `user`) inside a wrapper such as `contact_tag` or `contact_unsubscribe`.
fn contact_of(item: &Value) -> Result<Value, RouteError> {
    let inner = item.get("contact").or_else(|| item.get("user"));
    let contact = match (inner, item_id(item)) {
        (Some(c), _) if c.is_object() => c,
        (_, Some(_)) => item,
        _ => return Err(RouteError("contact item has no id")),
    };
    if contact.get("id").and_then(id_string).is_none() {
        return Err(RouteError("contact item has no id"));
    }
    Ok(contact.clone())
}

fn tag(item: &Value, add: bool) -> Result<Action, RouteError> {
    Ok(Action::ContactTag {
        contact: contact_of(item)?,
        tag_id: item
            .get("tag")
            .and_then(|t| t.get("id"))
            .and_then(id_string)
            .ok_or(RouteError("tag item has no tag id"))?,
        add,
    })
}

/// A conversation's id, in the public shape or the internal one some
/// attach/detach notifications carry (`model.id`, `parts[].conversation_id`).
fn conversation_id_of(c: &Value) -> Option<String> {
    c.get("id")
        .and_then(id_string)
        .or_else(|| c.get("model").and_then(|m| m.get("id")).and_then(id_string))
        .or_else(|| {
            c.get("parts")
                .and_then(Value::as_array)
                .and_then(|p| p.first())
                .and_then(|p| p.get("conversation_id"))
                .and_then(id_string)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn routes_families() {
        let c = json!({"type":"contact","id":"c1"});
        assert!(matches!(
            route("contact.user.created", &c),
            Ok(Some(Action::ContactUpsert { .. }))
        ));
        assert!(matches!(
            route("contact.unarchived", &c),
            Ok(Some(Action::ContactUpsert {
                archived: Some(false),
                ..
            }))
        ));
        assert_eq!(
            route("contact.deleted", &c),
            Ok(Some(Action::ContactDelete { id: "c1".into() }))
        );
        assert_eq!(route("ticket.created", &c), Ok(None));
        assert_eq!(route("some.future.topic", &c), Ok(None));
        let deleted = json!({"type":"conversation","conversation_id":"215"});
        assert_eq!(
            route("conversation.deleted", &deleted),
            Ok(Some(Action::ConversationDelete { id: "215".into() }))
        );
        let tag = json!({"type":"contact_tag","tag":{"id":"7"},"contact":{"id":"c1"}});
        assert!(matches!(
            route("contact.user.tag.deleted", &tag),
            Ok(Some(Action::ContactTag { add: false, .. }))
        ));
        assert!(route("contact.user.created", &json!({"type":"contact"})).is_err());
    }
}
