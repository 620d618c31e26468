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

/// Payload sealing: the event key is the associated data, so a payload
/// cannot be moved to another event's row.
pub fn seal_body(key: &PartKey, event_key: &str, body: &[u8]) -> Vec<u8> {
    crypto::seal(&key.key, event_key.as_bytes(), body)
}

pub fn open_body(key: &PartKey, event_key: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    crypto::open(&key.key, event_key.as_bytes(), sealed).ok()
}
