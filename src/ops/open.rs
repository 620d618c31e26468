//! Opening the store for work: the data key, recovery, and the erasures
//! and upgrades an index must have before anything reads it.

use crate::config::Settings;
use crate::crypto::{DataKey, KeySource};
use crate::store::Store;

/// Loads (or creates) the data key and opens the store: the start of every
/// command that works on the data dir.
pub fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    super::data_dir::remove_dead_stages(&settings.data_dir);
    let key = if settings.store.postgres.is_some() {
        // Every replica must use the same key: none is generated.
        let Some(configured) = settings.data_key.as_ref() else {
            anyhow::bail!(
                "store.backend = \"postgres\" needs INTERCOM_WEBHOOKS_DATA_KEY (or _FILE): every replica must use the same key, so none is generated"
            );
        };
        DataKey::parse(configured.expose())?
    } else {
        data_dir_key(settings)?
    };
    let (store, recovery) = Store::open_configured(&settings.data_dir, &key, &settings.store)?;
    if recovery.reapplied > 0 || recovery.torn_bytes > 0 {
        tracing::warn!(
            reapplied = recovery.reapplied,
            torn_bytes = recovery.torn_bytes,
            "Recovered the index from the intake log after an unclean stop."
        );
    }
    // Erasures this index does not have (restored or rebuilt): applied
    // before anything can read or process what they erased.
    let codec = crate::cache::CacheCodec::from_settings(store.keys().clone(), &settings.cache);
    crate::erasure::upgrade(&store, &codec)?;
    crate::erasure::apply_ledger(&store, &codec)?;
    let upgraded = crate::audit::upgrade(&store)?;
    if upgraded > 0 {
        tracing::warn!(
            entries = upgraded,
            "Audit log re-authenticated under the audit key (written by an older release)."
        );
    }
    tracing::info!(segments = recovery.segments, pending = recovery.pending, "Store open.");
    Ok(store)
}

/// The data key of a store kept in the data dir: configured, or generated
/// into the data dir on first use (with a warning to back it up).
fn data_dir_key(settings: &Settings) -> anyhow::Result<DataKey> {
    let has_keys = settings.data_dir.join(crate::crypto::ROOT_FILE).exists();
    if has_keys && settings.data_key.is_none() && !settings.data_dir.join(crate::crypto::KEY_FILE).exists() {
        anyhow::bail!(
            "{} holds a store but no data key is given: set INTERCOM_WEBHOOKS_DATA_KEY (or _FILE) to its key",
            settings.data_dir.display()
        );
    }
    let (key, source) = DataKey::load_or_create(settings.data_key.as_ref(), &settings.data_dir)?;
    if source == KeySource::GeneratedFile {
        tracing::warn!(
            path = %settings.data_dir.join(crate::crypto::KEY_FILE).display(),
            "No INTERCOM_WEBHOOKS_DATA_KEY given: generated a data key file. Back it up: without it the stored data cannot be read."
        );
    }
    if settings.data_dir.join(crate::crypto::ROOT_NEXT_FILE).exists() {
        anyhow::bail!(
            "a data key rotation of {} was interrupted: run `rotate-data-key` again with the same INTERCOM_WEBHOOKS_DATA_KEY and INTERCOM_WEBHOOKS_NEW_DATA_KEY",
            settings.data_dir.display()
        );
    }
    Ok(key)
}
