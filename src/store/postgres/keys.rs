//! Keys in the database, never in clear: the root keys (`iw_meta.root`)
//! wrapped by the data key, which stays in the process; one payload key per
//! time partition (`iw_part_keys`), wrapped by a key derived from the root.
//! A partition's keys have versions: intake seals under the newest, and
//! erasure adds a newer one, re-encrypts the partition's rows under it,
//! then deletes the older keys once no row is sealed under them. Every
//! intake batch reads the key it seals under `FOR SHARE`, so the deletion
//! waits for batches still sealing under the old key and then sees their
//! rows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_postgres::GenericClient;

use super::pg_err;
use crate::crypto::{self, DataKey, RootKeys};
use crate::store::StoreError;

fn aad(part: i64, version: i64) -> Vec<u8> {
    format!("intercom-webhooks/pg-part-key/{part}/{version}").into_bytes()
}

/// The root keys of this database, made by the first replica to open it.
pub async fn root_keys(client: &impl GenericClient, data_key: &DataKey) -> Result<RootKeys, StoreError> {
    let fresh = crypto::wrap_root(data_key, &crypto::new_root());
    client
        .execute(
            "INSERT INTO iw_meta (name, value) VALUES ('root', $1) ON CONFLICT (name) DO NOTHING",
            &[&fresh],
        )
        .await
        .map_err(pg_err)?;
    let sealed: Vec<u8> = client
        .query_one("SELECT value FROM iw_meta WHERE name = 'root'", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    crypto::unwrap_root(data_key, &sealed, "the database's root keys (iw_meta)")
        .map_err(|e| StoreError::Keyring(e.to_string()))
}

/// The root keys of the database at `url` (one that a replica opened).
pub async fn read_root(url: &str, data_key: &DataKey) -> Result<RootKeys, StoreError> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(pg_err)?;
    let driver = tokio::spawn(conn);
    let row = client
        .query_opt("SELECT value FROM iw_meta WHERE name = 'root'", &[])
        .await
        .map_err(pg_err);
    drop(client);
    let _ = driver.await;
    let row = row?.ok_or_else(|| StoreError::Unavailable("the database holds no store yet".into()))?;
    crypto::unwrap_root(data_key, row.get::<_, &[u8]>(0), "the database's root keys (iw_meta)")
        .map_err(|e| StoreError::Keyring(e.to_string()))
}

/// Migrates the database at `url` and makes `root` its root keys: the
/// target of `migrate-store`, which must hold no event, and no other root
/// keys.
pub async fn adopt_root(url: &str, data_key: &DataKey, root: &RootKeys) -> Result<(), StoreError> {
    let (mut client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(pg_err)?;
    let driver = tokio::spawn(conn);
    let result = async {
        super::schema::migrate(&mut client).await?;
        let events: i64 = client
            .query_one("SELECT count(*) FROM iw_dedup", &[])
            .await
            .map_err(pg_err)?
            .get(0);
        if events > 0 {
            return Err(StoreError::Unavailable(format!(
                "the database already holds {events} notifications: move a store only into an empty one"
            )));
        }
        let existing = client
            .query_opt("SELECT value FROM iw_meta WHERE name = 'root'", &[])
            .await
            .map_err(pg_err)?;
        if let Some(row) = existing {
            let theirs = crypto::unwrap_root(data_key, row.get::<_, &[u8]>(0), "the database's root keys")
                .map_err(|e| StoreError::Keyring(e.to_string()))?;
            let same = theirs.root.derive("check") == root.root.derive("check")
                && theirs.pseudonym.derive("check") == root.pseudonym.derive("check");
            if !same {
                return Err(StoreError::Unavailable(
                    "the database has root keys of its own (a replica opened it): move a store only into a database no replica has used".into(),
                ));
            }
            return Ok(());
        }
        client
            .execute(
                "INSERT INTO iw_meta (name, value) VALUES ('root', $1)",
                &[&crypto::wrap_root(data_key, root)],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }
    .await;
    drop(client);
    let _ = driver.await;
    result
}

/// A partition key as this process holds it.
#[derive(Clone)]
pub struct PartKey {
    pub version: i64,
    pub key: Arc<[u8; 32]>,
}

/// Partition keys unwrapped so far, by (partition, version).
pub struct PartKeys {
    wrap: [u8; 32],
    known: Mutex<HashMap<(i64, i64), PartKey>>,
}

impl PartKeys {
    pub fn new(wrap: [u8; 32]) -> Self {
        PartKeys {
            wrap,
            known: Mutex::new(HashMap::new()),
        }
    }

    pub fn wrap(&self, part: i64, version: i64, key: &[u8; 32]) -> Vec<u8> {
        crypto::seal(&self.wrap, &aad(part, version), key)
    }

    /// Unwraps (once) a key read from `iw_part_keys`.
    pub fn learn(&self, part: i64, version: i64, wrapped: &[u8]) -> Result<PartKey, StoreError> {
        if let Some(k) = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(part, version))
        {
            return Ok(k.clone());
        }
        let plain = crypto::open(&self.wrap, &aad(part, version), wrapped).map_err(|_| {
            StoreError::Keyring(format!("the key of partition {part} does not open under this data key"))
        })?;
        let key: [u8; 32] = plain
            .try_into()
            .map_err(|_| StoreError::Keyring(format!("the key of partition {part} is damaged")))?;
        let k = PartKey {
            version,
            key: Arc::new(key),
        };
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((part, version), k.clone());
        Ok(k)
    }

    /// Whether this process has seen a key of `part` (its table exists).
    pub fn knows_part(&self, part: i64) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .any(|(p, _)| *p == part)
    }

    /// Forgets the keys of `part` older than `version` (destroyed).
    pub fn forget_older(&self, part: i64, version: i64) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(p, v), _| *p != part || *v >= version);
    }

    /// Forgets every key of `part` (dropped by purge).
    pub fn forget_part(&self, part: i64) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(p, _), _| *p != part);
    }
}

/// Payloads are compressed (zstd, level 1) before they are sealed: a
/// webhook's JSON shrinks about fourfold, so its row stays within the
/// table's page instead of going to TOAST, which more than halves the
/// database's work per notification (`docs/performance.md`). The sealed
/// form tells which it is: a packed payload's associated data is the event
/// key followed by `PACKED`, a NUL and a tag (a key kept in the database
/// never holds a NUL, so no plain key can end that way), so a payload sealed before compression was added
/// (the event key alone) still opens, as itself, and neither form can be
/// passed off as the other.
const PACKED: &[u8] = b"\0zstd";

fn packed_aad(event_key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(event_key.len() + PACKED.len());
    aad.extend_from_slice(event_key.as_bytes());
    aad.extend_from_slice(PACKED);
    aad
}

thread_local! {
    /// One compression context per thread, kept: making one costs more
    /// than compressing a webhook with it (its tables, freshly allocated,
    /// fault in page by page).
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// A payload compressed for [`seal_packed`]; done where the request is
/// handled, so the batch that seals it only encrypts.
pub fn pack(body: &[u8]) -> Result<Vec<u8>, StoreError> {
    COMPRESSOR
        .with_borrow_mut(|c| {
            let c = match c {
                Some(c) => c,
                None => c.insert(zstd::bulk::Compressor::new(1)?),
            };
            c.compress(body)
        })
        .map_err(|e| StoreError::Log(format!("compressing a payload: {e}")))
}

/// What [`pack`] made, back as it was. (Authenticated first, so not a
/// decompression bomb: the size in its frame header is the one `pack` wrote.)
fn unpack(packed: &[u8]) -> Option<Vec<u8>> {
    let size = zstd::zstd_safe::get_frame_content_size(packed).ok().flatten()?;
    DECOMPRESSOR.with_borrow_mut(|d| {
        if d.is_none() {
            *d = zstd::bulk::Decompressor::new().ok();
        }
        d.as_mut()?.decompress(packed, usize::try_from(size).ok()?).ok()
    })
}

/// Payload sealing: the event key is the associated data, so a payload
/// cannot be moved to another event's row.
pub fn seal_packed(key: &PartKey, event_key: &str, packed: &[u8]) -> Vec<u8> {
    crypto::seal(&key.key, &packed_aad(event_key), packed)
}

pub fn seal_body(key: &PartKey, event_key: &str, body: &[u8]) -> Result<Vec<u8>, StoreError> {
    Ok(seal_packed(key, event_key, &pack(body)?))
}

/// The payload, whichever form it was sealed in; `None` if it does not
/// open under `key` for `event_key`.
pub fn open_body(key: &PartKey, event_key: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    if let Ok(packed) = crypto::open(&key.key, &packed_aad(event_key), sealed) {
        return unpack(&packed);
    }
    crypto::open(&key.key, event_key.as_bytes(), sealed).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part_key(byte: u8) -> PartKey {
        PartKey {
            version: 1,
            key: Arc::new([byte; 32]),
        }
    }

    const BODY: &[u8] = br#"{"type":"notification_event","topic":"contact.user.created","data":{"item":{"type":"contact","id":"6a1f","email":"ada@example.com","name":"Ada","custom_attributes":{}}},"id":"notif_1","created_at":1700000000,"delivery_attempts":1,"first_sent_at":1700000000,"links":{},"app_id":"abc123","delivery_status":null,"self":null}"#;

    #[test]
    fn a_payload_is_compressed_then_sealed_and_opens_as_it_was() {
        let key = part_key(7);
        let body = BODY.repeat(8);
        let sealed = seal_body(&key, "notif_1", &body).unwrap();
        assert!(
            sealed.len() < body.len() / 3,
            "{} bytes sealed from {}",
            sealed.len(),
            body.len()
        );
        assert!(!sealed.windows(15).any(|w| w == b"ada@example.com"));
        assert_eq!(open_body(&key, "notif_1", &sealed).as_deref(), Some(&body[..]));
        // Bound to its event and its key.
        assert_eq!(open_body(&key, "notif_2", &sealed), None);
        assert_eq!(open_body(&part_key(8), "notif_1", &sealed), None);
    }

    #[test]
    fn a_payload_sealed_before_compression_still_opens_and_the_forms_cannot_be_confused() {
        let key = part_key(7);
        let legacy = crypto::seal(&key.key, b"notif_1", BODY);
        assert_eq!(open_body(&key, "notif_1", &legacy).as_deref(), Some(BODY));
        // A packed payload is not taken for a plain one, nor the reverse.
        let packed = seal_packed(&key, "notif_1", &pack(BODY).unwrap());
        assert!(crypto::open(&key.key, b"notif_1", &packed).is_err());
        assert!(crypto::open(&key.key, &packed_aad("notif_1"), &legacy).is_err());
    }
}
