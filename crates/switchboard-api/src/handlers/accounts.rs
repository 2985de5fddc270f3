use super::Result;
use crate::error::check_id;
use crate::extract::Tenant;
use actix_web::{web, HttpResponse};
use serde_json::json;
use switchboard_service::accounts::AccountIn;
use switchboard_service::Services;

pub async fn create_account(
    t: Tenant,
    s: web::Data<Services>,
    body: web::Json<AccountIn>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(s.installs.create_account(&t.0, body.into_inner()).await?))
}

pub async fn list_accounts(t: Tenant, s: web::Data<Services>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(json!({ "accounts": s.installs.list_accounts(&t.0).await? })))
}

pub async fn get_account(
    t: Tenant,
    s: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    check_id(&path)?;
    Ok(HttpResponse::Ok().json(s.installs.get_account(&t.0, &path).await?))
}

pub async fn delete_account(
    t: Tenant,
    s: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    check_id(&path)?;
    s.installs.delete_account(&t.0, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}
