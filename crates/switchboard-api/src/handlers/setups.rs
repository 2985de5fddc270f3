use super::Result;
use crate::bodies::SetupIn;
use crate::extract::{Ids, Tenant};
use actix_web::{web, HttpResponse};
use switchboard_core::ConnectorId;
use switchboard_service::Services;

pub async fn put_setup(
    t: Tenant,
    s: web::Data<Services>,
    Ids(connector): Ids<ConnectorId>,
    body: web::Json<SetupIn>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(s.setups.put_setup(&t.0, &connector, &body.settings).await?))
}

pub async fn get_setup(
    t: Tenant,
    s: web::Data<Services>,
    Ids(connector): Ids<ConnectorId>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(s.setups.get_setup(&t.0, &connector).await?))
}

pub async fn delete_setup(
    t: Tenant,
    s: web::Data<Services>,
    Ids(connector): Ids<ConnectorId>,
) -> Result<HttpResponse> {
    s.setups.delete_setup(&t.0, &connector).await?;
    Ok(HttpResponse::NoContent().finish())
}
