//! Bulk Data export jobs of an install: status, list, cancel, and the output files streamed
//! through as they arrive from the EHR.

use super::Result;
use crate::extract::{Ids, Tenant};
use actix_web::{web, HttpResponse};
use switchboard_core::{AccountId, InstallId, JobId};
use switchboard_service::pagination::PageIn;
use switchboard_service::Services;

pub async fn list_jobs(
    t: Tenant,
    s: web::Data<Services>,
    Ids((account, install)): Ids<(AccountId, InstallId)>,
    query: web::Query<PageIn>,
) -> Result<HttpResponse> {
    let list = s
        .methods
        .list_jobs(&t.0, &account, &install, query.into_inner())
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(list))
}

pub async fn get_job(
    t: Tenant,
    s: web::Data<Services>,
    Ids((account, install, job)): Ids<(AccountId, InstallId, JobId)>,
) -> Result<HttpResponse> {
    let job = s.methods.get_job(&t.0, &account, &install, &job).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(job))
}

pub async fn cancel_job(
    t: Tenant,
    s: web::Data<Services>,
    Ids((account, install, job)): Ids<(AccountId, InstallId, JobId)>,
) -> Result<HttpResponse> {
    let job = s.methods.cancel_job(&t.0, &account, &install, &job).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(job))
}

/// Streams the file chunk by chunk (`application/fhir+ndjson`, chunked transfer).
pub async fn download_file(
    t: Tenant,
    s: web::Data<Services>,
    Ids((account, install, job, n)): Ids<(AccountId, InstallId, JobId, u32)>,
) -> Result<HttpResponse> {
    let file = s
        .methods
        .download_file(&t.0, &account, &install, &job, n)
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/fhir+ndjson")
        .insert_header(("Cache-Control", "no-store"))
        .streaming(file.body))
}
