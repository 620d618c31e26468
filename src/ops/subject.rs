//! A data subject's rights: access export and erasure, here and in Intercom.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Action, Local, OpsError, Route};
use crate::privacy::Subject;
use crate::store::BoxFuture;

/// Whom, and how far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubjectRequest {
    pub email: Option<String>,
    pub contact_id: Option<String>,
    pub external_id: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub local_only: bool,
}

impl SubjectRequest {
    fn subject(&self) -> Result<Subject, OpsError> {
        Ok(Subject::from_parts(
            self.email.clone(),
            self.contact_id.clone(),
            self.external_id.clone(),
        )?)
    }
}

/// An erasure's report or an access export: JSON documents whose layout
/// `docs/privacy.md` describes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SubjectReport(pub Value);

/// `erase`, `POST /admin/erase`.
pub struct Erase(pub SubjectRequest);

impl Action for Erase {
    type Output = SubjectReport;

    fn route(&self) -> Route {
        Route::Post("/admin/erase".into(), serde_json::to_value(&self.0).unwrap_or_default())
    }

    fn run(self, local: Local) -> BoxFuture<'static, Result<SubjectReport, OpsError>> {
        Box::pin(async move {
            let subject = self.0.subject()?;
            let report = crate::privacy::erase(
                &local.store,
                &local.codec,
                local.intercom.as_deref(),
                subject,
                self.0.dry_run,
                self.0.local_only,
            )
            .await?;
            Ok(SubjectReport(report))
        })
    }
}

/// `export`, `POST /admin/export`.
pub struct Export(pub SubjectRequest);

impl Action for Export {
    type Output = SubjectReport;

    fn route(&self) -> Route {
        Route::Post(
            "/admin/export".into(),
            serde_json::to_value(&self.0).unwrap_or_default(),
        )
    }

    fn run(self, local: Local) -> BoxFuture<'static, Result<SubjectReport, OpsError>> {
        Box::pin(async move {
            let subject = self.0.subject()?;
            let doc = crate::privacy::export(
                &local.store,
                &local.codec,
                local.intercom.as_deref(),
                subject,
                self.0.local_only,
            )
            .await?;
            Ok(SubjectReport(doc))
        })
    }
}

/// The erasure jobs recorded (unfinished ones, and the newest finished),
/// newest first; each as `erasure_jobs::Job::view` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErasureJobs {
    pub jobs: Vec<Value>,
}

/// `erase --status`, `GET /admin/erasures`.
pub struct ListErasures;

impl Action for ListErasures {
    type Output = ErasureJobs;

    fn route(&self) -> Route {
        Route::Get("/admin/erasures".into(), vec![])
    }

    fn run(self, local: Local) -> BoxFuture<'static, Result<ErasureJobs, OpsError>> {
        Box::pin(async move {
            local
                .blocking(|l| {
                    let mut jobs = crate::erasure_jobs::list(&l.store)?;
                    jobs.reverse();
                    Ok(ErasureJobs {
                        jobs: jobs.iter().map(|j| j.view()).collect(),
                    })
                })
                .await
        })
    }
}
