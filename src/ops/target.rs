//! Where the CLI's actions run: on the store itself when no server holds
//! it (always, for a database that replicas share), through the admin API
//! of the server that does. The one place that chooses between the two.

use std::sync::Arc;

use super::remote::Remote;
use super::{Action, Local, OpsError, Route};
use crate::config::Settings;
use crate::store::StoreError;

pub enum Target {
    /// The store, opened here (it closes when the last handle drops).
    Local(Local),
    /// A running server's admin API.
    Remote(Remote),
}

impl Target {
    /// The store in the data dir if it can be opened here; the admin API
    /// (with the admin token) if a server holds it or there is none here.
    pub fn open(settings: &Settings) -> Result<Target, OpsError> {
        // Replicas share the database: any process may work on it.
        if settings.store.postgres.is_some() {
            return match super::open_store(settings) {
                Ok(store) => Ok(Target::Local(Local::new(store, Arc::new(settings.clone()), None))),
                Err(e) => Err(OpsError::Unavailable(e.to_string())),
            };
        }
        if !settings.data_dir.join("index").exists() {
            // Nothing here to open: maybe a server elsewhere has it.
            return Self::remote(
                settings,
                format!("there is no store in {}", settings.data_dir.display()),
            );
        }
        match super::open_store(settings) {
            Ok(store) => Ok(Target::Local(Local::new(store, Arc::new(settings.clone()), None))),
            Err(e) => match e.downcast_ref::<StoreError>() {
                Some(StoreError::Locked(_)) => Self::remote(settings, e.to_string()),
                _ => Err(OpsError::Unavailable(e.to_string())),
            },
        }
    }

    fn remote(settings: &Settings, why_not_local: String) -> Result<Target, OpsError> {
        if settings.admin_token.is_none() {
            return Err(OpsError::Unavailable(format!(
                "{why_not_local}, and INTERCOM_WEBHOOKS_ADMIN_TOKEN is not set to use the admin API at {}",
                settings.admin_url
            )));
        }
        Ok(Target::Remote(Remote::new(
            &settings.admin_url,
            settings.admin_token.clone(),
        )))
    }

    /// Runs `action` here or on the server.
    pub async fn run<A: Action>(&self, action: A) -> Result<A::Output, OpsError> {
        match self {
            Target::Local(local) => action.run(local.clone()).await,
            Target::Remote(remote) => {
                let doc = match action.route() {
                    Route::Get(path, query) => remote.get(&path, &query).await?,
                    Route::Post(path, body) => remote.post(&path, &body).await?,
                };
                serde_json::from_value(doc).map_err(|e| {
                    OpsError::Unavailable(format!("the admin API's answer is not what this build expects: {e}"))
                })
            }
        }
    }
}
