//! # intercom-webhooks
//!
//! A privacy-first receiver and processor for Intercom webhooks. The modules
//! follow the path a notification takes:
//!
//! 1. **Receive** (`http::webhook`): the public listener reads the raw body
//!    under a size and time limit.
//! 2. **Verify** (`verify`): `X-Hub-Signature` is checked over the raw bytes
//!    against every configured client secret. Only this module can make a
//!    [`verify::VerifiedWebhook`]; everything downstream takes one.
//! 3. **Parse** (`envelope`): only the envelope fields needed to index the
//!    event are read; the raw bytes are kept unchanged.
//! 4. **Dedup and store** (`ingest`, `store`): the first delivery of an id wins,
//!    its record is encrypted and appended to the intake log, and the `200` is
//!    sent only after the log has been `fdatasync`ed (group commit). sled holds
//!    the index: event metadata, statuses, time order, the cache, the audit log.
//! 5. **Dispatch** (`worker`, `dispatch`, `handlers`): workers take stored
//!    events off the request path and route them by topic to handlers that
//!    update the data-minimised cache (`cache`).
//! 6. **Purge** (`purge`): every class of data leaves after its retention; the
//!    intake log is deleted a segment at a time and each segment's key is
//!    destroyed with it, so purged payloads cannot be decrypted from lingering
//!    bytes.
//! 7. **Operate** (`ops`, `http::admin`, `cli`): inspection, replay, stats and
//!    metrics, through the admin API or directly on a stopped store.
//!
//! Architecture invariants:
//! - Handlers never see unverified bytes.
//! - Only `store` knows sled or the intake log's file format.
//! - A `200` on the webhook route means the notification is on stable media.
//! - No personal data is written in plaintext to disk, logs or metrics.

pub mod app;
pub mod audit;
pub mod cache;
pub mod cache_rules;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod discover;
pub mod dispatch;
pub mod envelope;
pub mod erasure;
pub mod erasure_jobs;
pub mod failpoint;
pub mod fsutil;
pub mod handlers;
pub mod http;
pub mod identifiers;
pub mod ingest;
pub mod intake_load;
pub mod logging;
pub mod metrics;
pub mod netaddr;
pub mod ops;
pub mod privacy;
pub mod purge;
pub mod reconcile;
pub mod redact;
pub mod render;
pub mod rotation;
pub mod samples;
pub mod secret;
pub mod server;
pub mod store;
pub mod timefmt;
pub mod verify;
pub mod worker;
