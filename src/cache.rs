//! CACHE: the data-minimised records handlers keep, and the rules that keep
//! them right under duplicates, replays and out-of-order delivery.
//!
//! - A record carries a `stamp` (the item's `updated_at`, else the
//!   envelope's `created_at`, in unix seconds). An event older than the
//!   record does not overwrite it; an equal one rewrites the same values, so
//!   replays are idempotent.
//! - Membership lists (tags, companies, contacts of a conversation) are
//!   last-writer-wins sets: each id remembers whether it is in or out and
//!   when that was decided, so an old "tag removed" cannot undo a newer
//!   "tag added".
//! - Personal data never enters a record: the email is kept only as a keyed
//!   hash, allow-listed custom attributes are encrypted.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crypto::{self, Keys};
use crate::store::CacheKind;

const RECORD_VERSION: u8 = 1;

/// A last-writer-wins set of ids.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LwwSet(BTreeMap<String, (bool, i64)>);

impl LwwSet {
    pub fn set(&mut self, id: &str, present: bool, stamp: i64) {
        match self.0.get(id) {
            Some(&(_, at)) if at > stamp => {}
            _ => {
                self.0.insert(id.to_string(), (present, stamp));
            }
        }
    }

    /// Makes the set hold exactly `ids` as of `stamp` (for a complete list).
    pub fn replace(&mut self, ids: &[String], stamp: i64) {
        let current: Vec<String> = self.present();
        for id in ids {
            self.set(id, true, stamp);
        }
        for id in current.iter().filter(|id| !ids.contains(id)) {
            self.set(id, false, stamp);
        }
    }

    pub fn present(&self) -> Vec<String> {
        self.0.iter().filter(|(_, (p, _))| *p).map(|(k, _)| k.clone()).collect()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContactRecord {
    pub id: String,
    /// Written by releases before external ids were sealed; read only, and
    /// replaced by the sealed form on the record's next write.
    #[serde(default, rename = "external_id", skip_serializing)]
    pub legacy_external_id: Option<String>,
    /// Keyed hash of the external id (`x:` subject key without the prefix),
    /// so erasure by external id finds the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id_hash: Option<String>,
    /// The external id, encrypted (many workspaces set it to the email).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id_sealed: Option<String>,
    pub role: Option<String>,
    pub app_id: Option<String>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
    pub signed_up_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    pub companies: LwwSet,
    pub tags: LwwSet,
    pub unsubscribed_from_emails: Option<bool>,
    pub unsubscribed_from_sms: Option<bool>,
    pub archived: bool,
    /// HMAC-SHA256 of the trimmed, lower-cased email (see `crypto::Keys`).
    pub email_hash: Option<String>,
    /// Allow-listed custom attributes, encrypted (base64 of nonce+ciphertext).
    pub custom_attributes: Option<String>,
    pub stamp: i64,
    pub written_ms: i64,
    /// Where the record is filed in the expiry index (see [`Filed`]).
    #[serde(default)]
    pub index_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConversationRecord {
    pub id: String,
    pub app_id: Option<String>,
    pub state: Option<String>,
    pub open: Option<bool>,
    pub read: Option<bool>,
    pub priority: Option<String>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
    pub waiting_since: Option<i64>,
    pub snoozed_until: Option<i64>,
    pub admin_assignee_id: Option<String>,
    pub team_assignee_id: Option<String>,
    pub contacts: LwwSet,
    pub tags: LwwSet,
    pub part_count: Option<u64>,
    pub last_part_at: Option<i64>,
    pub rating: Option<i64>,
    pub source_type: Option<String>,
    pub delivered_as: Option<String>,
    pub stamp: i64,
    pub written_ms: i64,
    /// Where the record is filed in the expiry index (see [`Filed`]).
    #[serde(default)]
    pub index_ms: Option<i64>,
}

/// The expiry index files a record under the time of its first write, not
/// of every write: updating a cached record then costs no index writes.
/// Purge checks each record it finds filed before the cut-off: one written
/// since is filed again under its last write instead of being removed, so
/// records still expire exactly by their last write. `index_ms` is `None`
/// in records from releases that filed every write; those are filed under
/// `written_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Filed {
    pub written_ms: i64,
    #[serde(default)]
    pub index_ms: Option<i64>,
}

impl Filed {
    pub fn at(&self) -> i64 {
        self.index_ms.unwrap_or(self.written_ms)
    }

    /// Where a record written at `now_ms` is filed, given its previous
    /// version (if any).
    pub fn next(prev: Option<Filed>, now_ms: i64) -> i64 {
        prev.map_or(now_ms, |p| p.at())
    }
}

/// What the cache's index rules (`cache_rules`) need of a cached record.
pub trait Cached: Serialize + for<'de> Deserialize<'de> {
    const KIND: CacheKind;
    /// Intercom's id of the contact or conversation.
    fn id(&self) -> &str;
    /// Its last write and where it is filed for expiry.
    fn filed(&self) -> Filed;
    fn set_filed(&mut self, filed: Filed);
    /// The keyed hash its email is indexed under (contacts only).
    fn email_hash(&self) -> Option<&str> {
        None
    }
}

impl ContactRecord {
    pub fn filed(&self) -> Filed {
        Cached::filed(self)
    }
}

impl Cached for ContactRecord {
    const KIND: CacheKind = CacheKind::Contact;
    fn id(&self) -> &str {
        &self.id
    }
    fn filed(&self) -> Filed {
        Filed {
            written_ms: self.written_ms,
            index_ms: self.index_ms,
        }
    }
    fn set_filed(&mut self, filed: Filed) {
        (self.written_ms, self.index_ms) = (filed.written_ms, filed.index_ms);
    }
    fn email_hash(&self) -> Option<&str> {
        self.email_hash.as_deref()
    }
}

impl ConversationRecord {
    pub fn filed(&self) -> Filed {
        Cached::filed(self)
    }
}

impl Cached for ConversationRecord {
    const KIND: CacheKind = CacheKind::Conversation;
    fn id(&self) -> &str {
        &self.id
    }
    fn filed(&self) -> Filed {
        Filed {
            written_ms: self.written_ms,
            index_ms: self.index_ms,
        }
    }
    fn set_filed(&mut self, filed: Filed) {
        (self.written_ms, self.index_ms) = (filed.written_ms, filed.index_ms);
    }
}

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    serde_json::to_writer(&mut out, record).expect("serialising plain data cannot fail");
    out
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, rest)) => serde_json::from_slice(rest).ok(),
        _ => None,
    }
}

/// Turns payload values into cache fields: hashes emails, filters and
/// encrypts custom attributes, and renders records for people to read.
#[derive(Clone)]
pub struct CacheCodec {
    keys: Keys,
    allowed_attributes: Vec<String>,
}

impl CacheCodec {
    pub fn new(keys: Keys, allowed_attributes: Vec<String>) -> Self {
        CacheCodec {
            keys,
            allowed_attributes,
        }
    }

    /// The codec the configuration asks for (`[cache.contacts]
    /// custom_attributes`).
    pub fn from_settings(keys: Keys, settings: &crate::config::CacheSettings) -> Self {
        CacheCodec::new(keys, settings.contact_custom_attributes.clone())
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn email_hash(&self, email: &str) -> Option<String> {
        let e = email.trim();
        (!e.is_empty()).then(|| self.keys.email_hash(e))
    }

    /// The allow-listed custom attributes of a contact item, encrypted; `None`
    /// when nothing is allow-listed or present.
    pub fn seal_attributes(&self, contact_id: &str, attrs: Option<&Value>) -> Option<String> {
        let obj = attrs?.as_object()?;
        let kept: serde_json::Map<String, Value> = obj
            .iter()
            .filter(|(k, _)| self.allowed_attributes.iter().any(|a| a == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if kept.is_empty() {
            return None;
        }
        let plain = serde_json::to_vec(&kept).expect("serialising plain data cannot fail");
        let sealed = crypto::seal(&self.keys.cache, format!("contact:{contact_id}").as_bytes(), &plain);
        Some(base64::engine::general_purpose::STANDARD.encode(sealed))
    }

    /// Sets a contact's external id: kept only encrypted and as a keyed hash.
    pub fn set_external_id(&self, r: &mut ContactRecord, external_id: Option<String>) {
        let hash = external_id
            .as_deref()
            .map(|x| crate::identifiers::external_key(&self.keys, x)[2..].to_string());
        if r.legacy_external_id.is_none()
            && hash == r.external_id_hash
            && (hash.is_none() == r.external_id_sealed.is_none())
        {
            return; // unchanged: no new nonce, so a replay rewrites the same bytes
        }
        r.legacy_external_id = None;
        r.external_id_hash = hash;
        r.external_id_sealed = external_id.map(|x| {
            let sealed = crypto::seal(
                &self.keys.cache,
                format!("external_id:{}", r.id).as_bytes(),
                x.as_bytes(),
            );
            base64::engine::general_purpose::STANDARD.encode(sealed)
        });
    }

    /// A contact's external id, decrypted (or as an old release stored it).
    pub fn external_id(&self, r: &ContactRecord) -> Option<String> {
        if let Some(sealed) = &r.external_id_sealed {
            let bytes = base64::engine::general_purpose::STANDARD.decode(sealed).ok()?;
            let plain = crypto::open(&self.keys.cache, format!("external_id:{}", r.id).as_bytes(), &bytes).ok()?;
            return String::from_utf8(plain).ok();
        }
        r.legacy_external_id.clone()
    }

    /// Re-encrypts a record's sealed values from `self`'s keys (or, for a
    /// value an interrupted rotation already re-sealed, `next`'s) under
    /// `next`'s. `Err` names a value neither opens.
    pub fn reseal(&self, next: &CacheCodec, r: &mut ContactRecord) -> Result<bool, &'static str> {
        let mut changed = false;
        if let Some(sealed) = r.custom_attributes.clone() {
            let attrs = match self.open_attributes(&r.id, &sealed) {
                Some(a) => a,
                None if next.open_attributes(&r.id, &sealed).is_some() => return Ok(changed),
                None => return Err("custom attributes"),
            };
            let plain = serde_json::to_vec(&attrs).expect("serialising plain data cannot fail");
            let s = crypto::seal(&next.keys.cache, format!("contact:{}", r.id).as_bytes(), &plain);
            r.custom_attributes = Some(base64::engine::general_purpose::STANDARD.encode(s));
            changed = true;
        }
        if r.external_id_sealed.is_some() || r.legacy_external_id.is_some() {
            let x = match (self.external_id(r), next.external_id(r)) {
                (Some(x), _) => x,
                (None, Some(_)) => return Ok(changed),
                (None, None) => return Err("external id"),
            };
            r.external_id_sealed = None;
            r.external_id_hash = None;
            next.set_external_id(r, Some(x));
            changed = true;
        }
        Ok(changed)
    }

    pub fn open_attributes(&self, contact_id: &str, sealed: &str) -> Option<Value> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(sealed).ok()?;
        let plain = crypto::open(&self.keys.cache, format!("contact:{contact_id}").as_bytes(), &bytes).ok()?;
        serde_json::from_slice(&plain).ok()
    }

    /// The contact as operators see it (`cache show`, the admin API).
    pub fn contact_view(&self, r: &ContactRecord) -> Value {
        serde_json::json!({
            "id": r.id,
            "external_id": self.external_id(r),
            "role": r.role,
            "app_id": r.app_id,
            "created_at": r.created_at,
            "updated_at": r.updated_at,
            "signed_up_at": r.signed_up_at,
            "last_seen_at": r.last_seen_at,
            "company_ids": r.companies.present(),
            "tag_ids": r.tags.present(),
            "unsubscribed_from_emails": r.unsubscribed_from_emails,
            "unsubscribed_from_sms": r.unsubscribed_from_sms,
            "archived": r.archived,
            "email_hash": r.email_hash,
            "custom_attributes": r.custom_attributes.as_deref().and_then(|s| self.open_attributes(&r.id, s)),
            "source_updated_at": r.stamp,
            "cached_at_ms": r.written_ms,
        })
    }

    pub fn conversation_view(&self, r: &ConversationRecord) -> Value {
        serde_json::json!({
            "id": r.id,
            "app_id": r.app_id,
            "state": r.state,
            "open": r.open,
            "read": r.read,
            "priority": r.priority,
            "created_at": r.created_at,
            "updated_at": r.updated_at,
            "waiting_since": r.waiting_since,
            "snoozed_until": r.snoozed_until,
            "admin_assignee_id": r.admin_assignee_id,
            "team_assignee_id": r.team_assignee_id,
            "contact_ids": r.contacts.present(),
            "tag_ids": r.tags.present(),
            "part_count": r.part_count,
            "last_part_at": r.last_part_at,
            "rating": r.rating,
            "source_type": r.source_type,
            "delivered_as": r.delivered_as,
            "source_updated_at": r.stamp,
            "cached_at_ms": r.written_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DataKey;

    #[test]
    fn lww_set_ignores_older_decisions() {
        let mut s = LwwSet::default();
        s.set("t1", true, 10);
        s.set("t1", false, 5); // an older removal arrives late
        assert_eq!(s.present(), vec!["t1"]);
        s.set("t1", false, 11);
        assert!(s.present().is_empty());
        s.replace(&["a".into(), "b".into()], 20);
        s.replace(&["b".into()], 19); // stale full list changes nothing
        assert_eq!(s.present(), vec!["a", "b"]);
        s.replace(&["b".into()], 21);
        assert_eq!(s.present(), vec!["b"]);
    }

    #[test]
    fn attributes_are_allow_listed_and_encrypted() {
        let keys = Keys::derive(&DataKey::from_bytes([9; 32]));
        let codec = CacheCodec::new(keys, vec!["plan".into()]);
        let attrs = serde_json::json!({"plan": "pro", "birthday_at": 631152000});
        let sealed = codec.seal_attributes("c1", Some(&attrs)).unwrap();
        assert!(!sealed.contains("pro"));
        assert_eq!(
            codec.open_attributes("c1", &sealed).unwrap(),
            serde_json::json!({"plan": "pro"})
        );
        assert!(codec.open_attributes("c2", &sealed).is_none(), "bound to its contact");
        let none = CacheCodec::new(Keys::derive(&DataKey::from_bytes([9; 32])), vec![]);
        assert!(none.seal_attributes("c1", Some(&attrs)).is_none());
    }
}
