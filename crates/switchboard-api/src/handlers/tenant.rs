use super::Result;
use crate::bodies::TenantPatch;
use crate::extract::Tenant;
use actix_web::{web, HttpResponse};
use switchboard_service::pagination::AuditQuery;
use switchboard_service::Services;

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

/// The tenant's audit trail (read-only: records are written by the server, never by a route).
pub async fn list_audit(
    t: Tenant,
    s: web::Data<Services>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(s.audit.list(&t.0, query.into_inner()).await?))
}
