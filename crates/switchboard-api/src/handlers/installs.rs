use super::Result;
use crate::extract::{Ids, Tenant};
use actix_web::{web, HttpResponse};
use serde_json::json;
use switchboard_core::{AccountId, InstallId};
use switchboard_service::installs::{AuthorizeIn, InstallIn};
use switchboard_service::pagination::{InstallsQuery, PageIn};
use switchboard_service::Services;

pub async fn create_install(
    t: Tenant,
    s: web::Data<Services>,
    Ids(account): Ids<AccountId>,
    body: web::Json<InstallIn>,
) -> Result<HttpResponse> {
    let created = s
        .installs
        .create_install(&t.0, &account, body.into_inner())
        .await?;
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(created))
}

pub async fn list_installs(
    t: Tenant,
    s: web::Data<Services>,
    Ids(account): Ids<AccountId>,
    query: web::Query<PageIn>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(
        s.installs
            .list_installs(&t.0, &account, query.into_inner())
            .await?,
    ))
}

/// The tenant's installs across its accounts (`?status=&connector=&account=`).
pub async fn list_tenant_installs(
    t: Tenant,
    s: web::Data<Services>,
    query: web::Query<InstallsQuery>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(
        s.installs
            .list_tenant_installs(&t.0, query.into_inner())
            .await?,
    ))
}

pub async fn get_install(
    t: Tenant,
    s: web::Data<Services>,
    Ids((account, install)): Ids<(AccountId, InstallId)>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(s.installs.get_install(&t.0, &account, &install).await?))
}

pub async fn delete_install(
    t: Tenant,
    s: web::Data<Services>,
    Ids((account, install)): Ids<(AccountId, InstallId)>,
) -> Result<HttpResponse> {
    s.installs.delete_install(&t.0, &account, &install).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn authorize_install(
    t: Tenant,
    s: web::Data<Services>,
    Ids((account, install)): Ids<(AccountId, InstallId)>,
    body: Option<web::Json<AuthorizeIn>>,
) -> Result<HttpResponse> {
    let input = body
        .map(|b| b.into_inner())
        .unwrap_or(AuthorizeIn { return_url: None });
    let url = s
        .installs
        .authorize_install(&t.0, &account, &install, input)
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "authorize_url": url })))
}
