use super::Result;
use crate::extract::{Ids, Tenant};
use actix_web::{web, HttpResponse};
use switchboard_core::AccountId;
use switchboard_service::accounts::AccountIn;
use switchboard_service::pagination::PageIn;
use switchboard_service::Services;

pub async fn create_account(
    t: Tenant,
    s: web::Data<Services>,
    body: web::Json<AccountIn>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(s.installs.create_account(&t.0, body.into_inner()).await?))
}

pub async fn list_accounts(
    t: Tenant,
    s: web::Data<Services>,
    query: web::Query<PageIn>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(s.installs.list_accounts(&t.0, query.into_inner()).await?))
}

pub async fn get_account(
    t: Tenant,
    s: web::Data<Services>,
    Ids(account): Ids<AccountId>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(s.installs.get_account(&t.0, &account).await?))
}

pub async fn delete_account(
    t: Tenant,
    s: web::Data<Services>,
    Ids(account): Ids<AccountId>,
) -> Result<HttpResponse> {
    s.installs.delete_account(&t.0, &account).await?;
    Ok(HttpResponse::NoContent().finish())
}
