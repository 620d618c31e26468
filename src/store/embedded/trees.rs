//! The index's sled trees, one per kind of record, and what a segment's
//! entry in the `segments` tree says.

use super::*;

/// sled trees, one per kind of record.
#[derive(Clone)]
pub(crate) struct Trees {
    pub db: sled::Db,
    /// event key → [`EventMeta`]
    pub events: sled::Tree,
    /// time key (received) → () : arrival order, listing, expiry
    pub by_time: sled::Tree,
    /// time key (received) → () : events waiting for a worker
    pub pending: sled::Tree,
    /// event key → () : events whose handler gave up (status `failed`),
    /// so counting them does not read every event. Written before the
    /// event becomes failed and removed after it stops being so: an entry
    /// may outlive its status after a crash, never the other way round.
    pub failed: sled::Tree,
    /// event key → received ms (big-endian): dedup markers left after purge
    pub markers: sled::Tree,
    /// time key (received) → () : marker expiry
    pub markers_by_time: sled::Tree,
    /// segment number (big-endian) → [`SegmentInfo`]
    pub segments: sled::Tree,
    /// cache trees: id → encoded record; `cache_time`: time key → kind+id
    pub contacts: sled::Tree,
    pub conversations: sled::Tree,
    pub tombstones: sled::Tree,
    pub cache_time: sled::Tree,
    /// email hash + contact id → () : find contacts by email without the email
    pub email_index: sled::Tree,
    /// subject key + 0 + event key → () : the events that concern a person
    /// (subject keys: contact ids, keyed hashes of emails and external ids)
    pub subjects: sled::Tree,
    /// segment number (big-endian) → () : segments holding erased records,
    /// waiting to be rewritten without them (see `erasure.rs`)
    pub shred: sled::Tree,
    /// segment number (big-endian) → segment number (big-endian): a
    /// segment a shred pass replaced, and the one that holds its surviving
    /// records now, at the same offsets (index entries are not rewritten)
    pub moved: sled::Tree,
    /// subject key → when it was last erased (unix ms, big-endian): every
    /// subject of every ledger line, so a notification that reaches a worker
    /// after its person's erasure can be recognised (see `erasure::covers`)
    pub erased: sled::Tree,
    /// sequence (big-endian) → audit entry
    pub audit: sled::Tree,
    pub state: sled::Tree,
}

impl Trees {
    pub(super) fn open(db: sled::Db) -> Result<Self, StoreError> {
        Ok(Trees {
            events: db.open_tree("events")?,
            by_time: db.open_tree("by_time")?,
            pending: db.open_tree("pending")?,
            failed: db.open_tree("failed")?,
            markers: db.open_tree("markers")?,
            markers_by_time: db.open_tree("markers_by_time")?,
            segments: db.open_tree("segments")?,
            contacts: db.open_tree("contacts")?,
            conversations: db.open_tree("conversations")?,
            tombstones: db.open_tree("tombstones")?,
            cache_time: db.open_tree("cache_time")?,
            email_index: db.open_tree("email_index")?,
            subjects: db.open_tree("subjects")?,
            shred: db.open_tree("shred")?,
            erased: db.open_tree("erased")?,
            moved: db.open_tree("moved")?,
            audit: db.open_tree("audit")?,
            state: db.open_tree("state")?,
            db,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentInfo {
    pub first_ms: i64,
    pub last_ms: i64,
    pub records: u64,
    pub bytes: u64,
    pub closed: bool,
}

impl SegmentInfo {
    pub(super) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serialising plain data cannot fail")
    }
    pub(super) fn decode(b: &[u8]) -> Option<Self> {
        serde_json::from_slice(b).ok()
    }
}
