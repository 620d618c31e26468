//! Actions on the Intercom workspace rather than on the store: they need
//! `INTERCOM_ACCESS_TOKEN`, not a data dir.

use crate::config::Settings;
use crate::discover::Discovery;

use super::OpsError;

/// `discover`: the workspace's data attributes for contacts, companies and
/// conversations, classified (see `discover`).
pub async fn discover(settings: &Settings, include_archived: bool) -> Result<Discovery, OpsError> {
    let client = super::intercom_client(settings, None).ok_or_else(|| {
        OpsError::BadRequest(
            "INTERCOM_ACCESS_TOKEN is not set: discover reads the workspace's attributes from Intercom".into(),
        )
    })?;
    let mut all = Vec::new();
    for model in ["contact", "company", "conversation"] {
        let attributes = client
            .data_attributes(model, include_archived)
            .await
            .map_err(|e| OpsError::Upstream(e.to_string()))?;
        // Intercom's `model` field is sometimes absent (conversation
        // attributes): the one asked for.
        all.extend(attributes.into_iter().map(|mut a| {
            if a.get("model").and_then(serde_json::Value::as_str).is_none() {
                a["model"] = serde_json::json!(model);
            }
            a
        }));
    }
    Ok(crate::discover::discovery(&all))
}
