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

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

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
///
/// The body is read in one pass, without building its tree: only the
/// values of the few keys that matter are copied out (the receiver runs
/// this on every notification). An object's own person comes before those
/// of the objects inside it, and those in the order they are written.
pub fn identifiers(body: &[u8]) -> Identifiers {
    let mut out = Identifiers::default();
    if walk_document(body, &mut out).is_err() {
        out = Identifiers {
            other_emails: scan_emails(&String::from_utf8_lossy(body)),
            ..Identifiers::default()
        };
    }
    out
}

/// The identifiers a stored body is indexed under: [`identifiers`], and
/// for a body kept as `invalid` (not a notification) every email in it
/// wherever it sits ([`Identifiers::with_loose_emails`]).
pub fn of_stored(body: &[u8], invalid: bool) -> Identifiers {
    let found = identifiers(body);
    if invalid {
        found.with_loose_emails(body)
    } else {
        found
    }
}

/// Walks one whole JSON document (nothing but whitespace after it).
fn walk_document(text: &[u8], out: &mut Identifiers) -> serde_json::Result<()> {
    let mut de = serde_json::Deserializer::from_slice(text);
    Walk { out, want: false }.deserialize(&mut de)?;
    de.end()
}

/// What a value turned out to be, as far as its parent object cares.
enum Seen {
    /// A string (kept only when the parent wants it: `type` is compared
    /// untrimmed) or a number (as `serde_json` prints it).
    Text(String),
    /// An object, with its `id` as an identifier (for `merged_from`).
    Object {
        id: Option<String>,
    },
    Other,
}

/// The keys of an object that say who it is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Type,
    Id,
    Email,
    ExternalId,
    UserId,
    IntercomUserId,
    MergedFrom,
    Other,
}

impl Key {
    fn of(name: &str) -> Key {
        match name {
            "type" => Key::Type,
            "id" => Key::Id,
            "email" => Key::Email,
            "external_id" => Key::ExternalId,
            "user_id" => Key::UserId,
            "intercom_user_id" => Key::IntercomUserId,
            "merged_from" => Key::MergedFrom,
            _ => Key::Other,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Key, E> {
                Ok(Key::of(name))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The longest identifier read, in bytes. Intercom's contact ids are 24
/// characters and an email at most 254; anything near this is text an
/// outsider wrote, not an identifier.
pub const MAX_IDENTIFIER: usize = 512;

/// Whether `text` can be an identifier: not empty, at most
/// [`MAX_IDENTIFIER`] bytes, and no control characters (NUL among them,
/// which PostgreSQL's `text` cannot hold). Subject keys, cache ids and
/// topics are all held to this, so that what an outsider can write into a
/// notification (a message's subject, a custom attribute) never makes a
/// value that the store cannot take, and so fails another notification's
/// write.
pub fn usable(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_IDENTIFIER && !text.chars().any(char::is_control)
}

/// A trimmed identifier that is [`usable`].
fn identifier(text: Option<String>) -> Option<String> {
    let text = text?;
    let trimmed = text.trim();
    if !usable(trimmed) {
        return None;
    }
    match trimmed.len() {
        n if n == text.len() => Some(text),
        _ => Some(trimmed.to_string()),
    }
}

/// Visits one value, recording the persons in it in `out`.
struct Walk<'a> {
    out: &'a mut Identifiers,
    /// The parent wants this value's text (it is under one of [`Key`]'s
    /// names).
    want: bool,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Seen;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Seen, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = Seen;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Seen, E> {
        Ok(Seen::Other)
    }
    fn visit_unit<E>(self) -> Result<Seen, E> {
        Ok(Seen::Other)
    }
    fn visit_i64<E>(self, n: i64) -> Result<Seen, E> {
        Ok(if self.want {
            Seen::Text(n.to_string())
        } else {
            Seen::Other
        })
    }
    fn visit_u64<E>(self, n: u64) -> Result<Seen, E> {
        Ok(if self.want {
            Seen::Text(n.to_string())
        } else {
            Seen::Other
        })
    }
    fn visit_f64<E>(self, n: f64) -> Result<Seen, E> {
        Ok(match serde_json::Number::from_f64(n) {
            Some(n) if self.want => Seen::Text(n.to_string()),
            _ => Seen::Other,
        })
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Seen, E> {
        // Intercom embeds JSON documents in strings (a conversation part's
        // `event_details.data` names the participant and who removed
        // them); one that does not parse is only text.
        if s.starts_with('{') || s.starts_with('[') {
            let mut inner = Identifiers::default();
            if walk_document(s.as_bytes(), &mut inner).is_ok() {
                self.out.persons.append(&mut inner.persons);
                self.out.merges.append(&mut inner.merges);
                self.out.other_emails.append(&mut inner.other_emails);
            }
        }
        Ok(if self.want {
            Seen::Text(s.to_string())
        } else {
            Seen::Other
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seen, A::Error> {
        while seq
            .next_element_seed(Walk {
                out: &mut *self.out,
                want: false,
            })?
            .is_some()
        {}
        Ok(Seen::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Seen, A::Error> {
        let out = self.out;
        // Where this object's own findings go: before its children's.
        let (at_person, at_merge, at_email) = (out.persons.len(), out.merges.len(), out.other_emails.len());
        let mut kind: Option<String> = None;
        let (mut id, mut email, mut external_id, mut user_id) = (None, None, None, None);
        let mut intercom_user_id: Option<Option<String>> = None;
        let mut merged_from: Option<Seen> = None;
        while let Some(key) = map.next_key::<Key>()? {
            let seen = map.next_value_seed(Walk {
                out: &mut *out,
                want: key != Key::Other,
            })?;
            // A repeated key counts as its last value, as in a parsed tree.
            let text = |seen: Seen| match seen {
                Seen::Text(t) => Some(t),
                _ => None,
            };
            match key {
                Key::Type => kind = text(seen),
                Key::Id => id = text(seen),
                Key::Email => email = text(seen),
                Key::ExternalId => external_id = text(seen),
                Key::UserId => user_id = text(seen),
                Key::IntercomUserId => intercom_user_id = Some(text(seen)),
                Key::MergedFrom => merged_from = Some(seen),
                Key::Other => {}
            }
        }
        let merged_from = merged_from.and_then(|m| match m {
            Seen::Text(t) => identifier(Some(t)),
            Seen::Object { id } => id,
            Seen::Other => None,
        });
        let object_id = identifier(id);
        let email = identifier(email).filter(|e| e.contains('@'));
        let event_person = intercom_user_id.is_some();
        if PERSON_TYPES.contains(&kind.as_deref().unwrap_or("")) || event_person {
            let contact_id = match intercom_user_id {
                Some(i) => identifier(i),
                None => object_id.clone(),
            };
            if let Some(from) = merged_from {
                out.merges.insert(at_merge, (from, contact_id.clone()));
            }
            let person = Person {
                contact_id,
                emails: email.into_iter().collect(),
                external_ids: [external_id, user_id].into_iter().filter_map(identifier).collect(),
            };
            if person != Person::default() {
                out.persons.insert(at_person, person);
            }
        } else {
            if let Some(e) = email {
                out.other_emails.insert(at_email, e);
            }
            if let Some(from) = merged_from {
                out.merges.insert(at_merge, (from, None));
            }
        }
        Ok(Seen::Object { id: object_id })
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
                && usable(t)
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

    /// With every email-shaped token of `body` as well, wherever it sits:
    /// for a signed body that is not a notification (kept as `invalid`),
    /// whose shape the rule cannot know, so that such a body is found by
    /// its person's email all the same (`["alice@example.org"]`). Emails
    /// written with JSON escapes (`\u0040`) are not found this way.
    pub fn with_loose_emails(mut self, body: &[u8]) -> Identifiers {
        for e in scan_emails(&String::from_utf8_lossy(body)) {
            if !self.other_emails.contains(&e) && !self.persons.iter().any(|p| p.emails.contains(&e)) {
                self.other_emails.push(e);
            }
        }
        self
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
    use proptest::prelude::*;
    use serde_json::Value;

    /// The rule as first written: the whole body parsed into a tree, then
    /// walked. The one-pass reader must find exactly what this finds.
    fn tree_walk(body: &[u8]) -> Identifiers {
        fn scalar(v: Option<&Value>) -> Option<String> {
            match v? {
                Value::String(s) if usable(s.trim()) => Some(s.trim().to_string()),
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
                    let from = obj
                        .get("merged_from")
                        .and_then(|f| scalar(Some(f)).or_else(|| scalar(f.get("id"))));
                    if PERSON_TYPES.contains(&kind) || event_person {
                        let key = if event_person { "intercom_user_id" } else { "id" };
                        let contact_id = scalar(obj.get(key));
                        if let Some(f) = from {
                            out.merges.push((f, contact_id.clone()));
                        }
                        let person = Person {
                            contact_id,
                            emails: email.into_iter().collect(),
                            external_ids: ["external_id", "user_id"]
                                .iter()
                                .filter_map(|k| scalar(obj.get(*k)))
                                .collect(),
                        };
                        if person != Person::default() {
                            out.persons.push(person);
                        }
                    } else {
                        out.other_emails.extend(email);
                        out.merges.extend(from.map(|f| (f, None)));
                    }
                    obj.values().for_each(|child| walk(child, out));
                }
                Value::String(s) if s.starts_with('{') || s.starts_with('[') => {
                    if let Ok(inner) = serde_json::from_str::<Value>(s) {
                        walk(&inner, out);
                    }
                }
                _ => {}
            }
        }
        let mut out = Identifiers::default();
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => walk(&v, &mut out),
            Err(_) => out.other_emails = scan_emails(&String::from_utf8_lossy(body)),
        }
        out
    }

    /// Order aside (a tree's objects iterate by key, the reader goes in
    /// document order), the same findings.
    fn sorted(mut ids: Identifiers) -> Identifiers {
        ids.persons.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        ids.merges.sort();
        ids.other_emails.sort();
        ids
    }

    #[test]
    fn text_that_cannot_be_an_identifier_is_none() {
        let long = "c".repeat(MAX_IDENTIFIER + 1);
        let body = serde_json::to_vec(&serde_json::json!({
            "a": {"type": "user", "id": "\u{0}", "email": "nul\u{0}@example.org"},
            "b": {"type": "lead", "id": "a\u{1}b", "external_id": "x\ty"},
            "c": {"type": "contact", "id": long},
            "d": "{\"type\":\"user\",\"id\":\"\\u0000\"}",
            "e": {"type": "user", "id": "ok_1", "email": " ok@example.org "},
        }))
        .unwrap();
        let ids = identifiers(&body);
        assert_eq!(ids.plain_values(), ["ok_1", "ok@example.org"]);
        assert_eq!(sorted(ids), sorted(tree_walk(&body)));
        assert!(scan_emails(&format!("{}@example.org x@y.org", "a".repeat(600))) == ["x@y.org"]);
    }

    #[test]
    fn the_one_pass_reader_finds_what_the_tree_walk_finds_in_every_capture() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/intercom/captures");
        let mut read = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let body = std::fs::read(entry.unwrap().path()).unwrap();
            let ids = identifiers(&body);
            assert_eq!(sorted(ids.clone()), sorted(tree_walk(&body)));
            read += usize::from(!ids.plain_values().is_empty());
        }
        assert!(read > 50, "the captures name people: {read}");
    }

    /// JSON values built from the names the rule reads, nested, some
    /// embedded in strings.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            prop::sample::select(vec![
                "contact",
                "user",
                "lead",
                "visitor",
                "admin",
                " contact",
                "u1",
                " u2 ",
                "",
                "  ",
                "a@example.org",
                " b@example.com ",
                "nope@",
                "{\"type\":\"user\",\"id\":\"e1\"}",
                "[1,",
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            let key = prop::sample::select(vec![
                "type",
                "id",
                "email",
                "external_id",
                "user_id",
                "intercom_user_id",
                "merged_from",
                "data",
                "x",
            ]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key, inner.clone()), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
                inner.prop_map(|v| Value::String(v.to_string())),
            ]
        })
    }

    proptest! {
        #[test]
        fn the_one_pass_reader_agrees_with_the_tree_walk(v in json()) {
            let body = serde_json::to_vec(&v).unwrap();
            prop_assert_eq!(sorted(identifiers(&body)), sorted(tree_walk(&body)));
        }

        #[test]
        fn repeated_keys_and_broken_bodies_agree_too(v in json(), cut in 0usize..400) {
            // Text as written, not re-serialised from a map: repeated keys
            // survive, and a cut body is not JSON.
            let text = format!("{{\"data\":{v},\"data\":{v},\"email\":\"z@example.org\"}}");
            let body = &text.as_bytes()[..cut.min(text.len())];
            let (one_pass, tree) = (sorted(identifiers(body)), sorted(tree_walk(body)));
            if cut >= text.len() {
                // A repeated key's first value is walked too (a tree keeps
                // only the last): never less found.
                for p in &tree.persons {
                    prop_assert!(one_pass.persons.contains(p));
                }
            } else {
                prop_assert_eq!(one_pass, tree);
            }
        }
    }

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
