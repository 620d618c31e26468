//! PARSE: the few envelope fields the store indexes, read from a verified
//! body without copying the rest (facts.md §1.1). Every field but `topic` and
//! `data` may be missing or null; unknown fields are ignored because Intercom
//! adds fields without notice.

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::identifiers::usable;
use crate::timefmt::parse_timestamp;

/// The indexed fields of a notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: Option<String>,
    pub topic: String,
    pub app_id: Option<String>,
    /// Intercom's `created_at`, unix seconds.
    pub created_at: Option<i64>,
    pub item_type: Option<String>,
    pub item_id: Option<String>,
}

#[derive(Deserialize)]
struct RawEnvelope {
    id: Option<Value>,
    topic: Option<Value>,
    app_id: Option<Value>,
    created_at: Option<Value>,
    data: Option<Lenient<RawData>>,
}

#[derive(Deserialize)]
struct RawData {
    item: Option<Lenient<RawItem>>,
}

/// A value that is `T` when it is a JSON object, and is skipped (without
/// being built) when it is anything else: the envelope decides what a
/// notification is, and a nested field of an unexpected shape never turns
/// one into `invalid`.
struct Lenient<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(|t| Lenient(Some(t)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct RawItem {
    #[serde(rename = "type")]
    kind: Option<Value>,
    id: Option<Value>,
    conversation_id: Option<Value>,
    contact: Option<Lenient<HasId>>,
    ticket: Option<Lenient<HasId>>,
}

/// An object read for its `id` alone (the rest is skipped, not built). A
/// repeated `id` counts as its last, as in a parsed tree: never an error.
struct HasId {
    id: Option<Value>,
}

impl<'de> Deserialize<'de> for HasId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// An object key: whether it is `id`.
        struct IsId(bool);
        impl<'de> Deserialize<'de> for IsId {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Key;
                impl serde::de::Visitor<'_> for Key {
                    type Value = IsId;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("an object key")
                    }
                    fn visit_str<E>(self, key: &str) -> Result<IsId, E> {
                        Ok(IsId(key == "id"))
                    }
                }
                d.deserialize_str(Key)
            }
        }
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = HasId;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<HasId, A::Error> {
                let mut id = None;
                while let Some(IsId(is_id)) = map.next_key()? {
                    if is_id {
                        id = Some(map.next_value::<Value>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(HasId { id })
            }
        }
        d.deserialize_map(Visit)
    }
}

impl Lenient<HasId> {
    fn id(&self) -> Option<String> {
        self.0.as_ref()?.id.as_ref().and_then(id_string)
    }
}

/// Why a verified body is not a notification (kept with status `invalid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    NotJson,
    NoTopic,
    NoItem,
}

impl Invalid {
    pub fn reason(self) -> &'static str {
        match self {
            Invalid::NotJson => "body is not JSON, or not a JSON object",
            Invalid::NoTopic => "no topic, or one that is not a plain name",
            Invalid::NoItem => "no data.item object",
        }
    }
}

/// A JSON scalar as an identifier string (ids come as strings or numbers).
/// A string that cannot be an identifier (`identifiers::usable`: control
/// characters, longer than 512 bytes) is no id: the item it names has no
/// id, and the store never holds it as a key.
pub fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if usable(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The notification's own id, whatever it holds: a redelivery carries the
/// same, and one that is not a plain key is hashed into its key
/// ([`event_key`]).
fn notification_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub fn parse(body: &[u8]) -> Result<Envelope, Invalid> {
    let raw: RawEnvelope = serde_json::from_slice(body).map_err(|_| Invalid::NotJson)?;
    let topic = match raw.topic {
        Some(Value::String(t)) if usable(t.trim()) => t.trim().to_string(),
        _ => return Err(Invalid::NoTopic),
    };
    // `data.item` must be there; what it holds is the handlers' business.
    let item = raw.data.and_then(|d| d.0).and_then(|d| d.item).ok_or(Invalid::NoItem)?;
    let (item_type, item_id) = match item.0 {
        Some(item) => (
            item.kind.as_ref().and_then(|v| v.as_str().map(str::to_string)),
            item.id
                .as_ref()
                .and_then(id_string)
                .or_else(|| item.conversation_id.as_ref().and_then(id_string))
                .or_else(|| item.ticket.as_ref().and_then(Lenient::id))
                .or_else(|| item.contact.as_ref().and_then(Lenient::id)),
        ),
        None => (None, None),
    };
    Ok(Envelope {
        id: raw.id.as_ref().and_then(notification_id),
        topic,
        app_id: raw.app_id.as_ref().and_then(id_string),
        created_at: raw.created_at.as_ref().and_then(parse_timestamp),
        item_type,
        item_id,
    })
}

/// What the receiver does with a verified body.
#[derive(Debug, Clone, PartialEq)]
pub enum Classified {
    /// `ping` with a null id: answered `200`, stored nowhere (facts.md §1.5).
    Ping,
    Notification {
        key: String,
        envelope: Envelope,
    },
    /// Kept as `invalid`, under a key keyed by the store's own secret
    /// (`crypto::Keys::body_key`): an unkeyed hash of a short body could
    /// be confirmed by guessing it, and the key outlives an erasure.
    Invalid {
        why: Invalid,
    },
}

pub fn classify(body: &[u8]) -> Classified {
    match parse(body) {
        Ok(env) if env.id.is_none() && env.topic == "ping" => Classified::Ping,
        Ok(env) => Classified::Notification {
            key: event_key(&env),
            envelope: env,
        },
        Err(why) => Classified::Invalid { why },
    }
}

/// The dedup key. Intercom's notification id (`notif_<uuid>`, unique across
/// workspaces) when there is a usable one; for the rare null id the fallback
/// is a hash of (topic, item type, item id, created_at): a redelivery of the
/// same notification carries the same four values.
pub fn event_key(env: &Envelope) -> String {
    match &env.id {
        Some(id) if is_plain_key(id) => id.clone(),
        Some(id) => format!("h_{}", short_hash(&[id.as_bytes()])),
        None => {
            let created = env.created_at.map(|c| c.to_string()).unwrap_or_default();
            format!(
                "fb_{}",
                short_hash(&[
                    env.topic.as_bytes(),
                    env.item_type.as_deref().unwrap_or("").as_bytes(),
                    env.item_id.as_deref().unwrap_or("").as_bytes(),
                    created.as_bytes(),
                ])
            )
        }
    }
}

fn is_plain_key(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_envelope() {
        let body = br#"{"type":"notification_event","app_id":"abc","data":{"item":{"type":"contact","id":"c1"}},"id":"notif_1","topic":"contact.user.created","created_at":1767225600}"#;
        let env = parse(body).unwrap();
        assert_eq!(env.id.as_deref(), Some("notif_1"));
        assert_eq!(env.item_type.as_deref(), Some("contact"));
        assert_eq!(env.item_id.as_deref(), Some("c1"));
        assert_eq!(env.created_at, Some(1767225600));
        assert_eq!(event_key(&env), "notif_1");
    }

    #[test]
    fn ids_and_topics_that_cannot_be_keys() {
        let body = |topic: &str, id: Value| {
            serde_json::to_vec(&serde_json::json!({"id": "notif\u{0}x", "topic": topic, "data": {"item": {"type": "contact", "id": id}}}))
                .unwrap()
        };
        let env = parse(&body("contact.user.updated", Value::from("\u{0}"))).unwrap();
        assert_eq!(env.item_id, None, "an id with NUL is no id");
        assert_eq!(
            env.id.as_deref(),
            Some("notif\u{0}x"),
            "the notification's own id is kept"
        );
        assert!(event_key(&env).starts_with("h_"), "and hashed into its key");
        let env = parse(&body("contact.user.updated", Value::from("c".repeat(513)))).unwrap();
        assert_eq!(env.item_id, None);
        assert_eq!(
            parse(&body("contact.user.updated\u{0}", Value::from("c1"))),
            Err(Invalid::NoTopic)
        );
    }

    #[test]
    fn ping_and_null_ids() {
        let ping = br#"{"type":"notification_event","data":{"item":{"type":"ping"}},"id":null,"topic":"ping"}"#;
        assert_eq!(classify(ping), Classified::Ping);
        let read = br#"{"data":{"item":{"type":"conversation","id":"5"}},"id":null,"topic":"conversation.read","created_at":7}"#;
        let Classified::Notification { key, .. } = classify(read) else {
            panic!()
        };
        assert!(key.starts_with("fb_"));
        let Classified::Notification { key: again, .. } = classify(read) else {
            panic!()
        };
        assert_eq!(key, again, "the fallback key is stable");
    }

    #[test]
    fn invalid_bodies() {
        assert!(matches!(
            classify(b"not json"),
            Classified::Invalid {
                why: Invalid::NotJson,
                ..
            }
        ));
        assert!(matches!(
            classify(b"[1,2]"),
            Classified::Invalid {
                why: Invalid::NotJson,
                ..
            }
        ));
        assert!(matches!(
            classify(br#"{"data":{"item":{}}}"#),
            Classified::Invalid {
                why: Invalid::NoTopic,
                ..
            }
        ));
        assert!(matches!(
            classify(br#"{"topic":"x"}"#),
            Classified::Invalid {
                why: Invalid::NoItem,
                ..
            }
        ));
    }

    #[test]
    fn wrapped_items_take_the_id_of_what_they_wrap() {
        let item_id = |item: &str| {
            let body = format!(r#"{{"data":{{"item":{item}}},"id":"n","topic":"t"}}"#);
            parse(body.as_bytes()).unwrap().item_id
        };
        let tag = r#"{"type":"contact_tag","contact":{"type":"contact","id":"c9","tags":{"data":[{"id":"x"}]}},"tag":{"id":"t1"}}"#;
        assert_eq!(item_id(tag).as_deref(), Some("c9"));
        let ticket = r#"{"type":"x","ticket":{"title":{"nested":[1,{"id":"no"}]},"id":77},"contact":{"id":"c1"}}"#;
        assert_eq!(
            item_id(ticket).as_deref(),
            Some("77"),
            "a ticket's id before a contact's"
        );
        let odd = r#"{"ticket":"t","contact":{"id":"c1"}}"#;
        assert_eq!(
            item_id(odd).as_deref(),
            Some("c1"),
            "a ticket that is not an object has no id"
        );
        assert_eq!(item_id(r#"{"ticket":[{"id":"no"}],"contact":null}"#), None);
        assert_eq!(item_id(r#"{"id":"i1","ticket":{"id":"no"}}"#).as_deref(), Some("i1"));
        let repeated = r#"{"contact":{"id":"first","id":"last"}}"#;
        assert_eq!(item_id(repeated).as_deref(), Some("last"), "as a parsed tree reads it");
    }

    #[test]
    fn deleted_conversation_uses_conversation_id() {
        let body = br#"{"data":{"item":{"type":"conversation","conversation_id":"215"}},"id":"n","topic":"conversation.deleted"}"#;
        assert_eq!(parse(body).unwrap().item_id.as_deref(), Some("215"));
    }
}
