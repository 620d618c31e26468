//! The PostgreSQL schema, in versioned migrations applied at open (and by
//! `intercom-webhooks migrate`), each in its own transaction under an
//! advisory lock, so replicas starting together apply each once. A
//! database whose schema is newer than this binary knows is refused.

use tokio_postgres::Client;

use super::pg_err;
use crate::store::StoreError;

/// Serialises migrations across replicas (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x6977_5f6d_6967; // "iw_mig"

/// Version n is `MIGRATIONS[n - 1]`. Never edit one that has shipped: add
/// the next.
pub const MIGRATIONS: &[&str] = &[
    // 1: events in time partitions (created as intake needs them), dedup
    // markers, payload keys per partition, the cache, erasure, audit.
    r#"
    CREATE TABLE iw_meta (name text PRIMARY KEY, value bytea NOT NULL);
    CREATE TABLE iw_part_keys (part bigint NOT NULL, version bigint NOT NULL, wrapped bytea NOT NULL, PRIMARY KEY (part, version));
    CREATE TABLE iw_dedup (
        key text PRIMARY KEY,
        part bigint NOT NULL,
        received_ms bigint NOT NULL,
        last_seen_ms bigint NOT NULL,
        has_event boolean NOT NULL DEFAULT true
    );
    CREATE INDEX iw_dedup_markers ON iw_dedup (received_ms) WHERE NOT has_event;
    CREATE TABLE iw_events (
        part bigint NOT NULL,
        key text NOT NULL,
        received_ms bigint NOT NULL,
        status smallint NOT NULL,
        topic text NOT NULL,
        version bigint NOT NULL DEFAULT 1,
        deliveries integer NOT NULL DEFAULT 1,
        meta bytea NOT NULL,
        body bytea,
        key_version bigint NOT NULL,
        due_ms bigint NOT NULL,
        claim_owner text,
        claim_until bigint,
        PRIMARY KEY (part, key)
    ) PARTITION BY RANGE (part);
    -- Payloads are sealed (incompressible): never try to compress them.
    ALTER TABLE iw_events ALTER COLUMN body SET STORAGE EXTERNAL;
    CREATE INDEX iw_events_time ON iw_events (received_ms, key);
    CREATE INDEX iw_events_queue ON iw_events (due_ms) WHERE status IN (0, 3);
    CREATE INDEX iw_events_failed ON iw_events (received_ms) WHERE status = 4;
    CREATE TABLE iw_subjects (subject text NOT NULL, key text NOT NULL, PRIMARY KEY (subject, key));
    CREATE INDEX iw_subjects_key ON iw_subjects (key);
    CREATE TABLE iw_cache (
        kind smallint NOT NULL, id text NOT NULL, value bytea NOT NULL, version bigint NOT NULL,
        PRIMARY KEY (kind, id)
    );
    CREATE TABLE iw_tombstones (
        kind smallint NOT NULL, id text NOT NULL, deleted_at bigint NOT NULL, written_ms bigint NOT NULL,
        PRIMARY KEY (kind, id)
    );
    CREATE TABLE iw_expiry (class smallint NOT NULL, ms bigint NOT NULL, id text NOT NULL, PRIMARY KEY (class, ms, id));
    CREATE TABLE iw_email_index (hash text NOT NULL, contact_id text NOT NULL, PRIMARY KEY (hash, contact_id));
    CREATE TABLE iw_ledger (seq bigserial PRIMARY KEY, entry text NOT NULL);
    CREATE TABLE iw_erased (subject text PRIMARY KEY, at_ms bigint NOT NULL);
    CREATE TABLE iw_shred (part bigint PRIMARY KEY, queued_ms bigint NOT NULL);
    CREATE TABLE iw_audit (seq bigint PRIMARY KEY, entry bytea NOT NULL);
    "#,
    // 2: keys and ids compared byte by byte (the "C" collation), as the
    // embedded store orders them, whatever the database's default: cheaper
    // index comparisons (no locale), and listings in the same order on both
    // backends. Indexes on these columns are rebuilt; the rows stay.
    r#"
    ALTER TABLE iw_dedup ALTER COLUMN key TYPE text COLLATE "C";
    ALTER TABLE iw_events ALTER COLUMN key TYPE text COLLATE "C";
    ALTER TABLE iw_subjects ALTER COLUMN subject TYPE text COLLATE "C", ALTER COLUMN key TYPE text COLLATE "C";
    ALTER TABLE iw_cache ALTER COLUMN id TYPE text COLLATE "C";
    ALTER TABLE iw_tombstones ALTER COLUMN id TYPE text COLLATE "C";
    ALTER TABLE iw_expiry ALTER COLUMN id TYPE text COLLATE "C";
    ALTER TABLE iw_email_index ALTER COLUMN hash TYPE text COLLATE "C", ALTER COLUMN contact_id TYPE text COLLATE "C";
    ALTER TABLE iw_erased ALTER COLUMN subject TYPE text COLLATE "C";
    "#,
];

/// The schema version of this binary.
pub fn latest() -> i32 {
    MIGRATIONS.len() as i32
}

/// The database's schema version (0: none yet).
pub async fn version(client: &Client) -> Result<i32, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('iw_schema') IS NOT NULL", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_opt("SELECT version FROM iw_schema", &[])
        .await
        .map_err(pg_err)?;
    Ok(row.map_or(0, |r| r.get(0)))
}

/// Applies every migration the database lacks; returns (from, to).
/// Refuses a database newer than this binary.
pub async fn migrate(client: &mut Client) -> Result<(i32, i32), StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS iw_schema (version int NOT NULL)")
        .await
        .map_err(pg_err)?;
    let current: i32 = tx
        .query_opt("SELECT version FROM iw_schema", &[])
        .await
        .map_err(pg_err)?
        .map_or(0, |r| r.get(0));
    let latest = latest();
    if current > latest {
        return Err(StoreError::Unavailable(format!(
            "the database's schema is version {current}, newer than this binary's {latest}: upgrade intercom-webhooks"
        )));
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(sql).await.map_err(pg_err)?;
        tracing::info!(version = n + 1, "Database schema migrated.");
    }
    if current == 0 {
        tx.execute("INSERT INTO iw_schema VALUES ($1)", &[&latest])
            .await
            .map_err(pg_err)?;
    } else if current < latest {
        tx.execute("UPDATE iw_schema SET version = $1", &[&latest])
            .await
            .map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)?;
    Ok((current, latest))
}

/// Connects to `url` and migrates (the `migrate` command).
pub async fn migrate_url(url: &str) -> Result<(i32, i32), StoreError> {
    let (mut client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(pg_err)?;
    let driver = tokio::spawn(conn);
    let done = migrate(&mut client).await;
    drop(client);
    let _ = driver.await;
    done
}
