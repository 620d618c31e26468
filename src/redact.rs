//! Masking of personal data in text: the second line of defence for logs.
//! Code logs ids, topics and counts only; this catches whatever slips
//! through (an email in an error message, a phone in a field) before a log
//! line leaves the process.

/// Replaces email addresses, international phone numbers and card numbers.
pub fn mask(text: &str) -> std::borrow::Cow<'_, str> {
    if !needs_scan(text) {
        return std::borrow::Cow::Borrowed(text);
    }
    let masked = mask_cards(&mask_phones(&mask_emails(text)));
    std::borrow::Cow::Owned(masked)
}

fn needs_scan(text: &str) -> bool {
    text.contains('@') || text.contains('+') || text.bytes().filter(u8::is_ascii_digit).count() >= 13
}

fn is_local(c: char) -> bool {
    c.is_alphanumeric() || "._%+-'".contains(c)
}

fn is_domain(c: char) -> bool {
    c.is_alphanumeric() || c == '.' || c == '-'
}

fn mask_emails(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut emitted = 0; // chars of `chars` already copied to out
    while i < chars.len() {
        if chars[i] == '@' {
            let mut start = i;
            while start > emitted && is_local(chars[start - 1]) {
                start -= 1;
            }
            let mut end = i + 1;
            while end < chars.len() && is_domain(chars[end]) {
                end += 1;
            }
            while end > i + 1 && chars[end - 1] == '.' {
                end -= 1;
            }
            let domain: String = chars[i + 1..end].iter().collect();
            if start < i && domain.contains('.') && !domain.starts_with('.') {
                out.extend(&chars[emitted..start]);
                out.push_str("[email]");
                emitted = end;
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out.extend(&chars[emitted..]);
    out
}

/// `+` followed by 8 to 15 digits, with spaces, dashes, dots or brackets.
fn mask_phones(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '+' && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit() || *c == '(') {
            let mut end = i + 1;
            let mut digits = 0;
            while end < chars.len() && (chars[end].is_ascii_digit() || " -.()".contains(chars[end])) {
                if chars[end].is_ascii_digit() {
                    digits += 1;
                }
                end += 1;
            }
            while end > i + 1 && !chars[end - 1].is_ascii_digit() {
                end -= 1;
            }
            if (8..=15).contains(&digits) {
                out.push_str("[phone]");
                i = end;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// 13 to 19 digits (optionally grouped by spaces or dashes) that pass the
/// Luhn check, not part of a longer word.
fn mask_cards(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let boundary = i == 0 || !chars[i - 1].is_alphanumeric();
        if boundary && chars[i].is_ascii_digit() {
            let mut end = i;
            let mut digits = Vec::new();
            while end < chars.len()
                && (chars[end].is_ascii_digit()
                    || ((chars[end] == ' ' || chars[end] == '-')
                        && chars.get(end + 1).is_some_and(char::is_ascii_digit)))
            {
                if let Some(d) = chars[end].to_digit(10) {
                    digits.push(d);
                }
                end += 1;
            }
            let at_word_end = end == chars.len() || !chars[end].is_alphanumeric();
            if at_word_end
                && (13..=19).contains(&digits.len())
                && luhn(&digits)
                && (digits.len() == 16 || end - i > digits.len())
            {
                out.push_str("[card]");
                i = end;
                continue;
            }
            out.extend(&chars[i..end]);
            i = end;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_emails() {
        assert_eq!(mask("user zoe.example@example.org said"), "user [email] said");
        assert_eq!(mask("a@b"), "a@b");
        assert_eq!(mask("x=Jöhn.Doe+tag@mail.example.co.uk."), "x=[email].");
    }

    #[test]
    fn masks_phones_and_cards() {
        assert_eq!(mask("call +1 555 0100 1234 now"), "call [phone] now");
        assert_eq!(mask("card 4111 1111 1111 1111 ok"), "card [card] ok");
        assert_eq!(mask("card 4111111111111111"), "card [card]");
    }

    #[test]
    fn leaves_ids_alone() {
        for s in [
            "conversation_id=215472621202693",
            "webhook_id=notif_0b6a3c1e-7d2f-4e59-9a61-3f2d8c4b5e70",
            "contact=65f0c0ffee0000000000a001 took 12ms",
            "at 1767225600123",
        ] {
            assert_eq!(mask(s), s);
        }
    }
}

/// Keys whose scalar values `events show` prints: envelope and structural
/// fields (ids, types, topics, states, times, counts). Everything else is
/// masked, so a field Intercom adds tomorrow is masked until it is listed.
const SHOWN_KEYS: &[&str] = &[
    "type",
    "id",
    "topic",
    "app_id",
    "workspace_id",
    "state",
    "open",
    "read",
    "part_type",
    "delivered_as",
    "priority",
    "category",
    "role",
    "status",
    "delivery_status",
    "delivery_attempts",
    "redacted",
    "deleted",
    "archived",
    "anonymous",
    "rating",
    "channel",
    "message_type",
    "total_count",
    "has_more",
    "page",
    "per_page",
    "total_pages",
    "self",
];

/// Identifier-shaped keys that are the workspace's own names for people,
/// not Intercom's ids: masked despite the `_id` suffix.
const PERSON_ID_KEYS: &[&str] = &["external_id", "user_id", "email_id", "pseudonym_id"];

/// Objects whose keys are chosen by the workspace or hold free text: every
/// value under them is masked, whatever its key.
const FREE_FORM: &[&str] = &[
    "custom_attributes",
    "ticket_attributes",
    "metadata",
    "ext_metadata",
    "event_details",
];

/// Intercom objects about a person whose every value is personal but whose
/// `type` is schema: only `type` is shown under them.
const PERSONAL_OBJECTS: &[&str] = &["location", "social_profiles", "attachments", "avatar"];

/// How much of a subtree is masked.
#[derive(Clone, Copy, PartialEq)]
enum Mask {
    /// Allow-listed keys are shown.
    AllowListed,
    /// Only `type` is shown.
    AllButType,
    /// Everything is masked.
    All,
}

fn shown(key: &str) -> bool {
    if PERSON_ID_KEYS.contains(&key) {
        return false;
    }
    SHOWN_KEYS.contains(&key)
        || key.ends_with("_id")
        || key.ends_with("_ids")
        || key.ends_with("_at")
        || key.ends_with("_count")
        || key.ends_with("_until")
        || key.ends_with("_since")
        || key.starts_with("time_to_")
        || key.starts_with("count_")
}

/// A payload as `events show` prints it: allow-listed. Booleans and nulls
/// are shown; a string or number is shown only under a key of
/// `SHOWN_KEYS` (or an id, time or count suffix), never under a
/// free-form object; every other value becomes `"[redacted]"`. The JSON's
/// shape (keys, nesting, list lengths) is kept.
pub fn payload(v: &serde_json::Value) -> serde_json::Value {
    walk(v, None, Mask::AllowListed)
}

fn walk(v: &serde_json::Value, key: Option<&str>, mask: Mask) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, val)| {
                    let inner = match mask {
                        Mask::All => Mask::All,
                        _ if FREE_FORM.contains(&k.as_str()) => Mask::All,
                        _ if PERSONAL_OBJECTS.contains(&k.as_str()) => Mask::AllButType,
                        m => m,
                    };
                    (k.clone(), walk(val, Some(k), inner))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|i| walk(i, key, mask)).collect()),
        Value::Null | Value::Bool(_) => v.clone(),
        _ if mask == Mask::AllowListed && key.is_some_and(shown) => v.clone(),
        _ if mask == Mask::AllButType && key == Some("type") => v.clone(),
        _ => Value::String("[redacted]".into()),
    }
}

#[cfg(test)]
mod payload_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_values_and_keeps_shape() {
        let v = json!({"type":"contact","id":"c1","email":"zoe@example.org","name":"Zoë",
            "location":{"type":"location","city":"Berlin"},"custom_attributes":{"plan":"pro"},
            "notes":"call zoe@example.org","created_at":5,"tags":{"data":[{"id":"t"}]}});
        let r = payload(&v);
        assert_eq!(r["id"], "c1");
        assert_eq!(r["email"], "[redacted]");
        assert_eq!(r["location"]["type"], "location");
        assert_eq!(r["location"]["city"], "[redacted]");
        assert_eq!(r["custom_attributes"]["plan"], "[redacted]");
        assert_eq!(r["notes"], "[redacted]");
        assert_eq!(r["created_at"], 5);
        assert_eq!(r["tags"]["data"][0]["id"], "t");
        assert!(!r.to_string().contains("Zo"));
    }

    #[test]
    fn anything_not_allow_listed_is_masked() {
        let v = json!({"type":"conversation","id":"9","ip_address":"203.0.113.9","brand_new_field":"Zoë",
            "description":"Agent Ann Smith called", "external_id":"zoe@example.org","user_id":"12",
            "admin_assignee_id":42,"statistics":{"time_to_admin_reply":30,"count_reopens":1},
            "custom_attributes":{"id":"secret-id","updated_at":"x"},"open":true,"title":null,
            "data":"{\"participant\":{\"email\":\"p@example.org\"}}","age":33});
        let r = payload(&v);
        for masked in [
            "ip_address",
            "brand_new_field",
            "description",
            "external_id",
            "user_id",
            "data",
            "age",
        ] {
            assert_eq!(r[masked], "[redacted]", "{masked}");
        }
        assert_eq!(r["custom_attributes"]["id"], "[redacted]");
        assert_eq!(r["custom_attributes"]["updated_at"], "[redacted]");
        assert_eq!(r["admin_assignee_id"], 42);
        assert_eq!(r["statistics"]["time_to_admin_reply"], 30);
        assert_eq!(r["open"], true);
        assert_eq!(r["title"], serde_json::Value::Null);
        assert_eq!(
            (r["type"].as_str(), r["id"].as_str()),
            (Some("conversation"), Some("9"))
        );
    }
}
