use super::Result;
use crate::error::check_id;
use crate::extract::Tenant;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use switchboard_service::Services;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyIn {
    name: String,
}

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

pub async fn list_api_keys(t: Tenant, s: web::Data<Services>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(json!({ "api_keys": s.keys.list_api_keys(&t.0).await? })))
}

pub async fn revoke_api_key(
    t: Tenant,
    s: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    check_id(&path)?;
    s.keys.revoke_api_key(&t.0, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}
