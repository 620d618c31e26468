//! PERSONS: the one place that decides which parts of a notification
//! identify a person. Erasure, export, the subject index and the erasure
//! ledger all go through [`identifiers`], so a kind of identifier added here
//! is found everywhere at once.
//!
//! The rule walks the whole body, whatever its topic, item type or API
//! version, and reads every JSON object in it:
//!
//! - an object whose `type` is `contact`, `user`, `lead` or `visitor` is a
//!   person: its `id` is a contact id, its `email` an email, its
//!   `external_id` and (legacy) `user_id` external ids. This covers contact
//!   items, wrapped contacts (`contact_tag`, `contact_unsubscribe`), the
//!   contacts of conversations and tickets, part and source authors who are
//!   contacts, and a rating's contact;
//! - an object with `intercom_user_id` (an `event.created` item) is a
//!   person too: that is its contact id, with its `email` and `user_id`;
//! - `merged_from` (an object or an id) links the merged-away contact id
//!   with the person it sits in, both ways;
//! - any other `email` (a teammate's, an author without a type) is an email
//!   identifier of its own, linked to nothing.
//!
//! A body that is not JSON is still searched for email addresses, so even an
//! `invalid` notification is found by its person's email.

use serde_json::Value;

use crate::crypto::Keys;

/// One person found in a notification: the identifiers that sit together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Person {
    pub contact_id: Option<String>,
    /// Trimmed, as given (hashing lower-cases).
    pub emails: Vec<String>,
    pub external_ids: Vec<String>,
}

/// Everything in a notification that identifies someone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identifiers {
    pub persons: Vec<Person>,
    /// (merged-away contact id, the contact it was merged into, if known).
    pub merges: Vec<(String, Option<String>)>,
    /// Emails outside any person object (teammates, untyped authors, or
    /// found in a body that is not JSON).
    pub other_emails: Vec<String>,
}

const PERSON_TYPES: [&str; 4] = ["contact", "user", "lead", "visitor"];

/// Reads the identifiers of a raw (verified) body.
pub fn identifiers(body: &[u8]) -> Identifiers {
    let mut out = Identifiers::default();
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => walk(&v, &mut out),
        Err(_) => out.other_emails = scan_emails(&String::from_utf8_lossy(body)),
    }
    out
}

/// The same, of a parsed body.
pub fn of_value(v: &Value) -> Identifiers {
    let mut out = Identifiers::default();
    walk(v, &mut out);
    out
}

fn scalar(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn walk(v: &Value, out: &mut Identifiers) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
        Value::Object(obj) => {
            let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
            let event_person = obj.contains_key("intercom_user_id");
            let email = scalar(obj.get("email")).filter(|e| e.contains('@'));
            if PERSON_TYPES.contains(&kind) || event_person {
                let contact_id = if event_person {
                    scalar(obj.get("intercom_user_id"))
                } else {
                    scalar(obj.get("id"))
                };
                let external_ids: Vec<String> = ["external_id", "user_id"]
                    .iter()
                    .filter_map(|k| scalar(obj.get(*k)))
                    .collect();
                if let Some(from) = obj.get("merged_from") {
                    let from_id = scalar(Some(from)).or_else(|| scalar(from.get("id")));
                    if let Some(f) = from_id {
                        out.merges.push((f, contact_id.clone()));
                    }
                }
                let person = Person {
                    contact_id,
                    emails: email.into_iter().collect(),
                    external_ids,
                };
                if person != Person::default() {
                    out.persons.push(person);
                }
            } else {
                if let Some(e) = email {
                    out.other_emails.push(e);
                }
                if let Some(from) = obj.get("merged_from") {
                    if let Some(f) = scalar(Some(from)).or_else(|| scalar(from.get("id"))) {
                        out.merges.push((f, None));
                    }
                }
            }
            obj.values().for_each(|child| walk(child, out));
        }
        // Intercom embeds JSON documents in strings (a conversation part's
        // `event_details.data` names the participant and who removed them).
        Value::String(s) if s.starts_with('{') || s.starts_with('[') => {
            if let Ok(inner) = serde_json::from_str::<Value>(s) {
                walk(&inner, out);
            }
        }
        _ => {}
    }
}

/// Email-shaped tokens in free text (for bodies that are not JSON).
fn scan_emails(text: &str) -> Vec<String> {
    let ok = |c: char| c.is_alphanumeric() || "._%+-@".contains(c);
    text.split(|c: char| !ok(c))
        .filter(|t| {
            let mut parts = t.split('@');
            matches!((parts.next(), parts.next(), parts.next()), (Some(l), Some(d), None)
                if !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.'))
        })
        .map(str::to_string)
        .collect()
}

/// A subject key: how the index, the erasure ledger and erasure name an
/// identifier. Contact ids are Intercom's opaque ids and stay as they are
/// (the index has always held them); emails and external ids are keyed
/// hashes, so the index holds nothing personal in plaintext.
pub fn contact_key(id: &str) -> String {
    id.to_string()
}

pub fn email_key(keys: &Keys, email: &str) -> String {
    format!("e:{}", keys.email_hash(email))
}

pub fn external_key(keys: &Keys, external_id: &str) -> String {
    format!("x:{}", keys.identifier_hash("external_id", external_id.trim()))
}

impl Person {
    /// This person's subject keys.
    pub fn keys(&self, keys: &Keys) -> Vec<String> {
        let mut out: Vec<String> = self.contact_id.iter().map(|c| contact_key(c)).collect();
        out.extend(self.emails.iter().map(|e| email_key(keys, e)));
        out.extend(self.external_ids.iter().map(|x| external_key(keys, x)));
        out
    }
}

impl Identifiers {
    /// Every subject key of the notification, sorted, without repeats: what
    /// the event is indexed under.
    pub fn subject_keys(&self, keys: &Keys) -> Vec<String> {
        let mut out: Vec<String> = self.persons.iter().flat_map(|p| p.keys(keys)).collect();
        out.extend(self.other_emails.iter().map(|e| email_key(keys, e)));
        for (from, into) in &self.merges {
            out.push(contact_key(from));
            out.extend(into.as_deref().map(contact_key));
        }
        out.sort();
        out.dedup();
        out
    }

    /// Groups of subject keys that name the same person: a person object's
    /// identifiers, and both sides of a merge. Erasure follows these links.
    pub fn linked_keys(&self, keys: &Keys) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = self.persons.iter().map(|p| p.keys(keys)).collect();
        for (from, into) in &self.merges {
            let mut g = vec![contact_key(from)];
            g.extend(into.as_deref().map(contact_key));
            out.push(g);
        }
        out
    }

    /// The plaintext values, for tests and for checking that none of them
    /// is left anywhere after an erasure.
    pub fn plain_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.persons {
            out.extend(p.contact_id.clone());
            out.extend(p.emails.iter().cloned());
            out.extend(p.external_ids.iter().cloned());
        }
        out.extend(self.other_emails.iter().cloned());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DataKey;

    #[test]
    fn event_created_carries_a_person() {
        let body = br#"{"type":"notification_event","topic":"event.created","id":"n","data":{"item":{"type":"event","id":"ev1","intercom_user_id":"5c9a","user_id":"12","email":"j@example.com"}}}"#;
        let ids = identifiers(body);
        assert_eq!(
            ids.persons,
            vec![Person {
                contact_id: Some("5c9a".into()),
                emails: vec!["j@example.com".into()],
                external_ids: vec!["12".into()],
            }]
        );
    }

    #[test]
    fn conversation_participants_and_authors() {
        let body = br#"{"topic":"conversation.user.replied","data":{"item":{"type":"conversation","id":"9",
            "contacts":{"type":"contact.list","contacts":[{"type":"contact","id":"a","external_id":"ext-a"},{"type":"contact","id":"b"}]},
            "source":{"author":{"type":"lead","id":"a","email":"a@example.org"}},
            "conversation_parts":{"conversation_parts":[{"author":{"type":"admin","id":"7","email":"agent@example.com"}}]}}}}"#;
        let ids = identifiers(body);
        let contacts: Vec<_> = ids.persons.iter().filter_map(|p| p.contact_id.clone()).collect();
        assert_eq!(contacts, vec!["a", "b", "a"]);
        assert_eq!(ids.other_emails, vec!["agent@example.com"]);
        let keys = Keys::derive(&DataKey::from_bytes([3; 32]));
        let subjects = ids.subject_keys(&keys);
        assert!(subjects.contains(&"a".to_string()) && subjects.contains(&"b".to_string()));
        assert!(subjects.contains(&email_key(&keys, "A@Example.org ")));
        assert!(subjects.contains(&external_key(&keys, "ext-a")));
        assert!(!subjects.iter().any(|s| s.contains("example")), "hashes only");
    }

    #[test]
    fn json_inside_strings_is_read() {
        let body = br#"{"data":{"item":{"type":"conversation","id":"9","parts":[{"data":"{\"participant\":{\"type\":\"user\",\"id\":\"u7\",\"email\":\"u7@example.com\"}}"}]}}}"#;
        let ids = identifiers(body);
        assert_eq!(ids.persons[0].contact_id.as_deref(), Some("u7"));
        assert_eq!(ids.persons[0].emails, vec!["u7@example.com"]);
    }

    #[test]
    fn merges_link_both_ways() {
        let body = br#"{"data":{"item":{"type":"contact","id":"u1","merged_from":{"type":"contact","id":"l1"}}}}"#;
        let ids = identifiers(body);
        assert_eq!(ids.merges, vec![("l1".to_string(), Some("u1".to_string()))]);
        let keys = Keys::derive(&DataKey::from_bytes([3; 32]));
        assert!(ids
            .linked_keys(&keys)
            .contains(&vec!["l1".to_string(), "u1".to_string()]));
    }

    #[test]
    fn bodies_that_are_not_json_still_give_emails() {
        let ids = identifiers(b"{\"topic\": \"x\", \"email\": \"zoe@example.org\" truncated");
        assert_eq!(ids.other_emails, vec!["zoe@example.org"]);
        assert!(identifiers(b"not json @ all a@b").other_emails.is_empty());
    }

    #[test]
    fn shapes_never_matter() {
        for body in [
            &br#"{"data":{"item":{"type":"contact","id":null,"email":5}}}"#[..],
            br#"{"data":{"item":[1,"x",{"type":"user","id":7}]}}"#,
            br#"[]"#,
            br#"{"type":{"nested":true},"id":{"a":1}}"#,
        ] {
            let _ = identifiers(body);
        }
        let ids = identifiers(br#"{"data":{"item":[1,"x",{"type":"user","id":7}]}}"#);
        assert_eq!(ids.persons[0].contact_id.as_deref(), Some("7"));
    }
}
