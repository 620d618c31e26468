//! ERASE, locally: finding everything we hold about a person and forgetting
//! it. No Intercom call is made here (that is `privacy`), so the worker's
//! erasure on a `contact.deleted` webhook depends on nothing that talks to
//! the network.
//!
//! **Finding.** A person is named by one identifier (a contact id, an email
//! or an external id), but may be known to us by several: a lead merged
//! into a user, a contact whose email is also in an `event.created`, an
//! external id that is the email. [`find`] starts from the identifier's
//! subject key and follows links until nothing new turns up: the events
//! indexed under a key are read, and every person object in them that
//! holds the key adds its other identifiers (see `identifiers`); a cached
//! contact adds its email and external id hashes; an email hash adds the
//! cached contacts that have it. Other people in the same notification (the
//! other participants of a conversation) are not followed.
//!
//! **The door first.** [`sweep`] writes the person's identifiers to the
//! erasure ledger (`store::ledger`, the erased set workers consult through
//! [`covers`]) *before* it looks for anything, and waits for the handler
//! runs already under way (`Store::erasure_barrier`): whatever is stored or
//! handled after that point is erased on arrival by the worker, and the
//! search then finds everything stored before. Identifiers the search
//! discovers (a contact's email) go through the same door, and the search
//! runs again, until it finds nothing new.
//!
//! **Forgetting.** [`erase`] forgets every event found (from then on
//! nothing of it is listed, shown, exported, replayed or processed), then
//! removes and tombstones the cached contacts and the cached conversations
//! they take part in, read again after the events went (a handler run of
//! one of them may have cached a conversation meanwhile). The log segments
//! holding the records are queued and rewritten without them by
//! `Store::shred` (at once for an operator's erasure, batched for webhook
//! erasures), and their old keys destroyed. A last ledger line names
//! everything erased, conversations included, from which a restored or
//! rebuilt index is brought up to date ([`apply_ledger`]).
//!
//! Every step can run again: a crash anywhere is finished by running the
//! whole sweep once more (`erasure_jobs` for an operator's erasure; the
//! `contact.deleted` notification, queued until its sweep is done, for a
//! webhook's).

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde::Serialize;

use crate::cache::{decode, CacheCodec, ContactRecord, ConversationRecord};
use crate::cache_rules;
use crate::identifiers;
use crate::store::{CacheKind, LedgerEntry, Store, StoreError};
use crate::timefmt::now_ms;

/// Whose data: the identifier an operator (or a webhook) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Email(String),
    ContactId(String),
    ExternalId(String),
}

impl Subject {
    /// The subject key this identifier is indexed under.
    pub fn key(&self, codec: &CacheCodec) -> String {
        match self {
            Subject::Email(e) => identifiers::email_key(codec.keys(), e),
            Subject::ContactId(c) => identifiers::contact_key(c.trim()),
            Subject::ExternalId(x) => identifiers::external_key(codec.keys(), x),
        }
    }

    /// The keyed hash the audit log records instead of the identifier.
    pub fn audit_hash(&self, codec: &CacheCodec) -> String {
        match self {
            Subject::Email(e) => codec.keys().audit_hash(&format!("email:{}", e.trim().to_lowercase())),
            Subject::ContactId(c) => codec.keys().audit_hash(&format!("contact:{}", c.trim())),
            Subject::ExternalId(x) => codec.keys().audit_hash(&format!("external_id:{}", x.trim())),
        }
    }
}

/// A subject key that is a contact id (not a hash of an email or external id).
pub fn is_contact_key(key: &str) -> bool {
    !key.starts_with("e:") && !key.starts_with("x:")
}

/// Everything we hold about one person.
#[derive(Debug, Default, Clone)]
pub struct Found {
    /// Every subject key that names them.
    pub subjects: BTreeSet<String>,
    /// Keys of the stored notifications that carry any of those.
    pub events: BTreeSet<String>,
    /// Cached contacts among their contact ids.
    pub cached_contacts: usize,
    /// Cached conversations they take part in.
    pub conversations: Vec<String>,
}

impl Found {
    pub fn contact_ids(&self) -> Vec<String> {
        self.subjects.iter().filter(|s| is_contact_key(s)).cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.cached_contacts == 0 && self.conversations.is_empty()
    }
}

/// Follows every link from `seeds` (subject keys). Reads and decrypts the
/// payloads it passes through. Blocking.
pub fn find(store: &Store, codec: &CacheCodec, seeds: &[String]) -> Result<Found, StoreError> {
    let mut found = Found::default();
    let mut queue: VecDeque<String> = seeds.iter().cloned().collect();
    while let Some(s) = queue.pop_front() {
        if !found.subjects.insert(s.clone()) {
            continue;
        }
        if let Some(hash) = s.strip_prefix("e:") {
            queue.extend(store.contacts_for_email_hash(hash)?);
        } else if is_contact_key(&s) {
            if let Some(r) = store
                .cache_get(CacheKind::Contact, &s)?
                .and_then(|b| decode::<ContactRecord>(&b))
            {
                found.cached_contacts += 1;
                queue.extend(r.email_hash.map(|h| format!("e:{h}")));
                queue.extend(r.external_id_hash.map(|h| format!("x:{h}")));
                if let Some(x) = &r.legacy_external_id {
                    queue.push_back(identifiers::external_key(codec.keys(), x));
                }
            }
        }
        for meta in store.events_for_subject(&s)? {
            found.events.insert(meta.key.clone());
            let Some(body) = store.read_body(&meta)? else { continue };
            for group in identifiers::identifiers(&body).linked_keys(codec.keys()) {
                if group.contains(&s) {
                    queue.extend(group.into_iter().filter(|k| !found.subjects.contains(k)));
                }
            }
        }
    }
    found.conversations = conversations_of(store, &found.contact_ids())?;
    Ok(found)
}

/// Writes `subjects` to the erased set (durably) and waits for every
/// handler run of this process that started before: from here on, any
/// event that carries one of them is erased by the worker that takes it
/// (see [`covers`]). Blocking; never call it while holding the handler gate.
pub fn close_door(store: &Store, subjects: &[String]) -> Result<(), StoreError> {
    if subjects.is_empty() {
        return Ok(());
    }
    store.ledger_append(&LedgerEntry {
        at_ms: now_ms(),
        subjects: subjects.to_vec(),
        conversations: Vec::new(),
    })?;
    store.erasure_barrier();
    Ok(())
}

/// An erasure from its seeds (subject keys): the door closed on them,
/// everything linked to them found, its identifiers through the door too
/// (and searched again until nothing new turns up), then all of it
/// forgotten (see [`erase`]). Safe to run again after a crash at any
/// point. Blocking.
pub fn sweep(
    store: &Store,
    codec: &CacheCodec,
    seeds: &[String],
    keep: Option<&str>,
    shred_now: bool,
) -> Result<(Found, Erased), StoreError> {
    let mut door: BTreeSet<String> = seeds.iter().cloned().collect();
    close_door(store, seeds)?;
    crate::failpoint::hit_settled("erase:after-door", || {
        let _ = store.flush_index();
    });
    let found = loop {
        let found = find(store, codec, &door.iter().cloned().collect::<Vec<_>>())?;
        let new: Vec<String> = found.subjects.difference(&door).cloned().collect();
        if new.is_empty() {
            break found;
        }
        close_door(store, &new)?;
        door.extend(new);
    };
    let erased = erase(store, &found, keep, shred_now)?;
    Ok((found, erased))
}

/// What an erasure removed.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct Erased {
    pub cached_contacts: u64,
    pub cached_conversations: u64,
    pub events: u64,
    /// Log segments queued to be rewritten without the erased records.
    pub log_segments_queued: u64,
    /// ...and rewritten by the time this returned (0 when left to the
    /// background pass).
    pub log_segments_rewritten: u64,
}

/// Forgets everything in `found` but the event `keep` (the `contact.deleted`
/// notification being handled): the events, then the cached contacts and
/// conversations (tombstoned). Records the erasure in the ledger, and with
/// `shred_now` rewrites the log segments before returning. Call it with
/// the door closed ([`sweep`]). Blocking.
pub fn erase(store: &Store, found: &Found, keep: Option<&str>, shred_now: bool) -> Result<Erased, StoreError> {
    erase_noting(store, found, keep, shred_now, true)
}

/// [`erase`]; with `always_note` false the last ledger line is written
/// only if anything was erased (the ledger applied again at open names
/// it all already).
fn erase_noting(
    store: &Store,
    found: &Found,
    keep: Option<&str>,
    shred_now: bool,
    always_note: bool,
) -> Result<Erased, StoreError> {
    let mut out = Erased::default();
    // The events first: a handler run of one of them that is under way (a
    // database holds its event's row until it commits) finishes before its
    // event goes, so whatever it cached is there to be forgotten next.
    let keys: Vec<String> = found
        .events
        .iter()
        .filter(|k| Some(k.as_str()) != keep)
        .cloned()
        .collect();
    let events = store.erase_events(&keys, shred_now)?;
    out.events = events.events;
    out.log_segments_queued = events.segments_queued;
    crate::failpoint::hit_settled("erase:after-events", || {
        let _ = store.flush_index();
    });
    let contacts = found.contact_ids();
    out.cached_contacts = forget_cached(store, CacheKind::Contact, &contacts)?;
    // The conversations as they are now that the events are gone.
    let mut conversations: BTreeSet<String> = found.conversations.iter().cloned().collect();
    conversations.extend(conversations_of(store, &contacts)?);
    let conversations: Vec<String> = conversations.into_iter().collect();
    out.cached_conversations = forget_cached(store, CacheKind::Conversation, &conversations)?;
    if always_note || out.events + out.cached_contacts + out.cached_conversations > 0 {
        store.ledger_append(&LedgerEntry {
            at_ms: now_ms(),
            subjects: found.subjects.iter().cloned().collect(),
            conversations,
        })?;
    }
    // Every line in the ledger was appended after its erasure was written
    // to this index, or belongs to an erasure still under way, which a
    // crash leaves to be run again (its job, or its queued notification):
    // all of them are applied here. The mark is written after the erasure
    // to the same index, whose log recovers a prefix: a crash cannot keep
    // the mark and lose the erasure, and a lost mark only makes the next
    // open apply the lines again.
    store.ledger_mark_applied(store.ledger_len()? as u64)?;
    if shred_now {
        out.log_segments_rewritten = store.shred()?;
    }
    Ok(out)
}

/// Cached conversations any of `contacts` takes part in. Erasure is rare:
/// a scan of the conversation cache is affordable.
fn conversations_of(store: &Store, contacts: &[String]) -> Result<Vec<String>, StoreError> {
    Ok(store
        .cache_all(CacheKind::Conversation)?
        .into_iter()
        .filter_map(|(id, bytes)| decode::<ConversationRecord>(&bytes).map(|r| (id, r)))
        .filter(|(_, r)| r.contacts.present().iter().any(|c| contacts.contains(c)))
        .map(|(id, _)| id)
        .collect())
}

/// Removes cached records and leaves tombstones, so late or replayed events
/// cannot bring them back. Returns how many records there were.
fn forget_cached(store: &Store, kind: CacheKind, ids: &[String]) -> Result<u64, StoreError> {
    let (now, mut removed) = (now_ms(), 0);
    for id in ids {
        let had = store.cache_txn(|tx| match kind {
            CacheKind::Contact => cache_rules::delete::<ContactRecord>(tx, id, now / 1000, now),
            CacheKind::Conversation => cache_rules::delete::<ConversationRecord>(tx, id, now / 1000, now),
        })?;
        removed += u64::from(had);
    }
    Ok(removed)
}

/// Erases every queued notification (pending or retrying) that an
/// erasure covers (see [`covers`]), but a person's deletion, which its own
/// job finishes. A worker does this as it takes one; this pass is for a
/// shared store, where a replica killed after it claimed such a
/// notification would otherwise hold it, readable, until the claim lapses
/// (`[store] claim_lease`). Run at start and every minute by `serve`.
/// Returns how many it erased. Blocking.
pub fn erase_queued_covered(store: &Store) -> Result<u64, StoreError> {
    let mut keys = Vec::new();
    for status in [crate::store::Status::Pending, crate::store::Status::Retrying] {
        let filter = crate::store::EventFilter {
            status: Some(status),
            ..Default::default()
        };
        let mut after: Option<String> = None;
        loop {
            let page = store.list(&filter, after.as_deref(), 1000)?;
            for meta in &page.events {
                if !crate::dispatch::is_deletion(&meta.topic) && covers(store, meta)? {
                    keys.push(meta.key.clone());
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    if keys.is_empty() {
        return Ok(0);
    }
    Ok(store.erase_events(&keys, false)?.events)
}

/// Whether an event belongs to someone already erased, so it must be
/// erased too instead of processed: it carries an erased contact id
/// (Intercom never reuses one, so whatever comes later about that contact
/// goes too: a late or out-of-order notification, or one stored just
/// before the erasure that the index had not taken in yet when the
/// erasure looked), or another erased identifier (an email, an external id)
/// and was received no later than that erasure. An email or external id
/// seen again after its erasure may be a new person's, and is kept.
pub fn covers(store: &Store, meta: &crate::store::EventMeta) -> Result<bool, StoreError> {
    for s in &meta.subjects {
        if let Some(at) = store.erased_at(s)? {
            if covered_by(meta, s, at) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// [`covers`], with the erasures of the event's subjects read already
/// (`Store::erased_among`, for a batch of events).
pub fn covers_among(erased: &HashMap<String, i64>, meta: &crate::store::EventMeta) -> bool {
    meta.subjects
        .iter()
        .any(|s| erased.get(s).is_some_and(|&at| covered_by(meta, s, at)))
}

fn covered_by(meta: &crate::store::EventMeta, subject: &str, erased_at: i64) -> bool {
    is_contact_key(subject) || meta.received_ms <= erased_at
}

/// Brings the index up to date with the erasure ledger: after a restore
/// from a backup taken before an erasure, an index rebuilt from the intake
/// log, or a crash while an erasure was under way (its door line written,
/// its sweep not done), everything erased since is erased again (and
/// shredded) before anything else runs: a sweep from every subject of the
/// lines not applied yet, following links as an erasure does, the
/// conversations the lines name included. Returns how many ledger entries
/// were applied.
pub fn apply_ledger(store: &Store, codec: &CacheCodec) -> Result<usize, StoreError> {
    let (entries, _) = store.ledger_unapplied()?;
    if entries.is_empty() {
        return Ok(0);
    }
    let seeds: Vec<String> = entries
        .iter()
        .flat_map(|e| e.subjects.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut found = find(store, codec, &seeds)?;
    let mut conversations: BTreeSet<String> = found.conversations.iter().cloned().collect();
    conversations.extend(entries.iter().flat_map(|e| e.conversations.iter().cloned()));
    found.conversations = conversations.into_iter().collect();
    let erased = erase_noting(store, &found, None, true, false)?;
    // Audited when it erased anything (an erasure cut short, or a restore
    // of a backup older than an erasure); a restore re-applies every line.
    if erased.events + erased.cached_contacts + erased.cached_conversations > 0 {
        crate::audit::append(
            store,
            "erase",
            serde_json::json!({
                "trigger": "ledger applied at open",
                "ledger_entries": entries.len(),
                "local": erased,
            }),
        )?;
    }
    tracing::warn!(
        entries = entries.len(),
        events = erased.events,
        segments_rewritten = erased.log_segments_rewritten,
        "Applied erasures from the ledger that this index did not have (restored or rebuilt index, or an erasure cut short)."
    );
    Ok(entries.len())
}

/// Brings a store written by an older release up to this one's privacy
/// rules, once: every stored notification is indexed under every
/// identifier it carries (older releases indexed contact ids only), and
/// cached external ids kept in plaintext are sealed. Blocking; reads every
/// payload once, so it takes a while on a large store (logged).
pub fn upgrade(store: &Store, codec: &CacheCodec) -> Result<(), StoreError> {
    const FLAG: &str = "subjects_v2";
    if store.state_flag(FLAG)? {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut reindexed = 0u64;
    store.for_each(&crate::store::EventFilter::default(), |meta| {
        if let Some(body) = store.read_body(&meta)? {
            let invalid = meta.status == crate::store::Status::Invalid;
            let subjects = identifiers::of_stored(&body, invalid).subject_keys(codec.keys());
            if store.set_subjects(&meta.key, subjects)? {
                reindexed += 1;
            }
        }
        Ok(())
    })?;
    let mut sealed = 0u64;
    for (id, bytes) in store.cache_all(CacheKind::Contact)? {
        let Some(mut r) = decode::<ContactRecord>(&bytes) else {
            continue;
        };
        let Some(x) = r.legacy_external_id.clone() else {
            continue;
        };
        codec.set_external_id(&mut r, Some(x));
        store.cache_rewrite(CacheKind::Contact, &id, &crate::cache::encode(&r))?;
        sealed += 1;
    }
    store.set_state_flag(FLAG)?;
    if reindexed > 0 || sealed > 0 {
        tracing::warn!(
            reindexed,
            sealed,
            seconds = started.elapsed().as_secs(),
            "Upgraded the store: notifications indexed under every identifier they carry, cached external ids sealed."
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{DataKey, Keys};
    use crate::store::{EventMeta, StoreSettings};

    fn open(dir: &std::path::Path) -> Store {
        let keys = Keys::derive(&DataKey::parse(&"5a".repeat(32)).unwrap());
        let settings = StoreSettings {
            segment_max_bytes: 1 << 20,
            segment_max_age: std::time::Duration::from_secs(3600),
            min_free_bytes: 0,
            shred_bytes_per_second: 0,
            postgres: None,
        };
        Store::open(dir, keys, &settings).unwrap().0
    }

    fn event(received_ms: i64, subjects: &[&str]) -> EventMeta {
        EventMeta::received(received_ms, 2, subjects.iter().map(|s| s.to_string()).collect())
    }

    /// What reaches a worker after an erasure: an erased contact id covers
    /// it whenever it was received; an erased email only if it was received
    /// before the erasure (a new person may have the address now). The
    /// ledger's subjects survive reopening, and a store whose ledger holds
    /// lines it never noted (restored, or older) notes them at open.
    #[test]
    fn an_erasure_covers_what_reaches_a_worker_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let email = identifiers::email_key(store.keys(), "late@example.org");
        let contact = identifiers::contact_key("65f0c0ffee00000000000e0e");
        let at = now_ms();
        assert!(
            !covers(&store, &event(at - 1, &[&contact, &email])).unwrap(),
            "nothing erased yet"
        );
        store
            .ledger_append(&LedgerEntry {
                at_ms: at,
                subjects: vec![contact.clone(), email.clone()],
                conversations: Vec::new(),
            })
            .unwrap();
        let check = |store: &Store| {
            assert!(
                covers(store, &event(at - 1, &[&email])).unwrap(),
                "received before the erasure"
            );
            assert!(
                !covers(store, &event(at + 1, &[&email])).unwrap(),
                "an email seen again later"
            );
            assert!(
                covers(store, &event(at + 60_000, &[&contact])).unwrap(),
                "the contact, however late"
            );
            assert!(!covers(store, &event(at - 1, &["c:someone-else"])).unwrap());
        };
        check(&store);
        store.close().unwrap();
        drop(store);
        let store = open(dir.path());
        check(&store);
        store.close().unwrap();
        drop(store);

        // A ledger line this index never noted (as after a restore's merge).
        let other = identifiers::contact_key("65f0c0ffee00000000000f0f");
        let line = serde_json::to_string(&LedgerEntry {
            at_ms: at,
            subjects: vec![other.clone()],
            conversations: Vec::new(),
        })
        .unwrap();
        crate::store::ledger::append_lines(dir.path(), &[line]).unwrap();
        let store = open(dir.path());
        assert!(covers(&store, &event(at + 1, &[&other])).unwrap(), "noted at open");
        check(&store);
        store.close().unwrap();
    }
}
