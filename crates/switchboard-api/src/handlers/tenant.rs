use super::Result;
use crate::extract::Tenant;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use switchboard_service::Services;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    allowed_return_urls: Vec<String>,
}

pub async fn get_tenant(t: Tenant, s: web::Data<Services>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(s.keys.get_tenant(&t.0).await?))
}

pub async fn update_tenant(
    t: Tenant,
    s: web::Data<Services>,
    body: web::Json<TenantPatch>,
) -> Result<HttpResponse> {
    let body = body.into_inner();
    Ok(HttpResponse::Ok().json(
        s.keys
            .set_allowed_return_urls(&t.0, body.allowed_return_urls)
            .await?,
    ))
}
