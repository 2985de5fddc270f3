use super::Result;
use crate::error::check_id;
use crate::extract::Tenant;
use actix_web::{web, HttpResponse};
use switchboard_service::Services;

pub async fn list_connectors(_t: Tenant, s: web::Data<Services>) -> HttpResponse {
    HttpResponse::Ok().json(s.connectors.list_connectors())
}

pub async fn get_connector(
    _t: Tenant,
    s: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    check_id(&path)?;
    Ok(HttpResponse::Ok().json(s.connectors.get_connector(&path)?))
}
