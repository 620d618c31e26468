//! Actions on the data dir as a whole: backup (here or through the admin
//! API), restore and key rotation (with the store closed).

use std::fs::File;
use std::io::{BufWriter, Seek};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{OpsError, Target};
use crate::config::Settings;
use crate::crypto::{self, DataKey};
pub use crate::rotation::Rotated;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupResult {
    /// Index entries and files written (a backup taken here).
    pub index_entries: Option<u64>,
    pub files: Option<u64>,
    /// Bytes received (a backup through the admin API).
    pub bytes: Option<u64>,
    pub via: String,
}

/// Writes a backup of the target's store into `file`.
pub async fn backup(target: &Target, file: File) -> Result<(BackupResult, File), OpsError> {
    match target {
        Target::Remote(r) => {
            let mut w = BufWriter::new(file);
            let bytes = r.download("/admin/backup", &mut w).await?;
            let file = w.into_inner().map_err(|e| StoreError::Io(e.into_error()))?;
            let result = BackupResult {
                index_entries: None,
                files: None,
                bytes: Some(bytes),
                via: "admin API".into(),
            };
            Ok((result, file))
        }
        Target::Local(local) => {
            let (store, settings) = (local.store.clone(), local.settings.clone());
            let made = tokio::task::spawn_blocking(move || -> Result<_, OpsError> {
                let mut w = BufWriter::new(file);
                let (entries, files) = write_backup(&store, &settings, &mut w)?;
                let file = w.into_inner().map_err(|e| StoreError::Io(e.into_error()))?;
                let result = BackupResult {
                    index_entries: Some(entries),
                    files: Some(files),
                    bytes: None,
                    via: "store".into(),
                };
                Ok((result, file))
            })
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))??;
            Ok(made)
        }
    }
}

/// A backup in an unnamed file (`O_TMPFILE`) on the data dir's disk,
/// rewound: nothing is left behind if the process dies meanwhile, and it
/// is not in a memory-backed /tmp. For the admin API to stream. Blocking.
pub fn backup_to_unnamed_file(store: &Store, settings: &Settings) -> Result<File, OpsError> {
    // A replica of the database may not have made its data dir yet.
    crate::fsutil::private_dir_all(store.dir()).map_err(StoreError::from)?;
    let mut file = crate::fsutil::unnamed_private_file(store.dir()).map_err(StoreError::from)?;
    write_backup(store, settings, &mut BufWriter::new(&mut file))?;
    file.rewind().map_err(StoreError::from)?;
    Ok(file)
}

/// Writes a backup of `store`: the embedded store's own; for a PostgreSQL
/// store, a copy staged in the data dir in the embedded store's format
/// (see [`crate::store::copy::backup_through_embedded`]), which `restore`
/// reads and `migrate-store` moves into a database again. Blocking, on a
/// thread of the runtime's blocking pool.
fn write_backup(store: &Store, settings: &Settings, out: &mut dyn std::io::Write) -> Result<(u64, u64), OpsError> {
    let Some(pg) = &settings.store.postgres else {
        return Ok(store.backup(out, None)?);
    };
    let key = data_key(settings)?;
    let rt = tokio::runtime::Handle::current();
    let root = rt
        .block_on(crate::store::database_root_keys(&pg.url, &key))
        .map_err(|e| OpsError::Unavailable(e.to_string()))?;
    let stage = settings.data_dir.join(format!(
        "{STAGE_PREFIX}{}-{}",
        std::process::id(),
        hex::encode(&crypto::random_key()[..8])
    ));
    let ((entries, files), copied) = crate::store::copy::backup_through_embedded(
        store,
        &root,
        &key,
        &stage,
        &settings.store,
        &crate::reconcile::WATERMARKS,
        out,
    )?;
    tracing::info!(
        events = copied.events,
        erasures = copied.erasures,
        "Backup of the database written."
    );
    Ok((entries, files))
}

/// A backup of a database is staged in the data dir under this name, with
/// the pid of the process writing it.
const STAGE_PREFIX: &str = ".backup-stage-";

/// Removes what backups of a database left in the data dir when their
/// process died (a stage whose pid is not running): nothing an erasure
/// could reach outlives the next start. (Its data opens for nobody anyway:
/// see `store::StagedKeys`.) A stage of a backup still running is left.
pub fn remove_dead_stages(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(STAGE_PREFIX)) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| p != std::process::id() && Path::new(&format!("/proc/{p}")).exists());
        if alive {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                tracing::warn!(stage = %entry.path().display(), "Removed what an interrupted backup left in the data dir.")
            }
            Err(e) => {
                tracing::error!(stage = %entry.path().display(), error = %e, "Could not remove what an interrupted backup left in the data dir.")
            }
        }
    }
}

/// The data key: configured, or the data dir's generated `data.key`.
fn data_key(settings: &Settings) -> Result<DataKey, OpsError> {
    let unavailable = |e: &dyn std::fmt::Display| OpsError::Unavailable(e.to_string());
    match &settings.data_key {
        Some(k) => DataKey::parse(k.expose()).map_err(|e| unavailable(&e)),
        None => DataKey::load_or_create(None, &settings.data_dir)
            .map(|(key, _)| key)
            .map_err(|e| unavailable(&e)),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreResult {
    pub data_dir: String,
    pub index_entries: u64,
    pub files: u64,
    pub ledger_entries_added: usize,
    pub erasures_in_ledger: usize,
}

/// Restores a backup into an empty data dir, then applies every erasure in
/// the ledger (the backup's own, and those of the ledger it is given) before
/// anything can read the restored data. `ledger` is required unless the
/// data dir still has its own or `without_ledger` says there is none.
pub fn restore(
    settings: &Settings,
    from: &Path,
    ledger: Option<&Path>,
    without_ledger: bool,
) -> Result<RestoreResult, OpsError> {
    let own_ledger = settings.data_dir.join(crate::store::LEDGER_FILE);
    if ledger.is_none() && !without_ledger && !own_ledger.exists() {
        return Err(OpsError::BadRequest(
            "restore needs the erasure ledger of the data dir being replaced, so that nobody erased after the backup comes back: \
             --ledger FILE (its erasures.ledger), or --without-ledger when there is none"
                .into(),
        ));
    }
    let mut input = std::io::BufReader::new(
        File::open(from).map_err(|e| OpsError::Unavailable(format!("cannot read {}: {e}", from.display())))?,
    );
    let (entries, files) = crate::store::restore(&mut input, &settings.data_dir)?;
    let merged = match ledger {
        Some(l) => crate::store::merge_ledger(&settings.data_dir, l)?,
        None => 0,
    };
    // Opening applies the ledger and shreds what it erases.
    let store = super::open_store(settings).map_err(|e| {
        OpsError::Unavailable(format!(
            "restored, but the store does not open (is the data key configured?): {e}"
        ))
    })?;
    let erasures = store.ledger_len()?;
    store.close()?;
    Ok(RestoreResult {
        data_dir: settings.data_dir.display().to_string(),
        index_entries: entries,
        files,
        ledger_entries_added: merged,
        erasures_in_ledger: erasures,
    })
}

/// Rotates the data key to `INTERCOM_WEBHOOKS_NEW_DATA_KEY` (see
/// `rotation`), with no server holding the store. The new key is written
/// into the data dir only with `write_key_file`; a generated `data.key`
/// (which opens nothing now) is removed.
pub fn rotate_data_key(settings: &Settings, write_key_file: bool) -> Result<Rotated, OpsError> {
    let in_use = || OpsError::Unavailable("the store is in use: stop the server before rotating the data key".into());
    let new = settings.new_data_key.as_ref().ok_or_else(|| {
        OpsError::BadRequest(
            "INTERCOM_WEBHOOKS_NEW_DATA_KEY (or _FILE) is not set: give the new 32-byte key, hex or base64".into(),
        )
    })?;
    let new = DataKey::parse(new.expose()).map_err(|_| {
        OpsError::BadRequest("INTERCOM_WEBHOOKS_NEW_DATA_KEY must be 32 bytes as 64 hex characters or base64".into())
    })?;
    if !settings.data_dir.join(crypto::ROOT_FILE).exists() {
        return Err(OpsError::Unavailable(format!(
            "there is no store in {}",
            settings.data_dir.display()
        )));
    }
    let resuming = settings.data_dir.join(crypto::ROOT_NEXT_FILE).exists();
    // Opening the store proves the old key works and that no server holds
    // it (a rotation being resumed cannot open it: the rotation checks both).
    if !resuming {
        match super::open_store(settings) {
            Ok(store) => store.close()?,
            Err(e) => match e.downcast_ref::<StoreError>() {
                Some(StoreError::Locked(_)) => return Err(in_use()),
                _ => return Err(OpsError::Unavailable(e.to_string())),
            },
        }
    }
    let (old, source) = DataKey::load_or_create(settings.data_key.as_ref(), &settings.data_dir)
        .map_err(|e| OpsError::Unavailable(e.to_string()))?;
    let mut doc = crate::rotation::rotate(
        &settings.data_dir,
        &settings.store,
        &old,
        &new,
        settings.cache.contact_custom_attributes.clone(),
    )
    .map_err(|e| match e {
        crate::rotation::RotationError::Store(StoreError::Locked(_)) => in_use(),
        e => OpsError::Unavailable(e.to_string()),
    })?;
    let key_file = settings.data_dir.join(crypto::KEY_FILE);
    let io = |e: std::io::Error| OpsError::Store(StoreError::Io(e));
    if write_key_file {
        crypto::replace_key_file(&settings.data_dir, &new).map_err(|e| OpsError::Unavailable(e.to_string()))?;
    } else if source != crypto::KeySource::Configured && key_file.exists() {
        std::fs::remove_file(&key_file).map_err(io)?;
    }
    doc.key_file_written = write_key_file;
    Ok(doc)
}

/// What `migrate` did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Migrated {
    pub backend: String,
    pub from_version: i32,
    pub to_version: i32,
}

/// Applies the database's schema migrations (the embedded store has none:
/// it upgrades itself when opened).
pub async fn migrate(settings: &Settings) -> Result<Migrated, OpsError> {
    let Some(pg) = &settings.store.postgres else {
        return Err(OpsError::BadRequest(
            "migrate is for store.backend = \"postgres\"; the embedded store upgrades itself when opened".into(),
        ));
    };
    let (from, to) = crate::store::migrate_database(&pg.url)
        .await
        .map_err(|e| OpsError::Unavailable(e.to_string()))?;
    Ok(Migrated {
        backend: "postgres".into(),
        from_version: from,
        to_version: to,
    })
}

/// Moves the embedded store of the data dir (the server stopped) into the
/// configured PostgreSQL database, which must be empty: the database takes
/// the data dir's root keys (wrapped by the data key), then everything is
/// copied (see `store::copy`). The data dir is left as it was: keep it
/// until the replicas run on the database, then shred it.
pub async fn migrate_store(settings: &Settings) -> Result<crate::store::copy::CopyReport, OpsError> {
    let unavailable = |e: &dyn std::fmt::Display| OpsError::Unavailable(e.to_string());
    let Some(pg) = &settings.store.postgres else {
        return Err(OpsError::BadRequest(
            "migrate-store moves the data dir's store into PostgreSQL: set [store] backend = \"postgres\" and INTERCOM_WEBHOOKS_DATABASE_URL".into(),
        ));
    };
    let dir = &settings.data_dir;
    if !dir.join(crypto::ROOT_FILE).exists() {
        return Err(OpsError::NotFound(format!("there is no store in {}", dir.display())));
    }
    let key = data_key(settings)?;
    if settings.data_key.is_none() {
        tracing::warn!(
            "The data dir's generated data.key was used: give the replicas that key as INTERCOM_WEBHOOKS_DATA_KEY."
        );
    }
    let root = crypto::load_or_create_root(dir, &key).map_err(|e| unavailable(&e))?;
    let mut embedded_settings = settings.store.clone();
    embedded_settings.postgres = None;
    let (from, _) = Store::open(dir, crypto::Keys::from_root(&root), &embedded_settings).map_err(|e| match e {
        StoreError::Locked(_) => OpsError::Unavailable(format!("{e}: stop serve before moving the store")),
        e => OpsError::Store(e),
    })?;
    crate::store::prepare_database_for(&pg.url, &key, &root)
        .await
        .map_err(|e| unavailable(&e))?;
    let (to, _) = Store::open_configured(dir, &key, &settings.store)?;
    let rt = tokio::runtime::Handle::current();
    let (src, dst) = (from.clone(), to.clone());
    let report = tokio::task::spawn_blocking(move || {
        crate::store::copy::copy_into(&src, &dst, &crate::reconcile::WATERMARKS, &rt, &|n| {
            if n % 10_000 == 0 {
                tracing::info!(events = n, "Moving the store.");
            }
        })
    })
    .await
    .map_err(|e| unavailable(&e))??;
    crate::audit::append(
        &to,
        "store_moved",
        serde_json::json!({"events": report.events, "cached_records": report.cached_records, "erasures": report.erasures}),
    )?;
    from.close()?;
    to.close()?;
    Ok(report)
}
