use super::Result;
use crate::extract::{Ids, Tenant};
use actix_web::{web, HttpResponse};
use switchboard_core::ConnectorId;
use switchboard_service::Services;

pub async fn list_connectors(_t: Tenant, s: web::Data<Services>) -> HttpResponse {
    HttpResponse::Ok().json(s.connectors.list_connectors())
}

pub async fn get_connector(
    _t: Tenant,
    s: web::Data<Services>,
    Ids(connector): Ids<ConnectorId>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(s.connectors.get_connector(&connector)?))
}
