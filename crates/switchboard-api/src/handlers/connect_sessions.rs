use super::Result;
use crate::extract::{Ids, Tenant};
use actix_web::{web, HttpResponse};
use switchboard_core::ConnectSessionId;
use switchboard_service::connect::ConnectSessionIn;
use switchboard_service::Services;

pub async fn create_connect_session(
    t: Tenant,
    s: web::Data<Services>,
    body: web::Json<ConnectSessionIn>,
) -> Result<HttpResponse> {
    let created = s
        .installs
        .create_connect_session(&t.0, body.into_inner())
        .await?;
    // The link is a credential: shown once, never cached.
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(created))
}

pub async fn get_connect_session(
    t: Tenant,
    s: web::Data<Services>,
    Ids(id): Ids<ConnectSessionId>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(s.installs.get_connect_session(&t.0, &id).await?))
}
