use super::Result;
use crate::bodies::ApiKeyIn;
use crate::extract::{Ids, Tenant};
use actix_web::{web, HttpResponse};
use switchboard_core::ApiKeyId;
use switchboard_service::pagination::PageIn;
use switchboard_service::Services;

pub async fn create_api_key(
    t: Tenant,
    s: web::Data<Services>,
    body: web::Json<ApiKeyIn>,
) -> Result<HttpResponse> {
    let created = s.keys.create_api_key(&t.0, &body.name).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(created))
}

pub async fn list_api_keys(
    t: Tenant,
    s: web::Data<Services>,
    query: web::Query<PageIn>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(s.keys.list_api_keys(&t.0, query.into_inner()).await?))
}

pub async fn revoke_api_key(
    t: Tenant,
    s: web::Data<Services>,
    Ids(id): Ids<ApiKeyId>,
) -> Result<HttpResponse> {
    s.keys.revoke_api_key(&t.0, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}
