use super::Result;
use crate::error::check_id;
use crate::extract::Tenant;
use actix_web::{web, HttpResponse};
use switchboard_service::accounts::AccountIn;
use switchboard_service::pagination::PageIn;
use switchboard_service::Services;

pub async fn create_account(
    t: Tenant,
    s: web::Data<Services>,
    body: web::Json<AccountIn>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(s.create_account(&t.0, body.into_inner()).await?))
}

pub async fn list_accounts(
    t: Tenant,
    s: web::Data<Services>,
    query: web::Query<PageIn>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(s.list_accounts(&t.0, query.into_inner()).await?))
}

pub async fn get_account(
    t: Tenant,
    s: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    check_id(&path)?;
    Ok(HttpResponse::Ok().json(s.get_account(&t.0, &path).await?))
}

pub async fn delete_account(
    t: Tenant,
    s: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    check_id(&path)?;
    s.delete_account(&t.0, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}
