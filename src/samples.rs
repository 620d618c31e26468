//! Realistic sample notifications for `simulate` and the load generator.
//! Every personal value is fake (example.org addresses, 555 numbers).

use rand::Rng;
use serde_json::{json, Value};

use crate::timefmt::now_ms;

/// Topics `simulate` has a sample for.
pub const TOPICS: &[&str] = &[
    "ping",
    "contact.user.created",
    "contact.user.updated",
    "contact.lead.created",
    "contact.archived",
    "contact.unarchived",
    "contact.deleted",
    "contact.user.tag.created",
    "contact.user.tag.deleted",
    "conversation.user.created",
    "conversation.user.replied",
    "conversation.admin.replied",
    "conversation.admin.closed",
    "conversation.deleted",
    "ticket.created",
];

fn random_uuid() -> String {
    let b: [u8; 16] = rand::thread_rng().gen();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

pub fn contact(id: &str, role: &str, updated_at: i64) -> Value {
    let ts = crate::timefmt::format_secs(updated_at);
    json!({
        "type": "contact", "id": id, "workspace_id": "abc12xyz", "external_id": "cust-1042",
        "role": role, "email": "zoe.example@example.org", "phone": "+15550100", "name": "Zoë Example",
        "avatar": null, "owner_id": null, "social_profiles": {"type": "list", "data": []},
        "has_hard_bounced": false, "marked_email_as_spam": false, "unsubscribed_from_emails": false,
        "created_at": "2026-01-01T00:00:00.000+00:00", "updated_at": ts,
        "signed_up_at": 1767225600, "last_seen_at": null, "browser": "Firefox", "os": "Linux",
        "location": {"type": "location", "country": "Germany", "region": "Berlin", "city": "Berlin", "country_code": "DEU", "continent_code": "EU"},
        "custom_attributes": {"plan": "pro", "birthday_at": 631152000},
        "tags": {"type": "list", "data": [], "url": format!("/contacts/{id}/tags"), "total_count": 0, "has_more": false},
        "notes": {"type": "list", "data": [], "url": format!("/contacts/{id}/notes"), "total_count": 0, "has_more": false},
        "companies": {"type": "list", "data": [], "url": format!("/contacts/{id}/companies"), "total_count": 0, "has_more": false},
        "utm_campaign": null, "referrer": "https://www.example.org/pricing",
        "sms_consent": false, "unsubscribed_from_sms": false, "enabled_push_messaging": null
    })
}

pub fn conversation(id: &str, contact_id: &str, updated_at: i64, state: &str) -> Value {
    json!({
        "type": "conversation", "id": id, "title": "", "created_at": updated_at - 300, "updated_at": updated_at,
        "waiting_since": updated_at, "snoozed_until": null, "open": state != "closed", "state": state, "read": false,
        "priority": "not_priority", "admin_assignee_id": null, "team_assignee_id": 5017691,
        "source": {"type": "conversation", "id": "3381000001", "delivered_as": "customer_initiated", "subject": "",
            "body": "<p>Hi, please delete my account</p>",
            "author": {"type": "user", "id": contact_id, "name": "Zoë Example", "email": "zoe.example@example.org"},
            "attachments": [], "url": "https://app.example.org/settings", "redacted": false},
        "contacts": {"type": "contact.list", "contacts": [{"type": "contact", "id": contact_id, "external_id": "cust-1042"}]},
        "teammates": {"type": "admin.list", "admins": []},
        "tags": {"type": "tag.list", "tags": []}, "conversation_rating": null, "custom_attributes": {},
        "statistics": {"type": "conversation_statistics", "count_conversation_parts": 2},
        "conversation_parts": {"type": "conversation_part.list", "total_count": 1, "conversation_parts": [
            {"type": "conversation_part", "id": "37400000001", "part_type": "comment",
             "body": "<p>My phone is +1 555 0100</p>", "created_at": updated_at, "updated_at": updated_at,
             "author": {"id": contact_id, "type": "user", "name": "Zoë Example", "email": "zoe.example@example.org"},
             "attachments": [], "redacted": false}]}
    })
}

/// A full notification envelope around `item`.
pub fn envelope(topic: &str, item: Value, created_at: i64) -> Value {
    json!({
        "type": "notification_event", "app_id": "abc12xyz",
        "data": {"type": "notification_event_data", "item": item},
        "links": {}, "id": format!("notif_{}", random_uuid()), "topic": topic,
        "delivery_status": "pending", "delivery_attempts": 1, "delivered_at": 0,
        "first_sent_at": created_at, "created_at": created_at, "self": null
    })
}

/// A sample notification of `topic`, or `None` if there is no sample.
pub fn sample(topic: &str) -> Option<Value> {
    let now = now_ms() / 1000;
    let contact_id = "65f0c0ffee0000000000a001";
    let conv_id = "215470000000001";
    let item = match topic {
        "ping" => {
            return Some(json!({"type": "notification_event", "app_id": "abc12xyz",
                "data": {"type": "notification_event_data", "item": {"type": "ping", "message": "something something interzen"}},
                "links": {}, "id": null, "topic": "ping", "delivery_status": null, "delivery_attempts": 1,
                "delivered_at": 0, "first_sent_at": now, "created_at": now, "self": null}))
        }
        "contact.user.created" | "contact.user.updated" | "contact.unarchived" => contact(contact_id, "user", now),
        "contact.lead.created" => contact("65f0c0ffee0000000000b002", "lead", now),
        "contact.archived" => {
            json!({"type": "contact", "id": contact_id, "external_id": "cust-1042", "archived": true})
        }
        "contact.deleted" => json!({"type": "contact", "id": contact_id, "external_id": "cust-1042", "deleted": true}),
        "contact.user.tag.created" | "contact.user.tag.deleted" => json!({"type": "contact_tag", "created_at": now,
            "tag": {"type": "tag", "id": "7001", "name": "vip"}, "contact": contact(contact_id, "user", now)}),
        "conversation.user.created" | "conversation.user.replied" | "conversation.admin.replied" => {
            conversation(conv_id, contact_id, now, "open")
        }
        "conversation.admin.closed" => conversation(conv_id, contact_id, now, "closed"),
        "conversation.deleted" => json!({"type": "conversation", "conversation_id": conv_id}),
        "ticket.created" => json!({"type": "ticket", "id": "215472629311235", "ticket_id": "12",
            "ticket_attributes": {"_default_title_": "Refund", "_default_description_": "Card 4111 1111 1111 1111 charged twice"},
            "contacts": {"type": "contact.list", "contacts": [{"type": "contact", "id": contact_id}]},
            "admin_assignee_id": "0", "team_assignee_id": "0", "created_at": now, "updated_at": now}),
        _ => return None,
    };
    Some(envelope(topic, item, now))
}
