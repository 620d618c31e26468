//! STORE: where notifications, their processing state, the cache, the
//! audit chain and the erasure ledger are kept, behind one seam.
//!
//! [`Store`] is the handle every layer above uses: a cheap clone of an
//! `Arc<dyn Backend>`. [`Backend`] (in `backend`) is the seam, with the
//! contract a backend must honour written beside it. [`embedded`] is the
//! default backend (intake log + sled, in the data dir). The types here
//! ([`EventMeta`], [`Work`], [`CacheTx`], filters, settings, errors) are
//! shared by every backend; this module imports nothing from the layers
//! above (only `crypto`, `failpoint`, `fsutil` and `timefmt`, which are below it).

mod backend;
mod cache;
mod codec;
pub mod copy;
pub mod embedded;
pub mod event;
mod filter;
pub mod ledger;
pub mod postgres;
mod settings;
#[cfg(test)]
mod tests;
mod work;

use std::collections::HashMap;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::crypto::Keys;

pub use backend::{Backend, BatchRun, BoxFuture, ErasedEvents, ExpiredEvents, HandlerRun};
pub use cache::{CacheKind, CacheTx, Expiry, TxError, TxResult};
pub use embedded::{restore, Embedded};
pub use event::{time_key, Attempt, EventMeta, Location, Status};
pub use filter::{EventFilter, EventPage, Glob};
pub use ledger::{merge as merge_ledger, LedgerEntry, LEDGER_FILE};
pub use postgres::Postgres;
pub use settings::{PostgresSettings, StoreSettings};
pub use work::{Completion, Fresh, Snapshot, Work};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at {0} is in use by another process (is `serve` running?)")]
    Locked(String),
    #[error("store i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("index: {0}")]
    Sled(String),
    /// The backend's keys (a message of its own error type).
    #[error("{0}")]
    Keyring(String),
    /// The backend's payload files or tables.
    #[error("{0}")]
    Log(String),
    #[error("the store cannot take writes: {0}")]
    Unavailable(String),
    #[error("the store is closed")]
    Closed,
    /// A value in the request that the store cannot hold (the database
    /// refused it as a data exception): the request's fault, not the
    /// store's, and nothing about the store's health.
    #[error("the store cannot hold a value of this request ({0})")]
    Refused(String),
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// A handler refused an event (the message holds no personal data).
    #[error("{0}")]
    Rejected(String),
}

/// What became of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored,
    Duplicate,
}

/// What `open` found and repaired.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Recovery {
    pub segments: usize,
    pub reapplied: u64,
    pub torn_bytes: u64,
    pub pending: u64,
}

/// Events by status, by topic, and duplicate deliveries seen.
pub type Counts = (HashMap<Status, u64>, HashMap<String, u64>, u64);

/// The largest record a backend stores: a notification's metadata and body
/// together (the intake log's limit).
pub const MAX_RECORD: u32 = embedded::log::MAX_RECORD;

/// Key rotation's step below the seam, with the store closed: the
/// backend's payload keys, wrapped by `old`, are wrapped by `new` instead,
/// in one atomic step. Returns how many keys moved.
/// The keys of a backup written from a staged copy (a database's, see
/// [`copy::backup_through_embedded`]): the stage's segment keys are wrapped
/// by a key only the process holds, so a stage left by a crash can be
/// decrypted by nobody, and the stage holds no root key file. The backup
/// gets its segment keys re-wrapped `wrap_from` → `wrap_to` and
/// `root_file` (the root keys wrapped by the data key) as its root key.
pub struct StagedKeys {
    pub root_file: Vec<u8>,
    pub wrap_from: [u8; 32],
    pub wrap_to: [u8; 32],
}

pub fn rewrap_keys(dir: &Path, old: &[u8; 32], new: &[u8; 32]) -> Result<u64, StoreError> {
    Ok(embedded::keyring::rewrap_file(dir, old, new)?)
}

/// Readies an empty database to receive a store whose root keys are
/// `root` (see [`copy::copy_into`]): migrates it, and stores those keys
/// (wrapped by the data key). Refuses a database that holds events, or
/// other root keys.
pub async fn prepare_database_for(
    url: &str,
    data_key: &crate::crypto::DataKey,
    root: &crate::crypto::RootKeys,
) -> Result<(), StoreError> {
    postgres::keys::adopt_root(url, data_key, root).await
}

/// The root keys of the database at `url`, unwrapped with `data_key`
/// (a backup of it carries them, wrapped the same way).
pub async fn database_root_keys(
    url: &str,
    data_key: &crate::crypto::DataKey,
) -> Result<crate::crypto::RootKeys, StoreError> {
    postgres::keys::read_root(url, data_key).await
}

/// Applies the PostgreSQL schema's migrations at `url` (the `migrate`
/// command); returns the versions before and after.
pub async fn migrate_database(url: &str) -> Result<(i32, i32), StoreError> {
    postgres::schema::migrate_url(url).await
}

/// The handle to the store every layer above uses.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    /// Handler runs against erasures' doors, in this process (see
    /// [`Store::handler_gate`]).
    gate: Arc<std::sync::RwLock<()>>,
}

/// Held by a handler run from its erasure check until its outcome is
/// recorded (see [`Store::handler_gate`]).
pub type HandlerGate<'a> = std::sync::RwLockReadGuard<'a, ()>;

impl Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

impl Store {
    /// Opens (or creates) the embedded store in `dir` and recovers it.
    pub fn open(dir: &Path, keys: Keys, settings: &StoreSettings) -> Result<(Store, Recovery), StoreError> {
        let (backend, recovery) = Embedded::open(dir, keys, settings)?;
        Ok((Store::from_backend(Arc::new(backend)), recovery))
    }

    /// Opens the configured backend: the embedded store in `dir` (its
    /// root keys in `dir`, wrapped by the data key), or the PostgreSQL
    /// database (its root keys in the database, wrapped by the data key).
    pub fn open_configured(
        dir: &Path,
        data_key: &crate::crypto::DataKey,
        settings: &StoreSettings,
    ) -> Result<(Store, Recovery), StoreError> {
        match &settings.postgres {
            Some(pg) => {
                let backend = Postgres::open(dir, data_key, settings, pg)?;
                Ok((Store::from_backend(Arc::new(backend)), Recovery::default()))
            }
            None => {
                let root = crate::crypto::load_or_create_root(dir, data_key)
                    .map_err(|e| StoreError::Keyring(e.to_string()))?;
                Store::open(dir, Keys::from_root(&root), settings)
            }
        }
    }

    pub fn from_backend(backend: Arc<dyn Backend>) -> Store {
        Store {
            backend,
            gate: Arc::new(std::sync::RwLock::new(())),
        }
    }

    /// Taken by a handler run before it checks whether its event's person
    /// is erased, and held until its cache writes and outcome are
    /// recorded. Never taken twice by one thread.
    pub fn handler_gate(&self) -> HandlerGate<'_> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until every handler run of this process that started before
    /// now has recorded its outcome. An erasure calls it after closing its
    /// door (its subjects durably erased): every run after that sees the
    /// erasure, every run before it has written what the sweep then finds.
    /// Not to be called while holding [`Store::handler_gate`].
    pub fn erasure_barrier(&self) {
        drop(self.gate.write().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn is_writable(&self) -> bool {
        self.not_writable().is_none()
    }

    /// Runs `f` over the cache until an attempt ends without a conflict
    /// (see [`CacheTx`]).
    pub fn cache_txn<T>(&self, f: impl Fn(&dyn CacheTx) -> TxResult<T>) -> Result<T, StoreError> {
        let mut out = None;
        self.backend.cache_attempts(&mut |tx| {
            out = Some(f(tx)?);
            Ok(())
        })?;
        out.ok_or_else(|| StoreError::Unavailable("a cache transaction ended without a result".into()))
    }

    /// Read-modify-write of an event's metadata.
    pub fn update(&self, key: &str, f: impl Fn(&mut EventMeta)) -> Result<Option<EventMeta>, StoreError> {
        self.backend.update_dyn(key, &f)
    }

    /// Every matching event, oldest first, until `f` fails.
    pub fn for_each(
        &self,
        filter: &EventFilter,
        mut f: impl FnMut(EventMeta) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.backend.for_each_dyn(filter, &mut f)
    }

    /// Appends the audit entry `make` builds from the last one.
    pub fn audit_append(&self, make: impl FnOnce(Option<(u64, Vec<u8>)>) -> Vec<u8>) -> Result<u64, StoreError> {
        let mut make = Some(make);
        self.backend.audit_append_dyn(&mut |last| match make.take() {
            Some(f) => f(last),
            None => Vec::new(),
        })
    }

    /// Removes up to `limit` audit entries from the front while `expired`.
    pub fn audit_remove_expired(&self, expired: impl Fn(&[u8]) -> bool, limit: usize) -> Result<u64, StoreError> {
        self.backend.audit_remove_expired_dyn(&expired, limit)
    }
}
