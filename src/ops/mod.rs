//! OPERATE: every operator action, once. Each is an [`Action`]: a typed
//! request with a typed result, run here on a store this process holds
//! ([`Local`]), and served by the admin API at its [`Route`]. The CLI and
//! the admin API are thin adapters: the CLI runs an action through
//! [`Target`] (the store itself when no server holds it, else the admin API
//! of the server that does), the admin API runs it on the server's store.
//! Actions on the data dir as a whole (backup, restore, key rotation) are
//! functions in [`data_dir`].

pub mod data_dir;
mod events;
mod open;
pub mod remote;
mod state;
mod subject;
mod target;
pub mod workspace;

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::store::Glob;
pub use events::{
    EventDetail, EventList, EventSummary, HistoryEntry, ListEvents, Replay, ReplayRequest, ReplayResult, ShowEvent,
};
pub use open::open_store;
pub use state::{
    AuditCheck, AuditList, AuditListing, AuditVerify, CacheClear, CacheShow, CachedRecord, Cleared, ErasureBacklog,
    Overview, OverviewReport, Purge, PurgeResult, Stats, StatsReport, WebhookHealth,
};
pub use subject::{Erase, ErasureJobs, Export, ListErasures, SubjectReport, SubjectRequest};
pub use target::Target;

use crate::cache::CacheCodec;
use crate::client::IntercomClient;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::store::{BoxFuture, EventFilter, Status, Store, StoreError};
use crate::timefmt::{now_ms, parse_time_bound};

/// Errors of operator requests, with the exit code / HTTP status they map to.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Exit 2, HTTP 400.
    #[error("{0}")]
    BadRequest(String),
    /// Exit 3, HTTP 404.
    #[error("{0}")]
    NotFound(String),
    /// Exit 1, HTTP 500.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Intercom's API failed us. Exit 1, HTTP 502.
    #[error("{0}")]
    Upstream(String),
    /// Neither the store nor the admin API could be used. Exit 1.
    #[error("{0}")]
    Unavailable(String),
}

impl From<crate::privacy::PrivacyError> for OpsError {
    fn from(e: crate::privacy::PrivacyError) -> Self {
        use crate::privacy::PrivacyError;
        match e {
            PrivacyError::BadRequest(m) => OpsError::BadRequest(m),
            PrivacyError::NotFound(m) => OpsError::NotFound(m),
            PrivacyError::Intercom(e) => OpsError::Upstream(e.to_string()),
            PrivacyError::Store(e) => OpsError::Store(e),
            e @ PrivacyError::Job(..) => OpsError::Upstream(e.to_string()),
        }
    }
}

impl From<remote::RemoteError> for OpsError {
    fn from(e: remote::RemoteError) -> Self {
        use remote::RemoteError;
        match e {
            RemoteError::Status { status: 404, message } => OpsError::NotFound(message),
            RemoteError::Status { status: 400, message } => OpsError::BadRequest(message),
            other => OpsError::Unavailable(other.to_string()),
        }
    }
}

/// A store this process holds, and what actions need beside it.
#[derive(Clone)]
pub struct Local {
    pub store: Store,
    pub settings: Arc<Settings>,
    pub codec: Arc<CacheCodec>,
    /// `None` without `INTERCOM_ACCESS_TOKEN`.
    pub intercom: Option<Arc<IntercomClient>>,
    /// The running server's metrics, when this is the server: stats then
    /// include delivery health, replays go to its workers (else they run
    /// here), purges are counted.
    pub server: Option<Arc<Metrics>>,
    /// Told (done, total) as an inline replay goes (the CLI's progress bar).
    pub progress: Option<Arc<dyn Fn(u64, u64) + Send + Sync>>,
}

impl Local {
    /// What actions run on. `server`: the running server's metrics, when
    /// this is the server. The one place the Intercom client is built.
    pub fn new(store: Store, settings: Arc<Settings>, server: Option<Arc<Metrics>>) -> Self {
        let codec = Arc::new(CacheCodec::from_settings(store.keys().clone(), &settings.cache));
        let intercom = intercom_client(&settings, server.clone());
        Local {
            store,
            settings,
            codec,
            intercom,
            server,
            progress: None,
        }
    }

    /// Runs blocking store work off the async threads.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Local) -> Result<T, OpsError> + Send + 'static,
    ) -> Result<T, OpsError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| OpsError::Store(StoreError::Unavailable(format!("request aborted: {e}"))))?
    }
}

/// The Intercom client, the one place it is built; `None` without
/// `INTERCOM_ACCESS_TOKEN`.
pub fn intercom_client(settings: &Settings, metrics: Option<Arc<Metrics>>) -> Option<Arc<IntercomClient>> {
    IntercomClient::new(&settings.api_base_url, settings.access_token.clone(), metrics)
        .ok()
        .map(Arc::new)
}

/// Where the admin API serves an action.
#[derive(Debug, Clone)]
pub enum Route {
    Get(String, Vec<(&'static str, String)>),
    Post(String, Value),
}

/// One operator action: its request is `Self`, its result `Output`.
pub trait Action: Send + 'static {
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The admin API route that runs it on a server.
    fn route(&self) -> Route;
    /// Runs it on a store this process holds.
    fn run(self, local: Local) -> BoxFuture<'static, Result<Self::Output, OpsError>>;
}

/// A filter as operators type it (query string, CLI flags, JSON body).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FilterQuery {
    pub status: Option<String>,
    pub topic: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<usize>,
    pub after: Option<String>,
    /// Read at most this many events for one page (see
    /// [`EventFilter::scan_limit`]); the console sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<usize>,
    /// ...and for at most this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_ms: Option<u64>,
}

impl FilterQuery {
    pub fn to_filter(&self) -> Result<EventFilter, OpsError> {
        let now = now_ms();
        let status = match &self.status {
            Some(s) => Some(Status::parse(s).ok_or_else(|| {
                OpsError::BadRequest(format!(
                    "unknown status '{s}' (pending, processed, skipped, retrying, failed, invalid)"
                ))
            })?),
            None => None,
        };
        let bound = |v: &Option<String>| -> Result<Option<i64>, OpsError> {
            v.as_deref()
                .map(|s| parse_time_bound(s, now))
                .transpose()
                .map_err(OpsError::BadRequest)
        };
        if let Some(t) = &self.topic {
            if !crate::identifiers::usable(t) {
                return Err(OpsError::BadRequest(
                    "a topic pattern is 1 to 512 bytes without control characters".into(),
                ));
            }
        }
        Ok(EventFilter {
            status,
            topic: self.topic.as_deref().map(Glob::new),
            since_ms: bound(&self.since)?,
            until_ms: bound(&self.until)?,
            scan_limit: self.scan,
            scan_time: self.scan_ms.map(std::time::Duration::from_millis),
        })
    }

    /// The listing's cursor, if it is one a listing gave (`next_cursor`):
    /// a made-up one is the request's fault, not damage in the store.
    pub fn cursor(&self) -> Result<Option<&str>, OpsError> {
        let Some(c) = self.after.as_deref() else {
            return Ok(None);
        };
        let ok = c.len() <= 2 * (8 + crate::identifiers::MAX_IDENTIFIER)
            && hex::decode(c).is_ok_and(|raw| {
                crate::store::event::split_time_key(&raw).is_some_and(|(_, key)| crate::identifiers::usable(key))
            });
        if ok {
            Ok(Some(c))
        } else {
            Err(OpsError::BadRequest(
                "after takes a listing's next_cursor, as it was given".into(),
            ))
        }
    }

    /// As query-string pairs (the admin API's form).
    pub fn query_pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        for (k, val) in [
            ("status", &self.status),
            ("topic", &self.topic),
            ("since", &self.since),
            ("until", &self.until),
            ("after", &self.after),
        ] {
            if let Some(x) = val {
                v.push((k, x.clone()));
            }
        }
        if let Some(l) = self.limit {
            v.push(("limit", l.to_string()));
        }
        if let Some(n) = self.scan {
            v.push(("scan", n.to_string()));
        }
        if let Some(ms) = self.scan_ms {
            v.push(("scan_ms", ms.to_string()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    /// The CLI is an adapter: it never opens or reads the store itself.
    #[test]
    fn the_cli_goes_through_ops() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        for file in ["commands.rs", "render.rs"] {
            let text = std::fs::read_to_string(src.join(file)).unwrap();
            assert!(text.contains("fn "), "{file} was read");
            for (n, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                for needle in [
                    "open_store",
                    "store::Store",
                    "Store::open",
                    ".store",
                    "crate::audit::verify",
                ] {
                    if code.contains(needle) {
                        found.push(format!("{file}:{}: {code}", n + 1));
                    }
                }
            }
        }
        assert!(found.is_empty(), "the CLI touches the store: {found:#?}");
    }
}
